//! What a model is: the check an import must pass, and what `easel models show` prints.
//!
//! [`describe`] goes further than [`ModelFolder::open`] (configs, tokenizer files, sub-model
//! files present): it opens every ONNX sub-model, one at a time so memory holds one at most,
//! finds the inputs the pipeline feeds with the same lookups [`crate::model::LoadedModel::load`]
//! uses, checks their ranks, and encodes a test prompt. A model that passes loads; one that does
//! not gets an error naming the part, its file and what is wrong.
//!
//! SDXL models (with `text_encoder_2/`) must have both halves: the second text encoder with its
//! pooled `text_embeds` output and hidden states, and a UNet that takes `text_embeds` and
//! `time_ids`.

use std::path::{Path, PathBuf};

use crate::model::loaded::{self, UnetInputs, VaeEncoder, ranks};
use crate::model::onnx::{IoSpec, OnnxError, OnnxModel};
use crate::model::runtime::OrtRuntime;
use crate::model::tokenizer::{ClipTokenizer, TokenizerError};
use crate::model::{ModelError, ModelFolder, folder};

/// Encoded to check a tokenizer works end to end.
const TEST_PROMPT: &str = "a photograph of an astronaut riding a horse";
/// SD 2.x's OpenCLIP ViT-H text encoder; SD 1.x's CLIP ViT-L is 768 wide.
const SD2_HIDDEN_SIZE: i64 = 1024;
/// The id of `!`, SD 2.x's pad token, in every CLIP vocabulary.
const SD2_PAD_ID: i64 = 0;

#[derive(Debug, thiserror::Error)]
pub enum DescribeError {
    #[error(transparent)]
    Folder(#[from] ModelError),
    #[error("model {model}: the {part} ({file}) cannot be used: {source}")]
    Part {
        model: String,
        part: &'static str,
        file: &'static str,
        #[source]
        source: Box<OnnxError>,
    },
    #[error(
        "model {model}: the {part} ({file}) input `{input}` has rank {found} where easel feeds rank {expected}; the export does not match Stable Diffusion's, re-export it with optimum"
    )]
    Rank {
        model: String,
        part: &'static str,
        file: &'static str,
        input: String,
        found: usize,
        expected: String,
    },
    #[error("model {model}: the {part} ({file}) has no outputs; re-export the model with optimum")]
    NoOutputs {
        model: String,
        part: &'static str,
        file: &'static str,
    },
    #[error("model {model}: the tokenizer in {dir} {problem}; copy the tokenizer folder from the original model")]
    Tokenizer {
        model: String,
        dir: String,
        problem: String,
    },
    #[error("model {model} is not compatible: {message}")]
    Incompatible { model: String, message: String },
    #[error("model {model}: cannot list the files of {path}: {source}")]
    Files {
        model: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A model as `easel models show` presents it.
#[derive(Debug, Clone)]
pub struct ModelDescription {
    /// `sd1`, `sd2` or `sdxl`, plus `-inpaint` (UNet in_channels = 2·latent + 1) or `-lcm` (the
    /// UNet takes `timestep_cond`).
    pub family: String,
    /// `epsilon`, `v_prediction` or `sample`, from the scheduler config.
    pub prediction_type: String,
    /// `float32` or `float16`: the UNet `sample` input's element type.
    pub dtype: String,
    /// Bytes of every file under the root.
    pub size_bytes: u64,
    pub default_sampler: String,
    /// Pixels per side the model was trained for.
    pub native_size: u32,
    /// Every file: path relative to the root (with `/`) and size, sorted by path.
    pub files: Vec<(String, u64)>,
    /// text_encoder, unet, vae_decoder, then vae_encoder and text_encoder_2 when present.
    pub parts: Vec<PartIo>,
    /// For a model converted from a flat bundle: how each generated setting was decided
    /// ([`super::bundle::inferred_lines`]); empty otherwise.
    pub inferred: Vec<String>,
}

/// One ONNX sub-model's inputs and outputs, as its session declares them.
#[derive(Debug, Clone)]
pub struct PartIo {
    pub name: String,
    pub inputs: Vec<IoSpec>,
    pub outputs: Vec<IoSpec>,
}

/// Opens the model folder at `root` and every ONNX sub-model in it (inspection sessions, without
/// graph optimization, each dropped before the next opens) and checks what the pipeline needs.
pub fn describe(runtime: &OrtRuntime, name: &str, root: &Path) -> Result<ModelDescription, DescribeError> {
    let folder = ModelFolder::open(name, root)?;
    let model = folder.name.clone();
    let tokenizer_error = |dir: &str, problem: String| DescribeError::Tokenizer {
        model: model.clone(),
        dir: dir.to_string(),
        problem,
    };
    check_tokenizer(&folder.tokenizer).map_err(|e| tokenizer_error("tokenizer/", e))?;
    let sdxl = folder.is_xl();
    if let Some(xl) = &folder.xl {
        check_tokenizer(&xl.tokenizer_2).map_err(|e| tokenizer_error("tokenizer_2/", e))?;
    }

    let open = |part: &'static str, file: &'static str| Part::open(runtime, &model, root, part, file);
    let mut parts = Vec::new();

    // A refiner's only text encoder is SDXL's second one, checked below.
    let mut hidden_size = None;
    if !folder.is_refiner() {
        let text_encoder = open("text_encoder", folder::TEXT_ENCODER)?;
        let input_ids = text_encoder.find(loaded::find_text_input_ids)?;
        text_encoder.check_rank(&input_ids, ranks::INPUT_IDS)?;
        hidden_size = text_encoder.hidden_size();
        parts.push(text_encoder.finish()?);
    }

    let unet = open("unet", folder::UNET)?;
    let unet_inputs = unet.find(UnetInputs::find)?;
    unet.check_rank(&unet_inputs.sample, ranks::SAMPLE)?;
    unet.check_rank(&unet_inputs.timestep, ranks::TIMESTEP)?;
    unet.check_rank(&unet_inputs.encoder_hidden_states, ranks::ENCODER_HIDDEN_STATES)?;
    let unfed: Vec<String> = unet_inputs.unfed(&unet.model).iter().map(|s| s.to_string()).collect();
    parts.push(unet.finish()?);

    let vae_decoder = open("vae_decoder", folder::VAE_DECODER)?;
    let latent = vae_decoder.find(loaded::find_vae_latent)?;
    vae_decoder.check_rank(&latent, ranks::LATENT)?;
    parts.push(vae_decoder.finish()?);

    if root.join(folder::VAE_ENCODER).is_file() {
        let vae_encoder = open("vae_encoder", folder::VAE_ENCODER)?;
        let input = vae_encoder.find(VaeEncoder::input_of)?;
        vae_encoder.check_rank(&input, ranks::SAMPLE)?;
        parts.push(vae_encoder.finish()?);
    }

    if root.join(folder::VAE_DECODER_TINY).is_file() {
        let tiny = open("vae_decoder_tiny", folder::VAE_DECODER_TINY)?;
        let latent = tiny.find(loaded::find_vae_latent)?;
        tiny.check_rank(&latent, ranks::LATENT)?;
        parts.push(tiny.finish()?);
    }

    if sdxl {
        let text_encoder_2 = open("text_encoder_2", folder::TEXT_ENCODER_2)?;
        let input_ids = text_encoder_2.find(loaded::find_text_input_ids)?;
        text_encoder_2.check_rank(&input_ids, ranks::INPUT_IDS)?;
        let outputs: Vec<&str> = text_encoder_2.model.outputs.iter().map(|o| o.name.as_str()).collect();
        if !outputs.contains(&"text_embeds") || !outputs.iter().any(|o| o.starts_with("hidden_states.")) {
            return Err(DescribeError::Incompatible {
                model,
                message: format!(
                    "text_encoder_2 ({}) must output `text_embeds` (the pooled projection) and its hidden states; \
                     it has {}: re-export the model with optimum",
                    root.join(folder::TEXT_ENCODER_2).display(),
                    outputs.join(", ")
                ),
            });
        }
        parts.push(text_encoder_2.finish()?);
    }

    let unfed: Vec<&str> = unfed.iter().map(String::as_str).collect();
    if !unfed.is_empty() {
        return Err(DescribeError::Incompatible {
            model,
            message: loaded::unfed_inputs_message(&unfed),
        });
    }
    loaded::check_xl_parts(sdxl, unet_inputs.xl.is_some()).map_err(|message| DescribeError::Incompatible {
        model: model.clone(),
        message,
    })?;
    loaded::check_time_ids(&folder, unet_inputs.xl.as_ref()).map_err(|message| DescribeError::Incompatible {
        model: model.clone(),
        message,
    })?;
    let sd2 = folder.tokenizer.pad_id() == SD2_PAD_ID || hidden_size == Some(SD2_HIDDEN_SIZE);
    let family = family_of(&folder, sd2, unet_inputs.timestep_cond.is_some());
    let dtype = unet_inputs.sample.dtype.to_string();
    described(&folder, root, family, dtype, parts)
}

/// What `easel models list` shows, read from the configs, the tokenizer and file sizes only —
/// no ONNX session, so listing stays fast however big the models are. The family comes from
/// the configs (`unet` `in_channels` and `time_cond_proj_dim`, the text encoder's
/// `hidden_size`), where [`describe`] reads the graphs; `dtype` is left empty (only the graph
/// knows it).
pub fn summarize(name: &str, root: &Path) -> Result<ModelDescription, DescribeError> {
    #[derive(serde::Deserialize, Default)]
    struct UnetConfig {
        time_cond_proj_dim: Option<usize>,
    }
    #[derive(serde::Deserialize, Default)]
    struct TextConfig {
        hidden_size: Option<i64>,
    }
    fn read<T: for<'de> serde::Deserialize<'de> + Default>(path: &Path) -> T {
        std::fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }
    let folder = ModelFolder::open(name, root)?;
    let unet: UnetConfig = read(&root.join("unet/config.json"));
    let text: TextConfig = read(&root.join("text_encoder/config.json"));
    let sd2 = folder.tokenizer.pad_id() == SD2_PAD_ID || text.hidden_size == Some(SD2_HIDDEN_SIZE);
    let family = family(
        folder.is_xl(),
        sd2,
        folder.is_inpainting(),
        unet.time_cond_proj_dim.is_some(),
    );
    described(&folder, root, family, String::new(), Vec::new())
}

/// A description: what the caller found out, and what the folder and its files say.
fn described(
    folder: &ModelFolder,
    root: &Path,
    family: String,
    dtype: String,
    parts: Vec<PartIo>,
) -> Result<ModelDescription, DescribeError> {
    let files = list_files(root).map_err(|source| DescribeError::Files {
        model: folder.name.clone(),
        path: root.to_path_buf(),
        source,
    })?;
    Ok(ModelDescription {
        family,
        prediction_type: folder.prediction_type.as_str().to_string(),
        dtype,
        size_bytes: files.iter().map(|(_, size)| size).sum(),
        default_sampler: crate::generation::sampler::default_for(&folder.scheduler)
            .name()
            .to_string(),
        native_size: folder.native_size(),
        files,
        parts,
        inferred: super::bundle::inferred_lines(root),
    })
}

/// A sub-model being described: its session and where it came from, for errors.
struct Part<'a> {
    model_name: &'a str,
    part: &'static str,
    file: &'static str,
    model: OnnxModel,
}

impl<'a> Part<'a> {
    fn open(
        runtime: &OrtRuntime,
        model_name: &'a str,
        root: &Path,
        part: &'static str,
        file: &'static str,
    ) -> Result<Self, DescribeError> {
        let model = OnnxModel::inspect(runtime, part, &root.join(file)).map_err(|source| DescribeError::Part {
            model: model_name.to_string(),
            part,
            file,
            source: Box::new(source),
        })?;
        Ok(Self {
            model_name,
            part,
            file,
            model,
        })
    }

    /// Runs one of the pipeline's input lookups on this part.
    fn find<T>(&self, lookup: impl FnOnce(&OnnxModel) -> Result<T, OnnxError>) -> Result<T, DescribeError> {
        lookup(&self.model).map_err(|source| DescribeError::Part {
            model: self.model_name.to_string(),
            part: self.part,
            file: self.file,
            source: Box::new(source),
        })
    }

    fn check_rank(&self, input: &IoSpec, expected: &[usize]) -> Result<(), DescribeError> {
        if expected.contains(&input.rank()) {
            return Ok(());
        }
        Err(DescribeError::Rank {
            model: self.model_name.to_string(),
            part: self.part,
            file: self.file,
            input: input.name.clone(),
            found: input.rank(),
            expected: expected.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(" or "),
        })
    }

    /// A text encoder's width: the last axis of `last_hidden_state` (or its first 3-d output).
    fn hidden_size(&self) -> Option<i64> {
        let outputs = &self.model.outputs;
        outputs
            .iter()
            .find(|o| o.name == "last_hidden_state")
            .or_else(|| outputs.iter().find(|o| o.rank() == 3))
            .and_then(|o| o.shape.last().copied())
            .filter(|&width| width > 0)
    }

    /// Checks the part has outputs and keeps its I/O; the session is dropped here.
    fn finish(self) -> Result<PartIo, DescribeError> {
        if self.model.outputs.is_empty() {
            return Err(DescribeError::NoOutputs {
                model: self.model_name.to_string(),
                part: self.part,
                file: self.file,
            });
        }
        Ok(PartIo {
            name: self.part.to_string(),
            inputs: self.model.inputs.clone(),
            outputs: self.model.outputs.clone(),
        })
    }
}

/// Encodes [`TEST_PROMPT`]: BOS, some tokens, EOS, all within the vocabulary's ids.
fn check_tokenizer(tokenizer: &ClipTokenizer) -> Result<(), String> {
    let tokens = tokenizer
        .encode(TEST_PROMPT)
        .map_err(|e: TokenizerError| format!("cannot encode a test prompt: {e}"))?;
    if tokens.ids.len() < 3 {
        return Err(format!(
            "encodes a test prompt to {} tokens (BOS, EOS and nothing between)",
            tokens.ids.len()
        ));
    }
    Ok(())
}

/// A folder's family: [`family`], with `sdxl-refiner` for SDXL's refiner.
fn family_of(folder: &ModelFolder, sd2: bool, lcm: bool) -> String {
    let family = family(folder.is_xl(), sd2, folder.is_inpainting(), lcm);
    if folder.is_refiner() {
        family.replacen("sdxl", "sdxl-refiner", 1)
    } else {
        family
    }
}

/// `sd1`, `sd2` or `sdxl`, then `-inpaint` and/or `-lcm`.
fn family(sdxl: bool, sd2: bool, inpainting: bool, lcm: bool) -> String {
    let mut family = String::from(match (sdxl, sd2) {
        (true, _) => "sdxl",
        (false, true) => "sd2",
        (false, false) => "sd1",
    });
    if inpainting {
        family.push_str("-inpaint");
    }
    if lcm {
        family.push_str("-lcm");
    }
    family
}

/// Every file under `root` (links followed to their file, folders behind links not entered, so
/// a loop cannot trap the walk), relative with `/`, sorted.
pub fn list_files(root: &Path) -> std::io::Result<Vec<(String, u64)>> {
    let mut files = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        for item in std::fs::read_dir(root.join(&relative))? {
            let item = item?;
            let child = relative.join(item.file_name());
            let file_type = item.file_type()?;
            if file_type.is_dir() {
                pending.push(child);
            } else if let Ok(metadata) = std::fs::metadata(item.path())
                && metadata.is_file()
            {
                let path = child
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                files.push((path, metadata.len()));
            }
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_names_the_base_and_the_variants() {
        assert_eq!(family(false, false, false, false), "sd1");
        assert_eq!(family(false, true, false, false), "sd2");
        assert_eq!(family(true, true, false, false), "sdxl");
        assert_eq!(family(false, false, true, false), "sd1-inpaint");
        assert_eq!(family(false, true, false, true), "sd2-lcm");
        assert_eq!(family(true, false, true, true), "sdxl-inpaint-lcm");
    }

    #[test]
    fn files_are_listed_relative_sorted_with_sizes_and_links_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("unet")).unwrap();
        std::fs::write(root.join("unet/model.onnx"), vec![0u8; 10]).unwrap();
        std::fs::write(root.join("model_index.json"), b"{}").unwrap();
        std::os::unix::fs::symlink("unet/model.onnx", root.join("alias.onnx")).unwrap();
        // A folder link back to the root must not trap the walk.
        std::os::unix::fs::symlink(".", root.join("unet/loop")).unwrap();
        let files = list_files(root).unwrap();
        assert_eq!(
            files,
            vec![
                ("alias.onnx".to_string(), 10),
                ("model_index.json".to_string(), 2),
                ("unet/model.onnx".to_string(), 10)
            ]
        );
    }
}
