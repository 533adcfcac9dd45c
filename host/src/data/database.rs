//! The host's databases: choosing the backend, connecting (with retry), and giving each
//! module an isolated area.
//!
//! - Embedded default, SQLite: one file per module under `<data dir>/db/`, plus
//!   `core.sqlite` for the host. Connections refuse `ATTACH`, so a module cannot open
//!   another module's file.
//! - PostgreSQL: one schema per module, owned by a role of its own that the module's
//!   connections log in as; other schemas are closed to it. The host keeps its data in
//!   the `core` schema.
//!
//! Running statements for modules is `db_handle.rs`; migrations are `migrations.rs`.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    str::FromStr,
    time::{Duration, Instant},
};

use sqlx::{
    postgres::{PgConnectOptions, PgPool, PgPoolOptions},
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
    },
    ConnectOptions,
};

/// A connection pool confined to one module's area (or to the host's `core` area).
#[derive(Clone, Debug)]
pub enum AreaPool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl AreaPool {
    /// Which backend this is, for backend-specific migration files.
    pub fn backend(&self) -> BackendKind {
        match self {
            AreaPool::Sqlite(_) => BackendKind::Sqlite,
            AreaPool::Postgres(_) => BackendKind::Postgres,
        }
    }
}

/// The two supported backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Sqlite,
    Postgres,
}

impl BackendKind {
    /// Suffix of backend-specific migration files (`0001_x.sqlite.sql`).
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Sqlite => "sqlite",
            BackendKind::Postgres => "postgres",
        }
    }
}

/// Database settings, from the host config.
#[derive(Clone, Debug)]
pub struct DatabaseSettings {
    /// `None`: embedded SQLite under `data_dir`. Else a `postgres://` or `sqlite://` URL.
    pub url: Option<String>,
    pub data_dir: PathBuf,
    /// How long to keep retrying an unreachable database at startup.
    pub connect_timeout: Duration,
    /// Connections per module pool.
    pub max_connections: u32,
    /// Prefix of the PostgreSQL role created for each module.
    pub role_prefix: String,
    /// Several hosts share this database (cluster mode): each module role's password
    /// is derived from this secret (`cluster_secret`, else the database URL) and the
    /// role, so that a host provisioning a role does not lock out the others; `None`:
    /// random.
    pub shared: Option<String>,
}

/// Why the databases could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DbSetupError {
    #[error(
        "invalid database URL {url}: {why}; expected postgres://USER@HOST:PORT/DB or sqlite://DIR"
    )]
    Url { url: String, why: String },
    #[error("cannot create the database directory {}: {source}", path.display())]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot reach the database at {url} after {attempts} attempts over {waited:?}: {last}; is it running? (the deadline is database_connect_timeout)")]
    Unreachable {
        url: String,
        attempts: u32,
        waited: Duration,
        last: String,
    },
    #[error("module `{module}`: cannot set up its database area: {why}")]
    Provision { module: String, why: String },
}

/// The host's database backend.
pub enum Databases {
    Sqlite {
        dir: PathBuf,
        max_connections: u32,
        core: SqlitePool,
    },
    Postgres {
        admin: PgPool,
        options: Box<PgConnectOptions>,
        database: String,
        role_prefix: String,
        max_connections: u32,
        core: PgPool,
        /// Derive role passwords (see [`DatabaseSettings::shared`]): the URL's secret.
        shared_secret: Option<String>,
        /// Each module's pool, opened once per process with the password set then. A
        /// new version of a module (hot reload) gets the same pool: its role's
        /// password never changes under a serving version, whether the reload is kept
        /// or refused. Beside it, the role's password, for an isolated module's worker,
        /// which connects as that role itself.
        modules: std::sync::Mutex<HashMap<String, (PgPool, String)>>,
    },
}

impl Databases {
    /// Connects to the configured backend (retrying while it is unreachable, up to the
    /// configured deadline) and prepares the host's `core` area.
    pub async fn connect(settings: &DatabaseSettings) -> Result<Databases, DbSetupError> {
        match settings.url.as_deref() {
            None => Self::sqlite(&settings.data_dir.join("db"), settings).await,
            Some(url) if url.starts_with("sqlite:") => {
                let dir = url
                    .trim_start_matches("sqlite://")
                    .trim_start_matches("sqlite:");
                Self::sqlite(Path::new(dir), settings).await
            }
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Self::postgres(url, settings).await
            }
            Some(url) => Err(DbSetupError::Url {
                url: redact(url),
                why: "unsupported scheme".into(),
            }),
        }
    }

    async fn sqlite(dir: &Path, settings: &DatabaseSettings) -> Result<Databases, DbSetupError> {
        std::fs::create_dir_all(dir).map_err(|source| DbSetupError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let core = open_sqlite(&dir.join("core.sqlite"), settings.max_connections, false);
        Ok(Databases::Sqlite {
            dir: dir.to_path_buf(),
            max_connections: settings.max_connections,
            core,
        })
    }

    async fn postgres(url: &str, settings: &DatabaseSettings) -> Result<Databases, DbSetupError> {
        let options = PgConnectOptions::from_str(url).map_err(|e| DbSetupError::Url {
            url: redact(url),
            why: e.to_string(),
        })?;
        let database = options.get_database().unwrap_or("postgres").to_string();
        // Probe with single connections until the server answers, then build the pool.
        connect_with_retry(&redact(url), settings.connect_timeout, || {
            let options = options.clone();
            async move {
                use sqlx::Connection as _;
                let conn = tokio::time::timeout(
                    Duration::from_secs(5),
                    sqlx::PgConnection::connect_with(&options),
                )
                .await
                .map_err(|_| sqlx::Error::PoolTimedOut)??;
                conn.close().await
            }
        })
        .await?;
        let admin = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await
            .map_err(|e| DbSetupError::Unreachable {
                url: redact(url),
                attempts: 1,
                waited: Duration::ZERO,
                last: e.to_string(),
            })?;
        let provision = |why: sqlx::Error| DbSetupError::Provision {
            module: "core".into(),
            why: why.to_string(),
        };
        sqlx::raw_sql(
            // One simple query (one transaction) under the provisioning lock: hosts of
            // a cluster starting together take turns.
            "SELECT pg_advisory_xact_lock(hashtext('modhost module provisioning')); CREATE SCHEMA IF NOT EXISTS core; REVOKE CREATE ON SCHEMA public FROM PUBLIC;",
        )
        .execute(&admin)
        .await
        .map_err(provision)?;
        let core = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .connect_with(options.clone().options([("search_path", "core")]))
            .await
            .map_err(provision)?;
        Ok(Databases::Postgres {
            admin,
            options: Box::new(options),
            database,
            role_prefix: settings.role_prefix.clone(),
            max_connections: settings.max_connections,
            core,
            shared_secret: settings.shared.clone(),
            modules: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The host's own `core` area.
    pub fn core(&self) -> AreaPool {
        match self {
            Databases::Sqlite { core, .. } => AreaPool::Sqlite(core.clone()),
            Databases::Postgres { core, .. } => AreaPool::Postgres(core.clone()),
        }
    }

    /// A description for the startup log (no passwords).
    pub fn describe(&self) -> String {
        match self {
            Databases::Sqlite { dir, .. } => format!("sqlite files in {}", dir.display()),
            Databases::Postgres { database, .. } => format!("postgres database {database}"),
        }
    }

    /// Creates (if needed) and opens `module`'s isolated area.
    ///
    /// Callers for one module are serialised (boot goes module by module; reloads,
    /// drop-ins and removals hold the host's reload lock): two first calls at once could
    /// each set a new password, and the pool kept would hold the overwritten one.
    pub async fn for_module(&self, module: &str) -> Result<AreaPool, DbSetupError> {
        match self {
            Databases::Sqlite {
                dir,
                max_connections,
                ..
            } => Ok(AreaPool::Sqlite(open_sqlite(
                &sqlite_file(dir, module),
                *max_connections,
                false,
            ))),
            Databases::Postgres {
                admin,
                options,
                database,
                role_prefix,
                max_connections,
                modules,
                shared_secret,
                ..
            } => {
                let existing = modules
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(module)
                    .map(|(pool, _)| pool.clone());
                if let Some(pool) = existing {
                    return Ok(AreaPool::Postgres(pool));
                }
                let fail = |why: String| DbSetupError::Provision {
                    module: module.to_string(),
                    why,
                };
                let role = format!("{role_prefix}{module}");
                if role.len() > 63 {
                    return Err(fail(format!(
                        "role name `{role}` is over PostgreSQL's 63-byte limit; use a shorter module name or postgres_role_prefix"
                    )));
                }
                let password = match shared_secret {
                    None => crate::random::random_hex(24),
                    Some(secret) => crate::hex::sha256_hex(
                        format!("modhost module role password\0{secret}\0{role}").as_bytes(),
                    )[..48]
                        .to_string(),
                };
                let sql = provision_sql(&role, module, database, &password);
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(admin)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                let pool = module_pool(*max_connections)
                    .connect_with(
                        (**options)
                            .clone()
                            .username(&role)
                            .password(&password)
                            .options([("search_path", module)]),
                    )
                    .await
                    .map_err(|e| fail(format!("cannot log in as role `{role}`: {e}")))?;
                let pool = modules
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(module.to_string())
                    .or_insert((pool, password))
                    .0
                    .clone();
                Ok(AreaPool::Postgres(pool))
            }
        }
    }
}

/// How another process reaches one module's area with the module's own rights: the
/// worker of an isolated module opens its SQLite file, or logs in as its PostgreSQL role.
#[derive(Clone, Debug)]
pub enum AreaAccess {
    Sqlite {
        path: PathBuf,
        max_connections: u32,
    },
    Postgres {
        host: String,
        port: u16,
        /// A Unix socket directory, when the host connects through one.
        socket: Option<PathBuf>,
        database: String,
        username: String,
        password: String,
        schema: String,
        max_connections: u32,
    },
}

impl Databases {
    /// How a worker reaches `module`'s area; call after [`Databases::for_module`], which
    /// creates it.
    pub fn access(&self, module: &str) -> Option<AreaAccess> {
        match self {
            Databases::Sqlite {
                dir,
                max_connections,
                ..
            } => Some(AreaAccess::Sqlite {
                path: sqlite_file(dir, module),
                max_connections: *max_connections,
            }),
            Databases::Postgres {
                options,
                database,
                role_prefix,
                max_connections,
                modules,
                ..
            } => {
                let guard = modules.lock().unwrap_or_else(|p| p.into_inner());
                let (_, password) = guard.get(module)?;
                Some(AreaAccess::Postgres {
                    host: options.get_host().to_string(),
                    port: options.get_port(),
                    socket: options.get_socket().cloned(),
                    database: database.clone(),
                    username: format!("{role_prefix}{module}"),
                    password: password.clone(),
                    schema: module.to_string(),
                    max_connections: *max_connections,
                })
            }
        }
    }
}

impl AreaAccess {
    /// Opens the area (lazily: the first statement connects). A SQLite pool keeps one
    /// connection open for good, so SQLite never removes and recreates its `-wal` and
    /// `-shm` files under a worker whose sandbox may not create files there.
    pub fn open(&self) -> AreaPool {
        match self {
            AreaAccess::Sqlite {
                path,
                max_connections,
            } => AreaPool::Sqlite(open_sqlite(path, *max_connections, true)),
            AreaAccess::Postgres {
                host,
                port,
                socket,
                database,
                username,
                password,
                schema,
                max_connections,
            } => {
                let mut options = PgConnectOptions::new_without_pgpass()
                    .host(host)
                    .port(*port)
                    .database(database)
                    .username(username)
                    .password(password)
                    .options([("search_path", schema.as_str())]);
                if let Some(socket) = socket {
                    options = options.socket(socket);
                }
                AreaPool::Postgres(module_pool(*max_connections).connect_lazy_with(options))
            }
        }
    }
}

/// A module's SQLite file in the databases' directory.
fn sqlite_file(dir: &Path, module: &str) -> PathBuf {
    dir.join(format!("{module}.sqlite"))
}

/// The pool settings of a module's PostgreSQL connections, the host's or its worker's.
fn module_pool(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
}

/// SQL that creates a module's role and schema and closes everything else to it, run as
/// one transaction (one simple query) under an advisory lock, so that hosts provisioning
/// at the same time (a cluster booting) take turns instead of failing on each other's
/// catalog updates. Every
/// name is quoted as an identifier and the password as a literal: module names are
/// validated, but the database name comes from the URL and the role prefix from the
/// configuration.
fn provision_sql(role: &str, schema: &str, database: &str, password: &str) -> String {
    let (role_literal, role) = (quote_literal(role), quote_ident(role));
    let (schema, database) = (quote_ident(schema), quote_ident(database));
    let password = quote_literal(password);
    format!(
        r#"
SELECT pg_advisory_xact_lock(hashtext('modhost module provisioning'));
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {role_literal}) THEN
    CREATE ROLE {role} LOGIN;
  END IF;
END $$;
ALTER ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS PASSWORD {password};
CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {role};
ALTER SCHEMA {schema} OWNER TO {role};
REVOKE ALL ON SCHEMA {schema} FROM PUBLIC;
GRANT CONNECT ON DATABASE {database} TO {role};
REVOKE CREATE ON DATABASE {database} FROM {role};
ALTER ROLE {role} SET search_path = {schema};
"#
    )
}

/// `name` as a PostgreSQL identifier: in double quotes, inner quotes doubled.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `text` as a PostgreSQL string literal (standard-conforming: quotes doubled). The
/// `$$` body above holds it too, which is safe as long as it has no `$$`: it never
/// does, roles being a validated module name behind the configured prefix.
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A pool on one SQLite file (created on first use) whose connections refuse `ATTACH`.
/// `keep_one`: one connection, once made, stays open for the pool's life.
fn open_sqlite(path: &Path, max_connections: u32, keep_one: bool) -> SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // With WAL, NORMAL loses no committed data on a crash of the host process; only
        // an OS crash or power loss can drop the last commits. It saves an fsync per commit.
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(5))
        .disable_statement_logging();
    let mut pool_options = SqlitePoolOptions::new().max_connections(max_connections);
    if keep_one {
        pool_options = pool_options
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None);
    }
    let pool = pool_options
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                let mut handle = conn.lock_handle().await?;
                // SAFETY: a valid, locked connection handle; sqlite3_limit only sets a
                // per-connection limit. 0 attached databases: ATTACH always fails.
                unsafe {
                    libsqlite3_sys::sqlite3_limit(
                        handle.as_raw_handle().as_ptr(),
                        libsqlite3_sys::SQLITE_LIMIT_ATTACHED,
                        0,
                    );
                }
                Ok(())
            })
        })
        // Lazy: a module that never touches its database costs no file and no connection.
        .connect_lazy_with(options);
    pool
}

async fn connect_with_retry<F, Fut, T>(
    url: &str,
    deadline: Duration,
    mut connect: F,
) -> Result<T, DbSetupError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let started = Instant::now();
    let mut delay = Duration::from_millis(100);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match connect().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                let waited = started.elapsed();
                if waited + delay > deadline {
                    return Err(DbSetupError::Unreachable {
                        url: url.to_string(),
                        attempts,
                        waited,
                        last: e.to_string(),
                    });
                }
                tracing::warn!(%url, attempt = attempts, error = %e, retry_in = ?delay, "database not reachable yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// The URL without its password.
pub fn redact(url: &str) -> String {
    crate::redact::url(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://data"), "sqlite://data");
    }
}
