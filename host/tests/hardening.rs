//! Hardening: library integrity (sha256 in module.yaml), response size limit, and a
//! time-bounded fuzz of manifest parsing.

mod common;

use std::time::{Duration, Instant};

use common::{lib_file, plugins, HostProcess, Modules};
use modhost::module::loader::sha256_hex;
use modhost::module::manifest::Manifest;

#[test]
fn library_checksum_is_enforced() {
    let m = Modules::new();
    let lib = std::fs::read(plugins().join(lib_file("faulty"))).unwrap();
    let good = sha256_hex(&lib);
    m.add_faulty("pinned", "ok", &format!("sha256: {good}\n"));
    let wrong = "0".repeat(64);
    m.add_faulty("mismatch", "ok", &format!("sha256: {wrong}\n"));
    let tampered = m.add_faulty("tampered", "ok", &format!("sha256: {good}\n"));
    // One byte changed in the library after packaging.
    let mut bytes = lib.clone();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(tampered.join(lib_file("faulty")), &bytes).unwrap();

    let host = HostProcess::start(&m, &[], &[]);
    assert_eq!(host.module("pinned")["state"], "started");
    assert_eq!(host.get("/api/v1/pinned/ok").status, 200);
    for name in ["mismatch", "tampered"] {
        let s = host.module(name);
        assert_eq!(s["state"], "failed", "{s}");
        let reason = s["reason"].as_str().unwrap();
        assert!(reason.contains("but module.yaml says"), "{reason}");
        assert!(reason.contains("refusing to load it"), "{reason}");
        assert!(s["runtime_path"].is_null(), "{s}");
        assert_eq!(host.get(&format!("/api/v1/{name}/ok")).status, 404);
    }

    // Nothing of a refused library is loaded. The pinned module shows what loading
    // leaves behind: a runtime copy, that copy mapped into the host process, and the
    // log line of its `init`. The refused ones have none of the three.
    let runtime_dir = m.data().join("runtime").join(host.pid().to_string());
    let copies: Vec<String> = std::fs::read_dir(&runtime_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let pinned_copy = host.module("pinned")["runtime_path"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        copies.iter().any(|c| c.starts_with("pinned-")),
        "{copies:?}"
    );
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", host.pid())).unwrap();
    assert!(
        maps.contains(&pinned_copy),
        "the pinned copy {pinned_copy} is mapped:\n{maps}"
    );
    let init_logs = |name: &str| {
        common::messages_with(&host.logs(), "module", name)
            .into_iter()
            .filter(|msg| msg.starts_with("faulty init"))
            .count()
    };
    assert_eq!(init_logs("pinned"), 1, "{:?}", host.logs());
    for name in ["mismatch", "tampered"] {
        assert!(
            !copies.iter().any(|c| c.starts_with(&format!("{name}-"))),
            "{name} has a runtime copy: {copies:?}"
        );
        let library = m.dir().join(name).join(lib_file("faulty"));
        for line in maps.lines() {
            assert!(
                !line.contains(&format!("/{name}-")) && !line.contains(library.to_str().unwrap()),
                "{name} is mapped: {line}"
            );
        }
        assert_eq!(init_logs(name), 0, "{name}'s init ran");
    }
    let audit = host.get("/api/v1/audit?action=module.fail").json();
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["module"] == "tampered"),
        "{audit}"
    );
    // `modhost check` reports the same.
    let (code, out, _) = common::modhost(&["check", m.dir().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("but module.yaml says"))
            .count(),
        2,
        "{out}"
    );
}

#[test]
fn oversized_responses_become_500_and_the_host_keeps_serving() {
    let m = Modules::new();
    m.add_faulty("big", "ok", "");
    let host = HostProcess::start(&m, &[("MODHOST_MAX_RESPONSE_BYTES", "4096")], &[]);
    assert_eq!(host.get("/api/v1/big/big?bytes=4096").body.len(), 4096);
    let r = host.get("/api/v1/big/big?bytes=100000");
    assert_eq!(r.status, 500);
    assert!(r.json()["error"].as_str().unwrap().contains("too large"));
    assert_eq!(host.get("/api/v1/big/ok").status, 200);
}

/// A small deterministic generator (no extra dependency): xorshift.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

const PIECES: &[&str] = &[
    "name: ",
    "version: ",
    "blog",
    "1.0.0",
    "\n",
    "  ",
    "- ",
    ": ",
    "[",
    "]",
    "{",
    "}",
    ",",
    "\"",
    "'",
    "&a ",
    "*a",
    "<<: *a",
    "dependencies:\n",
    "permissions:\n",
    "events:\n",
    "publishes: ",
    "subscribes: ",
    "config:\n",
    "library: ",
    "../",
    "/",
    "sha256: ",
    ">=1.0, <2",
    "blog.post.read",
    "x.*",
    ">",
    "#",
    "\t",
    "~",
    "null",
    "!!binary ",
    "!!map",
    "---\n",
    "...\n",
    "? ",
    "|\n",
    ">-\n",
    "%YAML 1.2\n",
    "é",
    "\u{0}",
    "9999999999999999999999",
    "-1",
    "true",
];

/// Mutated and random manifests never panic the parser; each finishes quickly.
/// `MODHOST_FUZZ_SECONDS` bounds the run (default 5; CI sets 60).
#[test]
fn fuzz_manifest_parsing() {
    let seconds: u64 = std::env::var("MODHOST_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let seeds: Vec<String> = std::fs::read_dir(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/manifests"),
    )
    .unwrap()
    .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
    .chain([std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/module.example.yaml"),
    )
    .unwrap()])
    .collect();
    let mut rng = Rng(0x0dd_ba11_cafe_f00d);
    let started = Instant::now();
    let (mut runs, mut accepted, mut slowest) = (0u64, 0u64, Duration::ZERO);
    let path = std::path::Path::new("fuzz/module.yaml");
    while started.elapsed() < Duration::from_secs(seconds) {
        let mut text = seeds[(rng.next() % seeds.len() as u64) as usize]
            .clone()
            .into_bytes();
        for _ in 0..(1 + rng.next() % 6) {
            match rng.next() % 4 {
                0 if !text.is_empty() => {
                    let at = (rng.next() % text.len() as u64) as usize;
                    text[at] = rng.next() as u8;
                }
                1 if !text.is_empty() => {
                    let at = (rng.next() % text.len() as u64) as usize;
                    let len = ((rng.next() % 16) as usize).min(text.len() - at);
                    text.drain(at..at + len);
                }
                _ => {
                    let at = if text.is_empty() {
                        0
                    } else {
                        (rng.next() % text.len() as u64) as usize
                    };
                    let piece = rng.pick(PIECES).as_bytes().to_vec();
                    text.splice(at..at, piece);
                }
            }
        }
        let text = String::from_utf8_lossy(&text).into_owned();
        let t = Instant::now();
        if Manifest::parse(&text, path).is_ok() {
            accepted += 1;
        }
        slowest = slowest.max(t.elapsed());
        runs += 1;
    }
    eprintln!("fuzz_manifest_parsing: {runs} inputs in {seconds} s, {accepted} accepted, 0 crashes, slowest parse {slowest:?}");
    assert!(runs > 100, "the fuzzer ran only {runs} inputs");
    assert!(
        slowest < Duration::from_secs(1),
        "a manifest took {slowest:?} to parse"
    );
}

fn run_ok(args: &[&str]) -> String {
    let (code, out, err) = common::modhost(args);
    assert_eq!(code, 0, "modhost {args:?}: {out}{err}");
    out
}

#[test]
fn signatures_are_required_and_checked() {
    let m = Modules::new();
    let keys = m.tmp.path().join("keys");
    let other = m.tmp.path().join("other-keys");
    let out = run_ok(&["keygen", "--out", keys.to_str().unwrap()]);
    assert!(out.contains("public key: "), "{out}");
    run_ok(&["keygen", "--out", other.to_str().unwrap()]);
    let public = std::fs::read_to_string(keys.join("vendor.pub"))
        .unwrap()
        .trim()
        .to_string();
    let key = keys.join("vendor.key");
    let other_key = other.join("vendor.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    let signed = m.add_faulty("signed", "ok", "");
    let unsigned = m.add_faulty("unsigned", "ok", "");
    let lib_tampered = m.add_faulty("lib_tampered", "ok", "");
    let manifest_tampered = m.add_faulty("manifest_tampered", "ok", "");
    let stranger = m.add_faulty("stranger", "ok", "");
    // The signature covers every file: migrations too.
    let migration_edited = m.add_faulty("migration_edited", "ok", "");
    let migration_added = m.add_faulty("migration_added", "ok", "");
    for dir in [&migration_edited, &migration_added] {
        std::fs::create_dir_all(dir.join("migrations")).unwrap();
        std::fs::write(
            dir.join("migrations/0001_items.sql"),
            "CREATE TABLE items (id INTEGER PRIMARY KEY);\n",
        )
        .unwrap();
    }
    for dir in [
        &signed,
        &lib_tampered,
        &manifest_tampered,
        &migration_edited,
        &migration_added,
    ] {
        run_ok(&[
            "sign",
            dir.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ]);
    }
    run_ok(&[
        "sign",
        stranger.to_str().unwrap(),
        "--key",
        other_key.to_str().unwrap(),
    ]);
    let lib = lib_tampered.join(lib_file("faulty"));
    let mut bytes = std::fs::read(&lib).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&lib, bytes).unwrap();
    let manifest = manifest_tampered.join("module.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("mode: ok", "mode: ok ")).unwrap();
    std::fs::write(
        migration_edited.join("migrations/0001_items.sql"),
        "CREATE TABLE items (id INTEGER PRIMARY KEY); DROP TABLE IF EXISTS other;\n",
    )
    .unwrap();
    std::fs::write(
        migration_added.join("migrations/0002_more.sql"),
        "CREATE TABLE more (id INTEGER PRIMARY KEY);\n",
    )
    .unwrap();
    let _ = unsigned;

    let env = [
        ("MODHOST_TRUSTED_KEYS", public.as_str()),
        ("MODHOST_REQUIRE_SIGNATURES", "true"),
    ];
    let host = HostProcess::start(&m, &env, &[]);
    assert_eq!(host.module("signed")["state"], "started");
    assert_eq!(host.module("signed")["signed_by"], public.as_str());
    assert_eq!(host.get("/api/v1/signed/ok").status, 200);
    let loaded: Vec<_> = host
        .logs()
        .into_iter()
        .filter(|l| l["message"] == "module loaded" && l["module"] == "signed")
        .collect();
    assert_eq!(loaded[0]["signed_by"], public.as_str(), "{loaded:?}");
    let expect = [
        (
            "unsigned",
            "unsigned module, and this host requires signatures",
        ),
        ("lib_tampered", "libfaulty.so was changed after signing"),
        ("manifest_tampered", "module.yaml was changed after signing"),
        (
            "migration_edited",
            "migrations/0001_items.sql was changed after signing",
        ),
        (
            "migration_added",
            "migrations/0002_more.sql was added after signing",
        ),
        ("stranger", "which this host does not trust"),
    ];
    for (name, why) in expect {
        let s = host.module(name);
        assert_eq!(s["state"], "failed", "{name}: {s}");
        assert!(s["reason"].as_str().unwrap().contains(why), "{name}: {s}");
    }
    let audit = host.get("/api/v1/audit?action=module.fail").json();
    for (name, _) in expect {
        assert!(
            audit
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["module"] == name),
            "{name} audited: {audit}"
        );
    }
}

#[test]
fn sigterm_under_load_finishes_in_flight_requests_and_refuses_new_ones() {
    let m = Modules::new();
    m.add_faulty("slowpoke", "ok", "");
    m.add_faulty("zz_last", "ok", "dependencies:\n  slowpoke: \"1\"\n");
    let host = HostProcess::start(&m, &[], &[]);
    let (addr, token) = (host.addr, host.token.clone());
    // Each request takes 3 s in the module: the listener must close long before.
    let inflight: Vec<_> = (0..6)
        .map(|_| {
            let token = token.clone();
            std::thread::spawn(move || {
                let auth = format!("Bearer {token}");
                common::http(
                    addr,
                    "GET",
                    "/api/v1/slowpoke/slow?ms=3000",
                    &[("authorization", &auth)],
                    b"",
                )
            })
        })
        .collect();
    // All six are inside the module's handler before the signal.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let running = host.get("/api/v1/slowpoke/slow/running").json()["running"].clone();
        if running == 6 {
            break;
        }
        assert!(
            Instant::now() < until,
            "6 requests in flight, {running} seen"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = host.pid().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    // New connections are refused while the in-flight ones drain: the listener closes
    // while every one of the six is still waiting for its answer.
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        let refused =
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err();
        let answered = inflight.iter().filter(|t| t.is_finished()).count();
        assert_eq!(
            answered, 0,
            "the listener must close before in-flight requests finish"
        );
        if refused {
            break;
        }
        assert!(
            Instant::now() < until,
            "the listener still accepts connections 2 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    for t in inflight {
        let r = t.join().unwrap();
        assert_eq!(r.status, 200, "in-flight request completed: {}", r.text());
        assert_eq!(r.json()["slept_ms"], 3000, "{}", r.text());
    }
    let (code, logs) = host.wait_exit();
    assert_eq!(code, Some(0));
    let stopped: Vec<&str> = logs
        .iter()
        .filter(|v| v["message"] == "module stopped")
        .map(|v| v["module"].as_str().unwrap())
        .collect();
    assert_eq!(stopped, vec!["zz_last", "slowpoke"], "reverse load order");
}

#[test]
fn slow_clients_are_cut_and_path_traversal_in_params_is_inert() {
    use std::io::{Read, Write};
    let m = Modules::new();
    m.add_faulty("probe", "ok", "");
    let host = HostProcess::start(&m, &[("MODHOST_HEADER_READ_TIMEOUT", "500ms")], &[]);
    // Headers that never finish: the host closes the connection.
    let mut s = std::net::TcpStream::connect(host.addr).unwrap();
    s.write_all(b"GET /api/v1/probe/ok HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    // The host closes the connection (EOF, no answer): the read ends without error.
    let read = s.read_to_end(&mut buf);
    let took = started.elapsed();
    assert!(read.is_ok(), "closed by the host, not timed out: {read:?}");
    assert!(
        buf.is_empty(),
        "no answer: {:?}",
        String::from_utf8_lossy(&buf)
    );
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(4),
        "cut after the 500 ms header timeout, not before it nor at the client's: {took:?}"
    );
    // A traversal in a parameter is just a string to the module; it cannot leave /api/v1/<module>.
    let r = host.request("PUT", "/api/v1/probe/cache/..%2F..%2Fetc%2Fpasswd", b"v");
    assert_eq!(r.status, 204);
    assert_eq!(
        host.get("/api/v1/probe/cache/..%2F..%2Fetc%2Fpasswd")
            .text(),
        "v"
    );
    assert_eq!(host.get("/api/v1/probe/../../admin/modules").status, 404);
    assert_eq!(host.get("/api/v1/probe/ok").status, 200);
}

#[test]
fn a_body_that_never_arrives_gets_408() {
    use std::io::{Read, Write};
    let m = Modules::new();
    m.add_faulty("probe", "ok", "");
    let host = HostProcess::start(&m, &[("MODHOST_REQUEST_TIMEOUT", "500ms")], &[]);
    let mut s = std::net::TcpStream::connect(host.addr).unwrap();
    let head = format!(
        "POST /api/v1/probe/echo HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-length: 100\r\n\r\nonly part",
        host.token
    );
    s.write_all(head.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("did not arrive"), "{text}");
    assert_eq!(host.get("/api/v1/probe/ok").status, 200);
}

#[test]
fn malformed_requests_get_400_and_the_host_keeps_serving() {
    let m = Modules::new();
    m.add_example("billing");
    m.add_example("blog");
    let host = HostProcess::start(&m, &[], &[]);
    // Application-level garbage: JSON errors.
    for (method, path, body) in [
        ("POST", "/api/v1/blog/posts", &b"{\"title\": 5}"[..]),
        ("POST", "/api/v1/blog/posts", &b"\xff\xfe not utf-8"[..]),
        ("GET", "/api/v1/blog/posts?limit=lots", &b""[..]),
        ("GET", "/api/v1/blog/posts/-1", &b""[..]),
        ("POST", "/api/v1/identity/users", &b"[]"[..]),
        ("GET", "/api/v1/audit?before=yesterday", &b""[..]),
    ] {
        let r = host.request(method, path, body);
        assert_eq!(r.status, 400, "{method} {path}: {}", r.text());
        assert!(r.json()["error"].is_string(), "{method} {path}");
    }
    // Requests the HTTP parser rejects (a garbage request line, a control byte in the
    // path, an unknown HTTP version): hyper answers `400 Bad Request` itself, with an
    // empty body, and closes that connection; the host keeps serving.
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        &b"GET /\x01 HTTP/1.1\r\n\r\n"[..],
        &b"GET / HTTP/9.9\r\nhost: x\r\n\r\n"[..],
    ] {
        let shown = String::from_utf8_lossy(garbage).into_owned();
        let r = common::http_raw(host.addr, garbage);
        assert_eq!(r.status, 400, "{shown:?}: {r:?}");
        assert_eq!(r.header("connection"), Some("close"), "{shown:?}: {r:?}");
        assert_eq!(r.header("content-length"), Some("0"), "{shown:?}: {r:?}");
        assert!(r.body.is_empty(), "{shown:?}: {r:?}");
    }
    assert_eq!(host.get("/healthz").status, 200);
}
