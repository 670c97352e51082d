//! The gRPC face of the daemon: the only wing that knows proto types.
//!
//! - [`service`]: the handlers of `easel.v1.Easel`.
//! - [`convert`]: proto ↔ daemon types (requests, events, tensors, timestamps, models).
//! - [`status`]: every error → the gRPC status code it gets, in one place.
//! - [`socket`]: the Unix socket, its lock file and the peer-uid check.
//! - [`activation`]: socket activation, readiness notification and exit when idle, for
//!   service managers (systemd).
//!
//! [`run`] is the seam tests and the binary share: it serves a [`Daemon`] on a listener until
//! a shutdown signal or a `Shutdown` call, then stops the job queue and returns
//! ([`run_with`]: the same with [`ServeOptions`]).

pub mod activation;
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

/// How [`run_with`] serves, beyond the defaults [`run`] uses.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Stop after this long with no request in flight and no job (`idle_exit`, for a
    /// socket-activated daemon); `None`: never.
    pub idle_exit: Option<std::time::Duration>,
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
    run_with(listener, daemon, info, shutdown, ServeOptions::default()).await
}

/// [`run`] with options. Tells a service manager (`$NOTIFY_SOCKET`) when it serves and when it
/// stops.
pub async fn run_with(
    listener: UnixListener,
    daemon: Daemon,
    info: DaemonInfo,
    shutdown: impl Future<Output = ()>,
    options: ServeOptions,
) -> Result<(), tonic::transport::Error> {
    let socket_path = info.socket.clone();
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
    let activity = activation::Activity::new();
    let idle = {
        let activity = activity.clone();
        let jobs = jobs.clone();
        async move {
            match options.idle_exit {
                Some(period) => {
                    activation::idle_for(activity, period, move || {
                        let status = jobs.status();
                        status.queued + status.running > 0
                    })
                    .await
                }
                None => std::future::pending().await,
            }
        }
    };
    let stop = async move {
        let reason = tokio::select! {
            _ = shutdown => "shutting down (signal)",
            _ = requested.notified() => "shutting down (requested)",
            _ = idle => "shutting down (idle)",
        };
        tracing::info!("{reason}");
        activation::notify_stopping(reason);
        health_reporter.set_not_serving::<EaselServer<EaselService>>().await;
        jobs.shutdown().await;
        // Watches end now; calls still open (an import, a pull) get a grace period below.
        jobs.events().close();
        stopping.notify_one();
    };
    let server = tonic::transport::Server::builder()
        .layer(activation::ActivityLayer(activity))
        .layer(tower::util::MapResponseLayer::new(explain_message_limit))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(EaselServer::new(service).max_decoding_message_size(max_request))
        .serve_with_incoming_shutdown(socket::OwnerOnly::new(listener), stop);
    // The listener already queues connections and the service is built: from here on every
    // client gets an answer.
    activation::notify_ready(&format!("serving on {socket_path}"));
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
