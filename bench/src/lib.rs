//! Shared pieces of the benchmarks: the greeting handler both servers answer with.

/// The body `GET /api/v1/hello/{greet|private}/{name}` answers, in both servers.
pub fn greeting_body(greeting: &str, name: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "message": format!("{greeting}, {name}!") }))
        .unwrap_or_default()
}

pub mod core_rpc;
pub mod instructions;
pub mod isolation;
