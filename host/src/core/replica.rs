//! What a host using remote core services keeps of them, so that a request with a token
//! needs no call to the core: the public keys that check tokens, the revoked token ids
//! and the grants of recent users. The core's change stream (`Authz.Watch`) keeps them
//! current: a role narrowed, a user disabled or a token revoked on any host reaches
//! every host as soon as the core sends it (milliseconds on a LAN). On (re)connecting,
//! the stream starts with a resync: everything is fetched again.
//!
//! While the stream is down, what is kept stays usable for `core_staleness`; after
//! that, and before the first sync, requests that need a token fail closed.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant},
};

use tonic::transport::Channel;

use super::{
    authz::Grants,
    tokens::{Claims, PublicKey, TokenError, Verifier},
    CoreError,
};
use crate::wire::core_v1::{self as pb, auth_client::AuthClient, authz_client::AuthzClient};

/// The kept copies, shared by the request path and the sync task.
pub struct Replica {
    verifier: RwLock<Verifier>,
    /// Tokens whose signature was checked, for a minute: the expiry and the revocation
    /// list are still checked on every use; a key change forgets them all.
    verified: moka::sync::Cache<String, Arc<Claims>>,
    /// Revoked token ids, with when each token expires anyway (then it is dropped).
    revoked: RwLock<HashMap<String, i64>>,
    grants: moka::sync::Cache<String, Arc<Grants>>,
    /// Bumped by every grants change: a fetch that began before one is not kept. The
    /// lock makes "bump and forget" and "check and keep" each one step.
    generation: Mutex<u64>,
    /// The stream is up and synced.
    synced: AtomicBool,
    /// When the stream went down (`None`: never synced yet).
    down_since: Mutex<Option<Instant>>,
    /// Woken on every sync.
    sync_done: tokio::sync::Notify,
    /// The last time the keys were asked for (an unknown key asks again, once a second).
    keys_asked: Mutex<Option<Instant>>,
    staleness: Duration,
    auth: AuthClient<Channel>,
    authz: AuthzClient<Channel>,
    /// This host's declared permissions, sent again on every resync (a restarted core
    /// has forgotten them).
    registry: Arc<RwLock<crate::module::permissions::PermissionRegistry>>,
}

/// How long the change stream may be silent before it counts as broken (the core sends
/// a heartbeat every 2 s).
const SILENCE: Duration = Duration::from_secs(6);

impl Replica {
    /// An empty replica; [`Replica::sync`] fills it and keeps it current.
    pub fn new(
        auth: AuthClient<Channel>,
        authz: AuthzClient<Channel>,
        staleness: Duration,
        registry: Arc<RwLock<crate::module::permissions::PermissionRegistry>>,
    ) -> Arc<Replica> {
        Arc::new(Replica {
            verifier: RwLock::new(Verifier::new(&[])),
            verified: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            revoked: RwLock::new(HashMap::new()),
            // Kept grants also age out after `core_staleness`, as a bound on any miss.
            grants: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(staleness.max(Duration::from_secs(1)))
                .build(),
            generation: Mutex::new(0),
            synced: AtomicBool::new(false),
            down_since: Mutex::new(None),
            sync_done: tokio::sync::Notify::new(),
            keys_asked: Mutex::new(None),
            staleness,
            auth,
            authz,
            registry,
        })
    }

    /// Whether what is kept may be used: synced, or down for at most `core_staleness`.
    fn usable(&self) -> bool {
        if self.synced.load(Ordering::Acquire) {
            return true;
        }
        let since = *self.down_since.lock().unwrap_or_else(|p| p.into_inner());
        since.is_some_and(|t| t.elapsed() <= self.staleness)
    }

    /// Whether the replica is usable; before the first sync ever, waits up to `limit`
    /// for it (a host that just started).
    pub async fn ready(&self, limit: Duration) -> bool {
        if self.usable() {
            return true;
        }
        let never_synced = self
            .down_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none();
        if !never_synced {
            return false;
        }
        let wait = self.sync_done.notified();
        if self.usable() {
            return true;
        }
        let _ = tokio::time::timeout(limit, wait).await;
        self.usable()
    }

    /// Whether requests with tokens can be answered now (for `/readyz`).
    pub fn can_authenticate(&self) -> bool {
        self.usable()
    }

    fn unavailable() -> CoreError {
        CoreError::Unavailable(
            "the core services are unreachable, and what this host kept of them is older than core_staleness".into(),
        )
    }

    /// Checks a token's signature and expiry with the kept keys (asking the core once
    /// for keys when it names an unknown one), then the revocation list.
    pub async fn verify(&self, token: &str, limit: Duration) -> Result<Claims, CoreError> {
        if !self.ready(limit).await {
            return Err(Self::unavailable());
        }
        let now = super::now_secs();
        let claims = match self.verified.get(token) {
            Some(claims) if claims.exp > now => claims,
            Some(_) => return Err(CoreError::Unauthorized(TokenError::Expired.to_string())),
            None => {
                let checked = self.verifier().verify(token, now);
                let claims = match checked {
                    Err(TokenError::UnknownKey(_)) if self.may_ask_keys() => {
                        self.fetch_keys().await?;
                        self.verifier().verify(token, now)
                    }
                    other => other,
                }
                .map_err(|e| CoreError::Unauthorized(e.to_string()))?;
                let claims = Arc::new(claims);
                self.verified.insert(token.to_string(), claims.clone());
                claims
            }
        };
        if self
            .revoked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&claims.jti)
        {
            return Err(CoreError::Unauthorized("token revoked".into()));
        }
        Ok((*claims).clone())
    }

    fn verifier(&self) -> Verifier {
        self.verifier
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn may_ask_keys(&self) -> bool {
        let mut asked = self.keys_asked.lock().unwrap_or_else(|p| p.into_inner());
        if asked.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return false;
        }
        *asked = Some(Instant::now());
        true
    }

    /// Marks a token revoked here at once (the change stream brings it too); drops the
    /// entries of tokens that have expired anyway.
    pub fn revoke(&self, jti: String, expires_at: i64) {
        let mut revoked = self.revoked.write().unwrap_or_else(|p| p.into_inner());
        revoked.insert(jti, expires_at);
        if revoked.len().is_multiple_of(1024) {
            let now = super::now_secs();
            revoked.retain(|_, exp| *exp > now);
        }
    }

    /// A user's grants: kept, or asked of the core (and kept, unless a change came in
    /// meanwhile).
    pub async fn grants(&self, user_id: &str, limit: Duration) -> Result<Arc<Grants>, CoreError> {
        if !self.ready(limit).await {
            return Err(Self::unavailable());
        }
        if let Some(g) = self.grants.get(user_id) {
            return Ok(g);
        }
        let generation = *self.generation.lock().unwrap_or_else(|p| p.into_inner());
        let answer = self
            .authz
            .clone()
            .user_grants(pb::UserGrantsRequest {
                user_id: user_id.into(),
            })
            .await
            .map_err(super::grpc_status::from_status)?
            .into_inner();
        let grants = Arc::new(Grants {
            email: answer.email,
            disabled: answer.disabled,
            roles: Vec::new(),
            permissions: answer.permissions,
        });
        {
            let current = self.generation.lock().unwrap_or_else(|p| p.into_inner());
            if *current == generation {
                self.grants.insert(user_id.to_string(), grants.clone());
            }
        }
        Ok(grants)
    }

    async fn fetch_keys(&self) -> Result<(), CoreError> {
        let keys = self
            .auth
            .clone()
            .public_keys(pb::PublicKeysRequest {})
            .await
            .map_err(super::grpc_status::from_status)?
            .into_inner()
            .keys;
        let keys: Vec<PublicKey> = keys
            .into_iter()
            .map(|k| PublicKey { kid: k.kid, x: k.x })
            .collect();
        *self.verifier.write().unwrap_or_else(|p| p.into_inner()) = Verifier::new(&keys);
        self.verified.invalidate_all();
        Ok(())
    }

    async fn fetch_revoked(&self) -> Result<(), CoreError> {
        let list = self
            .auth
            .clone()
            .revoked_tokens(pb::RevokedTokensRequest {})
            .await
            .map_err(super::grpc_status::from_status)?
            .into_inner();
        // Ids without an expiry (an older core) are kept for a day.
        let later = super::now_secs() + 86_400;
        let revoked = list
            .token_ids
            .into_iter()
            .enumerate()
            .map(|(i, id)| (id, list.expires_at.get(i).copied().unwrap_or(later)))
            .collect();
        *self.revoked.write().unwrap_or_else(|p| p.into_inner()) = revoked;
        Ok(())
    }

    fn forget_grants(&self, user: Option<&str>) {
        let mut generation = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        *generation += 1;
        match user {
            Some(id) => self.grants.invalidate(id),
            None => self.grants.invalidate_all(),
        }
    }

    /// Declares this host's modules' permissions again: a restarted core forgot them.
    async fn declare_permissions(&self) -> Result<(), CoreError> {
        let by_module = self
            .registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_module();
        for (module, permissions) in by_module.into_iter().filter(|(m, _)| m != "core") {
            let declared = self
                .authz
                .clone()
                .register_permissions(pb::RegisterPermissionsRequest {
                    module: module.clone(),
                    permissions,
                })
                .await;
            match declared {
                Ok(_) => {}
                Err(s) if super::grpc_status::unreachable(&s) => {
                    return Err(super::grpc_status::from_status(s))
                }
                Err(s) => {
                    tracing::error!(module = %module, error = %s.message(), "the core refused the module's permissions; roles cannot grant them");
                }
            }
        }
        Ok(())
    }

    fn went_down(&self) {
        if self.synced.swap(false, Ordering::AcqRel) {
            *self.down_since.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            tracing::warn!("lost the core's change stream; kept grants and revocations stay usable for core_staleness");
        }
    }

    /// Follows the core's change stream forever, reconnecting with backoff.
    pub async fn sync(self: Arc<Self>) {
        use pb::change::Event;
        let mut backoff = Duration::from_millis(100);
        loop {
            let opened = self.authz.clone().watch(pb::WatchRequest {}).await;
            if let Ok(stream) = opened {
                let mut stream = stream.into_inner();
                // Silence past SILENCE (no heartbeat) means the stream is broken.
                while let Ok(Ok(Some(change))) =
                    tokio::time::timeout(SILENCE, stream.message()).await
                {
                    let applied = match change.event {
                        Some(Event::Resync(_)) => self.resync().await,
                        Some(Event::GrantsChanged(g)) => {
                            self.forget_grants(
                                Some(&g.user_id)
                                    .filter(|u| !u.is_empty())
                                    .map(String::as_str),
                            );
                            Ok(())
                        }
                        Some(Event::TokenRevoked(t)) => {
                            self.revoke(t.token_id, t.expires_at);
                            Ok(())
                        }
                        Some(Event::KeysChanged(_)) => self.fetch_keys().await,
                        Some(Event::Heartbeat(_)) => Ok(()),
                        None => Ok(()),
                    };
                    if applied.is_err() {
                        break;
                    }
                    backoff = Duration::from_millis(100);
                }
            }
            self.went_down();
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Starts over: forget the grants, fetch keys and revocations, then mark synced.
    async fn resync(&self) -> Result<(), CoreError> {
        self.forget_grants(None);
        self.fetch_keys().await?;
        self.fetch_revoked().await?;
        self.declare_permissions().await?;
        if !self.synced.swap(true, Ordering::AcqRel) {
            *self.down_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
            tracing::info!("following the core's change stream");
        }
        self.sync_done.notify_waiters();
        Ok(())
    }
}
