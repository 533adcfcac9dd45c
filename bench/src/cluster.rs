//! Cluster mode (`harness cluster`): what crossing hosts costs, measured side by side,
//! and how far one registry goes.
//!
//! 1. A service call across hosts vs in-process: blog's premium read asks billing
//!    once per request; host X runs both, host A runs blog and host B billing (etcd
//!    registry). Route latency one request at a time on a keep-alive connection,
//!    alternating rounds.
//! 2. Events through NATS JetStream with two consumer hosts vs the in-process bus:
//!    the drain rate of a backlog (both consumers started on N waiting events), and
//!    publish → handler latency one event at a time (includes one `/metrics` poll).
//! 3. Scale by simulation in the real etcd: 1,000 simulated hosts with 10 services
//!    each; this process's directory syncs, follows changes, and picks providers.
//!
//! Every process is started here (etcd and nats-server on free ports) and killed on
//! drop. Every loop is bounded.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{free_port, keepalive_latencies, percentile};

use crate::ChildGuard as Proc;

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("modhost-cluster-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn wait_tcp(addr: SocketAddr, what: &str) {
    let until = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < until, "{what} did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn etcd() -> (Proc, SocketAddr) {
    let (client, peer) = (free_port(), free_port());
    let dir = scratch("etcd");
    let child = Command::new("etcd")
        .args(["--name", "bench", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &format!("http://{client}")])
        .args(["--advertise-client-urls", &format!("http://{client}")])
        .args(["--listen-peer-urls", &format!("http://{peer}")])
        .args(["--initial-advertise-peer-urls", &format!("http://{peer}")])
        .args(["--initial-cluster", &format!("bench=http://{peer}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcd (scripts/ensure-services.sh installs it)");
    let p = Proc { child, dir };
    wait_tcp(client, "etcd");
    (p, client)
}

fn nats() -> (Proc, SocketAddr) {
    let addr = free_port();
    let dir = scratch("nats");
    let child = Command::new("nats-server")
        .args([
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &addr.port().to_string(),
            "-sd",
        ])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server (scripts/ensure-services.sh installs it)");
    let p = Proc { child, dir };
    wait_tcp(addr, "nats-server");
    (p, addr)
}

/// A `modhost run` with the example modules `names`, ready.
struct Host {
    _proc: Proc,
    addr: SocketAddr,
    token: String,
}

fn host(bin: &Path, examples: &Path, tag: &str, names: &[&str], env: &[(&str, String)]) -> Host {
    let dir = scratch(tag);
    let modules = dir.join("modules");
    for name in names {
        let src = examples.join(name);
        let dst = modules.join(name);
        std::fs::create_dir_all(&dst).expect("module dir");
        for f in std::fs::read_dir(&src).expect("built example").flatten() {
            if f.path().is_dir() {
                let sub = dst.join(f.file_name());
                std::fs::create_dir_all(&sub).expect("dir");
                for g in std::fs::read_dir(f.path()).expect("dir").flatten() {
                    std::fs::copy(g.path(), sub.join(g.file_name())).expect("copy");
                }
            } else {
                std::fs::copy(f.path(), dst.join(f.file_name())).expect("copy");
            }
        }
    }
    let addr = free_port();
    let data = dir.join("data");
    let mut cmd = Command::new(bin);
    cmd.args(["run", "--modules"])
        .arg(&modules)
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", &addr.to_string()])
        .env("MODHOST_WATCH", "false")
        .env("MODHOST_HOST_ID", tag)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("start modhost");
    let proc = Proc { child, dir };
    let until = Instant::now() + Duration::from_secs(60);
    while request(addr, "GET", "/readyz", None, "").0 != 200 {
        assert!(Instant::now() < until, "host {tag} did not get ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let token = crate::isolation::admin_token(bin, &data);
    Host {
        _proc: proc,
        addr,
        token,
    }
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let _ = write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: x\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn premium_post(h: &Host) -> String {
    let (status, body) = request(
        h.addr,
        "POST",
        "/api/v1/blog/posts",
        Some(&h.token),
        r#"{"title":"Bench","premium":true}"#,
    );
    assert_eq!(status, 201, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("post JSON");
    format!("/api/v1/blog/posts/{}", v["id"])
}

fn subscribe(h: &Host) {
    let (status, body) = request(
        h.addr,
        "POST",
        "/api/v1/billing/subscriptions",
        Some(&h.token),
        r#"{"user_id":"console","plan":"pro"}"#,
    );
    assert_eq!(status, 201, "{body}");
}

fn handled(hosts: &[&Host]) -> u64 {
    hosts
        .iter()
        .map(|h| {
            let (_, text) = request(h.addr, "GET", "/metrics", None, "");
            text.lines()
                .find_map(|l| l.strip_prefix("modhost_events_handled_total "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

/// Section 1: a service call across hosts vs in-process.
fn calls(bin: &Path, examples: &Path, etcd: SocketAddr, n: usize) {
    let registry = [
        ("MODHOST_REGISTRY_URL", format!("etcd://{etcd}")),
        ("MODHOST_CLUSTER_NAME", "calls".to_string()),
    ];
    let x = host(bin, examples, "x", &["billing", "blog"], &[]);
    let b = host(bin, examples, "b", &["billing"], &registry);
    let a = host(bin, examples, "a", &["blog"], &registry);
    subscribe(&x);
    subscribe(&b);
    let (px, pa) = (premium_post(&x), premium_post(&a));
    let until = Instant::now() + Duration::from_secs(20);
    while request(a.addr, "GET", &pa, Some(&a.token), "").0 != 200 {
        assert!(Instant::now() < until, "host a never reached billing on b");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (mut local, mut remote) = (Vec::new(), Vec::new());
    keepalive_latencies(x.addr, &px, Some(&x.token), 200, &mut Vec::new());
    keepalive_latencies(a.addr, &pa, Some(&a.token), 200, &mut Vec::new());
    for _ in 0..5 {
        keepalive_latencies(x.addr, &px, Some(&x.token), n / 5, &mut local);
        keepalive_latencies(a.addr, &pa, Some(&a.token), n / 5, &mut remote);
    }
    let (l, r) = (sorted(local), sorted(remote));
    println!("### Service call across hosts vs in-process");
    println!();
    println!("blog's premium read (`GET /api/v1/blog/posts/{{id}}`, the post cached) asks `billing.subscription.get` once per request. Host X runs blog and billing; host A runs blog and calls billing on host B (gRPC over loopback, found in etcd). {n} requests per host in 5 alternating rounds, one at a time on a keep-alive connection.");
    println!();
    println!("| | in-process (X) | across hosts (A → B) | added |");
    println!("|---|---|---|---|");
    for (label, q) in [("p50", 0.5), ("p99", 0.99)] {
        let (lv, rv) = (percentile(&l, q), percentile(&r, q));
        println!(
            "| {label} | {lv:.0} µs | {rv:.0} µs | **{:.0} µs** |",
            rv - lv
        );
    }
    println!();
    drop((a, b, x));
}

/// A broker's figures: drain rate of a backlog with two consumer hosts, publish rate,
/// publish → handled latencies (ms).
struct BrokerRun {
    drain: f64,
    publish: f64,
    latency: Vec<f64>,
}

/// Section 2, for one broker (`url`): a backlog of `n` events drained by two consumer
/// hosts, then `samples` events one at a time.
fn through_broker(
    bin: &Path,
    examples: &Path,
    etcd: SocketAddr,
    url: &str,
    tag: &str,
    n: usize,
    samples: usize,
) -> BrokerRun {
    let env = [
        ("MODHOST_REGISTRY_URL", format!("etcd://{etcd}")),
        ("MODHOST_EVENT_BUS_URL", url.to_string()),
        ("MODHOST_CLUSTER_NAME", format!("events-{tag}")),
    ];
    let p = host(
        bin,
        examples,
        &format!("{tag}-p"),
        &["billing", "blog"],
        &env,
    );
    // The consumers exist (durable), then stop (gracefully: a Kafka consumer leaves
    // its group); the backlog waits in the broker.
    for name in ["c", "d"] {
        let mut h = host(
            bin,
            examples,
            &format!("{tag}-{name}"),
            &["notifications"],
            &env,
        );
        h._proc.terminate();
    }
    let published = Instant::now();
    for i in 0..n {
        post(&p, i);
    }
    let publish = n as f64 / published.elapsed().as_secs_f64();
    let c = host(
        bin,
        examples,
        &format!("{tag}-c2"),
        &["notifications"],
        &env,
    );
    let d = host(
        bin,
        examples,
        &format!("{tag}-d2"),
        &["notifications"],
        &env,
    );
    let started = Instant::now();
    let until = started + Duration::from_secs(300);
    while handled(&[&c, &d]) < n as u64 {
        assert!(
            Instant::now() < until,
            "the backlog did not drain through {tag}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let drain = n as f64 / started.elapsed().as_secs_f64();
    let latency = one_at_a_time(&p, &[&c, &d], n, samples);
    BrokerRun {
        drain,
        publish,
        latency,
    }
}

fn post(h: &Host, i: usize) {
    let body = format!(r#"{{"title":"event {i}"}}"#);
    let (status, text) = request(h.addr, "POST", "/api/v1/blog/posts", Some(&h.token), &body);
    assert_eq!(status, 201, "{text}");
}

/// Publish → handled, one event at a time, in ms (sorted).
fn one_at_a_time(publisher: &Host, consumers: &[&Host], from: usize, samples: usize) -> Vec<f64> {
    let mut latency = Vec::new();
    for i in 0..samples {
        let before = handled(consumers);
        let t = Instant::now();
        post(publisher, from + i);
        while handled(consumers) <= before {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "an event was not handled"
            );
        }
        latency.push(t.elapsed().as_secs_f64() * 1e3);
    }
    sorted(latency)
}

/// The noida-db server binary (the Kafka-protocol broker the tests use), if installed.
fn noida_binary() -> Option<String> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import noida_db, os; print(os.path.join(os.path.dirname(noida_db.__file__), 'noida-db'))",
        ])
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && Path::new(&path).is_file()).then_some(path)
}

fn kafka() -> Option<(Proc, SocketAddr)> {
    let binary = noida_binary()?;
    let addr = free_port();
    let dir = scratch("kafka");
    let child = Command::new(binary)
        .args([
            "start",
            "--only",
            "kafka",
            "--kafka-port",
            &addr.port().to_string(),
            "--data-dir",
        ])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let p = Proc { child, dir };
    wait_tcp(addr, "noida-db");
    Some((p, addr))
}

/// Section 2: events through JetStream and Kafka with two consumer hosts vs in-process.
fn events(
    bin: &Path,
    examples: &Path,
    etcd: SocketAddr,
    nats: SocketAddr,
    n: usize,
    samples: usize,
) {
    let js = through_broker(
        bin,
        examples,
        etcd,
        &format!("nats://{nats}"),
        "js",
        n,
        samples,
    );
    let kafka = kafka().map(|(broker, addr)| {
        let run = through_broker(
            bin,
            examples,
            etcd,
            &format!("kafka://{addr}"),
            "kafka",
            n,
            samples,
        );
        drop(broker);
        run
    });

    // The same on one embedded host.
    let q = host(
        bin,
        examples,
        "q",
        &["billing", "blog", "notifications"],
        &[],
    );
    let t = Instant::now();
    for i in 0..n {
        post(&q, i);
    }
    let until = Instant::now() + Duration::from_secs(120);
    while handled(&[&q]) < n as u64 {
        assert!(Instant::now() < until, "in-process events not handled");
        std::thread::sleep(Duration::from_millis(5));
    }
    let inproc_rate = n as f64 / t.elapsed().as_secs_f64();
    let mem = one_at_a_time(&q, &[&q], n, samples);
    println!("### Events: NATS JetStream and Kafka with two consumer hosts vs in-process");
    println!();
    println!("blog publishes `blog.post.created` for each post; notifications handles it (an insert in its own SQLite file). Brokers: {n} events published while both consumer hosts were stopped, then both started: the drain rate is {n} / (time from both ready to all handled). In-process: one host with the three modules, {n} posts then all handled. Latency: one post at a time, from the POST to the handled counter moving ({samples} samples; the figure includes the POST's own time and one `/metrics` poll per host). Kafka is noida-db 0.2.3 (a Kafka-protocol broker), not Apache Kafka.");
    println!();
    println!("| | events/s | publish → handled p50 | p99 | publishing (posts/s) |");
    println!("|---|---|---|---|---|");
    let row = |label: &str, r: &BrokerRun| {
        println!(
            "| {label} | {:.0} | {:.2} ms | {:.2} ms | {:.0} |",
            r.drain,
            percentile(&r.latency, 0.5),
            percentile(&r.latency, 0.99),
            r.publish
        );
    };
    row("JetStream, 2 consumer hosts (drain)", &js);
    match &kafka {
        Some(k) => row("Kafka, 2 consumer hosts (drain)", k),
        None => println!("| Kafka | not measured: noida-db is not installed (scripts/ensure-services.sh) | | | |"),
    }
    println!(
        "| in-process (publish and handle) | {inproc_rate:.0} | {:.2} ms | {:.2} ms | — |",
        percentile(&mem, 0.5),
        percentile(&mem, 0.99)
    );
    println!();
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn sim_record(i: usize, services: usize) -> modhost::cluster::record::HostRecord {
    modhost::cluster::record::HostRecord {
        host_id: format!("sim-{i}"),
        address: format!("10.0.{}.{}:7070", i / 250, i % 250 + 1),
        http: String::new(),
        modhost: "0.1.0".into(),
        modules: vec![modhost::cluster::record::ModuleRecord {
            name: format!("svc{i}"),
            version: "1.0.0".into(),
            state: "started".into(),
            services: (0..services).map(|s| format!("svc{i}.op{s}")).collect(),
        }],
    }
}

/// Section 3: 1,000 simulated hosts and 10,000 services in the real etcd.
fn scale(etcd: SocketAddr, hosts: usize, per_host: usize, changes: usize) {
    use modhost::cluster::{directory::Directory, etcd::EtcdRegistry};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let endpoint = format!("http://{etcd}");
        let mut client = etcd_client::Client::connect([endpoint.as_str()], None)
            .await
            .expect("etcd");
        let lease = client.lease_grant(600, None).await.expect("lease").id();
        let seeded = Instant::now();
        let mut bytes = 0;
        for i in 0..hosts {
            let value = serde_json::to_vec(&sim_record(i, per_host)).expect("json");
            bytes += value.len();
            client
                .put(
                    format!("sim/hosts/sim-{i}"),
                    value,
                    Some(etcd_client::PutOptions::new().with_lease(lease)),
                )
                .await
                .expect("put");
        }
        let seed_time = seeded.elapsed();
        let before = rss_kib();
        let directory = Arc::new(Directory::new("observer"));
        let own = modhost::cluster::record::HostRecord {
            host_id: "observer".into(),
            address: "127.0.0.1:1".into(),
            http: String::new(),
            modhost: "0.1.0".into(),
            modules: Vec::new(),
        };
        let started = Instant::now();
        let registry = EtcdRegistry::start(
            vec![endpoint.clone()],
            "sim",
            "observer",
            Duration::from_secs(5),
            directory.clone(),
            Arc::new(move || own.clone()),
        );
        let until = Instant::now() + Duration::from_secs(60);
        while directory.hosts().len() < hosts + 1 {
            assert!(Instant::now() < until, "the directory did not sync");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let sync = started.elapsed();
        let after = rss_kib();
        let providers = directory.provider_count();
        let mut lags = Vec::new();
        for k in 0..changes {
            let mut changed = directory.subscribe();
            changed.borrow_and_update();
            let value = serde_json::to_vec(&sim_record(hosts + k, per_host)).expect("json");
            let t = Instant::now();
            client
                .put(format!("sim/hosts/sim-{}", hosts + k), value, Some(etcd_client::PutOptions::new().with_lease(lease)))
                .await
                .expect("put");
            let id = format!("sim-{}", hosts + k);
            while !directory.hosts().iter().any(|h| h.host_id == id) {
                let _ = tokio::time::timeout(Duration::from_secs(5), changed.changed()).await;
                assert!(t.elapsed() < Duration::from_secs(10), "a change did not arrive");
            }
            lags.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let lags = sorted(lags);
        let picks = 2000;
        let t = Instant::now();
        for i in 0..picks {
            let service = format!("svc{}.op{}", i % hosts, i % per_host);
            assert_eq!(directory
                    .in_turn(&service, &format!("svc{}", i % hosts), None)
                    .len(), 1);
        }
        let pick = t.elapsed().as_secs_f64() * 1e6 / picks as f64;
        registry.leave().await;
        println!("### Scale by simulation: {hosts} hosts, {} services in etcd", hosts * per_host);
        println!();
        println!("{hosts} simulated host records (one module with {per_host} services each, {} KiB of JSON in all) written to a real etcd 3.4 in {:.1} s, then one directory (the code a host runs) started against it in this process.", bytes / 1024, seed_time.as_secs_f64());
        println!();
        println!("| measure | figure |");
        println!("|---|---|");
        println!("| start-up sync (connect, lease, read all {hosts} records, parse) | {:.0} ms |", sync.as_secs_f64() * 1e3);
        println!("| a change reaching the watching directory, p50 / p99 ({changes} puts) | {:.2} / {:.2} ms |", percentile(&lags, 0.5), percentile(&lags, 0.99));
        println!("| memory of the directory (RSS growth) per known provider | {:.0} bytes ({providers} providers, {} KiB) |", (after.saturating_sub(before) * 1024) as f64 / providers.max(1) as f64, after.saturating_sub(before));
        println!("| picking the providers of one service (scan of every record) | {pick:.0} µs |");
        println!();
    });
}

/// Prints the cluster section of `bench/RESULTS.md`.
pub fn run(bin: &Path, examples: &Path, calls_n: usize, events_n: usize, sim_hosts: usize) {
    let (_etcd, etcd_addr) = etcd();
    let (_nats, nats_addr) = nats();
    calls(bin, examples, etcd_addr, calls_n);
    events(bin, examples, etcd_addr, nats_addr, events_n, 100);
    scale(etcd_addr, sim_hosts, 10, 50);
}
