//! Where each image's denoising starts, and what inpainting adds to every step.
//!
//! Text-to-image starts from Gaussian noise scaled by the sampler's `init_noise_sigma`; img2img
//! from the init picture's latent noised to the level where the run enters the schedule
//! (inpainting at strength 1 starts from pure noise, as diffusers' `is_strength_max` does).
//! Inpainting also feeds a dedicated 9-channel UNet the latent mask and the masked picture's
//! latent, and keeps an ordinary 4-channel UNet's unmasked part on the picture's own trajectory
//! by blending after every step.
//!
//! Each image draws its randomness in diffusers' order — the picture's latent sample, the
//! starting noise, then (inpainting) the masked picture's latent sample — so that a batch
//! equals its images made one at a time, and the reference fixtures replay exactly.

use crate::model::LoadedModel;
use crate::model::onnx::HostTensor;

use super::GenerationError;
use super::inpaint;
use super::prepare::{Inpaint, Prepared};
use super::sampler::{NoiseSource, Scheduler};
use super::vae::{self, LatentDistribution};

/// The init picture (and inpainting inputs) encoded once for the whole batch.
pub struct EncodedInit<'p> {
    /// The init picture's latent distribution (img2img, and inpainting unless it starts from
    /// pure noise with a dedicated UNet, which never looks at it).
    picture: Option<LatentDistribution>,
    inpaint: Option<&'p Inpaint>,
    /// The masked picture's latent distribution, for a dedicated inpainting UNet.
    masked_picture: Option<LatentDistribution>,
    /// Inpainting at strength 1: every image starts from pure noise.
    from_pure_noise: bool,
}

/// What one image drew before its first step.
pub struct ImageDraws {
    /// Its unit-variance starting noise.
    pub noise: Vec<f32>,
    /// Its sample of the init picture's latent.
    pub picture_latent: Option<Vec<f32>>,
    /// Its sample of the masked picture's latent (dedicated inpainting UNets only).
    pub masked_latent: Option<Vec<f32>>,
}

impl ImageDraws {
    /// An image that draws nothing before its first step: one that takes over handed-over
    /// latents.
    pub fn none() -> Self {
        Self {
            noise: Vec::new(),
            picture_latent: None,
            masked_latent: None,
        }
    }
}

impl<'p> EncodedInit<'p> {
    /// Runs the VAE encoder on what the request starts from (nothing for text-to-image).
    pub fn encode(model: &mut LoadedModel, prepared: &'p Prepared) -> Result<Self, GenerationError> {
        let mut encoded = Self {
            picture: None,
            inpaint: None,
            masked_picture: None,
            from_pure_noise: false,
        };
        let Some(init) = &prepared.init_image else {
            return Ok(encoded);
        };
        let shape = &prepared.latent_shape;
        let inpainting_unet = model.folder.is_inpainting();
        encoded.inpaint = init.inpaint.as_ref();
        encoded.from_pure_noise = encoded.inpaint.is_some() && init.strength >= 1.0;
        if !(inpainting_unet && encoded.from_pure_noise) {
            encoded.picture = Some(vae::encode(model, &init.pixels, shape)?);
        }
        if let (Some(inpaint), true) = (encoded.inpaint, inpainting_unet) {
            encoded.masked_picture = Some(vae::encode(model, &inpaint.mask.masked_pixels, shape)?);
        }
        Ok(encoded)
    }

    /// One image's draws, in diffusers' order. `given`: the request's own starting noise.
    pub fn draw(&self, noise: &mut dyn NoiseSource, given: Option<&HostTensor<f32>>, plane: usize) -> ImageDraws {
        let picture_latent = self.picture.as_ref().map(|d| d.sample(noise));
        let start_noise = match given {
            Some(given) => given.data.clone(),
            None => noise.standard_normal(plane),
        };
        // diffusers encodes the masked picture for every inpainting run, so its draw is part of
        // the noise stream even when a 4-channel UNet never sees the latent.
        let masked_latent = match (&self.masked_picture, self.inpaint) {
            (Some(distribution), _) => Some(distribution.sample(noise)),
            (None, Some(_)) => {
                noise.standard_normal(plane);
                None
            }
            (None, None) => None,
        };
        ImageDraws {
            noise: start_noise,
            picture_latent,
            masked_latent,
        }
    }

    /// The latent an image starts at: its picture's latent noised to the level of entry
    /// `first` (img2img), else its noise scaled by `init_noise_sigma`.
    pub fn starting_latent(&self, image: &ImageDraws, scheduler: &dyn Scheduler, first: usize) -> Vec<f32> {
        match &image.picture_latent {
            Some(x0) if !self.from_pure_noise => scheduler.add_noise(x0, &image.noise, first),
            _ => {
                let sigma = scheduler.init_noise_sigma() as f32;
                image.noise.iter().map(|v| v * sigma).collect()
            }
        }
    }

    /// The UNet's `sample`: the scaled latents, or for a dedicated inpainting UNet each image's
    /// latents ‖ mask ‖ masked-picture latents along the channels.
    pub fn unet_input(&self, scaled: Vec<f32>, images: &[ImageDraws], batch_shape: &[usize]) -> (Vec<f32>, Vec<usize>) {
        let (Some(inpaint), Some(_)) = (self.inpaint, &self.masked_picture) else {
            return (scaled, batch_shape.to_vec());
        };
        let mask = &inpaint.mask.latent.data;
        let plane = batch_shape[1..].iter().product::<usize>();
        let mut input = Vec::with_capacity(scaled.len() * 2 + batch_shape[0] * mask.len());
        for (latent, image) in scaled.chunks(plane).zip(images) {
            input.extend_from_slice(latent);
            input.extend_from_slice(mask);
            input.extend_from_slice(image.masked_latent.as_deref().expect("drawn for an inpainting UNet"));
        }
        let mut shape = batch_shape.to_vec();
        shape[1] = 2 * shape[1] + 1;
        (input, shape)
    }

    /// After the step into entry `next` (one past the last: the final latent): a 4-channel UNet
    /// inpainting keeps each image's unmasked part on its picture's trajectory — the picture's
    /// latent re-noised to that level (clean after the last step).
    pub fn blend_unmasked(&self, latents: &mut [f32], images: &[ImageDraws], scheduler: &dyn Scheduler, next: usize) {
        let (Some(inpaint), None) = (self.inpaint, &self.masked_picture) else {
            return;
        };
        let plane = latents.len() / images.len();
        for (image, current) in images.iter().zip(latents.chunks_mut(plane)) {
            let x0 = image
                .picture_latent
                .as_deref()
                .expect("a 4-channel UNet inpainting keeps the picture's latent");
            let on_picture_trajectory = if next < scheduler.timesteps().len() {
                scheduler.add_noise(x0, &image.noise, next)
            } else {
                x0.to_vec()
            };
            inpaint::blend(current, &on_picture_trajectory, &inpaint.mask.latent.data);
        }
    }
}
