//! PostgreSQL provisioning as a password-checking server sees it.
//!
//! - A hot reload refused after the new version's area was prepared leaves the serving
//!   version's credentials working: the module's role keeps one password for the life of
//!   the host process, and the serving pool is handed to the next version, never
//!   replaced under it. Checked on a PostgreSQL this test starts itself with
//!   `initdb --auth=scram-sha-256`, so a stale password is refused for real.
//! - A database name that needs quoting is quoted, not spliced into SQL.
//!
//! Without PostgreSQL's server binaries (`/usr/lib/postgresql/*/bin`) or the shared
//! server on 127.0.0.1:5432, a test prints a SKIP line; under CI (`CI` set) it fails.

mod common;

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{HostProcess, Modules};
use sqlx::Connection as _;

fn skip_or_fail(why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("required in CI: {why}");
    }
    eprintln!("SKIP: {why}");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The directory holding `initdb` and `pg_ctl`, if PostgreSQL's server is installed.
fn postgres_bin() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists() && bin.join("pg_ctl").exists())
        .collect();
    found.sort();
    found.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A command run as the `postgres` user when the test runs as root (initdb and the
/// server refuse to run as root), else as the current user.
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

const PASSWORD: &str = "a superuser password";

/// A PostgreSQL server with `scram-sha-256` authentication, in a temp dir, on a free
/// port; stopped (immediately) when dropped, even if the test failed.
struct ScramPostgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl ScramPostgres {
    fn start() -> Option<ScramPostgres> {
        let Some(bin) = postgres_bin() else {
            skip_or_fail("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin");
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).expect("password file");
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown the server's temp dir to postgres");
        }
        let out = as_server_user(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=scram-sha-256", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("run initdb");
        assert!(out.status.success(), "initdb failed: {out:?}");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let server = ScramPostgres {
            bin,
            data,
            port,
            _dir: dir,
        };
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            server.data.display()
        );
        let out = as_server_user(&server.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&server.data)
            .args(["-w", "-t", "60", "-o", &options, "-l"])
            .arg(server.data.join("server.log"))
            .arg("start")
            .output()
            .expect("run pg_ctl start");
        assert!(out.status.success(), "pg_ctl start failed: {out:?}");
        Some(server)
    }

    fn url(&self) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/postgres",
            PASSWORD.replace(' ', "%20"),
            self.port
        )
    }

    fn sql(&self, sql: &str) {
        let url = self.url();
        runtime()
            .block_on(async move {
                let mut conn = sqlx::PgConnection::connect(&url).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
                    .execute(&mut conn)
                    .await
                    .map(|_| ())
            })
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

impl Drop for ScramPostgres {
    fn drop(&mut self) {
        let _ = as_server_user(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn store_module(modules: &Modules) -> PathBuf {
    let manifest = "name: store\nversion: 1.0.0\npermissions: [store.probe.read, store.probe.write]\nconfig:\n  mode: ok\n";
    let dir = modules.add("store", "faulty", manifest);
    std::fs::create_dir_all(dir.join("migrations")).expect("migrations dir");
    std::fs::write(
        dir.join("migrations/0001_items.sql"),
        "CREATE TABLE items (label TEXT NOT NULL);",
    )
    .expect("migration");
    dir
}

fn insert(host: &HostProcess, label: &str) -> (u16, String) {
    let sql = format!("INSERT INTO items (label) VALUES ('{label}') RETURNING label");
    let r = host.request_as(&host.token, "POST", "/api/v1/store/sql", sql.as_bytes());
    (r.status, r.text())
}

#[test]
fn a_refused_reload_leaves_the_serving_version_able_to_reconnect() {
    let Some(pg) = ScramPostgres::start() else {
        return;
    };
    let modules = Modules::new();
    let dir = store_module(&modules);
    let url = pg.url();
    let host = HostProcess::start(&modules, &[("MODHOST_DATABASE_URL", url.as_str())], &[]);
    assert_eq!(insert(&host, "before").0, 200, "{:?}", insert(&host, "x"));

    // A new version whose migration fails: refused after its area was prepared.
    std::fs::write(dir.join("migrations/0002_broken.sql"), "THIS IS NOT SQL;")
        .expect("broken migration");
    let reload = host.request_as(&host.token, "POST", "/admin/modules/store/reload", b"");
    assert_eq!(reload.status, 409, "{}", reload.text());
    assert!(reload.text().contains("0002_broken"), "{}", reload.text());

    // Every connection of the module's role is cut: the serving version must log in
    // again, with the credentials its pool holds.
    pg.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'modhost_store'",
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let (status, body) = insert(&host, "after");
        if status == 200 || Instant::now() > deadline {
            break (status, body);
        }
        // A pooled connection that was cut fails once before the pool replaces it.
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        after.0, 200,
        "the serving version could not write after its connections were cut: {}",
        after.1
    );
}

#[test]
fn a_database_name_that_needs_quoting_is_quoted() {
    let admin = std::env::var("MODHOST_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let name = format!("modhost \"q{}\"", std::process::id());
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    let created = runtime().block_on(async {
        let mut conn = sqlx::PgConnection::connect(&admin).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {quoted}")))
            .execute(&mut conn)
            .await
            .map(|_| ())
    });
    if let Err(e) = created {
        return skip_or_fail(&format!("cannot create a database at {admin}: {e}"));
    }
    let prefix = format!("mhq{}_", std::process::id());
    // Dropped after the host (declared before it), also when an assertion fails: the
    // database and the module role the host made in it.
    let _cleanup = AdminSqlOnDrop {
        admin: admin.clone(),
        statements: vec![
            format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"),
            format!("DROP ROLE IF EXISTS \"{prefix}store\""),
        ],
    };
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    let encoded: String = name
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'0'..=b'9' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let url = format!("{base}/{encoded}");
    let modules = Modules::new();
    store_module(&modules);
    let host = HostProcess::start(
        &modules,
        &[
            ("MODHOST_DATABASE_URL", url.as_str()),
            ("MODHOST_POSTGRES_ROLE_PREFIX", prefix.as_str()),
        ],
        &[],
    );
    let modules_state = host.request_as(&host.token, "GET", "/admin/modules", b"");
    assert!(
        modules_state.text().contains("\"state\":\"started\""),
        "{}",
        modules_state.text()
    );
    let (status, body) = insert(&host, "quoted");
    assert_eq!(status, 200, "{body}");
}

/// Runs SQL statements as the admin when dropped (test clean-up that survives a failed
/// assertion).
struct AdminSqlOnDrop {
    admin: String,
    statements: Vec<String>,
}

impl Drop for AdminSqlOnDrop {
    fn drop(&mut self) {
        let (admin, statements) = (self.admin.clone(), std::mem::take(&mut self.statements));
        let _ = runtime().block_on(async move {
            let mut conn = sqlx::PgConnection::connect(&admin).await?;
            for sql in statements {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await?;
            }
            Ok::<_, sqlx::Error>(())
        });
    }
}
