//! The cache port: the [`CacheStore`] interface every engine implements. Engines live
//! beside it, one file each: [`memory`] is the embedded engine (moka), [`redis`] the
//! cluster engine, shared by every host. Keys are namespaced by module inside the host,
//! so a module can neither read nor overwrite another module's keys, whatever the
//! engine.
//!
//! A cache is an optimisation: an engine that cannot answer degrades to a miss (and a
//! dropped write), logged and counted, never to an error for the request.
//!
//! May use: [`crate::engine_metrics`] and the leaf helper `redact`. Nothing else of the
//! host.

pub mod memory;
pub mod redis;

use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::engine_metrics::EngineMetric;

/// The cache as the host uses it; engines implement it.
pub trait CacheStore: Send + Sync {
    fn get<'a>(&'a self, module: &'a str, key: &'a str) -> BoxFuture<'a, Option<Vec<u8>>>;
    /// `ttl` `None`: the default TTL.
    fn set<'a>(
        &'a self,
        module: &'a str,
        key: &'a str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, ()>;
    fn delete<'a>(&'a self, module: &'a str, key: &'a str) -> BoxFuture<'a, ()>;
    /// What the engine counts about itself, for `/metrics`.
    fn metrics(&self) -> Vec<EngineMetric> {
        Vec::new()
    }
}
