//! The cache port: the [`CacheStore`] interface every engine implements. Engines live
//! beside it, one file each: [`memory`] is the embedded engine (moka). Keys are
//! namespaced by module inside the host, so a module can neither read nor overwrite
//! another module's keys, whatever the engine.
//!
//! Scale-out mapping (Redis, a later issue): key `modhost:<module>:<key>`, `SET PX ttl`,
//! `GET`, `DEL`; the namespace is added by the host exactly as in the embedded engine.
//!
//! May use: nothing else of the host.

pub mod memory;

use std::time::Duration;

/// The cache as the host uses it; engines implement it.
pub trait CacheStore: Send + Sync {
    fn get(&self, module: &str, key: &str) -> Option<Vec<u8>>;
    /// `ttl` `None`: the default TTL.
    fn set(&self, module: &str, key: &str, value: Vec<u8>, ttl: Option<Duration>);
    fn delete(&self, module: &str, key: &str);
}
