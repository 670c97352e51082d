//! The denoising loop of Stable Diffusion, written to read like the paper, for a batch of
//! images that share one UNet call per step.
//!
//! 1. Condition: encode the prompt (and, with guidance, the negative prompt) with the text
//!    encoder.
//! 2. Start: each image from its own noise — or, for img2img and inpainting, from its picture's
//!    latent noised to the level where the run enters the schedule (see [`super::latents`]).
//! 3. Denoise: for each timestep, scale the input, run the UNet on [uncond, cond] as one batch,
//!    combine them with classifier-free guidance, let the sampler take a step. Past an optional
//!    guidance cut-off, the UNet runs on the conditional half alone.
//! 4. Decode the final latents with the VAE (or the model's tiny decoder, when asked).
//!
//! A base + refiner request runs this loop twice, as diffusers' "ensemble of expert
//! denoisers": the base model's run stops at the switch and hands its latents over; the
//! refiner's run takes them over there and runs the rest of the schedule (see `Handover`).
//!
//! It consumes a [`Prepared`] request (every check was made there) and knows nothing of jobs or
//! gRPC: a caller passes noise sources, a cancellation check and a progress callback. It runs
//! on a worker thread, never on the async runtime.

use std::time::{Duration, Instant};

use crate::model::LoadedModel;
use crate::model::embedding_cache::ChunkEmbedding;
use crate::model::onnx::{Bound, HostTensor, Input};

use super::GenerationError;
use super::image::{RgbImage, approx_preview};
use super::latents::{EncodedInit, ImageDraws};
use super::prepare::{Handover, Prepared};
use super::sampler::{NoiseSource, StepOutput};
use super::{text, vae};

/// Which intermediate results to report, and how often.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PreviewSettings {
    pub every_n_steps: u32,
    pub latents: bool,
    pub image: PreviewKind,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PreviewKind {
    #[default]
    None,
    /// Latent-to-RGB linear map of the predicted clean latent (latent resolution).
    Approx,
    /// VAE decode of the predicted clean latent: by the model's tiny decoder when it has one.
    Full,
}

/// One step's report for one image.
#[derive(Debug)]
pub struct StepReport {
    /// 1-based.
    pub step: usize,
    pub total: usize,
    pub elapsed: Duration,
    pub latent: Option<HostTensor<f32>>,
    pub preview: Option<RgbImage>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Timings {
    pub encode: Duration,
    pub denoise: Duration,
    pub decode: Duration,
}

/// A batch's pictures, in the order of its noise sources — or, from a stage that hands over,
/// its latents.
#[derive(Debug)]
pub struct BatchOutput {
    /// Empty from a stage that hands over.
    pub images: Vec<RgbImage>,
    /// A stage that hands over: the batch's latents `[n, C, h, w]`, as they stand at the switch
    /// (diffusers' `output_type="latent"`), for the stage that takes over.
    pub latents: Option<Vec<f32>>,
    pub timings: Timings,
}

/// What the UNet is conditioned on, for the whole batch.
///
/// Every tensor here is the same for all of the batch's UNet evaluations, so each is bound once
/// (converted to the UNet's element type and fed by reference to every step).
struct Conditioning {
    /// [uncond × n; cond × n] with classifier-free guidance, else cond × n.
    batch: UnetConditions,
    /// With guidance and a cut-off: cond × n alone, for the steps past it.
    cond_only: Option<UnetConditions>,
    /// The guidance scale, when classifier-free guidance runs.
    guidance: Option<f32>,
    /// An LCM-distilled UNet's `timestep_cond`, `[n, dim]`.
    guidance_embedding: Option<Bound>,
    /// diffusers' `guidance_rescale` (0: off), where guidance runs.
    rescale: f32,
}

/// The UNet's conditioning inputs for one batch of rows.
struct UnetConditions {
    /// `encoder_hidden_states` `[rows, 77·k, D]`.
    text: Bound,
    /// SDXL: `text_embeds` `[rows, P]` and `time_ids` `[rows, 6]`.
    xl: Option<(Bound, Bound)>,
}

/// The same conditioning as host tensors, before binding.
struct HostConditions {
    text: HostTensor<f32>,
    xl: Option<(HostTensor<f32>, HostTensor<f32>)>,
}

impl HostConditions {
    /// The conditional half of a guided batch (its last half of rows).
    fn second_half(&self) -> Self {
        Self {
            text: second_half(&self.text),
            xl: self
                .xl
                .as_ref()
                .map(|(pooled, time_ids)| (second_half(pooled), second_half(time_ids))),
        }
    }

    fn bind(self, model: &LoadedModel) -> Result<UnetConditions, GenerationError> {
        let inputs = &model.unet_inputs;
        let xl = match (self.xl, inputs.xl.as_ref()) {
            (Some((pooled, time_ids)), Some(specs)) => Some((
                model.unet.bind(&specs.text_embeds, pooled)?,
                model.unet.bind(&specs.time_ids, time_ids)?,
            )),
            _ => None,
        };
        Ok(UnetConditions {
            text: model.unet.bind(&inputs.encoder_hidden_states, self.text)?,
            xl,
        })
    }
}

/// Runs one generation per noise source, denoised together as one UNet batch, and returns the
/// decoded pictures (before inpainting's composite, see [`super::generate_batch`]). Image `i`
/// draws all its randomness from `noises[i]`, in the order a lone run draws it, so each image
/// equals the one a single run with that noise source makes. `on_step` gets each image's
/// report (image index in the batch, report) after every step.
///
/// A stage of a two-stage request (see [`Handover`]): the first returns its latents at the
/// switch instead of pictures; the second takes them (`handed_over`, `[n, C, h, w]`) as its
/// starting latents, as they are — no picture is encoded and nothing is drawn before its first
/// step, as diffusers' `denoising_start` does.
pub fn run_batch(
    model: &mut LoadedModel,
    prepared: &Prepared,
    noises: &mut [&mut dyn NoiseSource],
    handed_over: Option<&[f32]>,
    is_cancelled: &dyn Fn() -> bool,
    on_step: &mut dyn FnMut(usize, StepReport),
) -> Result<BatchOutput, GenerationError> {
    let batch = noises.len();
    assert!(batch > 0, "a batch needs at least one noise source");
    let plane: usize = prepared.latent_shape.iter().product();
    match (prepared.handover, handed_over) {
        (Handover::TakesOver(_), Some(latents)) if latents.len() == batch * plane => {}
        (Handover::TakesOver(_), _) => {
            return Err(GenerationError::InvalidRequest(format!(
                "a stage that takes over needs the first stage's latents: {batch} of shape {:?}",
                prepared.latent_shape
            )));
        }
        (_, Some(_)) => {
            return Err(GenerationError::InvalidRequest(
                "only a stage that takes over (denoising start) starts from handed-over latents".into(),
            ));
        }
        _ => {}
    }
    let mut timings = Timings::default();
    let started = Instant::now();
    let conditioning = condition(model, prepared, batch)?;
    timings.encode = started.elapsed();

    let denoise_started = Instant::now();
    let mut scheduler = prepared.scheduler.clone();
    let shape = &prepared.latent_shape;
    let (first, end) = (prepared.first_step, prepared.end_step);
    let init = EncodedInit::encode(model, prepared)?;
    let (images, mut latents) = match handed_over {
        Some(latents) => ((0..batch).map(|_| ImageDraws::none()).collect(), latents.to_vec()),
        None => {
            let images: Vec<ImageDraws> = noises
                .iter_mut()
                .map(|noise| init.draw(&mut **noise, prepared.init_noise.as_ref(), plane))
                .collect();
            let latents: Vec<f32> = images
                .iter()
                .flat_map(|image| init.starting_latent(image, scheduler.as_ref(), first))
                .collect();
            (images, latents)
        }
    };
    let mut batch_shape = shape.clone();
    batch_shape[0] = batch;

    let timesteps = scheduler.timesteps().to_vec();
    let total = prepared.evaluations();
    let mut batch_noise = BatchNoise(noises);
    let mut denoise = |model: &mut LoadedModel| -> Result<(), GenerationError> {
        for (index, &t) in timesteps.iter().enumerate().take(end).skip(first) {
            if is_cancelled() {
                return Err(GenerationError::Cancelled);
            }
            // Room for the guided batch [input; input], which predict_noise builds in place.
            let mut model_input = Vec::with_capacity(latents.len() * 2);
            model_input.extend_from_slice(&latents);
            scheduler.scale_model_input(&mut model_input, index);
            let (unet_input, input_shape) = init.unet_input(model_input, &images, &batch_shape);
            let last = index + 1 == end;
            let guided = prepared.guided_at(index - first, total);
            let noise_pred = predict_noise(model, unet_input, &input_shape, t, &conditioning, guided, last)?;
            let StepOutput {
                prev_sample,
                pred_original_sample,
            } = scheduler.step(&noise_pred, index, &latents, &mut batch_noise);
            latents = prev_sample;
            init.blend_unmasked(&mut latents, &images, scheduler.as_ref(), index + 1);
            let progress = Progress {
                step: index + 1 - first,
                total,
                started: denoise_started,
            };
            report_step(model, prepared, &progress, &latents, &pred_original_sample, on_step)?;
        }
        Ok(())
    };
    if let Err(error) = denoise(model) {
        // Cancelled or failed before the last step, whose run would have handed the UNet's
        // arena back: a tiny run does it instead, so a cancelled job's memory returns too.
        release_unet_memory(model, &conditioning, batch, timesteps.first().copied().unwrap_or(0.0));
        return Err(error);
    }
    timings.denoise = denoise_started.elapsed();
    if let Handover::Hands(_) = prepared.handover {
        return Ok(BatchOutput {
            images: Vec::new(),
            latents: Some(latents),
            timings,
        });
    }

    let decode_started = Instant::now();
    let images = latents
        .chunks(plane)
        .map(|latent| vae::decode_with(model, prepared.decoder, latent, shape, prepared.vae_tiled))
        .collect::<Result<Vec<_>, _>>()?;
    timings.decode = decode_started.elapsed();
    Ok(BatchOutput {
        images,
        latents: None,
        timings,
    })
}

/// The text embeddings for a batch of `batch` images, and how guidance applies. An
/// LCM-distilled UNet takes the guidance scale as an embedding instead of running the
/// unconditional batch (diffusers: no classifier-free guidance when `time_cond_proj_dim` is
/// set).
fn condition(model: &mut LoadedModel, prepared: &Prepared, batch: usize) -> Result<Conditioning, GenerationError> {
    let guidance_embedding = model
        .unet_inputs
        .guidance_embedding_dim()
        .map(|dim| guidance_scale_embedding(prepared.guidance_scale - 1.0, dim).repeat(batch));
    let guided = prepared.guidance_scale > 1.0 && guidance_embedding.is_none();
    let cut_off = guided && prepared.guidance_cutoff.is_some();
    // SDXL's `force_zeros_for_empty_prompt`: no negative prompt conditions on zeros, not on the
    // encoders' embedding of "".
    let zero_negative = model
        .folder
        .xl
        .as_ref()
        .is_some_and(|xl| xl.force_zeros_for_empty_prompt && prepared.negative_prompt.is_empty());
    let embedding = if guided && !zero_negative {
        let (cond, uncond) = text::encode_guided(
            model,
            &prepared.prompt_chunks,
            &prepared.negative_chunks,
            prepared.clip_skip,
        )?;
        Guided::Both { cond, uncond }
    } else {
        let cond = text::encode_chunks(model, &prepared.prompt_chunks, prepared.clip_skip)?;
        let cond = text::concat_sequence(&cond);
        if guided {
            Guided::ZeroNegative(cond)
        } else {
            Guided::No(cond)
        }
    };
    let host = host_conditions(model, prepared, embedding, batch)?;
    let cond_only = cut_off.then(|| host.second_half().bind(model)).transpose()?;
    let guidance_embedding = match (model.unet_inputs.timestep_cond.as_ref(), guidance_embedding) {
        (Some(spec), Some(embedding)) => {
            let dim = embedding.len() / batch;
            Some(model.unet.bind(spec, HostTensor::new(vec![batch, dim], embedding))?)
        }
        _ => None,
    };
    Ok(Conditioning {
        batch: host.bind(model)?,
        cond_only,
        guidance: guided.then_some(prepared.guidance_scale),
        guidance_embedding,
        rescale: prepared.guidance_rescale,
    })
}

/// The prompts' embeddings as guidance needs them.
enum Guided {
    /// No classifier-free guidance: the prompt's alone.
    No(ChunkEmbedding),
    /// Guided, against the negative prompt's.
    Both {
        cond: ChunkEmbedding,
        uncond: ChunkEmbedding,
    },
    /// Guided, against zeros of the same shapes (SDXL's empty negative prompt).
    ZeroNegative(ChunkEmbedding),
}

/// The UNet's conditioning tensors for `batch` images: the hidden states, and for SDXL the
/// pooled embeddings and the size conditioning (the same `time_ids` for both halves, as diffusers
/// uses when no negative sizes are given).
fn host_conditions(
    model: &LoadedModel,
    prepared: &Prepared,
    embedding: Guided,
    batch: usize,
) -> Result<HostConditions, GenerationError> {
    let zeros_like = |e: &ChunkEmbedding| ChunkEmbedding {
        hidden: HostTensor::new(e.hidden.shape.clone(), vec![0.0; e.hidden.data.len()]),
        pooled: e
            .pooled
            .as_ref()
            .map(|p| HostTensor::new(p.shape.clone(), vec![0.0; p.data.len()])),
    };
    let rows: Vec<(ChunkEmbedding, usize)> = match embedding {
        Guided::No(cond) => vec![(cond, batch)],
        Guided::Both { cond, uncond } => vec![(uncond, batch), (cond, batch)],
        Guided::ZeroNegative(cond) => vec![(zeros_like(&cond), batch), (cond, batch)],
    };
    let text = concat_batch(
        &rows
            .iter()
            .map(|(e, n)| repeat_batch(&e.hidden, *n))
            .collect::<Vec<_>>(),
    );
    let total: usize = rows.iter().map(|(_, n)| n).sum();
    let xl = match (&model.unet_inputs.xl, &prepared.xl_sizes) {
        (Some(specs), Some(sizes)) => {
            let pooled = rows
                .iter()
                .map(|(e, n)| {
                    e.pooled.as_ref().map(|p| repeat_batch(p, *n)).ok_or_else(|| {
                        GenerationError::InvalidRequest("SDXL conditioning without a pooled embedding".into())
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            // One row per image: the negative prompt's rows (the first half when guided) take the
            // negative aesthetic score on a refiner.
            let negative_rows = rows.len() == 2;
            let time_ids: Vec<f32> = rows
                .iter()
                .enumerate()
                .flat_map(|(half, (_, n))| sizes.time_ids(negative_rows && half == 0).repeat(*n))
                .collect();
            let width = time_ids.len() / total.max(1);
            let declared = specs.time_ids.shape.get(1).copied().unwrap_or(-1);
            if declared > 0 && declared as usize != width {
                return Err(GenerationError::Model(crate::model::ModelError::Incompatible {
                    model: model.folder.name.clone(),
                    message: format!(
                        "the UNet takes {declared} time ids where this model's config gives {width} (SDXL base \
                         models take 6: original size, crop, target size; refiners 5: original size, crop, \
                         aesthetic score); its model_index.json's requires_aesthetics_score does not match its UNet"
                    ),
                }));
            }
            Some((concat_batch(&pooled), HostTensor::new(vec![total, width], time_ids)))
        }
        _ => None,
    };
    Ok(HostConditions { text, xl })
}

/// Where the loop stands, for reports.
struct Progress {
    /// 1-based step of this run.
    step: usize,
    total: usize,
    started: Instant,
}

/// Reports a step for every image of the batch: every `every_n_steps` steps and at the last one
/// with its latent and a preview of its predicted clean latent (`predicted_x0`), else the step
/// alone.
fn report_step(
    model: &mut LoadedModel,
    prepared: &Prepared,
    progress: &Progress,
    latents: &[f32],
    predicted_x0: &[f32],
    on_step: &mut dyn FnMut(usize, StepReport),
) -> Result<(), GenerationError> {
    let Progress { step, total, started } = *progress;
    let every = prepared.preview.every_n_steps.max(1) as usize;
    let shape = &prepared.latent_shape;
    let plane: usize = shape.iter().product();
    let with_previews = step % every == 0 || step == total;
    for (image, latent) in latents.chunks(plane).enumerate() {
        let (mut latent_report, mut preview) = (None, None);
        if with_previews {
            let predicted = &predicted_x0[image * plane..(image + 1) * plane];
            latent_report = prepared
                .preview
                .latents
                .then(|| HostTensor::new(shape.clone(), latent.to_vec()));
            preview = match prepared.preview.image {
                PreviewKind::None => None,
                PreviewKind::Approx => approx_preview(predicted, shape),
                PreviewKind::Full => Some(vae::decode_preview(model, predicted, shape, prepared.vae_tiled)?),
            };
        }
        on_step(
            image,
            StepReport {
                step,
                total,
                elapsed: started.elapsed(),
                latent: latent_report,
                preview,
            },
        );
    }
    Ok(())
}

/// A batch's noise: a draw for the whole batch is split evenly, image `i`'s share coming from
/// its own source (every sampler draws one latent-sized tensor for the batch at a time).
struct BatchNoise<'a, 'b>(&'a mut [&'b mut dyn NoiseSource]);

impl NoiseSource for BatchNoise<'_, '_> {
    fn fill_standard_normal(&mut self, out: &mut [f32]) {
        let share = out.len() / self.0.len();
        assert_eq!(share * self.0.len(), out.len(), "a batch draw must split evenly");
        for (part, source) in out.chunks_mut(share).zip(self.0.iter_mut()) {
            source.fill_standard_normal(part);
        }
    }
}

/// One UNet evaluation of `sample` (`[n, C, h, w]`); with guidance (and `guided`: before the
/// cut-off), on the batch [sample; sample] against [uncond; cond], combined as
/// `uncond + guidance · (cond − uncond)`; past the cut-off, on the conditional half alone.
/// Returns the noise prediction `[n, latent channels, h, w]`.
fn predict_noise(
    model: &mut LoadedModel,
    mut sample: Vec<f32>,
    shape: &[usize],
    timestep: f64,
    conditioning: &Conditioning,
    guided: bool,
    last_of_job: bool,
) -> Result<Vec<f32>, GenerationError> {
    let rescale = conditioning.rescale;
    // Past the cut-off: the conditional half of [uncond; cond] alone, unguided.
    let (guidance, conditions) = match (conditioning.guidance, &conditioning.cond_only) {
        (Some(_), Some(cond_only)) if !guided => (None, cond_only),
        (guidance, _) => (guidance, &conditioning.batch),
    };
    let mut batch_shape = shape.to_vec();
    if guidance.is_some() {
        // [sample; sample], grown in the step's own buffer.
        batch_shape[0] *= 2;
        sample.extend_from_within(..);
    }
    let batch = batch_shape[0];
    let inputs = &model.unet_inputs;
    let timestep = if inputs.timestep.rank() == 0 {
        HostTensor::new(vec![], vec![timestep as f32])
    } else {
        HostTensor::new(vec![batch], vec![timestep as f32; batch])
    };
    let (sample_spec, timestep_spec, text_spec) = (
        inputs.sample.clone(),
        inputs.timestep.clone(),
        inputs.encoder_hidden_states.clone(),
    );
    let cond_spec = inputs.timestep_cond.clone();
    let mut feed = vec![
        (&sample_spec, Input::Float(HostTensor::new(batch_shape, sample))),
        (&timestep_spec, Input::Float(timestep)),
        (&text_spec, Input::Bound(&conditions.text)),
    ];
    let xl_specs = inputs.xl.clone();
    if let (Some(specs), Some((pooled, time_ids))) = (xl_specs.as_ref(), conditions.xl.as_ref()) {
        feed.push((&specs.text_embeds, Input::Bound(pooled)));
        feed.push((&specs.time_ids, Input::Bound(time_ids)));
    }
    if let (Some(spec), Some(embedding)) = (cond_spec.as_ref(), conditioning.guidance_embedding.as_ref()) {
        feed.push((spec, Input::Bound(embedding)));
    }
    // Steps reuse the arena's buffers; after the last one they go back to the system.
    let mut outputs = if last_of_job {
        model.unet.run_releasing(feed)?
    } else {
        model.unet.run(feed)?
    };
    let out = outputs.swap_remove(0).data;
    Ok(match guidance {
        None => out,
        Some(scale) => {
            let (uncond, cond) = out.split_at(out.len() / 2);
            let mut guided: Vec<f32> = uncond.iter().zip(cond).map(|(u, c)| u + scale * (c - u)).collect();
            if rescale > 0.0 {
                let per_image = guided.len() / shape[0].max(1);
                for (guided, cond) in guided.chunks_mut(per_image).zip(cond.chunks(per_image)) {
                    rescale_guided(guided, cond, rescale);
                }
            }
            guided
        }
    })
}

/// diffusers' `rescale_noise_cfg` on one image's guided prediction: mixed, by `rescale`, with
/// itself scaled to the conditional prediction's standard deviation (unbiased, as `torch.std`).
fn rescale_guided(guided: &mut [f32], cond: &[f32], rescale: f32) {
    let std = |values: &[f32]| {
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let squares = values.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>();
        (squares / (n - 1.0).max(1.0)).sqrt()
    };
    let (std_cond, std_guided) = (std(cond), std(guided));
    if std_guided == 0.0 {
        return;
    }
    let factor = (std_cond / std_guided) as f32;
    for value in guided {
        *value = rescale * (*value * factor) + (1.0 - rescale) * *value;
    }
}

/// One UNet run on the smallest latent the UNet takes, only to have ONNX Runtime shrink the
/// session's arena afterwards (see `OnnxModel::run_releasing`): the arena keeps a cancelled
/// job's peak otherwise. Best effort: its result and any error are ignored.
fn release_unet_memory(model: &mut LoadedModel, conditioning: &Conditioning, batch: usize, timestep: f64) {
    let folder = &model.folder;
    let side = (folder.size_multiple / folder.vae_factor).max(1);
    let shape = [batch, folder.unet_in_channels, side, side];
    let sample = vec![0.0; shape.iter().product()];
    if let Err(error) = predict_noise(model, sample, &shape, timestep, conditioning, true, true) {
        tracing::debug!(%error, "the run that releases the UNet's memory failed");
    }
}

/// The guidance-scale embedding LCM-distilled UNets take as `timestep_cond` (diffusers'
/// `get_guidance_scale_embedding`): sinusoids of `w · 1000` at `dim / 2` frequencies from 1 down
/// to 1/10000, sines first, then cosines. Computed in f32 like the reference.
pub fn guidance_scale_embedding(w: f32, dim: usize) -> Vec<f32> {
    let half = dim / 2;
    let scale = 10000f32.ln() / (half as f32 - 1.0);
    let w = w * 1000.0;
    let angles: Vec<f32> = (0..half).map(|i| w * (i as f32 * -scale).exp()).collect();
    let mut embedding: Vec<f32> = angles
        .iter()
        .map(|a| a.sin())
        .chain(angles.iter().map(|a| a.cos()))
        .collect();
    embedding.resize(dim, 0.0);
    embedding
}

/// `[2n, …]` → its last `n` rows: the conditional half of a guided batch.
fn second_half(tensor: &HostTensor<f32>) -> HostTensor<f32> {
    let mut shape = tensor.shape.clone();
    shape[0] /= 2;
    HostTensor::new(shape, tensor.data[tensor.data.len() / 2..].to_vec())
}

/// `[1, …]` → `[n, …]`, the same tensor `n` times.
fn repeat_batch(tensor: &HostTensor<f32>, n: usize) -> HostTensor<f32> {
    let mut shape = tensor.shape.clone();
    shape[0] *= n;
    HostTensor::new(shape, tensor.data.repeat(n))
}

fn concat_batch(parts: &[HostTensor<f32>]) -> HostTensor<f32> {
    let mut shape = parts[0].shape.clone();
    shape[0] = parts.iter().map(|p| p.shape[0]).sum();
    HostTensor::new(shape, parts.iter().flat_map(|p| p.data.iter().copied()).collect())
}

#[cfg(test)]
mod tests {
    use super::rescale_guided;

    #[test]
    fn rescale_mixes_in_the_prediction_at_the_conditional_std() {
        let cond = [1.0, -1.0, 1.0, -1.0];
        // std(cond) = sqrt(4/3), std(guided) = sqrt(40/3): the factor is sqrt(1/10).
        let factor = 0.1f32.sqrt();
        let mut guided = [4.0, -4.0, 2.0, -2.0];
        rescale_guided(&mut guided, &cond, 1.0);
        for (got, want) in guided.iter().zip([4.0, -4.0, 2.0, -2.0].map(|v| v * factor)) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        let mut half = [4.0, -4.0, 2.0, -2.0];
        rescale_guided(&mut half, &cond, 0.5);
        assert!((half[0] - (0.5 * 4.0 * factor + 0.5 * 4.0)).abs() < 1e-6, "{half:?}");
    }
}
