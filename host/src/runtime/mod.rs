//! The running host: **init → serve → reload** for the modules the pipeline in
//! `module/` found and loaded.
//!
//! - [`lifecycle`]: the [`Host`](lifecycle::Host), its module entries and states, boot
//!   (init and start in dependency order) and shutdown (stop in reverse order);
//! - [`module_handle`]: the handle each module gets in `init`, through which it reaches
//!   the database, events, cache, services and core;
//! - [`platform`]: what a module handle needs from the host, as a trait, so that the
//!   handle does not depend on the host that owns it;
//! - [`reload`] and [`watch`]: hot reload, drop-in and removal on a running host;
//! - [`workers`]: isolated modules: their instances, and crash, restart and give-up.
//!
//! May use: `module/`, `data/`, `routes/`, the ports (`events/`, `cache/`, `services/`),
//! `core/`, `isolation/` and `config`. Must not use `http/`: the HTTP layer calls into the runtime,
//! never the reverse.

pub mod lifecycle;
pub(crate) mod module_handle;
pub(crate) mod platform;
pub mod reload;
pub(crate) mod watch;
pub(crate) mod workers;
