//! Module hosts on remote core services: one `modhost core` (on PostgreSQL when it is
//! reachable, else SQLite) and two `modhost run --core` hosts serving the example
//! modules, real processes on loopback. A login on one host gives a token the other
//! accepts; a role narrowed, or a token revoked, on one host applies on the other within
//! a second; with the core killed, public routes keep answering, `/readyz` says why,
//! tokens fail closed after `core_staleness`, and the audit records made meanwhile are
//! spooled and reach the core, each exactly once, when it is back.

mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::{core::CoreProcess, http, pg::PgTestDb, HostProcess, Modules};
use serde_json::{json, Value};

/// How a test reaches the core's data (for `modhost admin token` and restarts).
struct CoreData {
    dir: tempfile::TempDir,
    pg: Option<PgTestDb>,
}

impl CoreData {
    fn new() -> CoreData {
        CoreData {
            dir: tempfile::tempdir().unwrap(),
            pg: PgTestDb::create(),
        }
    }

    fn args(&self) -> Vec<String> {
        match &self.pg {
            Some(db) => vec!["--database-url".into(), db.url.clone()],
            None => Vec::new(),
        }
    }

    fn env(&self) -> Vec<(&str, &str)> {
        match &self.pg {
            Some(db) => vec![("MODHOST_POSTGRES_ROLE_PREFIX", db.prefix.as_str())],
            None => Vec::new(),
        }
    }

    /// Starts `modhost core` on `listen`, retrying while a just-killed core's port is
    /// still being released.
    fn start(&self, listen: &str) -> CoreProcess {
        let mut args = vec!["--grpc-listen".to_string(), listen.to_string()];
        args.extend(self.args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        CoreProcess::start(self.dir.path(), &args, &self.env())
    }

    /// An operator token from the core's data.
    fn console_token(&self) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_modhost"))
            .args(["admin", "token", "--ttl", "30m", "--data-dir"])
            .arg(self.dir.path())
            .args(self.args())
            .envs(self.env())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

fn host(m: &Modules, core_url: &str) -> HostProcess {
    HostProcess::start(
        m,
        &[
            ("MODHOST_CORE_URL", core_url),
            ("MODHOST_CORE_STALENESS", "4s"),
            ("MODHOST_CORE_TIMEOUT", "1s"),
        ],
        &[],
    )
}

fn modules() -> Modules {
    let m = Modules::new();
    m.add_example("hello");
    m.add_example("billing");
    m.add_example("blog");
    m
}

/// Polls `check` until it is true, for at most `limit`; returns how long it took.
fn within(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

fn call(host: &HostProcess, token: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let r = host.request_as(token, method, path, &body);
    let json = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status, json)
}

fn spool_is_empty(m: &Modules) -> bool {
    let spool = m.data().join("core-spool/audit.jsonl");
    std::fs::metadata(&spool)
        .map(|md| md.len() == 0)
        .unwrap_or(false)
}

#[test]
fn two_hosts_share_one_core_and_survive_its_absence() {
    let data = CoreData::new();
    let core = data.start("127.0.0.1:0");
    let addr = core.addr("All");
    let url = format!("http://{addr}");
    let console = data.console_token();
    let (ma, mb) = (modules(), modules());
    let a = host(&ma, &url);
    let b = host(&mb, &url);

    // A user and a role, made through host A (the hosts declare their modules'
    // permissions to the core at start, in the background: wait for blog's).
    let (status, user) = call(
        &a,
        &console,
        "POST",
        "/api/v1/identity/users",
        json!({ "email": "ada@example.com", "password": "correct horse" }),
    );
    assert_eq!(status, 201, "{user}");
    let user_id = user["id"].as_str().unwrap().to_string();
    within(Duration::from_secs(10), "role `reader` created", || {
        call(
            &a,
            &console,
            "POST",
            "/api/v1/authz/roles",
            json!({ "name": "reader", "permissions": ["blog.post.read"] }),
        )
        .0 == 201
    });
    let (status, _) = call(
        &a,
        &console,
        "POST",
        &format!("/api/v1/authz/users/{user_id}/roles"),
        json!({ "role": "reader" }),
    );
    assert_eq!(status, 200);

    // The permissions the core knows, as every host declared them.
    let (status, declared) = call(
        &b,
        &console,
        "GET",
        "/api/v1/authz/permissions",
        Value::Null,
    );
    assert_eq!(status, 200, "{declared}");
    assert!(
        declared["blog"].as_array().is_some_and(|p| !p.is_empty()),
        "{declared}"
    );
    assert!(
        declared["core"].as_array().is_some_and(|p| !p.is_empty()),
        "{declared}"
    );

    // A login through A gives a token B accepts.
    let login = http(
        a.addr,
        "POST",
        "/api/v1/auth/login",
        &[],
        br#"{"email":"ada@example.com","password":"correct horse"}"#,
    );
    assert_eq!(login.status, 200, "{}", login.text());
    let token = login.json()["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        b.request_as(&token, "GET", "/api/v1/blog/posts", b"")
            .status,
        200
    );

    // A role narrowed on A denies on B within a second.
    let (status, _) = call(
        &a,
        &console,
        "PUT",
        "/api/v1/authz/roles/reader",
        json!({ "permissions": ["billing.plan.read"] }),
    );
    assert_eq!(status, 200);
    let took = within(
        Duration::from_secs(1),
        "the narrowed role applies on B",
        || {
            b.request_as(&token, "GET", "/api/v1/blog/posts", b"")
                .status
                == 403
        },
    );
    eprintln!("role change visible on B after {took:?}");
    assert_eq!(
        b.request_as(&token, "GET", "/api/v1/billing/plans", b"")
            .status,
        200
    );

    // A revocation on B is refused on A within a second.
    let revoke = b.request_as(&token, "POST", "/api/v1/auth/revoke", b"");
    assert_eq!(revoke.status, 200, "{}", revoke.text());
    let took = within(
        Duration::from_secs(1),
        "the revocation applies on A",
        || {
            a.request_as(&token, "GET", "/api/v1/billing/plans", b"")
                .status
                == 401
        },
    );
    eprintln!("revocation visible on A after {took:?}");

    // A fresh token, used once while the core is up.
    let login = http(
        b.addr,
        "POST",
        "/api/v1/auth/login",
        &[],
        br#"{"email":"ada@example.com","password":"correct horse"}"#,
    );
    let fresh = login.json()["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        a.request_as(&fresh, "GET", "/api/v1/billing/plans", b"")
            .status,
        200
    );

    // The core goes away: what the hosts kept serves for core_staleness (4 s) ...
    core.kill();
    assert_eq!(
        a.request_as(&fresh, "GET", "/api/v1/billing/plans", b"")
            .status,
        200,
        "a token the host checked serves on within core_staleness"
    );
    assert_eq!(
        a.request_as(&token, "GET", "/api/v1/billing/plans", b"")
            .status,
        401,
        "a revoked token stays refused while the core is away"
    );
    within(
        Duration::from_secs(5),
        "A's /readyz says the core is unreachable",
        || {
            let r = a.get("/readyz");
            r.status == 503 && r.json()["core"] == "unreachable"
        },
    );
    // Public routes keep answering.
    assert_eq!(a.get("/api/v1/hello/greet/x").status, 200);
    assert_eq!(b.get("/api/v1/hello/greet/x").status, 200);
    // ... then requests that need a token fail closed.
    within(
        Duration::from_secs(8),
        "stale tokens fail closed with 503",
        || {
            a.request_as(&fresh, "GET", "/api/v1/billing/plans", b"")
                .status
                == 503
        },
    );
    // Audit records made meanwhile (denied requests) are spooled on each host.
    let marks: Vec<String> = (0..6)
        .map(|i| format!("/api/v1/blog/posts/{}", 9000 + i))
        .collect();
    for (i, path) in marks.iter().enumerate() {
        let on = if i % 2 == 0 { &a } else { &b };
        assert_eq!(http(on.addr, "GET", path, &[], b"").status, 401);
    }
    assert!(
        !spool_is_empty(&ma) && !spool_is_empty(&mb),
        "records wait in the spools"
    );

    // The core comes back on the same address: the spools drain into it.
    let core = data.start(&addr.to_string());
    within(Duration::from_secs(15), "both spools delivered", || {
        spool_is_empty(&ma) && spool_is_empty(&mb)
    });
    within(
        Duration::from_secs(10),
        "A's /readyz is ready again",
        || a.get("/readyz").status == 200,
    );
    // The restarted core learned the modules' permissions again from the hosts: a role
    // can grant them.
    within(
        Duration::from_secs(10),
        "a role granting blog's permission",
        || {
            call(
                &a,
                &console,
                "POST",
                "/api/v1/authz/roles",
                json!({ "name": "reader2", "permissions": ["blog.post.read"] }),
            )
            .0 == 201
        },
    );
    let (status, entries) = call(
        &b,
        &console,
        "GET",
        "/api/v1/audit?action=request.denied&limit=1000",
        Value::Null,
    );
    assert_eq!(status, 200, "{entries}");
    for path in &marks {
        let target = format!("GET {path}");
        let count = entries
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["target"] == target.as_str())
            .count();
        assert_eq!(count, 1, "{target} recorded exactly once: {entries}");
    }
    drop(core);
}

/// `core_url` is checked when the config is read.
#[test]
fn a_bad_core_url_is_refused_at_start() {
    let m = Modules::new();
    let out = Command::new(env!("CARGO_BIN_EXE_modhost"))
        .args(["run", "--modules"])
        .arg(m.dir())
        .arg("--data-dir")
        .arg(m.data())
        .env("MODHOST_CORE_URL", "core.internal:8081")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("MODHOST_CORE_URL") && err.contains("http://HOST"),
        "{err}"
    );
}
