//! The `easel.v1` wire protocol, generated from `proto/easel/v1/easel.proto`.
//!
//! Only two places in the project use these types: the daemon's `service` module (server side)
//! and the CLI's client library. Everything else works with plain Rust types, so the engine
//! never depends on gRPC.

#![allow(clippy::all, missing_docs)]

pub mod limits;
pub mod paths;
pub mod units;

pub mod v1 {
    tonic::include_proto!("easel.v1");
}

/// Encoded `FileDescriptorSet` of the API, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/easel_descriptor.bin"));
