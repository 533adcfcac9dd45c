//! The wire protocol: gRPC types and stubs compiled from `proto/` (tonic and prost, with
//! a pure-Rust protobuf compiler, so no `protoc` is needed).
//!
//! - [`core_v1`]: `modhost.core.v1` (Auth, Identity, Authz, Audit): served by
//!   `core/grpc_server.rs`, called by `core/remote.rs`.
//! - [`module_v1`]: `modhost.module.v1` (Worker, ModuleHost): between the host and an
//!   isolated module's worker process (`isolation/`).
//!
//! May use: nothing else of the host (the services that speak it depend on it).

/// Generated from `proto/modhost/core/v1/core.proto`.
#[allow(clippy::all, missing_docs)]
pub mod core_v1 {
    tonic::include_proto!("modhost.core.v1");
}

/// Generated from `proto/modhost/module/v1/module.proto`.
#[allow(clippy::all, missing_docs)]
pub mod module_v1 {
    tonic::include_proto!("modhost.module.v1");
}

/// Every compiled `.proto` file, for gRPC server reflection (`grpcurl list`).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/modhost_descriptor.bin"));
