//! Shared pieces of the benchmarks: the greeting handler both servers answer with.

/// The body `GET /api/v1/hello/{greet|private}/{name}` answers, in both servers.
pub fn greeting_body(greeting: &str, name: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "message": format!("{greeting}, {name}!") }))
        .unwrap_or_default()
}

/// A free TCP port on 127.0.0.1 (bound, then released for the server to take).
pub fn free_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("its address")
}

/// The `p` quantile (0 to 1) of sorted values; NaN when there are none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub mod core_rpc;
pub mod instructions;
pub mod isolation;
