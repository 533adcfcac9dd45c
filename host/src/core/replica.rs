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
    collections::HashSet,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
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
    revoked: RwLock<HashSet<String>>,
    grants: moka::sync::Cache<String, Arc<Grants>>,
    /// Bumped by every grants change: a fetch that began before one is not kept.
    generation: AtomicU64,
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
}

impl Replica {
    /// An empty replica; [`Replica::sync`] fills it and keeps it current.
    pub fn new(
        auth: AuthClient<Channel>,
        authz: AuthzClient<Channel>,
        staleness: Duration,
    ) -> Arc<Replica> {
        Arc::new(Replica {
            verifier: RwLock::new(Verifier::new(&[])),
            verified: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            revoked: RwLock::new(HashSet::new()),
            grants: moka::sync::Cache::builder().max_capacity(100_000).build(),
            generation: AtomicU64::new(0),
            synced: AtomicBool::new(false),
            down_since: Mutex::new(None),
            sync_done: tokio::sync::Notify::new(),
            keys_asked: Mutex::new(None),
            staleness,
            auth,
            authz,
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

    /// Waits up to `limit` for the first sync, then says whether the replica is usable.
    pub async fn ready(&self, limit: Duration) -> bool {
        if self.usable() {
            return true;
        }
        let wait = self.sync_done.notified();
        if self.usable() {
            return true;
        }
        let _ = tokio::time::timeout(limit, wait).await;
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
            .contains(&claims.jti)
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

    /// Marks a token revoked here at once (the change stream brings it too).
    pub fn revoke(&self, jti: String) {
        self.revoked
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(jti);
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
        let generation = self.generation.load(Ordering::Acquire);
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
        if self.generation.load(Ordering::Acquire) == generation {
            self.grants.insert(user_id.to_string(), grants.clone());
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
        let ids = self
            .auth
            .clone()
            .revoked_tokens(pb::RevokedTokensRequest {})
            .await
            .map_err(super::grpc_status::from_status)?
            .into_inner()
            .token_ids;
        *self.revoked.write().unwrap_or_else(|p| p.into_inner()) = ids.into_iter().collect();
        Ok(())
    }

    fn forget_grants(&self, user: Option<&str>) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        match user {
            Some(id) => self.grants.invalidate(id),
            None => self.grants.invalidate_all(),
        }
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
                while let Ok(Some(change)) = stream.message().await {
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
                            self.revoke(t.token_id);
                            Ok(())
                        }
                        Some(Event::KeysChanged(_)) => self.fetch_keys().await,
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
        if !self.synced.swap(true, Ordering::AcqRel) {
            *self.down_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
            tracing::info!("following the core's change stream");
        }
        self.sync_done.notify_waiters();
        Ok(())
    }
}
