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
//! It consumes a [`Prepared`] request (every check was made there) and knows nothing of jobs or
//! gRPC: a caller passes noise sources, a cancellation check and a progress callback. It runs
//! on a worker thread, never on the async runtime.

use std::time::{Duration, Instant};

use crate::model::LoadedModel;
use crate::model::onnx::{HostTensor, Input};

use super::GenerationError;
use super::image::{RgbImage, approx_preview};
use super::latents::{EncodedInit, ImageDraws};
use super::prepare::Prepared;
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

/// A batch's pictures, in the order of its noise sources.
#[derive(Debug)]
pub struct BatchOutput {
    pub images: Vec<RgbImage>,
    pub timings: Timings,
}

/// The text embeddings the UNet is conditioned on, for the whole batch.
struct Conditioning {
    /// `[2n, 77·k, D]` ([uncond × n; cond × n]) with classifier-free guidance, else `[n, 77·k, D]`.
    text: HostTensor<f32>,
    /// The guidance scale, when classifier-free guidance runs.
    guidance: Option<f32>,
    /// An LCM-distilled UNet's `timestep_cond`, repeated per image.
    guidance_embedding: Option<Vec<f32>>,
}

/// Runs one generation per noise source, denoised together as one UNet batch, and returns the
/// decoded pictures (before inpainting's composite, see [`super::generate_batch`]). Image `i`
/// draws all its randomness from `noises[i]`, in the order a lone run draws it, so each image
/// equals the one a single run with that noise source makes. `on_step` gets each image's
/// report (image index in the batch, report) after every step.
pub fn run_batch(
    model: &mut LoadedModel,
    prepared: &Prepared,
    noises: &mut [&mut dyn NoiseSource],
    is_cancelled: &dyn Fn() -> bool,
    on_step: &mut dyn FnMut(usize, StepReport),
) -> Result<BatchOutput, GenerationError> {
    let batch = noises.len();
    assert!(batch > 0, "a batch needs at least one noise source");
    let mut timings = Timings::default();
    let started = Instant::now();
    let conditioning = condition(model, prepared, batch)?;
    timings.encode = started.elapsed();

    let denoise_started = Instant::now();
    let mut scheduler = prepared.scheduler.clone();
    let shape = &prepared.latent_shape;
    let plane: usize = shape.iter().product();
    let first = prepared.first_step;
    let init = EncodedInit::encode(model, prepared)?;
    let images: Vec<ImageDraws> = noises
        .iter_mut()
        .map(|noise| init.draw(&mut **noise, prepared.init_noise.as_ref(), plane))
        .collect();
    let mut latents: Vec<f32> = images
        .iter()
        .flat_map(|image| init.starting_latent(image, scheduler.as_ref(), first))
        .collect();
    let mut batch_shape = shape.clone();
    batch_shape[0] = batch;

    let timesteps = scheduler.timesteps().to_vec();
    let total = timesteps.len() - first;
    let mut batch_noise = BatchNoise(noises);
    let mut denoise = |model: &mut LoadedModel| -> Result<(), GenerationError> {
        for (index, &t) in timesteps.iter().enumerate().skip(first) {
            if is_cancelled() {
                return Err(GenerationError::Cancelled);
            }
            let mut model_input = latents.clone();
            scheduler.scale_model_input(&mut model_input, index);
            let (unet_input, input_shape) = init.unet_input(model_input, &images, &batch_shape);
            let last = index + 1 == timesteps.len();
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

    let decode_started = Instant::now();
    let images = latents
        .chunks(plane)
        .map(|latent| vae::decode_with(model, prepared.decoder, latent, shape, prepared.vae_tiled))
        .collect::<Result<Vec<_>, _>>()?;
    timings.decode = decode_started.elapsed();
    Ok(BatchOutput { images, timings })
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
    let text = if guided {
        let (cond, uncond) = text::encode_guided(
            model,
            &prepared.prompt_chunks,
            &prepared.negative_chunks,
            prepared.clip_skip,
        )?;
        concat_batch(&[&repeat_batch(&uncond, batch), &repeat_batch(&cond, batch)])
    } else {
        let cond = text::encode_chunks(model, &prepared.prompt_chunks, prepared.clip_skip)?;
        repeat_batch(&text::concat_sequence(&cond), batch)
    };
    Ok(Conditioning {
        text,
        guidance: guided.then_some(prepared.guidance_scale),
        guidance_embedding,
    })
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
    sample: Vec<f32>,
    shape: &[usize],
    timestep: f64,
    conditioning: &Conditioning,
    guided: bool,
    last_of_job: bool,
) -> Result<Vec<f32>, GenerationError> {
    // Past the cut-off: the conditional half of [uncond; cond] alone, unguided.
    let (guidance, text) = match conditioning.guidance {
        Some(_) if !guided => (None, second_half(&conditioning.text)),
        guidance => (guidance, conditioning.text.clone()),
    };
    let mut batch_shape = shape.to_vec();
    let sample = if guidance.is_some() {
        batch_shape[0] *= 2;
        [sample.as_slice(), sample.as_slice()].concat()
    } else {
        sample
    };
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
        (&text_spec, Input::Float(text)),
    ];
    if let (Some(spec), Some(embedding)) = (cond_spec.as_ref(), conditioning.guidance_embedding.as_deref()) {
        let rows = shape[0];
        feed.push((
            spec,
            Input::Float(HostTensor::new(vec![rows, embedding.len() / rows], embedding.to_vec())),
        ));
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
            uncond.iter().zip(cond).map(|(u, c)| u + scale * (c - u)).collect()
        }
    })
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

fn concat_batch(parts: &[&HostTensor<f32>]) -> HostTensor<f32> {
    let mut shape = parts[0].shape.clone();
    shape[0] = parts.iter().map(|p| p.shape[0]).sum();
    HostTensor::new(shape, parts.iter().flat_map(|p| p.data.iter().copied()).collect())
}
