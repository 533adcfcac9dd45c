//! Serving: the HTTP server and everything a request meets on its way to a handler.
//!
//! - [`server`]: accept, route (core API, module routes, operations), read the body,
//!   call the module's handler across the FFI boundary, answer; graceful shutdown;
//! - [`enforce`]: authorization on every route (401, 403, audited);
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`, `/admin/*`;
//! - [`openapi`]: the document served at `/openapi.json`;
//! - [`respond`]: the JSON answers they all share.
//!
//! May use: `runtime/`, `routes/`, `core/` and `config`. Nothing outside `http/` (but
//! the CLI that starts the server) uses it.

pub mod admin;
pub mod enforce;
pub mod openapi;
pub mod respond;
pub mod server;
