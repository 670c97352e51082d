//! A model with its ONNX sessions open: what residency keeps between jobs.
//!
//! [`LoadedModel::load`] opens the text encoder, UNet and VAE decoder sessions (the VAE encoder
//! on first use: only img2img and inpainting need it) and finds the inputs the pipeline feeds,
//! by name or else by rank, so exports that name them differently still run.

use std::sync::Arc;

use super::ModelError;
use super::embedding_cache::EmbeddingCache;
use super::folder::{ModelFolder, TEXT_ENCODER, UNET, VAE_DECODER, VAE_DECODER_TINY, VAE_ENCODER};
use super::onnx::{IoSpec, OnnxError, OnnxModel};
use super::runtime::OrtRuntime;

/// The ranks the pipeline feeds each input with (and the rank an unnamed input is found by).
pub mod ranks {
    /// Token ids `[B, 77]`.
    pub const INPUT_IDS: &[usize] = &[2];
    /// Latents (UNet) or pixels (VAE encoder), `[B, C, H, W]`.
    pub const SAMPLE: &[usize] = &[4];
    /// A 0-d scalar (optimum since late 2024) or `[B]`.
    pub const TIMESTEP: &[usize] = &[0, 1];
    /// Text embeddings `[B, 77, D]`.
    pub const ENCODER_HIDDEN_STATES: &[usize] = &[3];
    /// The VAE decoder's latent `[B, C, H, W]`.
    pub const LATENT: &[usize] = &[4];
    /// LCM's guidance embedding `[B, D]`.
    pub const TIMESTEP_COND: usize = 2;
}

/// The UNet's inputs as this export names and types them.
#[derive(Debug, Clone)]
pub struct UnetInputs {
    pub sample: IoSpec,
    pub timestep: IoSpec,
    pub encoder_hidden_states: IoSpec,
    /// LCM-distilled UNets: the guidance embedding `[B, D]` that replaces classifier-free
    /// guidance.
    pub timestep_cond: Option<IoSpec>,
}

impl UnetInputs {
    /// Finds the inputs the pipeline feeds, by name or else by rank (exports disagree on names).
    pub fn find(unet: &OnnxModel) -> Result<Self, OnnxError> {
        Ok(Self {
            sample: unet.find_input(&["sample"], Some(ranks::SAMPLE))?,
            timestep: unet.find_input(&["timestep", "timesteps", "t"], Some(ranks::TIMESTEP))?,
            encoder_hidden_states: unet.find_input(&["encoder_hidden_states"], Some(ranks::ENCODER_HIDDEN_STATES))?,
            timestep_cond: unet
                .inputs
                .iter()
                .find(|i| i.name == "timestep_cond" && i.rank() == ranks::TIMESTEP_COND)
                .cloned(),
        })
    }

    /// The UNet's inputs that easel does not feed (SDXL's `text_embeds` and `time_ids`, …): a
    /// model with any cannot run.
    pub fn unfed<'a>(&self, unet: &'a OnnxModel) -> Vec<&'a str> {
        let known = [
            Some(&self.sample.name),
            Some(&self.timestep.name),
            Some(&self.encoder_hidden_states.name),
            self.timestep_cond.as_ref().map(|s| &s.name),
        ];
        unet.inputs
            .iter()
            .filter(|i| !known.contains(&Some(&i.name)))
            .map(|i| i.name.as_str())
            .collect()
    }

    /// Width of the guidance embedding (`time_cond_proj_dim`), when the UNet takes one.
    pub fn guidance_embedding_dim(&self) -> Option<usize> {
        self.timestep_cond.as_ref().map(|spec| match spec.shape.get(1) {
            Some(&d) if d > 0 => d as usize,
            _ => 256,
        })
    }
}

/// The tiny VAE decoder's session (`vae_decoder_tiny/`) and its latent input.
#[derive(Debug)]
pub struct TinyDecoderSession {
    pub model: OnnxModel,
    pub latent: IoSpec,
}

/// The VAE encoder (pixels → latent) and where its latent comes out.
#[derive(Debug)]
pub struct VaeEncoder {
    pub model: OnnxModel,
    pub input: IoSpec,
    /// Index of the output to read: `latent_parameters` (mean ‖ log-variance, current optimum)
    /// or `latent_sample` (legacy exports: the latent itself).
    pub output: usize,
}

impl VaeEncoder {
    /// Finds the pixel input and the latent output of a VAE encoder session.
    pub fn new(model: OnnxModel) -> Result<Self, OnnxError> {
        let input = Self::input_of(&model)?;
        let output = model
            .outputs
            .iter()
            .position(|o| o.name == "latent_parameters" || o.name == "latent_sample")
            .unwrap_or(0);
        Ok(Self { model, input, output })
    }

    /// The pixel input of a VAE encoder session.
    pub fn input_of(model: &OnnxModel) -> Result<IoSpec, OnnxError> {
        model.find_input(&["sample"], Some(ranks::SAMPLE))
    }
}

/// The text encoder's token-id input.
pub fn find_text_input_ids(text_encoder: &OnnxModel) -> Result<IoSpec, OnnxError> {
    text_encoder.find_input(&["input_ids"], Some(ranks::INPUT_IDS))
}

/// The VAE decoder's latent input.
pub fn find_vae_latent(vae_decoder: &OnnxModel) -> Result<IoSpec, OnnxError> {
    vae_decoder.find_input(&["latent_sample", "latent", "z"], Some(ranks::LATENT))
}

/// Why a UNet with inputs easel does not feed cannot run (see [`UnetInputs::unfed`]).
pub fn unfed_inputs_message(unfed: &[&str]) -> String {
    format!(
        "the UNet takes inputs easel cannot feed yet ({}); SDXL UNets come in a later release",
        unfed.join(", ")
    )
}

/// A model with its sessions open: what a worker keeps resident between jobs.
#[derive(Debug)]
pub struct LoadedModel {
    pub folder: Arc<ModelFolder>,
    pub text_encoder: OnnxModel,
    pub text_input_ids: IoSpec,
    pub unet: OnnxModel,
    pub unet_inputs: UnetInputs,
    pub vae_decoder: OnnxModel,
    pub vae_latent: IoSpec,
    vae_encoder: Option<VaeEncoder>,
    tiny_decoder: Option<TinyDecoderSession>,
    /// The text encoder's recent results (prompt chunks seen again cost nothing).
    pub text_cache: EmbeddingCache,
    runtime: OrtRuntime,
    threads: usize,
}

impl LoadedModel {
    pub fn load(runtime: &OrtRuntime, folder: Arc<ModelFolder>, threads: usize) -> Result<Self, ModelError> {
        let model = folder.name.clone();
        let onnx_err = |source: OnnxError| ModelError::Onnx {
            model: model.clone(),
            source,
        };
        // The three sessions open side by side: creating one is mostly single-threaded work
        // (reading the file, optimizing the graph), so the text encoder and VAE decoder open
        // while the UNet does, instead of after it.
        let open = |label: &str, part: &str| OnnxModel::load(runtime, label, &folder.root.join(part), threads);
        let (text_encoder, unet, vae_decoder) = std::thread::scope(|scope| {
            let text_encoder = scope.spawn(|| open("text_encoder", TEXT_ENCODER));
            let vae_decoder = scope.spawn(|| open("vae_decoder", VAE_DECODER));
            let unet = open("unet", UNET);
            let joined = |handle: std::thread::ScopedJoinHandle<'_, Result<OnnxModel, OnnxError>>| {
                handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            };
            (joined(text_encoder), unet, joined(vae_decoder))
        });
        let (text_encoder, unet, vae_decoder) = (
            text_encoder.map_err(onnx_err)?,
            unet.map_err(onnx_err)?,
            vae_decoder.map_err(onnx_err)?,
        );
        let text_input_ids = find_text_input_ids(&text_encoder).map_err(onnx_err)?;
        let unet_inputs = UnetInputs::find(&unet).map_err(onnx_err)?;
        let vae_latent = find_vae_latent(&vae_decoder).map_err(onnx_err)?;
        let incompatible = |message: String| ModelError::Incompatible {
            model: model.clone(),
            message,
        };
        let extra = unet_inputs.unfed(&unet);
        if !extra.is_empty() {
            return Err(incompatible(unfed_inputs_message(&extra)));
        }
        if text_encoder.outputs.is_empty() || unet.outputs.is_empty() || vae_decoder.outputs.is_empty() {
            return Err(incompatible("a sub-model has no outputs".into()));
        }
        Ok(Self {
            folder,
            text_encoder,
            text_input_ids,
            unet,
            unet_inputs,
            vae_decoder,
            vae_latent,
            vae_encoder: None,
            tiny_decoder: None,
            text_cache: EmbeddingCache::default(),
            runtime: runtime.clone(),
            threads,
        })
    }

    /// The VAE encoder, loading it on first use.
    pub fn vae_encoder(&mut self) -> Result<&mut VaeEncoder, ModelError> {
        if self.vae_encoder.is_none() {
            let model_name = self.folder.name.clone();
            let path = self.folder.root.join(VAE_ENCODER);
            if !path.is_file() {
                return Err(ModelError::Incompatible {
                    model: model_name,
                    message: format!(
                        "img2img needs the VAE encoder, but {} is missing; export the model with optimum to get it",
                        path.display()
                    ),
                });
            }
            let onnx_err = |source: OnnxError| ModelError::Onnx {
                model: model_name.clone(),
                source,
            };
            let model = OnnxModel::load(&self.runtime, "vae_encoder", &path, self.threads).map_err(onnx_err)?;
            self.vae_encoder = Some(VaeEncoder::new(model).map_err(onnx_err)?);
        }
        Ok(self.vae_encoder.as_mut().expect("loaded above"))
    }

    /// The tiny VAE decoder, loading it on first use; `None` when the folder has none.
    pub fn tiny_decoder(&mut self) -> Result<Option<&mut TinyDecoderSession>, ModelError> {
        if self.folder.tiny_decoder.is_none() {
            return Ok(None);
        }
        if self.tiny_decoder.is_none() {
            let model_name = self.folder.name.clone();
            let onnx_err = |source: OnnxError| ModelError::Onnx {
                model: model_name.clone(),
                source,
            };
            let path = self.folder.root.join(VAE_DECODER_TINY);
            let model = OnnxModel::load(&self.runtime, "vae_decoder_tiny", &path, self.threads).map_err(onnx_err)?;
            let latent = find_vae_latent(&model).map_err(onnx_err)?;
            self.tiny_decoder = Some(TinyDecoderSession { model, latent });
        }
        Ok(self.tiny_decoder.as_mut())
    }
}
