//! Instructions per request, counted by callgrind: a server runs under
//! `valgrind --tool=callgrind`, answers N and then 3N keep-alive requests in two runs,
//! and one request costs (total(3N) − total(N)) / 2N user-space instructions, so start-up
//! and shutdown cancel out. The count does not depend on how busy the machine is.

use crate::free_port;
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// One server to measure.
pub struct Server<'a> {
    pub label: &'a str,
    /// The program and its arguments; `{addr}` is replaced by the listen address.
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Also count the processes it starts (an isolated module's worker): each gets its
    /// own callgrind file, and the totals are summed.
    pub trace_children: bool,
}

/// A process killed when dropped, so a failed measurement leaves nothing running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `n` GETs of `path` on one keep-alive connection; every answer must be 200.
pub fn send_requests(addr: SocketAddr, path: &str, token: Option<&str>, n: usize) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    let request = format!("GET {path} HTTP/1.1\r\nhost: bench\r\n{auth}\r\n");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    for i in 0..n {
        stream.write_all(request.as_bytes()).expect("send");
        let (head_end, length) = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                assert!(head.starts_with("http/1.1 200"), "request {i}: {head}");
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .expect("content-length");
                break (end + 4, length);
            }
            let got = stream.read(&mut chunk).expect("read");
            assert!(got > 0, "the server closed the connection");
            buf.extend_from_slice(&chunk[..got]);
        };
        while buf.len() < head_end + length {
            let got = stream.read(&mut chunk).expect("read body");
            assert!(got > 0, "the server closed the connection");
            buf.extend_from_slice(&chunk[..got]);
        }
        buf.drain(..head_end + length);
    }
}

/// Where a run's stderr (valgrind's and the server's) goes, for a failed measurement.
fn log_file(dir: &Path, label: &str, n: usize) -> Stdio {
    match std::fs::File::create(dir.join(format!("{label}.{n}.log"))) {
        Ok(file) => Stdio::from(file),
        Err(_) => Stdio::null(),
    }
}

/// The status of `GET /readyz`, if the server answers.
fn readyz(addr: SocketAddr) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    s.write_all(b"GET /readyz HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n")
        .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    raw.split_whitespace().nth(1)?.parse().ok()
}

/// Total instructions of one run of `server` answering `n` requests.
fn run_once(server: &Server, path: &str, token: Option<&str>, n: usize, dir: &Path) -> u64 {
    let addr = free_port();
    let prefix = format!("callgrind.{}.{n}.", server.label);
    let out: PathBuf = dir.join(format!("{prefix}%p.out"));
    let mut cmd = Command::new("valgrind");
    cmd.args([
        "--tool=callgrind",
        "--dump-instr=no",
        "--compress-strings=no",
    ])
    .arg(format!(
        "--trace-children={}",
        if server.trace_children { "yes" } else { "no" }
    ))
    .arg(format!("--callgrind-out-file={}", out.display()));
    for arg in &server.command {
        cmd.arg(arg.replace("{addr}", &addr.to_string()));
    }
    cmd.envs(server.env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(log_file(dir, server.label, n));
    let mut child = Running(
        cmd.spawn()
            .expect("run valgrind (apt-get install valgrind)"),
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    // Serving starts before the modules are: wait until /readyz stops answering 503
    // (the baseline has no /readyz and answers 404 at once).
    while readyz(addr).is_none_or(|status| status == 503) {
        assert!(Instant::now() < deadline, "{} did not start", server.label);
        std::thread::sleep(Duration::from_millis(100));
    }
    send_requests(addr, path, token, n);
    // SIGINT: a graceful exit, after which callgrind writes its totals.
    let pid = child.0.id().to_string();
    let _ = Command::new("kill").args(["-INT", &pid]).status();
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.0.try_wait().ok().flatten().is_none() {
        assert!(Instant::now() < deadline, "{} did not exit", server.label);
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("callgrind outputs") {
        let path = entry.expect("an output").path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if !name.is_some_and(|n| n.starts_with(&prefix)) {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("callgrind output");
        total += text
            .lines()
            .find_map(|l| {
                l.strip_prefix("summary:")
                    .or_else(|| l.strip_prefix("totals:"))
            })
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .expect("callgrind totals");
    }
    total
}

/// Instructions per request of `server` on `path`.
pub fn per_request(server: &Server, path: &str, token: Option<&str>, n: usize) -> f64 {
    let dir = std::env::temp_dir().join(format!("modhost-callgrind-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let small = run_once(server, path, token, n, &dir);
    let large = run_once(server, path, token, 3 * n, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    (large as f64 - small as f64) / (2 * n) as f64
}
