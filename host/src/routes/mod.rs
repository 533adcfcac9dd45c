//! Module routes, shared by the runtime (which fills the table as modules start, stop
//! and reload) and the HTTP layer (which looks requests up in it).
//!
//! - [`pattern`]: route patterns and the one matcher for core and module routes;
//! - [`table`]: module routes, their validation and request matching;
//! - [`metrics`]: per-route counters and per-module latency, kept across table swaps.
//!
//! May use: the plugin API's handler type. Must not use `runtime/` or `http/`.

pub(crate) mod metrics;
pub(crate) mod pattern;
pub mod table;
