//! The core services over gRPC (`modhost run --core URL`): the module host's client of
//! `modhost core`. The host keeps no token secret and no user data; it asks the core.
//!
//! Consistency and availability, the choices made here:
//! - tokens are checked here, with the core's public keys; revocations and users'
//!   grants are kept here too, current through the core's change stream (`replica.rs`):
//!   a role, grant, user change or revocation made on any host applies on every host as
//!   soon as the core sends it;
//! - while the stream is down, what is kept is used for `core_staleness`; after that,
//!   requests needing a token fail closed (503). Public routes never need the core;
//! - audit records go through a durable local spool (`spool.rs`), delivered in order.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use modhost_plugin_api::{AuditEntry, UserInfo};
use tonic::{transport::Channel, Status};

use super::{
    audit::{Audit, AuditFilter},
    auth::{AuthUser, TokenPair},
    authz::{Grants, RoleInfo},
    replica::Replica,
    spool::AuditSpool,
    CoreError,
};
use crate::wire::core_v1::{
    self as pb, audit_client::AuditClient, auth_client::AuthClient, authz_client::AuthzClient,
    identity_client::IdentityClient,
};

/// How a host reaches the core services.
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    /// `http://HOST` (the default ports 8081-8084) or `http://HOST:PORT` (all four on
    /// one port); `None`: the core services are embedded.
    pub url: Option<String>,
    /// How long a token the core accepted keeps passing while the core is unreachable.
    pub staleness: Duration,
    /// Deadline of one call to the core.
    pub timeout: Duration,
    /// Audit records waiting for the core may use this much disk; past it, new ones
    /// are dropped (logged, counted).
    pub spool_max_bytes: u64,
    /// TLS (with an `https://` URL): the CA that signed the core's certificate (PEM).
    pub tls_ca: Option<PathBuf>,
    /// Mutual TLS: this host's certificate and key (PEM), signed by a CA the core trusts.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl Default for RemoteSettings {
    fn default() -> Self {
        Self {
            url: None,
            staleness: Duration::from_secs(30),
            timeout: Duration::from_secs(2),
            spool_max_bytes: 64 * 1024 * 1024,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// The four services' addresses, from a `core_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreAddresses {
    pub auth: String,
    pub identity: String,
    pub authz: String,
    pub audit: String,
}

impl CoreAddresses {
    /// `http://HOST[:PORT]` (also `https://`): without a port, the platform's ports.
    pub fn parse(url: &str) -> Result<CoreAddresses, String> {
        let (scheme, rest) = url
            .split_once("://")
            .filter(|(s, _)| *s == "http" || *s == "https")
            .ok_or_else(|| {
                format!("`{url}`: expected http://HOST or http://HOST:PORT (the core services)")
            })?;
        let host = rest.trim_end_matches('/');
        if host.is_empty() || host.contains('/') {
            return Err(format!("`{url}`: expected http://HOST or http://HOST:PORT"));
        }
        // A port after the last `:` (an IPv6 literal is in brackets: `[::1]:9000`).
        let with_port = host.rsplit_once(':').is_some_and(|(h, p)| {
            !h.is_empty() && p.parse::<u16>().is_ok() && (!h.starts_with('[') || h.ends_with(']'))
        });
        let at = |port: u16| format!("{scheme}://{host}:{port}");
        Ok(if with_port {
            let one = format!("{scheme}://{host}");
            CoreAddresses {
                auth: one.clone(),
                identity: one.clone(),
                authz: one.clone(),
                audit: one,
            }
        } else {
            CoreAddresses {
                auth: at(8081),
                identity: at(8082),
                authz: at(8083),
                audit: at(8084),
            }
        })
    }
}

/// Why the remote core could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RemoteSetupError {
    #[error("core_url: {0}")]
    Url(String),
    #[error("the audit spool in {}: {source}", path.display())]
    Spool {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The client side of the core services.
pub struct RemoteCore {
    auth: AuthClient<Channel>,
    identity: IdentityClient<Channel>,
    authz: AuthzClient<Channel>,
    audit: AuditClient<Channel>,
    replica: Arc<Replica>,
    timeout: Duration,
    reachable: Arc<AtomicBool>,
    spool: AuditSpool,
}

/// TLS settings for the channels, read from the files named in the settings.
fn client_tls(
    settings: &RemoteSettings,
    url: &str,
) -> Result<Option<tonic::transport::ClientTlsConfig>, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let read = |what: &str, path: &PathBuf| {
        std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))
    };
    if !url.starts_with("https://") {
        if settings.tls_ca.is_some() || settings.tls_cert.is_some() {
            return Err(format!(
                "`{url}`: core_tls_* settings need an https:// core_url"
            ));
        }
        return Ok(None);
    }
    let ca = settings.tls_ca.as_ref().ok_or_else(|| {
        format!("`{url}`: an https:// core_url needs core_tls_ca (the CA that signed the core's certificate)")
    })?;
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("core_tls_ca", ca)?));
    match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(
                read("core_tls_cert", cert)?,
                read("core_tls_key", key)?,
            ));
        }
        (None, None) => {}
        _ => return Err("core_tls_cert and core_tls_key go together".into()),
    }
    Ok(Some(tls))
}

fn channel(
    url: &str,
    timeout: Duration,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> Result<Channel, String> {
    let mut endpoint = Channel::from_shared(url.to_string())
        .map_err(|e| format!("`{url}`: {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout)
        // A dead peer that closes nothing is noticed on the otherwise idle stream.
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls.clone())
            .map_err(|e| format!("`{url}`: {e}"))?;
    }
    Ok(endpoint.connect_lazy())
}

/// Asks the Auth service's health every second, so `/readyz` knows whether the core
/// answers even when no request needed it.
async fn probe(channel: Channel, reachable: Arc<AtomicBool>) {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let mut client = HealthClient::new(channel);
    loop {
        let asked = client
            .check(HealthCheckRequest {
                service: "modhost.core.v1.Auth".into(),
            })
            .await;
        let serving = asked.is_ok_and(|r| r.into_inner().status == 1);
        if reachable.swap(serving, Ordering::Relaxed) != serving {
            if serving {
                tracing::info!("the core services answer again");
            } else {
                tracing::warn!("the core services do not answer");
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

use super::grpc_status::{from_status as error, unreachable};

fn user_info(u: pb::User) -> UserInfo {
    UserInfo {
        id: u.id,
        email: u.email,
        display_name: u.display_name,
        disabled: u.disabled,
        created_at: u.created_at,
    }
}

fn role_info(r: pb::Role) -> RoleInfo {
    RoleInfo {
        name: r.name,
        description: r.description,
        builtin: r.builtin,
        permissions: r.permissions,
    }
}

fn token_pair(p: pb::TokenPair) -> TokenPair {
    TokenPair {
        access_token: p.access_token,
        refresh_token: p.refresh_token,
        token_type: "Bearer",
        expires_in: p.expires_in,
    }
}

impl RemoteCore {
    /// Clients for the core at `settings.url` (connected on first use, so a host starts
    /// while the core is down), with the audit spool in `data_dir/core-spool/`.
    pub fn new(
        settings: &RemoteSettings,
        data_dir: &std::path::Path,
        registry: Arc<std::sync::RwLock<crate::module::permissions::PermissionRegistry>>,
    ) -> Result<Self, RemoteSetupError> {
        let url = settings
            .url
            .as_deref()
            .ok_or_else(|| RemoteSetupError::Url("not set".into()))?;
        let at = CoreAddresses::parse(url).map_err(RemoteSetupError::Url)?;
        let t = settings.timeout;
        let tls = client_tls(settings, url).map_err(RemoteSetupError::Url)?;
        let ch = |u: &str| channel(u, t, tls.as_ref()).map_err(RemoteSetupError::Url);
        let audit = AuditClient::new(ch(&at.audit)?);
        // Not until the first health probe or call says so.
        let reachable = Arc::new(AtomicBool::new(false));
        let dir = data_dir.join("core-spool");
        let spool = AuditSpool::open(
            &dir,
            settings.spool_max_bytes,
            audit.clone(),
            reachable.clone(),
        )
        .map_err(|source| RemoteSetupError::Spool { path: dir, source })?;
        let auth = ch(&at.auth)?;
        tokio::spawn(probe(auth.clone(), reachable.clone()));
        // The revocation list of a busy platform can be large.
        let auth = AuthClient::new(auth).max_decoding_message_size(64 * 1024 * 1024);
        let authz = AuthzClient::new(ch(&at.authz)?);
        let replica = Replica::new(auth.clone(), authz.clone(), settings.staleness, registry);
        tokio::spawn(replica.clone().sync());
        Ok(Self {
            auth,
            identity: IdentityClient::new(ch(&at.identity)?),
            authz,
            audit,
            replica,
            timeout: settings.timeout,
            reachable,
            spool,
        })
    }

    /// Whether the core answers (the last call or health probe reached it) and what
    /// this host keeps of it is usable, so requests with tokens can be answered.
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed) && self.replica.can_authenticate()
    }

    /// Notes the outcome of a call; passes the status on.
    fn seen<T>(&self, r: Result<tonic::Response<T>, Status>) -> Result<T, CoreError> {
        match r {
            Ok(answer) => {
                self.reachable.store(true, Ordering::Relaxed);
                Ok(answer.into_inner())
            }
            Err(s) => {
                if unreachable(&s) {
                    self.reachable.store(false, Ordering::Relaxed);
                }
                Err(error(s))
            }
        }
    }

    /// Checks an access token here (keys, revocations and grants kept from the core).
    pub async fn authenticate(&self, token: &str) -> Result<AuthUser, CoreError> {
        let claims = self.replica.verify(token, self.timeout).await?;
        if claims.typ != "access" {
            return Err(CoreError::Unauthorized("expected an access token".into()));
        }
        super::auth::principal(&claims, || self.replica.grants(&claims.sub, self.timeout)).await
    }

    pub async fn login(&self, email: &str, password: &str) -> Result<TokenPair, CoreError> {
        let r = self
            .auth
            .clone()
            .login(pb::LoginRequest {
                email: email.into(),
                password: password.into(),
            })
            .await;
        self.seen(r).map(token_pair)
    }

    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, CoreError> {
        let r = self
            .auth
            .clone()
            .refresh(pb::RefreshRequest {
                refresh_token: refresh_token.into(),
            })
            .await;
        self.seen(r).map(token_pair)
    }

    /// Revokes `token` as the holder of `actor_token` (the core checks who may).
    pub async fn revoke(&self, actor_token: &str, token: &str) -> Result<(), CoreError> {
        let r = self
            .auth
            .clone()
            .revoke(pb::RevokeRequest {
                actor_token: actor_token.into(),
                token: token.into(),
            })
            .await;
        self.seen(r)?;
        if let Ok(claims) = self.replica.verify(token, self.timeout).await {
            self.replica.revoke(claims.jti, claims.exp);
        }
        Ok(())
    }

    pub async fn create_user(
        &self,
        actor: &str,
        email: &str,
        password: &str,
        display_name: &str,
    ) -> Result<UserInfo, CoreError> {
        let r = self
            .identity
            .clone()
            .create_user(pb::CreateUserRequest {
                actor: actor.into(),
                email: email.into(),
                password: password.into(),
                display_name: display_name.into(),
            })
            .await;
        self.seen(r).map(user_info)
    }

    pub async fn get_user(&self, id: &str) -> Result<UserInfo, CoreError> {
        let r = self
            .identity
            .clone()
            .get_user(pb::GetUserRequest { id: id.into() })
            .await;
        self.seen(r).map(user_info)
    }

    pub async fn find_by_email(&self, email: &str) -> Result<UserInfo, CoreError> {
        let r = self
            .identity
            .clone()
            .find_user_by_email(pb::FindUserByEmailRequest {
                email: email.into(),
            })
            .await;
        self.seen(r).map(user_info)
    }

    pub async fn list_users(
        &self,
        limit: i64,
        after: Option<&str>,
    ) -> Result<Vec<UserInfo>, CoreError> {
        let r = self
            .identity
            .clone()
            .list_users(pb::ListUsersRequest {
                limit,
                after: after.unwrap_or_default().into(),
            })
            .await;
        Ok(self.seen(r)?.users.into_iter().map(user_info).collect())
    }

    pub async fn disable_user(&self, actor: &str, id: &str) -> Result<UserInfo, CoreError> {
        let r = self
            .identity
            .clone()
            .disable_user(pb::DisableUserRequest {
                actor: actor.into(),
                id: id.into(),
            })
            .await;
        self.seen(r).map(user_info)
    }

    pub async fn roles(&self) -> Result<Vec<RoleInfo>, CoreError> {
        let r = self.authz.clone().list_roles(pb::ListRolesRequest {}).await;
        Ok(self.seen(r)?.roles.into_iter().map(role_info).collect())
    }

    pub async fn create_role(
        &self,
        actor: &str,
        name: &str,
        description: &str,
        permissions: &[String],
    ) -> Result<RoleInfo, CoreError> {
        let r = self
            .authz
            .clone()
            .create_role(pb::CreateRoleRequest {
                actor: actor.into(),
                name: name.into(),
                description: description.into(),
                permissions: permissions.to_vec(),
            })
            .await;
        self.seen(r).map(role_info)
    }

    pub async fn set_role_permissions(
        &self,
        actor: &str,
        name: &str,
        permissions: &[String],
    ) -> Result<RoleInfo, CoreError> {
        let r = self
            .authz
            .clone()
            .update_role(pb::UpdateRoleRequest {
                actor: actor.into(),
                name: name.into(),
                permissions: permissions.to_vec(),
            })
            .await;
        self.seen(r).map(role_info)
    }

    pub async fn delete_role(&self, actor: &str, name: &str) -> Result<(), CoreError> {
        let r = self
            .authz
            .clone()
            .delete_role(pb::DeleteRoleRequest {
                actor: actor.into(),
                name: name.into(),
            })
            .await;
        self.seen(r).map(|_| ())
    }

    pub async fn assign_role(
        &self,
        actor: &str,
        user_id: &str,
        role: &str,
    ) -> Result<(), CoreError> {
        let r = self
            .authz
            .clone()
            .assign_role(pb::RoleAssignment {
                actor: actor.into(),
                user_id: user_id.into(),
                role: role.into(),
            })
            .await;
        self.seen(r).map(|_| ())
    }

    pub async fn unassign_role(
        &self,
        actor: &str,
        user_id: &str,
        role: &str,
    ) -> Result<(), CoreError> {
        let r = self
            .authz
            .clone()
            .unassign_role(pb::RoleAssignment {
                actor: actor.into(),
                user_id: user_id.into(),
                role: role.into(),
            })
            .await;
        self.seen(r).map(|_| ())
    }

    /// Whether the user holds `permission`, from the kept grants.
    pub async fn check(&self, user_id: &str, permission: &str) -> Result<bool, CoreError> {
        match self.replica.grants(user_id, self.timeout).await {
            Ok(g) => Ok(!g.disabled && g.allows(permission)),
            Err(CoreError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The user's grants, kept or asked of the core.
    pub async fn grants(&self, user_id: &str) -> Result<Arc<Grants>, CoreError> {
        self.replica.grants(user_id, self.timeout).await
    }

    /// Every permission declared to the core, by module.
    pub async fn declared_permissions(
        &self,
    ) -> Result<std::collections::BTreeMap<String, Vec<String>>, CoreError> {
        let r = self
            .authz
            .clone()
            .declared_permissions(pb::DeclaredPermissionsRequest {})
            .await;
        Ok(self
            .seen(r)?
            .by_module
            .into_iter()
            .map(|(module, list)| (module, list.permissions))
            .collect())
    }

    /// Declares a module's permissions to the core.
    pub async fn register_permissions(
        &self,
        module: &str,
        permissions: Vec<String>,
    ) -> Result<(), CoreError> {
        let r = self
            .authz
            .clone()
            .register_permissions(pb::RegisterPermissionsRequest {
                module: module.into(),
                permissions,
            })
            .await;
        self.seen(r).map(|_| ())
    }

    /// Queues a record for the core (spooled on disk until it is delivered).
    pub fn record(&self, a: Audit) {
        self.spool.append(a);
    }

    /// The spool's queue, for tasks that record later.
    pub fn spool(&self) -> AuditSpool {
        self.spool.clone()
    }

    pub async fn audit_query(&self, f: &AuditFilter) -> Result<Vec<AuditEntry>, CoreError> {
        let r = self
            .audit
            .clone()
            .query(pb::AuditQuery {
                actor: f.actor.clone(),
                module: f.module.clone(),
                action: f.action.clone(),
                outcome: f.outcome.clone(),
                since: f.since.clone(),
                until: f.until.clone(),
                before: f.before,
                limit: f.limit,
            })
            .await;
        Ok(self
            .seen(r)?
            .entries
            .into_iter()
            .map(|e| AuditEntry {
                id: e.id,
                time: e.time,
                actor: e.actor,
                module: e.module,
                action: e.action,
                target: e.target,
                outcome: e.outcome,
                detail: e.detail,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::CoreAddresses;

    #[test]
    fn a_url_without_a_port_means_the_four_default_ports() {
        let four = CoreAddresses::parse("http://core.internal").unwrap();
        assert_eq!(four.auth, "http://core.internal:8081");
        assert_eq!(four.audit, "http://core.internal:8084");
        let one = CoreAddresses::parse("http://127.0.0.1:9000/").unwrap();
        assert_eq!(one.identity, "http://127.0.0.1:9000");
        assert!(CoreAddresses::parse("core.internal:8081").is_err());
        assert!(CoreAddresses::parse("ftp://x").is_err());
    }
}
