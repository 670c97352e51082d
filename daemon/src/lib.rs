//! `easeld`: the easel daemon as a library, so tests can run it in-process and the binary
//! stays a thin `main`.
//!
//! The daemon is a house with wings; arrows point down only (see ARCHITECTURE.md):
//!
//! ```text
//! serve/ ──▶ jobs/ ──────▶ generation/ ──▶ model/
//!   │          │               ▲              ▲
//!   │          ▼               │              │
//!   └──────▶ catalog/ ─────────┴──────────────┘
//! ```
//!
//! - [`serve`]: the gRPC service, conversions, error codes, the socket — the only wing that
//!   knows proto types.
//! - [`jobs`]: the job queue — validation, the fair queue, the workers, the event bus, and
//!   residency (the one owner of loaded models).
//! - [`generation`]: a request's one preparation path, the denoising loop, text conditioning,
//!   inpainting, pictures, the samplers.
//! - [`model`]: one model's files, sessions and tokenizer, and the ONNX Runtime library.
//! - [`catalog`]: which models exist — registry, built-in model, store, hub pulls.
//! - Foundations every wing may use: [`config`] (settings and their types), [`memory`] (the
//!   kernel's memory figures), [`outbox`] (a client's bounded queue of events).

pub mod catalog;
pub mod config;
pub mod generation;
pub mod jobs;
pub mod memory;
pub mod model;
pub mod outbox;
pub mod serve;

use std::sync::Arc;

use catalog::Catalog;
use catalog::registry::Registry;
use catalog::store::{ImportLimits, Store, StoreError};
use config::Config;
use jobs::events::EventBus;
use jobs::{JobQueue, JobSettings, OrtBackend};
use model::runtime::OrtRuntime;

pub use serve::run;

/// The daemon's two halves, wired together: the job queue (which owns the loaded models) and
/// the catalog (which asks the queue before it replaces or removes a model), both publishing
/// on one event bus.
#[derive(Debug, Clone)]
pub struct Daemon {
    pub jobs: JobQueue,
    pub catalog: Arc<Catalog>,
}

impl Daemon {
    /// Opens the store under `config.home` and starts the workers on `runtime`.
    pub fn start(config: &Config, runtime: OrtRuntime) -> Result<Self, StoreError> {
        let registry = Arc::new(Registry::new(&config.home));
        let limits = ImportLimits {
            max_bytes: config.max_import_bytes,
            max_files: config.max_import_files,
            keep_free: config.import_keep_free,
        };
        let store = Store::open(&config.home.join("models"), limits)?;
        let events = EventBus::new();
        let settings = JobSettings {
            parallel: config.parallel,
            memory_budget: config.memory_budget,
            vram_budget: runtime
                .device_memory
                .as_ref()
                .map_or(0, |gpu| config.vram_budget_of(gpu.total())),
            keep_alive: config.keep_alive,
        };
        let backend = OrtBackend::new(runtime.clone(), config.threads);
        let jobs = JobQueue::start(backend, registry.clone(), config.limits, settings, events.clone());
        let users = Arc::new(jobs.clone());
        let catalog = Catalog::new(store, registry, runtime, users, move |event| {
            events.publish(event.into())
        });
        Ok(Self {
            jobs,
            catalog: Arc::new(catalog),
        })
    }
}

pub use easel_proto::errors::error_chain;
