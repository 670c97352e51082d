//! The VAE: pictures into latents (img2img and inpainting) and latents back into pictures.
//!
//! Both directions follow diffusers: the encoder's output is a diagonal Gaussian to sample
//! (current optimum exports' `latent_parameters`) or, for legacy exports, the latent itself
//! (`latent_sample`); latents are scaled by the model's `scaling_factor` going in and divided
//! by it coming out.

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

fn shape_error(model: &str, got: &[usize], expected: &[usize]) -> GenerationError {
    GenerationError::Model(ModelError::Incompatible {
        model: model.to_string(),
        message: format!("the VAE encoder returned shape {got:?}, expected {expected:?} (or twice the channels)"),
    })
}

/// Latent → RGB picture, as diffusers' `(decode(z / scaling_factor) / 2 + 0.5).clamp(0, 1)`.
pub fn decode(model: &mut LoadedModel, latents: &[f32], shape: &[usize]) -> Result<RgbImage, GenerationError> {
    let scale = 1.0 / model.folder.scaling_factor;
    let scaled: Vec<f32> = latents.iter().map(|v| v * scale).collect();
    let spec = model.vae_latent.clone();
    let mut outputs = model
        .vae_decoder
        .run(vec![(&spec, Input::Float(HostTensor::new(shape.to_vec(), scaled)))])?;
    let decoded = outputs.swap_remove(0);
    RgbImage::from_nchw_signed(&decoded).ok_or_else(|| {
        GenerationError::Model(ModelError::Incompatible {
            model: model.folder.name.clone(),
            message: format!(
                "the VAE decoder returned shape {:?}, expected [1, 3, H, W]",
                decoded.shape
            ),
        })
    })
}
