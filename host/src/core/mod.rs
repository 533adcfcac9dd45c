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
mod grpc_status;
pub mod identity;
pub mod remote;
mod replica;
mod spool;
pub mod tokens;

pub use facade::Core;

use std::{
    collections::HashMap,
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
use tokens::{Claims, PublicKey, SigningKey, TokenError, Verifier};

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
    /// An Ed25519 seed, hex; `None`: generate one and keep it in the core area.
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
    keys: RwLock<Keys>,
    settings: AuthSettings,
    permissions: Arc<RwLock<PermissionRegistry>>,
    grants: Mutex<GrantsCache>,
    /// Test-only pause between computing grants and caching them.
    #[cfg(test)]
    grants_pause: Mutex<Option<Arc<authz::tests::Pause>>>,
    /// Revoked token ids, with when each token expires anyway, and whether it is an
    /// access token (only those matter to hosts).
    revoked: RwLock<HashMap<String, (i64, bool)>>,
    /// Tokens whose signature was verified, by token: bounded, each kept a minute, and
    /// dropped when revoked. Expiry and revocation are still checked on every use.
    verified: moka::sync::Cache<String, Arc<tokens::Claims>>,
    /// What changed, for hosts that keep copies (`Authz.Watch`).
    changes: tokio::sync::broadcast::Sender<Change>,
}

/// A change that invalidates what a host using remote core services keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Grants changed: of this user, or (`None`) of anyone (a role or assignment).
    Grants(Option<String>),
    /// A token was revoked; it expires at `expires_at` anyway.
    Revoked { jti: String, expires_at: i64 },
    /// The signing keys changed.
    Keys,
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
        let keys = load_keys(&db, &settings).await?;
        let now = now_secs();
        let revoked = rows(
            db.fetch(
                "SELECT jti, expires_at FROM revoked_tokens WHERE expires_at > $1",
                vec![FfiValue::Int(now)],
            )
            .await
            .map_err(|e| CoreSetupError::Key(e.message.into_string()))?,
        )
        .iter()
        // Whether a stored revocation was of an access token is not kept: assume so.
        .map(|r| Ok((as_text(&r[0])?, (as_int(&r[1])?, true))))
        .collect::<Result<_, CoreError>>()
        .map_err(|e| CoreSetupError::Key(e.to_string()))?;
        Ok(LocalCore {
            db,
            keys: RwLock::new(keys),
            settings,
            permissions,
            grants: Mutex::new(GrantsCache::default()),
            #[cfg(test)]
            grants_pause: Mutex::new(None),
            revoked: RwLock::new(revoked),
            changes: tokio::sync::broadcast::channel(1024).0,
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
        {
            let mut cache = self.grants.lock().unwrap_or_else(|p| p.into_inner());
            cache.generation += 1;
            cache.by_user.clear();
        }
        let _ = self.changes.send(Change::Grants(None));
    }

    /// Changes as they happen, for `Authz.Watch`.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Revoked access tokens not yet expired, with when each expires.
    pub fn revoked_tokens(&self) -> Vec<(String, i64)> {
        let now = now_secs();
        self.revoked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, (exp, access))| *access && *exp > now)
            .map(|(jti, (exp, _))| (jti.clone(), *exp))
            .collect()
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

/// The signing key and the public keys that check tokens.
struct Keys {
    signing: SigningKey,
    /// Every key whose tokens are still accepted, with the time (Unix seconds) after
    /// which it is not (`None`: the current key).
    public: Vec<(PublicKey, Option<i64>)>,
    verifier: Verifier,
}

impl Keys {
    fn new(signing: SigningKey, public: Vec<(PublicKey, Option<i64>)>) -> Keys {
        let verifier = Verifier::new(&public.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>());
        Keys {
            signing,
            public,
            verifier,
        }
    }
}

/// A public key as stored in `core_settings` (`auth_public_key:<kid>`).
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredPublicKey {
    x: String,
    /// Unix seconds after which its tokens are refused; `None`: the current key.
    valid_until: Option<i64>,
}

/// The signing key: `auth_signing_seed` from the config, else the one kept in
/// `core_settings` (generated the first time); and the public keys still valid.
async fn load_keys(db: &AreaDatabase, settings: &AuthSettings) -> Result<Keys, CoreSetupError> {
    if let Some(hex) = &settings.signing_key {
        let key = SigningKey::from_hex(hex)
            .map_err(|e| CoreSetupError::Key(format!("auth_signing_seed: {e}")))?;
        let public = vec![(key.public_key().clone(), None)];
        return Ok(Keys::new(key, public));
    }
    let err = |e: modhost_plugin_api::ffi::FfiDbError| CoreSetupError::Key(e.message.into_string());
    let found = rows(
        db.fetch(
            "SELECT value FROM core_settings WHERE key = 'auth_ed25519_seed'",
            vec![],
        )
        .await
        .map_err(err)?,
    );
    let signing = match found.first() {
        Some(row) => {
            let hex = as_text(&row[0]).map_err(|e| CoreSetupError::Key(e.to_string()))?;
            SigningKey::from_hex(&hex).map_err(|e| {
                CoreSetupError::Key(format!(
                    "the stored token signing key (auth_ed25519_seed in core_settings): {e}"
                ))
            })?
        }
        None => {
            // The HS256 secret of releases before Ed25519 tokens was handed to tools
            // that check tokens: it must never become a signing key. Drop it.
            let legacy = db
                .exec(
                    "DELETE FROM core_settings WHERE key = 'auth_signing_key'",
                    vec![],
                )
                .await
                .map_err(err)?;
            if legacy > 0 {
                tracing::warn!("dropped the HS256 token key of an earlier release: tokens it signed are no longer accepted; users log in again");
            }
            let key = SigningKey::generate();
            let stored =
                serde_json::json!({ "x": key.public_key().x, "valid_until": null }).to_string();
            db.exec_all(vec![
                (
                    "INSERT INTO core_settings (key, value) VALUES ('auth_ed25519_seed', $1)",
                    vec![text_param(&key.to_hex())],
                ),
                (
                    "INSERT INTO core_settings (key, value) VALUES ($1, $2)",
                    vec![
                        text_param(&format!("auth_public_key:{}", key.public_key().kid)),
                        text_param(&stored),
                    ],
                ),
            ])
            .await
            .map_err(err)?;
            tracing::info!(kid = %key.public_key().kid, "generated a token signing key (Ed25519) and stored it in the core area (set auth_signing_seed to use your own)");
            key
        }
    };
    let now = now_secs();
    let mut public = Vec::new();
    for row in rows(
        db.fetch(
            "SELECT key, value FROM core_settings WHERE key LIKE 'auth_public_key:%'",
            vec![],
        )
        .await
        .map_err(err)?,
    ) {
        let (name, value) = match (as_text(&row[0]), as_text(&row[1])) {
            (Ok(n), Ok(v)) => (n, v),
            _ => continue,
        };
        let Ok(stored) = serde_json::from_str::<StoredPublicKey>(&value) else {
            continue;
        };
        let kid = name.trim_start_matches("auth_public_key:").to_string();
        if stored.valid_until.is_none_or(|t| t > now) {
            public.push((PublicKey { kid, x: stored.x }, stored.valid_until));
        }
    }
    if !public.iter().any(|(k, _)| k == signing.public_key()) {
        public.push((signing.public_key().clone(), None));
    }
    Ok(Keys::new(signing, public))
}

impl LocalCore {
    /// Signs claims with the current key.
    fn sign(&self, claims: &Claims) -> String {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .signing
            .sign(claims)
    }

    /// Checks a token against the keys still valid.
    fn verify_token(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .verifier
            .verify(token, now)
    }

    /// The public keys whose tokens are accepted, with the time after which each is not
    /// (`None`: the current key).
    pub fn public_keys(&self) -> Vec<(PublicKey, Option<i64>)> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .public
            .clone()
    }

    /// Reads the keys again (`modhost core` does every few seconds, to pick up a
    /// rotation made by `modhost core rotate-key`); `true` if they changed.
    pub async fn reload_keys(&self) -> Result<bool, CoreSetupError> {
        let fresh = load_keys(&self.db, &self.settings).await?;
        let changed = {
            let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
            let changed = keys.public != fresh.public;
            *keys = fresh;
            changed
        };
        if changed {
            let _ = self.changes.send(Change::Keys);
        }
        Ok(changed)
    }

    /// Makes a new signing key; the old one keeps checking tokens until they have all
    /// expired (the refresh token lifetime from now). Returns the new public key.
    pub async fn rotate_key(&self) -> Result<PublicKey, CoreError> {
        if self.settings.signing_key.is_some() {
            return Err(CoreError::Invalid(
                "auth_signing_seed is set in the configuration: this core does not rotate it (changing it invalidates every token at once)".into(),
            ));
        }
        let old = self
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .signing
            .public_key()
            .clone();
        let new = SigningKey::generate();
        let until = now_secs()
            .saturating_add(i64::try_from(self.settings.refresh_ttl.as_secs()).unwrap_or(i64::MAX));
        let retired = serde_json::json!({ "x": old.x, "valid_until": until }).to_string();
        let current =
            serde_json::json!({ "x": new.public_key().x, "valid_until": null }).to_string();
        self.db
            .exec_all(vec![
                (
                    "UPDATE core_settings SET value = $1 WHERE key = 'auth_ed25519_seed'",
                    vec![text_param(&new.to_hex())],
                ),
                (
                    "DELETE FROM core_settings WHERE key = $1",
                    vec![text_param(&format!("auth_public_key:{}", old.kid))],
                ),
                (
                    "INSERT INTO core_settings (key, value) VALUES ($1, $2)",
                    vec![
                        text_param(&format!("auth_public_key:{}", old.kid)),
                        text_param(&retired),
                    ],
                ),
                (
                    "INSERT INTO core_settings (key, value) VALUES ($1, $2)",
                    vec![
                        text_param(&format!("auth_public_key:{}", new.public_key().kid)),
                        text_param(&current),
                    ],
                ),
            ])
            .await?;
        self.reload_keys()
            .await
            .map_err(|e| CoreError::Database(e.to_string()))?;
        tracing::info!(new = %new.public_key().kid, old = %old.kid, old_valid_until = until, "token signing key rotated");
        Ok(new.public_key().clone())
    }
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
