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

/// A child process (and its scratch directory) killed and removed on drop.
pub struct ChildGuard {
    pub child: std::process::Child,
    pub dir: std::path::PathBuf,
}

impl ChildGuard {
    /// Stops the process with SIGTERM (a graceful stop: a Kafka consumer leaves its
    /// group) and waits up to 30 s, then kills it.
    pub fn terminate(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Microseconds of each of `n` sequential GETs of `path` on one keep-alive connection.
pub fn keepalive_latencies(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
    n: usize,
    into: &mut Vec<f64>,
) {
    use std::io::{BufRead, Read, Write};
    let stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = std::io::BufReader::new(stream);
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nhost: bench\r\n{auth}\r\n");
    for _ in 0..n {
        let started = std::time::Instant::now();
        writer.write_all(request.as_bytes()).expect("send");
        let mut length = 0;
        let mut status = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("read");
            if status.is_empty() {
                status = line.clone();
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().expect("length");
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).expect("body");
        assert!(status.contains(" 200 "), "GET {path}: {status}");
        into.push(started.elapsed().as_secs_f64() * 1e6);
    }
}

pub mod cluster;
pub mod core_rpc;
pub mod instructions;
pub mod isolation;
