//! The VAE: pictures into latents (img2img and inpainting) and latents back into pictures.
//!
//! Both directions follow diffusers: the encoder's output is a diagonal Gaussian to sample
//! (current optimum exports' `latent_parameters`) or, for legacy exports, the latent itself
//! (`latent_sample`); latents are scaled by the model's `scaling_factor` going in and divided
//! by it coming out.
//!
//! A model may also carry a tiny decoder (`vae_decoder_tiny/`, TAESD): [`Decoder::Tiny`] asks
//! for it, and full previews use it whenever it is there ([`decode_preview`]).

use crate::model::onnx::{HostTensor, Input};
use crate::model::{LoadedModel, ModelError};

use super::GenerationError;
use super::image::RgbImage;
use super::sampler::NoiseSource;

/// A picture's latent as the VAE encoder gives it, before sampling.
pub enum LatentDistribution {
    Gaussian {
        mean: Vec<f32>,
        logvar: Vec<f32>,
        scaling: f32,
    },
    /// A legacy encoder's latent, already scaled.
    Fixed(Vec<f32>),
}

impl LatentDistribution {
    /// A scaled latent: `(mean + exp(0.5 · clamp(logvar, −30, 20)) · ε) · scaling_factor`, with ε
    /// from `noise` (nothing drawn for a fixed latent).
    pub fn sample(&self, noise: &mut dyn NoiseSource) -> Vec<f32> {
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

/// Picture `[1, 3, H, W]` → the VAE encoder's latent distribution for a latent of
/// `latent_shape`.
pub fn encode(
    model: &mut LoadedModel,
    pixels: &HostTensor<f32>,
    latent_shape: &[usize],
) -> Result<LatentDistribution, GenerationError> {
    let scaling = model.folder.scaling_factor;
    let channels = latent_shape[1];
    let model_name = model.folder.name.clone();
    let encoder = model.vae_encoder()?;
    let spec = encoder.input.clone();
    let mut outputs = encoder
        .model
        .run_releasing(vec![(&spec, Input::Float(pixels.clone()))])?;
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

fn shape_error(model: &str, got: &[usize], expected: &[usize]) -> GenerationError {
    GenerationError::Model(ModelError::Incompatible {
        model: model.to_string(),
        message: format!("the VAE encoder returned shape {got:?}, expected {expected:?} (or twice the channels)"),
    })
}

/// Which VAE decoder turns a request's final latents into its pictures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Decoder {
    /// The model's own VAE decoder (`vae_decoder/`).
    #[default]
    Full,
    /// The model's tiny decoder (`vae_decoder_tiny/`): several times faster, a little softer.
    Tiny,
}

impl Decoder {
    pub fn as_str(self) -> &'static str {
        match self {
            Decoder::Full => "full",
            Decoder::Tiny => "tiny",
        }
    }
}

/// A request's final latent → RGB picture through the decoder it asked for.
pub fn decode_with(
    model: &mut LoadedModel,
    decoder: Decoder,
    latents: &[f32],
    shape: &[usize],
    tiled: bool,
) -> Result<RgbImage, GenerationError> {
    match decoder {
        Decoder::Full => decode(model, latents, shape, tiled),
        Decoder::Tiny => decode_tiny(model, latents, shape)?.ok_or_else(|| no_tiny_decoder(model)),
    }
}

/// A `full` preview: the tiny decoder when the model carries one (a fraction of the full
/// decoder's time, so previews on every step stay cheap), else the full decoder.
pub fn decode_preview(
    model: &mut LoadedModel,
    latents: &[f32],
    shape: &[usize],
    tiled: bool,
) -> Result<RgbImage, GenerationError> {
    match decode_tiny(model, latents, shape)? {
        Some(image) => Ok(image),
        None => decode(model, latents, shape, tiled),
    }
}

/// Latent → RGB picture through the model's tiny decoder, as diffusers does with an
/// `AutoencoderTiny`: `(decode(z / scaling_factor) / 2 + 0.5).clamp(0, 1)`, its scaling factor
/// being TAESD's 1.0. Always whole: the tiny decoder's activations are a fraction of the full
/// one's. `None` when the model has no tiny decoder.
pub fn decode_tiny(
    model: &mut LoadedModel,
    latents: &[f32],
    shape: &[usize],
) -> Result<Option<RgbImage>, GenerationError> {
    let Some(config) = model.folder.tiny_decoder.clone() else {
        return Ok(None);
    };
    let scale = 1.0 / config.scaling_factor;
    let scaled = HostTensor::new(shape.to_vec(), latents.iter().map(|v| v * scale).collect());
    let Some(tiny) = model.tiny_decoder()? else {
        return Ok(None);
    };
    let spec = tiny.latent.clone();
    let mut outputs = tiny.model.run_releasing(vec![(&spec, Input::Float(scaled))])?;
    let decoded = outputs.swap_remove(0);
    RgbImage::from_nchw_signed(&decoded)
        .map(Some)
        .ok_or_else(|| unexpected_shape(model, &decoded.shape))
}

/// Why a request for the tiny decoder cannot be served by this model (checked before loading,
/// see `prepare`; this is the loop's own guard).
fn no_tiny_decoder(model: &LoadedModel) -> GenerationError {
    GenerationError::Model(no_tiny_decoder_error(&model.folder))
}

/// A tiny-decoder request on a model folder without one.
pub fn no_tiny_decoder_error(folder: &crate::model::ModelFolder) -> ModelError {
    ModelError::Incompatible {
        model: folder.name.clone(),
        message: format!(
            "the tiny VAE decoder was asked for, but {} is missing; put TAESD's ONNX export there \
             (tools/export_tiny_decoder.py makes one) or ask for the full decoder",
            folder.root.join(crate::model::folder::VAE_DECODER_TINY).display()
        ),
    }
}

/// Latent → RGB picture, as diffusers' `(decode(z / scaling_factor) / 2 + 0.5).clamp(0, 1)`;
/// `tiled`: in overlapping tiles, as diffusers' `tiled_decode` ([`decode_tiled`]).
pub fn decode(
    model: &mut LoadedModel,
    latents: &[f32],
    shape: &[usize],
    tiled: bool,
) -> Result<RgbImage, GenerationError> {
    let scale = 1.0 / model.folder.scaling_factor;
    let scaled = HostTensor::new(shape.to_vec(), latents.iter().map(|v| v * scale).collect());
    let tiling = Tiling::of(model);
    let decoded = if tiled && (shape[2] > tiling.latent_tile || shape[3] > tiling.latent_tile) {
        decode_tiled(model, &scaled, tiling)?
    } else {
        decode_whole(model, scaled)?
    };
    RgbImage::from_nchw_signed(&decoded).ok_or_else(|| unexpected_shape(model, &decoded.shape))
}

fn unexpected_shape(model: &LoadedModel, shape: &[usize]) -> GenerationError {
    GenerationError::Model(ModelError::Incompatible {
        model: model.folder.name.clone(),
        message: format!("the VAE decoder returned shape {shape:?}, expected [1, 3, H, W]"),
    })
}

/// One decoder run on a scaled latent `[1, C, h, w]` → `[1, 3, h·f, w·f]` in −1..1.
fn decode_whole(model: &mut LoadedModel, scaled: HostTensor<f32>) -> Result<HostTensor<f32>, GenerationError> {
    let spec = model.vae_latent.clone();
    let mut outputs = model.vae_decoder.run_releasing(vec![(&spec, Input::Float(scaled))])?;
    let decoded = outputs.swap_remove(0);
    match decoded.shape[..] {
        [1, 3, _, _] => Ok(decoded),
        _ => Err(unexpected_shape(model, &decoded.shape)),
    }
}

/// diffusers' tile geometry (`AutoencoderKL.enable_tiling`): tiles of the VAE's `sample_size`
/// pixels, overlapping by a quarter.
#[derive(Debug, Clone, Copy)]
pub struct Tiling {
    /// `tile_latent_min_size`: a tile's side in latent cells.
    pub latent_tile: usize,
    /// `tile_sample_min_size`: a tile's side in pixels.
    pub sample_tile: usize,
}

/// `tile_overlap_factor`.
const TILE_OVERLAP: f64 = 0.25;

impl Tiling {
    pub fn of(model: &LoadedModel) -> Self {
        let sample_tile = model.folder.vae_sample_size;
        Self {
            latent_tile: (sample_tile / model.folder.vae_factor).max(1),
            sample_tile,
        }
    }
}

/// A decoded tile, `[3, h, w]` in −1..1.
struct Tile {
    h: usize,
    w: usize,
    data: Vec<f32>,
}

/// diffusers' `tiled_decode`: latent tiles of `latent_tile` cells every `latent_tile · 3/4`,
/// each decoded alone; each tile is blended into the one above and the one to its left over a
/// quarter of a tile (linear ramps, in place, in row order, as diffusers does), then cropped to
/// three quarters and laid out. Memory is that of one tile, whatever the picture's size.
pub fn decode_tiled(
    model: &mut LoadedModel,
    scaled: &HostTensor<f32>,
    tiling: Tiling,
) -> Result<HostTensor<f32>, GenerationError> {
    let [1, channels, height, width] = scaled.shape[..] else {
        return Err(unexpected_shape(model, &scaled.shape));
    };
    let stride = ((tiling.latent_tile as f64) * (1.0 - TILE_OVERLAP)) as usize;
    let stride = stride.max(1);
    let blend = ((tiling.sample_tile as f64) * TILE_OVERLAP) as usize;
    let row_limit = tiling.sample_tile - blend;
    let mut rows: Vec<Vec<Tile>> = Vec::new();
    for top in (0..height).step_by(stride) {
        let mut row = Vec::new();
        for left in (0..width).step_by(stride) {
            let (h, w) = (
                (height - top).min(tiling.latent_tile),
                (width - left).min(tiling.latent_tile),
            );
            let mut latent = Vec::with_capacity(channels * h * w);
            for c in 0..channels {
                for y in top..top + h {
                    let start = (c * height + y) * width + left;
                    latent.extend_from_slice(&scaled.data[start..start + w]);
                }
            }
            let decoded = decode_whole(model, HostTensor::new(vec![1, channels, h, w], latent))?;
            row.push(Tile {
                h: decoded.shape[2],
                w: decoded.shape[3],
                data: decoded.data,
            });
        }
        rows.push(row);
    }
    // Blend in place, in the order diffusers does: a tile sees its neighbours already blended.
    for i in 0..rows.len() {
        for j in 0..rows[i].len() {
            if i > 0 {
                let (above, current) = rows.split_at_mut(i);
                blend_vertical(&above[i - 1][j], &mut current[0][j], blend);
            }
            if j > 0 {
                let (left, current) = rows[i].split_at_mut(j);
                blend_horizontal(&left[j - 1], &mut current[0], blend);
            }
        }
    }
    // Crop each tile to `row_limit` and lay them out.
    let out_h: usize = rows.iter().map(|row| row[0].h.min(row_limit)).sum();
    let out_w: usize = rows[0].iter().map(|tile| tile.w.min(row_limit)).sum();
    let mut out = vec![0.0f32; 3 * out_h * out_w];
    let mut y0 = 0;
    for row in &rows {
        let mut x0 = 0;
        let rh = row[0].h.min(row_limit);
        for tile in row {
            let rw = tile.w.min(row_limit);
            for c in 0..3 {
                for y in 0..rh {
                    let from = (c * tile.h + y) * tile.w;
                    let to = (c * out_h + y0 + y) * out_w + x0;
                    out[to..to + rw].copy_from_slice(&tile.data[from..from + rw]);
                }
            }
            x0 += rw;
        }
        y0 += rh;
    }
    Ok(HostTensor::new(vec![1, 3, out_h, out_w], out))
}

/// diffusers' `blend_v`: the top `extent` rows of `b` fade in from the bottom rows of `a`.
fn blend_vertical(a: &Tile, b: &mut Tile, extent: usize) {
    let extent = extent.min(a.h).min(b.h);
    for c in 0..3 {
        for y in 0..extent {
            let t = y as f64 / extent as f64;
            let (keep, take) = ((1.0 - t) as f32, t as f32);
            let a_row = (c * a.h + a.h - extent + y) * a.w;
            let b_row = (c * b.h + y) * b.w;
            for x in 0..b.w.min(a.w) {
                b.data[b_row + x] = a.data[a_row + x] * keep + b.data[b_row + x] * take;
            }
        }
    }
}

/// diffusers' `blend_h`: the left `extent` columns of `b` fade in from the right columns of `a`.
fn blend_horizontal(a: &Tile, b: &mut Tile, extent: usize) {
    let extent = extent.min(a.w).min(b.w);
    for c in 0..3 {
        for y in 0..b.h.min(a.h) {
            let a_row = (c * a.h + y) * a.w;
            let b_row = (c * b.h + y) * b.w;
            for x in 0..extent {
                let t = x as f64 / extent as f64;
                let (keep, take) = ((1.0 - t) as f32, t as f32);
                b.data[b_row + x] = a.data[a_row + a.w - extent + x] * keep + b.data[b_row + x] * take;
            }
        }
    }
}
