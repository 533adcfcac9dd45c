//! Cluster mode: several hosts on real distributed engines (docs/scale-out.md).
//!
//! - [`settings`]: the engines' URLs and this host's identity in the cluster;
//! - [`host_id`]: the host's id, generated once and kept in its data dir;
//! - [`record`]: what a host announces about itself (address, modules, services);
//! - [`directory`]: every host's record, as the registry last reported it, and the
//!   providers of a service, in turn;
//! - [`etcd`]: the etcd engine of the registry (announce under a lease, watch);
//! - [`peer_server`] and [`peer_client`]: module-to-module calls between hosts, the
//!   module protocol over TCP;
//! - [`trace`]: the W3C `traceparent` a request carries from host to host.
//!
//! The event bus and cache engines live beside their ports (`events/nats.rs`,
//! `cache/redis.rs`). Each engine is used only when its URL is set; without any, the
//! host is the embedded single-process host.
//!
//! May use: `services`, `events`, `wire`, `config`-free leaf modules. Must not use the
//! runtime or HTTP layers: the runtime drives this module, not the other way round.

pub mod settings;
