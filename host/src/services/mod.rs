//! The service port: calls between modules through the host, and what `/admin/services`
//! shows of them. Engines live beside it, one file each: [`local`] is the embedded
//! registry of the providers running in this process.
//!
//! A call is allowed only if the service is declared by its provider's manifest, the
//! caller lists the provider among its dependencies, and the provider is running. In a
//! cluster, a service no module of this host provides is called on another host by
//! `cluster/node.rs`, after the same checks. A call made inside a request carries the
//! request's end user ([`end_user`]) to the provider.
//!
//! May use: the plugin API's FFI service types. Must not use the runtime or HTTP layers.

pub mod end_user;
pub mod local;

use serde::Serialize;

/// A failed call: a kind from `call_error` and a message.
pub type CallFailure = (u8, String);

/// What `/admin/services` shows of a service.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceReport {
    pub service: String,
    pub provider: String,
    /// Where it runs: `local`, or the id of the host that runs it.
    pub location: String,
    pub healthy: bool,
    pub calls: u64,
    pub errors: u64,
}
