//! PostgreSQL restarted while the host serves: requests fail cleanly (503) during the
//! outage and recover by themselves; committed data survives. Its own test binary, so no
//! other test uses the server while it restarts.
//!
//! It needs a PostgreSQL it can stop and start: a local cluster managed by Debian's
//! `pg_ctlcluster` (postgresql-common, as on this project's machines), reached at
//! `MODHOST_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`, which
//! must be served by that local cluster). Elsewhere it prints a SKIP line saying which of
//! these is missing; under CI (`CI` set) it fails instead. If it fails midway, it still
//! starts PostgreSQL again and drops its database.

mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::{HostProcess, Modules};
use sqlx::Connection;

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// What this test needs, for the SKIP and failure messages.
const NEEDS: &str = "this test stops and starts the local PostgreSQL cluster with Debian's \
    `pg_ctlcluster` (postgresql-common), so MODHOST_TEST_POSTGRES_URL (default \
    postgres://postgres@127.0.0.1:5432/test) must point at a cluster on this machine that \
    `pg_ctlcluster <version> main` manages";

fn admin_url() -> String {
    std::env::var("MODHOST_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.into())
}

/// The URL of database `db` on the server of `admin`.
fn database_url(admin: &str, db: &str) -> String {
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(admin);
    format!("{base}/{db}")
}

/// The host part of a `postgres://user@host:port/db` URL.
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let rest = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(rest);
    let end = rest.find([':', '/', '?']).unwrap_or(rest.len());
    &rest[..end]
}

fn skip(why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("the PostgreSQL restart test is required in CI: {why}; {NEEDS}");
    }
    eprintln!("SKIP: PostgreSQL restart test: {why}; {NEEDS}");
}

/// The versions of the local clusters `pg_ctlcluster` manages (`/etc/postgresql/<v>`).
fn cluster_versions() -> Vec<String> {
    std::fs::read_dir("/etc/postgresql")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `pg_ctlcluster <version> main ARGS` for every local cluster; true if all succeeded.
fn pg(args: &[&str]) -> bool {
    let versions = cluster_versions();
    let mut ok = !versions.is_empty();
    for v in &versions {
        ok &= Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", v, "main"])
            .args(args)
            .status()
            .is_ok_and(|s| s.success());
    }
    ok
}

/// Starts PostgreSQL again when dropped if the test stopped it and did not restart it,
/// so a failed assertion never leaves the machine without its database server.
struct RestartOnDrop {
    stopped: bool,
}

impl RestartOnDrop {
    fn stop(&mut self) {
        self.stopped = true;
        assert!(
            pg(&["stop", "-m", "fast"]),
            "pg_ctlcluster stop failed; {NEEDS}"
        );
    }

    fn start(&mut self) {
        assert!(pg(&["start"]), "pg_ctlcluster start failed; {NEEDS}");
        self.stopped = false;
    }
}

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        if self.stopped {
            eprintln!("pg_fault: the test failed with PostgreSQL stopped; starting it again");
            if !pg(&["start"]) {
                eprintln!("pg_fault: could not start PostgreSQL; run scripts/ensure-services.sh");
            }
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The test's database and the roles the host created in it; dropped with the guard.
struct TestDatabase {
    admin: String,
    name: String,
    role_prefix: String,
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin, name, prefix) = (&self.admin, &self.name, &self.role_prefix);
        let result = runtime().block_on(async {
            let mut c = sqlx::PgConnection::connect(admin).await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut c)
            .await?;
            for module in ["billing", "blog", "core"] {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP ROLE IF EXISTS \"{prefix}{module}\""
                )))
                .execute(&mut c)
                .await?;
            }
            Ok::<_, sqlx::Error>(())
        });
        if let Err(e) = result {
            eprintln!("pg_fault: could not drop database {name}: {e}");
        }
    }
}

#[test]
fn postgres_restart_gives_503_then_recovers_without_losing_data() {
    let admin = admin_url();
    let host_part = url_host(&admin);
    if !matches!(host_part, "127.0.0.1" | "localhost" | "::1" | "[::1]") {
        return skip(&format!(
            "MODHOST_TEST_POSTGRES_URL points at `{host_part}`, not at this machine"
        ));
    }
    if Command::new("pg_ctlcluster")
        .arg("--help")
        .output()
        .is_err()
    {
        return skip("pg_ctlcluster is not installed");
    }
    if cluster_versions().is_empty() {
        return skip("no cluster in /etc/postgresql");
    }
    let name = format!("modhost_pgfault_{}", std::process::id());
    let created = runtime().block_on(async {
        let mut c = sqlx::PgConnection::connect(&admin).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut c)
            .await
            .map(|_| ())
    });
    if let Err(e) = created {
        return skip(&format!("cannot reach {admin}: {e}"));
    }
    let prefix = format!("mhf{}_", std::process::id());
    // Dropped last: after the host is gone and PostgreSQL is up again.
    let _database = TestDatabase {
        admin: admin.clone(),
        name: name.clone(),
        role_prefix: prefix.clone(),
    };
    let mut postgres = RestartOnDrop { stopped: false };

    let m = Modules::new();
    m.add_example("billing");
    m.add_example("blog");
    let url = database_url(&admin, &name);
    let host = HostProcess::start(
        &m,
        &[
            ("MODHOST_DATABASE_URL", &url),
            ("MODHOST_POSTGRES_ROLE_PREFIX", &prefix),
        ],
        &[],
    );
    let created = host.request(
        "POST",
        "/api/v1/blog/posts",
        br#"{"title":"before the outage"}"#,
    );
    assert_eq!(created.status, 201, "{}", created.text());

    postgres.stop();
    // The server at the URL is the one that stopped.
    let reachable = runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&admin))
            .await
            .is_ok_and(|c| c.is_ok())
    });
    assert!(
        !reachable,
        "{admin} still answers after pg_ctlcluster stop; {NEEDS}"
    );
    let during = host.get("/api/v1/blog/posts");
    postgres.start();
    assert_eq!(during.status, 503, "during the outage: {}", during.text());
    assert!(
        during.json()["error"]
            .as_str()
            .unwrap()
            .contains("unavailable"),
        "{}",
        during.text()
    );
    assert_eq!(host.get("/healthz").status, 200, "the host keeps serving");

    // Recovers by itself: the pool reconnects.
    let until = Instant::now() + Duration::from_secs(30);
    let list = loop {
        let r = host.get("/api/v1/blog/posts");
        if r.status == 200 {
            break r.json();
        }
        assert!(
            Instant::now() < until,
            "no recovery: {} {}",
            r.status,
            r.text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        list[0]["title"], "before the outage",
        "committed data survived"
    );
    assert_eq!(
        host.request("POST", "/api/v1/blog/posts", br#"{"title":"after"}"#)
            .status,
        201
    );
}
