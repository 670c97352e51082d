//! `easeld`: the easel daemon as a library, so tests can run it in-process and the binary
//! stays a thin `main`.
//!
//! Code map (see ARCHITECTURE.md for the whole picture):
//! - [`runtime`]: finding and loading the ONNX Runtime library.
//! - [`model`]: a model folder (configs, tokenizer) and its ONNX sessions.
//! - [`sampler`]: the eight samplers, each a twin of a diffusers scheduler.
//! - [`pipeline`]: the denoising loop (text-to-image, img2img, inpainting; batches).
//! - [`inpaint`]: inpainting masks and the final composite.
//! - [`engine`]: the job queue and the inference worker thread that owns loaded models.
//! - [`service`]: the gRPC service, the only module that knows proto types.
//! - [`socket`]: the Unix socket, its lock and the peer check.
//! - [`models`]: listing, describing, importing, pulling and removing models (proto-free).
//! - [`residency`], [`queue`], [`events`]: loaded models, the fair queue, WatchEvents.
//! - [`store`]: installed models (`$EASEL_HOME/models/`): safe, atomic import and removal,
//!   and what a model is ([`store::describe`]).
//! - [`hub`]: pulling (listing, downloading, verifying) models from a Hugging Face-compatible hub.
//! - [`config`], [`registry`], [`builtin`], [`image`]: settings, model names, the embedded
//!   default model, pictures.

pub mod builtin;
pub mod clip_skip;
pub mod config;
pub mod engine;
pub mod events;
pub mod hub;
pub mod image;
pub mod inpaint;
pub mod model;
pub mod models;
pub mod pipeline;
pub mod prompt;
pub mod queue;
pub mod registry;
pub mod residency;
pub mod runtime;
pub mod sampler;
pub mod service;
pub mod socket;
pub mod store;

use std::future::Future;
use std::sync::Arc;

use easel_proto::v1::easel_server::EaselServer;
use tokio::net::UnixListener;
use tokio::sync::Notify;

use engine::Engine;
use service::{DaemonInfo, EaselService};

/// An error and its causes as one line (`a: b: c`), skipping a cause whose text the message
/// already holds (thiserror's `#[error(transparent)]` and `{source}` repeat it).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// Serves the API on `listener` until `shutdown` completes or a client calls `Shutdown`; then
/// refuses new work, ends running jobs and returns once open calls have finished.
pub async fn run(
    listener: UnixListener,
    engine: Engine,
    models: Arc<models::Models>,
    info: DaemonInfo,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let requested = Arc::new(Notify::new());
    let service = EaselService::new(engine.clone(), models, info, requested.clone());
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<EaselServer<EaselService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(easel_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the embedded descriptor sets are valid");
    let stop = async move {
        tokio::select! {
            _ = shutdown => tracing::info!("shutting down (signal)"),
            _ = requested.notified() => tracing::info!("shutting down (requested)"),
        }
        health_reporter.set_not_serving::<EaselServer<EaselService>>().await;
        engine.shutdown().await;
    };
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(EaselServer::new(service))
        .serve_with_incoming_shutdown(socket::OwnerOnly::new(listener), stop)
        .await
}
