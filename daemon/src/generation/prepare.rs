//! Preparation: from a picture request as a client sends it to everything the denoising loop
//! needs, each check made once, here.
//!
//! Two phases, so that a request with a bad number fails before any model file is read:
//!
//! 1. [`Request::check`], without the model: steps, guidance, clip skip, the sampler's name,
//!    the prompts' weighting syntax, and which img2img/inpainting settings go together.
//! 2. [`Checked::prepare`], against the model folder: the init image and mask decoded and
//!    sized, the output size and the model's multiple, the init noise's shape, where img2img
//!    enters the schedule, the sampler built from the model's scheduler config, and the
//!    prompts tokenized into 75-token chunks.
//!
//! The result, [`Prepared`], is what the pipeline consumes; it never checks a request again.

use crate::config::Limits;
use crate::model::ModelFolder;
use crate::model::onnx::HostTensor;

use super::GenerationError;
use super::image::{RgbImage, decode_rgb};
use super::inpaint::{self, Mask};
use super::pipeline::PreviewSettings;
use super::sampler::{self, SamplerKind, Scheduler};
use super::text::{self, Chunk, Piece};
use super::vae::{self, Decoder};

pub const DEFAULT_STEPS: u32 = 20;
pub const DEFAULT_GUIDANCE: f32 = 7.5;
/// diffusers' default img2img strength.
pub const DEFAULT_STRENGTH: f64 = 0.8;
/// diffusers' default inpainting strength: the masked part starts from pure noise.
pub const DEFAULT_INPAINT_STRENGTH: f64 = 1.0;
/// AUTOMATIC1111's default mask blur, in pixels.
pub const DEFAULT_MASK_BLUR: f32 = 4.0;
/// The deepest clip skip accepted (CLIP ViT-L has 12 layers, OpenCLIP ViT-H 24).
pub const MAX_CLIP_SKIP: u32 = 24;
/// The largest size or crop coordinate SDXL's size conditioning accepts (its UNet embeds them as
/// numbers; SDXL was trained on sizes up to a few thousand pixels).
pub const MAX_CONDITIONING_SIZE: u32 = 16_384;
/// The largest aesthetic score (the refiner was trained on LAION aesthetic scores, 0 to 10).
pub const MAX_AESTHETIC_SCORE: f64 = 10.0;
/// The largest blur accepted (a wider one turns any mask into a smudge).
pub const MAX_MASK_BLUR: f32 = 64.0;

/// A picture request as a client sends it, before any check. `None`: the default.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub prompt: String,
    pub negative_prompt: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub steps: Option<u32>,
    pub guidance_scale: Option<f32>,
    /// An API name (`euler_a`) or an AUTOMATIC1111 one (`Euler a`). `None`: the model's own.
    pub sampler: Option<String>,
    /// Unit-variance initial noise `[1, C, H/f, W/f]`.
    pub init_noise: Option<HostTensor<f32>>,
    /// img2img: an encoded PNG or JPEG.
    pub init_image: Option<Vec<u8>>,
    pub strength: Option<f64>,
    /// Inpainting: an encoded PNG or JPEG at the init image's size, white = repaint.
    pub mask_image: Option<Vec<u8>>,
    /// Gaussian blur of the mask in pixels.
    pub mask_blur: Option<f32>,
    /// AUTOMATIC1111's clip skip (1 = the last layer).
    pub clip_skip: Option<u32>,
    pub preview: PreviewSettings,
    /// Which VAE decoder makes the pictures.
    pub decoder: Decoder,
    /// Guidance stops after this fraction of the run's UNet evaluations (see
    /// [`Prepared::guided_at`]). `None`: guidance throughout.
    pub guidance_cutoff: Option<f64>,
    /// SDXL's size conditioning (diffusers' `original_size`, `crops_coords_top_left`,
    /// `target_size`). `None`: each takes diffusers' default. SDXL models only.
    pub xl_sizes: XlSizeRequest,
    /// diffusers' `guidance_rescale` in [0, 1] (see [`Prepared::guidance_rescale`]). `None`: 0.
    pub guidance_rescale: Option<f64>,
    /// diffusers' `denoising_end` in (0, 1): the run stops at this fraction of the noise
    /// schedule and hands its latents over instead of decoding them (the first stage of a
    /// base + refiner request). See [`Prepared::end_step`].
    pub denoising_end: Option<f64>,
    /// diffusers' `denoising_start` in (0, 1): the run takes over latents handed over by a
    /// first stage at this fraction of the noise schedule (the refiner's stage). See
    /// [`Prepared::first_step`].
    pub denoising_start: Option<f64>,
}

/// SDXL's size conditioning as asked; each part `None` for diffusers' default.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct XlSizeRequest {
    /// (width, height); default: the picture's size.
    pub original_size: Option<(u32, u32)>,
    /// (top, left); default: (0, 0).
    pub crop_top_left: Option<(u32, u32)>,
    /// (width, height); default: the picture's size.
    pub target_size: Option<(u32, u32)>,
    /// The refiner's aesthetic score for the prompt (default 6) and for the negative prompt
    /// (default 2.5), diffusers' `aesthetic_score` / `negative_aesthetic_score`.
    pub aesthetic_score: Option<f64>,
    pub negative_aesthetic_score: Option<f64>,
}

impl XlSizeRequest {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// SDXL's size conditioning, resolved: what the UNet's `time_ids` say.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct XlSizes {
    /// (width, height).
    pub original_size: (u32, u32),
    /// (top, left).
    pub crop_top_left: (u32, u32),
    /// (width, height).
    pub target_size: (u32, u32),
    /// The refiner: (prompt's, negative prompt's) aesthetic scores, in place of the target size.
    pub aesthetic_scores: Option<(f32, f32)>,
}

/// diffusers' defaults for the refiner's aesthetic scores.
pub const DEFAULT_AESTHETIC_SCORE: f64 = 6.0;
pub const DEFAULT_NEGATIVE_AESTHETIC_SCORE: f64 = 2.5;

impl XlSizes {
    /// diffusers' `add_time_ids` for the prompt's half (or, `negative`, the negative prompt's):
    /// `original_size + crops_coords_top_left + target_size`, sizes as (height, width); the
    /// refiner's `original_size + crops_coords_top_left + (aesthetic_score,)`.
    pub fn time_ids(&self, negative: bool) -> Vec<f32> {
        let (ow, oh) = self.original_size;
        let (top, left) = self.crop_top_left;
        let mut ids: Vec<f32> = [oh, ow, top, left].iter().map(|&v| v as f32).collect();
        match self.aesthetic_scores {
            Some((score, negative_score)) => ids.push(if negative { negative_score } else { score }),
            None => {
                let (tw, th) = self.target_size;
                ids.extend([th as f32, tw as f32]);
            }
        }
        ids
    }
}

/// A request whose settings are in range and consistent, not yet held against a model.
#[derive(Debug)]
pub struct Checked {
    request: Request,
    steps: usize,
    guidance_scale: f32,
    sampler: Option<SamplerKind>,
    clip_skip: usize,
    prompt: Vec<Piece>,
    negative_prompt: Vec<Piece>,
    /// Meaningful with an init image only.
    strength: f64,
    /// Meaningful with a mask only.
    mask_blur: f32,
    guidance_cutoff: Option<f64>,
    guidance_rescale: f32,
    handover: Handover,
}

/// Where a stage of a two-stage (base + refiner) run hands over.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Handover {
    /// A whole run: from noise or a picture to a picture.
    None,
    /// The first stage: stops at this fraction of the schedule, its latents are the output.
    Hands(f64),
    /// The second stage: starts at this fraction of the schedule from handed-over latents.
    TakesOver(f64),
}

/// Everything the denoising loop needs, checked against the model.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The model's name (for the pictures' metadata).
    pub model: String,
    pub prompt: String,
    pub negative_prompt: String,
    /// The prompts as the text encoder takes them.
    pub prompt_chunks: Vec<Chunk>,
    pub negative_chunks: Vec<Chunk>,
    pub width: u32,
    pub height: u32,
    pub steps: usize,
    pub guidance_scale: f32,
    pub sampler: SamplerKind,
    /// The sampler, set up for `steps` and never stepped: each batch walks its own copy.
    pub scheduler: Box<dyn Scheduler>,
    /// The entry of the scheduler's timesteps the run starts at (0, or later for img2img and for
    /// a stage that takes over).
    pub first_step: usize,
    /// One past the last entry of the scheduler's timesteps the run evaluates: all of them,
    /// or fewer for a stage that hands over.
    pub end_step: usize,
    /// Whether this run is a stage of a two-stage request, and where it hands over.
    pub handover: Handover,
    /// `[1, C, H/f, W/f]`.
    pub latent_shape: Vec<usize>,
    /// Unit-variance noise every image starts from (else drawn per image from its seed). For
    /// img2img it is the noise `add_noise` mixes into the picture's latent.
    pub init_noise: Option<HostTensor<f32>>,
    pub init_image: Option<InitImage>,
    /// AUTOMATIC1111's clip skip: 1 = the text encoder's last layer, 2 = the one before, …
    pub clip_skip: usize,
    pub preview: PreviewSettings,
    /// Decode in overlapping tiles (the picture is over `vae_tile_above` pixels).
    pub vae_tiled: bool,
    /// Which VAE decoder makes the pictures (the model has the one asked for).
    pub decoder: Decoder,
    /// In [0, 1): guidance stops after this fraction of the run (see [`Prepared::guided_at`]).
    /// `None`: guidance throughout (also when the cut-off asked for is 1).
    pub guidance_cutoff: Option<f64>,
    /// SDXL models: the size conditioning (`None` for other families).
    pub xl_sizes: Option<XlSizes>,
    /// diffusers' `guidance_rescale` ("Common Diffusion Noise Schedules and Sample Steps are
    /// Flawed", 3.4): each guided prediction is mixed, by this fraction, with itself rescaled to
    /// the conditional prediction's standard deviation (against over-exposure at high
    /// guidance). 0: off. Applies where guidance runs.
    pub guidance_rescale: f32,
}

/// img2img's (and inpainting's) starting picture, at the output size.
#[derive(Debug, Clone)]
pub struct InitImage {
    /// `[1, 3, H, W]` in −1..1.
    pub pixels: HostTensor<f32>,
    /// In (0, 1]: how much of the schedule runs (1 = all of it, from a fully noised latent).
    pub strength: f64,
    pub inpaint: Option<Inpaint>,
}

/// What inpainting adds to an init image.
#[derive(Debug, Clone)]
pub struct Inpaint {
    pub mask: Mask,
    /// The init picture, composited back outside the mask after decoding.
    pub original: RgbImage,
    /// The mask blur used, in pixels (for the metadata).
    pub blur: f32,
}

impl Prepared {
    /// Whether the UNet evaluation `evaluation` (0-based, of `total` in this run) still runs the
    /// unconditional pass, under the guidance cut-off. As diffusers' "dynamic classifier-free
    /// guidance" (a `callback_on_step_end` that drops the unconditional embeddings and sets the
    /// guidance scale to 0 at `step_index == int(num_timesteps · cutoff)`): evaluations up to
    /// and including that one are guided, the rest are not.
    pub fn guided_at(&self, evaluation: usize, total: usize) -> bool {
        // f64, as Python multiplies an int by a float (an f32 0.7 × 10 would truncate to 6).
        self.guidance_cutoff
            .is_none_or(|cutoff| evaluation as f64 <= (total as f64 * cutoff).floor())
    }

    /// UNet evaluations of this run (one per schedule entry it runs; progress counts these).
    pub fn evaluations(&self) -> usize {
        self.end_step - self.first_step
    }

    /// The inpainting inputs, when this is an inpainting request.
    pub fn inpaint(&self) -> Option<&Inpaint> {
        self.init_image.as_ref().and_then(|init| init.inpaint.as_ref())
    }
}

fn invalid<T>(message: String) -> Result<T, GenerationError> {
    Err(GenerationError::InvalidRequest(message))
}

impl Request {
    /// Checks every setting that does not depend on the model; fills in defaults.
    pub fn check(self, limits: &Limits) -> Result<Checked, GenerationError> {
        let steps = self.steps.unwrap_or(DEFAULT_STEPS);
        if steps == 0 || steps > limits.max_steps {
            return invalid(format!(
                "steps must be between 1 and {} (got {steps})",
                limits.max_steps
            ));
        }
        let clip_skip = self.clip_skip.unwrap_or(1);
        if clip_skip == 0 || clip_skip > MAX_CLIP_SKIP {
            return invalid(format!(
                "clip skip counts text encoder layers from the end: 1 (the last) to {MAX_CLIP_SKIP} (got {clip_skip})"
            ));
        }
        let guidance_scale = self.guidance_scale.unwrap_or(DEFAULT_GUIDANCE);
        if !guidance_scale.is_finite() || guidance_scale < 0.0 {
            return invalid(format!(
                "guidance scale must be 0 or more (got {guidance_scale}); values <= 1 turn guidance off"
            ));
        }
        let sampler = match self.sampler.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(name) => Some(parse_sampler(name)?),
        };
        let parse_prompt = |what: &'static str, text: &str| {
            text::check_chars(what, text, limits.max_prompt_chars)
                .map_err(|e| GenerationError::InvalidRequest(e.to_string()))?;
            text::prompt::parse(text).map_err(|e| GenerationError::InvalidRequest(format!("{what}: {e}")))
        };
        let prompt = parse_prompt("prompt", &self.prompt)?;
        let negative_prompt = parse_prompt("negative prompt", &self.negative_prompt)?;
        let (strength, mask_blur) = self.check_picture_settings()?;
        let guidance_cutoff = match self.guidance_cutoff {
            None => None,
            Some(cutoff) if (0.0..=1.0).contains(&cutoff) => (cutoff < 1.0).then_some(cutoff),
            Some(cutoff) => {
                return invalid(format!(
                    "guidance cutoff is the fraction of the steps after which guidance stops, from 0 to 1 (got {cutoff}); 1 keeps guidance to the end"
                ));
            }
        };
        let guidance_rescale = match self.guidance_rescale {
            None => 0.0,
            Some(rescale) if (0.0..=1.0).contains(&rescale) => rescale as f32,
            Some(rescale) => {
                return invalid(format!(
                    "guidance rescale mixes in the rescaled prediction by a fraction from 0 (off) to 1 (got {rescale}); 0.7 is the paper's"
                ));
            }
        };
        let handover = self.check_handover()?;
        Ok(Checked {
            handover,
            steps: steps as usize,
            guidance_scale,
            sampler,
            clip_skip: clip_skip as usize,
            prompt,
            negative_prompt,
            strength,
            mask_blur,
            guidance_cutoff,
            guidance_rescale,
            request: self,
        })
    }

    /// `denoising_end` / `denoising_start`: each a fraction in (0, 1), one at a time, and a stage
    /// that takes over starts from latents, never from a picture.
    fn check_handover(&self) -> Result<Handover, GenerationError> {
        let fraction = |what: &str, value: f64| {
            if value > 0.0 && value < 1.0 {
                Ok(value)
            } else {
                invalid(format!(
                    "{what} is a fraction of the noise schedule between 0 and 1, both excluded (got {value})"
                ))
            }
        };
        match (self.denoising_end, self.denoising_start) {
            (None, None) => Ok(Handover::None),
            (Some(end), None) => Ok(Handover::Hands(fraction("denoising end", end)?)),
            (None, Some(start)) => {
                if self.init_image.is_some() || self.mask_image.is_some() {
                    return invalid(
                        "a stage that takes over starts from the first stage's latents: it takes no init image or mask"
                            .into(),
                    );
                }
                Ok(Handover::TakesOver(fraction("denoising start", start)?))
            }
            (Some(_), Some(_)) => invalid(
                "a run either hands its latents over (denoising end) or takes them over (denoising start), not both"
                    .into(),
            ),
        }
    }

    /// Strength and mask blur, and which img2img/inpainting inputs need which.
    fn check_picture_settings(&self) -> Result<(f64, f32), GenerationError> {
        if self.strength.is_some() && self.init_image.is_none() {
            return invalid("strength only applies to img2img: send an init image with it".into());
        }
        if self.mask_image.is_some() && self.init_image.is_none() {
            return invalid("a mask needs the picture it applies to: send an init image with it".into());
        }
        if self.mask_blur.is_some() && self.mask_image.is_none() {
            return invalid("mask blur only applies to inpainting: send a mask with it".into());
        }
        let mask_blur = self.mask_blur.unwrap_or(DEFAULT_MASK_BLUR);
        if !(0.0..=MAX_MASK_BLUR).contains(&mask_blur) {
            return invalid(format!(
                "mask blur must be between 0 and {MAX_MASK_BLUR} pixels (got {mask_blur})"
            ));
        }
        let default_strength = if self.mask_image.is_some() {
            DEFAULT_INPAINT_STRENGTH
        } else {
            DEFAULT_STRENGTH
        };
        let strength = self.strength.unwrap_or(default_strength);
        if self.init_image.is_some() && !(strength > 0.0 && strength <= 1.0) {
            return invalid(format!("strength must be in (0, 1] (got {strength})"));
        }
        Ok((strength, mask_blur))
    }
}

/// A sampler by its API or AUTOMATIC1111 name; an unknown one lists the choices.
fn parse_sampler(name: &str) -> Result<SamplerKind, GenerationError> {
    name.parse::<SamplerKind>().or_else(|_| {
        let known = SamplerKind::ALL
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        invalid(format!("unknown sampler `{name}`; choose one of {known}"))
    })
}

impl Checked {
    /// The same request at an explicit size (a refiner's stage runs at its base's size).
    pub fn at_size(mut self, width: u32, height: u32) -> Self {
        self.request.width = Some(width);
        self.request.height = Some(height);
        self
    }

    /// Holds the request against `folder` (reading nothing but what the folder already holds)
    /// and against the size limit.
    pub fn prepare(self, folder: &ModelFolder, limits: &Limits) -> Result<Prepared, GenerationError> {
        if self.request.decoder == Decoder::Tiny && folder.tiny_decoder.is_none() {
            return Err(vae::no_tiny_decoder_error(folder).into());
        }
        let (picture, mask) = self.decode_pictures(folder, limits)?;
        let (width, height) = output_size(folder, picture.as_ref(), &self.request, limits)?;
        let latent_shape = vec![
            1,
            folder.latent_channels,
            height as usize / folder.vae_factor,
            width as usize / folder.vae_factor,
        ];
        if let Some(noise) = &self.request.init_noise {
            if noise.shape != latent_shape {
                return invalid(format!(
                    "init noise has shape {:?}, but {width}x{height} on this model needs {latent_shape:?}",
                    noise.shape
                ));
            }
            if noise.data.iter().any(|v| !v.is_finite()) {
                return invalid("init noise contains NaN or infinite values".into());
            }
        }
        let t_start = picture
            .as_ref()
            .map(|_| {
                img2img_start(self.steps, self.strength).ok_or_else(|| {
                    GenerationError::InvalidRequest(format!(
                        "strength {} with {} steps runs no step; raise the strength or the steps",
                        self.strength, self.steps
                    ))
                })
            })
            .transpose()?;
        let init_image = picture.map(|picture| self.init_image(folder, picture.resized(width, height), mask));
        let sampler = self.sampler.unwrap_or_else(|| sampler::default_for(&folder.scheduler));
        // Built here, once, so a config the sampler cannot use fails the request up front.
        let scheduler = sampler::build(sampler, &folder.scheduler, self.steps).map_err(|e| {
            crate::model::ModelError::Incompatible {
                model: folder.name.clone(),
                message: e.to_string(),
            }
        })?;
        let first_step = t_start.map_or(0, |t_start| t_start * scheduler.order());
        let (first_step, end_step) = stage_bounds(scheduler.as_ref(), &folder.scheduler, first_step, self.handover)
            .map_err(|message| {
                GenerationError::InvalidRequest(format!("{message} ({} steps on {})", self.steps, folder.name))
            })?;
        let xl_sizes = xl_sizes(folder, &self.request.xl_sizes, width, height)?;
        let tokenize = |what: &'static str, pieces: &[Piece]| {
            let chunks = text::tokenize(&folder.tokenizer, pieces)?;
            text::check_chunks(what, &chunks, limits.max_prompt_chunks)
                .map_err(|e| GenerationError::InvalidRequest(e.to_string()))?;
            Ok::<_, GenerationError>(chunks)
        };
        Ok(Prepared {
            model: folder.name.clone(),
            prompt_chunks: tokenize("prompt", &self.prompt)?,
            negative_chunks: tokenize("negative prompt", &self.negative_prompt)?,
            prompt: self.request.prompt,
            negative_prompt: self.request.negative_prompt,
            width,
            height,
            steps: self.steps,
            guidance_scale: self.guidance_scale,
            sampler,
            scheduler,
            first_step,
            end_step,
            handover: self.handover,
            latent_shape,
            init_noise: self.request.init_noise,
            init_image,
            clip_skip: self.clip_skip,
            preview: self.request.preview,
            vae_tiled: u64::from(width) * u64::from(height) > limits.vae_tile_above,
            decoder: self.request.decoder,
            guidance_cutoff: self.guidance_cutoff,
            xl_sizes,
            guidance_rescale: self.guidance_rescale,
        })
    }

    /// The init image and mask, decoded; a mask must match the picture's size, and an
    /// inpainting model needs both.
    fn decode_pictures(
        &self,
        folder: &ModelFolder,
        limits: &Limits,
    ) -> Result<(Option<RgbImage>, Option<RgbImage>), GenerationError> {
        let decode = |bytes: &[u8], what: &str| {
            decode_rgb(bytes, what, limits.max_pixels).map_err(GenerationError::InvalidRequest)
        };
        let picture = self
            .request
            .init_image
            .as_deref()
            .map(|bytes| decode(bytes, "init image"))
            .transpose()?;
        let mask = self
            .request
            .mask_image
            .as_deref()
            .map(|bytes| decode(bytes, "mask"))
            .transpose()?;
        if let (Some(mask), Some(picture)) = (&mask, &picture)
            && (mask.width, mask.height) != (picture.width, picture.height)
        {
            return invalid(format!(
                "the mask is {}x{} but the init image is {}x{}; draw the mask at the picture's size",
                mask.width, mask.height, picture.width, picture.height
            ));
        }
        if folder.is_inpainting() && mask.is_none() {
            return invalid(format!(
                "{} is an inpainting model: it needs an init image and a mask (white = repaint)",
                folder.name
            ));
        }
        Ok((picture, mask))
    }

    /// The init picture at the output size, with the inpainting mask prepared against it.
    fn init_image(&self, folder: &ModelFolder, picture: RgbImage, mask: Option<RgbImage>) -> InitImage {
        let pixels = picture.to_nchw_signed();
        let inpaint = mask.map(|mask| {
            let (width, height) = (picture.width, picture.height);
            let luma = inpaint::luminance(&mask.resized(width, height));
            let mask = Mask::new(
                &luma,
                width as usize,
                height as usize,
                self.mask_blur,
                &pixels,
                folder.vae_factor,
            );
            Inpaint {
                mask,
                original: picture,
                blur: self.mask_blur,
            }
        });
        InitImage {
            pixels,
            strength: self.strength,
            inpaint,
        }
    }
}

/// SDXL's size conditioning with diffusers' defaults filled in; asking for it on another family
/// is refused (its UNet has no such input, so it would be silently ignored).
fn xl_sizes(
    folder: &ModelFolder,
    asked: &XlSizeRequest,
    width: u32,
    height: u32,
) -> Result<Option<XlSizes>, GenerationError> {
    if !folder.is_xl() {
        if asked.is_empty() {
            return Ok(None);
        }
        return invalid(format!(
            "original size, crop, target size and aesthetic scores condition SDXL models only; {} is not one: \
             leave them out",
            folder.name
        ));
    }
    for (what, size) in [
        ("original size", asked.original_size),
        ("target size", asked.target_size),
    ] {
        if let Some((w, h)) = size
            && (w == 0 || h == 0 || w > MAX_CONDITIONING_SIZE || h > MAX_CONDITIONING_SIZE)
        {
            return invalid(format!(
                "{what} {w}x{h}: each side must be between 1 and {MAX_CONDITIONING_SIZE}"
            ));
        }
    }
    if let Some((top, left)) = asked.crop_top_left
        && (top > MAX_CONDITIONING_SIZE || left > MAX_CONDITIONING_SIZE)
    {
        return invalid(format!(
            "crop top-left {top},{left}: each coordinate must be at most {MAX_CONDITIONING_SIZE}"
        ));
    }
    let asked_scores = asked.aesthetic_score.is_some() || asked.negative_aesthetic_score.is_some();
    let aesthetic_scores = if folder.is_refiner() {
        if asked.target_size.is_some() {
            return invalid(format!(
                "{} is an SDXL refiner: it conditions on an aesthetic score instead of a target size; leave the \
                 target size out",
                folder.name
            ));
        }
        let score = |what: &str, value: Option<f64>, default: f64| {
            let value = value.unwrap_or(default);
            if (0.0..=MAX_AESTHETIC_SCORE).contains(&value) {
                Ok(value as f32)
            } else {
                invalid(format!(
                    "{what} {value}: it must be between 0 and {MAX_AESTHETIC_SCORE}"
                ))
            }
        };
        Some((
            score("aesthetic score", asked.aesthetic_score, DEFAULT_AESTHETIC_SCORE)?,
            score(
                "negative aesthetic score",
                asked.negative_aesthetic_score,
                DEFAULT_NEGATIVE_AESTHETIC_SCORE,
            )?,
        ))
    } else if asked_scores {
        return invalid(format!(
            "aesthetic scores condition SDXL refiners only; {} is not one: leave them out",
            folder.name
        ));
    } else {
        None
    };
    Ok(Some(XlSizes {
        original_size: asked.original_size.unwrap_or((width, height)),
        crop_top_left: asked.crop_top_left.unwrap_or((0, 0)),
        target_size: asked.target_size.unwrap_or((width, height)),
        aesthetic_scores,
    }))
}

/// The output size: as asked, else (img2img) the picture's own rounded down to the model's
/// multiple, else the model's native size; a positive multiple of the model's size multiple
/// ([`ModelFolder::size_multiple`]), within `max_pixels`.
///
/// A size the request states is refused when it is not a multiple (the user asked for exactly
/// that); a size taken from the init image is rounded down, as AUTOMATIC1111 does.
fn output_size(
    folder: &ModelFolder,
    picture: Option<&RgbImage>,
    request: &Request,
    limits: &Limits,
) -> Result<(u32, u32), GenerationError> {
    let multiple = folder.size_multiple as u32;
    let native = folder.native_size();
    if let Some(p) = picture
        && ((request.width.is_none() && p.width < multiple) || (request.height.is_none() && p.height < multiple))
    {
        return invalid(format!(
            "the init image is {}x{}; this model needs at least {multiple}x{multiple} (a picture's size is \
             rounded down to a multiple of {multiple}); send a larger picture or pass --width and --height",
            p.width, p.height
        ));
    }
    let (width, height) = match picture {
        Some(p) => (
            request.width.unwrap_or(p.width / multiple * multiple),
            request.height.unwrap_or(p.height / multiple * multiple),
        ),
        None => (request.width.unwrap_or(native), request.height.unwrap_or(native)),
    };
    for (what, value) in [("width", width), ("height", height)] {
        if value == 0 || value % multiple != 0 {
            let below = value / multiple * multiple;
            let nearest = if below == 0 {
                format!("{multiple}")
            } else {
                format!("{below} or {}", below + multiple)
            };
            return invalid(format!(
                "{what} must be a positive multiple of {multiple} for this model (got {value}; try {nearest})"
            ));
        }
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return invalid(format!(
            "{width}x{height} is {pixels} pixels, more than the limit of {} (raise max_pixels in the config to allow it)",
            limits.max_pixels
        ));
    }
    Ok((width, height))
}

/// The entries of the schedule a run evaluates, `first..end`, as diffusers' SDXL pipelines cut
/// it for a two-stage run, at the timestep `round(T − fraction · T)` (`T`: the training
/// timesteps):
/// - a stage that hands over (`denoising_end`) keeps the entries from `first` at or above it;
/// - a stage that takes over (`denoising_start`) runs the entries below it, one more for a
///   second-order sampler when their count is even (so that it starts on a whole step).
///
/// Refused when the stage would run no step.
fn stage_bounds(
    scheduler: &dyn Scheduler,
    config: &crate::model::scheduler_config::SchedulerConfig,
    first: usize,
    handover: Handover,
) -> Result<(usize, usize), String> {
    let timesteps = scheduler.timesteps();
    let cutoff = |fraction: f64| {
        let train = config.num_train_timesteps.unwrap_or(1000) as f64;
        // Python's `round`, which rounds halves to even.
        (train - fraction * train).round_ties_even()
    };
    match handover {
        Handover::None => Ok((first, timesteps.len())),
        Handover::Hands(end) => {
            let cutoff = cutoff(end);
            let kept = timesteps[first..].iter().filter(|&&t| t >= cutoff).count();
            if kept == 0 {
                return Err(format!(
                    "the first stage runs no step before the switch at {end}: every timestep it would start at is \
                     already below {cutoff}; switch later or raise the strength"
                ));
            }
            Ok((first, first + kept))
        }
        Handover::TakesOver(start) => {
            let cutoff = cutoff(start);
            let mut below = timesteps.iter().filter(|&&t| t < cutoff).count();
            if scheduler.order() == 2 && below % 2 == 0 {
                below += 1;
            }
            let below = below.min(timesteps.len());
            if below == 0 {
                return Err(format!(
                    "the second stage runs no step after the switch at {start}: no timestep is below {cutoff}; \
                     switch earlier or raise the steps"
                ));
            }
            Ok((timesteps.len() - below, timesteps.len()))
        }
    }
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
