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
    /// For img2img it is the noise `add_noise` mixes into the picture's latent. Every image of
    /// a batch starts from it.
    pub init_noise: Option<HostTensor<f32>>,
    pub init_image: Option<InitImage>,
    /// AUTOMATIC1111's clip skip: 1 = the text encoder's last layer, 2 = the one before, …
    pub clip_skip: usize,
    pub preview: PreviewSettings,
}

/// img2img's (and inpainting's) starting picture, already at the request's size.
#[derive(Debug, Clone)]
pub struct InitImage {
    /// `[1, 3, H, W]` in −1..1.
    pub pixels: HostTensor<f32>,
    /// In (0, 1]: how much of the schedule runs (1 = all of it, from a fully noised latent).
    pub strength: f64,
    /// Inpainting: which part to repaint.
    pub mask: Option<crate::inpaint::Mask>,
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

/// A batch's pictures, in the order of its noise sources.
#[derive(Debug)]
pub struct BatchOutput {
    pub images: Vec<RgbImage>,
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

/// Runs one generation.
pub fn generate(
    model: &mut LoadedModel,
    request: &Request,
    noise: &mut dyn NoiseSource,
    is_cancelled: &dyn Fn() -> bool,
    on_step: &mut dyn FnMut(StepReport),
) -> Result<Output, PipelineError> {
    let mut on_batch_step = |_: usize, report: StepReport| on_step(report);
    let mut batch = generate_batch(model, request, &mut [noise], is_cancelled, &mut on_batch_step)?;
    Ok(Output {
        image: batch.images.remove(0),
        timings: batch.timings,
    })
}

/// Runs one generation per noise source, denoised together as one UNet batch. Image `i` draws
/// all its randomness from `noises[i]`, in the order a lone run draws it, so each image equals
/// the one a single run with that noise source makes. `on_step` gets each image's report
/// (image index in the batch, report) after every step.
pub fn generate_batch(
    model: &mut LoadedModel,
    request: &Request,
    noises: &mut [&mut dyn NoiseSource],
    is_cancelled: &dyn Fn() -> bool,
    on_step: &mut dyn FnMut(usize, StepReport),
) -> Result<BatchOutput, PipelineError> {
    let batch = noises.len();
    assert!(batch > 0, "a batch needs at least one noise source");
    let mut timings = Timings::default();
    let started = Instant::now();
    // An LCM-distilled UNet takes the guidance scale as an embedding instead of running the
    // unconditional batch (diffusers: no classifier-free guidance when `time_cond_proj_dim` is
    // set).
    let guidance_embedding = model
        .unet_inputs
        .guidance_embedding_dim()
        .map(|dim| guidance_scale_embedding(request.guidance_scale - 1.0, dim).repeat(batch));
    let guided = request.guidance_scale > 1.0 && guidance_embedding.is_none();
    let text = if guided {
        let (cond, uncond) = encode_guided(model, &request.prompt, &request.negative_prompt, request.clip_skip)?;
        let uncond = repeat_batch(&uncond, batch);
        concat_batch(&[&uncond, &repeat_batch(&cond, batch)])
    } else {
        repeat_batch(
            &concat_sequence(&encode_prompt(model, &request.prompt, request.clip_skip)?),
            batch,
        )
    };
    timings.encode = started.elapsed();

    let denoise_started = Instant::now();
    let mut scheduler = sampler::build(request.sampler, &model.folder.scheduler, request.steps)?;
    let shape = latent_shape(model, request.width, request.height);
    let plane: usize = shape.iter().product();
    if let Some(given) = &request.init_noise
        && given.shape != shape
    {
        return Err(PipelineError::InvalidRequest(format!(
            "init noise has shape {:?}, but a {}x{} picture on this model needs {:?}",
            given.shape, request.width, request.height, shape
        )));
    }
    let start = Start::prepare(model, request, &shape)?;
    let first = match &request.init_image {
        Some(init) => {
            let t_start = img2img_start(request.steps, init.strength).ok_or_else(|| {
                PipelineError::InvalidRequest(format!(
                    "strength {} with {} steps runs no step; raise the strength or the steps",
                    init.strength, request.steps
                ))
            })?;
            t_start * scheduler.order()
        }
        None => 0,
    };

    // Each image draws in diffusers' order: the picture's latent sample, the starting noise,
    // then (inpainting) the masked picture's latent sample.
    let mut images = Vec::with_capacity(batch);
    for noise in noises.iter_mut() {
        images.push(start.draw(&mut **noise, request.init_noise.as_ref(), plane));
    }
    let mut latents = Vec::with_capacity(batch * plane);
    for image in &images {
        latents.extend(match &image.picture_latent {
            Some(x0) if !start.from_pure_noise => scheduler.add_noise(x0, &image.noise, first),
            _ => {
                let sigma = scheduler.init_noise_sigma() as f32;
                image.noise.iter().map(|v| v * sigma).collect()
            }
        });
    }
    let mut batch_shape = shape.clone();
    batch_shape[0] = batch;

    let timesteps = scheduler.timesteps().to_vec();
    let total = timesteps.len() - first;
    let every = request.preview.every_n_steps.max(1) as usize;
    let mut batch_noise = BatchNoise(noises);
    for (index, &t) in timesteps.iter().enumerate().skip(first) {
        if is_cancelled() {
            return Err(PipelineError::Cancelled);
        }
        let mut model_input = latents.clone();
        scheduler.scale_model_input(&mut model_input, index);
        let (unet_input, input_shape) = start.unet_input(model_input, &images, &batch_shape);
        let noise_pred = predict_noise(
            model,
            unet_input,
            &input_shape,
            t,
            &text,
            guided.then_some(request.guidance_scale),
            guidance_embedding.as_deref(),
        )?;
        let output = scheduler.step(&noise_pred, index, &latents, &mut batch_noise);
        latents = output.prev_sample;
        // A UNet that cannot see the mask keeps the unmasked part on the picture's own
        // trajectory: its latent re-noised to the next step's level (clean after the last).
        if let Some(mask) = start.blend_mask() {
            for (image, current) in images.iter().zip(latents.chunks_mut(plane)) {
                let x0 = image
                    .picture_latent
                    .as_deref()
                    .expect("blending keeps the picture latent");
                let proper = if index + 1 < timesteps.len() {
                    scheduler.add_noise(x0, &image.noise, index + 1)
                } else {
                    x0.to_vec()
                };
                crate::inpaint::blend(current, &proper, mask);
            }
        }

        let step = index + 1 - first;
        if step % every != 0 && step != total {
            for image in 0..batch {
                on_step(image, report(step, total, denoise_started, None, None));
            }
            continue;
        }
        for image in 0..batch {
            let range = image * plane..(image + 1) * plane;
            let latent = request
                .preview
                .latents
                .then(|| HostTensor::new(shape.clone(), latents[range.clone()].to_vec()));
            let predicted = &output.pred_original_sample[range];
            let preview = match request.preview.image {
                PreviewKind::None => None,
                PreviewKind::Approx => approx_preview(predicted, &shape),
                PreviewKind::Full => Some(decode(model, predicted, &shape)?),
            };
            on_step(image, report(step, total, denoise_started, latent, preview));
        }
    }
    timings.denoise = denoise_started.elapsed();

    let decode_started = Instant::now();
    let images = latents
        .chunks(plane)
        .map(|latent| decode(model, latent, &shape))
        .collect::<Result<Vec<_>, _>>()?;
    timings.decode = decode_started.elapsed();
    Ok(BatchOutput { images, timings })
}

fn report(
    step: usize,
    total: usize,
    started: Instant,
    latent: Option<HostTensor<f32>>,
    preview: Option<RgbImage>,
) -> StepReport {
    StepReport {
        step,
        total,
        elapsed: started.elapsed(),
        latent,
        preview,
    }
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

/// What the run starts from, shared by the batch: the picture's latent distribution (img2img,
/// and inpainting when it needs it), and the inpainting mask with the masked picture's
/// distribution.
struct Start<'r> {
    picture: Option<LatentDistribution>,
    /// Inpainting: the latent-resolution mask, and (for a 9-channel UNet) the masked picture.
    mask: Option<&'r crate::inpaint::Mask>,
    masked_picture: Option<LatentDistribution>,
    /// Whether the masked picture's latent is drawn (diffusers encodes it for every inpainting
    /// run, so its draw is part of the noise stream even when a 4-channel UNet ignores it).
    draws_masked: bool,
    /// Inpainting at strength 1: start from pure noise, as diffusers' `is_strength_max` does.
    from_pure_noise: bool,
    /// A 4-channel UNet inpainting by latent blending.
    blends: bool,
}

/// One image's random starting material.
struct ImageStart {
    noise: Vec<f32>,
    picture_latent: Option<Vec<f32>>,
    masked_latent: Option<Vec<f32>>,
}

impl<'r> Start<'r> {
    fn prepare(model: &mut LoadedModel, request: &'r Request, shape: &[usize]) -> Result<Self, PipelineError> {
        let Some(init) = &request.init_image else {
            return Ok(Self {
                picture: None,
                mask: None,
                masked_picture: None,
                draws_masked: false,
                from_pure_noise: false,
                blends: false,
            });
        };
        let dedicated = model.folder.is_inpainting();
        let Some(mask) = &init.mask else {
            if dedicated {
                return Err(PipelineError::InvalidRequest(format!(
                    "{} is an inpainting model: send a mask with the init image",
                    model.folder.name
                )));
            }
            return Ok(Self {
                picture: Some(encode_picture(model, &init.pixels, shape)?),
                mask: None,
                masked_picture: None,
                draws_masked: false,
                from_pure_noise: false,
                blends: false,
            });
        };
        let from_pure_noise = init.strength >= 1.0;
        let picture = if !dedicated || !from_pure_noise {
            Some(encode_picture(model, &init.pixels, shape)?)
        } else {
            None
        };
        let masked_picture = if dedicated {
            Some(encode_picture(model, &mask.masked_pixels, shape)?)
        } else {
            None
        };
        Ok(Self {
            picture,
            mask: Some(mask),
            masked_picture,
            draws_masked: true,
            from_pure_noise,
            blends: !dedicated,
        })
    }

    fn draw(&self, noise: &mut dyn NoiseSource, given: Option<&HostTensor<f32>>, plane: usize) -> ImageStart {
        let picture_latent = self.picture.as_ref().map(|d| d.sample(noise));
        let start_noise = match given {
            Some(given) => given.data.clone(),
            None => noise.standard_normal(plane),
        };
        let masked_latent = if self.draws_masked {
            match &self.masked_picture {
                Some(d) => Some(d.sample(noise)),
                None => {
                    // Keep the stream aligned with diffusers, which samples a latent the
                    // 4-channel UNet never sees.
                    noise.standard_normal(plane);
                    None
                }
            }
        } else {
            None
        };
        ImageStart {
            noise: start_noise,
            picture_latent,
            masked_latent,
        }
    }

    /// The UNet's `sample`: the scaled latents, or for an inpainting UNet each image's latents
    /// ‖ mask ‖ masked-picture latents along the channels.
    fn unet_input(&self, scaled: Vec<f32>, images: &[ImageStart], batch_shape: &[usize]) -> (Vec<f32>, Vec<usize>) {
        let (Some(mask), Some(_)) = (self.mask, &self.masked_picture) else {
            return (scaled, batch_shape.to_vec());
        };
        let plane = batch_shape[1..].iter().product::<usize>();
        let mut input = Vec::with_capacity(scaled.len() * 2 + batch_shape[0] * mask.latent.data.len());
        for (latent, image) in scaled.chunks(plane).zip(images) {
            input.extend_from_slice(latent);
            input.extend_from_slice(&mask.latent.data);
            input.extend_from_slice(image.masked_latent.as_deref().expect("drawn for an inpainting UNet"));
        }
        let mut shape = batch_shape.to_vec();
        shape[1] = 2 * shape[1] + 1;
        (input, shape)
    }

    fn blend_mask(&self) -> Option<&[f32]> {
        self.mask.filter(|_| self.blends).map(|m| m.latent.data.as_slice())
    }
}

/// A prompt → its weighted chunk embeddings, each `[1, 77, D]` (see [`crate::prompt`]), from
/// the layer `clip_skip` names (see [`crate::clip_skip`]).
pub fn encode_prompt(
    model: &mut LoadedModel,
    prompt: &str,
    clip_skip: usize,
) -> Result<Vec<HostTensor<f32>>, PipelineError> {
    let pieces = crate::prompt::parse(prompt).map_err(|e| PipelineError::InvalidRequest(e.to_string()))?;
    let tokenizer = &model.folder.tokenizer;
    let chunks = crate::prompt::chunk(&pieces, tokenizer.max_length() - 2, |text| tokenizer.token_ids(text))
        .map_err(|e| PipelineError::Tokenizer(e.to_string()))?;
    chunks
        .iter()
        .map(|(ids, weights)| encode_chunk(model, ids, weights, clip_skip))
        .collect()
}

/// Prompt and negative prompt → (cond, uncond), each `[1, 77·k, D]` with the same k: the one
/// with fewer chunks is evened out with empty-prompt chunks, as AUTOMATIC1111 does.
pub fn encode_guided(
    model: &mut LoadedModel,
    prompt: &str,
    negative: &str,
    clip_skip: usize,
) -> Result<(HostTensor<f32>, HostTensor<f32>), PipelineError> {
    let (mut cond, mut uncond) = (
        encode_prompt(model, prompt, clip_skip)?,
        encode_prompt(model, negative, clip_skip)?,
    );
    while cond.len() != uncond.len() {
        let shorter = if cond.len() < uncond.len() {
            &mut cond
        } else {
            &mut uncond
        };
        shorter.push(encode_chunk(model, &[], &[], clip_skip)?);
    }
    Ok((concat_sequence(&cond), concat_sequence(&uncond)))
}

/// One chunk (ids without BOS/EOS, and their weights) → the text encoder's hidden state
/// `[1, 77, D]` (the last layer's, or the one `clip_skip` names), with the weights applied.
fn encode_chunk(
    model: &mut LoadedModel,
    body: &[i64],
    weights: &[f64],
    clip_skip: usize,
) -> Result<HostTensor<f32>, PipelineError> {
    let ids = model.folder.tokenizer.wrap_chunk(body);
    let mut token_weights = vec![1.0; ids.len()];
    token_weights[1..1 + weights.len()].copy_from_slice(weights);
    let input = Input::Int(HostTensor::new(vec![1, ids.len()], ids));
    let spec = model.text_input_ids.clone();
    let mut outputs = model.text_encoder.run(vec![(&spec, input)])?;
    let names: Vec<&str> = model.text_encoder.outputs.iter().map(|o| o.name.as_str()).collect();
    let last = names.iter().position(|&n| n == "last_hidden_state").unwrap_or(0);
    let mut embedding = if clip_skip <= 1 {
        outputs.swap_remove(last)
    } else {
        // `hidden_states.K` outputs, by K.
        let layers: Vec<(usize, usize)> = names
            .iter()
            .enumerate()
            .filter_map(|(i, n)| Some((n.strip_prefix("hidden_states.")?.parse().ok()?, i)))
            .collect();
        let depth = layers.iter().map(|&(k, _)| k).max().unwrap_or(0);
        let output_of = |k: usize| layers.iter().find(|&&(layer, _)| layer == k).map(|&(_, i)| i);
        let skipped = crate::clip_skip::hidden_state_index(clip_skip, depth).and_then(output_of);
        let (Some(chosen), Some(deepest)) = (skipped, output_of(depth)) else {
            return Err(PipelineError::InvalidRequest(if layers.is_empty() {
                format!(
                    "clip skip {clip_skip} needs a text encoder that exports its hidden states, and {}'s does not; \
                     leave clip skip at 1 or re-export the model with hidden states",
                    model.folder.name
                )
            } else {
                format!(
                    "clip skip {clip_skip} is deeper than {}'s text encoder, which has {depth} layers",
                    model.folder.name
                )
            }));
        };
        let dim = *outputs[last].shape.last().unwrap_or(&1);
        let data = crate::clip_skip::apply_final_norm(
            &outputs[chosen].data,
            &outputs[deepest].data,
            &outputs[last].data,
            dim,
            model.folder.text_layer_norm_eps,
        );
        HostTensor::new(outputs[last].shape.clone(), data)
    };
    crate::prompt::apply_weights(&mut embedding.data, &token_weights);
    Ok(embedding)
}

/// Chunks `[1, 77, D]` → `[1, 77·k, D]`.
fn concat_sequence(chunks: &[HostTensor<f32>]) -> HostTensor<f32> {
    let mut shape = chunks[0].shape.clone();
    shape[1] = chunks.iter().map(|c| c.shape[1]).sum();
    HostTensor::new(shape, chunks.iter().flat_map(|c| c.data.iter().copied()).collect())
}

/// One UNet evaluation of `sample` (`[n, C, h, w]`); with `guidance`, on the batch
/// [sample; sample] against [uncond; cond], combined as `uncond + guidance · (cond − uncond)`.
/// Returns the noise prediction `[n, latent channels, h, w]`.
fn predict_noise(
    model: &mut LoadedModel,
    sample: Vec<f32>,
    shape: &[usize],
    timestep: f64,
    text: &HostTensor<f32>,
    guidance: Option<f32>,
    guidance_embedding: Option<&[f32]>,
) -> Result<Vec<f32>, PipelineError> {
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
        (&text_spec, Input::Float(text.clone())),
    ];
    if let (Some(spec), Some(embedding)) = (cond_spec.as_ref(), guidance_embedding) {
        let rows = shape[0];
        feed.push((
            spec,
            Input::Float(HostTensor::new(vec![rows, embedding.len() / rows], embedding.to_vec())),
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

/// A picture's latent as the VAE encoder gives it: a diagonal Gaussian to sample (current
/// exports' `latent_parameters`) or a fixed latent (legacy `latent_sample`); unscaled.
enum LatentDistribution {
    Gaussian {
        mean: Vec<f32>,
        logvar: Vec<f32>,
        scaling: f32,
    },
    Fixed(Vec<f32>),
}

impl LatentDistribution {
    /// A scaled latent: `(mean + exp(0.5 · clamp(logvar, −30, 20)) · ε) · scaling_factor`, with ε
    /// from `noise` (nothing drawn for a fixed latent).
    fn sample(&self, noise: &mut dyn NoiseSource) -> Vec<f32> {
        match self {
            LatentDistribution::Gaussian { mean, logvar, scaling } => {
                let eps = noise.standard_normal(mean.len());
                mean.iter()
                    .zip(logvar)
                    .zip(&eps)
                    .map(|((m, lv), e)| (m + (0.5 * lv.clamp(-30.0f32, 20.0)).exp() * e) * scaling)
                    .collect()
            }
            LatentDistribution::Fixed(latent) => latent.clone(),
        }
    }
}

/// Picture `[1, 3, H, W]` → the VAE encoder's latent distribution (scaled latents already for
/// a legacy encoder).
fn encode_picture(
    model: &mut LoadedModel,
    pixels: &HostTensor<f32>,
    latent_shape: &[usize],
) -> Result<LatentDistribution, PipelineError> {
    let scaling = model.folder.scaling_factor;
    let channels = latent_shape[1];
    let model_name = model.folder.name.clone();
    let encoder = model.vae_encoder()?;
    let spec = encoder.input.clone();
    let mut outputs = encoder.model.run(vec![(&spec, Input::Float(pixels.clone()))])?;
    let mut encoded = outputs.swap_remove(encoder.output);
    let mut expected = latent_shape.to_vec();
    if encoded.shape.get(1) == Some(&(2 * channels)) {
        expected[1] = 2 * channels;
        if encoded.shape != expected {
            return Err(shape_error(&model_name, &encoded.shape, &expected));
        }
        let logvar = encoded.data.split_off(encoded.data.len() / 2);
        Ok(LatentDistribution::Gaussian {
            mean: encoded.data,
            logvar,
            scaling,
        })
    } else {
        if encoded.shape != expected {
            return Err(shape_error(&model_name, &encoded.shape, &expected));
        }
        Ok(LatentDistribution::Fixed(
            encoded.data.into_iter().map(|v| v * scaling).collect(),
        ))
    }
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
