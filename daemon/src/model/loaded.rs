//! A model with its ONNX sessions open: what residency keeps between jobs.
//!
//! [`LoadedModel::load`] opens the text encoder, UNet and VAE decoder sessions (the VAE encoder
//! on first use: only img2img and inpainting need it) and finds the inputs the pipeline feeds,
//! by name or else by rank, so exports that name them differently still run.

use std::sync::Arc;

use super::ModelError;
use super::embedding_cache::EmbeddingCache;
use super::folder::{ModelFolder, TEXT_ENCODER, TEXT_ENCODER_2, UNET, VAE_DECODER, VAE_DECODER_TINY, VAE_ENCODER};
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
    /// SDXL's pooled text embedding `[B, P]` and size conditioning `[B, 6]`.
    pub const XL_CONDITION: usize = 2;
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
    /// SDXL UNets (`addition_embed_type="text_time"`): the pooled text embedding and the size
    /// conditioning.
    pub xl: Option<XlUnetInputs>,
}

/// An SDXL UNet's extra inputs.
#[derive(Debug, Clone)]
pub struct XlUnetInputs {
    /// `text_embeds` `[B, P]`: the second text encoder's pooled projection.
    pub text_embeds: IoSpec,
    /// `time_ids` `[B, 6]`: original size, crop top-left and target size, (height, width) each.
    pub time_ids: IoSpec,
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
            xl: XlUnetInputs::find(unet),
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
            self.xl.as_ref().map(|xl| &xl.text_embeds.name),
            self.xl.as_ref().map(|xl| &xl.time_ids.name),
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

impl XlUnetInputs {
    /// Both of SDXL's extra inputs, by the names diffusers and optimum give them; `None` unless
    /// the UNet has both (one alone is reported as an input easel cannot feed).
    fn find(unet: &OnnxModel) -> Option<Self> {
        let named = |name: &str| {
            unet.inputs
                .iter()
                .find(|i| i.name == name && i.rank() == ranks::XL_CONDITION)
                .cloned()
        };
        Some(Self {
            text_embeds: named("text_embeds")?,
            time_ids: named("time_ids")?,
        })
    }
}

/// SDXL's second text encoder: its token-id input, and where its pooled projection comes out.
#[derive(Debug)]
pub struct SecondTextEncoder {
    pub model: OnnxModel,
    pub input_ids: IoSpec,
    /// Index of the `text_embeds` output (the pooled, projected embedding `[B, P]`).
    pub pooled: usize,
}

/// Where SDXL's second text encoder puts its pooled projection.
fn pooled_output(model: &OnnxModel) -> Result<usize, String> {
    model
        .outputs
        .iter()
        .position(|o| o.name == "text_embeds")
        .ok_or_else(|| {
            "text_encoder_2 has no `text_embeds` output (the pooled projection SDXL's UNet takes); export it with \
         optimum as a CLIPTextModelWithProjection"
                .to_string()
        })
}

impl SecondTextEncoder {
    fn new(model: OnnxModel) -> Result<Self, String> {
        let input_ids = find_text_input_ids(&model).map_err(|e| e.to_string())?;
        let pooled = pooled_output(&model)?;
        Ok(Self {
            model,
            input_ids,
            pooled,
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
        "the UNet takes inputs easel cannot feed ({}); easel feeds SD 1.x/2.x, SDXL base and LCM UNets as \
         optimum exports them",
        unfed.join(", ")
    )
}

/// An SDXL UNet needs the second text encoder's pooled embedding, and a second text encoder
/// means nothing to a UNet that does not take it: either is a broken or mixed-up folder.
pub fn check_xl_parts(has_text_encoder_2: bool, unet_takes_xl: bool) -> Result<(), String> {
    match (has_text_encoder_2, unet_takes_xl) {
        (true, false) => Err(
            "it has text_encoder_2/ (an SDXL model) but its UNet takes no `text_embeds` and \
                              `time_ids`; the UNet is not SDXL's: re-export the model with optimum"
                .to_string(),
        ),
        (false, true) => Err(
            "its UNet is SDXL's (it takes `text_embeds` and `time_ids`) but text_encoder_2/ is \
                              missing; copy the model's text_encoder_2/ and tokenizer_2/ folders next to it"
                .to_string(),
        ),
        _ => Ok(()),
    }
}

/// The number of `time_ids` the folder's configs call for (6 for SDXL base models, 5 for a
/// refiner) against what its UNet declares, when it declares a fixed number: a refiner's
/// `model_index.json` on a base UNet, or the reverse, fails here rather than mid-generation.
pub fn check_time_ids(folder: &ModelFolder, xl: Option<&XlUnetInputs>) -> Result<(), String> {
    let Some(xl) = xl else { return Ok(()) };
    let expected = if folder.is_refiner() { 5 } else { 6 };
    match xl.time_ids.shape.get(1) {
        Some(&declared) if declared > 0 && declared as usize != expected => Err(format!(
            "its UNet takes {declared} time ids, but its model_index.json makes it {} ({expected} time ids: \
             {}); fix requires_aesthetics_score in model_index.json or re-export the model",
            if folder.is_refiner() {
                "a refiner"
            } else {
                "an SDXL base model"
            },
            if folder.is_refiner() {
                "original size, crop, aesthetic score"
            } else {
                "original size, crop, target size"
            }
        )),
        _ => Ok(()),
    }
}

/// Whether a VAE part is run widened to float32: an SDXL model (diffusers' SDXL pipelines read
/// `force_upcast`; the SD 1.x/2.x ones ignore it, and `AutoencoderKL` defaults it to true) whose
/// VAE config says `force_upcast`, with a graph that takes float16.
fn upcasts(folder: &ModelFolder, vae_part: &OnnxModel) -> bool {
    let takes_float16 = vae_part
        .inputs
        .iter()
        .any(|input| input.dtype == super::onnx::Dtype::F16);
    folder.is_xl() && folder.vae_force_upcast && takes_float16
}

/// A model with its sessions open: what a worker keeps resident between jobs.
#[derive(Debug)]
pub struct LoadedModel {
    pub folder: Arc<ModelFolder>,
    pub text_encoder: OnnxModel,
    pub text_input_ids: IoSpec,
    /// SDXL's second text encoder (the folder has `text_encoder_2/`). The refiner's only
    /// encoder is this one, kept in `text_encoder` instead (see `refiner_pooled`).
    pub text_encoder_2: Option<SecondTextEncoder>,
    /// The refiner: the index of `text_encoder`'s pooled `text_embeds` output.
    pub refiner_pooled: Option<usize>,
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
        let refiner = folder.is_refiner();
        let (text_encoder, text_encoder_2, unet, vae_decoder) = std::thread::scope(|scope| {
            let text_encoder = scope.spawn(|| match refiner {
                true => open("text_encoder_2", TEXT_ENCODER_2),
                false => open("text_encoder", TEXT_ENCODER),
            });
            let text_encoder_2 =
                (folder.is_xl() && !refiner).then(|| scope.spawn(|| open("text_encoder_2", TEXT_ENCODER_2)));
            let vae_decoder = scope.spawn(|| open("vae_decoder", VAE_DECODER));
            let unet = open("unet", UNET);
            let joined = |handle: std::thread::ScopedJoinHandle<'_, Result<OnnxModel, OnnxError>>| {
                handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            };
            (
                joined(text_encoder),
                text_encoder_2.map(joined),
                unet,
                joined(vae_decoder),
            )
        });
        let (text_encoder, text_encoder_2, unet, vae_decoder) = (
            text_encoder.map_err(onnx_err)?,
            text_encoder_2.transpose().map_err(onnx_err)?,
            unet.map_err(onnx_err)?,
            vae_decoder.map_err(onnx_err)?,
        );
        let text_input_ids = find_text_input_ids(&text_encoder).map_err(onnx_err)?;
        let unet_inputs = UnetInputs::find(&unet).map_err(onnx_err)?;
        let mut vae_decoder = vae_decoder;
        let mut vae_latent = find_vae_latent(&vae_decoder).map_err(onnx_err)?;
        if upcasts(&folder, &vae_decoder) {
            // diffusers' `force_upcast`: this float16 VAE decodes in float32.
            vae_decoder = OnnxModel::load_upcast(runtime, "vae_decoder", &folder.root.join(VAE_DECODER), threads)
                .map_err(onnx_err)?;
            vae_latent = find_vae_latent(&vae_decoder).map_err(onnx_err)?;
        }
        let incompatible = |message: String| ModelError::Incompatible {
            model: model.clone(),
            message,
        };
        let extra = unet_inputs.unfed(&unet);
        if !extra.is_empty() {
            return Err(incompatible(unfed_inputs_message(&extra)));
        }
        let text_encoder_2 = text_encoder_2
            .map(SecondTextEncoder::new)
            .transpose()
            .map_err(&incompatible)?;
        let refiner_pooled = if refiner {
            Some(pooled_output(&text_encoder).map_err(&incompatible)?)
        } else {
            None
        };
        check_xl_parts(text_encoder_2.is_some() || refiner, unet_inputs.xl.is_some()).map_err(&incompatible)?;
        check_time_ids(&folder, unet_inputs.xl.as_ref()).map_err(&incompatible)?;
        if text_encoder.outputs.is_empty() || unet.outputs.is_empty() || vae_decoder.outputs.is_empty() {
            return Err(incompatible("a sub-model has no outputs".into()));
        }
        Ok(Self {
            folder,
            text_encoder,
            text_input_ids,
            text_encoder_2,
            refiner_pooled,
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
            let mut model = OnnxModel::load(&self.runtime, "vae_encoder", &path, self.threads).map_err(onnx_err)?;
            if upcasts(&self.folder, &model) {
                model = OnnxModel::load_upcast(&self.runtime, "vae_encoder", &path, self.threads).map_err(onnx_err)?;
            }
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
