//! `easel_client`: the small client library behind the `easel` command line.
//!
//! Editor plugins and tests can use it to talk to `easeld` the way the CLI does.
//! - [`connect`]: dialing the daemon's Unix socket, and starting the daemon on first use
//!   ([`connect_or_start`], [`start_daemon`]).
//! - [`request`]: [`GenerateOptions`] → `GenerateRequest`, and `--model NAME|DIR` resolution.
//! - [`events`]: the `--json` line for each `GenerateEvent`.
//! - [`output`]: where images and previews go, and atomic writes.
//! - [`input`]: reading the files a request carries, checked (regular, within a size) first.
//! - [`npy`]: reading `.npy` files (initial noise).
//!
//! The protocol types are re-exported as [`pb`].

pub mod connect;
pub mod events;
pub mod input;
pub mod npy;
pub mod output;
pub mod request;

pub use connect::{ClientError, StartedDaemon, connect, connect_or_start, daemon_binary, log_path, start_daemon};
pub use easel_proto::v1 as pb;
pub use easel_proto::v1::easel_client::EaselClient;
pub use request::{GenerateOptions, RequestError, resolve_model};
pub use tonic::transport::Channel;
