//! Core services and enforcement over real HTTP: login, 401/403/200 on module routes,
//! role changes taking effect, revocation, the audit trail, the admin CLI and the
//! module-facing service handles.

mod common;

use std::{
    io::{Read, Write},
    process::{Command, Stdio},
    time::Duration,
};

use common::{http, HostProcess, HttpResponse, KillOnDrop, Mode, Modules};
use serde_json::{json, Value};

/// `modhost admin create-user EMAIL --role ... --password-stdin`.
fn create_user(m: &Modules, email: &str, password: &str, roles: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_modhost"));
    cmd.args([
        "admin",
        "create-user",
        email,
        "--password-stdin",
        "--data-dir",
    ])
    .arg(m.data());
    for r in roles {
        cmd.args(["--role", r]);
    }
    // Killed on drop: a failed write below cannot leave it waiting on its stdin.
    let mut child = KillOnDrop::spawn(
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    // Writing and then dropping stdin ends the password line and the input.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child
        .wait_timeout(Duration::from_secs(60))
        .expect("create-user did not exit within 60 s");
    assert!(status.success(), "create-user failed: {stdout}{stderr}");
    assert!(!stdout.contains(password), "the password is not echoed");
    stdout
}

fn login(host: &HostProcess, email: &str, password: &str) -> HttpResponse {
    let body = json!({ "email": email, "password": password }).to_string();
    http(
        host.addr,
        "POST",
        "/api/v1/auth/login",
        &[],
        body.as_bytes(),
    )
}

fn token_of(resp: &HttpResponse) -> String {
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()["access_token"].as_str().unwrap().to_string()
}

fn audit(host: &HostProcess, query: &str) -> Vec<Value> {
    let r = host.get(&format!("/api/v1/audit?{query}"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().as_array().unwrap().clone()
}

fn setup() -> (Modules, HostProcess) {
    setup_in(Mode::InProcess)
}

fn setup_in(mode: Mode) -> (Modules, HostProcess) {
    let m = Modules::new();
    m.add_example("hello");
    m.add_example("billing");
    m.add_example("blog");
    m.add_faulty("probe", "ok", "");
    let host = HostProcess::start(&m, &[mode.env()], &[]);
    (m, host)
}

#[test]
fn login_and_401_403_200_on_module_routes_with_role_changes_taking_effect() {
    let (m, host) = setup();
    create_user(&m, "writer@example.com", "correct horse", &[]);

    // Wrong password, unknown email: 401, audited.
    assert_eq!(
        login(&host, "writer@example.com", "wrong password").status,
        401
    );
    assert_eq!(login(&host, "nobody@example.com", "whatever1").status, 401);
    let token = token_of(&login(&host, "Writer@Example.com", "correct horse"));

    // No token, a garbage token, an expired-looking token: 401 with a JSON error.
    let anon = http(host.addr, "GET", "/api/v1/blog/posts", &[], b"");
    assert_eq!(anon.status, 401);
    assert_eq!(anon.header("www-authenticate"), Some("Bearer"));
    assert!(anon.json()["error"]
        .as_str()
        .unwrap()
        .contains("authentication required"));
    assert_eq!(
        host.request_as("not.a.token", "GET", "/api/v1/blog/posts", b"")
            .status,
        401
    );

    // A valid token without the permission: 403.
    let denied = host.request_as(&token, "GET", "/api/v1/blog/posts", b"");
    assert_eq!(denied.status, 403, "{}", denied.text());
    assert!(denied.json()["error"]
        .as_str()
        .unwrap()
        .contains("blog.post.read"));

    // Grant through a role: 200.
    let me = host
        .request_as(&token, "GET", "/api/v1/auth/me", b"")
        .json();
    let user_id = me["id"].as_str().unwrap().to_string();
    let role = host.request(
        "POST",
        "/api/v1/authz/roles",
        json!({ "name": "blog_reader", "permissions": ["blog.post.read"] })
            .to_string()
            .as_bytes(),
    );
    assert_eq!(role.status, 201, "{}", role.text());
    let assign = host.request(
        "POST",
        &format!("/api/v1/authz/users/{user_id}/roles"),
        br#"{"role":"blog_reader"}"#,
    );
    assert_eq!(assign.status, 200, "{}", assign.text());
    assert_eq!(
        host.request_as(&token, "GET", "/api/v1/blog/posts", b"")
            .status,
        200
    );
    assert_eq!(
        host.request_as(&token, "POST", "/api/v1/blog/posts", br#"{"title":"x"}"#)
            .status,
        403
    );

    // Widen it to a wildcard, then narrow it again: each change applies at once.
    let widen = host.request(
        "PUT",
        "/api/v1/authz/roles/blog_reader",
        br#"{"permissions":["blog.*"]}"#,
    );
    assert_eq!(widen.status, 200, "{}", widen.text());
    assert_eq!(
        host.request_as(&token, "POST", "/api/v1/blog/posts", br#"{"title":"x"}"#)
            .status,
        201
    );
    host.request(
        "PUT",
        "/api/v1/authz/roles/blog_reader",
        br#"{"permissions":[]}"#,
    );
    assert_eq!(
        host.request_as(&token, "GET", "/api/v1/blog/posts", b"")
            .status,
        403
    );

    // Granting an undeclared permission is refused; the built-in admin role is fixed.
    let bad = host.request(
        "PUT",
        "/api/v1/authz/roles/blog_reader",
        br#"{"permissions":["blog.post.publish"]}"#,
    );
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert_eq!(
        host.request("DELETE", "/api/v1/authz/roles/admin", b"")
            .status,
        403
    );

    // The handler sees the caller.
    host.request(
        "PUT",
        "/api/v1/authz/roles/blog_reader",
        br#"{"permissions":["probe.*"]}"#,
    );
    let ok = host
        .request_as(&token, "GET", "/api/v1/probe/ok", b"")
        .json();
    assert_eq!(ok["user"]["email"], "writer@example.com");
    assert_eq!(ok["user"]["permissions"], json!(["probe.*"]));

    // Every denial, login and permission change is in the audit log.
    let denied = audit(&host, "action=request.denied&limit=100");
    assert!(denied
        .iter()
        .any(|e| e["target"] == "GET /api/v1/blog/posts"
            && e["actor"] == "anonymous"
            && e["detail"].as_str().unwrap().starts_with("401")));
    assert!(denied.iter().any(|e| e["actor"] == user_id.as_str()
        && e["detail"].as_str().unwrap().starts_with("403")
        && e["module"] == "blog"));
    let logins = audit(&host, "action=auth.login");
    assert!(logins
        .iter()
        .any(|e| e["outcome"] == "success" && e["actor"] == user_id.as_str()));
    assert!(logins
        .iter()
        .any(|e| e["outcome"] == "failure" && e["detail"] == "wrong password"));
    assert!(logins
        .iter()
        .any(|e| e["outcome"] == "failure" && e["detail"] == "unknown email"));
    assert_eq!(audit(&host, "action=authz.role.create").len(), 1);
    assert!(audit(&host, "action=authz.role.update").len() >= 3);
    assert_eq!(
        audit(&host, "action=authz.role.assign&actor=console")[0]["target"],
        user_id.as_str()
    );
    // Paging: newest first, `before` continues.
    let page = audit(&host, "limit=2");
    let next = audit(&host, &format!("limit=2&before={}", page[1]["id"]));
    assert!(next[0]["id"].as_i64().unwrap() < page[1]["id"].as_i64().unwrap());
}

#[test]
fn public_routes_need_no_token_and_admin_endpoints_do() {
    let (m, host) = setup();
    let open = http(host.addr, "GET", "/api/v1/hello/greet/ada", &[], b"");
    assert_eq!(open.status, 200);
    // A bad token on a public route is ignored, not an error.
    assert_eq!(
        host.request_as("garbage", "GET", "/api/v1/hello/greet/ada", b"")
            .status,
        200
    );
    assert_eq!(http(host.addr, "GET", "/healthz", &[], b"").status, 200);
    assert_eq!(http(host.addr, "GET", "/readyz", &[], b"").status, 200);

    assert_eq!(
        http(host.addr, "GET", "/admin/modules", &[], b"").status,
        401
    );
    create_user(&m, "plain@example.com", "plain password", &[]);
    let plain = token_of(&login(&host, "plain@example.com", "plain password"));
    assert_eq!(
        host.request_as(&plain, "GET", "/admin/modules", b"").status,
        403
    );
    assert_eq!(host.get("/admin/modules").status, 200);
    // A core endpoint without its permission.
    assert_eq!(
        host.request_as(&plain, "GET", "/api/v1/identity/users", b"")
            .status,
        403
    );

    create_user(&m, "boss@example.com", "boss password", &["admin"]);
    let boss = token_of(&login(&host, "boss@example.com", "boss password"));
    assert_eq!(
        host.request_as(&boss, "GET", "/admin/modules", b"").status,
        200
    );
    let users = host.request_as(
        &boss,
        "GET",
        "/api/v1/identity/users?email=PLAIN@example.com",
        b"",
    );
    assert_eq!(users.json()[0]["email"], "plain@example.com");
}

#[test]
fn revocation_refresh_and_disabling_take_effect() {
    let (m, host) = setup();
    create_user(&m, "ann@example.com", "ann password", &["admin"]);
    let pair = login(&host, "ann@example.com", "ann password").json();
    let access = pair["access_token"].as_str().unwrap().to_string();
    let refresh = pair["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(
        host.request_as(&access, "GET", "/api/v1/auth/me", b"")
            .status,
        200
    );

    // A refresh token is not an access token.
    assert_eq!(
        host.request_as(&refresh, "GET", "/api/v1/auth/me", b"")
            .status,
        401
    );
    let renewed = http(
        host.addr,
        "POST",
        "/api/v1/auth/refresh",
        &[],
        json!({ "refresh_token": refresh }).to_string().as_bytes(),
    );
    assert_eq!(renewed.status, 200, "{}", renewed.text());
    let again = http(
        host.addr,
        "POST",
        "/api/v1/auth/refresh",
        &[],
        json!({ "refresh_token": refresh }).to_string().as_bytes(),
    );
    assert_eq!(again.status, 401, "a refresh token works once");

    // Revoking the presented token.
    assert_eq!(
        host.request_as(&access, "POST", "/api/v1/auth/revoke", b"")
            .status,
        200
    );
    let after = host.request_as(&access, "GET", "/api/v1/auth/me", b"");
    assert_eq!(after.status, 401);
    assert!(after.json()["error"].as_str().unwrap().contains("revoked"));

    // Disabling a user stops their live tokens.
    let fresh = token_of(&login(&host, "ann@example.com", "ann password"));
    let id = host
        .request_as(&fresh, "GET", "/api/v1/auth/me", b"")
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        host.request("POST", &format!("/api/v1/identity/users/{id}/disable"), b"")
            .status,
        200
    );
    assert_eq!(
        host.request_as(&fresh, "GET", "/api/v1/auth/me", b"")
            .status,
        401
    );
    assert_eq!(login(&host, "ann@example.com", "ann password").status, 401);
    assert_eq!(audit(&host, "action=identity.user.disable").len(), 1);
}

#[test]
fn module_lifecycle_is_audited() {
    let m = Modules::new();
    m.add_example("hello");
    m.add_faulty("broken", "init_error", "");
    let host = HostProcess::start(&m, &[], &[]);
    let loads = audit(&host, "action=module.load");
    assert!(loads
        .iter()
        .any(|e| e["module"] == "hello" && e["outcome"] == "success"));
    let fails = audit(&host, "action=module.fail");
    assert!(fails.iter().any(|e| e["module"] == "broken"
        && e["detail"]
            .as_str()
            .unwrap()
            .contains("configured to fail in init")));
    let (code, _) = host.terminate();
    assert_eq!(code, Some(0));
    let host = HostProcess::start(&m, &[], &[]);
    let stops = audit(&host, "action=module.stop");
    assert!(stops.iter().any(|e| e["module"] == "hello"), "{stops:?}");
}

fn modules_use_the_core_service_handles(mode: Mode) {
    let (m, host) = setup_in(mode);
    create_user(&m, "mod@example.com", "module user", &[]);
    host.request(
        "POST",
        "/api/v1/authz/roles",
        br#"{"name":"prober","permissions":["probe.probe.read","blog.post.create"]}"#,
    );
    let token = token_of(&login(&host, "mod@example.com", "module user"));
    let id = host
        .request_as(&token, "GET", "/api/v1/auth/me", b"")
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    host.request(
        "POST",
        &format!("/api/v1/authz/users/{id}/roles"),
        br#"{"role":"prober"}"#,
    );
    let r = host.request_as(&token, "GET", "/api/v1/probe/core", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["email"], "mod@example.com");
    assert_eq!(v["can_write"], true);
    assert_eq!(v["audit"], 1, "the module sees its own audit entry");
    assert_eq!(v["missing"], "NotFound");
    let entries = audit(&host, "action=probe.core");
    assert_eq!(
        entries[0]["module"], "probe",
        "the host stamps the calling module"
    );
}

#[test]
fn openapi_describes_core_and_module_routes() {
    let (_m, host) = setup();
    let doc = http(host.addr, "GET", "/openapi.json", &[], b"").json();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/api/v1/auth/login"]["post"]["security"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(
        doc["paths"]["/api/v1/identity/users"]["post"]["x-permission"],
        "core.user.create"
    );
    assert_eq!(
        doc["paths"]["/api/v1/blog/posts/{id}"]["put"]["x-permission"],
        "blog.post.update"
    );
    assert!(
        doc["paths"]["/api/v1/hello/greet/{name}"]["get"]["security"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        doc["paths"]["/api/v1/blog/posts/{id}"]["get"]["parameters"][0]["name"],
        "id"
    );
    // What the host accepts, typed: core parameters and bodies ...
    let check = &doc["paths"]["/api/v1/authz/check"]["get"]["parameters"];
    assert_eq!(check[0]["name"], "user_id");
    assert_eq!(check[0]["required"], true, "{check}");
    assert_eq!(check[1]["required"], true, "{check}");
    let audit = &doc["paths"]["/api/v1/audit"]["get"]["parameters"];
    let limit = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .unwrap();
    assert_eq!(limit["schema"]["maximum"], 1000, "{limit}");
    let new_user = &doc["paths"]["/api/v1/identity/users"]["post"]["requestBody"]["content"]
        ["application/json"]["schema"]["properties"];
    assert_eq!(new_user["password"]["minLength"], 8, "{new_user}");
    // ... grants from the running modules' declarations ...
    let grants = doc["components"]["schemas"]["Grant"]["anyOf"][0]["enum"].to_string();
    assert!(grants.contains("\"blog.post.read\""), "{grants}");
    assert!(grants.contains("\"*\""), "{grants}");
    // ... and what the modules described (plugin-api 1.2): typed parameters, bodies,
    // responses and event payloads.
    let read = &doc["paths"]["/api/v1/blog/posts/{id}"]["get"];
    assert_eq!(read["parameters"][0]["schema"]["type"], "integer", "{read}");
    assert_eq!(
        read["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["premium"]
            ["type"],
        "boolean",
        "{read}"
    );
    let create = &doc["paths"]["/api/v1/blog/posts"]["post"]["requestBody"];
    assert_eq!(create["required"], true, "{create}");
    assert_eq!(
        create["content"]["application/json"]["schema"]["properties"]["title"]["maxLength"], 200,
        "the configured max_title_len: {create}"
    );
    let plans = &doc["paths"]["/api/v1/billing/subscriptions"]["post"]["requestBody"]["content"]
        ["application/json"]["schema"]["properties"]["plan"]["enum"];
    assert_eq!(plans, &json!(["free", "pro"]), "the configured plans");
    let event = &doc["x-events"]["blog.post.created"];
    assert_eq!(event["publisher"], "blog", "{event}");
    assert_eq!(
        event["payload"]["properties"]["title"]["type"], "string",
        "{event}"
    );
    assert_eq!(
        doc["x-events"]["billing.subscription.created"]["publisher"],
        "billing"
    );
}

#[test]
fn a_route_description_that_does_not_fit_the_route_fails_the_module() {
    let m = Modules::new();
    m.add_faulty("described", "bad_description", "");
    m.add_example("hello");
    let host = HostProcess::start(&m, &[], &[]);
    let state = host.module("described");
    assert_eq!(state["state"], "failed", "{state}");
    assert!(
        state["reason"].as_str().unwrap().contains(
            "route GET /api/v1/described/items/{id}: its description names a path parameter `item` the path does not have"
        ),
        "{state}"
    );
    assert_eq!(host.get("/api/v1/hello/greet/x").status, 200);
}

#[test]
fn undeclared_permission_fails_the_module() {
    let m = Modules::new();
    m.add_faulty("sneaky", "undeclared_permission", "");
    let host = HostProcess::start(&m, &[], &[]);
    let modules = host.get("/admin/modules").json();
    let sneaky = modules
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "sneaky")
        .unwrap()
        .clone();
    assert_eq!(sneaky["state"], "failed");
    assert!(
        sneaky["reason"].as_str().unwrap().contains(
            "requires permission `sneaky.secret.read`, which module.yaml does not declare"
        ),
        "{sneaky}"
    );
}

#[test]
fn create_user_refuses_bad_input_clearly() {
    let m = Modules::new();
    let out = Command::new(env!("CARGO_BIN_EXE_modhost"))
        .args(["admin", "create-user", "not-an-email", "--data-dir"])
        .arg(m.data())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a valid email address"));
    // Without --password-stdin a password is generated and printed once.
    let out = Command::new(env!("CARGO_BIN_EXE_modhost"))
        .args([
            "admin",
            "create-user",
            "gen@example.com",
            "--role",
            "admin",
            "--data-dir",
        ])
        .arg(m.data())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("password: "));
    let out = Command::new(env!("CARGO_BIN_EXE_modhost"))
        .args([
            "admin",
            "create-user",
            "x@example.com",
            "--role",
            "no_such_role",
            "--data-dir",
        ])
        .arg(m.data())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no role `no_such_role`"));
}

in_both_modes!(modules_use_the_core_service_handles);
