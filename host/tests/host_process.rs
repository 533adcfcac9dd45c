//! End-to-end tests: the real `modhost` binary loads real plugin libraries and serves
//! real HTTP over loopback.

mod common;

use std::time::Duration;

use common::{messages_with, HostProcess, Mode, Modules};

fn examples() -> Modules {
    let m = Modules::new();
    for name in ["hello", "blog", "billing", "notifications"] {
        m.add_example(name);
    }
    m
}

#[test]
fn example_modules_load_in_order_and_serve_routes() {
    let m = examples();
    let host = HostProcess::start(&m, &[], &[]);

    let resp = host.get("/api/v1/hello/greet/ada");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["message"], "Hello, ada!");

    // Config from the manifest reaches the module; percent-decoding of params.
    let resp = host.get("/api/v1/hello/greet/grace%20hopper");
    assert_eq!(resp.json()["message"], "Hello, grace hopper!");

    let resp = host.get("/api/v1/billing/plans");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()[1]["id"], "pro");

    // Load order: dependencies first, ties by name.
    let modules = host.get("/admin/modules").json();
    let order: Vec<(&str, u64)> = modules
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap(),
                m["load_order"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        order,
        vec![
            ("billing", 0),
            ("blog", 1),
            ("hello", 2),
            ("notifications", 3)
        ]
    );
    let notif = host.module("notifications");
    assert_eq!(notif["state"], "started");
    assert_eq!(notif["dependencies"]["blog"]["requirement"], ">=1.0, <2");
    assert!(notif["routes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["permission"] == "notifications.status.read"));
    assert!(notif["load_time_ms"].as_f64().unwrap() > 0.0);
    assert!(notif["runtime_path"].as_str().unwrap().contains("runtime"));

    // The startup log names every module with version, order and routes.
    let logs = host.logs();
    let loaded: Vec<_> = logs
        .iter()
        .filter(|v| v["message"] == "module loaded")
        .map(|v| {
            (
                v["module"].as_str().unwrap().to_string(),
                v["order"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(loaded.len(), 4, "{logs:?}");
    let hello = logs
        .iter()
        .find(|v| v["message"] == "module loaded" && v["module"] == "hello")
        .unwrap();
    assert_eq!(hello["version"], "1.0.0");
    assert!(hello["routes"]
        .as_str()
        .unwrap()
        .contains("/api/v1/hello/greet/{name}"));

    // The plugin's own tracing events reach the host's log, tagged with the module.
    assert!(
        messages_with(&logs, "module", "hello").contains(&"hello module initialised".to_string()),
        "{logs:?}"
    );
}

#[test]
fn blog_json_routes_validate_input() {
    let m = examples();
    let host = HostProcess::start(&m, &[], &[]);
    let created = host.request(
        "POST",
        "/api/v1/blog/posts",
        br#"{"title":"First","body":"hi"}"#,
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_u64().unwrap();
    let got = host.get(&format!("/api/v1/blog/posts/{id}"));
    assert_eq!(got.json()["title"], "First");
    assert_eq!(host.get("/api/v1/blog/posts/999").status, 404);
    let bad = host.request("POST", "/api/v1/blog/posts", b"{not json");
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"]
        .as_str()
        .unwrap()
        .contains("invalid JSON"));
    let empty_title = host.request("POST", "/api/v1/blog/posts", br#"{"title":""}"#);
    assert_eq!(empty_title.status, 400);
    assert_eq!(
        host.get("/api/v1/blog/posts")
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn operations_endpoints() {
    let m = examples();
    let host = HostProcess::start(&m, &[], &[]);
    assert_eq!(host.get("/healthz").status, 200);
    assert_eq!(host.get("/readyz").status, 200);
    host.get("/api/v1/hello/greet/x");
    let metrics = host.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    let text = metrics.text();
    for needle in [
        "modhost_requests_total{module=\"hello\",method=\"GET\",route=\"/api/v1/hello/greet/{name}\"} 1",
        "modhost_request_duration_seconds_count{module=\"hello\"} 1",
        "modhost_module_state{module=\"blog\",state=\"started\"} 1",
        "modhost_module_load_seconds{module=\"notifications\"}",
        "modhost_handler_panics_total",
        "modhost_request_errors_total",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    let missing = host.get("/api/v1/hello/nope");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"], "no such route");
    let wrong_method = host.request("DELETE", "/api/v1/hello/greet/x", b"");
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.header("allow"), Some("GET"));
}

fn failing_inits_fail_only_their_module_and_dependents(mode: Mode) {
    let m = Modules::new();
    m.add_faulty("good", "ok", "");
    m.add_faulty("erring", "init_error", "");
    m.add_faulty("panicky", "init_panic", "");
    m.add_faulty("hanging", "init_hang", "");
    m.add_faulty("outsider", "bad_route", "");
    m.add_faulty("twice", "conflict", "");
    m.add_faulty("dependent", "ok", "dependencies:\n  erring: \"^1\"\n");
    let host = HostProcess::start(&m, &[("MODHOST_INIT_TIMEOUT", "1s"), mode.env()], &[]);

    assert_eq!(host.get("/api/v1/good/ok").status, 200);
    let reason = |name: &str| {
        host.module(name)["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(host.module("good")["state"], "started");
    assert!(
        reason("erring").contains("configured to fail in init"),
        "{}",
        reason("erring")
    );
    assert!(
        reason("panicky").contains("it panicked"),
        "{}",
        reason("panicky")
    );
    assert!(
        reason("panicky").contains("configured to panic in init"),
        "{}",
        reason("panicky")
    );
    assert!(
        reason("hanging").contains("did not finish within 1s"),
        "{}",
        reason("hanging")
    );
    assert!(
        reason("outsider").contains("outside the module's namespace"),
        "{}",
        reason("outsider")
    );
    assert!(
        reason("twice").contains("conflicts with GET /api/v1/twice/items/{id}"),
        "{}",
        reason("twice")
    );
    assert!(
        reason("dependent")
            .contains("dependency `erring` failed: init failed: configured to fail in init"),
        "{}",
        reason("dependent")
    );
    // A failed module has no routes.
    assert_eq!(host.get("/api/v1/dependent/ok").status, 404);
    assert_eq!(host.get("/api/v1/outsider/ok").status, 404);
}

fn handler_panic_gives_500_and_host_keeps_serving(mode: Mode) {
    let m = Modules::new();
    m.add_faulty("probe", "ok", "");
    let host = HostProcess::start(&m, &[("MODHOST_REQUEST_TIMEOUT", "500ms"), mode.env()], &[]);
    for _ in 0..3 {
        let resp = host.get("/api/v1/probe/boom");
        assert_eq!(resp.status, 500);
        assert!(resp.json()["error"].is_string());
        assert_eq!(host.get("/api/v1/probe/ok").status, 200);
    }
    let hang = host.get("/api/v1/probe/hang");
    assert_eq!(hang.status, 504);
    let metrics = host.get("/metrics").text();
    assert!(metrics.contains("modhost_handler_panics_total{module=\"probe\",method=\"GET\",route=\"/api/v1/probe/boom\"} 3"), "{metrics}");
    assert!(metrics.contains("modhost_handler_timeouts_total{module=\"probe\",method=\"GET\",route=\"/api/v1/probe/hang\"} 1"), "{metrics}");
    let logs = host.logs();
    assert!(
        messages_with(&logs, "module", "probe")
            .iter()
            .any(|m| m.contains("handler configured to panic")),
        "the plugin's panic message reaches the host log: {logs:?}"
    );
}

/// A POST to `path` with a `transfer-encoding: chunked` body (no content-length).
fn post_chunked(host: &HostProcess, path: &str, chunks: &[&[u8]]) -> common::HttpResponse {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        host.token
    )
    .into_bytes();
    for chunk in chunks {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    common::http_raw(host.addr, &raw)
}

#[test]
fn chunked_body_over_the_limit_gets_413_without_a_content_length() {
    let m = Modules::new();
    m.add_faulty("probe", "ok", "");
    let host = HostProcess::start(&m, &[("MODHOST_MAX_BODY_BYTES", "1024")], &[]);
    // Under the limit, a chunked body reaches the handler whole.
    let small = post_chunked(
        &host,
        "/api/v1/probe/echo",
        &[&[b'a'; 400][..], &[b'b'; 400][..]],
    );
    assert_eq!(small.status, 200, "{small:?}");
    assert_eq!(small.body, [[b'a'; 400], [b'b'; 400]].concat());
    // Over it, with no length declared up front: refused while streaming.
    let chunk = [b'c'; 1000];
    let big = post_chunked(&host, "/api/v1/probe/echo", &[&chunk[..]; 5]);
    assert_eq!(big.status, 413, "{big:?}");
    assert_eq!(
        big.json()["error"],
        "request body is over the 1024-byte limit",
        "{}",
        big.text()
    );
    // One byte over is enough.
    let just_over = post_chunked(&host, "/api/v1/probe/echo", &[&[b'd'; 1024][..], &b"e"[..]]);
    assert_eq!(just_over.status, 413, "{just_over:?}");
    assert_eq!(host.get("/api/v1/probe/ok").status, 200);
}

#[test]
fn body_limit_gives_413() {
    let m = Modules::new();
    m.add_faulty("probe", "ok", "");
    let host = HostProcess::start(&m, &[("MODHOST_MAX_BODY_BYTES", "1024")], &[]);
    let small = host.request("POST", "/api/v1/probe/echo", &[b'a'; 1000]);
    assert_eq!(small.status, 200);
    assert_eq!(small.body.len(), 1000);
    let big = host.request("POST", "/api/v1/probe/echo", &[b'a'; 5000]);
    assert_eq!(big.status, 413);
}

#[test]
fn sigterm_stops_modules_in_reverse_order_and_exits_0() {
    let m = examples();
    let host = HostProcess::start(&m, &[], &[]);
    assert_eq!(host.get("/readyz").status, 200);
    let (code, logs) = host.terminate();
    assert_eq!(code, Some(0));
    let stopped: Vec<&str> = logs
        .iter()
        .filter(|v| v["message"] == "module stopped")
        .map(|v| v["module"].as_str().unwrap())
        .collect();
    assert_eq!(stopped, vec!["notifications", "hello", "blog", "billing"]);
    // The plugin's stop hook ran (its log is forwarded) before the host exited.
    assert!(messages_with(&logs, "module", "notifications")
        .contains(&"notifications stopping".to_string()));
}

#[test]
fn incompatible_plugin_api_is_refused_with_a_short_message() {
    let m = Modules::new();
    let dir = m.dir().join("mismatch");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("module.yaml"), "name: mismatch\nversion: 1.0.0\n").unwrap();
    std::fs::copy(
        common::abi_mismatch_plugin(),
        dir.join(common::lib_file("abi_mismatch")),
    )
    .unwrap();
    m.add_example("hello");
    let host = HostProcess::start(&m, &[], &[]);
    let reason = host.module("mismatch")["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.starts_with(
            "module `mismatch` was built against a plugin-api whose interface differs"
        ),
        "{reason}"
    );
    assert!(
        reason.contains(&format!(
            "rebuild it against plugin-api {}",
            modhost_plugin_api::PLUGIN_API_VERSION
        )),
        "{reason}"
    );
    assert!(
        reason.lines().count() == 1 && reason.len() < 300,
        "short message: {reason}"
    );
    assert_eq!(host.get("/api/v1/hello/greet/x").status, 200);
}

#[test]
fn older_plugin_api_version_is_refused_naming_both_versions() {
    let m = Modules::new();
    let dir = m.dir().join("old_api");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("module.yaml"), "name: old_api\nversion: 1.0.0\n").unwrap();
    std::fs::copy(
        common::version_mismatch_plugin(),
        dir.join(common::lib_file("version_mismatch")),
    )
    .unwrap();
    m.add_example("hello");
    let host = HostProcess::start(&m, &[], &[]);
    let ours = modhost_plugin_api::PLUGIN_API_VERSION;
    assert_ne!(
        ours, "0.4.0",
        "the fixture must report another version than ours"
    );
    let expected = format!(
        "module `old_api` was built against plugin-api 0.4.0; this host uses {ours}; rebuild it against plugin-api {ours}"
    );
    let state = host.module("old_api");
    assert_eq!(state["state"], "failed", "{state}");
    assert_eq!(state["reason"], expected.as_str(), "{state}");
    assert_eq!(host.get("/api/v1/hello/greet/x").status, 200);
    // `modhost check` says the same, and fails.
    let (code, out, _) = common::modhost(&["check", m.dir().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&expected), "{out}");
}

#[test]
fn strict_mode_makes_a_failure_fatal_with_exit_code_1() {
    let m = Modules::new();
    m.add_faulty("good", "ok", "");
    m.add_faulty("erring", "init_error", "");
    let exited = HostProcess::run_to_exit(&m, &[], &["--strict"], Duration::from_secs(60));
    let stderr = &exited.stderr;
    assert_eq!(
        exited.code,
        Some(1),
        "the README promises exit code 1: {stderr}"
    );
    assert!(stderr.contains("--strict: 1 module(s) failed"), "{stderr}");
    assert!(
        stderr.contains("erring: init failed: configured to fail in init"),
        "{stderr}"
    );
    assert!(
        exited.logs.iter().all(|v| v.get("local").is_none()),
        "it never started serving: {:?}",
        exited.logs
    );
    // Without --strict the same modules directory starts (and `good` serves).
    let host = HostProcess::start(&m, &[], &[]);
    assert_eq!(host.get("/api/v1/good/ok").status, 200);
}

#[test]
fn host_config_overrides_module_config() {
    let m = examples();
    let cfg = m.tmp.path().join("modhost.toml");
    std::fs::write(&cfg, "[modules.hello]\ngreeting = \"Howdy\"\n").unwrap();
    let host = HostProcess::start(&m, &[], &["--config", cfg.to_str().unwrap()]);
    assert_eq!(
        host.get("/api/v1/hello/greet/tex").json()["message"],
        "Howdy, tex!"
    );
}

#[test]
fn a_module_built_against_a_newer_minor_is_refused_naming_both_versions() {
    let m = Modules::new();
    let dir = m.dir().join("future");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("module.yaml"), "name: future\nversion: 1.0.0\n").unwrap();
    std::fs::copy(
        common::newer_minor_plugin(),
        dir.join(common::lib_file("newer_minor")),
    )
    .unwrap();
    m.add_example("hello");
    let host = HostProcess::start(&m, &[], &[]);
    let ours = modhost_plugin_api::PLUGIN_API_VERSION;
    let expected = format!(
        "module `future` was built against plugin-api 1.99.0, newer than this host's {ours}; upgrade the host to a release with plugin-api 1.99.0 or later, or rebuild the module against plugin-api {ours}"
    );
    let state = host.module("future");
    assert_eq!(state["state"], "failed", "{state}");
    assert_eq!(state["reason"], expected.as_str(), "{state}");
    assert_eq!(host.get("/api/v1/hello/greet/x").status, 200);
    let (code, out, _) = common::modhost(&["check", m.dir().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&expected), "{out}");
}

in_both_modes!(
    handler_panic_gives_500_and_host_keeps_serving,
    failing_inits_fail_only_their_module_and_dependents,
);
