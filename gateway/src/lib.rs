//! `easel-gateway`: the HTTP APIs the apps people already run speak — AUTOMATIC1111's
//! `/sdapi/v1/*` and OpenAI's `/v1/images/*` — translated to calls on the easel daemon's gRPC
//! socket. `easel gateway` runs it; it is one more thin client of the gRPC API and knows nothing
//! the API does not tell it.
//!
//! - [`a1111`]: txt2img/img2img (with inpainting), options and model switching, the lists
//!   plugins read, progress, interrupt, png-info.
//! - [`openai`]: `/v1/images/generations`, `/v1/images/edits`, `/v1/models`.
//! - [`guard`]: what every request passes first — `Host` (DNS rebinding), `Origin` (CSRF,
//!   CORS only for configured origins) and the token.
//! - [`jobs`]: the gateway's state: the daemon client, A1111's current checkpoint and options,
//!   and the jobs it runs (for `progress` and `interrupt`).
//! - [`images`], [`error`]: base64 pictures and masks; errors in each API's shape.
//!
//! [`run`] serves a bound listener until `shutdown` resolves (the seam the tests use);
//! [`router`] is the same service without the socket.
//!
//! Invariants: the gateway listens beyond loopback only with a token; no response carries
//! `Access-Control-Allow-Origin: *`; every body and every picture it decodes is bounded; a
//! client that hangs up cancels its job (dropping the handler drops the gRPC stream, and the
//! daemon cancels a job whose stream is gone).

pub mod a1111;
pub mod error;
mod fields;
pub mod guard;
pub mod images;
pub mod jobs;
pub mod openai;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use easel_proto::v1::easel_client::EaselClient;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tonic::transport::Channel;

pub use jobs::Gateway;

/// AUTOMATIC1111's address, where plugins look by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7860";

/// How long a connection may take to send its request headers (slow-loris bound).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long open requests may run on after shutdown is asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Connections open at once; the next waits to be accepted.
const MAX_CONNECTIONS: usize = 512;

/// What the gateway lets in.
#[derive(Debug, Clone)]
pub struct Config {
    /// Required on every request when set (`Authorization: Bearer T`, or HTTP Basic with T as
    /// the password, or `user:password` equal to T, A1111's `--api-auth` convention). Required
    /// to listen beyond loopback.
    pub token: Option<String>,
    /// `Host` names accepted besides loopback names and IP addresses (e.g. a LAN name).
    pub allowed_hosts: Vec<String>,
    /// Browser origins allowed to call the gateway (e.g. `http://localhost:3000`); any other
    /// `Origin` is refused.
    pub allowed_origins: Vec<String>,
    /// The largest request body.
    pub max_body_bytes: usize,
    /// Pictures the gateway decodes itself (masks).
    pub image_limits: images::ImageLimits,
    /// Generation requests (each holding its body, up to `max_body_bytes`) open at once; more
    /// are answered 429 before their bodies are read. The daemon queues only 16 by default.
    pub max_generations: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            token: None,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            max_body_bytes: default_max_body_bytes(),
            image_limits: images::ImageLimits::default(),
            max_generations: 32,
        }
    }
}

/// The largest request the daemon takes at its default limits (an init image and a mask at
/// 2048², both prompts at full length), as base64 (4/3 of it) plus a MiB for the JSON around it.
pub fn default_max_body_bytes() -> usize {
    let request = easel_proto::limits::max_request_bytes(2048 * 2048, 16_384);
    request / 3 * 4 + (1 << 20)
}

/// Why the gateway cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(
        "refusing to listen on {address} without a token: anyone who can reach it could use your models; \
         pass --token (or set EASEL_GATEWAY_TOKEN), or listen on 127.0.0.1"
    )]
    TokenRequired { address: SocketAddr },
    #[error("the gateway's listener failed")]
    Listener(#[source] std::io::Error),
}

/// Whether an address is the machine's own: 127.0.0.0/8, ::1, and IPv4-mapped loopback.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// The gateway's HTTP service over `daemon`.
pub fn router(daemon: EaselClient<Channel>, config: Config) -> Router {
    let max_body = config.max_body_bytes;
    let gateway = Arc::new(Gateway::new(daemon, config));
    Router::new()
        .merge(a1111::routes())
        .merge(openai::routes())
        .fallback(guard::not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(gateway.clone(), guard::check))
        .with_state(gateway)
}

/// The HTTP client a request came from (used to queue clients fairly in the daemon).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Serves `listener` until `shutdown` resolves, then lets open requests finish for up to
/// [`SHUTDOWN_GRACE`]. Refuses to start on a non-loopback address without a token.
pub async fn run(
    listener: TcpListener,
    daemon: EaselClient<Channel>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewayError> {
    let address = listener.local_addr().map_err(GatewayError::Listener)?;
    if !is_loopback(address.ip()) && config.token.is_none() {
        return Err(GatewayError::TokenRequired { address });
    }
    let app = router(daemon, config);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait, do not spin or stop serving.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone().layer(axum::Extension(Peer(peer))));
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "an HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still open {SHUTDOWN_GRACE:?} after shutdown was asked for; leaving them");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client of a daemon that is never called (the channel connects lazily).
    fn unused_daemon() -> EaselClient<Channel> {
        EaselClient::new(tonic::transport::Endpoint::from_static("http://[::1]:1").connect_lazy())
    }

    #[tokio::test]
    async fn beyond_loopback_it_refuses_to_run_without_a_token() {
        let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
        let error = run(listener, unused_daemon(), Config::default(), std::future::pending())
            .await
            .unwrap_err();
        assert!(matches!(error, GatewayError::TokenRequired { .. }), "{error}");
        assert!(error.to_string().contains("--token"));
    }

    #[tokio::test]
    async fn on_loopback_it_serves_until_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        run(listener, unused_daemon(), Config::default(), async {})
            .await
            .unwrap();
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("192.168.1.2".parse().unwrap()));
    }
}
