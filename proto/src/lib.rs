//! The `easel.v1` wire protocol, generated from `proto/easel/v1/easel.proto`.
//!
//! Only the daemon's `serve` wing (server side) and the clients (the CLI's client library, the
//! HTTP gateway) use these types. Everything else works with plain Rust types, so the engine
//! never depends on gRPC.
//!
//! Beside them, what every crate shares: [`paths`] (socket and config locations), [`units`],
//! [`limits`], and [`errors`] (an error and its causes on one line).

#![allow(clippy::all, missing_docs)]

pub mod errors;
pub mod limits;
pub mod paths;
pub mod units;

pub mod v1 {
    tonic::include_proto!("easel.v1");
}

/// The request metadata key with which a client that serves others (the HTTP gateway) names
/// the one a request is for, so that the daemon's fair queue takes turns between them too.
pub const ON_BEHALF_OF: &str = "easel-on-behalf-of";

/// Encoded `FileDescriptorSet` of the API, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/easel_descriptor.bin"));
