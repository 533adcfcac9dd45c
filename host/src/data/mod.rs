//! Per-module data: the databases behind the embedded default (one SQLite file per
//! module) and PostgreSQL (one schema and role per module).
//!
//! - [`database`]: choosing the backend, connecting with retry, one isolated area per
//!   module and one for the core;
//! - [`migrations`]: a module's `migrations/` folder, checked and applied in order;
//! - [`db_handle`]: the database handle a module uses (the host side of `FfiDatabase`).
//!
//! May use: `random` and `hex`. Must not use `runtime/`, `http/` or `core/`.

pub mod database;
pub mod db_handle;
pub mod migrations;
