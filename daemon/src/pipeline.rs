//! Text-to-image and img2img: the denoising loop of Stable Diffusion, written to read like the
//! paper.
//!
//! 1. Encode the prompt (and, with guidance, the negative prompt) with the text encoder.
//! 2. Start from Gaussian noise scaled by the sampler's `init_noise_sigma` — or, for img2img,
//!    from the picture's latent noised to the level where the run starts (diffusers' strength:
//!    skip the first `steps − int(steps · strength)` steps).
//! 3. For each timestep: scale the input, run the UNet on [uncond, cond] as one batch, combine
//!    them with classifier-free guidance, let the sampler take a step.
//! 4. Decode the final latent with the VAE.
//!
//! It knows nothing of gRPC or jobs: a caller passes a [`Request`], a noise source, a
//! cancellation check and a progress callback. It runs on a worker thread, never on the
//! async runtime.

use std::time::{Duration, Instant};

use crate::image::{RgbImage, approx_preview};
use crate::model::onnx::{HostTensor, Input, OnnxError};
use crate::model::{LoadedModel, ModelError};
use crate::sampler::{self, NoiseSource, SamplerError, SamplerKind};

/// What to generate. Sizes are validated by the caller against the model (see `validate`).
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: String,
    pub negative_prompt: String,
    pub width: u32,
    pub height: u32,
    pub steps: usize,
    pub guidance_scale: f32,
    pub sampler: SamplerKind,
    /// Unit-variance initial noise `[1, C, H/f, W/f]`; drawn from the noise source when absent.
    /// For img2img it is the noise `add_noise` mixes into the picture's latent.
    pub init_noise: Option<HostTensor<f32>>,
    pub init_image: Option<InitImage>,
    pub preview: PreviewSettings,
}

/// img2img's starting picture, already at the request's size.
#[derive(Debug, Clone)]
pub struct InitImage {
    /// `[1, 3, H, W]` in −1..1.
    pub pixels: HostTensor<f32>,
    /// In (0, 1]: how much of the schedule runs (1 = all of it, from a fully noised latent).
    pub strength: f64,
}

/// Where an img2img run enters the schedule, as diffusers' `get_timesteps` computes it:
/// `init_timestep = min(int(steps · strength), steps)`, `t_start = steps − init_timestep`.
/// Returns `None` when no step would run.
pub fn img2img_start(steps: usize, strength: f64) -> Option<usize> {
    // Python multiplies an int by a float64 and truncates (so strength travels as a double:
    // as f32, 0.7 × 10 would truncate to 6).
    let init_timestep = ((steps as f64 * strength) as usize).min(steps);
    (init_timestep > 0).then(|| steps - init_timestep)
}

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
    /// VAE decode of the predicted clean latent.
    Full,
}

/// One step's report.
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

#[derive(Debug)]
pub struct Output {
    pub image: RgbImage,
    pub timings: Timings,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error("{0}")]
    Tokenizer(String),
}

/// Latent shape `[1, C, H/f, W/f]` of a request on `model`.
pub fn latent_shape(model: &LoadedModel, width: u32, height: u32) -> Vec<usize> {
    let f = model.folder.vae_factor;
    vec![1, model.folder.latent_channels, height as usize / f, width as usize / f]
}

/// Runs one text-to-image generation.
pub fn generate(
    model: &mut LoadedModel,
    request: &Request,
    noise: &mut dyn NoiseSource,
    is_cancelled: &dyn Fn() -> bool,
    on_step: &mut dyn FnMut(StepReport),
) -> Result<Output, PipelineError> {
    let mut timings = Timings::default();
    let started = Instant::now();
    // An LCM-distilled UNet takes the guidance scale as an embedding instead of running the
    // unconditional batch (diffusers: no classifier-free guidance when `time_cond_proj_dim` is
    // set).
    let guidance_embedding = model
        .unet_inputs
        .guidance_embedding_dim()
        .map(|dim| guidance_scale_embedding(request.guidance_scale - 1.0, dim));
    let guided = request.guidance_scale > 1.0 && guidance_embedding.is_none();
    let text = if guided {
        let (cond, uncond) = encode_guided(model, &request.prompt, &request.negative_prompt)?;
        concat_batch(&[&uncond, &cond])
    } else {
        concat_sequence(&encode_prompt(model, &request.prompt)?)
    };
    timings.encode = started.elapsed();

    let denoise_started = Instant::now();
    let mut scheduler = sampler::build(request.sampler, &model.folder.scheduler, request.steps)?;
    let shape = latent_shape(model, request.width, request.height);
    // img2img encodes the picture first: its sampling draws before the starting noise does, as
    // in diffusers, so the same noise stream gives the same picture.
    let image_latents = match &request.init_image {
        Some(init) => Some(encode_image(model, &init.pixels, &shape, noise)?),
        None => None,
    };
    let start_noise = match &request.init_noise {
        Some(given) => {
            if given.shape != shape {
                return Err(PipelineError::InvalidRequest(format!(
                    "init noise has shape {:?}, but a {}x{} picture on this model needs {:?}",
                    given.shape, request.width, request.height, shape
                )));
            }
            given.data.clone()
        }
        None => noise.standard_normal(shape.iter().product()),
    };
    let (first, mut latents) = match (&request.init_image, image_latents) {
        (Some(init), Some(image_latents)) => {
            let t_start = img2img_start(request.steps, init.strength).ok_or_else(|| {
                PipelineError::InvalidRequest(format!(
                    "strength {} with {} steps runs no step; raise the strength or the steps",
                    init.strength, request.steps
                ))
            })?;
            let first = t_start * scheduler.order();
            (first, scheduler.add_noise(&image_latents, &start_noise, first))
        }
        _ => {
            let sigma = scheduler.init_noise_sigma() as f32;
            (0, start_noise.into_iter().map(|v| v * sigma).collect())
        }
    };

    let timesteps = scheduler.timesteps().to_vec();
    let total = timesteps.len() - first;
    let every = request.preview.every_n_steps.max(1) as usize;
    for (index, &t) in timesteps.iter().enumerate().skip(first) {
        if is_cancelled() {
            return Err(PipelineError::Cancelled);
        }
        let mut model_input = latents.clone();
        scheduler.scale_model_input(&mut model_input, index);
        let noise_pred = predict_noise(
            model,
            &model_input,
            &shape,
            t,
            &text,
            guided.then_some(request.guidance_scale),
            guidance_embedding.as_deref(),
        )?;
        let output = scheduler.step(&noise_pred, index, &latents, noise);
        latents = output.prev_sample;

        let step = index + 1 - first;
        let report_now = step % every == 0 || step == total;
        let mut report = StepReport {
            step,
            total,
            elapsed: denoise_started.elapsed(),
            latent: None,
            preview: None,
        };
        if report_now && request.preview.latents {
            report.latent = Some(HostTensor::new(shape.clone(), latents.clone()));
        }
        if report_now {
            report.preview = match request.preview.image {
                PreviewKind::None => None,
                PreviewKind::Approx => approx_preview(&output.pred_original_sample, &shape),
                PreviewKind::Full => Some(decode(model, &output.pred_original_sample, &shape)?),
            };
        }
        on_step(report);
    }
    timings.denoise = denoise_started.elapsed();

    let decode_started = Instant::now();
    let image = decode(model, &latents, &shape)?;
    timings.decode = decode_started.elapsed();
    Ok(Output { image, timings })
}

/// A prompt → its weighted chunk embeddings, each `[1, 77, D]` (see [`crate::prompt`]).
pub fn encode_prompt(model: &mut LoadedModel, prompt: &str) -> Result<Vec<HostTensor<f32>>, PipelineError> {
    let pieces = crate::prompt::parse(prompt).map_err(|e| PipelineError::InvalidRequest(e.to_string()))?;
    let tokenizer = &model.folder.tokenizer;
    let chunks = crate::prompt::chunk(&pieces, tokenizer.max_length() - 2, |text| tokenizer.token_ids(text))
        .map_err(|e| PipelineError::Tokenizer(e.to_string()))?;
    chunks
        .iter()
        .map(|(ids, weights)| encode_chunk(model, ids, weights))
        .collect()
}

/// Prompt and negative prompt → (cond, uncond), each `[1, 77·k, D]` with the same k: the one
/// with fewer chunks is evened out with empty-prompt chunks, as AUTOMATIC1111 does.
pub fn encode_guided(
    model: &mut LoadedModel,
    prompt: &str,
    negative: &str,
) -> Result<(HostTensor<f32>, HostTensor<f32>), PipelineError> {
    let (mut cond, mut uncond) = (encode_prompt(model, prompt)?, encode_prompt(model, negative)?);
    while cond.len() != uncond.len() {
        let shorter = if cond.len() < uncond.len() {
            &mut cond
        } else {
            &mut uncond
        };
        shorter.push(encode_chunk(model, &[], &[])?);
    }
    Ok((concat_sequence(&cond), concat_sequence(&uncond)))
}

/// One chunk (ids without BOS/EOS, and their weights) → the text encoder's last hidden state
/// `[1, 77, D]`, with the weights applied.
fn encode_chunk(model: &mut LoadedModel, body: &[i64], weights: &[f64]) -> Result<HostTensor<f32>, PipelineError> {
    let ids = model.folder.tokenizer.wrap_chunk(body);
    let mut token_weights = vec![1.0; ids.len()];
    token_weights[1..1 + weights.len()].copy_from_slice(weights);
    let input = Input::Int(HostTensor::new(vec![1, ids.len()], ids));
    let spec = model.text_input_ids.clone();
    let mut outputs = model.text_encoder.run(vec![(&spec, input)])?;
    let index = model
        .text_encoder
        .outputs
        .iter()
        .position(|o| o.name == "last_hidden_state")
        .unwrap_or(0);
    let mut embedding = outputs.swap_remove(index);
    crate::prompt::apply_weights(&mut embedding.data, &token_weights);
    Ok(embedding)
}

/// Chunks `[1, 77, D]` → `[1, 77·k, D]`.
fn concat_sequence(chunks: &[HostTensor<f32>]) -> HostTensor<f32> {
    let mut shape = chunks[0].shape.clone();
    shape[1] = chunks.iter().map(|c| c.shape[1]).sum();
    HostTensor::new(shape, chunks.iter().flat_map(|c| c.data.iter().copied()).collect())
}

/// One UNet evaluation; with `guidance`, on the batch [uncond, cond], combined as
/// `uncond + guidance · (cond − uncond)`.
fn predict_noise(
    model: &mut LoadedModel,
    sample: &[f32],
    shape: &[usize],
    timestep: f64,
    text: &HostTensor<f32>,
    guidance: Option<f32>,
    guidance_embedding: Option<&[f32]>,
) -> Result<Vec<f32>, PipelineError> {
    let batch = if guidance.is_some() { 2 } else { 1 };
    let mut batch_shape = shape.to_vec();
    batch_shape[0] = batch;
    let sample = if batch == 2 {
        [sample, sample].concat()
    } else {
        sample.to_vec()
    };
    let inputs = &model.unet_inputs;
    let timestep_shape = if inputs.timestep.rank() == 0 {
        vec![]
    } else {
        vec![batch]
    };
    let timestep = HostTensor::new(
        timestep_shape,
        vec![timestep as f32; if inputs.timestep.rank() == 0 { 1 } else { batch }],
    );
    let (sample_spec, timestep_spec, text_spec) = (
        inputs.sample.clone(),
        inputs.timestep.clone(),
        inputs.encoder_hidden_states.clone(),
    );
    let cond_spec = inputs.timestep_cond.clone();
    let mut feed = vec![
        (&sample_spec, Input::Float(HostTensor::new(batch_shape, sample))),
        (&timestep_spec, Input::Float(timestep)),
        (&text_spec, Input::Float(text.clone())),
    ];
    if let (Some(spec), Some(embedding)) = (cond_spec.as_ref(), guidance_embedding) {
        feed.push((
            spec,
            Input::Float(HostTensor::new(vec![1, embedding.len()], embedding.to_vec())),
        ));
    }
    let mut outputs = model.unet.run(feed)?;
    let out = outputs.swap_remove(0).data;
    Ok(match guidance {
        None => out,
        Some(scale) => {
            let (uncond, cond) = out.split_at(out.len() / 2);
            uncond.iter().zip(cond).map(|(u, c)| u + scale * (c - u)).collect()
        }
    })
}

/// Picture → scaled latent: the VAE encoder's distribution sampled with the noise source
/// (`mean + exp(0.5 · clamp(logvar, −30, 20)) · ε`), or a legacy encoder's `latent_sample` as
/// it is; then × `scaling_factor`.
fn encode_image(
    model: &mut LoadedModel,
    pixels: &HostTensor<f32>,
    latent_shape: &[usize],
    noise: &mut dyn NoiseSource,
) -> Result<Vec<f32>, PipelineError> {
    let scaling = model.folder.scaling_factor;
    let channels = latent_shape[1];
    let model_name = model.folder.name.clone();
    let encoder = model.vae_encoder()?;
    let spec = encoder.input.clone();
    let mut outputs = encoder.model.run(vec![(&spec, Input::Float(pixels.clone()))])?;
    let encoded = outputs.swap_remove(encoder.output);
    let mut expected = latent_shape.to_vec();
    let latent = if encoded.shape.get(1) == Some(&(2 * channels)) {
        expected[1] = 2 * channels;
        if encoded.shape != expected {
            return Err(shape_error(&model_name, &encoded.shape, &expected));
        }
        let plane = encoded.data.len() / 2;
        let (mean, logvar) = encoded.data.split_at(plane);
        let eps = noise.standard_normal(plane);
        mean.iter()
            .zip(logvar)
            .zip(&eps)
            .map(|((m, lv), e)| m + (0.5 * lv.clamp(-30.0f32, 20.0)).exp() * e)
            .collect()
    } else {
        if encoded.shape != expected {
            return Err(shape_error(&model_name, &encoded.shape, &expected));
        }
        encoded.data
    };
    Ok(latent.into_iter().map(|v: f32| v * scaling).collect())
}

fn shape_error(model: &str, got: &[usize], expected: &[usize]) -> PipelineError {
    PipelineError::Model(ModelError::Incompatible {
        model: model.to_string(),
        message: format!("the VAE encoder returned shape {got:?}, expected {expected:?} (or twice the channels)"),
    })
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

/// Latent → RGB picture, as diffusers' `(decode(z / scaling_factor) / 2 + 0.5).clamp(0, 1)`.
fn decode(model: &mut LoadedModel, latents: &[f32], shape: &[usize]) -> Result<RgbImage, PipelineError> {
    let scale = 1.0 / model.folder.scaling_factor;
    let scaled: Vec<f32> = latents.iter().map(|v| v * scale).collect();
    let spec = model.vae_latent.clone();
    let mut outputs = model
        .vae_decoder
        .run(vec![(&spec, Input::Float(HostTensor::new(shape.to_vec(), scaled)))])?;
    let decoded = outputs.swap_remove(0);
    RgbImage::from_nchw_signed(&decoded).ok_or_else(|| {
        PipelineError::Model(ModelError::Incompatible {
            model: model.folder.name.clone(),
            message: format!(
                "the VAE decoder returned shape {:?}, expected [1, 3, H, W]",
                decoded.shape
            ),
        })
    })
}

fn concat_batch(parts: &[&HostTensor<f32>]) -> HostTensor<f32> {
    let mut shape = parts[0].shape.clone();
    shape[0] = parts.iter().map(|p| p.shape[0]).sum();
    HostTensor::new(shape, parts.iter().flat_map(|p| p.data.iter().copied()).collect())
}
