//! The compatibility promise, tested (docs/compatibility.md): a module built against
//! plugin-api 1.0 — `compat/module-1.0`, compiled against the frozen copy of plugin-api
//! 1.0.0 in `compat/plugin-api-1.0` — loads and runs unchanged on this host, whatever
//! 1.x minor it is. Routes and the request object, its database, events both ways,
//! services both ways, its cache and the state hand-off of a hot reload are exercised
//! beside modules built against this host's plugin-api.
//!
//! This test stays for every later 1.x minor.

mod common;

use std::time::{Duration, Instant};

use common::{http, HostProcess, Mode, Modules};
use serde_json::json;

/// Polls `check` until it returns `Some`, for at most 10 s.
fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn modules_with_compat() -> Modules {
    let m = Modules::new();
    m.add_example("billing");
    let dir = m.dir().join("compat");
    std::fs::create_dir_all(dir.join("migrations")).unwrap();
    let src = common::workspace().join("compat/module-1.0");
    std::fs::copy(src.join("module.yaml"), dir.join("module.yaml")).unwrap();
    std::fs::copy(
        src.join("migrations/0001_notes.sql"),
        dir.join("migrations/0001_notes.sql"),
    )
    .unwrap();
    std::fs::copy(
        common::compat_v1_0_plugin(),
        dir.join(common::lib_file("compat_v1_0")),
    )
    .unwrap();
    // A module built against this host's plugin-api that calls the 1.0 module's service
    // and subscribes to its events.
    m.add(
        "probe",
        "faulty",
        "name: probe\nversion: 1.0.0\npermissions: [probe.probe.read, probe.probe.write]\n\
         dependencies:\n  compat: \"1.0\"\nevents:\n  subscribes: [compat.note.created]\n\
         config:\n  mode: ok\n  subscribe: [compat.note.created]\n",
    );
    m
}

fn a_module_built_against_plugin_api_1_0_runs_on_this_host(mode: Mode) {
    let m = modules_with_compat();
    let host = HostProcess::start(&m, &[mode.env()], &[]);
    let ours = modhost_plugin_api::PLUGIN_API_VERSION;
    assert!(ours.starts_with("1."), "host plugin-api {ours}");

    let compat = host.module("compat");
    assert_eq!(compat["state"], "started", "{compat}");
    assert_eq!(compat["plugin_api_version"], "1.0.0", "{compat}");
    let isolation = match mode {
        Mode::InProcess => "in-process",
        Mode::Isolated => "process",
    };
    assert_eq!(compat["isolation"], isolation, "{compat}");
    assert_eq!(host.module("probe")["state"], "started");

    // Routes and the request object.
    let auth = format!("Bearer {}", host.token);
    let echo = http(
        host.addr,
        "POST",
        "/api/v1/compat/request/abc%20d?flag=yes&x=1",
        &[("authorization", &auth), ("x-compat", "one")],
        b"hello",
    );
    assert_eq!(echo.status, 200, "{}", echo.text());
    let echo = echo.json();
    assert_eq!(echo["plugin_api"], "1.0.0", "{echo}");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/api/v1/compat/request/abc%20d");
    assert_eq!(echo["query"], "flag=yes&x=1");
    assert_eq!(echo["name"], "abc d", "path parameters are decoded");
    assert_eq!(echo["flag"], "yes");
    assert_eq!(echo["header"], "one");
    assert_eq!(echo["body"], "hello");
    assert!(echo["user"].is_string(), "{echo}");

    // The database (migration, transaction, query), publishing and the cache.
    let created = host.request("POST", "/api/v1/compat/notes", br#"{"text":"first"}"#);
    assert_eq!(created.status, 201, "{}", created.text());
    let created = created.json();
    assert_eq!(created["id"], 1, "{created}");
    let event_id = created["event_id"].as_str().unwrap().to_string();
    assert_eq!(event_id.len(), 36, "a UUID: {event_id}");
    let read = host.get("/api/v1/compat/notes/1");
    assert_eq!(read.status, 200, "{}", read.text());
    assert_eq!(read.json(), json!({ "id": 1, "text": "first" }));
    assert_eq!(host.get("/api/v1/compat/notes/9").status, 404);
    let cached = host.get("/api/v1/compat/cache/last");
    assert_eq!(
        cached.json(),
        json!({ "last": "first" }),
        "{}",
        cached.text()
    );

    // A constraint error, through the 1.0 SDK's conversion: 409 with an error id, never
    // the database's text; the host's log has the text under the same id.
    let duplicate = host.request("POST", "/api/v1/compat/notes", br#"{"text":"first"}"#);
    assert_eq!(duplicate.status, 409, "{}", duplicate.text());
    let body = duplicate.json();
    assert!(!duplicate.text().contains("UNIQUE"), "{body}");
    let error_id = body["error_id"].as_str().expect("error_id").to_string();
    let logged = eventually("the database error in the log", || {
        // In-process the id is a field of the log event; from a worker the module's
        // log line carries it in its text.
        host.logs()
            .into_iter()
            .find(|l| l.to_string().contains(error_id.as_str()))
    });
    assert!(logged.to_string().contains("UNIQUE"), "{logged}");
    assert!(logged.to_string().contains("compat"), "{logged}");

    // Events from the 1.0 module reach a current one, with the same id.
    let got = eventually("compat.note.created at probe", || {
        let list = host.get("/api/v1/probe/events").json();
        list.as_array().and_then(|l| l.first().cloned())
    });
    assert_eq!(got["id"], event_id.as_str(), "{got}");
    assert_eq!(got["source"], "compat");
    assert_eq!(got["payload"]["text"], "first", "{got}");

    // Events from a current module reach the 1.0 module's handler.
    let sub = host.request(
        "POST",
        "/api/v1/billing/subscriptions",
        br#"{"user_id":"u1","plan":"pro"}"#,
    );
    assert_eq!(sub.status, 201, "{}", sub.text());
    let seen = eventually("billing.subscription.created at compat", || {
        let list = host.get("/api/v1/compat/seen").json();
        list.as_array().and_then(|l| l.first().cloned())
    });
    assert_eq!(seen["topic"], "billing.subscription.created", "{seen}");
    assert_eq!(seen["source"], "billing");

    // Services: the 1.0 module calls a current provider ...
    let billing = host.get("/api/v1/compat/billing/u1");
    assert_eq!(billing.status, 200, "{}", billing.text());
    assert_eq!(billing.json()["plan"], "pro");
    assert_eq!(host.get("/api/v1/compat/billing/nobody").status, 404);
    // ... and a current module calls the 1.0 provider.
    let call = host.request(
        "POST",
        "/api/v1/probe/call",
        br#"{"service":"compat.note.get","request":{"id":1}}"#,
    );
    assert_eq!(call.status, 200, "{}", call.text());
    assert_eq!(
        call.json(),
        json!({ "note": { "id": 1, "text": "first" }, "caller": "probe" })
    );
    let missing = host.request(
        "POST",
        "/api/v1/probe/call",
        br#"{"service":"compat.note.get","request":{"id":42}}"#,
    );
    assert_eq!(missing.status, 422, "{}", missing.text());
    assert_eq!(missing.json()["kind"], "NotFound", "{}", missing.text());

    // Hot reload hands the 1.0 module's state to its new instance.
    let reload = host.request("POST", "/admin/modules/compat/reload", b"");
    assert_eq!(reload.status, 200, "{}", reload.text());
    let after = host.request("POST", "/api/v1/compat/request/x", b"");
    assert_eq!(after.json()["created"], 1, "{}", after.text());
    assert_eq!(host.module("compat")["state"], "started");
}

/// A user who may only use the compat module, and their token.
fn limited_user(host: &HostProcess) -> (String, String) {
    let role = host.request(
        "POST",
        "/api/v1/authz/roles",
        br#"{"name":"compat_reader","permissions":["compat.note.read"]}"#,
    );
    assert_eq!(role.status, 201, "{}", role.text());
    let created = host.request(
        "POST",
        "/api/v1/identity/users",
        br#"{"email":"reader@example.com","password":"correct horse battery"}"#,
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_string();
    let assign = host.request(
        "POST",
        &format!("/api/v1/authz/users/{id}/roles"),
        br#"{"role":"compat_reader"}"#,
    );
    assert_eq!(assign.status, 200, "{}", assign.text());
    let login = http(
        host.addr,
        "POST",
        "/api/v1/auth/login",
        &[],
        br#"{"email":"reader@example.com","password":"correct horse battery"}"#,
    );
    assert_eq!(login.status, 200, "{}", login.text());
    let token = login.json()["access_token"].as_str().unwrap().to_string();
    (id, token)
}

/// Since 1.1 a service call made inside a request carries the request's end user, even
/// when the calling module was built against 1.0: billing (built against this host's
/// plugin-api) answers a user about their own subscription only, so a user who may use
/// a module depending on billing cannot read another user's subscription through it.
fn the_end_user_travels_with_a_service_call_so_a_provider_is_not_a_confused_deputy(mode: Mode) {
    let m = modules_with_compat();
    // A current module with a public route that calls billing.
    m.add(
        "anon",
        "faulty",
        "name: anon\nversion: 1.0.0\npermissions: [anon.probe.read, anon.probe.write]\n\
         dependencies:\n  billing: \">=1.0\"\npublic_routes:\n  - POST /api/v1/anon/call\n\
         config:\n  mode: ok\n",
    );
    let host = HostProcess::start(&m, &[mode.env()], &[]);
    let ours = modhost_plugin_api::PLUGIN_API_VERSION;
    assert_ne!(
        ours, "1.0.0",
        "the host must be a later minor than the module"
    );
    let (reader_id, reader) = limited_user(&host);
    for user in ["someone-else", reader_id.as_str()] {
        let body = json!({ "user_id": user, "plan": "pro" }).to_string();
        let sub = host.request("POST", "/api/v1/billing/subscriptions", body.as_bytes());
        assert_eq!(sub.status, 201, "{}", sub.text());
    }

    // The limited user may use compat's route, but billing refuses them someone else's
    // subscription (as not found: its existence is not revealed) ...
    let other = host.request_as(&reader, "GET", "/api/v1/compat/billing/someone-else", b"");
    assert_eq!(other.status, 404, "{}", other.text());
    // ... and answers about their own.
    let own = host.request_as(
        &reader,
        "GET",
        &format!("/api/v1/compat/billing/{reader_id}"),
        b"",
    );
    assert_eq!(own.status, 200, "{}", own.text());
    assert_eq!(own.json()["user_id"], reader_id.as_str());
    // A request without a token, on a public route, is anonymous: not "no request".
    let anonymous = http(
        host.addr,
        "POST",
        "/api/v1/anon/call",
        &[],
        br#"{"service":"billing.subscription.get","request":{"user_id":"someone-else"}}"#,
    );
    assert_eq!(anonymous.status, 422, "{}", anonymous.text());
    assert_eq!(anonymous.json()["kind"], "NotFound", "{}", anonymous.text());
    // A user holding billing.subscription.read (the operator) may ask about anyone.
    let operator = host.get("/api/v1/compat/billing/someone-else");
    assert_eq!(operator.status, 200, "{}", operator.text());
    // Billing logged the refusal with the user and the calling module.
    let refused = eventually("billing's refusal in the log", || {
        host.logs().into_iter().find(|l| {
            l.to_string()
                .contains("subscription of another user refused")
                && l.to_string().contains(&reader_id)
        })
    });
    assert_eq!(refused["module"], "billing", "{refused}");
    assert!(refused.to_string().contains("compat"), "{refused}");
}

in_both_modes!(
    a_module_built_against_plugin_api_1_0_runs_on_this_host,
    the_end_user_travels_with_a_service_call_so_a_provider_is_not_a_confused_deputy,
);
