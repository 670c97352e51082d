//! A model folder in optimum's ONNX layout, opened without loading any weights.
//!
//! [`ModelFolder::open`] reads and checks everything that is cheap: the scheduler, VAE, UNet and
//! text encoder configs, the tokenizer, and that each sub-model file exists. The registry caches
//! opened folders, so a warm request costs no file I/O.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ModelError;
use super::scheduler_config::SchedulerConfig;
use super::tokenizer::ClipTokenizer;

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
    force_upcast: Option<bool>,
    sample_size: Option<usize>,
    mid_block_add_attention: Option<bool>,
    block_out_channels: Option<Vec<usize>>,
    latent_channels: Option<usize>,
}

/// diffusers' `AutoencoderTiny` config (TAESD), of which the decoder's part matters.
#[derive(Deserialize, Default)]
struct TinyVaeConfig {
    scaling_factor: Option<f64>,
    latent_channels: Option<usize>,
    upsampling_scaling_factor: Option<usize>,
    decoder_block_out_channels: Option<Vec<usize>>,
}

/// A model's optional tiny VAE decoder (`vae_decoder_tiny/`): TAESD's architecture, diffusers'
/// `AutoencoderTiny`. Several times cheaper than the full decoder, a little softer.
#[derive(Debug, Clone, PartialEq)]
pub struct TinyDecoder {
    /// What the pipeline divides latents by before decoding (`scaling_factor`, 1.0 for TAESD:
    /// it takes the UNet's latents as they are).
    pub scaling_factor: f32,
}

#[derive(Deserialize, Default)]
struct TextEncoderConfig {
    layer_norm_eps: Option<f64>,
}

/// The pipeline-wide switches `model_index.json` carries (diffusers registers them there).
#[derive(Deserialize, Default)]
struct ModelIndex {
    force_zeros_for_empty_prompt: Option<bool>,
    requires_aesthetics_score: Option<bool>,
}

/// What an SDXL model adds to SD 1.x/2.x: a second text encoder with its own tokenizer, and a
/// UNet conditioned on the pooled text embedding and the picture's size (`time_ids`).
#[derive(Debug)]
pub struct XlParts {
    /// `tokenizer_2/`: the same vocabulary, padded with its own pad token (`!` for SDXL's
    /// OpenCLIP encoder).
    pub tokenizer_2: ClipTokenizer,
    /// `force_zeros_for_empty_prompt`: an empty negative prompt conditions with zeros rather than
    /// with the encoders' embedding of "" (diffusers' default for SDXL pipelines: true).
    pub force_zeros_for_empty_prompt: bool,
    /// The refiner (`requires_aesthetics_score`): one text encoder (the second, OpenCLIP, with
    /// the pooled projection; no `text_encoder/`), and `time_ids` of original size, crop and an
    /// aesthetic score (5 values) instead of the target size.
    pub refiner: bool,
}

#[derive(Deserialize, Default)]
struct UnetConfig {
    sample_size: Option<usize>,
    /// One entry per resolution level; every level but the last halves the latent.
    down_block_types: Option<Vec<String>>,
    block_out_channels: Option<Vec<usize>>,
    mid_block_type: Option<String>,
    /// diffusers' misnomer: the number of attention heads, one for all levels or one per level.
    attention_head_dim: Option<serde_json::Value>,
    num_attention_heads: Option<serde_json::Value>,
    in_channels: Option<usize>,
    out_channels: Option<usize>,
}

/// The shapes of a model's graphs that decide how much memory a request needs beyond the
/// weights: the UNet's levels (channels, and attention heads where a level attends) and the
/// VAE's channels. Defaults are SD 1.5's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Architecture {
    /// Per UNet level, from the latent's own resolution down: channels and, for a level with
    /// attention, its number of heads.
    pub unet_levels: Vec<(usize, Option<usize>)>,
    /// Heads of the UNet's middle block, when it attends.
    pub unet_mid_heads: Option<usize>,
    /// The VAE's channels per level, from full resolution down.
    pub vae_channels: Vec<usize>,
    /// Whether the VAE's middle block attends (over every latent cell at once).
    pub vae_attention: bool,
}

impl Architecture {
    fn from_configs(unet: &UnetConfig, vae: &VaeConfig) -> Self {
        let channels = unet
            .block_out_channels
            .clone()
            .unwrap_or_else(|| vec![320, 640, 1280, 1280]);
        let kinds = unet.down_block_types.clone().unwrap_or_else(|| {
            let mut kinds = vec!["CrossAttnDownBlock2D".to_string(); channels.len().saturating_sub(1)];
            kinds.push("DownBlock2D".into());
            kinds
        });
        let heads_field = unet.num_attention_heads.as_ref().or(unet.attention_head_dim.as_ref());
        let heads_at = |level: usize| -> usize {
            match heads_field {
                Some(serde_json::Value::Number(n)) => n.as_u64().unwrap_or(8) as usize,
                Some(serde_json::Value::Array(list)) => list.get(level).and_then(|v| v.as_u64()).unwrap_or(8) as usize,
                _ => 8,
            }
        };
        let unet_levels = channels
            .iter()
            .enumerate()
            .map(|(level, &c)| {
                let attends = kinds.get(level).is_some_and(|k| k.contains("Attn"));
                (c, attends.then(|| heads_at(level)))
            })
            .collect();
        let mid_attends = unet.mid_block_type.as_deref().is_none_or(|t| t.contains("Attn"));
        Self {
            unet_levels,
            unet_mid_heads: mid_attends.then(|| heads_at(channels.len().saturating_sub(1))),
            vae_channels: vae
                .block_out_channels
                .clone()
                .unwrap_or_else(|| vec![128, 256, 512, 512]),
            vae_attention: vae.mid_block_add_attention.unwrap_or(true),
        }
    }
}

/// Everything about a model that is known without loading its weights.
#[derive(Debug)]
pub struct ModelFolder {
    /// The name users see (the folder name for a folder given by path).
    pub name: String,
    pub root: PathBuf,
    pub scheduler: SchedulerConfig,
    pub prediction_type: PredictionType,
    /// The VAE's latent scaling (`scaling_factor`, 0.18215 for SD 1.x).
    pub scaling_factor: f32,
    /// The VAE's `force_upcast` (SDXL's VAE overflows float16): an SDXL model's float16 VAE
    /// export is run in float32, as diffusers' SDXL pipelines do.
    pub vae_force_upcast: bool,
    /// Pixels per latent cell along each side: 2^(len(block_out_channels) - 1).
    pub vae_factor: usize,
    /// The VAE's `sample_size` (pixels): the tile size of a tiled decode, as diffusers'
    /// `tile_sample_min_size`.
    pub vae_sample_size: usize,
    pub latent_channels: usize,
    /// Channels the UNet's `sample` takes: `latent_channels`, or `2 · latent_channels + 1` for
    /// an inpainting UNet (latents ‖ mask ‖ masked-picture latents).
    pub unet_in_channels: usize,
    /// The UNet's native latent size, when its config says.
    pub sample_size: Option<usize>,
    /// What the working-memory estimate needs to know of the graphs' shapes.
    pub architecture: Architecture,
    /// Picture sides must be a multiple of this: the VAE factor × 2^(the UNet's down-samplings).
    /// An exported UNet upsamples by exactly 2, so a latent side that does not halve evenly
    /// down to the last level fails ONNX Runtime's skip-connection `Concat`.
    pub size_multiple: usize,
    pub tokenizer: ClipTokenizer,
    /// The text encoder's layer-norm epsilon (for clip skip), from its `config.json`.
    pub text_layer_norm_eps: f64,
    /// The tiny VAE decoder, when the folder carries one.
    pub tiny_decoder: Option<TinyDecoder>,
    /// SDXL's second text encoder and conditioning, when the folder has `text_encoder_2/`.
    pub xl: Option<XlParts>,
}

/// The sub-model files of the layout, relative to the model root.
pub const TEXT_ENCODER: &str = "text_encoder/model.onnx";
pub const UNET: &str = "unet/model.onnx";
pub const VAE_DECODER: &str = "vae_decoder/model.onnx";
/// Optional: only img2img and inpainting need it, so it is loaded on first use.
pub const VAE_ENCODER: &str = "vae_encoder/model.onnx";
/// Optional: the tiny VAE decoder (TAESD) for `--decoder tiny` and cheap full previews, loaded
/// on first use.
pub const VAE_DECODER_TINY: &str = "vae_decoder_tiny/model.onnx";
const VAE_DECODER_TINY_CONFIG: &str = "vae_decoder_tiny/config.json";
pub const SCHEDULER_CONFIG: &str = "scheduler/scheduler_config.json";
/// SDXL's second text encoder (OpenCLIP ViT-bigG, with the pooled projection).
pub const TEXT_ENCODER_2: &str = "text_encoder_2/model.onnx";
const TOKENIZER_2: &str = "tokenizer_2";
const MODEL_INDEX: &str = "model_index.json";

/// Every file [`ModelFolder::open`] reads, relative to the model root.
const READ_ON_OPEN: [&str; 14] = [
    SCHEDULER_CONFIG,
    MODEL_INDEX,
    TEXT_ENCODER_2,
    "tokenizer_2/vocab.json",
    "tokenizer_2/merges.txt",
    "tokenizer_2/tokenizer_config.json",
    VAE_DECODER_TINY,
    VAE_DECODER_TINY_CONFIG,
    "vae_decoder/config.json",
    "unet/config.json",
    "text_encoder/config.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/tokenizer_config.json",
];

/// What the files a folder was opened from looked like (size and modification time of each,
/// `None` when absent): a cached [`ModelFolder`] is good while this is unchanged, so an edited
/// or corrupted config is read again rather than served from memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(Vec<Option<(u64, std::time::SystemTime)>>);

impl Fingerprint {
    /// A few `stat` calls: cheap enough for every request.
    pub fn of(root: &Path) -> Self {
        Self(
            READ_ON_OPEN
                .iter()
                .map(|part| {
                    let meta = std::fs::metadata(root.join(part)).ok()?;
                    Some((meta.len(), meta.modified().ok()?))
                })
                .collect(),
        )
    }
}

impl ModelFolder {
    pub fn open(name: &str, root: &Path) -> Result<Self, ModelError> {
        if !root.is_dir() {
            return Err(ModelError::NotFound {
                path: root.to_path_buf(),
            });
        }
        let model = name.to_string();
        let index: ModelIndex = read_optional_config(&model, &root.join(MODEL_INDEX))?;
        // An SDXL refiner has only the second text encoder.
        let refiner = index.requires_aesthetics_score == Some(true) && root.join(TEXT_ENCODER_2).is_file();
        let first_encoder = if refiner { TEXT_ENCODER_2 } else { TEXT_ENCODER };
        for part in [first_encoder, UNET, VAE_DECODER, SCHEDULER_CONFIG] {
            let path = root.join(part);
            if !path.is_file() {
                return Err(ModelError::MissingPart { model, path });
            }
        }
        let scheduler = read_config(&model, &root.join(SCHEDULER_CONFIG), SchedulerConfig::from_json_str)?;
        let vae: VaeConfig = read_optional_config(&model, &root.join("vae_decoder/config.json"))?;
        let unet: UnetConfig = read_optional_config(&model, &root.join("unet/config.json"))?;
        let text_config = if refiner {
            "text_encoder_2/config.json"
        } else {
            "text_encoder/config.json"
        };
        let text: TextEncoderConfig = read_optional_config(&model, &root.join(text_config))?;
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
        // diffusers: every down block but the last has a down-sampler. Without a config,
        // SD 1.x/2.x's four levels.
        let levels = unet
            .down_block_types
            .as_ref()
            .map(Vec::len)
            .or(unet.block_out_channels.as_ref().map(Vec::len))
            .unwrap_or(4);
        let size_multiple = vae_factor << levels.saturating_sub(1).min(8);
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
        let tiny_decoder = if root.join(VAE_DECODER_TINY).is_file() {
            let tiny: TinyVaeConfig = read_optional_config(&model, &root.join(VAE_DECODER_TINY_CONFIG))?;
            Some(check_tiny_decoder(&model, &tiny, latent_channels, vae_factor)?)
        } else {
            None
        };
        // The refiner's one tokenizer is tokenizer_2/ (the first one's folder is absent).
        let tokenizer_dir = if refiner { TOKENIZER_2 } else { "tokenizer" };
        let tokenizer = ClipTokenizer::from_dir(&root.join(tokenizer_dir)).map_err(|source| ModelError::Tokenizer {
            model: model.clone(),
            source,
        })?;
        let xl = if root.join(TEXT_ENCODER_2).is_file() {
            Some(open_xl_parts(&model, root, &tokenizer, &index, refiner)?)
        } else {
            None
        };
        Ok(Self {
            name: model,
            root: root.to_path_buf(),
            scheduler,
            prediction_type,
            scaling_factor: vae.scaling_factor.unwrap_or(0.18215) as f32,
            vae_force_upcast: vae.force_upcast.unwrap_or(false),
            vae_factor,
            vae_sample_size: vae.sample_size.unwrap_or(512).max(vae_factor),
            latent_channels,
            unet_in_channels,
            sample_size: unet.sample_size,
            size_multiple,
            architecture: Architecture::from_configs(&unet, &vae),
            tokenizer,
            text_layer_norm_eps: text.layer_norm_eps.unwrap_or(1e-5),
            tiny_decoder,
            xl,
        })
    }

    /// Whether this is an SDXL-family model (two text encoders, size conditioning).
    pub fn is_xl(&self) -> bool {
        self.xl.is_some()
    }

    /// Whether this is an SDXL refiner (see [`XlParts::refiner`]).
    pub fn is_refiner(&self) -> bool {
        self.xl.as_ref().is_some_and(|xl| xl.refiner)
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

/// An SDXL folder's second tokenizer and pipeline switches. The prompt is split into 75-token
/// chunks once, with the first tokenizer, and each chunk is fed to both encoders (as
/// AUTOMATIC1111 does): that is only right when both tokenizers split text alike, which SDXL's
/// do (one CLIP vocabulary, two pad tokens), so a folder whose second vocabulary differs is
/// refused rather than conditioned on the wrong tokens.
fn open_xl_parts(
    model: &str,
    root: &Path,
    tokenizer: &ClipTokenizer,
    index: &ModelIndex,
    refiner: bool,
) -> Result<XlParts, ModelError> {
    let dir = root.join(TOKENIZER_2);
    if !dir.join("vocab.json").is_file() {
        return Err(ModelError::Incompatible {
            model: model.to_string(),
            message: format!(
                "it has text_encoder_2/ (an SDXL model) but no {}; copy the model's tokenizer_2/ folder (vocab.json, \
                 merges.txt, tokenizer_config.json) next to it or re-export the model with optimum",
                dir.join("vocab.json").display()
            ),
        });
    }
    let tokenizer_2 = ClipTokenizer::from_dir(&dir).map_err(|source| ModelError::Tokenizer {
        model: model.to_string(),
        source,
    })?;
    const PROBE: &str = "a photograph of an astronaut riding a horse, masterpiece, 8k";
    let split_alike = matches!(
        (tokenizer.token_ids(PROBE), tokenizer_2.token_ids(PROBE)),
        (Ok(a), Ok(b)) if a == b
    );
    if !split_alike {
        return Err(ModelError::Incompatible {
            model: model.to_string(),
            message: "tokenizer_2/ splits text differently from tokenizer/ (another vocabulary); easel feeds one \
                      tokenization to both text encoders, as SDXL's two CLIP tokenizers allow"
                .to_string(),
        });
    }
    Ok(XlParts {
        tokenizer_2,
        force_zeros_for_empty_prompt: index.force_zeros_for_empty_prompt.unwrap_or(true),
        refiner,
    })
}

/// The tiny decoder a `vae_decoder_tiny/config.json` describes (absent keys take
/// `AutoencoderTiny`'s defaults), checked against the model's own VAE: a TAESD made for another
/// latent space (SDXL's TAESDXL on an SD 1.5 model, say) would decode garbage.
fn check_tiny_decoder(
    model: &str,
    tiny: &TinyVaeConfig,
    latent_channels: usize,
    vae_factor: usize,
) -> Result<TinyDecoder, ModelError> {
    let channels = tiny.latent_channels.unwrap_or(4);
    let stages = tiny.decoder_block_out_channels.as_ref().map_or(4, Vec::len);
    let factor = tiny
        .upsampling_scaling_factor
        .unwrap_or(2)
        .checked_pow(stages.saturating_sub(1) as u32)
        .unwrap_or(usize::MAX);
    if channels != latent_channels || factor != vae_factor {
        return Err(ModelError::Incompatible {
            model: model.to_string(),
            message: format!(
                "vae_decoder_tiny/ decodes {channels}-channel latents {factor}× up, but the model's VAE makes \
                 {latent_channels}-channel latents {vae_factor}× down; use the tiny decoder made for this model's \
                 family (TAESD for SD 1.x and 2.x, TAESDXL for SDXL) or remove vae_decoder_tiny/"
            ),
        });
    }
    let scaling_factor = tiny.scaling_factor.unwrap_or(1.0);
    if !(scaling_factor.is_finite() && scaling_factor > 0.0) {
        return Err(ModelError::Incompatible {
            model: model.to_string(),
            message: format!(
                "vae_decoder_tiny/config.json has scaling_factor {scaling_factor}; it must be a positive number (TAESD's is 1.0)"
            ),
        });
    }
    Ok(TinyDecoder {
        scaling_factor: scaling_factor as f32,
    })
}

/// Reads a JSON config with `parse` (so the scheduler config can read Python's `NaN`).
fn read_config<T, E: std::fmt::Display>(
    model: &str,
    path: &Path,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, ModelError> {
    let bad = |message: String| ModelError::BadConfig {
        model: model.to_string(),
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    parse(&text).map_err(|e| bad(e.to_string()))
}

/// A config that may be absent (its keys then take their defaults).
fn read_optional_config<T: for<'de> Deserialize<'de> + Default>(model: &str, path: &Path) -> Result<T, ModelError> {
    if path.is_file() {
        read_config(model, path, |text| serde_json::from_str(text))
    } else {
        Ok(T::default())
    }
}
