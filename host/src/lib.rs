//! # modhost
//!
//! The host that loads modules shipped as native shared libraries. The `modhost` binary
//! parses its command line and calls [`app`], which holds what each command does. The
//! folders follow the pipeline a module goes through:
//!
//! - [`package`]: before the pipeline, module packages: `modhost package` (vendors) and
//!   `modhost install` (operators);
//! - [`module`]: **find → check → resolve → load** (manifests, discovery, library
//!   checks, signatures, dependency order, abi_stable loading);
//! - [`runtime`]: **init → serve → reload** (the running [`Host`], module handles,
//!   hot reload, the folder watcher);
//! - [`http`]: the HTTP server, authorization, operations endpoints, OpenAPI;
//! - [`routes`]: the route table and request metrics, filled by the runtime and read by
//!   the HTTP layer;
//! - [`data`]: per-module databases, migrations and the module database handle;
//! - the ports, each a trait with its engines beside it: [`events`], [`cache`],
//!   [`services`];
//! - [`isolation`]: modules in worker processes of their own (`modhost worker`), behind
//!   the same `FfiModule` the runtime runs;
//! - [`cluster`]: several hosts on etcd, calls between them (gRPC), this host's place
//!   in the cluster (the NATS and Redis engines live beside their ports);
//! - [`core`]: the core services (auth, identity, authz, audit);
//! - [`wire`]: the wire protocol (gRPC from `proto/`) and `modhost core`'s server;
//! - [`config`], [`logging`], [`hex`], [`random`], [`trace`], `redact` and
//!   `engine_metrics` are shared by all of them.
//!
//! Dependencies point one way: `http` → `runtime` → `module`, `data`, `routes` and the
//! ports; none of those uses `runtime` or `http`. `docs/architecture.md` draws it.

pub mod app;
pub(crate) mod cache;
pub mod cluster;
pub mod config;
pub mod core;
pub(crate) mod data;
pub(crate) mod engine_metrics;
pub mod events;
pub(crate) mod hex;
pub(crate) mod http;
pub mod isolation;
pub mod logging;
pub mod module;
pub mod package;
pub(crate) mod random;
pub(crate) mod redact;
pub mod routes;
pub mod runtime;
pub mod services;
pub mod trace;
pub mod wire;

pub use runtime::lifecycle::Host;
