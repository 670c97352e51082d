//! Flat bundles: a model shipped as one folder of ONNX graphs, converted on import into
//! optimum's layout with the configs the graphs imply.
//!
//! The seed app Odyssey (like Apple's ml-stable-diffusion resources and Mochi Diffusion) ships a
//! model as `text_encoder.onnx`, `unet.onnx`, `vae_decoder.onnx`, optionally `vae_encoder.onnx`
//! (and `text_encoder_2.onnx` for SDXL), with `vocab.json` and `merges.txt` beside them and no
//! `model_index.json` or configs. Apple's resource names (`TextEncoder.onnx`, `Unet.onnx`,
//! `VAEDecoder.onnx`, `VAEEncoder.onnx`, `TextEncoder2.onnx`) work too, in any letter case.
//!
//! [`Converter::convert`] works in the import's staging folder (never on the user's files):
//! 1. [`scan`] names each graph's part and refuses what is missing, doubled or a link;
//! 2. each graph's external-data files (named by the graph, relative to its folder) are read
//!    from the protobuf without loading it ([`external_data_files`]), and move with their graph
//!    into `<part>/`, keeping their names; the graph becomes `<part>/model.onnx`;
//! 3. the graphs are opened as [`describe`](super::describe) opens them ([`OnnxModel::inspect`]:
//!    no optimization) and read ([`GraphFacts`]); the VAE decoder runs once on a tiny zero latent
//!    to measure its upscaling;
//! 4. [`infer`] turns the facts and the user's [`Overrides`] into a [`Plan`]: the family from the
//!    UNet's text width and SDXL inputs, the rest from the graphs or the family's published
//!    defaults — every choice with how it was made;
//! 5. the configs optimum would have written are generated from the plan, and the choices are
//!    kept in [`REPORT_FILE`] for `easel models show` ([`inferred_lines`]).
//!
//! The caller validates the result as it validates any import.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::{self, BufReader, Read, Seek};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::generation::sampler::SamplerKind;
use crate::model::PredictionType;
use crate::model::loaded::{self, UnetInputs};
use crate::model::onnx::{HostTensor, Input, IoSpec, OnnxError, OnnxModel};
use crate::model::runtime::OrtRuntime;

/// What a converted bundle keeps of its conversion: the source's files and every inferred or
/// defaulted setting, for `easel models show` and for anyone reading the folder.
pub const REPORT_FILE: &str = "easel_bundle.json";

/// The scheduler configs of the families' reference models, as they ship them.
const SD15_SCHEDULER: &str = include_str!("../../../../tools/configs/sd15-scheduler.json");
const SD21_SCHEDULER: &str = include_str!("../../../../tools/configs/sd21-scheduler.json");
const SDXL_SCHEDULER: &str = include_str!("../../../../tools/configs/sdxl-scheduler.json");

/// The diffusers version whose config layout the generated files copy (the fixtures' exports).
const DIFFUSERS_VERSION: &str = "0.35.2";
const START_OF_TEXT: &str = "<|startoftext|>";
const END_OF_TEXT: &str = "<|endoftext|>";
/// SD 2.x's (and SDXL's second tokenizer's) pad token.
const BANG: &str = "!";
/// Nested messages deeper than this in a graph's protobuf are taken for a damaged file.
const MAX_PROTOBUF_DEPTH: usize = 64;
/// External-data locations longer than this are taken for a damaged file.
const MAX_LOCATION_BYTES: u64 = 4096;

/// A sub-model of the pipeline, as a flat bundle names its graph and optimum its folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    TextEncoder,
    TextEncoder2,
    Unet,
    VaeDecoder,
    VaeEncoder,
}

impl Part {
    /// optimum's sub-folder for the part.
    pub fn folder(self) -> &'static str {
        match self {
            Part::TextEncoder => "text_encoder",
            Part::TextEncoder2 => "text_encoder_2",
            Part::Unet => "unet",
            Part::VaeDecoder => "vae_decoder",
            Part::VaeEncoder => "vae_encoder",
        }
    }

    /// The file names a flat bundle may use for the part, for messages.
    fn file_names(self) -> &'static str {
        match self {
            Part::TextEncoder => "text_encoder.onnx (or TextEncoder.onnx)",
            Part::TextEncoder2 => "text_encoder_2.onnx (or TextEncoder2.onnx)",
            Part::Unet => "unet.onnx (or Unet.onnx)",
            Part::VaeDecoder => "vae_decoder.onnx (or VAEDecoder.onnx)",
            Part::VaeEncoder => "vae_encoder.onnx (or VAEEncoder.onnx)",
        }
    }

    /// The part a flat bundle's file holds: optimum's folder name or Apple's resource name, then
    /// `.onnx`, in any letter case (underscores do not count, so `Text_Encoder_2.onnx`,
    /// `text_encoder_2.onnx` and `TextEncoder2.onnx` are the same part).
    pub fn of_file(name: &str) -> Option<Part> {
        let lower = name.to_ascii_lowercase();
        let stem = lower.strip_suffix(".onnx")?;
        match stem.replace('_', "").as_str() {
            "textencoder" => Some(Part::TextEncoder),
            "textencoder2" => Some(Part::TextEncoder2),
            "unet" => Some(Part::Unet),
            "vaedecoder" => Some(Part::VaeDecoder),
            "vaeencoder" => Some(Part::VaeEncoder),
            _ => None,
        }
    }
}

/// The tokenizer's two files, which a flat bundle keeps beside the graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenizerFile {
    Vocab,
    Merges,
}

impl TokenizerFile {
    fn name(self) -> &'static str {
        match self {
            TokenizerFile::Vocab => "vocab.json",
            TokenizerFile::Merges => "merges.txt",
        }
    }

    fn of_file(name: &str) -> Option<Self> {
        [TokenizerFile::Vocab, TokenizerFile::Merges]
            .into_iter()
            .find(|file| name.eq_ignore_ascii_case(file.name()))
    }
}

/// A model family: what decides the published defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Sd1,
    Sd2,
    Sdxl,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Sd1 => "sd1",
            Family::Sd2 => "sd2",
            Family::Sdxl => "sdxl",
        }
    }

    /// The family's reference model, for the notes on defaults.
    fn reference(self) -> &'static str {
        match self {
            Family::Sd1 => "SD 1.5's",
            Family::Sd2 => "SD 2.1's",
            Family::Sdxl => "SDXL base's",
        }
    }

    /// What the family's text encoders feed the UNet: CLIP ViT-L (768), OpenCLIP ViT-H (1024),
    /// both of SDXL's side by side (768 + 1280).
    fn context_width(self) -> usize {
        match self {
            Family::Sd1 => 768,
            Family::Sd2 => 1024,
            Family::Sdxl => 2048,
        }
    }

    fn default_prediction(self) -> PredictionType {
        match self {
            Family::Sd2 => PredictionType::VPrediction,
            Family::Sd1 | Family::Sdxl => PredictionType::Epsilon,
        }
    }

    /// The UNet's latent side the family was trained at (SD 2's 512-pixel base model predicts
    /// epsilon, its 768-pixel model v).
    fn default_sample_size(self, prediction: PredictionType) -> usize {
        match (self, prediction) {
            (Family::Sd1, _) => 64,
            (Family::Sd2, PredictionType::VPrediction) => 96,
            (Family::Sd2, _) => 64,
            (Family::Sdxl, _) => 128,
        }
    }

    fn scaling_factor(self) -> f64 {
        match self {
            Family::Sd1 | Family::Sd2 => 0.18215,
            Family::Sdxl => 0.13025,
        }
    }

    /// The VAE's `sample_size`: the pixels it was trained at, the tile of a tiled decode.
    fn vae_sample_size(self) -> usize {
        match self {
            Family::Sd1 => 512,
            Family::Sd2 => 768,
            Family::Sdxl => 1024,
        }
    }

    fn scheduler_config(self) -> &'static str {
        match self {
            Family::Sd1 => SD15_SCHEDULER,
            Family::Sd2 => SD21_SCHEDULER,
            Family::Sdxl => SDXL_SCHEDULER,
        }
    }

    /// The (first) tokenizer's pad token.
    fn pad_token(self) -> &'static str {
        match self {
            Family::Sd2 => BANG,
            Family::Sd1 | Family::Sdxl => END_OF_TEXT,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Family {
    type Err = BundleError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "sd1" => Ok(Family::Sd1),
            "sd2" => Ok(Family::Sd2),
            "sdxl" => Ok(Family::Sdxl),
            _ => Err(BundleError::BadFlag {
                flag: "--family",
                value: text.to_string(),
                expected: "sd1, sd2 or sdxl",
            }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(
        "the flat bundle has no {missing}; a flat bundle holds text_encoder.onnx, unet.onnx, vae_decoder.onnx \
         (optionally vae_encoder.onnx, and text_encoder_2.onnx for SDXL), vocab.json and merges.txt side by side \
         (Apple's names TextEncoder.onnx, Unet.onnx, VAEDecoder.onnx, VAEEncoder.onnx work too): add the missing \
         file and import again"
    )]
    Missing { missing: String },
    #[error("the flat bundle has two {what}, `{first}` and `{second}`; keep the right one and import again")]
    Duplicate {
        what: String,
        first: String,
        second: String,
    },
    #[error(
        "`{file}` in the flat bundle is a symbolic link; a flat bundle's graphs and tokenizer files must be the \
         files themselves: rebuild the archive from the files (e.g. `tar -h`), or import the folder instead"
    )]
    Link { file: String },
    #[error("`{file}` in the flat bundle is not a file; remove or rename it and import again")]
    NotAFile { file: String },
    #[error(
        "the flat bundle already has a `{folder}` entry, where its conversion into optimum's layout puts \
         files; remove or rename it and import again"
    )]
    Clash { folder: String },
    #[error("cannot read `{file}` as an ONNX graph: {problem}; the file may be truncated, copy it again")]
    UnreadableGraph { file: String, problem: String },
    #[error(
        "`{file}` keeps its weights in `{location}`, which {problem}; put the weight files the graph names beside it, \
         under those names"
    )]
    ExternalData {
        file: String,
        location: String,
        problem: &'static str,
    },
    #[error("the {part} graph (`{file}`) cannot be used: {source}")]
    Onnx {
        part: &'static str,
        file: String,
        #[source]
        source: Box<OnnxError>,
    },
    #[error(
        "the UNet's `encoder_hidden_states` is {width}, which is none of SD 1.x's 768, SD 2.x's 1024 or SDXL's 2048 \
         (with `text_embeds` and `time_ids`); pass --family sd1|sd2|sdxl to say which family the model is"
    )]
    UnknownFamily { width: String },
    #[error(
        "the UNet is an SDXL refiner's (1280-wide `encoder_hidden_states` with `text_embeds` and `time_ids`); \
         easel cannot run refiners yet: import an SDXL base model"
    )]
    Refiner,
    #[error(
        "the model is SDXL ({why}) but the flat bundle has no text_encoder_2.onnx (or TextEncoder2.onnx); add \
         the second text encoder's graph beside the others and import again"
    )]
    NoTextEncoder2 { why: String },
    #[error(
        "the flat bundle has a second text encoder (`{file}`) but the model is {family}, which has one; remove \
         it, or pass --family sdxl if the model is SDXL"
    )]
    UnusedTextEncoder2 { file: String, family: Family },
    #[error(
        "the UNet's `sample` input takes {found} channels; easel knows {latent} (text-to-image) and {inpaint} \
         (inpainting) for a VAE with {latent} latent channels: the graphs do not belong together"
    )]
    InChannels {
        found: usize,
        latent: usize,
        inpaint: usize,
    },
    #[error(
        "the VAE decoder drew a {picture_height}×{picture_width} picture from a {latent_height}×{latent_width} \
         latent; easel needs the same power-of-two upscaling along both sides: is `{file}` a VAE decoder?"
    )]
    VaeFactor {
        file: String,
        latent_height: usize,
        latent_width: usize,
        picture_height: usize,
        picture_width: usize,
    },
    #[error("vocab.json {problem}; copy the model's CLIP vocabulary (vocab.json) again")]
    Vocabulary { problem: String },
    #[error("`{flag} {value}` is not allowed: use {expected}")]
    BadFlag {
        flag: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error(
        "{flags} only {verb} to flat bundles (.onnx graphs side by side, without configs); this model is in \
         optimum's layout, whose configs already say it: import it without {flags} (to change its sampler or \
         prediction type, edit scheduler/scheduler_config.json in the model folder)",
        verb = if flags.contains(" and ") { "apply" } else { "applies" }
    )]
    FlagsOnOptimum { flags: String },
    #[error("cannot {action} {path}: {source}; check the free space and permissions of the model store")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl BundleError {
    /// Whether the error says the model's graphs are broken or unusable (rather than the bundle
    /// being malformed or the request wrong).
    pub fn is_broken_model(&self) -> bool {
        matches!(self, BundleError::Onnx { .. })
    }
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BundleError {
    let path = path.to_path_buf();
    move |source| BundleError::Io { action, path, source }
}

/// What an import request says about a flat bundle, as given (checked by [`Overrides::parse`]).
/// Blank values count as not given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BundleFlags {
    /// `sd1`, `sd2` or `sdxl`.
    pub family: Option<String>,
    /// `epsilon`, `v_prediction` or `sample`.
    pub prediction_type: Option<String>,
    /// A sampler name (`euler`, `ddim`, … or its A1111 name).
    pub sampler: Option<String>,
    pub vae_scaling_factor: Option<f64>,
}

/// The settings a user gave for a flat bundle, checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub family: Option<Family>,
    pub prediction: Option<PredictionType>,
    pub sampler: Option<SamplerKind>,
    pub vae_scaling_factor: Option<f64>,
}

impl Overrides {
    pub fn parse(flags: &BundleFlags) -> Result<Self, BundleError> {
        fn given(value: &Option<String>) -> Option<&str> {
            value.as_deref().map(str::trim).filter(|v| !v.is_empty())
        }
        let family = given(&flags.family).map(Family::from_str).transpose()?;
        let prediction = given(&flags.prediction_type)
            .map(|value| match value.to_ascii_lowercase().as_str() {
                "epsilon" => Ok(PredictionType::Epsilon),
                "v_prediction" => Ok(PredictionType::VPrediction),
                "sample" => Ok(PredictionType::Sample),
                _ => Err(BundleError::BadFlag {
                    flag: "--prediction",
                    value: value.to_string(),
                    expected: "epsilon or v_prediction (or sample)",
                }),
            })
            .transpose()?;
        let sampler = given(&flags.sampler)
            .map(|value| {
                SamplerKind::from_str(value).map_err(|_| BundleError::BadFlag {
                    flag: "--sampler",
                    value: value.to_string(),
                    expected: "one of euler, euler_a, ddim, pndm, dpmpp_2m, dpmpp_2m_karras, lcm, heun",
                })
            })
            .transpose()?;
        let vae_scaling_factor = match flags.vae_scaling_factor {
            Some(factor) if !(factor.is_finite() && factor > 0.0) => {
                return Err(BundleError::BadFlag {
                    flag: "--vae-scaling-factor",
                    value: factor.to_string(),
                    expected: "a positive number (SD 1.x/2.x: 0.18215, SDXL: 0.13025)",
                });
            }
            other => other,
        };
        Ok(Self {
            family,
            prediction,
            sampler,
            vae_scaling_factor,
        })
    }

    /// Refuses the flags for a model in optimum's layout: its configs already say what they
    /// would.
    pub fn check_layout(&self, layout: Layout) -> Result<(), BundleError> {
        let flags = self.flags();
        if layout == Layout::Flat || flags.is_empty() {
            return Ok(());
        }
        let flags = match flags.as_slice() {
            [one] => one.to_string(),
            [init @ .., last] => format!("{} and {last}", init.join(", ")),
            [] => unreachable!("checked not empty"),
        };
        Err(BundleError::FlagsOnOptimum { flags })
    }

    /// The flags given, as the CLI spells them.
    fn flags(&self) -> Vec<&'static str> {
        [
            self.family.map(|_| "--family"),
            self.prediction.map(|_| "--prediction"),
            self.sampler.map(|_| "--sampler"),
            self.vae_scaling_factor.map(|_| "--vae-scaling-factor"),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// The two forms of model an import accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// optimum's: `model_index.json`, configs and one folder per part.
    Optimum,
    /// One folder of graphs with the tokenizer's files, no configs.
    Flat,
}

/// What an import does with each layout: the store finds the layout, this decides.
pub trait Layouts {
    /// Refuses a source in `layout` (asked before a folder is copied, and after an archive is
    /// extracted).
    fn check(&self, layout: Layout) -> Result<(), BundleError>;
    /// Converts the flat bundle staged at `root` into optimum's layout, in place.
    fn convert(&self, root: &Path) -> Result<(), BundleError>;
}

/// Flat bundles converted with ONNX Runtime, under the user's overrides.
pub struct Converter<'a> {
    runtime: &'a OrtRuntime,
    overrides: Overrides,
}

impl<'a> Converter<'a> {
    pub fn new(runtime: &'a OrtRuntime, overrides: Overrides) -> Self {
        Self { runtime, overrides }
    }
}

impl Layouts for Converter<'_> {
    fn check(&self, layout: Layout) -> Result<(), BundleError> {
        self.overrides.check_layout(layout)
    }

    fn convert(&self, root: &Path) -> Result<(), BundleError> {
        convert(self.runtime, root, &self.overrides)
    }
}

/// A flat bundle's files, by what they hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Each part's graph file name.
    pub graphs: BTreeMap<Part, String>,
    pub vocab: String,
    pub merges: String,
}

/// Whether `dir` holds a flat bundle at its top level: a file (or link) named after a part's
/// graph. What else it needs is checked by [`scan`], so a bundle missing a part is named.
fn holds_bundle(dir: &Path) -> io::Result<bool> {
    for item in fs::read_dir(dir)? {
        let item = item?;
        let name = item.file_name();
        if Part::of_file(&name.to_string_lossy()).is_some() && !item.path().is_dir() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Where the flat bundle is in `dir`: `dir` itself, else its single visible top-level folder
/// (as [`super::find_model_root`] looks for optimum's layout).
pub fn find_bundle_root(dir: &Path) -> io::Result<Option<PathBuf>> {
    if holds_bundle(dir)? {
        return Ok(Some(dir.to_path_buf()));
    }
    match super::single_visible_folder(dir)? {
        Some(folder) if holds_bundle(&folder)? => Ok(Some(folder)),
        _ => Ok(None),
    }
}

/// Names the files of the flat bundle at `root` (top level only) and checks the required ones
/// are there, once each, as plain files.
pub fn scan(root: &Path) -> Result<Scan, BundleError> {
    let mut items: Vec<_> = fs::read_dir(root)
        .and_then(|items| items.collect::<io::Result<Vec<_>>>())
        .map_err(io_error("read", root))?;
    items.sort_by_key(|item| item.file_name());
    let mut graphs: BTreeMap<Part, String> = BTreeMap::new();
    let mut tokenizer: BTreeMap<&'static str, String> = BTreeMap::new();
    for item in items {
        let name = item.file_name().to_string_lossy().into_owned();
        let part = Part::of_file(&name);
        let tokenizer_file = TokenizerFile::of_file(&name);
        if part.is_none() && tokenizer_file.is_none() {
            continue;
        }
        let file_type = item.file_type().map_err(io_error("read", &item.path()))?;
        if file_type.is_symlink() {
            return Err(BundleError::Link { file: name });
        }
        if !file_type.is_file() {
            return Err(BundleError::NotAFile { file: name });
        }
        let (what, earlier) = match (part, tokenizer_file) {
            (Some(part), _) => (format!("{} graphs", part.folder()), graphs.insert(part, name.clone())),
            (None, Some(file)) => (
                format!("{} files", file.name()),
                tokenizer.insert(file.name(), name.clone()),
            ),
            (None, None) => unreachable!("skipped above"),
        };
        if let Some(first) = earlier {
            return Err(BundleError::Duplicate {
                what,
                first,
                second: name,
            });
        }
    }
    let mut missing: Vec<&str> = [Part::TextEncoder, Part::Unet, Part::VaeDecoder]
        .into_iter()
        .filter(|part| !graphs.contains_key(part))
        .map(Part::file_names)
        .collect();
    for file in [TokenizerFile::Vocab, TokenizerFile::Merges] {
        if !tokenizer.contains_key(file.name()) {
            missing.push(file.name());
        }
    }
    if !missing.is_empty() {
        return Err(BundleError::Missing {
            missing: missing.join(", "),
        });
    }
    Ok(Scan {
        graphs,
        vocab: tokenizer.remove("vocab.json").expect("checked above"),
        merges: tokenizer.remove("merges.txt").expect("checked above"),
    })
}

/// The protobuf messages of an ONNX file that can lead to a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Message {
    Model,
    Function,
    Graph,
    Node,
    Attribute,
    SparseTensor,
    Tensor,
}

impl Message {
    /// The message a length-delimited field of `self` holds, when it can lead to a tensor
    /// (field numbers from onnx.proto).
    fn child(self, field: u64) -> Option<Message> {
        use Message::*;
        Some(match (self, field) {
            (Model, 7) => Graph,
            (Model, 25) => Function,
            (Function, 7) | (Graph, 1) => Node,
            (Graph, 5) | (Attribute, 5) | (Attribute, 10) | (SparseTensor, 1) | (SparseTensor, 2) => Tensor,
            (Graph, 15) | (Attribute, 22) | (Attribute, 23) => SparseTensor,
            (Node, 5) => Attribute,
            (Attribute, 6) | (Attribute, 11) => Graph,
            _ => return None,
        })
    }
}

/// A protobuf reader that tracks its position and skips what it does not need by seeking, so
/// a graph with gigabytes of embedded weights is walked without reading them.
struct Wire<R> {
    reader: R,
    position: u64,
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl<R: Read + Seek> Wire<R> {
    fn varint(&mut self) -> io::Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let mut byte = [0u8];
            self.reader.read_exact(&mut byte)?;
            self.position += 1;
            value |= u64::from(byte[0] & 0x7f) << shift;
            if byte[0] & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed("a varint longer than 10 bytes"))
    }

    fn skip(&mut self, bytes: u64) -> io::Result<()> {
        let offset = i64::try_from(bytes).map_err(|_| malformed("a field larger than the file"))?;
        self.reader.seek_relative(offset)?;
        self.position += bytes;
        Ok(())
    }

    /// A length-delimited field's length, checked to end within its message (ending at `end`).
    fn length(&mut self, end: u64) -> io::Result<u64> {
        let length = self.varint()?;
        if self
            .position
            .checked_add(length)
            .is_none_or(|field_end| field_end > end)
        {
            return Err(malformed("a field running past the end of its message"));
        }
        Ok(length)
    }

    fn skip_value(&mut self, wire_type: u64, end: u64) -> io::Result<()> {
        match wire_type {
            0 => self.varint().map(drop),
            1 => self.skip(8),
            2 => {
                let length = self.length(end)?;
                self.skip(length)
            }
            5 => self.skip(4),
            _ => Err(malformed("an unknown protobuf wire type")),
        }
    }

    /// A `StringStringEntryProto` ending at `end`: its `value` when its `key` is `location`.
    fn location_entry(&mut self, end: u64) -> io::Result<Option<String>> {
        let (mut key, mut value) = (None, None);
        while self.position < end {
            let tag = self.varint()?;
            if self.position > end {
                return Err(malformed("a field running past the end of its message"));
            }
            match (tag >> 3, tag & 7) {
                (field @ (1 | 2), 2) => {
                    let length = self.length(end)?;
                    if length > MAX_LOCATION_BYTES {
                        return Err(malformed("an external-data entry longer than 4 KiB"));
                    }
                    let mut bytes = vec![0u8; length as usize];
                    self.reader.read_exact(&mut bytes)?;
                    self.position += length;
                    let text =
                        String::from_utf8(bytes).map_err(|_| malformed("an external-data entry not in UTF-8"))?;
                    if field == 1 {
                        key = Some(text);
                    } else {
                        value = Some(text);
                    }
                }
                (_, wire_type) => self.skip_value(wire_type, end)?,
            }
        }
        if self.position != end {
            return Err(malformed("a field running past the end of its message"));
        }
        Ok(value.filter(|_| key.as_deref() == Some("location")))
    }
}

/// The external-data files (`location`s, relative to the graph's folder) the ONNX graph at
/// `path` keeps tensors in, sorted, each once. Read from the protobuf without loading it.
pub fn external_data_files(path: &Path) -> io::Result<BTreeSet<String>> {
    let file = fs::File::open(path)?;
    let length = file.metadata()?.len();
    let mut wire = Wire {
        reader: BufReader::with_capacity(64 * 1024, file),
        position: 0,
    };
    let mut locations = BTreeSet::new();
    let mut open: Vec<(Message, u64)> = vec![(Message::Model, length)];
    while let Some(&(message, end)) = open.last() {
        if wire.position > end {
            return Err(malformed("a field running past the end of its message"));
        }
        if wire.position == end {
            open.pop();
            continue;
        }
        let tag = wire.varint()?;
        let (field, wire_type) = (tag >> 3, tag & 7);
        if wire_type != 2 {
            wire.skip_value(wire_type, end)?;
            continue;
        }
        let field_length = wire.length(end)?;
        let field_end = wire.position + field_length;
        if message == Message::Tensor && field == 13 {
            locations.extend(wire.location_entry(field_end)?);
        } else if let Some(child) = message.child(field) {
            if open.len() >= MAX_PROTOBUF_DEPTH {
                return Err(malformed("messages nested too deep"));
            }
            open.push((child, field_end));
        } else {
            wire.skip(field_length)?;
        }
    }
    Ok(locations)
}

/// Whether an external-data location is a plain relative path (no `..`, not absolute), as it
/// must be to move with its graph.
fn is_plain_relative(location: &str) -> bool {
    !location.is_empty()
        && !location.contains('\\')
        && Path::new(location)
            .components()
            .all(|component| matches!(component, Component::Normal(_)))
}

/// Moves `from` to `to`, creating `to`'s folder.
fn move_file(from: &Path, to: &Path) -> Result<(), BundleError> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).map_err(io_error("create", parent))?;
    }
    fs::rename(from, to).map_err(io_error("move", from))
}

/// Copies `from` to `to` (a hard link where the file system allows: both are in the store).
fn copy_file(from: &Path, to: &Path) -> Result<(), BundleError> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).map_err(io_error("create", parent))?;
    }
    if fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    fs::copy(from, to).map(drop).map_err(io_error("copy", from))
}

/// Moves each graph into `<part>/model.onnx` with the external-data files it names (kept under
/// their names, relative to the new folder, as ONNX Runtime looks for them). A data file two
/// graphs share is copied for the first. Returns each part's data files.
fn move_graphs(root: &Path, scan: &Scan) -> Result<BTreeMap<Part, BTreeSet<String>>, BundleError> {
    let taken: BTreeSet<String> = scan
        .graphs
        .values()
        .chain([&scan.vocab, &scan.merges])
        .map(|name| name.to_ascii_lowercase())
        .collect();
    // The conversion writes these; a bundle that has one is mixed up with something else.
    let written =
        scan.graphs
            .keys()
            .map(|part| part.folder())
            .chain(["tokenizer", "tokenizer_2", "scheduler", REPORT_FILE]);
    for folder in written {
        if fs::symlink_metadata(root.join(folder)).is_ok() {
            return Err(BundleError::Clash {
                folder: folder.to_string(),
            });
        }
    }
    let mut data: BTreeMap<Part, BTreeSet<String>> = BTreeMap::new();
    let mut users: BTreeMap<String, Vec<Part>> = BTreeMap::new();
    for (&part, file) in &scan.graphs {
        let locations = external_data_files(&root.join(file)).map_err(|e| BundleError::UnreadableGraph {
            file: file.clone(),
            problem: e.to_string(),
        })?;
        for location in &locations {
            let problem = if !is_plain_relative(location) {
                Some("is not a plain relative path")
            } else if taken.contains(&location.to_ascii_lowercase()) || location.eq_ignore_ascii_case("model.onnx") {
                Some("is the name of a graph or a tokenizer file")
            } else if !fs::symlink_metadata(root.join(location)).is_ok_and(|m| m.is_file()) {
                Some("is not a file beside it")
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(BundleError::ExternalData {
                    file: file.clone(),
                    location: location.clone(),
                    problem,
                });
            }
            users.entry(location.clone()).or_default().push(part);
        }
        data.insert(part, locations);
    }
    for (&part, file) in &scan.graphs {
        move_file(&root.join(file), &root.join(part.folder()).join("model.onnx"))?;
    }
    for (location, parts) in users {
        let from = root.join(&location);
        let (last, others) = parts.split_last().expect("a location has a user");
        for part in others {
            copy_file(&from, &root.join(part.folder()).join(&location))?;
        }
        move_file(&from, &root.join(last.folder()).join(&location))?;
    }
    Ok(data)
}

/// What the VAE decoder did with a zero latent: the sizes that give its upscaling factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VaeProbe {
    /// Latent (height, width) fed.
    pub latent: (usize, usize),
    /// Picture (height, width) drawn.
    pub picture: (usize, usize),
}

/// What the graphs say, read from their sessions: what [`infer`] works from. `None`: the graph
/// leaves it open (a dynamic axis).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GraphFacts {
    /// The UNet's `encoder_hidden_states` width.
    pub context_width: Option<usize>,
    /// Whether the UNet takes SDXL's `text_embeds` and `time_ids`.
    pub xl_conditioning: bool,
    /// The UNet's `timestep_cond` width (an LCM-distilled UNet).
    pub guidance_embedding_dim: Option<usize>,
    /// The UNet's `sample` channels.
    pub unet_in_channels: Option<usize>,
    /// The UNet's `sample` side, when static and square.
    pub unet_sample_size: Option<usize>,
    /// The VAE decoder's latent channels.
    pub latent_channels: Option<usize>,
    pub vae_probe: VaeProbe,
    /// The text encoders' widths (`last_hidden_state`'s last axis).
    pub text_width: Option<usize>,
    pub text_2_width: Option<usize>,
    /// The second text encoder's graph file, when the bundle has one.
    pub text_encoder_2: Option<String>,
    pub vae_decoder_file: String,
    /// The UNet's element type (`float32`/`float16`), for the configs' `dtype`.
    pub dtype: String,
}

/// An axis of an input or output, when the graph fixes it.
fn static_axis(spec: &IoSpec, axis: usize) -> Option<usize> {
    spec.shape.get(axis).copied().filter(|&d| d > 0).map(|d| d as usize)
}

/// A text encoder's width: the last axis of `last_hidden_state` (or its first 3-d output).
fn text_width(model: &OnnxModel) -> Option<usize> {
    let outputs = &model.outputs;
    outputs
        .iter()
        .find(|o| o.name == "last_hidden_state")
        .or_else(|| outputs.iter().find(|o| o.rank() == 3))
        .and_then(|o| static_axis(o, 2))
}

/// Opens the moved graphs of `scan` under `root` and reads [`GraphFacts`].
fn read_graphs(runtime: &OrtRuntime, root: &Path, scan: &Scan) -> Result<GraphFacts, BundleError> {
    let open = |part: Part| -> Result<(OnnxModel, String), BundleError> {
        let file = scan.graphs[&part].clone();
        let path = root.join(part.folder()).join("model.onnx");
        OnnxModel::inspect(runtime, part.folder(), &path)
            .map(|model| (model, file.clone()))
            .map_err(|source| BundleError::Onnx {
                part: part.folder(),
                file,
                source: Box::new(source),
            })
    };
    let failed = |part: Part| {
        let file = scan.graphs[&part].clone();
        move |source: OnnxError| BundleError::Onnx {
            part: part.folder(),
            file,
            source: Box::new(source),
        }
    };
    let mut facts = GraphFacts::default();
    {
        let (unet, _) = open(Part::Unet)?;
        let inputs = UnetInputs::find(&unet).map_err(failed(Part::Unet))?;
        facts.context_width = static_axis(&inputs.encoder_hidden_states, 2);
        facts.xl_conditioning = inputs.xl.is_some();
        facts.guidance_embedding_dim = inputs.guidance_embedding_dim();
        facts.unet_in_channels = static_axis(&inputs.sample, 1);
        facts.unet_sample_size = match (static_axis(&inputs.sample, 2), static_axis(&inputs.sample, 3)) {
            (Some(h), Some(w)) if h == w => Some(h),
            _ => None,
        };
        facts.dtype = inputs.sample.dtype.to_string();
    }
    facts.text_width = text_width(&open(Part::TextEncoder)?.0);
    if scan.graphs.contains_key(&Part::TextEncoder2) {
        let (model, file) = open(Part::TextEncoder2)?;
        facts.text_2_width = text_width(&model);
        facts.text_encoder_2 = Some(file);
    }
    let (mut vae, file) = open(Part::VaeDecoder)?;
    facts.vae_decoder_file = file;
    let latent = loaded::find_vae_latent(&vae).map_err(failed(Part::VaeDecoder))?;
    let channels = static_axis(&latent, 1);
    facts.latent_channels = channels;
    // A graph exported for one latent size (Apple-style) is run at that size; else 2×2, cheap
    // for any decoder.
    let (height, width) = (
        static_axis(&latent, 2).unwrap_or(2),
        static_axis(&latent, 3).unwrap_or(2),
    );
    let shape = vec![1, channels.unwrap_or(4), height, width];
    let zeros = vec![0.0f32; shape.iter().product()];
    let outputs = vae
        .run_releasing(vec![(&latent, Input::Float(HostTensor::new(shape, zeros)))])
        .map_err(failed(Part::VaeDecoder))?;
    let picture = outputs
        .iter()
        .find(|o| o.shape.len() == 4)
        .map(|o| (o.shape[2], o.shape[3]))
        .unwrap_or_default();
    facts.vae_probe = VaeProbe {
        latent: (height, width),
        picture,
    };
    Ok(facts)
}

/// How a setting was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum How {
    /// Read from the graphs.
    Inferred,
    /// Given by the user.
    Override,
    /// The family's published value.
    Default,
}

impl How {
    fn as_str(self) -> &'static str {
        match self {
            How::Inferred => "inferred",
            How::Override => "override",
            How::Default => "default",
        }
    }
}

/// One decided setting, with why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Note {
    pub setting: String,
    pub value: Value,
    pub how: How,
    pub why: String,
}

/// Everything the generated configs say, each setting with its [`Note`].
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub family: Family,
    pub prediction: PredictionType,
    pub sampler: SamplerKind,
    pub latent_channels: usize,
    pub unet_in_channels: usize,
    pub sample_size: usize,
    pub vae_factor: usize,
    pub scaling_factor: f64,
    pub vae_sample_size: usize,
    pub context_width: usize,
    pub text_width: usize,
    pub text_2_width: usize,
    pub guidance_embedding_dim: Option<usize>,
    pub dtype: String,
    pub notes: Vec<Note>,
}

impl Plan {
    fn note(&mut self, setting: &str, value: impl Into<Value>, how: How, why: impl Into<String>) {
        self.notes.push(Note {
            setting: setting.to_string(),
            value: value.into(),
            how,
            why: why.into(),
        });
    }
}

/// The family, from the user or from the UNet's text width and SDXL inputs.
fn decide_family(facts: &GraphFacts, overrides: &Overrides) -> Result<(Family, How, String), BundleError> {
    // A UNet that leaves its text width open: what the text encoders produce.
    let (width, whose) = match facts.context_width {
        Some(width) => (Some(width), "the UNet's `encoder_hidden_states`"),
        None if facts.xl_conditioning => (
            facts.text_width.zip(facts.text_2_width).map(|(a, b)| a + b),
            "the two text encoders' outputs together",
        ),
        None => (
            facts.text_width,
            "the text encoder's output (the UNet leaves its width open)",
        ),
    };
    let detected = match (width, facts.xl_conditioning) {
        (Some(768), false) => Some(Family::Sd1),
        (Some(1024), false) => Some(Family::Sd2),
        (Some(2048), true) => Some(Family::Sdxl),
        (Some(1280), true) => return Err(BundleError::Refiner),
        _ => None,
    };
    let described = match width {
        Some(width) => format!("{whose} is {width} wide"),
        None => "the UNet's `encoder_hidden_states` width is not declared".to_string(),
    };
    let xl = if facts.xl_conditioning {
        " and the UNet takes `text_embeds` and `time_ids`"
    } else {
        ""
    };
    match (overrides.family, detected) {
        (Some(family), Some(found)) if found != family => Ok((
            family,
            How::Override,
            format!("--family (the graphs look like {found}: {described}{xl})"),
        )),
        (Some(family), Some(_)) => Ok((family, How::Override, format!("--family ({described}{xl})"))),
        (Some(family), None) => Ok((
            family,
            How::Override,
            format!("--family ({described}{xl}, which names no family)"),
        )),
        (None, Some(found)) => Ok((found, How::Inferred, format!("{described}{xl}"))),
        (None, None) => Err(BundleError::UnknownFamily {
            width: match width {
                Some(width) => format!("{width} wide{xl}"),
                None => "of undeclared width".to_string(),
            },
        }),
    }
}

/// Decides every setting of the generated configs from what the graphs say and the user gave,
/// falling back on the family's published defaults.
pub fn infer(facts: &GraphFacts, overrides: &Overrides) -> Result<Plan, BundleError> {
    let (family, family_how, family_why) = decide_family(facts, overrides)?;
    match (&facts.text_encoder_2, family) {
        (None, Family::Sdxl) => {
            return Err(BundleError::NoTextEncoder2 {
                why: family_why.clone(),
            });
        }
        (Some(file), Family::Sd1 | Family::Sd2) => {
            return Err(BundleError::UnusedTextEncoder2 {
                file: file.clone(),
                family,
            });
        }
        _ => {}
    }

    let probe = facts.vae_probe;
    let factor =
        |latent: usize, picture: usize| (latent > 0 && picture.is_multiple_of(latent)).then(|| picture / latent);
    let vae_factor = match (
        factor(probe.latent.0, probe.picture.0),
        factor(probe.latent.1, probe.picture.1),
    ) {
        (Some(h), Some(w)) if h == w && h.is_power_of_two() => h,
        _ => {
            return Err(BundleError::VaeFactor {
                file: facts.vae_decoder_file.clone(),
                latent_height: probe.latent.0,
                latent_width: probe.latent.1,
                picture_height: probe.picture.0,
                picture_width: probe.picture.1,
            });
        }
    };

    let latent_channels = facts.latent_channels.unwrap_or(4);
    let unet_in_channels = facts.unet_in_channels.unwrap_or(latent_channels);
    if unet_in_channels != latent_channels && unet_in_channels != 2 * latent_channels + 1 {
        return Err(BundleError::InChannels {
            found: unet_in_channels,
            latent: latent_channels,
            inpaint: 2 * latent_channels + 1,
        });
    }
    let (prediction, prediction_how, prediction_why) = match overrides.prediction {
        Some(prediction) => (prediction, How::Override, "--prediction".to_string()),
        None => (
            family.default_prediction(),
            How::Default,
            match family {
                // The graphs of SD 2's 768-pixel v model and 512-pixel epsilon base look alike.
                Family::Sd2 => "SD 2.1's (the 768-pixel model; SD 2's 512-pixel base predicts epsilon: pass \
                                --prediction epsilon for it)"
                    .to_string(),
                family => family.reference().to_string(),
            },
        ),
    };
    let scheduler_class = scheduler_template(family)
        .get("_class_name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let (sampler, sampler_how, sampler_why) = match overrides.sampler {
        Some(sampler) => (
            sampler,
            How::Override,
            format!("--sampler ({})", sampler.diffusers_class()),
        ),
        None => {
            let config = crate::model::SchedulerConfig::from_json_str(family.scheduler_config()).unwrap_or_default();
            (
                crate::generation::sampler::default_for(&config),
                How::Default,
                format!("{} scheduler ({scheduler_class})", family.reference()),
            )
        }
    };
    let (sample_size, sample_how, sample_why) = match facts.unet_sample_size {
        Some(size) => (
            size,
            How::Inferred,
            "the UNet's `sample` input is fixed at that size".to_string(),
        ),
        None => (
            family.default_sample_size(prediction),
            How::Default,
            format!(
                "{} (the UNet's `sample` input takes any size)",
                match (family, prediction) {
                    (Family::Sd2, PredictionType::VPrediction) => "SD 2.x 768-v's",
                    (Family::Sd2, _) => "SD 2.x base's",
                    (family, _) => family.reference(),
                }
            ),
        ),
    };
    let (scaling_factor, scaling_how, scaling_why) = match overrides.vae_scaling_factor {
        Some(factor) => (factor, How::Override, "--vae-scaling-factor".to_string()),
        None => (family.scaling_factor(), How::Default, family.reference().to_string()),
    };
    let context_width = facts.context_width.unwrap_or(family.context_width());
    let text_width = facts.text_width.unwrap_or(match family {
        Family::Sd2 => 1024,
        Family::Sd1 | Family::Sdxl => 768,
    });
    let text_2_width = facts.text_2_width.unwrap_or(1280);

    let mut plan = Plan {
        family,
        prediction,
        sampler,
        latent_channels,
        unet_in_channels,
        sample_size,
        vae_factor,
        scaling_factor,
        vae_sample_size: family.vae_sample_size(),
        context_width,
        text_width,
        text_2_width,
        guidance_embedding_dim: facts.guidance_embedding_dim,
        dtype: if facts.dtype.is_empty() {
            "float32".to_string()
        } else {
            facts.dtype.clone()
        },
        notes: Vec::new(),
    };
    plan.note("family", family.as_str(), family_how, family_why);
    plan.note(
        "vae_factor",
        vae_factor,
        How::Inferred,
        format!(
            "the VAE decoder drew {}×{} pixels from a {}×{} latent",
            probe.picture.0, probe.picture.1, probe.latent.0, probe.latent.1
        ),
    );
    match facts.latent_channels {
        Some(channels) => plan.note(
            "latent_channels",
            channels,
            How::Inferred,
            "the VAE decoder's latent input",
        ),
        None => plan.note(
            "latent_channels",
            latent_channels,
            How::Default,
            "Stable Diffusion's (the VAE decoder's latent input leaves it open)",
        ),
    }
    let in_channels_why = match (facts.unet_in_channels, unet_in_channels == latent_channels) {
        (None, _) => "the UNet's `sample` input leaves it open: the latent channels",
        (Some(_), true) => "the UNet's `sample` input: a text-to-image UNet",
        (Some(_), false) => "the UNet's `sample` input: an inpainting UNet (latents, mask, masked picture)",
    };
    let in_channels_how = if facts.unet_in_channels.is_some() {
        How::Inferred
    } else {
        How::Default
    };
    plan.note("unet_in_channels", unet_in_channels, in_channels_how, in_channels_why);
    plan.note("sample_size", sample_size, sample_how, sample_why);
    plan.note("prediction_type", prediction.as_str(), prediction_how, prediction_why);
    plan.note("sampler", sampler.name(), sampler_how, sampler_why);
    plan.note("vae_scaling_factor", scaling_factor, scaling_how, scaling_why);
    if let Some(dim) = facts.guidance_embedding_dim {
        plan.note(
            "time_cond_proj_dim",
            dim,
            How::Inferred,
            "the UNet takes `timestep_cond` (an LCM-distilled UNet)",
        );
    }
    let reference = family.reference();
    plan.note(
        "scheduler_config",
        scheduler_class,
        How::Default,
        format!(
            "{reference} scheduler_config.json{}",
            match (overrides.prediction, overrides.sampler) {
                (None, None) => String::new(),
                (Some(_), None) => ", with --prediction's prediction_type".to_string(),
                (None, Some(_)) => ", with --sampler's class".to_string(),
                (Some(_), Some(_)) => ", with --prediction's prediction_type and --sampler's class".to_string(),
            }
        ),
    );
    plan.note(
        "vae_sample_size",
        family.vae_sample_size(),
        How::Default,
        format!("{reference} (the tile size of a tiled VAE decode)"),
    );
    let pads = match family {
        Family::Sdxl => format!("`{END_OF_TEXT}` (tokenizer/), `{BANG}` (tokenizer_2/)"),
        family => format!("`{}`", family.pad_token()),
    };
    plan.note("pad_token", pads, How::Default, reference);
    plan.note(
        "unet_blocks",
        format!("{reference} layout"),
        How::Default,
        format!(
            "the graphs do not say it; it sets the size multiple ({} px) and the working-memory estimate",
            vae_factor << (family_unet_levels(family) - 1)
        ),
    );
    Ok(plan)
}

/// The number of resolution levels of the family's UNet (each but the last halves the latent).
fn family_unet_levels(family: Family) -> usize {
    match family {
        Family::Sd1 | Family::Sd2 => 4,
        Family::Sdxl => 3,
    }
}

/// The family's published scheduler config as a JSON object.
fn scheduler_template(family: Family) -> serde_json::Map<String, Value> {
    match serde_json::from_str(family.scheduler_config()) {
        Ok(Value::Object(map)) => map,
        _ => unreachable!("the scheduler configs in tools/configs are JSON objects (checked by a unit test)"),
    }
}

/// `scheduler/scheduler_config.json`: the family's, with the plan's prediction type and sampler.
pub fn scheduler_config(plan: &Plan) -> Value {
    let mut config = scheduler_template(plan.family);
    let written = config
        .get("prediction_type")
        .and_then(Value::as_str)
        .unwrap_or("epsilon");
    // Left as published when it says the same, so a default import ships the file as is.
    if written != plan.prediction.as_str() {
        config.insert("prediction_type".into(), plan.prediction.as_str().into());
    }
    let class = plan.sampler.diffusers_class();
    let published = crate::generation::sampler::default_for(
        &crate::model::SchedulerConfig::from_json_str(plan.family.scheduler_config()).unwrap_or_default(),
    );
    if plan.sampler != published {
        config.insert("_class_name".into(), class.into());
        if class == "DPMSolverMultistepScheduler" {
            config.insert(
                "use_karras_sigmas".into(),
                (plan.sampler == SamplerKind::DpmPp2mKarras).into(),
            );
        }
    }
    Value::Object(config)
}

/// `unet/config.json`: the family's published UNet2DConditionModel config with what the graphs
/// say (channels, sample size, text width, LCM's embedding).
pub fn unet_config(plan: &Plan) -> Value {
    let (heads, blocks, down, up, linear, extra) = match plan.family {
        // SD 1.x and 2.x share the block layout; 2.x has per-level heads and linear projections.
        Family::Sd1 | Family::Sd2 => (
            if plan.family == Family::Sd1 {
                json!(8)
            } else {
                json!([5, 10, 20, 20])
            },
            json!([320, 640, 1280, 1280]),
            json!([
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D"
            ]),
            json!([
                "UpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D"
            ]),
            plan.family == Family::Sd2,
            json!({}),
        ),
        Family::Sdxl => (
            json!([5, 10, 20]),
            json!([320, 640, 1280]),
            json!(["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]),
            json!(["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]),
            true,
            json!({
                "addition_embed_type": "text_time",
                "addition_time_embed_dim": 256,
                "projection_class_embeddings_input_dim": plan.text_2_width + 6 * 256,
                "transformer_layers_per_block": [1, 2, 10],
            }),
        ),
    };
    let mut config = json!({
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "addition_embed_type": null,
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": null,
        "attention_head_dim": heads,
        "attention_type": "default",
        "block_out_channels": blocks,
        "center_input_sample": false,
        "class_embed_type": null,
        "class_embeddings_concat": false,
        "conv_in_kernel": 3,
        "conv_out_kernel": 3,
        "cross_attention_dim": plan.context_width,
        "cross_attention_norm": null,
        "down_block_types": down,
        "downsample_padding": 1,
        "dropout": 0.0,
        "dual_cross_attention": false,
        "encoder_hid_dim": null,
        "encoder_hid_dim_type": null,
        "flip_sin_to_cos": true,
    });
    // Two halves: one `json!` of every key is past the macro's recursion limit.
    let rest = json!({
        "freq_shift": 0,
        "in_channels": plan.unet_in_channels,
        "layers_per_block": 2,
        "mid_block_only_cross_attention": null,
        "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "num_attention_heads": null,
        "num_class_embeds": null,
        "only_cross_attention": false,
        "out_channels": plan.latent_channels,
        "projection_class_embeddings_input_dim": null,
        "resnet_out_scale_factor": 1.0,
        "resnet_skip_time_act": false,
        "resnet_time_scale_shift": "default",
        "reverse_transformer_layers_per_block": null,
        "sample_size": plan.sample_size,
        "time_cond_proj_dim": plan.guidance_embedding_dim,
        "time_embedding_act_fn": null,
        "time_embedding_dim": null,
        "time_embedding_type": "positional",
        "timestep_post_act": null,
        "transformer_layers_per_block": 1,
        "up_block_types": up,
        "upcast_attention": false,
        "use_linear_projection": linear,
    });
    if let (Value::Object(config), Value::Object(rest), Value::Object(extra)) = (&mut config, rest, extra) {
        config.extend(rest);
        config.extend(extra);
    }
    config
}

/// `vae_decoder/config.json` (and `vae_encoder/`'s, the same file as optimum writes it): the
/// AutoencoderKL config with as many levels as the measured factor needs.
pub fn vae_config(plan: &Plan) -> Value {
    let levels = plan.vae_factor.trailing_zeros() as usize + 1;
    let channels: Vec<usize> = (0..levels)
        .map(|level| [128, 256, 512].get(level).copied().unwrap_or(512))
        .collect();
    let mut config = json!({
        "_class_name": "AutoencoderKL",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "block_out_channels": channels,
        "down_block_types": vec!["DownEncoderBlock2D"; levels],
        "in_channels": 3,
        "latent_channels": plan.latent_channels,
        "latents_mean": null,
        "latents_std": null,
        "layers_per_block": 2,
        "mid_block_add_attention": true,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": plan.vae_sample_size,
        "scaling_factor": plan.scaling_factor,
        "shift_factor": null,
        "up_block_types": vec!["UpDecoderBlock2D"; levels],
        "use_post_quant_conv": true,
        "use_quant_conv": true,
    });
    if plan.family == Family::Sdxl {
        // SDXL's VAE overflows in float16; diffusers decodes it in float32.
        config["force_upcast"] = true.into();
    }
    config
}

/// The token ids a tokenizer config names, from `vocab.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SpecialIds {
    start: i64,
    end: i64,
    bang: i64,
    vocab_size: usize,
}

fn special_ids(vocab: &Path) -> Result<SpecialIds, BundleError> {
    let text = fs::read(vocab).map_err(io_error("read", vocab))?;
    let map: BTreeMap<String, i64> = serde_json::from_slice(&text).map_err(|e| BundleError::Vocabulary {
        problem: format!("is not a JSON map of tokens to ids ({e})"),
    })?;
    let id = |token: &str| {
        map.get(token).copied().ok_or_else(|| BundleError::Vocabulary {
            problem: format!("has no `{token}`: it is not CLIP's vocabulary"),
        })
    };
    Ok(SpecialIds {
        start: id(START_OF_TEXT)?,
        end: id(END_OF_TEXT)?,
        bang: id(BANG)?,
        vocab_size: map.len(),
    })
}

/// `text_encoder/config.json` or `text_encoder_2/config.json`: the family's CLIP text model.
fn text_encoder_config(plan: &Plan, second: bool, ids: SpecialIds) -> Value {
    // (architecture, export type, activation, width, MLP width, heads, layers, projection)
    let (architecture, export_type, activation, width, intermediate, heads, layers, projection) =
        match (plan.family, second) {
            (Family::Sdxl, true) => (
                "CLIPTextModelWithProjection",
                "clip-text-with-projection",
                "gelu",
                plan.text_2_width,
                5120,
                20,
                32,
                1280,
            ),
            (Family::Sd2, _) => ("CLIPTextModel", "clip-text", "gelu", plan.text_width, 4096, 16, 23, 512),
            (_, _) => (
                "CLIPTextModel",
                "clip-text",
                "quick_gelu",
                plan.text_width,
                3072,
                12,
                12,
                768,
            ),
        };
    let mut config = json!({
        "architectures": [architecture],
        "attention_dropout": 0.0,
        "bos_token_id": ids.start,
        "dtype": plan.dtype,
        "eos_token_id": ids.end,
        "export_model_type": export_type,
        "hidden_act": activation,
        "hidden_size": width,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "pad_token_id": 1,
        "projection_dim": projection,
        "vocab_size": ids.vocab_size,
    });
    if plan.family == Family::Sdxl {
        // SDXL conditions on the penultimate layer of both encoders.
        config["output_hidden_states"] = true.into();
    }
    config
}

/// An added token as transformers writes it in `tokenizer_config.json`.
fn added_token(content: &str, normalized: bool) -> Value {
    json!({
        "content": content,
        "lstrip": false,
        "normalized": normalized,
        "rstrip": false,
        "single_word": false,
        "special": true,
    })
}

/// `tokenizer_config.json` and `special_tokens_map.json` for a CLIP tokenizer padding with
/// `pad` (transformers' shapes: `!` is added unnormalized, as SD 2's files have it).
fn tokenizer_configs(pad: &str, ids: SpecialIds) -> (Value, Value) {
    let mut added = serde_json::Map::new();
    if pad == BANG {
        added.insert(ids.bang.to_string(), added_token(BANG, false));
    }
    added.insert(ids.start.to_string(), added_token(START_OF_TEXT, true));
    added.insert(ids.end.to_string(), added_token(END_OF_TEXT, true));
    let config = json!({
        "added_tokens_decoder": added,
        "bos_token": START_OF_TEXT,
        "clean_up_tokenization_spaces": false,
        "eos_token": END_OF_TEXT,
        "errors": "replace",
        "extra_special_tokens": {},
        "model_max_length": 77,
        "pad_token": pad,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": END_OF_TEXT,
    });
    let token = |content: &str| {
        json!({
            "content": content,
            "lstrip": false,
            "normalized": content != BANG,
            "rstrip": false,
            "single_word": false,
        })
    };
    let map = json!({
        "bos_token": token(START_OF_TEXT),
        "eos_token": token(END_OF_TEXT),
        "pad_token": token(pad),
        "unk_token": token(END_OF_TEXT),
    });
    (config, map)
}

/// `model_index.json`: diffusers' pipeline class and each part's library and class.
pub fn model_index(plan: &Plan) -> Value {
    let scheduler = scheduler_config(plan);
    let scheduler_class = scheduler["_class_name"].clone();
    let mut index = json!({
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "feature_extractor": [null, null],
        "image_encoder": [null, null],
        "scheduler": ["diffusers", scheduler_class],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    });
    if plan.family == Family::Sdxl {
        index["_class_name"] = "StableDiffusionXLPipeline".into();
        index["force_zeros_for_empty_prompt"] = true.into();
        index["text_encoder_2"] = json!(["transformers", "CLIPTextModelWithProjection"]);
        index["tokenizer_2"] = json!(["transformers", "CLIPTokenizer"]);
    } else {
        index["requires_safety_checker"] = false.into();
        index["safety_checker"] = json!([null, null]);
    }
    index
}

fn write_json(path: &Path, value: &Value) -> Result<(), BundleError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_error("create", parent))?;
    }
    let mut text = serde_json::to_string_pretty(value).expect("JSON values serialize");
    text.push('\n');
    fs::write(path, text).map_err(io_error("write", path))
}

/// What [`REPORT_FILE`] holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `flat bundle`.
    pub source_form: String,
    /// Each part's graph as the bundle named it, and the tokenizer's files.
    pub source_files: BTreeMap<String, String>,
    /// Each part's external-data files (moved beside its graph under their names).
    pub external_data: BTreeMap<String, Vec<String>>,
    pub settings: Vec<Note>,
}

/// Writes the optimum layout's configs, tokenizer folders and [`REPORT_FILE`] for `plan` into
/// `root`, where the graphs already sit in their folders; moves the tokenizer's files in.
fn write_layout(
    root: &Path,
    scan: &Scan,
    plan: &Plan,
    external_data: &BTreeMap<Part, BTreeSet<String>>,
) -> Result<(), BundleError> {
    let ids = special_ids(&root.join(&scan.vocab))?;
    let tokenizers: Vec<(&str, &str)> = match plan.family {
        Family::Sdxl => vec![("tokenizer_2", BANG), ("tokenizer", END_OF_TEXT)],
        family => vec![("tokenizer", family.pad_token())],
    };
    for (index, &(folder, pad)) in tokenizers.iter().enumerate() {
        let dir = root.join(folder);
        // The last folder gets the files themselves, the others copies.
        let last = index + 1 == tokenizers.len();
        for (from, to) in [(&scan.vocab, "vocab.json"), (&scan.merges, "merges.txt")] {
            if last {
                move_file(&root.join(from), &dir.join(to))?;
            } else {
                copy_file(&root.join(from), &dir.join(to))?;
            }
        }
        let (config, map) = tokenizer_configs(pad, ids);
        write_json(&dir.join("tokenizer_config.json"), &config)?;
        write_json(&dir.join("special_tokens_map.json"), &map)?;
    }
    write_json(&root.join("scheduler/scheduler_config.json"), &scheduler_config(plan))?;
    write_json(&root.join("unet/config.json"), &unet_config(plan))?;
    let vae = vae_config(plan);
    write_json(&root.join("vae_decoder/config.json"), &vae)?;
    if scan.graphs.contains_key(&Part::VaeEncoder) {
        write_json(&root.join("vae_encoder/config.json"), &vae)?;
    }
    write_json(
        &root.join("text_encoder/config.json"),
        &text_encoder_config(plan, false, ids),
    )?;
    if plan.family == Family::Sdxl {
        write_json(
            &root.join("text_encoder_2/config.json"),
            &text_encoder_config(plan, true, ids),
        )?;
    }
    let mut source_files: BTreeMap<String, String> = scan
        .graphs
        .iter()
        .map(|(part, file)| (part.folder().to_string(), file.clone()))
        .collect();
    source_files.insert("vocab".into(), scan.vocab.clone());
    source_files.insert("merges".into(), scan.merges.clone());
    let report = Report {
        source_form: "flat bundle".into(),
        source_files,
        external_data: external_data
            .iter()
            .filter(|(_, files)| !files.is_empty())
            .map(|(part, files)| (part.folder().to_string(), files.iter().cloned().collect()))
            .collect(),
        settings: plan.notes.clone(),
    };
    write_json(
        &root.join(REPORT_FILE),
        &serde_json::to_value(&report).expect("the report serializes"),
    )?;
    // Last: a folder is a model (to `find_model_root`) only once it is whole.
    write_json(&root.join("model_index.json"), &model_index(plan))
}

/// Converts the flat bundle at `root` (in the store's staging folder) into optimum's layout.
pub fn convert(runtime: &OrtRuntime, root: &Path, overrides: &Overrides) -> Result<(), BundleError> {
    let scan = scan(root)?;
    let external_data = move_graphs(root, &scan)?;
    let facts = read_graphs(runtime, root, &scan)?;
    let plan = infer(&facts, overrides)?;
    write_layout(root, &scan, &plan, &external_data)?;
    tracing::info!(
        family = plan.family.as_str(),
        vae_factor = plan.vae_factor,
        "converted a flat bundle into optimum's layout"
    );
    Ok(())
}

/// The lines `easel models show` prints for a model converted from a flat bundle (empty for any
/// other): where it came from and how each setting was decided.
pub fn inferred_lines(root: &Path) -> Vec<String> {
    let path = root.join(REPORT_FILE);
    let Ok(text) = fs::read(&path) else {
        return Vec::new();
    };
    let report: Report = match serde_json::from_slice(&text) {
        Ok(report) => report,
        Err(e) => {
            return vec![format!(
                "{REPORT_FILE} cannot be read ({e}); import the bundle again to rewrite it"
            )];
        }
    };
    let mut files: Vec<String> = report
        .source_files
        .iter()
        .map(|(part, file)| match report.external_data.get(part) {
            Some(data) => format!("{file} (+ {})", data.join(", ")),
            None => file.clone(),
        })
        .collect();
    files.sort();
    let mut lines = vec![format!("source: {} ({})", report.source_form, files.join(", "))];
    lines.extend(report.settings.iter().map(|note| {
        let value = match &note.value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        format!("{}: {value} ({}: {})", note.setting, note.how.as_str(), note.why)
    }));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelFolder;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
    }

    fn touch(path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        // Empty: a valid (empty) ONNX protobuf for the external-data reader.
        fs::write(path, b"").unwrap();
    }

    /// A flat bundle of placeholder graphs and the fixtures' tokenizer files.
    fn flat(dir: &Path, graphs: &[&str]) {
        for graph in graphs {
            touch(&dir.join(graph));
        }
        let tokenizer = fixtures().join("models/sd1-tiny/tokenizer");
        fs::copy(tokenizer.join("vocab.json"), dir.join("vocab.json")).unwrap();
        fs::copy(tokenizer.join("merges.txt"), dir.join("merges.txt")).unwrap();
    }

    #[test]
    fn parts_are_named_by_optimum_folder_or_apple_resource_in_any_case() {
        for (name, part) in [
            ("text_encoder.onnx", Some(Part::TextEncoder)),
            ("TextEncoder.onnx", Some(Part::TextEncoder)),
            ("TEXT_ENCODER.ONNX", Some(Part::TextEncoder)),
            ("text_encoder_2.onnx", Some(Part::TextEncoder2)),
            ("TextEncoder2.onnx", Some(Part::TextEncoder2)),
            ("unet.onnx", Some(Part::Unet)),
            ("Unet.onnx", Some(Part::Unet)),
            ("UNET.onnx", Some(Part::Unet)),
            ("vae_decoder.onnx", Some(Part::VaeDecoder)),
            ("VAEDecoder.onnx", Some(Part::VaeDecoder)),
            ("vae_encoder.onnx", Some(Part::VaeEncoder)),
            ("VAEEncoder.onnx", Some(Part::VaeEncoder)),
            ("unet.onnx_data", None),
            ("unet", None),
            ("safety_checker.onnx", None),
            ("UnetChunk1.onnx", None),
            ("model.onnx", None),
        ] {
            assert_eq!(Part::of_file(name), part, "{name}");
        }
        assert_eq!(TokenizerFile::of_file("Vocab.JSON"), Some(TokenizerFile::Vocab));
        assert_eq!(TokenizerFile::of_file("merges.txt"), Some(TokenizerFile::Merges));
        assert_eq!(TokenizerFile::of_file("vocab.txt"), None);
    }

    #[test]
    fn a_scan_names_each_file_and_refuses_missing_doubled_and_linked_ones() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ok");
        flat(
            &root,
            &[
                "TextEncoder.onnx",
                "Unet.onnx",
                "VAEDecoder.onnx",
                "weights.pb",
                "README.md",
            ],
        );
        let found = scan(&root).unwrap();
        assert_eq!(
            found.graphs.values().collect::<Vec<_>>(),
            ["TextEncoder.onnx", "Unet.onnx", "VAEDecoder.onnx"]
        );
        assert_eq!(
            (found.vocab.as_str(), found.merges.as_str()),
            ("vocab.json", "merges.txt")
        );

        let missing = dir.path().join("missing");
        flat(&missing, &["text_encoder.onnx", "vae_decoder.onnx"]);
        fs::remove_file(missing.join("merges.txt")).unwrap();
        let err = scan(&missing).unwrap_err().to_string();
        assert!(err.contains("has no unet.onnx (or Unet.onnx), merges.txt;"), "{err}");

        let doubled = dir.path().join("doubled");
        flat(
            &doubled,
            &["text_encoder.onnx", "unet.onnx", "Unet.onnx", "vae_decoder.onnx"],
        );
        let err = scan(&doubled).unwrap_err().to_string();
        assert!(err.contains("two unet graphs, `Unet.onnx` and `unet.onnx`"), "{err}");

        let linked = dir.path().join("linked");
        flat(&linked, &["text_encoder.onnx", "real.bin", "vae_decoder.onnx"]);
        std::os::unix::fs::symlink("real.bin", linked.join("unet.onnx")).unwrap();
        let err = scan(&linked).unwrap_err();
        assert!(
            matches!(err, BundleError::Link { ref file } if file == "unet.onnx"),
            "{err}"
        );
    }

    #[test]
    fn a_bundle_is_found_at_the_top_or_in_one_top_folder() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("top");
        flat(&top, &["unet.onnx"]);
        assert_eq!(find_bundle_root(&top).unwrap(), Some(top.clone()));
        let nested = dir.path().join("nested");
        flat(&nested.join("model"), &["Unet.onnx"]);
        touch(&nested.join(".DS_Store"));
        assert_eq!(find_bundle_root(&nested).unwrap(), Some(nested.join("model")));
        let neither = dir.path().join("neither");
        flat(&neither, &["weights.pb"]);
        assert_eq!(find_bundle_root(&neither).unwrap(), None);
    }

    /// A varint as protobuf writes it.
    fn varint(mut value: u64, out: &mut Vec<u8>) {
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }

    /// A length-delimited field.
    fn field(number: u64, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint(number << 3 | 2, &mut out);
        varint(body.len() as u64, &mut out);
        out.extend_from_slice(body);
        out
    }

    /// A tensor stored in `location`, with embedded raw bytes when `location` is empty.
    fn tensor(location: &str) -> Vec<u8> {
        let mut body = field(8, b"weight");
        if location.is_empty() {
            body.extend(field(9, &[0u8; 300]));
        } else {
            let mut entry = field(1, b"location");
            entry.extend(field(2, location.as_bytes()));
            body.extend(field(13, &entry));
            let mut offset = field(1, b"offset");
            offset.extend(field(2, b"0"));
            body.extend(field(13, &offset));
            body.extend([14 << 3, 1]); // data_location: EXTERNAL
        }
        body
    }

    #[test]
    fn external_data_locations_are_read_from_initializers_constants_and_subgraphs() {
        // ModelProto { ir_version, graph { initializer, node { attribute { t, g { initializer } } } } }
        let mut subgraph = field(5, &tensor("branch.bin"));
        subgraph.extend(field(5, &tensor("")));
        let mut attribute = field(1, b"value");
        attribute.extend(field(5, &tensor("const.bin")));
        attribute.extend(field(6, &subgraph));
        let mut node = field(4, b"Constant");
        node.extend(field(5, &attribute));
        let mut graph = field(1, &node);
        graph.extend(field(5, &tensor("weights.pb")));
        graph.extend(field(5, &tensor("weights.pb")));
        graph.extend(field(5, &tensor("")));
        let mut model = vec![1 << 3, 8]; // ir_version 8
        model.extend(field(2, b"test"));
        model.extend(field(7, &graph));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.onnx");
        fs::write(&path, &model).unwrap();
        let found: Vec<String> = external_data_files(&path).unwrap().into_iter().collect();
        assert_eq!(found, ["branch.bin", "const.bin", "weights.pb"]);

        // A real exported graph: the attention-fused sd1-tiny UNet keeps its weights outside.
        let fused = fixtures().join("fused/sd1-tiny-unet/model.onnx");
        let found: Vec<String> = external_data_files(&fused).unwrap().into_iter().collect();
        assert_eq!(found, ["model.onnx.data"]);
        // And one that embeds them names none.
        let plain = fixtures().join("models/sd1-tiny/unet/model.onnx");
        assert!(external_data_files(&plain).unwrap().is_empty());

        // A truncated file is an error, not an empty answer.
        fs::write(&path, &model[..model.len() - 40]).unwrap();
        assert!(external_data_files(&path).is_err());
    }

    #[test]
    fn graphs_move_into_their_folders_with_their_data_under_its_names() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        flat(root, &["text_encoder.onnx", "VAEDecoder.onnx"]);
        fs::copy(
            fixtures().join("fused/sd1-tiny-unet/model.onnx"),
            root.join("Unet.onnx"),
        )
        .unwrap();
        fs::copy(
            fixtures().join("fused/sd1-tiny-unet/model.onnx.data"),
            root.join("model.onnx.data"),
        )
        .unwrap();
        let found = scan(root).unwrap();
        let data = move_graphs(root, &found).unwrap();
        assert_eq!(data[&Part::Unet].iter().collect::<Vec<_>>(), ["model.onnx.data"]);
        for file in [
            "unet/model.onnx",
            "unet/model.onnx.data",
            "text_encoder/model.onnx",
            "vae_decoder/model.onnx",
        ] {
            assert!(root.join(file).is_file(), "{file}");
        }
        assert!(!root.join("Unet.onnx").exists() && !root.join("model.onnx.data").exists());

        // A graph naming a file that is not there is refused before anything moves.
        let broken = dir.path().join("broken");
        flat(&broken, &["text_encoder.onnx", "vae_decoder.onnx"]);
        fs::copy(
            fixtures().join("fused/sd1-tiny-unet/model.onnx"),
            broken.join("unet.onnx"),
        )
        .unwrap();
        let err = move_graphs(&broken, &scan(&broken).unwrap()).unwrap_err().to_string();
        assert!(
            err.contains("`unet.onnx` keeps its weights in `model.onnx.data`, which is not a file beside it"),
            "{err}"
        );
        assert!(broken.join("unet.onnx").is_file());

        // A bundle that already has a folder the conversion writes.
        let mixed = dir.path().join("mixed");
        flat(
            &mixed,
            &["text_encoder.onnx", "unet.onnx", "vae_decoder.onnx", "unet/model.onnx"],
        );
        let err = move_graphs(&mixed, &scan(&mixed).unwrap()).unwrap_err().to_string();
        assert!(err.contains("already has a `unet` entry"), "{err}");
    }

    fn sd_facts(width: usize) -> GraphFacts {
        GraphFacts {
            context_width: Some(width),
            unet_in_channels: Some(4),
            latent_channels: Some(4),
            vae_probe: VaeProbe {
                latent: (2, 2),
                picture: (16, 16),
            },
            text_width: Some(width),
            vae_decoder_file: "vae_decoder.onnx".into(),
            dtype: "float32".into(),
            ..GraphFacts::default()
        }
    }

    fn xl_facts(width: usize) -> GraphFacts {
        GraphFacts {
            xl_conditioning: true,
            text_width: Some(768),
            text_2_width: Some(1280),
            text_encoder_2: Some("text_encoder_2.onnx".into()),
            ..sd_facts(width)
        }
    }

    fn note<'a>(plan: &'a Plan, setting: &str) -> &'a Note {
        plan.notes.iter().find(|n| n.setting == setting).expect(setting)
    }

    #[test]
    fn the_family_comes_from_the_text_width_and_sdxl_inputs() {
        let none = Overrides::default();
        let sd1 = infer(&sd_facts(768), &none).unwrap();
        assert_eq!(
            (
                sd1.family,
                sd1.prediction,
                sd1.sampler,
                sd1.sample_size,
                sd1.scaling_factor
            ),
            (Family::Sd1, PredictionType::Epsilon, SamplerKind::Pndm, 64, 0.18215)
        );
        assert_eq!(note(&sd1, "family").how, How::Inferred);
        let sd2 = infer(&sd_facts(1024), &none).unwrap();
        assert_eq!(
            (
                sd2.family,
                sd2.prediction,
                sd2.sampler,
                sd2.sample_size,
                sd2.vae_sample_size
            ),
            (Family::Sd2, PredictionType::VPrediction, SamplerKind::Ddim, 96, 768)
        );
        let xl = infer(&xl_facts(2048), &none).unwrap();
        assert_eq!(
            (xl.family, xl.sampler, xl.sample_size, xl.scaling_factor),
            (Family::Sdxl, SamplerKind::Euler, 128, 0.13025)
        );

        assert!(matches!(infer(&xl_facts(1280), &none), Err(BundleError::Refiner)));
        let err = infer(&sd_facts(32), &none).unwrap_err().to_string();
        assert!(
            err.contains("is 32 wide") && err.contains("--family sd1|sd2|sdxl"),
            "{err}"
        );
        let err = infer(&sd_facts(2048), &none).unwrap_err().to_string();
        assert!(err.contains("--family"), "{err}");
        // SDXL's width without its second text encoder.
        let err = infer(
            &GraphFacts {
                text_encoder_2: None,
                ..xl_facts(2048)
            },
            &none,
        )
        .unwrap_err();
        assert!(matches!(err, BundleError::NoTextEncoder2 { .. }), "{err}");
        assert!(err.to_string().contains("text_encoder_2.onnx"), "{err}");
        let err = infer(
            &GraphFacts {
                text_encoder_2: Some("TextEncoder2.onnx".into()),
                ..sd_facts(768)
            },
            &none,
        )
        .unwrap_err();
        assert!(matches!(err, BundleError::UnusedTextEncoder2 { .. }), "{err}");

        // A UNet that leaves its width open: the text encoders' widths.
        let open = infer(
            &GraphFacts {
                context_width: None,
                ..sd_facts(1024)
            },
            &none,
        )
        .unwrap();
        assert_eq!(open.family, Family::Sd2);
        let open_xl = infer(
            &GraphFacts {
                context_width: None,
                ..xl_facts(2048)
            },
            &none,
        )
        .unwrap();
        assert_eq!(open_xl.family, Family::Sdxl);
    }

    #[test]
    fn overrides_win_and_say_so() {
        let flags = BundleFlags {
            family: Some("SD2".into()),
            prediction_type: Some("epsilon".into()),
            sampler: Some("Euler a".into()),
            vae_scaling_factor: Some(0.13025),
        };
        let overrides = Overrides::parse(&flags).unwrap();
        let plan = infer(&sd_facts(32), &overrides).unwrap();
        assert_eq!(
            (
                plan.family,
                plan.prediction,
                plan.sampler,
                plan.sample_size,
                plan.scaling_factor
            ),
            (
                Family::Sd2,
                PredictionType::Epsilon,
                SamplerKind::EulerAncestral,
                64,
                0.13025
            )
        );
        let family = note(&plan, "family");
        assert_eq!(family.how, How::Override);
        assert!(family.why.contains("32 wide"), "{}", family.why);
        assert_eq!(note(&plan, "prediction_type").how, How::Override);
        let scheduler = scheduler_config(&plan);
        assert_eq!(scheduler["_class_name"], "EulerAncestralDiscreteScheduler");
        assert_eq!(scheduler["prediction_type"], "epsilon");
        // A family that disagrees with the graphs is noted.
        let forced = infer(
            &sd_facts(768),
            &Overrides {
                family: Some(Family::Sd2),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert!(note(&forced, "family").why.contains("look like sd1"));

        for (flags, wanted) in [
            (
                BundleFlags {
                    family: Some("sd3".into()),
                    ..BundleFlags::default()
                },
                "`--family sd3` is not allowed: use sd1, sd2 or sdxl",
            ),
            (
                BundleFlags {
                    prediction_type: Some("v".into()),
                    ..BundleFlags::default()
                },
                "`--prediction v` is not allowed",
            ),
            (
                BundleFlags {
                    sampler: Some("unipc".into()),
                    ..BundleFlags::default()
                },
                "`--sampler unipc` is not allowed: use one of euler",
            ),
            (
                BundleFlags {
                    vae_scaling_factor: Some(-1.0),
                    ..BundleFlags::default()
                },
                "`--vae-scaling-factor -1` is not allowed",
            ),
        ] {
            let err = Overrides::parse(&flags).unwrap_err().to_string();
            assert!(err.contains(wanted), "{err}");
        }
        // Blank values count as not given.
        let blank = Overrides::parse(&BundleFlags {
            family: Some(" ".into()),
            ..BundleFlags::default()
        })
        .unwrap();
        assert_eq!(blank, Overrides::default());
    }

    #[test]
    fn flags_are_refused_for_an_optimum_folder() {
        let two = Overrides {
            family: Some(Family::Sd1),
            sampler: Some(SamplerKind::Ddim),
            ..Overrides::default()
        };
        two.check_layout(Layout::Flat).unwrap();
        let message = two.check_layout(Layout::Optimum).unwrap_err().to_string();
        assert!(
            message.starts_with("--family and --sampler only apply to flat bundles")
                && message.contains("import it without --family and --sampler"),
            "{message}"
        );
        let one = Overrides {
            vae_scaling_factor: Some(0.2),
            ..Overrides::default()
        };
        let message = one.check_layout(Layout::Optimum).unwrap_err().to_string();
        assert!(
            message.starts_with("--vae-scaling-factor only applies to flat bundles"),
            "{message}"
        );
        Overrides::default().check_layout(Layout::Optimum).unwrap();
    }

    #[test]
    fn the_vae_factor_and_channels_are_checked() {
        let none = Overrides::default();
        let factor_4 = infer(
            &GraphFacts {
                vae_probe: VaeProbe {
                    latent: (2, 2),
                    picture: (8, 8),
                },
                ..sd_facts(768)
            },
            &none,
        )
        .unwrap();
        assert_eq!(factor_4.vae_factor, 4);
        for picture in [(12, 12), (16, 8), (0, 0)] {
            let err = infer(
                &GraphFacts {
                    vae_probe: VaeProbe {
                        latent: (2, 2),
                        picture,
                    },
                    ..sd_facts(768)
                },
                &none,
            )
            .unwrap_err();
            assert!(matches!(err, BundleError::VaeFactor { .. }), "{picture:?}: {err}");
        }
        let inpaint = infer(
            &GraphFacts {
                unet_in_channels: Some(9),
                ..sd_facts(768)
            },
            &none,
        )
        .unwrap();
        assert_eq!(inpaint.unet_in_channels, 9);
        let err = infer(
            &GraphFacts {
                unet_in_channels: Some(7),
                ..sd_facts(768)
            },
            &none,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("takes 7 channels; easel knows 4 (text-to-image) and 9"),
            "{err}"
        );
        let fixed = infer(
            &GraphFacts {
                unet_sample_size: Some(96),
                ..sd_facts(768)
            },
            &none,
        )
        .unwrap();
        assert_eq!(
            (fixed.sample_size, note(&fixed, "sample_size").how),
            (96, How::Inferred)
        );
    }

    #[test]
    fn the_published_scheduler_configs_are_json_objects_with_the_documented_classes() {
        for (family, class, prediction) in [
            (Family::Sd1, "PNDMScheduler", None),
            (Family::Sd2, "DDIMScheduler", Some("v_prediction")),
            (Family::Sdxl, "EulerDiscreteScheduler", Some("epsilon")),
        ] {
            let config = scheduler_template(family);
            assert_eq!(config["_class_name"], class);
            assert_eq!(config.get("prediction_type").and_then(Value::as_str), prediction);
        }
        // The default import ships SD 1.5's file unchanged.
        let plan = infer(&sd_facts(768), &Overrides::default()).unwrap();
        assert_eq!(
            scheduler_config(&plan),
            serde_json::from_str::<Value>(SD15_SCHEDULER).unwrap()
        );
        let karras = infer(
            &sd_facts(768),
            &Overrides {
                sampler: Some(SamplerKind::DpmPp2mKarras),
                ..Overrides::default()
            },
        )
        .unwrap();
        let config = scheduler_config(&karras);
        assert_eq!(
            (&config["_class_name"], &config["use_karras_sigmas"]),
            (&json!("DPMSolverMultistepScheduler"), &json!(true))
        );
    }

    /// Writes the layout for `facts` over placeholder graphs and opens it as a model folder.
    fn generated(facts: GraphFacts, overrides: &Overrides, graphs: &[&str]) -> (tempfile::TempDir, ModelFolder) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        flat(root, graphs);
        let found = scan(root).unwrap();
        let data = move_graphs(root, &found).unwrap();
        let plan = infer(&facts, overrides).unwrap();
        write_layout(root, &found, &plan, &data).unwrap();
        let folder = ModelFolder::open("flat", root).unwrap();
        (dir, folder)
    }

    #[test]
    fn generated_configs_open_as_the_model_folder_the_plan_describes() {
        let sd_graphs = ["text_encoder.onnx", "unet.onnx", "vae_decoder.onnx", "vae_encoder.onnx"];
        let (dir, sd1) = generated(sd_facts(768), &Overrides::default(), &sd_graphs);
        assert_eq!(sd1.prediction_type, PredictionType::Epsilon);
        assert_eq!((sd1.vae_factor, sd1.latent_channels, sd1.unet_in_channels), (8, 4, 4));
        assert_eq!((sd1.scaling_factor, sd1.vae_sample_size), (0.18215, 512));
        assert_eq!((sd1.native_size(), sd1.size_multiple), (512, 64));
        assert_eq!(sd1.tokenizer.pad_id(), 1513, "sd1 pads with <|endoftext|>");
        assert_eq!(
            crate::generation::sampler::default_for(&sd1.scheduler),
            SamplerKind::Pndm
        );
        let root = dir.path();
        for file in [
            "model_index.json",
            "tokenizer/vocab.json",
            "tokenizer/merges.txt",
            "tokenizer/special_tokens_map.json",
            "vae_encoder/config.json",
            "text_encoder/config.json",
            REPORT_FILE,
        ] {
            assert!(root.join(file).is_file(), "{file}");
        }
        assert!(!root.join("vocab.json").exists());
        let index: Value = serde_json::from_slice(&fs::read(root.join("model_index.json")).unwrap()).unwrap();
        assert_eq!(index["_class_name"], "StableDiffusionPipeline");
        assert_eq!(index["scheduler"], json!(["diffusers", "PNDMScheduler"]));
        let lines = inferred_lines(root);
        assert!(lines[0].starts_with("source: flat bundle ("), "{lines:?}");
        assert!(
            lines.contains(&"family: sd1 (inferred: the UNet's `encoder_hidden_states` is 768 wide)".to_string()),
            "{lines:?}"
        );
        assert!(
            lines
                .contains(&"vae_factor: 8 (inferred: the VAE decoder drew 16×16 pixels from a 2×2 latent)".to_string()),
            "{lines:?}"
        );

        let factor_4 = GraphFacts {
            vae_probe: VaeProbe {
                latent: (2, 2),
                picture: (8, 8),
            },
            ..sd_facts(1024)
        };
        let (_dir, sd2) = generated(factor_4, &Overrides::default(), &sd_graphs[..3]);
        assert_eq!(sd2.prediction_type, PredictionType::VPrediction);
        assert_eq!((sd2.vae_factor, sd2.native_size(), sd2.size_multiple), (4, 384, 32));
        assert_eq!(sd2.tokenizer.pad_id(), 0, "sd2 pads with `!`");
        assert_eq!(
            crate::generation::sampler::default_for(&sd2.scheduler),
            SamplerKind::Ddim
        );

        let inpaint = GraphFacts {
            unet_in_channels: Some(9),
            guidance_embedding_dim: Some(256),
            ..sd_facts(768)
        };
        let (_dir, sd1_inpaint) = generated(inpaint, &Overrides::default(), &sd_graphs);
        assert!(sd1_inpaint.is_inpainting());

        let (dir, xl) = generated(
            xl_facts(2048),
            &Overrides::default(),
            &["TextEncoder.onnx", "TextEncoder2.onnx", "Unet.onnx", "VAEDecoder.onnx"],
        );
        assert_eq!(
            (xl.scaling_factor, xl.vae_sample_size, xl.native_size()),
            (0.13025, 1024, 1024)
        );
        assert_eq!(xl.size_multiple, 32);
        assert_eq!(
            crate::generation::sampler::default_for(&xl.scheduler),
            SamplerKind::Euler
        );
        let root = dir.path();
        let index: Value = serde_json::from_slice(&fs::read(root.join("model_index.json")).unwrap()).unwrap();
        assert_eq!(index["_class_name"], "StableDiffusionXLPipeline");
        assert_eq!(index["force_zeros_for_empty_prompt"], true);
        let tokenizer_2 = crate::model::tokenizer::ClipTokenizer::from_dir(&root.join("tokenizer_2")).unwrap();
        assert_eq!((xl.tokenizer.pad_id(), tokenizer_2.pad_id()), (1513, 0));
        let vae: Value = serde_json::from_slice(&fs::read(root.join("vae_decoder/config.json")).unwrap()).unwrap();
        assert_eq!(vae["force_upcast"], true);
        assert!(root.join("text_encoder_2/config.json").is_file());
    }
}
