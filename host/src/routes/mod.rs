//! Module routes, shared by the runtime (which fills the table as modules start, stop
//! and reload) and the HTTP layer (which looks requests up in it).
//!
//! - [`table`]: route patterns, their validation and request matching;
//! - [`metrics`]: per-route counters and per-module latency, kept across table swaps.
//!
//! May use: the plugin API's handler type. Must not use `runtime/` or `http/`.

pub mod metrics;
pub mod table;
