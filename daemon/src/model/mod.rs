//! A Stable Diffusion model in optimum's ONNX folder layout: its configs, its tokenizer and
//! its sub-model sessions.
//!
//! [`ModelFolder::open`] reads and checks everything that is cheap (configs, tokenizer, that
//! each sub-model file exists); [`LoadedModel::load`] opens the ONNX sessions and checks
//! their inputs and outputs against what the pipeline needs, so a broken or incompatible
//! model fails at load time with a message that names the part, not halfway through a job.

pub mod onnx;
pub mod tokenizer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::runtime::OrtRuntime;
use crate::sampler::{SamplerKind, SchedulerConfig};
use onnx::{IoSpec, OnnxError, OnnxModel};
use tokenizer::{ClipTokenizer, TokenizerError};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "model folder {path} does not exist; pass a folder exported by optimum (`optimum-cli export onnx --task text-to-image`) or the name of an installed model"
    )]
    NotFound { path: PathBuf },
    #[error("model {model} is incomplete: {path} is missing; re-export the model with optimum's ONNX exporter")]
    MissingPart { model: String, path: PathBuf },
    #[error("model {model}: cannot read {path}: {message}")]
    BadConfig {
        model: String,
        path: PathBuf,
        message: String,
    },
    #[error("model {model}: {source}")]
    Tokenizer {
        model: String,
        #[source]
        source: TokenizerError,
    },
    #[error("model {model}: {source}")]
    Onnx {
        model: String,
        #[source]
        source: OnnxError,
    },
    #[error("model {model} is not compatible: {message}")]
    Incompatible { model: String, message: String },
}

/// What diffusers calls `prediction_type`: what the UNet's output means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    Epsilon,
    VPrediction,
    Sample,
}

impl PredictionType {
    pub fn as_str(self) -> &'static str {
        match self {
            PredictionType::Epsilon => "epsilon",
            PredictionType::VPrediction => "v_prediction",
            PredictionType::Sample => "sample",
        }
    }
}

#[derive(Deserialize, Default)]
struct VaeConfig {
    scaling_factor: Option<f64>,
    block_out_channels: Option<Vec<usize>>,
    latent_channels: Option<usize>,
}

#[derive(Deserialize, Default)]
struct TextEncoderConfig {
    layer_norm_eps: Option<f64>,
}

#[derive(Deserialize, Default)]
struct UnetConfig {
    sample_size: Option<usize>,
    in_channels: Option<usize>,
    out_channels: Option<usize>,
}

/// Everything about a model that is known without loading its weights.
#[derive(Debug)]
pub struct ModelFolder {
    /// The name users see (the folder name for a folder given by path).
    pub name: String,
    pub root: PathBuf,
    pub scheduler: SchedulerConfig,
    pub default_sampler: SamplerKind,
    pub prediction_type: PredictionType,
    /// The VAE's latent scaling (`scaling_factor`, 0.18215 for SD 1.x).
    pub scaling_factor: f32,
    /// Pixels per latent cell along each side: 2^(len(block_out_channels) - 1).
    pub vae_factor: usize,
    pub latent_channels: usize,
    /// Channels the UNet's `sample` takes: `latent_channels`, or `2 · latent_channels + 1` for
    /// an inpainting UNet (latents ‖ mask ‖ masked-picture latents).
    pub unet_in_channels: usize,
    /// The UNet's native latent size, when its config says.
    pub sample_size: Option<usize>,
    pub tokenizer: ClipTokenizer,
    /// The text encoder's layer-norm epsilon (for clip skip), from its `config.json`.
    pub text_layer_norm_eps: f64,
}

/// The sub-model files of the layout, relative to the model root.
pub const TEXT_ENCODER: &str = "text_encoder/model.onnx";
pub const UNET: &str = "unet/model.onnx";
pub const VAE_DECODER: &str = "vae_decoder/model.onnx";
/// Optional: only img2img and inpainting need it, so it is loaded on first use.
pub const VAE_ENCODER: &str = "vae_encoder/model.onnx";

impl ModelFolder {
    pub fn open(name: &str, root: &Path) -> Result<Self, ModelError> {
        if !root.is_dir() {
            return Err(ModelError::NotFound {
                path: root.to_path_buf(),
            });
        }
        let model = name.to_string();
        for part in [TEXT_ENCODER, UNET, VAE_DECODER, "scheduler/scheduler_config.json"] {
            let path = root.join(part);
            if !path.is_file() {
                return Err(ModelError::MissingPart { model, path });
            }
        }
        let scheduler: SchedulerConfig = read_json(&model, &root.join("scheduler/scheduler_config.json"))?;
        let vae: VaeConfig = read_optional_json(&model, &root.join("vae_decoder/config.json"))?;
        let unet: UnetConfig = read_optional_json(&model, &root.join("unet/config.json"))?;
        let text: TextEncoderConfig = read_optional_json(&model, &root.join("text_encoder/config.json"))?;
        let prediction_type = match scheduler.prediction_type.as_deref().unwrap_or("epsilon") {
            "epsilon" => PredictionType::Epsilon,
            "v_prediction" => PredictionType::VPrediction,
            "sample" => PredictionType::Sample,
            other => {
                return Err(ModelError::Incompatible {
                    model,
                    message: format!(
                        "scheduler_config.json has prediction_type `{other}`; easel supports epsilon, v_prediction and sample"
                    ),
                });
            }
        };
        let vae_factor = vae
            .block_out_channels
            .as_ref()
            .map_or(8, |blocks| 1 << blocks.len().saturating_sub(1));
        let latent_channels = vae
            .latent_channels
            .or(unet.out_channels)
            .or(unet.in_channels)
            .unwrap_or(4);
        let unet_in_channels = unet.in_channels.unwrap_or(latent_channels);
        if unet_in_channels != latent_channels && unet_in_channels != 2 * latent_channels + 1 {
            return Err(ModelError::Incompatible {
                model,
                message: format!(
                    "unet/config.json has in_channels {unet_in_channels}; easel knows {latent_channels} (text-to-image) \
                     and {} (inpainting) for a VAE with {latent_channels} latent channels",
                    2 * latent_channels + 1
                ),
            });
        }
        let tokenizer = ClipTokenizer::from_dir(&root.join("tokenizer")).map_err(|source| ModelError::Tokenizer {
            model: model.clone(),
            source,
        })?;
        Ok(Self {
            name: model,
            root: root.to_path_buf(),
            default_sampler: crate::sampler::default_for(&scheduler),
            scheduler,
            prediction_type,
            scaling_factor: vae.scaling_factor.unwrap_or(0.18215) as f32,
            vae_factor,
            latent_channels,
            unet_in_channels,
            sample_size: unet.sample_size,
            tokenizer,
            text_layer_norm_eps: text.layer_norm_eps.unwrap_or(1e-5),
        })
    }

    /// Whether the UNet is a dedicated inpainting one (it also takes the mask and the masked
    /// picture's latents).
    pub fn is_inpainting(&self) -> bool {
        self.unet_in_channels == 2 * self.latent_channels + 1
    }

    /// The picture size the model was trained for: UNet sample size × VAE factor.
    pub fn native_size(&self) -> u32 {
        (self.sample_size.unwrap_or(64) * self.vae_factor) as u32
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(model: &str, path: &Path) -> Result<T, ModelError> {
    let bad = |message: String| ModelError::BadConfig {
        model: model.to_string(),
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))
}

fn read_optional_json<T: for<'de> Deserialize<'de> + Default>(model: &str, path: &Path) -> Result<T, ModelError> {
    if path.is_file() {
        read_json(model, path)
    } else {
        Ok(T::default())
    }
}

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
        let text_encoder =
            OnnxModel::load(runtime, "text_encoder", &folder.root.join(TEXT_ENCODER), threads).map_err(onnx_err)?;
        let unet = OnnxModel::load(runtime, "unet", &folder.root.join(UNET), threads).map_err(onnx_err)?;
        let vae_decoder =
            OnnxModel::load(runtime, "vae_decoder", &folder.root.join(VAE_DECODER), threads).map_err(onnx_err)?;
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
}
