//! The gRPC face of the daemon: the only wing that knows proto types.
//!
//! - [`service`]: the handlers of `easel.v1.Easel`.
//! - [`convert`]: proto ↔ daemon types (requests, events, tensors, timestamps, models).
//! - [`status`]: every error → the gRPC status code it gets, in one place.
//! - [`socket`]: the Unix socket, its lock file and the peer-uid check.
//!
//! [`run`] is the seam tests and the binary share: it serves a [`Daemon`] on a listener until
//! a shutdown signal or a `Shutdown` call, then stops the job queue and returns.

pub mod convert;
pub mod service;
pub mod socket;
pub mod status;

use std::future::Future;
use std::sync::Arc;

use easel_proto::v1::easel_server::EaselServer;
use tokio::net::UnixListener;
use tokio::sync::Notify;

use crate::Daemon;
use service::EaselService;

/// Facts about the running daemon reported by `GetStatus`.
#[derive(Debug, Clone)]
pub struct DaemonInfo {
    pub device: String,
    /// Why `auto` chose the CPU (empty otherwise).
    pub device_note: String,
    pub onnxruntime_library: String,
    pub socket: String,
}

/// Serves the API (plus `grpc.health.v1` and server reflection) on `listener` until `shutdown`
/// completes or a client calls `Shutdown`; then refuses new work, ends running jobs and returns
/// once open calls have finished.
pub async fn run(
    listener: UnixListener,
    daemon: Daemon,
    info: DaemonInfo,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let requested = Arc::new(Notify::new());
    let jobs = daemon.jobs.clone();
    let limits = *jobs.limits();
    // gRPC's 4 MiB default is too small for an img2img request at the largest allowed size;
    // accept exactly what `max_pixels` can need.
    let max_request = easel_proto::limits::max_request_bytes(limits.max_pixels, limits.max_prompt_chars);
    let service = EaselService::new(daemon.jobs, daemon.catalog, info, requested.clone());
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<EaselServer<EaselService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(easel_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the embedded descriptor sets are valid");
    let stopping = Arc::new(Notify::new());
    let stopped = stopping.clone();
    let stop = async move {
        tokio::select! {
            _ = shutdown => tracing::info!("shutting down (signal)"),
            _ = requested.notified() => tracing::info!("shutting down (requested)"),
        }
        health_reporter.set_not_serving::<EaselServer<EaselService>>().await;
        jobs.shutdown().await;
        // Watches end now; calls still open (an import, a pull) get a grace period below.
        jobs.events().close();
        stopping.notify_one();
    };
    let server = tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(explain_message_limit))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(EaselServer::new(service).max_decoding_message_size(max_request))
        .serve_with_incoming_shutdown(socket::OwnerOnly::new(listener), stop);
    // Once stopping, open calls have SHUTDOWN_GRACE to finish; then the daemon exits anyway
    // (their clients see the connection close), so a stalled call cannot keep it running.
    tokio::select! {
        served = server => served,
        () = async {
            stopped.notified().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!(grace_s = SHUTDOWN_GRACE.as_secs(), "calls still open after the grace period; stopping anyway");
            Ok(())
        }
    }
}

/// tonic refuses an oversized request with "decoded message length too large: found N bytes,
/// the limit is: M bytes"; this says which limit that is and what to do about it.
fn explain_message_limit<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    if let Some(status) = tonic::Status::from_header_map(headers)
        && status.code() == tonic::Code::OutOfRange
        && status.message().contains("message length too large")
    {
        let explained = tonic::Status::out_of_range(format!(
            "the request is larger than this daemon accepts ({}); the limit follows from max_pixels \
             (an init image and a mask of that many pixels, noise and prompts): send smaller pictures, \
             or raise max_pixels in the daemon's config",
            status.message()
        ));
        let _ = explained.add_header(headers);
    }
    response
}

/// How long open calls may run on once the daemon is stopping.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
