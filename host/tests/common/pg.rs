//! A fresh PostgreSQL database (and role prefix) per test, on the server tests use
//! (`MODHOST_TEST_POSTGRES_URL`, default postgres://postgres@127.0.0.1:5432/test),
//! dropped with its roles afterwards. Without a reachable server, [`PgTestDb::create`]
//! prints a SKIP line and returns `None`; under CI (`CI` set) it fails instead.

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::{Connection, Row};

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub fn admin_url() -> String {
    std::env::var("MODHOST_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.into())
}

/// A fresh PostgreSQL database and role prefix for one test; dropped with it.
pub struct PgTestDb {
    pub url: String,
    pub name: String,
    pub prefix: String,
}

impl PgTestDb {
    pub fn create() -> Option<PgTestDb> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let name = format!("modhost_t{pid}_{n}");
        let prefix = format!("mht{pid}_{n}_");
        let admin = admin_url();
        let created = runtime().block_on(async {
            let mut conn = sqlx::PgConnection::connect(&admin).await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut conn)
                .await
                .map(|_| ())
        });
        match created {
            Ok(()) => {
                let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
                Some(PgTestDb {
                    url: format!("{base}/{name}"),
                    name,
                    prefix,
                })
            }
            Err(e) => {
                if std::env::var_os("CI").is_some() {
                    panic!("PostgreSQL at {admin} is required in CI but not reachable: {e}");
                }
                eprintln!("SKIP: PostgreSQL tests skipped: cannot reach {admin}: {e}");
                None
            }
        }
    }
}

impl Drop for PgTestDb {
    fn drop(&mut self) {
        let (name, prefix, admin) = (self.name.clone(), self.prefix.clone(), admin_url());
        let _ = runtime().block_on(async move {
            let mut conn = sqlx::PgConnection::connect(&admin).await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await?;
            let roles: Vec<String> =
                sqlx::query("SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)")
                    .bind(&prefix)
                    .fetch_all(&mut conn)
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
            for role in roles {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP ROLE IF EXISTS \"{role}\""
                )))
                .execute(&mut conn)
                .await?;
            }
            Ok::<_, sqlx::Error>(())
        });
    }
}
