//! Measurements that need whole processes, printed as markdown table rows:
//!
//!   harness http BASELINE_ADDR MODHOST_ADDR TOKEN SECONDS ROUNDS CONNECTIONS
//!   harness startup MODHOST_BIN LIBHELLO COUNT[,COUNT...]
//!   harness reload MODHOST_BIN LIBHELLO RELOADS default|poll:MS
//!   harness instructions MODHOST_BIN BASELINE_BIN MODULES_DIR KEY_HEX TOKEN N
//!   harness core MODHOST_BIN N SECONDS
//!   harness isolation MODHOST_BIN LIBHELLO N RELOADS INSTRUCTIONS_N
//!
//! `reload` runs the host with the default watcher (file-system events) or the polling
//! fallback every MS milliseconds. `instructions` counts instructions per request with
//! callgrind (see `modhost_bench::instructions`).
//!
//! `http` runs wrk (it must be on PATH) against both servers, alternating, with the same
//! connections and duration. Every loop here is bounded and targets 127.0.0.1 only.

use modhost_bench::{free_port, percentile};
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.split_whitespace().nth(1)?.parse().ok()?;
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// (requests/s, p50 ms, p99 ms) from wrk's `--latency` output.
fn wrk(url: &str, token: Option<&str>, seconds: u32, connections: u32) -> (f64, f64, f64) {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t2",
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("run wrk (install it: apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let ms = |v: &str| -> f64 {
        let (num, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap_or(v.len()));
        let n: f64 = num.parse().unwrap_or(f64::NAN);
        match unit {
            "us" => n / 1000.0,
            "s" => n * 1000.0,
            _ => n,
        }
    };
    let mut rps = f64::NAN;
    let (mut p50, mut p99) = (f64::NAN, f64::NAN);
    let mut non2xx = 0u64;
    for line in text.lines() {
        let l = line.trim();
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().unwrap_or(f64::NAN);
        } else if let Some(v) = l.strip_prefix("50%") {
            p50 = ms(v.trim());
        } else if let Some(v) = l.strip_prefix("99%") {
            p99 = ms(v.trim());
        } else if let Some(v) = l.strip_prefix("Non-2xx or 3xx responses:") {
            non2xx = v.trim().parse().unwrap_or(0);
        }
    }
    assert_eq!(non2xx, 0, "wrk saw error responses from {url}:\n{text}");
    (rps, p50, p99)
}

fn http(args: &[String]) {
    let [baseline, modhost, token, seconds, rounds, connections] = args else {
        panic!("usage: harness http BASELINE_ADDR MODHOST_ADDR TOKEN SECONDS ROUNDS CONNECTIONS");
    };
    let seconds: u32 = seconds.parse().expect("seconds");
    let rounds: u32 = rounds.parse().expect("rounds");
    let connections: u32 = connections.parse().expect("connections");
    for (label, path, auth) in [
        ("public route, no auth", "greet", false),
        ("full authz (valid token)", "private", true),
    ] {
        let mut base = Vec::new();
        let mut host = Vec::new();
        for _ in 0..rounds {
            let t = auth.then_some(token.as_str());
            base.push(wrk(
                &format!("http://{baseline}/api/v1/hello/{path}/ada"),
                t,
                seconds,
                connections,
            ));
            host.push(wrk(
                &format!("http://{modhost}/api/v1/hello/{path}/ada"),
                t,
                seconds,
                connections,
            ));
        }
        let mean = |v: &[(f64, f64, f64)], f: fn(&(f64, f64, f64)) -> f64| {
            v.iter().map(f).sum::<f64>() / v.len() as f64
        };
        let (b_rps, h_rps) = (mean(&base, |x| x.0), mean(&host, |x| x.0));
        println!(
            "| {label} | {b_rps:.0} | {:.2} / {:.2} | {h_rps:.0} | {:.2} / {:.2} | **{:.3}** |",
            mean(&base, |x| x.1),
            mean(&base, |x| x.2),
            mean(&host, |x| x.1),
            mean(&host, |x| x.2),
            h_rps / b_rps
        );
    }
}

fn spawn_host(
    bin: &str,
    modules: &Path,
    data: &Path,
    addr: SocketAddr,
    extra_env: &[(&str, String)],
) -> Child {
    let mut cmd = Command::new(bin);
    cmd.args(["run", "--modules"])
        .arg(modules)
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", &addr.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn modhost")
}

fn wait_ready(addr: SocketAddr, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Some((200, _)) = get(addr, "/readyz") {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    None
}

fn hello_copy(dir: &Path, name: &str, lib: &Path, deps: &[String], greeting: &str) {
    std::fs::create_dir_all(dir).expect("dir");
    let deps = if deps.is_empty() {
        String::new()
    } else {
        format!(
            "dependencies:\n{}",
            deps.iter()
                .map(|d| format!("  {d}: \">=1.0\"\n"))
                .collect::<String>()
        )
    };
    let manifest = format!(
        "name: {name}\nversion: 1.0.0\n{deps}permissions: [{name}.greeting.read]\npublic_routes: [\"GET /api/v1/{name}/greet/{{name}}\"]\nconfig:\n  greeting: {greeting}\n"
    );
    std::fs::write(dir.join("module.yaml"), manifest).expect("manifest");
    std::fs::copy(lib, dir.join("libhello.so")).expect("library");
}

fn startup(args: &[String]) {
    let [bin, lib, counts] = args else {
        panic!("usage: harness startup MODHOST_BIN LIBHELLO COUNT[,COUNT...]");
    };
    for n in counts
        .split(',')
        .map(|c| c.parse::<usize>().expect("count"))
    {
        let tmp = std::env::temp_dir().join(format!("modhost-startup-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15 ^ n as u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..n {
            let deps: Vec<String> = if i == 0 {
                vec![]
            } else {
                (0..rand() % 3)
                    .map(|_| format!("m{:04}", rand() as usize % i))
                    .collect()
            };
            let mut deps = deps;
            deps.sort();
            deps.dedup();
            hello_copy(
                &tmp.join(format!("m{i:04}")),
                &format!("m{i:04}"),
                Path::new(lib),
                &deps,
                "Hello",
            );
        }
        let mut times = Vec::new();
        for run in 0..3 {
            let addr = free_port();
            let data = tmp.join(format!("data{run}"));
            let mut child =
                spawn_host(bin, &tmp, &data, addr, &[("MODHOST_WATCH", "false".into())]);
            let t = wait_ready(addr, Duration::from_secs(120));
            let _ = child.kill();
            let _ = child.wait();
            times.push(t.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0));
        }
        times.sort_by(f64::total_cmp);
        println!(
            "| {n} | {:.0} | {:.0} | {:.0} |",
            times[0], times[1], times[2]
        );
        let _ = std::fs::remove_dir_all(&tmp);
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_string)
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn reload(args: &[String]) {
    let [bin, lib, reloads, mode] = args else {
        panic!("usage: harness reload MODHOST_BIN LIBHELLO RELOADS default|poll:MS");
    };
    let reloads: usize = reloads.parse().expect("reloads");
    let tmp = std::env::temp_dir().join(format!("modhost-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let modules = tmp.join("modules");
    let dir: PathBuf = modules.join("svc");
    hello_copy(&dir, "svc", Path::new(lib), &[], "v0");
    let addr = free_port();
    let mut env = vec![("MODHOST_WATCH", "true".to_string())];
    let label = match mode.strip_prefix("poll:") {
        Some(ms) => {
            env.push(("MODHOST_WATCH_MODE", "poll".to_string()));
            env.push(("MODHOST_WATCH_INTERVAL", format!("{ms}ms")));
            format!("polling every {ms} ms")
        }
        None => "default settings (events, 50 ms settle)".to_string(),
    };
    let mut child = spawn_host(bin, &modules, &tmp.join("data"), addr, &env);
    wait_ready(addr, Duration::from_secs(60)).expect("modhost ready");
    // Warm up: the first response.
    get(addr, "/api/v1/svc/greet/x").expect("first response");
    let rss_before = rss_kib(child.id());
    let library = std::fs::read(lib).expect("library");
    let lib_size = library.len();
    let mut latencies = Vec::new();
    for i in 1..=reloads {
        // Stage the new build next to the old one, then rename both into place.
        let greeting = format!("v{i}");
        let manifest = std::fs::read_to_string(dir.join("module.yaml"))
            .expect("manifest")
            .replace(
                &format!("greeting: v{}", i - 1),
                &format!("greeting: {greeting}"),
            );
        std::fs::write(dir.join(".module.yaml.tmp"), manifest).expect("stage manifest");
        std::fs::write(dir.join(".libhello.so.tmp"), &library).expect("stage library");
        let t0 = Instant::now();
        std::fs::rename(dir.join(".libhello.so.tmp"), dir.join("libhello.so"))
            .expect("rename library");
        std::fs::rename(dir.join(".module.yaml.tmp"), dir.join("module.yaml"))
            .expect("rename manifest");
        let want = format!("\"{greeting}, x!\"");
        loop {
            if let Some((200, body)) = get(addr, "/api/v1/svc/greet/x") {
                if body.contains(&want) {
                    break;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "reload {i} did not take effect"
            );
            std::thread::sleep(Duration::from_micros(500));
        }
        latencies.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss_after = rss_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    latencies.sort_by(f64::total_cmp);
    let growth = (rss_after.saturating_sub(rss_before)) as f64 / reloads as f64 / 1024.0;
    println!(
        "| {reloads} reloads, {label} | {:.0} | {:.0} | {:.0} | {:.2} MiB | {:.2} MiB | {:.1} → {:.1} MiB |",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN),
        growth,
        lib_size as f64 / 1024.0 / 1024.0,
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

fn instructions(args: &[String]) {
    use modhost_bench::instructions::{per_request, Server};
    let [modhost, baseline, modules, key, token, n] = args else {
        panic!("usage: harness instructions MODHOST_BIN BASELINE_BIN MODULES_DIR KEY_HEX TOKEN N");
    };
    let n: usize = n.parse().expect("N");
    let data = std::env::temp_dir().join(format!("modhost-instr-data-{}", std::process::id()));
    let host = Server {
        label: "modhost",
        command: [modhost.as_str(), "run", "--modules", modules, "--data-dir"]
            .iter()
            .map(|s| s.to_string())
            .chain([
                data.display().to_string(),
                "--listen".into(),
                "{addr}".into(),
            ])
            .collect(),
        env: vec![
            ("MODHOST_AUTH_SIGNING_SEED".into(), key.clone()),
            ("MODHOST_WATCH".into(), "false".into()),
            ("RUST_LOG".into(), "warn".into()),
        ],
        trace_children: false,
    };
    let plain = Server {
        label: "baseline",
        command: vec![baseline.clone(), "{addr}".into(), key.clone()],
        env: Vec::new(),
        trace_children: false,
    };
    for (label, path, auth, target) in [
        ("public route", "/api/v1/hello/greet/ada", None, 1.25),
        (
            "private route, console token",
            "/api/v1/hello/private/ada",
            Some(token.as_str()),
            1.10,
        ),
    ] {
        let b = per_request(&plain, path, auth, n);
        let h = per_request(&host, path, auth, n);
        let ratio = h / b;
        let verdict = if ratio <= target { "met" } else { "missed" };
        println!("| {label} | {h:.0} | {b:.0} | **{ratio:.2}×** | ≤ {target:.2}× | {verdict} |");
    }
    let _ = std::fs::remove_dir_all(&data);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("http") => http(&args[1..]),
        Some("startup") => startup(&args[1..]),
        Some("reload") => reload(&args[1..]),
        Some("instructions") => instructions(&args[1..]),
        Some("isolation") => {
            let [bin, libhello, n, reloads, instr] = &args[1..] else {
                panic!("usage: harness isolation MODHOST_BIN LIBHELLO N RELOADS INSTRUCTIONS_N");
            };
            let parse = |v: &String| v.parse::<usize>().expect("a number");
            modhost_bench::isolation::run(
                Path::new(bin),
                Path::new(libhello),
                parse(n),
                parse(reloads),
                parse(instr),
            );
        }
        Some("cluster") => {
            let [bin, examples, calls, events, hosts] = &args[1..] else {
                panic!("usage: harness cluster MODHOST_BIN EXAMPLES_DIR CALLS EVENTS SIM_HOSTS");
            };
            let parse = |v: &String| v.parse::<usize>().expect("a number");
            modhost_bench::cluster::run(
                Path::new(bin),
                Path::new(examples),
                parse(calls),
                parse(events),
                parse(hosts),
            );
        }
        Some("core") => {
            let bin = PathBuf::from(args.get(1).expect("harness core MODHOST_BIN N SECONDS"));
            let n = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(2000);
            let seconds = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(5);
            modhost_bench::core_rpc::run(&bin, n, seconds);
        }
        _ => {
            eprintln!("usage: harness http|startup|reload ... (see the source's doc comment)");
            std::process::exit(2);
        }
    }
}
