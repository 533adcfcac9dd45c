//! The data layer on both backends, with the same tests: embedded SQLite in a temp dir,
//! and the PostgreSQL server on 127.0.0.1:5432 (a fresh database and fresh roles per
//! test, dropped afterwards). Without a reachable PostgreSQL the Postgres half prints a
//! SKIP line; under CI (`CI` set) it fails instead.

mod common;

use std::path::Path;

use common::pg::{runtime, PgTestDb};
use common::{HostProcess, Mode, Modules};
use sqlx::{Connection, Row};

enum Backend {
    Sqlite,
    Postgres(PgTestDb),
}

impl Backend {
    fn label(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Backend::Sqlite => vec![],
            Backend::Postgres(db) => vec![
                ("MODHOST_DATABASE_URL", db.url.clone()),
                ("MODHOST_POSTGRES_ROLE_PREFIX", db.prefix.clone()),
            ],
        }
    }

    fn start(&self, m: &Modules) -> HostProcess {
        self.start_in(m, Mode::InProcess)
    }

    /// Starts the host with every module in `mode`.
    fn start_in(&self, m: &Modules, mode: Mode) -> HostProcess {
        let env = self.env();
        let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env.push(mode.env());
        HostProcess::start(m, &env, &[])
    }

    /// Runs `sql` directly (as the host's admin, not as the module) in `module`'s area
    /// and returns the first column of the first row as text, if any.
    fn peek(&self, m: &Modules, module: &str, sql: &str) -> Option<String> {
        runtime().block_on(async {
            match self {
                Backend::Sqlite => {
                    let path = m.data().join("db").join(format!("{module}.sqlite"));
                    let mut conn =
                        sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                            .await
                            .unwrap();
                    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .fetch_optional(&mut conn)
                        .await
                        .unwrap();
                    row.map(|r| {
                        r.try_get::<String, _>(0)
                            .unwrap_or_else(|_| r.get::<i64, _>(0).to_string())
                    })
                }
                Backend::Postgres(db) => {
                    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET search_path = {module}")))
                        .execute(&mut conn)
                        .await
                        .unwrap();
                    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .fetch_optional(&mut conn)
                        .await
                        .unwrap();
                    row.map(|r| {
                        r.try_get::<String, _>(0)
                            .unwrap_or_else(|_| r.get::<i64, _>(0).to_string())
                    })
                }
            }
        })
    }

    /// Whether `table` exists in `module`'s area.
    fn has_table(&self, m: &Modules, module: &str, table: &str) -> bool {
        let sql = match self {
            Backend::Sqlite => format!("SELECT name FROM sqlite_master WHERE type = 'table' AND name = '{table}'"),
            Backend::Postgres(_) => format!("SELECT tablename::text FROM pg_tables WHERE schemaname = '{module}' AND tablename = '{table}'"),
        };
        self.peek(m, module, &sql).is_some()
    }
}

/// SQLite always; PostgreSQL when reachable.
fn backends() -> Vec<Backend> {
    let mut out = vec![Backend::Sqlite];
    if let Some(db) = PgTestDb::create() {
        out.push(Backend::Postgres(db));
    }
    out
}

fn state(host: &HostProcess, module: &str) -> (String, String) {
    let m = host.module(module);
    assert!(!m.is_null(), "{module} is not in /admin/modules");
    (
        m["state"].as_str().unwrap_or_default().to_string(),
        m["reason"].as_str().unwrap_or_default().to_string(),
    )
}

fn add_migration(dir: &Path, file: &str, sql: &str) {
    std::fs::create_dir_all(dir.join("migrations")).unwrap();
    std::fs::write(dir.join("migrations").join(file), sql).unwrap();
}

fn blog_crud_over_http_and_data_survives_a_restart(mode: Mode) {
    for b in backends() {
        let label = b.label();
        let m = Modules::new();
        m.add_example("billing");
        m.add_example("blog");
        let host = b.start_in(&m, mode);
        let post = |body: &str| host.request("POST", "/api/v1/blog/posts", body.as_bytes());
        let a = post(r#"{"title":"First","body":"one"}"#);
        assert_eq!(a.status, 201, "{label}: {}", a.text());
        let id = a.json()["id"].as_i64().unwrap();
        assert_eq!(post(r#"{"title":"Second"}"#).status, 201, "{label}");
        assert_eq!(post(r#"{"title":""}"#).status, 400, "{label}");
        assert_eq!(post(r#"{"title":"x","extra":1}"#).status, 400, "{label}");
        assert_eq!(post("not json").status, 400, "{label}");

        let got = host.get(&format!("/api/v1/blog/posts/{id}"));
        assert_eq!(got.status, 200, "{label}");
        assert_eq!(got.json()["body"], "one", "{label}");
        assert!(
            got.json()["created_at"].as_str().unwrap().ends_with('Z'),
            "{label}"
        );
        assert_eq!(host.get("/api/v1/blog/posts/9999").status, 404, "{label}");
        assert_eq!(host.get("/api/v1/blog/posts/abc").status, 400, "{label}");

        let put = host.request(
            "PUT",
            &format!("/api/v1/blog/posts/{id}"),
            br#"{"title":"Edited","body":"two"}"#,
        );
        assert_eq!(put.status, 200, "{label}: {}", put.text());
        assert_eq!(put.json()["title"], "Edited", "{label}");
        assert_eq!(
            host.request("PUT", "/api/v1/blog/posts/9999", br#"{"title":"x"}"#)
                .status,
            404,
            "{label}"
        );

        let list = host.get("/api/v1/blog/posts?limit=1");
        assert_eq!(list.json().as_array().unwrap().len(), 1, "{label}");
        let all = host.get("/api/v1/blog/posts").json();
        assert_eq!(all.as_array().unwrap().len(), 2, "{label}");
        assert_eq!(
            host.get("/api/v1/blog/posts?limit=0").status,
            400,
            "{label}"
        );

        let second = all[1]["id"].as_i64().unwrap();
        assert_eq!(
            host.request("DELETE", &format!("/api/v1/blog/posts/{second}"), b"")
                .status,
            204,
            "{label}"
        );
        assert_eq!(
            host.request("DELETE", &format!("/api/v1/blog/posts/{second}"), b"")
                .status,
            404,
            "{label}"
        );
        let (code, _) = host.terminate();
        assert_eq!(code, Some(0));

        let host = b.start_in(&m, mode);
        let all = host.get("/api/v1/blog/posts").json();
        assert_eq!(
            all.as_array().unwrap().len(),
            1,
            "{label}: committed data survives a restart"
        );
        assert_eq!(all[0]["title"], "Edited", "{label}");
    }
}

#[test]
fn migrations_run_in_dependency_order_once_and_are_recorded() {
    for b in backends() {
        let label = b.label();
        let m = Modules::new();
        // `aaa` depends on `zzz`, so zzz migrates first although it sorts last.
        let zzz = m.add_faulty("zzz", "ok", "");
        let aaa = m.add_faulty("aaa", "ok", "dependencies:\n  zzz: \"1\"\n");
        add_migration(
            &zzz,
            "0001_create.sql",
            "CREATE TABLE zzz_items (id BIGINT PRIMARY KEY);",
        );
        add_migration(
            &zzz,
            "0002_more.sql",
            "CREATE TABLE zzz_more (id BIGINT PRIMARY KEY);",
        );
        add_migration(
            &aaa,
            "0001_create.sql",
            "CREATE TABLE aaa_items (id BIGINT PRIMARY KEY);",
        );

        let host = b.start(&m);
        let applied: Vec<String> = host
            .logs()
            .iter()
            .filter(|v| v["message"] == "migration applied")
            .filter(|v| !v["migration"].as_str().unwrap().starts_with("<built-in>"))
            .map(|v| {
                v["migration"]
                    .as_str()
                    .unwrap()
                    .rsplit("modules/")
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            applied,
            vec![
                "zzz/migrations/0001_create.sql",
                "zzz/migrations/0002_more.sql",
                "aaa/migrations/0001_create.sql"
            ],
            "{label}"
        );
        let recorded = host.request(
            "POST",
            "/api/v1/zzz/sql",
            b"SELECT version, description, checksum FROM _modhost_migrations ORDER BY version",
        );
        let rows = recorded.json()["rows"].as_array().unwrap().clone();
        assert_eq!(rows.len(), 2, "{label}: {}", recorded.text());
        assert_eq!(rows[1]["description"], "more", "{label}");
        assert_eq!(rows[0]["checksum"].as_str().unwrap().len(), 64, "{label}");
        host.terminate();

        // A second start applies nothing and both modules start.
        let host = b.start(&m);
        assert!(
            !host
                .logs()
                .iter()
                .any(|v| v["message"] == "migration applied"),
            "{label}: nothing applied twice"
        );
        assert_eq!(state(&host, "aaa").0, "started", "{label}");
        assert_eq!(
            b.peek(&m, "zzz", "SELECT count(*) FROM _modhost_migrations")
                .as_deref(),
            Some("2"),
            "{label}"
        );
    }
}

#[test]
fn changed_applied_migration_fails_the_module_and_its_dependents() {
    for b in backends() {
        let label = b.label();
        let m = Modules::new();
        let tamper = m.add_faulty("tamper", "ok", "");
        m.add_faulty("needs_tamper", "ok", "dependencies:\n  tamper: \"1\"\n");
        m.add_faulty("bystander", "ok", "");
        add_migration(
            &tamper,
            "0001_create.sql",
            "CREATE TABLE t (id BIGINT PRIMARY KEY);",
        );
        let host = b.start(&m);
        for name in ["tamper", "needs_tamper", "bystander"] {
            assert_eq!(state(&host, name).0, "started", "{label}: {name}");
        }
        host.terminate();

        add_migration(
            &tamper,
            "0001_create.sql",
            "CREATE TABLE t (id BIGINT PRIMARY KEY, extra TEXT);",
        );
        let host = b.start(&m);
        let (st, reason) = state(&host, "tamper");
        assert_eq!(st, "failed", "{label}");
        assert!(
            reason.contains("0001_create.sql: migration 1 was already applied with checksum"),
            "{label}: {reason}"
        );
        assert!(
            reason.contains("add a new migration instead"),
            "{label}: {reason}"
        );
        // Its dependent fails too, naming the dependency and why it failed.
        let (st, reason) = state(&host, "needs_tamper");
        assert_eq!(st, "failed", "{label}: {reason}");
        assert!(
            reason.contains("dependency `tamper` failed"),
            "{label}: {reason}"
        );
        assert!(
            reason.contains("was already applied with checksum"),
            "{label}: {reason}"
        );
        assert_eq!(host.get("/api/v1/tamper/ok").status, 404, "{label}");
        assert_eq!(host.get("/api/v1/needs_tamper/ok").status, 404, "{label}");
        assert_eq!(state(&host, "bystander").0, "started", "{label}");
        assert_eq!(host.get("/api/v1/bystander/ok").status, 200, "{label}");
    }
}

#[test]
fn failing_migration_rolls_back_and_fails_module_and_dependents_only() {
    for b in backends() {
        let label = b.label();
        let m = Modules::new();
        let broken = m.add_faulty("broken", "ok", "");
        m.add_faulty("needs_broken", "ok", "dependencies:\n  broken: \"1\"\n");
        m.add_faulty("unrelated", "ok", "");
        add_migration(
            &broken,
            "0001_ok.sql",
            "CREATE TABLE first_table (id BIGINT PRIMARY KEY);",
        );
        add_migration(
            &broken,
            "0002_bad.sql",
            "CREATE TABLE half_done (id BIGINT PRIMARY KEY);\nINSERT INTO no_such_table VALUES (1);\n",
        );
        let host = b.start(&m);
        let (st, reason) = state(&host, "broken");
        assert_eq!(st, "failed", "{label}");
        assert!(
            reason.contains("0002_bad.sql: migration failed and was rolled back"),
            "{label}: {reason}"
        );
        assert!(
            reason.contains("no_such_table"),
            "{label}: the SQL error is shown: {reason}"
        );
        let (st, reason) = state(&host, "needs_broken");
        assert_eq!(st, "failed", "{label}");
        assert!(
            reason.contains("dependency `broken` failed"),
            "{label}: {reason}"
        );
        assert_eq!(state(&host, "unrelated").0, "started", "{label}");
        host.terminate();

        assert!(
            b.has_table(&m, "broken", "first_table"),
            "{label}: 0001 stays applied"
        );
        assert!(
            !b.has_table(&m, "broken", "half_done"),
            "{label}: nothing of 0002 remains"
        );
        assert_eq!(
            b.peek(&m, "broken", "SELECT count(*) FROM _modhost_migrations")
                .as_deref(),
            Some("1"),
            "{label}"
        );

        // Fixed, it applies on the next start.
        add_migration(
            &broken,
            "0002_bad.sql",
            "CREATE TABLE half_done (id BIGINT PRIMARY KEY);\n",
        );
        let host = b.start(&m);
        assert_eq!(state(&host, "broken").0, "started", "{label}");
        assert_eq!(state(&host, "needs_broken").0, "started", "{label}");
    }
}

/// SQLite: each module has its own file, so another module's table is simply not in
/// the intruder's file; the barrier is that its connections refuse `ATTACH`, the only
/// way to open another file from SQL. PostgreSQL: one database, a schema and a role per
/// module; the intruder's role is denied the owner's schema.
fn another_module_s_data_is_refused_attach_on_sqlite_permission_on_postgres(mode: Mode) {
    for b in backends() {
        let label = b.label();
        let m = Modules::new();
        let owner = m.add_faulty("owner", "ok", "");
        m.add_faulty("intruder", "ok", "");
        add_migration(
            &owner,
            "0001_secret.sql",
            "CREATE TABLE owner_secrets (v TEXT);\nINSERT INTO owner_secrets VALUES ('s3cret');\n",
        );
        let host = b.start_in(&m, mode);
        let sql = |body: &str| host.request("POST", "/api/v1/intruder/sql", body.as_bytes());

        // Its own data works.
        let own = sql("SELECT 1 AS one");
        assert_eq!(own.status, 200, "{label}: {}", own.text());

        match &b {
            Backend::Sqlite => {
                let path = m.data().join("db/owner.sqlite");
                // The file the intruder aims at really holds the secret: opened by
                // anyone but a module connection, ATTACH reads it.
                let secret = runtime().block_on(async {
                    let control = m.tmp.path().join("control.sqlite");
                    let mut conn = sqlx::SqliteConnection::connect(&format!(
                        "sqlite://{}?mode=rwc",
                        control.display()
                    ))
                    .await
                    .unwrap();
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "ATTACH DATABASE '{}' AS stolen",
                        path.display()
                    )))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                    let row = sqlx::query("SELECT v FROM stolen.owner_secrets")
                        .fetch_one(&mut conn)
                        .await
                        .unwrap();
                    row.get::<String, _>(0)
                });
                assert_eq!(secret, "s3cret", "{label}: the control ATTACH reads it");

                // The intruder's ATTACH of that same file is refused, with the ATTACH
                // error, and so is a second name or a URI form of it.
                for attempt in [
                    format!("ATTACH DATABASE '{}' AS stolen", path.display()),
                    format!("ATTACH '{}' AS other", path.display()),
                    format!(
                        "ATTACH DATABASE 'file:{}?mode=ro' AS stolen",
                        path.display()
                    ),
                ] {
                    let resp = sql(&attempt);
                    assert_eq!(resp.status, 422, "{label}: `{attempt}`: {}", resp.text());
                    let denied = resp.json();
                    assert_eq!(denied["kind"], "Denied", "{label}: `{attempt}`: {denied}");
                    assert_eq!(
                        denied["error"],
                        "ATTACH is not allowed: a module can only use its own database",
                        "{label}: `{attempt}`"
                    );
                    assert!(!resp.text().contains("s3cret"), "{label}");
                    let after = sql("SELECT v FROM stolen.owner_secrets");
                    assert_eq!(after.status, 422, "{label}: nothing was attached");
                    assert!(!after.text().contains("s3cret"), "{label}");
                }
                // Without ATTACH the owner's table is not there at all: the intruder's
                // file is another file.
                let plain = sql("SELECT v FROM owner_secrets");
                assert_eq!(plain.status, 422, "{label}");
                assert!(
                    plain.json()["error"]
                        .as_str()
                        .unwrap()
                        .contains("no such table: owner_secrets"),
                    "{label}: {}",
                    plain.text()
                );
            }
            Backend::Postgres(_) => {
                // Unqualified, the name resolves in the intruder's own schema only.
                let plain = sql("SELECT v FROM owner_secrets");
                assert_eq!(plain.status, 422, "{label}: {}", plain.text());
                assert!(!plain.text().contains("s3cret"), "{label}");
                // Reaching for the owner's schema, another role, or shared schemas:
                // denied by the server.
                for (attempt, why) in [
                    (
                        "SELECT v FROM owner.owner_secrets",
                        "permission denied for schema owner",
                    ),
                    ("SET ROLE postgres", "permission denied"),
                    (
                        "CREATE TABLE public.planted (v TEXT)",
                        "permission denied for schema public",
                    ),
                    ("CREATE SCHEMA sneaky", "permission denied"),
                ] {
                    let resp = sql(attempt);
                    assert_eq!(resp.status, 422, "{label}: `{attempt}`: {}", resp.text());
                    let denied = resp.json();
                    assert_eq!(denied["kind"], "Denied", "{label}: `{attempt}`: {denied}");
                    assert!(
                        denied["error"].as_str().unwrap().contains(why),
                        "{label}: `{attempt}`: {denied}"
                    );
                    assert!(!resp.text().contains("s3cret"), "{label}");
                }
            }
        }
        // The owner still reads its own table.
        let mine = host.request("POST", "/api/v1/owner/sql", b"SELECT v FROM owner_secrets");
        assert_eq!(mine.json()["rows"][0]["v"], "s3cret", "{label}");
    }
}

fn transactions_and_typed_values(mode: Mode) {
    for b in backends() {
        let label = b.label();
        let m = Modules::new();
        m.add_faulty("txer", "ok", "");
        let host = b.start_in(&m, mode);
        let resp = host.request("POST", "/api/v1/txer/tx", b"");
        assert_eq!(resp.status, 200, "{label}: {}", resp.text());
        let v = resp.json();
        assert_eq!(
            v["labels"],
            serde_json::json!(["committed"]),
            "{label}: rolled back and dropped transactions leave nothing"
        );
        assert_eq!(
            v["count_inside"]["n"], 1,
            "{label}: a transaction sees its own writes"
        );
        assert_eq!(v["typed"]["i"], 42, "{label}");
        assert_eq!(v["typed"]["f"], 1.5, "{label}");
        assert_eq!(v["typed"]["t"], "text", "{label}");
        assert_eq!(v["typed"]["b"], serde_json::json!([1, 2, 3]), "{label}");
        assert_eq!(v["typed"]["n"], serde_json::Value::Null, "{label}");
    }
}

#[test]
fn unreachable_database_is_retried_then_reported() {
    let m = Modules::new();
    m.add_example("hello");
    let started = std::time::Instant::now();
    let result = HostProcess::try_start(
        &m,
        &[
            (
                "MODHOST_DATABASE_URL",
                "postgres://postgres@127.0.0.1:1/nothing",
            ),
            ("MODHOST_DATABASE_CONNECT_TIMEOUT", "1s"),
        ],
        &[],
    );
    let Err((msg, logs)) = result else {
        panic!("the host must not start without its database");
    };
    assert!(
        msg.contains("cannot reach the database at postgres://postgres@127.0.0.1:1/nothing after"),
        "{msg}"
    );
    assert!(msg.contains("is it running?"), "{msg}");
    assert!(
        logs.iter()
            .any(|l| l.contains("database not reachable yet")),
        "retries are logged: {logs:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

/// `admin create-user` against PostgreSQL prints its result and nothing else: no
/// NOTICE from the idempotent setup statements on a database that is already set up.
#[test]
fn create_user_on_postgres_prints_no_database_notices() {
    let Some(db) = PgTestDb::create() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    for email in ["first@example.com", "second@example.com"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_modhost"))
            .args([
                "admin",
                "create-user",
                email,
                "--database-url",
                &db.url,
                "--data-dir",
            ])
            .arg(data.path())
            .env("MODHOST_POSTGRES_ROLE_PREFIX", &db.prefix)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{stdout}{stderr}");
        assert!(
            stdout.starts_with(&format!("created user {email}")),
            "{stdout}"
        );
        assert!(
            !stderr.contains("notice") && !stderr.contains("already exists"),
            "second run must not print database notices: {stderr}"
        );
    }
}

in_both_modes!(
    blog_crud_over_http_and_data_survives_a_restart,
    another_module_s_data_is_refused_attach_on_sqlite_permission_on_postgres,
    transactions_and_typed_values,
);
