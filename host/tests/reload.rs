//! Hot reload and drop-in deployment: real processes, real files, real HTTP.

mod common;

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::{lib_file, plugins, HostProcess, Modules};
use serde_json::Value;

const WATCH: &[(&str, &str)] = &[
    ("MODHOST_WATCH", "true"),
    ("MODHOST_WATCH_INTERVAL", "100ms"),
];

fn manifest(name: &str, version: &str, reply: &str, extra: &str) -> String {
    format!(
        "name: {name}\nversion: {version}\npermissions: [{name}.probe.read, {name}.probe.write]\n{extra}config:\n  reply: {reply}\n"
    )
}

/// Writes a file the way a careful deployer does: to a temp name, then a rename.
fn replace_file(path: &Path, bytes: &[u8]) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls `GET path` until `pred` holds on (status, json), or panics after 10 s.
fn eventually(
    host: &HostProcess,
    path: &str,
    what: &str,
    pred: impl Fn(u16, &Value) -> bool,
) -> Value {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let r = host.get(path);
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        if pred(r.status, &v) {
            return v;
        }
        assert!(
            Instant::now() < until,
            "{what}: last answer {} {}",
            r.status,
            r.text()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn dropping_a_folder_in_starts_the_module() {
    let m = Modules::new();
    m.add_example("hello");
    let host = HostProcess::start(&m, WATCH, &[]);
    assert_eq!(host.get("/api/v1/late/ok").status, 404);
    // Assemble the folder elsewhere, then move it in (as an operator would).
    let staging = m.tmp.path().join("staging-late");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(
        staging.join("module.yaml"),
        manifest("late", "1.0.0", "hello", ""),
    )
    .unwrap();
    std::fs::copy(
        plugins().join(lib_file("faulty")),
        staging.join(lib_file("faulty")),
    )
    .unwrap();
    let dropped = Instant::now();
    std::fs::rename(&staging, m.dir().join("late")).unwrap();
    eventually(
        &host,
        "/api/v1/late/ok",
        "the dropped-in module answers",
        |s, v| s == 200 && v["reply"] == "hello",
    );
    let took = dropped.elapsed();
    assert!(took < Duration::from_secs(5), "drop-in took {took:?}");
    assert_eq!(host.module("late")["state"], "started");
}

#[test]
fn replacing_v1_with_v2_switches_and_hands_over_state() {
    let m = Modules::new();
    let dir = m.add("svc", "faulty", &manifest("svc", "1.0.0", "v1", ""));
    let host = HostProcess::start(&m, WATCH, &[]);
    for _ in 0..3 {
        assert_eq!(host.get("/api/v1/svc/ok").json()["reply"], "v1");
    }
    let old_runtime = host.module("svc")["runtime_path"]
        .as_str()
        .unwrap()
        .to_string();
    // A rebuilt library replaces the old one by rename, then the manifest changes.
    let lib = std::fs::read(plugins().join(lib_file("faulty"))).unwrap();
    replace_file(&dir.join(lib_file("faulty")), &lib);
    replace_file(
        &dir.join("module.yaml"),
        manifest("svc", "2.0.0", "v2", "").as_bytes(),
    );
    let v = eventually(&host, "/api/v1/svc/ok", "v2 answers", |_, v| {
        v["reply"] == "v2"
    });
    assert!(
        v["hits"].as_u64().unwrap() >= 4,
        "the hit count was handed over: {v}"
    );
    let state = host.module("svc");
    assert_eq!(state["version"], "2.0.0");
    assert!(state["last_reload_error"].is_null());
    // Removed once the old instance has drained and stopped, just after the switch.
    let until = Instant::now() + Duration::from_secs(5);
    while Path::new(&old_runtime).exists() {
        assert!(
            Instant::now() < until,
            "the old runtime copy is removed from disk"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn a_bad_v2_leaves_v1_serving() {
    let m = Modules::new();
    let dir = m.add("svc", "faulty", &manifest("svc", "1.0.0", "v1", ""));
    m.add(
        "user",
        "faulty",
        &manifest("user", "1.0.0", "u", "dependencies:\n  svc: \"^1\"\n"),
    );
    let host = HostProcess::start(&m, &[("MODHOST_WATCH", "false")], &[]);
    let reload = || host.request("POST", "/admin/modules/svc/reload", b"");

    // A library that is not one.
    replace_file(&dir.join(lib_file("faulty")), b"not a library at all\n");
    let r = reload();
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("not a loadable shared library"));
    assert_eq!(host.get("/api/v1/svc/ok").json()["reply"], "v1");
    let state = host.module("svc");
    assert_eq!(state["state"], "started");
    assert!(
        state["last_reload_error"]
            .as_str()
            .unwrap()
            .contains("looks like a text file"),
        "{state}"
    );

    // A v2 whose init fails.
    std::fs::copy(
        plugins().join(lib_file("faulty")),
        dir.join(lib_file("faulty")),
    )
    .unwrap();
    let broken =
        manifest("svc", "1.1.0", "v2", "").replace("config:\n", "config:\n  mode: init_error\n");
    replace_file(&dir.join("module.yaml"), broken.as_bytes());
    let r = reload();
    assert_eq!(r.status, 409);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("configured to fail in init"));
    assert_eq!(host.get("/api/v1/svc/ok").json()["reply"], "v1");

    // A v2 that breaks a dependent's version requirement.
    replace_file(
        &dir.join("module.yaml"),
        manifest("svc", "2.0.0", "v2", "").as_bytes(),
    );
    let r = reload();
    assert_eq!(r.status, 409);
    let why = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        why.contains("version 2.0.0 does not satisfy `user`, which requires `svc` ^1"),
        "{why}"
    );
    assert_eq!(host.get("/api/v1/svc/ok").json()["reply"], "v1");
    assert_eq!(host.get("/api/v1/user/ok").status, 200);

    let audit = host
        .get("/api/v1/audit?action=module.reload&outcome=failure")
        .json();
    assert_eq!(audit.as_array().unwrap().len(), 3, "{audit}");
}

#[test]
fn removing_a_dependency_stops_dependents_until_it_returns() {
    let m = Modules::new();
    let base = m.add("base", "faulty", &manifest("base", "1.0.0", "b", ""));
    m.add(
        "top",
        "faulty",
        &manifest("top", "1.0.0", "t", "dependencies:\n  base: \"^1\"\n"),
    );
    m.add_example("hello");
    let host = HostProcess::start(&m, WATCH, &[]);
    assert_eq!(host.get("/api/v1/top/ok").status, 200);
    let parked = m.tmp.path().join("parked-base");
    std::fs::rename(&base, &parked).unwrap();
    eventually(&host, "/api/v1/base/ok", "base is gone", |s, _| s == 404);
    eventually(&host, "/api/v1/top/ok", "top stopped with it", |s, _| {
        s == 404
    });
    let top = host.module("top");
    assert_eq!(top["state"], "stopped");
    assert!(
        top["reason"]
            .as_str()
            .unwrap()
            .contains("dependency `base` was removed"),
        "{top}"
    );
    let until = Instant::now() + Duration::from_secs(5);
    while !host.module("base").is_null() {
        assert!(Instant::now() < until, "base left /admin/modules");
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(
        host.get("/api/v1/hello/greet/x").status,
        200,
        "others keep serving"
    );

    std::fs::rename(&parked, &base).unwrap();
    eventually(&host, "/api/v1/base/ok", "base is back", |s, _| s == 200);
    eventually(&host, "/api/v1/top/ok", "top is back", |s, _| s == 200);
}

#[test]
fn twenty_reloads_under_load_lose_no_request() {
    let m = Modules::new();
    let dir = m.add("svc", "faulty", &manifest("svc", "1.0.0", "v1", ""));
    let host = Arc::new(HostProcess::start(&m, &[("MODHOST_WATCH", "false")], &[]));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (host, stop, ok, bad) = (host.clone(), stop.clone(), ok.clone(), bad.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut failures = Vec::new();
            // Bounded: stops when told, after 60 s, or after 200,000 requests.
            for _ in 0..200_000 {
                if stop.load(Ordering::SeqCst) || started.elapsed() > Duration::from_secs(60) {
                    break;
                }
                let r = host.get("/api/v1/svc/ok");
                let reply = serde_json::from_slice::<Value>(&r.body)
                    .ok()
                    .and_then(|v| v["reply"].as_str().map(str::to_string));
                match (r.status, reply.as_deref()) {
                    (200, Some("v1" | "v2")) => ok.fetch_add(1, Ordering::SeqCst),
                    _ => {
                        failures.push(format!("{} {}", r.status, r.text()));
                        bad.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
            failures
        })
    };
    let mut after_last_reload = 0;
    for i in 0..20 {
        let (version, reply) = if i % 2 == 0 {
            ("2.0.0", "v2")
        } else {
            ("1.0.0", "v1")
        };
        replace_file(
            &dir.join("module.yaml"),
            manifest("svc", version, reply, "").as_bytes(),
        );
        let r = host.request("POST", "/admin/modules/svc/reload", b"");
        assert_eq!(r.status, 200, "reload {i}: {}", r.text());
        assert_eq!(r.json()["version"], version);
        after_last_reload = ok.load(Ordering::SeqCst);
    }
    // The load keeps going after the last switch: wait for requests served by it.
    let until = Instant::now() + Duration::from_secs(10);
    while ok.load(Ordering::SeqCst) < after_last_reload + 20 {
        assert!(
            Instant::now() < until,
            "no requests answered after the last reload"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::SeqCst);
    let failures = load.join().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed requests, e.g. {:?}",
        failures.len(),
        failures.first()
    );
    assert_eq!(bad.load(Ordering::SeqCst), 0);
    assert!(
        ok.load(Ordering::SeqCst) > 20,
        "the load ran during the reloads"
    );
    assert_eq!(host.get("/api/v1/svc/ok").json()["reply"], "v1");
}
