//! Isolated modules (`isolation = "process"`): a module whose code segfaults, aborts,
//! overflows its stack, allocates without bound or spins takes down only its worker
//! process. The other modules keep serving (a load loop sees no failed request), the
//! module comes back after a restart, and a crash loop ends `failed` with its reason.
//! The same crash in-process takes the whole host down, as documented.

mod common;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use common::{HostProcess, Modules};
use serde_json::Value;

/// Worker settings for fast, bounded tests.
const FAST: &[(&str, &str)] = &[
    ("MODHOST_WORKER_RESTART_BACKOFF", "50ms"),
    ("MODHOST_WORKER_MAX_RESTARTS", "10"),
    ("MODHOST_WORKER_MEMORY_LIMIT", "268435456"),
    ("MODHOST_REQUEST_TIMEOUT", "2s"),
];

const ISOLATED: &str = "isolation: process\n";

/// Requests to `path` on another thread until stopped; counts answers and failures.
struct LoadLoop {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl LoadLoop {
    fn start(host: &HostProcess, path: &str) -> LoadLoop {
        let (stop, ok) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (addr, token, path) = (host.addr, host.token.clone(), path.to_string());
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let thread = std::thread::spawn(move || {
            let auth = format!("Bearer {token}");
            // Bounded: at most 20,000 requests even if nobody stops it.
            for _ in 0..20_000 {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let r = common::http(addr, "GET", &path, &[("authorization", &auth)], b"");
                match r.status {
                    200 => {
                        o.fetch_add(1, Ordering::SeqCst);
                    }
                    other => f.lock().unwrap().push(format!("{other}: {}", r.text())),
                }
            }
        });
        LoadLoop {
            stop,
            ok,
            failed,
            thread: Some(thread),
        }
    }

    /// Stops the loop; returns (answered, failures).
    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("load loop");
        }
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.lock().unwrap().clone(),
        )
    }
}

impl Drop for LoadLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Polls `/admin/modules` until `check` holds for `module` (or panics after `limit`).
fn wait_module(
    host: &HostProcess,
    module: &str,
    limit: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let until = Instant::now() + limit;
    loop {
        let m = host.module(module);
        if check(&m) {
            return m;
        }
        assert!(
            Instant::now() < until,
            "module {module} never got there: {m:#}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn started_with_restarts(n: u64) -> impl Fn(&Value) -> bool {
    move |m: &Value| m["state"] == "started" && m["restarts"].as_u64() == Some(n)
}

#[test]
fn every_kind_of_crash_is_contained_and_the_module_comes_back() {
    let m = Modules::new();
    m.add_example("hello");
    m.add_faulty("crashy", "ok", ISOLATED);
    let host = HostProcess::start(&m, FAST, &[]);
    let before = wait_module(
        &host,
        "crashy",
        Duration::from_secs(10),
        started_with_restarts(0),
    );
    assert_eq!(before["isolation"], "process");
    assert_ne!(before["worker_pid"].as_u64().unwrap_or(0), 0, "{before:#}");
    assert_eq!(host.module("hello")["isolation"], "in-process");

    let cases = [
        ("segfault", "signal 11 (SIGSEGV"),
        ("abort", "signal 6 (SIGABRT"),
        ("stack", "SIG"),
        ("alloc", "SIG"),
        ("spin", "did not answer within 2s"),
    ];
    for (n, (how, reason)) in cases.iter().enumerate() {
        let pid_before = host.module("crashy")["worker_pid"].clone();
        let load = LoadLoop::start(&host, "/api/v1/hello/greet/load");
        let crash = host.get(&format!("/api/v1/crashy/crash/{how}"));
        assert!(
            matches!(crash.status, 503 | 504),
            "{how}: the crashing request gets 503 or 504, got {} {}",
            crash.status,
            crash.text()
        );
        let after = wait_module(
            &host,
            "crashy",
            Duration::from_secs(30),
            started_with_restarts(n as u64 + 1),
        );
        let back = host.get("/api/v1/crashy/ok");
        let (answered, failures) = load.finish();
        assert_eq!(
            back.status,
            200,
            "{how}: the module is back: {}",
            back.text()
        );
        assert!(
            failures.is_empty(),
            "{how}: hello failed during the crash: {failures:?}"
        );
        assert!(answered > 0, "{how}: the load loop ran");
        let exit = after["last_exit"].as_str().unwrap_or_default();
        assert!(
            exit.contains(reason),
            "{how}: last_exit {exit:?} should say {reason:?}"
        );
        assert_ne!(
            after["worker_pid"], pid_before,
            "{how}: a new worker process"
        );
        assert_eq!(after["crashes"].as_u64(), Some(n as u64 + 1));
    }
    let metrics = host.get("/metrics").text();
    assert!(
        metrics.contains("modhost_worker_crashes_total{module=\"crashy\"} 5"),
        "{metrics}"
    );
    let audit = host
        .get("/api/v1/audit?action=module.crash&limit=50")
        .json();
    let crashes = audit.as_array().map(Vec::len).unwrap_or_default();
    assert_eq!(crashes, 5, "every crash is audited: {audit:#}");
    let logs = host.logs();
    let crash_lines = common::messages_with(&logs, "module", "crashy")
        .into_iter()
        .filter(|l| l.contains("worker process crashed"))
        .count();
    assert_eq!(crash_lines, 5, "every crash is logged");
}

#[test]
fn while_a_worker_is_down_routes_answer_503_with_retry_after_and_calls_are_unavailable() {
    let m = Modules::new();
    m.add(
        "provider",
        "faulty",
        "name: provider\nversion: 1.0.0\nisolation: process\npermissions: [provider.probe.read, provider.probe.write]\nservices: [provider.thing.get]\nconfig:\n  mode: ok\n  provide: [provider.thing.get]\n",
    );
    m.add_faulty("caller", "ok", "dependencies:\n  provider: \"^1\"\n");
    let env = [
        ("MODHOST_WORKER_RESTART_BACKOFF", "3s"),
        ("MODHOST_REQUEST_TIMEOUT", "2s"),
    ];
    let host = HostProcess::start(&m, &env, &[]);
    assert_eq!(
        host.module("caller")["state"],
        "started",
        "{:#}",
        host.module("caller")
    );
    let call = |body: &str| host.request("POST", "/api/v1/caller/call", body.as_bytes());
    let ok = call(r#"{"service":"provider.thing.get","request":{"x":1}}"#);
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["caller"], "caller", "{}", ok.text());

    let crash = host.get("/api/v1/provider/crash/segfault");
    assert_eq!(crash.status, 503, "{}", crash.text());
    let down = host.get("/api/v1/provider/ok");
    assert_eq!(down.status, 503, "{}", down.text());
    assert_eq!(down.header("retry-after"), Some("1"));
    let failed = wait_module(&host, "provider", Duration::from_secs(5), |m| {
        m["state"] == "failed"
    });
    assert!(
        failed["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("SIGSEGV"),
        "{failed:#}"
    );
    let unavailable = call(r#"{"service":"provider.thing.get","request":{"x":1}}"#);
    assert!(
        unavailable.status == 422 && unavailable.json()["kind"] == "Unavailable",
        "a dependent sees the provider unavailable: {} {}",
        unavailable.status,
        unavailable.text()
    );
    // An operator's reload while the restart is pending replaces it at once.
    let reload = host.request("POST", "/admin/modules/provider/reload", b"");
    assert_eq!(reload.status, 200, "{}", reload.text());
    let back = host.module("provider");
    assert_eq!(back["state"], "started", "{back:#}");
    let again = call(r#"{"service":"provider.thing.get","request":{"x":2}}"#);
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(host.get("/api/v1/provider/ok").status, 200);
    let services = host.get("/admin/services").json();
    let listed = services.as_array().map(|s| {
        s.iter()
            .filter(|s| s["service"] == "provider.thing.get")
            .count()
    });
    assert_eq!(
        listed,
        Some(1),
        "one provider after the reload: {services:#}"
    );
}

#[test]
fn a_crash_loop_ends_failed_with_its_reason_until_reloaded() {
    let m = Modules::new();
    m.add_faulty("crashy", "ok", ISOLATED);
    let env = [
        ("MODHOST_WORKER_RESTART_BACKOFF", "20ms"),
        ("MODHOST_WORKER_MAX_RESTARTS", "2"),
    ];
    let host = HostProcess::start(&m, &env, &[]);
    for n in 0..3u64 {
        wait_module(
            &host,
            "crashy",
            Duration::from_secs(20),
            started_with_restarts(n),
        );
        host.get("/api/v1/crashy/crash/abort");
    }
    let failed = wait_module(&host, "crashy", Duration::from_secs(20), |m| {
        m["state"] == "failed" && m["worker_pid"].is_null()
    });
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("SIGABRT"), "{reason}");
    assert!(reason.contains("crashed 3 times"), "{reason}");
    // It stays failed: no restart is scheduled.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(host.module("crashy")["state"], "failed");
    assert_eq!(host.get("/api/v1/crashy/ok").status, 404);

    let reload = host.request("POST", "/admin/modules/crashy/reload", b"");
    assert_eq!(reload.status, 200, "{}", reload.text());
    assert_eq!(host.get("/api/v1/crashy/ok").status, 200);
}

#[test]
fn reloading_an_isolated_module_under_load_fails_no_request() {
    let m = Modules::new();
    m.add_faulty("crashy", "ok", ISOLATED);
    let host = HostProcess::start(&m, &[], &[]);
    let first = host.module("crashy")["worker_pid"].clone();
    let load = LoadLoop::start(&host, "/api/v1/crashy/ok");
    for _ in 0..3 {
        let r = host.request("POST", "/admin/modules/crashy/reload", b"");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let (answered, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "requests failed during reloads: {failures:?}"
    );
    assert!(answered > 0);
    let after = host.module("crashy");
    assert_ne!(after["worker_pid"], first, "a new worker serves");
    // The state hand-off works between workers: the hits counter goes across.
    let hits = || {
        host.get("/api/v1/crashy/ok").json()["hits"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = hits();
    assert!(before > 1, "{before}");
    let r = host.request("POST", "/admin/modules/crashy/reload", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(hits(), before + 1);
    // The old workers are gone: one worker process is left.
    let until = Instant::now() + Duration::from_secs(10);
    while workers_of(&m) != 1 {
        assert!(
            Instant::now() < until,
            "{} worker processes",
            workers_of(&m)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Worker processes running for the host of `m` (by their runtime paths).
fn workers_of(m: &Modules) -> usize {
    let data = m.data().display().to_string();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .filter(|c| c.contains(" worker --socket-dir "))
                .filter(|c| c.contains(&data))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn the_sandbox_keeps_an_isolated_module_out_of_other_files() {
    let m = Modules::new();
    m.add_faulty("boxed", "ok", ISOLATED);
    let other = m.add_faulty("open", "ok", "");
    let host = HostProcess::start(&m, &[], &[]);
    let sandbox = host.module("boxed")["worker_sandbox"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if !sandbox.contains("enforced") {
        println!("SKIP the_sandbox_keeps_an_isolated_module_out_of_other_files: {sandbox}");
        return;
    }
    let read = |module: &str, path: &std::path::Path| {
        let q = format!("/api/v1/{module}/fs?path={}", path.display());
        host.get(&q)
    };
    let own = m.dir().join("boxed").join("module.yaml");
    assert_eq!(read("boxed", &own).status, 200, "its own folder");
    let foreign = other.join("module.yaml");
    let core_db = m.data().join("db").join("core.sqlite");
    for path in [&foreign, &core_db] {
        let r = read("boxed", path);
        assert_eq!(
            r.status,
            403,
            "{} must be out of reach: {}",
            path.display(),
            r.text()
        );
        assert!(r.text().contains("ermission denied"), "{}", r.text());
        // In-process, nothing stops it (that is what isolation is for).
        assert_eq!(read("open", path).status, 200);
    }
    // It cannot signal the host (Landlock 6 scoping); in-process, nothing stops it.
    let host_pid = format!("/api/v1/{{}}/signal?pid={}", host.pid());
    let signal = |module: &str| host.get(&host_pid.replace("{}", module));
    let refused = signal("boxed");
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert_eq!(signal("open").status, 200);
    // Its own database works.
    let sql = host.request("POST", "/api/v1/boxed/tx", b"");
    assert_eq!(sql.status, 200, "{}", sql.text());
}

#[test]
fn the_same_crash_in_process_takes_the_host_down() {
    let m = Modules::new();
    m.add_example("hello");
    m.add_faulty("crashy", "ok", "");
    let host = HostProcess::start(&m, &[], &[]);
    // The connection breaks: there is no answer, and no host left to give one.
    let mut stream = std::net::TcpStream::connect(host.addr).expect("connect");
    let request = format!(
        "GET /api/v1/crashy/crash/segfault HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\nconnection: close\r\n\r\n",
        host.token
    );
    std::io::Write::write_all(&mut stream, request.as_bytes()).expect("send");
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stream, &mut answer);
    assert!(
        answer.is_empty(),
        "no answer: {}",
        String::from_utf8_lossy(&answer)
    );
    let (code, _) = host.wait_exit();
    assert_eq!(code, None, "the host was killed by a signal");
}

#[test]
fn events_published_while_a_subscriber_is_down_reach_it_after_its_restart() {
    let m = Modules::new();
    m.add_faulty(
        "source",
        "ok",
        "events:\n  publishes: [source.item.created]\n",
    );
    m.add(
        "sink",
        "faulty",
        "name: sink\nversion: 1.0.0\nisolation: process\npermissions: [sink.probe.read, sink.probe.write]\n\
         events:\n  subscribes: [source.item.created]\nconfig:\n  mode: ok\n  subscribe: [source.item.created]\n",
    );
    let env = [("MODHOST_WORKER_RESTART_BACKOFF", "1s")];
    let host = HostProcess::start(&m, &env, &[]);
    assert_eq!(host.get("/api/v1/sink/crash/abort").status, 503);
    wait_module(&host, "sink", Duration::from_secs(5), |m| {
        m["state"] == "failed"
    });
    let published = host.request(
        "POST",
        "/api/v1/source/publish",
        br#"{"topic":"source.item.created","count":5,"payload":"x"}"#,
    );
    assert_eq!(published.status, 200, "{}", published.text());
    wait_module(
        &host,
        "sink",
        Duration::from_secs(20),
        started_with_restarts(1),
    );
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let got = host.get("/api/v1/sink/events").json();
        let n = got.as_array().map(Vec::len).unwrap_or(0);
        if n == 5 {
            break;
        }
        assert!(
            Instant::now() < until,
            "sink received {n} of 5 events: {got}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let dead = host.get("/admin/dead-letters").json();
    assert_eq!(dead.as_array().map(Vec::len), Some(0), "{dead:#}");
}

#[test]
fn no_other_process_may_use_a_workers_sockets() {
    let m = Modules::new();
    m.add_faulty("boxed", "ok", ISOLATED);
    let host = HostProcess::start(&m, &[], &[]);
    let dir = m
        .data()
        .join("runtime")
        .join(host.pid().to_string())
        .join("workers")
        .join("boxed-0");
    for socket in ["host.sock", "worker.sock"] {
        let path = dir.join(socket);
        let mut stream = std::os::unix::net::UnixStream::connect(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        // The HTTP/2 preface and an empty SETTINGS frame: a gRPC client's first bytes.
        let _ = std::io::Write::write_all(
            &mut stream,
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
        );
        let mut answer = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stream, &mut answer);
        assert!(answer.is_empty(), "{socket} answered another process");
    }
    assert_eq!(
        host.get("/api/v1/boxed/ok").status,
        200,
        "the host's own calls still work"
    );
    let refused = host
        .logs()
        .iter()
        .filter(|l| {
            l.to_string()
                .contains("refused a connection to a worker socket")
        })
        .count();
    assert!(refused >= 1, "the refusal is logged");
}
