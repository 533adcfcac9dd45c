//! # modhost
//!
//! The host that loads modules shipped as native shared libraries. The `modhost` binary
//! is a thin shell over [`cli`]; everything else is here, one concept per module:
//! [`manifest`] (module.yaml), [`discovery`] (module folders), [`resolve`] (dependency
//! order), [`loader`] (abi_stable loading), [`lifecycle`] (boot and shutdown),
//! [`reload`] and [`watch`] (hot reload), [`router`] and [`server`] (HTTP), [`admin`] and [`metrics`] (operations),
//! [`database`], [`db_handle`] and [`migrations`] (per-module data), [`core`] (auth,
//! identity, authz, audit), [`permissions`] and [`enforce`] (access control),
//! [`events`], [`cache`] and [`services`] (between modules), [`openapi`], [`config`]
//! and [`logging`].

pub mod admin;
pub mod cache;
pub mod cli;
pub mod config;
pub mod core;
pub mod database;
pub mod db_handle;
pub mod discovery;
pub mod enforce;
pub mod events;
pub mod host_handle;
pub mod inspect;
pub mod library_file;
pub mod lifecycle;
pub mod loader;
pub mod logging;
pub mod manifest;
pub mod metrics;
pub mod migrations;
pub mod openapi;
pub mod permissions;
pub mod random;
pub mod reload;
pub mod resolve;
pub mod router;
pub mod server;
pub mod services;
pub mod signing;
pub mod watch;

pub use lifecycle::Host;
