//! Per-module SQL migrations: finding them, checking them, applying them.
//!
//! A module ships `migrations/NNNN_description.sql` in its folder. A file named
//! `NNNN_description.sqlite.sql` or `NNNN_description.postgres.sql` replaces the plain
//! one on that backend. Each migration runs in its own transaction, in the module's own
//! area, and is recorded there (table `_modhost_migrations`) with its version and SHA-256
//! checksum in the same transaction, so nothing is ever half-applied or applied twice.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use sqlx::Row;

use crate::data::database::{AreaPool, BackendKind};

/// The folder, inside a module folder, that holds its migrations.
pub const MIGRATIONS_DIR: &str = "migrations";

/// One migration file.
#[derive(Debug, Clone)]
pub struct Migration {
    pub version: i64,
    pub description: String,
    pub path: PathBuf,
    pub sql: String,
    pub checksum: String,
}

/// Why migrations could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: migration files are named NNNN_description.sql (or .sqlite.sql / .postgres.sql), e.g. 0001_create_posts.sql", path.display())]
    BadName { path: PathBuf },
    #[error("{} and {} both define migration {version}; give each its own number", first.display(), second.display())]
    Duplicate {
        version: i64,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("{}: migration {version} was already applied with checksum {applied}, but the file now has checksum {found}; applied migrations must not change: add a new migration instead", path.display())]
    ChecksumMismatch {
        version: i64,
        path: PathBuf,
        applied: String,
        found: String,
    },
    #[error("migration {version} ({description}) was applied to this database but its file is gone from {}; restore it", dir.display())]
    Missing {
        version: i64,
        description: String,
        dir: PathBuf,
    },
    #[error("{}: migration {version} is new but {latest} is already applied; number new migrations after {latest}", path.display())]
    OutOfOrder {
        version: i64,
        latest: i64,
        path: PathBuf,
    },
    #[error("{}: migration failed and was rolled back: {error}", path.display())]
    Failed { path: PathBuf, error: String },
    #[error("cannot read the applied migrations: {0}")]
    Bookkeeping(String),
    #[error("{}: not the migration the module's signature covers (changed after the signature was checked); refusing to run it", path.display())]
    Unsigned { path: PathBuf },
    #[error("{}: a migration the module's signature covers is missing (removed after the signature was checked); refusing to run the others", path.display())]
    SignedMissing { path: PathBuf },
}

/// Reads the migrations in `module_dir/migrations` for `backend`, ordered by version.
pub fn discover(module_dir: &Path, backend: BackendKind) -> Result<Vec<Migration>, MigrationError> {
    let dir = module_dir.join(MIGRATIONS_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    paths.sort();
    // version -> (is backend-specific, path, description)
    let mut chosen: BTreeMap<i64, (bool, PathBuf, String)> = BTreeMap::new();
    for path in paths {
        let Some(file) = path
            .file_name()
            .and_then(|f| f.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        let Some(stem) = file.strip_suffix(".sql") else {
            continue;
        };
        let (stem, specific) = match stem.rsplit_once('.') {
            Some((s, b)) if b == backend.name() => (s, true),
            Some((_, b)) if b == "sqlite" || b == "postgres" => continue,
            Some(_) => return Err(MigrationError::BadName { path }),
            None => (stem, false),
        };
        let Some((num, description)) = stem.split_once('_') else {
            return Err(MigrationError::BadName { path });
        };
        let version = match num.parse::<i64>() {
            Ok(v)
                if !num.is_empty()
                    && num.chars().all(|c| c.is_ascii_digit())
                    && !description.is_empty() =>
            {
                v
            }
            _ => return Err(MigrationError::BadName { path }),
        };
        match chosen.get(&version) {
            Some((true, first, _)) if specific => {
                return Err(MigrationError::Duplicate {
                    version,
                    first: first.clone(),
                    second: path,
                })
            }
            Some((false, first, _)) if !specific => {
                return Err(MigrationError::Duplicate {
                    version,
                    first: first.clone(),
                    second: path,
                })
            }
            Some((true, _, _)) => {}
            _ => {
                chosen.insert(version, (specific, path, description.to_string()));
            }
        }
    }
    chosen
        .into_iter()
        .map(|(version, (_, path, description))| {
            let sql = std::fs::read_to_string(&path).map_err(|source| MigrationError::Read {
                path: path.clone(),
                source,
            })?;
            let checksum = crate::hex::sha256_hex(sql.as_bytes());
            Ok(Migration {
                version,
                description,
                path,
                sql,
                checksum,
            })
        })
        .collect()
}

const BOOKKEEPING: &str = "CREATE TABLE IF NOT EXISTS _modhost_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at TEXT NOT NULL
)";

/// On PostgreSQL, several hosts of a cluster may migrate the same module at once: each
/// migration (and the bookkeeping table's creation) takes this transaction-scoped
/// advisory lock on the module's schema first, then skips a version another host has
/// just recorded.
const PG_MIGRATION_LOCK: &str =
    "SELECT pg_advisory_xact_lock(hashtext('modhost migrations ' || current_schema()))";

/// Applies the pending migrations of `module_dir` to `pool`; returns how many ran.
///
/// `signed`: the signed file list of a signed module (path to SHA-256). Each migration
/// read here must be one of them, with its signed digest, so a file changed between the
/// signature check and this read is refused rather than run.
pub async fn apply(
    pool: &AreaPool,
    module_dir: &Path,
    signed: Option<&BTreeMap<String, String>>,
) -> Result<usize, MigrationError> {
    // Reading the folder and files blocks: do it off the runtime's workers.
    let (dir, backend) = (module_dir.to_path_buf(), pool.backend());
    let migrations = tokio::task::spawn_blocking(move || discover(&dir, backend))
        .await
        .map_err(|e| MigrationError::Read {
            path: module_dir.join(MIGRATIONS_DIR),
            source: std::io::Error::other(e.to_string()),
        })??;
    if let Some(signed) = signed {
        for m in &migrations {
            let name = m.path.file_name().and_then(|f| f.to_str()).unwrap_or("");
            let key = format!("{MIGRATIONS_DIR}/{name}");
            if signed
                .get(&key)
                .map(|d| d.eq_ignore_ascii_case(&m.checksum))
                != Some(true)
            {
                return Err(MigrationError::Unsigned {
                    path: m.path.clone(),
                });
            }
        }
        // Every signed migration is still there: one removed after the signature was
        // checked is refused, not skipped.
        let prefix = format!("{MIGRATIONS_DIR}/");
        for path in signed
            .keys()
            .filter(|k| k.starts_with(&prefix) && k.ends_with(".sql"))
        {
            let file = module_dir.join(path);
            if !file.is_file() {
                return Err(MigrationError::SignedMissing { path: file });
            }
        }
    }
    if migrations.is_empty() {
        // Nothing to apply or to check against; leave a module without migrations
        // untouched (its database may not even exist).
        return Ok(0);
    }
    apply_list(pool, &migrations, &module_dir.join(MIGRATIONS_DIR)).await
}

/// A migration compiled into the host (the `core` area's schema).
pub fn embedded(version: i64, description: &str, sql: &str) -> Migration {
    Migration {
        version,
        description: description.to_string(),
        path: PathBuf::from(format!("<built-in>/{version:04}_{description}.sql")),
        sql: sql.to_string(),
        checksum: crate::hex::sha256_hex(sql.as_bytes()),
    }
}

/// Applies the pending ones of `migrations` (ordered by version) to `pool`; `dir` is
/// where they come from, for messages.
pub async fn apply_list(
    pool: &AreaPool,
    migrations: &[Migration],
    dir: &Path,
) -> Result<usize, MigrationError> {
    let book = |e: sqlx::Error| MigrationError::Bookkeeping(e.to_string());
    macro_rules! applied_on {
        ($pool:expr, $bookkeeping:expr) => {{
            sqlx::raw_sql(sqlx::AssertSqlSafe($bookkeeping))
                .execute($pool)
                .await
                .map_err(book)?;
            sqlx::query(
                "SELECT version, description, checksum FROM _modhost_migrations ORDER BY version",
            )
            .fetch_all($pool)
            .await
            .map_err(book)?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| MigrationError::Bookkeeping(format!(
                "_modhost_migrations holds a row that is not (version, description, checksum): {e}; it was written by something other than the host"
            )))?
        }};
    }
    let applied: Vec<(i64, String, String)> = match pool {
        AreaPool::Sqlite(p) => applied_on!(p, BOOKKEEPING.to_string()),
        // One simple query: one transaction, under the lock.
        AreaPool::Postgres(p) => applied_on!(p, format!("{PG_MIGRATION_LOCK}; {BOOKKEEPING}")),
    };
    let by_version: BTreeMap<i64, &Migration> = migrations.iter().map(|m| (m.version, m)).collect();
    for (version, description, checksum) in &applied {
        match by_version.get(version) {
            None => {
                return Err(MigrationError::Missing {
                    version: *version,
                    description: description.clone(),
                    dir: dir.to_path_buf(),
                })
            }
            Some(m) if &m.checksum != checksum => {
                return Err(MigrationError::ChecksumMismatch {
                    version: *version,
                    path: m.path.clone(),
                    applied: checksum.clone(),
                    found: m.checksum.clone(),
                })
            }
            Some(_) => {}
        }
    }
    let latest = applied.iter().map(|a| a.0).max();
    let mut ran = 0;
    for m in migrations
        .iter()
        .filter(|m| !applied.iter().any(|a| a.0 == m.version))
    {
        if let Some(latest) = latest.filter(|l| *l > m.version) {
            return Err(MigrationError::OutOfOrder {
                version: m.version,
                latest,
                path: m.path.clone(),
            });
        }
        let applied_here = run_one(pool, m)
            .await
            .map_err(|error| MigrationError::Failed {
                path: m.path.clone(),
                error,
            })?;
        if applied_here {
            tracing::info!(migration = %m.path.display(), version = m.version, "migration applied");
            ran += 1;
        }
    }
    Ok(ran)
}

/// Runs one migration in a transaction; `false` if another host recorded it first.
async fn run_one(pool: &AreaPool, m: &Migration) -> Result<bool, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs().to_string())
        .unwrap_or_default();
    let record = "INSERT INTO _modhost_migrations (version, description, checksum, applied_at) VALUES ($1, $2, $3, $4)";
    let err = |e: sqlx::Error| e.to_string();
    // The same steps on either backend's pool (their types differ, the code does not).
    macro_rules! in_transaction {
        ($pool:expr, $locked:expr) => {{
            let mut tx = $pool.begin().await.map_err(err)?;
            if $locked {
                sqlx::query(PG_MIGRATION_LOCK)
                    .execute(&mut *tx)
                    .await
                    .map_err(err)?;
                let done = sqlx::query("SELECT 1 FROM _modhost_migrations WHERE version = $1")
                    .bind(m.version)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(err)?;
                if done.is_some() {
                    tx.commit().await.map_err(err)?;
                    return Ok(false);
                }
            }
            sqlx::raw_sql(sqlx::AssertSqlSafe(m.sql.as_str()))
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            sqlx::query(record)
                .bind(m.version)
                .bind(&m.description)
                .bind(&m.checksum)
                .bind(&now)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            tx.commit().await.map_err(err)?;
            Ok(true)
        }};
    }
    match pool {
        AreaPool::Sqlite(p) => in_transaction!(p, false),
        AreaPool::Postgres(p) => in_transaction!(p, true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, sql: &str) {
        std::fs::create_dir_all(dir.join(MIGRATIONS_DIR)).unwrap();
        std::fs::write(dir.join(MIGRATIONS_DIR).join(name), sql).unwrap();
    }

    #[test]
    fn backend_specific_files_replace_plain_ones() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "0001_create.sql", "plain");
        write(tmp.path(), "0001_create.postgres.sql", "pg");
        write(tmp.path(), "0002_more.sqlite.sql", "lite only");
        write(tmp.path(), "README.md", "ignored");
        let pg = discover(tmp.path(), BackendKind::Postgres).unwrap();
        assert_eq!(
            pg.iter().map(|m| m.sql.as_str()).collect::<Vec<_>>(),
            vec!["pg"]
        );
        let lite = discover(tmp.path(), BackendKind::Sqlite).unwrap();
        assert_eq!(
            lite.iter().map(|m| m.sql.as_str()).collect::<Vec<_>>(),
            vec!["plain", "lite only"]
        );
        assert_eq!(lite[0].checksum.len(), 64);
    }

    /// A module can write its own `_modhost_migrations`; a row of the wrong type must be
    /// reported, not crash the host.
    #[tokio::test]
    async fn a_bookkeeping_row_of_the_wrong_type_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let settings = crate::data::database::DatabaseSettings {
            url: None,
            data_dir: tmp.path().to_path_buf(),
            connect_timeout: std::time::Duration::from_secs(5),
            max_connections: 1,
            role_prefix: String::new(),
            shared: None,
        };
        let databases = crate::data::database::Databases::connect(&settings)
            .await
            .unwrap();
        let pool = databases.for_module("m").await.unwrap();
        let AreaPool::Sqlite(sqlite) = &pool else {
            panic!("expected SQLite");
        };
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "{BOOKKEEPING}; INSERT INTO _modhost_migrations VALUES ('one', 'x', 'y', 'z')"
        )))
        .execute(sqlite)
        .await
        .unwrap();
        let list = [embedded(1, "first", "CREATE TABLE t (x INTEGER)")];
        let err = apply_list(&pool, &list, tmp.path()).await.unwrap_err();
        assert!(matches!(err, MigrationError::Bookkeeping(_)), "{err}");
        assert!(err.to_string().contains("_modhost_migrations"), "{err}");
    }

    #[test]
    fn bad_names_and_duplicates_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "create.sql", "x");
        let err = discover(tmp.path(), BackendKind::Sqlite)
            .unwrap_err()
            .to_string();
        assert!(err.contains("NNNN_description.sql"), "{err}");

        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "0001_a.sql", "x");
        write(tmp.path(), "0001_b.sql", "y");
        let err = discover(tmp.path(), BackendKind::Sqlite)
            .unwrap_err()
            .to_string();
        assert!(err.contains("both define migration 1"), "{err}");
    }
}
