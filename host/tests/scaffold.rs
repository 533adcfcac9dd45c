//! `scripts/new-plugin.sh` produces a plugin that builds, loads and answers, as the
//! plugin author's guide promises.

mod common;

use std::{
    collections::HashMap,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::{lib_file, workspace, HostProcess, Modules};

#[test]
fn scaffolded_plugin_builds_loads_and_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let crate_dir = tmp.path().join("greeter");
    let status = Command::new("bash")
        .arg(workspace().join("scripts/new-plugin.sh"))
        .args(["greeter", "--dir"])
        .arg(&crate_dir)
        .status()
        .unwrap();
    assert!(status.success());
    let ignore = std::fs::read_to_string(crate_dir.join(".gitignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "/target"), "{ignore}");
    // Same dependency versions and target dir as the workspace: nothing is rebuilt twice.
    std::fs::copy(workspace().join("Cargo.lock"), crate_dir.join("Cargo.lock")).unwrap();
    let target = common::profile_dir().parent().unwrap().to_path_buf();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&crate_dir)
        .args(["build", "--quiet", "--target-dir"])
        .arg(&target)
        .status()
        .unwrap();
    assert!(status.success(), "the scaffolded crate must build");

    let m = Modules::new();
    let dest = m.dir().join("greeter");
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::copy(crate_dir.join("module.yaml"), dest.join("module.yaml")).unwrap();
    std::fs::copy(
        target.join("debug").join(lib_file("greeter")),
        dest.join(lib_file("greeter")),
    )
    .unwrap();
    let host = HostProcess::start(&m, &[], &[]);
    let resp = host.get("/api/v1/greeter/hello");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["message"], "Hello from greeter");
}

#[test]
fn using_an_undeclared_permission_does_not_compile() {
    let tmp = tempfile::tempdir().unwrap();
    let crate_dir = tmp.path().join("sneaky");
    let status = Command::new("bash")
        .arg(workspace().join("scripts/new-plugin.sh"))
        .args(["sneaky", "--dir"])
        .arg(&crate_dir)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::copy(workspace().join("Cargo.lock"), crate_dir.join("Cargo.lock")).unwrap();
    let lib = crate_dir.join("src/lib.rs");
    let code = std::fs::read_to_string(&lib).unwrap();
    assert!(code.contains("permissions::GREETING_READ"));
    std::fs::write(
        &lib,
        code.replace("permissions::GREETING_READ", "permissions::GREETING_DELETE"),
    )
    .unwrap();
    let target = common::profile_dir().parent().unwrap().to_path_buf();
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&crate_dir)
        .args(["build", "--quiet", "--target-dir"])
        .arg(&target)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a permission missing from module.yaml must not compile"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("GREETING_DELETE") && stderr.contains("permissions"),
        "{stderr}"
    );
}

#[test]
fn scaffold_refuses_bad_names() {
    for bad in ["Greeter", "9lives", "has-dash", ""] {
        let out = Command::new("bash")
            .arg(workspace().join("scripts/new-plugin.sh"))
            .arg(bad)
            .args(["--dir", "/nonexistent/never-created"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
    }
}

/// The fenced blocks of docs/writing-a-plugin.md marked `<!-- guide-test: ID -->` on the
/// line before the fence, by ID. In Rust blocks, rustdoc's hidden lines (`# ...`) are
/// left out, as a reader copying the block would not have them.
fn guide_blocks() -> HashMap<String, String> {
    let guide = std::fs::read_to_string(workspace().join("docs/writing-a-plugin.md")).unwrap();
    let mut blocks = HashMap::new();
    let mut lines = guide.lines();
    while let Some(line) = lines.next() {
        let Some(id) = line
            .strip_prefix("<!-- guide-test: ")
            .and_then(|l| l.strip_suffix(" -->"))
        else {
            continue;
        };
        let fence = lines.next().unwrap_or_default();
        let info = fence
            .strip_prefix("```")
            .unwrap_or_else(|| panic!("`{id}`: no code block right after its marker"));
        let rust = info.starts_with("rust");
        let mut text = String::new();
        for l in lines.by_ref().take_while(|l| !l.starts_with("```")) {
            if rust && (l == "#" || l.starts_with("# ")) {
                continue;
            }
            text.push_str(l);
            text.push('\n');
        }
        assert!(
            blocks.insert(id.to_string(), text).is_none(),
            "`{id}` marked twice"
        );
    }
    blocks
}

/// A cdylib crate `name` in the scratch workspace `root`, with `lib_rs` as its code.
fn guide_crate(root: &Path, name: &str, lib_rs: &str, extra_toml: &str) {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let api = workspace().join("plugin-api").canonicalize().unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\n\
             [lib]\ncrate-type = [\"cdylib\"]\n\n\
             [dependencies]\nmodhost-plugin-api = {{ path = \"{api}\" }}\n\
             serde = {{ version = \"1\", features = [\"derive\"] }}\nserde_json = \"1\"\ntracing = \"0.1\"\n\n\
             {extra_toml}",
            api = api.display()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("src/lib.rs"), lib_rs).unwrap();
}

/// A module folder `folder` in `m` with the library, manifest and migrations given.
fn install(m: &Modules, folder: &str, lib: &Path, manifest: &str, migrations: &[(&str, &str)]) {
    let dir = m.dir().join(folder);
    std::fs::create_dir_all(dir.join("migrations")).unwrap();
    std::fs::write(dir.join("module.yaml"), manifest).unwrap();
    std::fs::copy(lib, dir.join(lib.file_name().unwrap())).unwrap();
    for (file, sql) in migrations {
        std::fs::write(dir.join("migrations").join(file), sql).unwrap();
    }
}

/// Rows of `sql` on a module's SQLite file, read beside the running host.
fn sqlite_rows(file: &Path, sql: &str) -> Vec<(i64, String)> {
    use sqlx::{Connection, Row};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = format!("sqlite://{}?mode=ro", file.display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<i64, _>(0), r.get::<String, _>(1)))
            .collect()
    })
}

/// The module code of the plugin author's guide, with its manifest, Cargo.toml,
/// build.rs and host config, built into plugins and run in the real host; the guide
/// names this test as what checks those blocks.
#[test]
fn guide_modules_run_in_the_real_host() {
    let blocks = guide_blocks();
    let block = |id: &str| {
        blocks
            .get(id)
            .unwrap_or_else(|| panic!("docs/writing-a-plugin.md has no block marked `{id}`"))
            .clone()
    };
    let api = workspace().join("plugin-api").canonicalize().unwrap();

    // One scratch workspace, built in one go with the main target dir and lock file.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::write(
        root.join("Cargo.toml"),
        "[workspace]\nresolver = \"2\"\nmembers = [\"guide_greeter\", \"guide_config\", \"guide_notes\", \"guide_events\"]\n",
    )
    .unwrap();
    std::fs::copy(workspace().join("Cargo.lock"), root.join("Cargo.lock")).unwrap();
    let build_deps = block("build-dependencies").replace(
        "path = \"../../plugin-api\"",
        &format!("path = \"{}\"", api.display()),
    );
    assert!(
        build_deps.contains(&api.display().to_string()),
        "the guide's [build-dependencies] names ../../plugin-api: {build_deps}"
    );
    guide_crate(root, "guide_greeter", &block("greeter-lib"), &build_deps);
    std::fs::write(root.join("guide_greeter/build.rs"), block("build-rs")).unwrap();
    std::fs::write(
        root.join("guide_greeter/module.yaml"),
        block("greeter-manifest"),
    )
    .unwrap();
    guide_crate(root, "guide_config", &block("config-lib"), "");
    guide_crate(root, "guide_notes", &block("notes-lib"), "");
    guide_crate(root, "guide_events", &block("events-lib"), "");
    let target = common::profile_dir().parent().unwrap().to_path_buf();
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args(["build", "--quiet", "--workspace", "--target-dir"])
        .arg(&target)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the guide's plugins must build:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lib = |name: &str| target.join("debug").join(lib_file(name));
    // Built by the guide's build.rs from the guide's module.yaml.
    let generated = std::fs::read_dir(target.join("debug/build"))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("guide_greeter-")
        })
        .map(|e| e.path().join("out/modhost_permissions.rs"))
        .filter(|p| p.exists())
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect::<Vec<_>>();
    assert!(
        generated
            .iter()
            .any(|code| code.contains("pub const GREETING_READ: Permission")),
        "{generated:?}"
    );

    // Section 2 (with sections 3, 6 and 7's host config) and section 7's config type.
    let m = Modules::new();
    install(
        &m,
        "greeter",
        &lib("guide_greeter"),
        &block("greeter-manifest"),
        &[],
    );
    let config_manifest =
        |name: &str, config: &str| format!("name: {name}\nversion: 0.1.0\nconfig:\n{config}");
    install(
        &m,
        "configured",
        &lib("guide_config"),
        &config_manifest("configured", "  greeting: Hi\n"),
        &[],
    );
    install(
        &m,
        "misconfigured",
        &lib("guide_config"),
        &config_manifest("misconfigured", "  greeting: [not, text]\n"),
        &[],
    );
    let config = m.tmp.path().join("modhost.toml");
    std::fs::write(&config, block("host-config")).unwrap();
    let host = HostProcess::start(&m, &[], &["--config", config.to_str().unwrap()]);
    let hello = host.get("/api/v1/greeter/hello");
    assert_eq!(hello.status, 200, "{}", hello.text());
    assert_eq!(
        hello.json(),
        serde_json::json!({ "message": "Howdy from greeter" }),
        "the host config's greeting reaches the handler"
    );
    let anonymous = common::http(host.addr, "GET", "/api/v1/greeter/hello", &[], b"");
    assert_eq!(
        anonymous.status, 401,
        "the route needs greeter.greeting.read"
    );
    let logs = host.logs();
    assert!(
        common::messages_with(&logs, "module", "greeter").contains(&"greeter ready".to_string()),
        "{logs:?}"
    );
    let configured = common::messages_with(&logs, "module", "configured");
    assert!(
        configured.iter().any(|l| l.starts_with("configured")
            && l.contains("greeting=Hi")
            && l.contains("limit=20")),
        "the config type with its default: {configured:?}"
    );
    let failed = host.module("misconfigured");
    assert_eq!(failed["state"], "failed", "{failed}");
    let reason = failed["reason"].as_str().unwrap();
    assert!(
        reason.contains("invalid config for module misconfigured"),
        "the error names the module: {reason}"
    );
    drop(host);

    // Section 8: the database.
    let m = Modules::new();
    install(
        &m,
        "greeter",
        &lib("guide_notes"),
        "name: greeter\nversion: 0.1.0\npermissions: [greeter.note.create]\n",
        &[(
            "0001_create_notes.sql",
            "CREATE TABLE greeter_notes (id INTEGER PRIMARY KEY AUTOINCREMENT, text TEXT NOT NULL);\n",
        )],
    );
    let host = HostProcess::start(&m, &[], &[]);
    let first = host.request("POST", "/api/v1/greeter/notes", b"hi");
    assert_eq!(first.status, 201, "{}", first.text());
    assert_eq!(
        first.json(),
        serde_json::json!([{ "id": 1, "text": "HI" }]),
        "inserted, upper-cased in the committed transaction, listed"
    );
    let second = host.request("POST", "/api/v1/greeter/notes", b"there");
    assert_eq!(
        second.json(),
        serde_json::json!([{ "id": 1, "text": "HI" }, { "id": 2, "text": "there" }])
    );
    drop(host);

    // Section 9: events, services, cache and calls, next to the example modules.
    let m = Modules::new();
    m.add_example("billing");
    m.add_example("blog");
    install(
        &m,
        "greeter",
        &lib("guide_events"),
        &format!(
            "name: greeter\nversion: 0.1.0\npermissions: [greeter.note.create]\n{}",
            block("events-manifest")
        ),
        &[(
            "0001_seen.sql",
            "CREATE TABLE greeter_seen (event_id TEXT PRIMARY KEY, title TEXT NOT NULL);\n",
        )],
    );
    m.add_faulty("caller", "ok", "dependencies:\n  greeter: \"0.1\"\n");
    let host = HostProcess::start(&m, &[], &[]);
    assert_eq!(host.module("greeter")["state"], "started");
    // The subscription: a blog post lands in greeter_seen.
    let post = host.request(
        "POST",
        "/api/v1/blog/posts",
        br#"{"title":"Seen by greeter"}"#,
    );
    assert_eq!(post.status, 201, "{}", post.text());
    let seen_db = m.data().join("db/greeter.sqlite");
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = sqlite_rows(&seen_db, "SELECT rowid, title FROM greeter_seen");
        if !seen.is_empty() {
            assert_eq!(seen.len(), 1, "{seen:?}");
            assert_eq!(seen[0].1, "Seen by greeter", "{seen:?}");
            break;
        }
        assert!(
            Instant::now() < until,
            "blog.post.created never reached greeter"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The service, called by a module that depends on greeter.
    let call = host.request(
        "POST",
        "/api/v1/caller/call",
        br#"{"service":"greeter.note.get","request":{"id":7}}"#,
    );
    assert_eq!(call.status, 200, "{}", call.text());
    assert_eq!(call.json(), serde_json::json!({ "id": 7, "text": "hello" }));
    // The route: without a subscription billing's NotFound becomes a 404 ...
    let none = host.request("POST", "/api/v1/greeter/notes", b"");
    assert_eq!(none.status, 404, "{}", none.text());
    assert!(
        none.json()["error"]
            .as_str()
            .unwrap()
            .contains("user u1 has no active subscription"),
        "{}",
        none.text()
    );
    // ... and with one, the route answers it (after publishing, caching and sleeping).
    let sub = host.request(
        "POST",
        "/api/v1/billing/subscriptions",
        br#"{"user_id":"u1","plan":"pro"}"#,
    );
    assert_eq!(sub.status, 201, "{}", sub.text());
    let note = host.request("POST", "/api/v1/greeter/notes", b"");
    assert_eq!(note.status, 201, "{}", note.text());
    let answer = note.json();
    assert_eq!(answer["user_id"], "u1", "{answer}");
    assert_eq!(answer["plan"], "pro", "{answer}");
    assert!(
        host.get("/admin/dead-letters")
            .json()
            .as_array()
            .unwrap()
            .is_empty(),
        "no event failed"
    );
    // Event ids stay unique across host runs: after a restart, four more posts are four
    // more rows, none taken for a redelivery of the first run's post (ids that restarted
    // at 1 gave 4 rows for 5 posts here).
    drop(host);
    let host = HostProcess::start(&m, &[], &[]);
    for i in 0..4 {
        let title = format!("{{\"title\":\"After restart {i}\"}}");
        let post = host.request("POST", "/api/v1/blog/posts", title.as_bytes());
        assert_eq!(post.status, 201, "{}", post.text());
    }
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = sqlite_rows(&seen_db, "SELECT rowid, title FROM greeter_seen");
        if seen.len() == 5 {
            break;
        }
        assert!(
            Instant::now() < until,
            "5 posts across two host runs must give 5 rows: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
