//! The wire protocol: gRPC services compiled from `proto/` (tonic and prost, with a
//! pure-Rust protobuf compiler, so no `protoc` is needed), and their servers.
//!
//! - [`core_v1`]: the generated types and stubs of `modhost.core.v1` (Auth, Identity,
//!   Authz, Audit);
//! - [`core_server`]: `modhost core`, which serves them over the host's [`Core`].
//!
//! May use: `core`. Must not use the runtime or HTTP layers.
//!
//! [`Core`]: crate::core::Core

pub mod core_server;

/// Generated from `proto/modhost/core/v1/core.proto`.
#[allow(clippy::all, missing_docs)]
pub mod core_v1 {
    tonic::include_proto!("modhost.core.v1");
}

/// Every compiled `.proto` file, for gRPC server reflection (`grpcurl list`).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/modhost_descriptor.bin"));
