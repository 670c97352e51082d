//! One model: its files, its ONNX sessions and its tokenizer, plus the ONNX Runtime library
//! they run on. The bottom of the daemon: it knows nothing of requests, jobs or the store.
//!
//! - [`folder`]: a model folder in optimum's layout, opened without loading weights — configs,
//!   tokenizer, that every part exists ([`ModelFolder`]).
//! - [`scheduler_config`]: diffusers' `scheduler/scheduler_config.json` as read from disk.
//! - [`loaded`]: the sessions of a folder, with the inputs the pipeline feeds found by name or
//!   rank ([`LoadedModel`]).
//! - [`onnx`]: one session with its I/O read from the graph and dtype conversion.
//! - [`tokenizer`]: CLIP BPE, matching transformers' slow tokenizer.
//! - [`runtime`]: finding and loading the ONNX Runtime shared library.
//! - [`device`], [`device_memory`]: which device runs the sessions (the `device` setting,
//!   checked at startup) and how much memory that GPU has and uses.
//!
//! A broken or incompatible model fails when it is opened or loaded, with a message that names
//! the part, not halfway through a job.

pub mod device;
pub mod device_memory;
pub mod embedding_cache;
pub mod folder;
pub mod loaded;
pub mod onnx;
pub mod optimized_cache;
pub mod runtime;
pub mod scheduler_config;
pub mod tokenizer;
pub mod upcast;

use std::path::PathBuf;

pub use folder::{Fingerprint, ModelFolder, PredictionType};
pub use loaded::{LoadedModel, UnetInputs, VaeEncoder};
pub use scheduler_config::SchedulerConfig;

use onnx::OnnxError;
use tokenizer::TokenizerError;

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
