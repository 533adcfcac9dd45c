//! Serving: the HTTP server and everything a request meets on its way to a handler.
//!
//! - [`server`]: accept connections, graceful shutdown;
//! - [`pipeline`]: the order every request follows: route, authorize, read the body,
//!   run the handler, answer;
//! - [`routing`]: which destination (core endpoint, module route, operations endpoint)
//!   and which access;
//! - [`enforce`]: authorization (401, 403, audited);
//! - [`body`]: the request body within its size and time limits;
//! - [`module_call`]: the module handler called across the FFI boundary, with its
//!   in-flight count, metrics, timeout and response checks;
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`, `/admin/*`;
//! - [`openapi`]: the document served at `/openapi.json`;
//! - [`respond`]: the JSON answers they all share.
//!
//! May use: `runtime/`, `routes/`, `core/` and `config`. Nothing outside `http/` (but
//! the CLI that starts the server) uses it.

pub mod admin;
pub mod body;
pub mod enforce;
pub mod module_call;
pub mod openapi;
pub mod pipeline;
pub mod respond;
pub mod routing;
pub mod server;
