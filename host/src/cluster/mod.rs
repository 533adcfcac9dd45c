//! Cluster mode: several hosts on real distributed engines (docs/scale-out.md).
//!
//! - [`settings`]: the engines' URLs and this host's identity in the cluster;
//! - [`host_id`]: the host's id, generated once and kept in its data dir;
//! - [`record`]: what a host announces about itself (address, modules, services);
//! - [`directory`]: every host's record, as the registry last reported it, and the
//!   providers of a service, in turn;
//! - [`etcd`]: the etcd engine of the registry (announce under a lease, watch);
//! - [`node`]: this host in its cluster: calls to other hosts, `/admin/cluster`;
//! - [`peer_server`] and [`peer_client`]: module-to-module calls between hosts, the
//!   module protocol over TCP;
//!
//! The event bus and cache engines live beside their ports (`events/nats.rs`,
//! `events/kafka.rs`, `cache/redis.rs`). Each engine is used only when its URL is set; without any, the
//! host is the embedded single-process host.
//!
//! The W3C `traceparent` a request carries from host to host is [`crate::trace`].
//!
//! A Consul engine would replace [`etcd`] alone: a session per host with a TTL check
//! in place of the lease, the record as a KV entry under that session, and a blocking
//! query on the prefix in place of the watch.
//!
//! May use: `services`, `isolation::convert` (the wire's user type), `wire`, `trace`,
//! and the leaf helpers `hex` and `random`.
//! Must not use the runtime or HTTP layers: the runtime drives this module.

pub mod directory;
pub mod etcd;
pub mod host_id;
pub mod node;
pub mod peer_client;
pub mod peer_server;
pub mod record;
pub mod settings;
