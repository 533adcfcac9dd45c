//! The core services embedded in the host: auth (tokens), identity (users), authz
//! (roles and permission checks) and audit (the append-only log). Their data lives in
//! the host's own `core` area.
//!
//! Everything goes through [`Core`] (`facade.rs`), which is either the embedded
//! [`LocalCore`] or [`remote::RemoteCore`], the client of `modhost core` over gRPC. One
//! [`LocalCore`] owns the area, the signing key and the in-memory caches that keep the
//! request path free of database reads (granted permissions per user, revoked token
//! ids); every change made through it invalidates what it affects. Files: `tokens.rs`
//! (JWT), `identity.rs`, `authz.rs`, `audit.rs`, `auth.rs` (login, refresh, revoke,
//! authenticate), `api.rs` (HTTP), `calls.rs` (the handles modules get),
//! `grpc_server.rs` (`modhost core`), `remote.rs` and `spool.rs` (the gRPC client and
//! its durable audit spool).

pub(crate) mod api;
pub mod audit;
pub(crate) mod audit_limit;
pub mod auth;
pub mod authz;
pub(crate) mod calls;
mod facade;
pub mod grpc_server;
pub mod identity;
pub mod remote;
mod spool;
pub mod tokens;

pub use facade::Core;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use modhost_plugin_api::ffi::{FfiRows, FfiValue};

use crate::data::database::{AreaPool, BackendKind};
use crate::data::db_handle::AreaDatabase;
use crate::data::migrations::{self, MigrationError};
use crate::module::permissions::PermissionRegistry;

pub use auth::AuthUser;
use authz::Grants;
use tokens::SigningKey;

/// The core's own permissions, registered under module `core`.
pub const CORE_PERMISSIONS: &[&str] = &[
    "core.user.create",
    "core.user.read",
    "core.user.disable",
    "core.role.read",
    "core.role.write",
    "core.role.assign",
    "core.audit.read",
    "core.admin.read",
    "core.admin.write",
];

/// Verified tokens kept in memory (see `Core::verified`).
const VERIFIED_TOKENS: u64 = 10_000;

/// Token lifetimes and key, from the host config.
#[derive(Clone, Debug)]
pub struct AuthSettings {
    /// Hex HS256 key; `None`: generate one and keep it in the core area (dev mode).
    pub signing_key: Option<String>,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            signing_key: None,
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// An error from a core service, with the HTTP status it maps to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("the core database failed: {0}")]
    Database(String),
    /// Remote core services could not be reached (or did not answer in time).
    #[error("{0}")]
    Unavailable(String),
}

impl CoreError {
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            CoreError::Invalid(_) => 400,
            CoreError::NotFound(_) => 404,
            CoreError::Conflict(_) => 409,
            CoreError::Unauthorized(_) => 401,
            CoreError::Forbidden(_) => 403,
            CoreError::Database(_) | CoreError::Unavailable(_) => 503,
        }
    }
}

/// The database's own text is logged under an error id; the client sees only the id.
impl From<modhost_plugin_api::ffi::FfiDbError> for CoreError {
    fn from(e: modhost_plugin_api::ffi::FfiDbError) -> Self {
        tracing::warn!(module = "core", error_id = %e.error_id, kind = e.kind, detail = %e.message, "database error");
        if e.kind == modhost_plugin_api::ffi::db_error::CONSTRAINT {
            CoreError::Conflict(format!(
                "the request conflicts with existing data (error id {})",
                e.error_id
            ))
        } else {
            CoreError::Database(format!("error id {}", e.error_id))
        }
    }
}

/// Why the core could not start.
#[derive(Debug, thiserror::Error)]
pub enum CoreSetupError {
    #[error("core schema: {0}")]
    Migration(#[from] MigrationError),
    #[error("core: {0}")]
    Key(String),
}

/// The core services on this host's own data: the embedded default, and what
/// `modhost core` serves over gRPC.
pub struct LocalCore {
    db: AreaDatabase,
    key: SigningKey,
    settings: AuthSettings,
    permissions: Arc<RwLock<PermissionRegistry>>,
    grants: Mutex<GrantsCache>,
    /// Test-only pause between computing grants and caching them.
    #[cfg(test)]
    grants_pause: Mutex<Option<Arc<authz::tests::Pause>>>,
    revoked: RwLock<HashSet<String>>,
    /// Tokens whose signature was verified, by token: bounded, each kept a minute, and
    /// dropped when revoked. Expiry and revocation are still checked on every use.
    verified: moka::sync::Cache<String, Arc<tokens::Claims>>,
}

impl LocalCore {
    /// Migrates the core area, loads (or creates) the signing key and the revoked
    /// token ids.
    pub async fn open(
        pool: AreaPool,
        settings: AuthSettings,
        permissions: Arc<RwLock<PermissionRegistry>>,
    ) -> Result<LocalCore, CoreSetupError> {
        let (first, record_ids) = match pool.backend() {
            BackendKind::Sqlite => (
                include_str!("../../core-migrations/0001_core.sqlite.sql"),
                include_str!("../../core-migrations/0002_audit_record_id.sqlite.sql"),
            ),
            BackendKind::Postgres => (
                include_str!("../../core-migrations/0001_core.postgres.sql"),
                include_str!("../../core-migrations/0002_audit_record_id.postgres.sql"),
            ),
        };
        let list = [
            migrations::embedded(1, "core", first),
            migrations::embedded(2, "audit_record_id", record_ids),
        ];
        migrations::apply_list(&pool, &list, std::path::Path::new("<built-in core schema>"))
            .await?;
        let db = AreaDatabase::new("core", pool);
        let key = match &settings.signing_key {
            Some(hex) => SigningKey::from_hex(hex)
                .map_err(|e| CoreSetupError::Key(format!("auth_signing_key: {e}")))?,
            None => stored_key(&db).await?,
        };
        let now = now_secs();
        let revoked = rows(
            db.fetch(
                "SELECT jti FROM revoked_tokens WHERE expires_at > $1",
                vec![FfiValue::Int(now)],
            )
            .await
            .map_err(|e| CoreSetupError::Key(e.message.into_string()))?,
        )
        .iter()
        .map(|r| as_text(&r[0]))
        .collect::<Result<_, _>>()
        .map_err(|e| CoreSetupError::Key(e.to_string()))?;
        Ok(LocalCore {
            db,
            key,
            settings,
            permissions,
            grants: Mutex::new(GrantsCache::default()),
            #[cfg(test)]
            grants_pause: Mutex::new(None),
            revoked: RwLock::new(revoked),
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_TOKENS)
                .time_to_live(Duration::from_secs(60))
                .build(),
        })
    }

    /// The core area.
    pub(crate) fn db(&self) -> &AreaDatabase {
        &self.db
    }

    /// Forgets cached grants. Called after a role, assignment or user change has been
    /// committed; grants computed from reads that began before it are then not cached
    /// (see [`GrantsCache`]).
    fn invalidate(&self) {
        let mut cache = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        cache.generation += 1;
        cache.by_user.clear();
    }
}

/// Grants per user, and a generation that every invalidation bumps.
///
/// Computing grants awaits database reads. A change committed (and invalidated) during
/// those reads would be undone if the result were cached afterwards, and a narrowed role
/// would keep its old grants. So a result is cached only if the generation it started
/// from is still current.
#[derive(Default)]
struct GrantsCache {
    generation: u64,
    by_user: HashMap<String, Arc<Grants>>,
}

/// The dev-mode signing key: generated once and kept in `core_settings`.
async fn stored_key(db: &AreaDatabase) -> Result<SigningKey, CoreSetupError> {
    let err = |e: modhost_plugin_api::ffi::FfiDbError| CoreSetupError::Key(e.message.into_string());
    let found = rows(
        db.fetch(
            "SELECT value FROM core_settings WHERE key = 'auth_signing_key'",
            vec![],
        )
        .await
        .map_err(err)?,
    );
    if let Some(row) = found.first() {
        let hex = as_text(&row[0]).map_err(|e| CoreSetupError::Key(e.to_string()))?;
        return SigningKey::from_hex(&hex).map_err(CoreSetupError::Key);
    }
    let hex = crate::random::random_hex(32);
    db.exec(
        "INSERT INTO core_settings (key, value) VALUES ('auth_signing_key', $1)",
        vec![FfiValue::Text(hex.as_str().into())],
    )
    .await
    .map_err(err)?;
    tracing::info!("generated a token signing key and stored it in the core area (set auth_signing_key to use your own)");
    SigningKey::from_hex(&hex).map_err(CoreSetupError::Key)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The current time as RFC 3339 (UTC, seconds).
pub fn now_rfc3339() -> String {
    let secs = now_secs();
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The rows of a result, as owned vectors.
fn rows(r: FfiRows) -> Vec<Vec<FfiValue>> {
    r.rows.into_iter().map(|row| row.into_vec()).collect()
}

/// A core column that must hold text. Every core column is `NOT NULL`, so anything
/// else means the core area was written by something other than the core: an error,
/// never a silent default.
fn as_text(v: &FfiValue) -> Result<String, CoreError> {
    match v {
        FfiValue::Text(s) => Ok(s.to_string()),
        other => Err(unexpected("text", other)),
    }
}

/// A core column that must hold an integer (see [`as_text`]).
fn as_int(v: &FfiValue) -> Result<i64, CoreError> {
    match v {
        FfiValue::Int(i) => Ok(*i),
        FfiValue::Bool(b) => Ok(i64::from(*b)),
        other => Err(unexpected("an integer", other)),
    }
}

fn unexpected(wanted: &str, found: &FfiValue) -> CoreError {
    let found = match found {
        FfiValue::Null => "NULL",
        FfiValue::Bool(_) => "a boolean",
        FfiValue::Int(_) => "an integer",
        FfiValue::Float(_) => "a float",
        FfiValue::Text(_) => "text",
        FfiValue::Bytes(_) => "bytes",
    };
    CoreError::Database(format!(
        "the core area holds {found} where {wanted} belongs; was it edited by hand?"
    ))
}

/// A text parameter for a core statement.
fn text_param(s: &str) -> FfiValue {
    FfiValue::Text(s.into())
}

#[cfg(test)]
mod tests {
    use super::civil_from_days;

    #[test]
    fn calendar_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }
}
