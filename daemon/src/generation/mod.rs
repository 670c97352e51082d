//! Generation: everything that turns a picture request into pixels, on the worker thread.
//!
//! - [`prepare`]: the one preparation path. Every check on a picture request (sizes, steps,
//!   sampler, prompt syntax and tokens, init image and mask, init noise, where img2img enters
//!   the schedule) is made there, once; its [`Prepared`] is what the rest consumes.
//! - [`pipeline`]: the denoising loop for a batch of images (one UNet call per step).
//! - [`latents`]: where each image starts (noise, or the init picture's latent) and what
//!   inpainting feeds and blends at every step; [`vae`]: pictures to latents and back (whole
//!   or in tiles).
//! - [`memory`]: a request's working memory, modelled from the graphs' shapes.
//! - [`text`]: prompt weighting, 75-token chunks, clip skip, the text encoder.
//! - [`inpaint`]: masks as diffusers prepares them, and the final composite.
//! - [`image`]: RGB pictures, PNG, previews; [`metadata`]: what a PNG says about its making.
//! - [`sampler`]: the eight samplers, each a twin of a diffusers scheduler.
//!
//! It knows nothing of jobs, queues or gRPC, and reads no file but the model's.

pub mod image;
pub mod inpaint;
pub mod latents;
pub mod memory;
pub mod metadata;
pub mod pipeline;
pub mod prepare;
pub mod sampler;
pub mod text;
pub mod vae;

use crate::model::onnx::OnnxError;
use crate::model::tokenizer::TokenizerError;
use crate::model::{LoadedModel, ModelError};

pub use pipeline::{BatchOutput, PreviewKind, PreviewSettings, StepReport, Timings};
pub use prepare::{Checked, Handover, Prepared, Request, XlSizeRequest, XlSizes};
use sampler::NoiseSource;

#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    /// The request cannot be run as asked (the message says what to change).
    #[error("{0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("cancelled")]
    Cancelled,
}

/// Generates a batch of pictures, one per noise source (see [`pipeline::run_batch`], also for
/// `handed_over`); an inpainting result is composited over the original through the (blurred)
/// mask, as AUTOMATIC1111 does, so the pixels outside it come back exactly as they were.
pub fn generate_batch(
    model: &mut LoadedModel,
    prepared: &Prepared,
    noises: &mut [&mut dyn NoiseSource],
    handed_over: Option<&[f32]>,
    is_cancelled: &dyn Fn() -> bool,
    on_step: &mut dyn FnMut(usize, StepReport),
) -> Result<BatchOutput, GenerationError> {
    let mut output = pipeline::run_batch(model, prepared, noises, handed_over, is_cancelled, on_step)?;
    if let Some(inpaint) = prepared.inpaint() {
        for image in &mut output.images {
            *image = inpaint::composite(&inpaint.original, image, &inpaint.mask.soft);
        }
    }
    Ok(output)
}
