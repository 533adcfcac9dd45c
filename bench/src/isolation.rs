//! An isolated module vs the same module in-process (`harness isolation`): route latency
//! one request at a time on a keep-alive connection (p50, p99, side by side in
//! alternating rounds), instructions per request by callgrind (host and worker counted
//! together), and the resident memory of the host and of the worker across hot reloads.
//!
//! Both hosts run hello from the same folder copy, on their own data directories, on
//! loopback. Every loop is bounded.

use crate::{free_port, percentile};
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::instructions::{per_request, send_requests, Server};

const ROUTE: &str = "/api/v1/hello/greet/ada";

/// A host, killed and its data dir removed on drop.
struct Host {
    process: crate::ChildGuard,
    addr: SocketAddr,
}

fn start(bin: &Path, modules: &Path, isolation: &str, tag: &str) -> Host {
    let addr = free_port();
    let data = std::env::temp_dir().join(format!("modhost-iso-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let child = Command::new(bin)
        .args(["run", "--modules"])
        .arg(modules)
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", &addr.to_string()])
        .env("MODHOST_ISOLATION", isolation)
        .env("MODHOST_WATCH", "false")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start modhost");
    let host = Host {
        process: crate::ChildGuard { child, dir: data },
        addr,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(addr, "/readyz") != Some(200) {
        assert!(
            Instant::now() < deadline,
            "modhost ({isolation}) did not get ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    host
}

fn get(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    raw.split_whitespace().nth(1)?.parse().ok()
}

fn post(addr: SocketAddr, path: &str, token: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (status, raw)
}

/// Microseconds of each of `n` sequential requests to hello on one keep-alive connection.
fn latencies(addr: SocketAddr, n: usize, into: &mut Vec<f64>) {
    send_requests(addr, ROUTE, None, 200); // warm-up
    crate::keepalive_latencies(addr, ROUTE, None, n, into);
}

pub(crate) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

pub(crate) fn admin_token(bin: &Path, data: &Path) -> String {
    let out = Command::new(bin)
        .args(["admin", "token", "--ttl", "1h", "--data-dir"])
        .arg(data)
        .output()
        .expect("modhost admin token");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn worker_pid(addr: SocketAddr, token: &str) -> u32 {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET /admin/modules HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("[]");
    let modules: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    modules
        .as_array()
        .and_then(|a| a.iter().find(|m| m["name"] == "hello"))
        .and_then(|m| m["worker_pid"].as_u64())
        .map(|p| p as u32)
        .unwrap_or(0)
}

/// Prints the isolation section of `bench/RESULTS.md`.
pub fn run(bin: &Path, libhello: &Path, n: usize, reloads: usize, instructions_n: usize) {
    let modules = std::env::temp_dir().join(format!("modhost-iso-modules-{}", std::process::id()));
    let hello = modules.join("hello");
    std::fs::create_dir_all(&hello).expect("modules dir");
    let manifest = libhello.parent().expect("hello folder").join("module.yaml");
    std::fs::copy(&manifest, hello.join("module.yaml")).expect("manifest");
    std::fs::copy(libhello, hello.join(libhello.file_name().expect("name"))).expect("library");

    // Latency, alternating rounds.
    let inproc = start(bin, &modules, "in-process", "in");
    let isolated = start(bin, &modules, "process", "iso");
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        latencies(inproc.addr, n / 5, &mut a);
        latencies(isolated.addr, n / 5, &mut b);
    }
    a.sort_by(|x, y| x.total_cmp(y));
    b.sort_by(|x, y| x.total_cmp(y));
    let (a50, a99, b50, b99) = (
        percentile(&a, 0.5),
        percentile(&a, 0.99),
        percentile(&b, 0.5),
        percentile(&b, 0.99),
    );
    println!("Route latency, one request at a time on a keep-alive connection, {n} requests per host in 5 alternating rounds (hello's public greeting route). Goal: < 50 µs added at p50.");
    println!();
    println!("| | in-process | isolated | added |");
    println!("|---|---|---|---|");
    println!(
        "| p50 | {a50:.0} µs | {b50:.0} µs | **{:.0} µs** |",
        b50 - a50
    );
    println!("| p99 | {a99:.0} µs | {b99:.0} µs | {:.0} µs |", b99 - a99);
    println!();
    let verdict = if b50 - a50 < 50.0 { "met" } else { "missed" };
    println!("Goal < 50 µs added at p50: **{verdict}**.");
    println!();

    // Memory across reloads.
    println!("Resident memory across {reloads} hot reloads of hello (`POST /admin/modules/hello/reload`):");
    println!();
    println!("| | host RSS before → after | per reload | worker RSS (first → last worker) |");
    println!("|---|---|---|---|");
    for (label, host) in [("in-process", &inproc), ("isolated", &isolated)] {
        let token = admin_token(bin, &host.process.dir);
        let pid = host.process.child.id();
        let before = rss_kib(pid);
        let first_worker = rss_kib(worker_pid(host.addr, &token));
        for _ in 0..reloads {
            let (status, raw) = post(host.addr, "/admin/modules/hello/reload", &token);
            assert_eq!(status, 200, "reload: {raw}");
        }
        // Let freed memory settle before reading.
        std::thread::sleep(Duration::from_millis(300));
        let after = rss_kib(pid);
        let last_worker = rss_kib(worker_pid(host.addr, &token));
        let worker = match label {
            "isolated" => format!(
                "{:.1} → {:.1} MiB",
                first_worker as f64 / 1024.0,
                last_worker as f64 / 1024.0
            ),
            _ => "—".to_string(),
        };
        println!(
            "| {label} | {:.1} → {:.1} MiB | {:+.0} KiB | {worker} |",
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            (after as f64 - before as f64) / reloads as f64
        );
    }
    drop(inproc);
    drop(isolated);
    println!();

    // Instructions per request, host and worker together.
    let data = std::env::temp_dir().join(format!("modhost-iso-instr-{}", std::process::id()));
    let server = |label: &'static str, isolation: &str| Server {
        label,
        command: vec![
            bin.display().to_string(),
            "run".into(),
            "--modules".into(),
            modules.display().to_string(),
            "--data-dir".into(),
            data.join(label).display().to_string(),
            "--listen".into(),
            "{addr}".into(),
        ],
        env: vec![
            ("MODHOST_ISOLATION".into(), isolation.into()),
            ("MODHOST_WATCH".into(), "false".into()),
            ("RUST_LOG".into(), "warn".into()),
            // Callgrind writes its counts where the sandbox would refuse it, and needs
            // more address space than a worker is given by default.
            ("MODHOST_WORKER_LANDLOCK".into(), "false".into()),
            ("MODHOST_WORKER_MEMORY_LIMIT".into(), "none".into()),
        ],
        trace_children: true,
    };
    let inproc = per_request(&server("inproc", "in-process"), ROUTE, None, instructions_n);
    let isolated = per_request(&server("isolated", "process"), ROUTE, None, instructions_n);
    println!("Instructions per request (callgrind, {instructions_n} and {} keep-alive requests; host and worker processes summed):", 3 * instructions_n);
    println!();
    println!("| in-process | isolated | ratio |");
    println!("|---|---|---|");
    println!(
        "| {inproc:.0} | {isolated:.0} | **{:.2}×** |",
        isolated / inproc
    );
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_dir_all(&modules);
}
