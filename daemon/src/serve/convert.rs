//! Proto ↔ daemon types: requests into specs, job and daemon events into their messages,
//! tensors, timestamps and model descriptions. No I/O and no blocking work happens here.

use std::time::{Duration, Instant, SystemTime};

use easel_proto::v1 as pb;
use tonic::Status;

use crate::catalog::Listed;
use crate::catalog::hub::PullProgress;
use crate::catalog::store::ImportProgress;
use crate::generation::{self, PreviewKind, PreviewSettings};
use crate::jobs::events::{DaemonEvent, Stamped};
use crate::jobs::residency::Running;
use crate::jobs::{GenerateSpec, JobEvent, RefinerSpec, residency_key};
use crate::model::onnx::{HostTensor, IoSpec};

use super::status::job_status;

/// A `GenerateRequest` as the job queue takes it (the client is filled in by the service).
pub fn generate_spec(request: pb::GenerateRequest) -> Result<GenerateSpec, Status> {
    let init_noise = request.init_noise.map(tensor_from_proto).transpose()?;
    let preview = request.preview.unwrap_or_default();
    let decoder = match pb::Decoder::try_from(request.decoder) {
        Ok(pb::Decoder::Full) => generation::vae::Decoder::Full,
        Ok(pb::Decoder::Tiny) => generation::vae::Decoder::Tiny,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown decoder {}; the decoders are DECODER_FULL (0) and DECODER_TINY (1)",
                request.decoder
            )));
        }
    };
    let refiner = (!request.refiner.trim().is_empty() || request.refiner_switch.is_some()).then(|| RefinerSpec {
        model: request.refiner.trim().to_string(),
        switch: request.refiner_switch,
    });
    Ok(GenerateSpec {
        refiner,
        model: request.model,
        picture: generation::Request {
            prompt: request.prompt,
            negative_prompt: request.negative_prompt,
            width: request.width,
            height: request.height,
            steps: request.steps,
            guidance_scale: request.guidance_scale,
            sampler: Some(request.sampler).filter(|s| !s.is_empty()),
            init_noise,
            init_image: Some(request.init_image).filter(|b| !b.is_empty()),
            strength: request.strength,
            mask_image: Some(request.mask_image).filter(|b| !b.is_empty()),
            mask_blur: request.mask_blur,
            clip_skip: request.clip_skip,
            preview: PreviewSettings {
                every_n_steps: preview.every_n_steps,
                latents: preview.stream_latents,
                image: match pb::PreviewImage::try_from(preview.image).unwrap_or(pb::PreviewImage::None) {
                    pb::PreviewImage::None => PreviewKind::None,
                    pb::PreviewImage::Approx => PreviewKind::Approx,
                    pb::PreviewImage::Full => PreviewKind::Full,
                },
            },
            decoder,
            guidance_cutoff: request.guidance_cutoff,
            xl_sizes: generation::XlSizeRequest {
                original_size: request.original_size.map(|s| (s.width, s.height)),
                crop_top_left: request.crop_top_left.map(|c| (c.top, c.left)),
                target_size: request.target_size.map(|s| (s.width, s.height)),
                aesthetic_score: request.aesthetic_score,
                negative_aesthetic_score: request.negative_aesthetic_score,
            },
            guidance_rescale: request.guidance_rescale,
            // The stages of a base + refiner request are the job's to set (`refiner` below).
            denoising_end: None,
            denoising_start: None,
        },
        seed: request.seed,
        count: request.count,
        keep_alive: Some(request.keep_alive).filter(|k| !k.trim().is_empty()),
        client: String::new(),
    })
}

/// A job's event as the `Generate` stream sends it; a failure ends the stream with its status.
pub fn job_event_to_proto(job_id: &str, event: JobEvent) -> Result<pb::GenerateEvent, Status> {
    use pb::generate_event::Event;
    let event = match event {
        JobEvent::Queued { position } => Event::Queued(pb::Queued {
            job_id: job_id.to_string(),
            position,
        }),
        JobEvent::Started { load } => Event::Started(pb::Started {
            job_id: job_id.to_string(),
            load_ms: ms(load),
        }),
        JobEvent::Progress {
            image_index,
            step,
            total,
            elapsed,
            latent,
            preview_png,
        } => Event::Progress(pb::Progress {
            step,
            total,
            elapsed_ms: ms(elapsed),
            latent: latent.as_ref().map(tensor_to_proto),
            preview_png: preview_png.unwrap_or_default(),
            image_index,
        }),
        JobEvent::Image {
            index,
            seed,
            png,
            width,
            height,
            parameters,
        } => Event::Image(pb::Image {
            index,
            png,
            seed,
            width,
            height,
            parameters,
        }),
        JobEvent::Finished { timings } => Event::Finished(pb::Finished {
            job_id: job_id.to_string(),
            timings: Some(pb::Timings {
                queue_ms: ms(timings.queue),
                load_ms: ms(timings.load),
                encode_ms: ms(timings.encode),
                denoise_ms: ms(timings.denoise),
                decode_ms: ms(timings.decode),
                total_ms: ms(timings.total),
            }),
        }),
        JobEvent::Failed(error) => return Err(job_status(&error)),
    };
    Ok(pb::GenerateEvent { event: Some(event) })
}

/// A WatchEvents message.
pub fn daemon_event_to_proto(stamped: Stamped) -> pb::DaemonEvent {
    use pb::daemon_event::Event;
    let event = match stamped.event {
        DaemonEvent::Job {
            id,
            model,
            state,
            position,
            step,
            total,
            message,
        } => Event::Job(pb::JobEvent {
            job_id: id,
            model,
            state: state.as_str().to_string(),
            position,
            step,
            total,
            message,
        }),
        DaemonEvent::Model {
            model,
            state,
            memory,
            reason,
        } => Event::Model(pb::ModelEvent {
            model,
            state: state.as_str().to_string(),
            memory_bytes: memory.host,
            vram_bytes: memory.device,
            reason,
        }),
        DaemonEvent::Import(notice) => Event::Import(pb::ImportNotice {
            name: notice.name,
            state: notice.state,
            bytes_done: notice.bytes_done,
            bytes_total: notice.bytes_total,
            message: notice.message,
        }),
    };
    pb::DaemonEvent {
        unix_ms: system_ms(stamped.at),
        event: Some(event),
    }
}

/// An import's progress as its stream reports it.
pub fn import_progress_to_proto(progress: ImportProgress) -> pb::ImportEvent {
    let event = match progress {
        ImportProgress::Stage(stage) => pb::import_event::Event::Stage(stage.as_str().to_string()),
        ImportProgress::Bytes { done, total } => pb::import_event::Event::Bytes(pb::ByteProgress { done, total }),
    };
    pb::ImportEvent { event: Some(event) }
}

/// A pull's progress as its stream reports it.
pub fn pull_progress_to_proto(progress: PullProgress) -> pb::PullEvent {
    pb::PullEvent {
        event: Some(pb::pull_event::Event::Progress(pb::PullProgress {
            files_done: progress.files_done,
            files_total: progress.files_total,
            bytes_done: progress.bytes_done,
            bytes_total: progress.bytes_total,
            file: progress.file,
        })),
    }
}

/// A model as `ListModels`, `ShowModel`, imports and pulls report it; `loaded`: the residency
/// keys of the models resident now.
pub fn model_info(listed: &Listed, loaded: &[String]) -> pb::ModelInfo {
    let d = listed.description.as_ref().ok();
    pb::ModelInfo {
        name: listed.name.clone(),
        path: listed.path.display().to_string(),
        default_sampler: d.map(|d| d.default_sampler.clone()).unwrap_or_default(),
        prediction_type: d.map(|d| d.prediction_type.clone()).unwrap_or_default(),
        loaded: loaded.contains(&residency_key(&listed.path)),
        family: d.map(|d| d.family.clone()).unwrap_or_default(),
        dtype: d.map(|d| d.dtype.clone()).unwrap_or_default(),
        size_bytes: d.map(|d| d.size_bytes).unwrap_or_default(),
        source: listed.source.as_str().to_string(),
    }
}

/// `ShowModel`'s answer for a described model.
pub fn show_reply(listed: &Listed, loaded: &[String]) -> pb::ShowModelReply {
    let (files, parts, native_size) = match &listed.description {
        Ok(d) => (
            d.files
                .iter()
                .map(|(path, size)| pb::ModelFile {
                    path: path.clone(),
                    size_bytes: *size,
                })
                .collect(),
            d.parts
                .iter()
                .map(|part| pb::SubModel {
                    name: part.name.clone(),
                    inputs: part.inputs.iter().map(tensor_spec).collect(),
                    outputs: part.outputs.iter().map(tensor_spec).collect(),
                })
                .collect(),
            d.native_size,
        ),
        Err(_) => Default::default(),
    };
    pb::ShowModelReply {
        info: Some(model_info(listed, loaded)),
        files,
        parts,
        native_width: native_size,
        native_height: native_size,
        inferred: listed
            .description
            .as_ref()
            .map(|d| d.inferred.clone())
            .unwrap_or_default(),
    }
}

fn tensor_spec(io: &IoSpec) -> pb::TensorSpec {
    pb::TensorSpec {
        name: io.name.clone(),
        dtype: io.dtype.to_string(),
        shape: io.shape.clone(),
    }
}

/// A resident model for `easel ps`.
pub fn running_to_proto(running: &Running, device: &str) -> pb::RunningModel {
    pb::RunningModel {
        name: running.name.clone(),
        memory_bytes: running.memory.host,
        vram_bytes: running.memory.device,
        device: device.to_string(),
        expires_unix_ms: running.expires.map_or(0, instant_ms),
        in_use: running.in_use,
        path: running.key.clone(),
        working_memory_bytes: running.working.host,
        working_vram_bytes: running.working.device,
    }
}

/// A tensor from the wire: f32 or f16, little-endian, its byte length matching its shape.
pub fn tensor_from_proto(tensor: pb::Tensor) -> Result<HostTensor<f32>, Status> {
    let shape: Vec<usize> = tensor
        .shape
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| {
                Status::invalid_argument(format!("tensor shape {:?} has a negative dimension", tensor.shape))
            })
        })
        .collect::<Result<_, _>>()?;
    let (width, dtype) = match pb::Dtype::try_from(tensor.dtype) {
        Ok(pb::Dtype::F32 | pb::Dtype::Unspecified) => (4, "f32"),
        Ok(pb::Dtype::F16) => (2, "f16"),
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "tensor dtype {} is not one easel knows; send DTYPE_F32 (1) or DTYPE_F16 (2)",
                tensor.dtype
            )));
        }
    };
    // Checked: a shape like [2^31, 2^31, 2^31, 4] must not wrap around to a small size.
    let bytes = shape
        .iter()
        .try_fold(width, |acc: usize, &d| acc.checked_mul(d))
        .ok_or_else(|| Status::invalid_argument(format!("tensor shape {shape:?} is too large to exist")))?;
    if tensor.data.len() != bytes {
        return Err(Status::invalid_argument(format!(
            "{dtype} tensor of shape {shape:?} needs {bytes} bytes, got {}",
            tensor.data.len()
        )));
    }
    let data: Vec<f32> = if width == 4 {
        tensor
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    } else {
        tensor
            .data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect()
    };
    Ok(HostTensor::new(shape, data))
}

fn tensor_to_proto(tensor: &HostTensor<f32>) -> pb::Tensor {
    pb::Tensor {
        shape: tensor.shape.iter().map(|&d| d as i64).collect(),
        dtype: pb::Dtype::F32 as i32,
        data: tensor.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Milliseconds since the Unix epoch of a wall-clock time.
fn system_ms(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Milliseconds since the Unix epoch of an `Instant` (a keep-alive's expiry), placed on the
/// wall clock through now.
fn instant_ms(at: Instant) -> i64 {
    let (now, wall) = (Instant::now(), SystemTime::now());
    let wall_at = if at >= now {
        wall + (at - now)
    } else {
        wall - (now - at)
    };
    system_ms(wall_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_land_on_the_wall_clock() {
        let now = instant_ms(Instant::now());
        let later = instant_ms(Instant::now() + Duration::from_secs(60));
        assert!((59_900..=60_100).contains(&(later - now)), "{}", later - now);
    }

    #[test]
    fn tensors_read_f32_and_f16_and_refuse_a_wrong_length() {
        let f32_tensor = pb::Tensor {
            shape: vec![1, 2],
            dtype: pb::Dtype::F32 as i32,
            data: [1.5f32, -2.0].iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        assert_eq!(tensor_from_proto(f32_tensor).unwrap().data, vec![1.5, -2.0]);
        let f16_tensor = pb::Tensor {
            shape: vec![2],
            dtype: pb::Dtype::F16 as i32,
            data: [0.5f32, 3.0]
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
        };
        assert_eq!(tensor_from_proto(f16_tensor).unwrap().data, vec![0.5, 3.0]);
        let short = pb::Tensor {
            shape: vec![3],
            dtype: pb::Dtype::F32 as i32,
            data: vec![0; 8],
        };
        let status = tensor_from_proto(short).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("needs 12 bytes, got 8"),
            "{}",
            status.message()
        );
        let negative = pb::Tensor {
            shape: vec![-1],
            ..Default::default()
        };
        assert_eq!(
            tensor_from_proto(negative).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn an_unknown_dtype_or_an_overflowing_shape_is_refused() {
        let unknown = pb::Tensor {
            shape: vec![1],
            dtype: 99,
            data: vec![0; 4],
        };
        let status = tensor_from_proto(unknown).unwrap_err();
        assert!(status.message().contains("dtype 99"), "{}", status.message());
        let huge = pb::Tensor {
            shape: vec![1 << 31, 1 << 31, 1 << 31, 4],
            dtype: pb::Dtype::F32 as i32,
            data: vec![],
        };
        let status = tensor_from_proto(huge).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("too large"), "{}", status.message());
    }
}
