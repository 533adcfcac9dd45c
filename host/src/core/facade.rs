//! [`Core`]: the one door to the core services, wherever they run: embedded in this host
//! ([`LocalCore`], the default) or in `modhost core`, reached over gRPC
//! ([`RemoteCore`], `core_url`). The HTTP API, route enforcement, module calls and the
//! host's own audit entries all go through it and do not know which.
//!
//! The permission registry stays here in both cases: the host registers its modules'
//! permissions locally (for its OpenAPI document and grant checks) and, with a remote
//! core, with the core too.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use modhost_plugin_api::{AuditEntry, UserInfo};

use super::{
    audit::{Audit, AuditFilter},
    audit_limit,
    auth::{AuthUser, TokenPair},
    authz::{Grants, RoleInfo},
    remote::{RemoteCore, RemoteSettings, RemoteSetupError},
    spool::AuditSpool,
    AuthSettings, CoreError, CoreSetupError, LocalCore, CORE_PERMISSIONS,
};
use crate::data::{database::AreaPool, db_handle::AreaDatabase};
use crate::module::permissions::PermissionRegistry;

// One per process: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Local(LocalCore),
    Remote(RemoteCore),
}

/// The core services, embedded or remote.
pub struct Core {
    backend: Backend,
    /// Every permission declared on this host (the core's and its modules').
    pub permissions: Arc<RwLock<PermissionRegistry>>,
    /// Denied requests audited in the current window (see `audit_limit.rs`).
    pub(super) denials: audit_limit::SharedBudget,
}

/// Where an audit entry goes: the local area, or the spool for the remote core.
#[derive(Clone)]
pub(super) enum Recorder {
    Local(AreaDatabase),
    Remote(AuditSpool),
}

impl Recorder {
    pub(super) async fn record(&self, a: Audit) {
        match self {
            Recorder::Local(db) => super::audit::insert(db, a).await,
            Recorder::Remote(spool) => spool.append(a),
        }
    }
}

fn registry() -> Arc<RwLock<PermissionRegistry>> {
    let mut registry = PermissionRegistry::default();
    // Cannot clash: the registry is empty.
    let _ = registry.register("core", CORE_PERMISSIONS.iter().map(|p| p.to_string()));
    Arc::new(RwLock::new(registry))
}

macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match &$self.backend {
            Backend::Local(core) => core.$method($($arg),*).await,
            Backend::Remote(core) => core.$method($($arg),*).await,
        }
    };
}

impl Core {
    /// The embedded core services on `pool` (the host's own `core` area).
    pub async fn open(pool: AreaPool, settings: AuthSettings) -> Result<Core, CoreSetupError> {
        let permissions = registry();
        let local = LocalCore::open(pool, settings, permissions.clone()).await?;
        Ok(Core {
            backend: Backend::Local(local),
            permissions,
            denials: Default::default(),
        })
    }

    /// The core services of `modhost core` at `settings.url`; audit records wait in
    /// `data_dir/core-spool/` until the core takes them. Call inside the runtime.
    pub fn remote(
        settings: &RemoteSettings,
        data_dir: &std::path::Path,
    ) -> Result<Core, RemoteSetupError> {
        let permissions = registry();
        Ok(Core {
            backend: Backend::Remote(RemoteCore::new(settings, data_dir, permissions.clone())?),
            permissions,
            denials: Default::default(),
        })
    }

    /// The embedded core, if this is one (what `modhost core` serves).
    pub fn local(&self) -> Option<&LocalCore> {
        match &self.backend {
            Backend::Local(core) => Some(core),
            Backend::Remote(_) => None,
        }
    }

    /// Whether the core services answer: always for the embedded ones; for remote ones,
    /// whether the last call reached them.
    pub fn reachable(&self) -> bool {
        match &self.backend {
            Backend::Local(_) => true,
            Backend::Remote(core) => core.reachable(),
        }
    }

    pub(super) fn recorder(&self) -> Recorder {
        match &self.backend {
            Backend::Local(core) => Recorder::Local(core.db().clone()),
            Backend::Remote(core) => Recorder::Remote(core.spool()),
        }
    }

    /// Registers `module`'s declared permissions here and, with a remote core, there
    /// (retried in the background until the core takes them).
    pub fn register_permissions(
        self: &Arc<Self>,
        module: &str,
        permissions: Vec<String>,
    ) -> Result<(), String> {
        self.permissions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .register(module, permissions.clone())
            .map_err(|e| e.to_string())?;
        if let Backend::Remote(_) = &self.backend {
            let (core, module) = (Arc::clone(self), module.to_string());
            tokio::spawn(async move {
                let mut wait = Duration::from_millis(200);
                loop {
                    let Backend::Remote(remote) = &core.backend else {
                        return;
                    };
                    match remote
                        .register_permissions(&module, permissions.clone())
                        .await
                    {
                        Ok(()) => return,
                        Err(CoreError::Unavailable(_)) => {
                            tokio::time::sleep(wait).await;
                            wait = (wait * 2).min(Duration::from_secs(5));
                        }
                        Err(e) => {
                            tracing::error!(module = %module, error = %e, "the core refused the module's permissions; roles cannot grant them");
                            return;
                        }
                    }
                }
            });
        }
        Ok(())
    }

    /// Every declared permission, by module: this host's registry, or, with a remote
    /// core, the core's (what every host declared).
    pub async fn declared_permissions(
        &self,
    ) -> Result<std::collections::BTreeMap<String, Vec<String>>, CoreError> {
        match &self.backend {
            Backend::Local(_) => Ok(self
                .permissions
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .by_module()),
            Backend::Remote(core) => core.declared_permissions().await,
        }
    }

    pub async fn login(&self, email: &str, password: &str) -> Result<TokenPair, CoreError> {
        dispatch!(self.login(email, password))
    }

    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, CoreError> {
        dispatch!(self.refresh(refresh_token))
    }

    /// Revokes `token` for `actor`, who presented `actor_token`.
    pub async fn revoke(
        &self,
        actor: &AuthUser,
        actor_token: &str,
        token: &str,
    ) -> Result<(), CoreError> {
        match &self.backend {
            Backend::Local(core) => core.revoke(actor, token).await,
            Backend::Remote(core) => core.revoke(actor_token, token).await,
        }
    }

    pub async fn authenticate(&self, token: &str) -> Result<AuthUser, CoreError> {
        dispatch!(self.authenticate(token))
    }

    /// An operator token (`modhost admin token`): only where the signing key is.
    pub fn console_token(&self, ttl: Duration) -> Result<String, CoreError> {
        match &self.backend {
            Backend::Local(core) => Ok(core.console_token(ttl)),
            Backend::Remote(_) => Err(CoreError::Invalid(
                "this host uses remote core services and holds no signing key; run `modhost admin token` against the core's data".into(),
            )),
        }
    }

    pub async fn create_user(
        &self,
        actor: &str,
        email: &str,
        password: &str,
        display_name: &str,
    ) -> Result<UserInfo, CoreError> {
        dispatch!(self.create_user(actor, email, password, display_name))
    }

    pub async fn get_user(&self, id: &str) -> Result<UserInfo, CoreError> {
        dispatch!(self.get_user(id))
    }

    pub async fn find_by_email(&self, email: &str) -> Result<UserInfo, CoreError> {
        dispatch!(self.find_by_email(email))
    }

    pub async fn list_users(
        &self,
        limit: i64,
        after: Option<&str>,
    ) -> Result<Vec<UserInfo>, CoreError> {
        dispatch!(self.list_users(limit, after))
    }

    pub async fn disable_user(&self, actor: &str, id: &str) -> Result<UserInfo, CoreError> {
        dispatch!(self.disable_user(actor, id))
    }

    pub async fn roles(&self) -> Result<Vec<RoleInfo>, CoreError> {
        dispatch!(self.roles())
    }

    pub async fn create_role(
        &self,
        actor: &str,
        name: &str,
        description: &str,
        permissions: &[String],
    ) -> Result<RoleInfo, CoreError> {
        dispatch!(self.create_role(actor, name, description, permissions))
    }

    pub async fn set_role_permissions(
        &self,
        actor: &str,
        name: &str,
        permissions: &[String],
    ) -> Result<RoleInfo, CoreError> {
        dispatch!(self.set_role_permissions(actor, name, permissions))
    }

    pub async fn delete_role(&self, actor: &str, name: &str) -> Result<(), CoreError> {
        dispatch!(self.delete_role(actor, name))
    }

    pub async fn assign_role(
        &self,
        actor: &str,
        user_id: &str,
        role: &str,
    ) -> Result<(), CoreError> {
        dispatch!(self.assign_role(actor, user_id, role))
    }

    pub async fn unassign_role(
        &self,
        actor: &str,
        user_id: &str,
        role: &str,
    ) -> Result<(), CoreError> {
        dispatch!(self.unassign_role(actor, user_id, role))
    }

    pub async fn grants(&self, user_id: &str) -> Result<Arc<Grants>, CoreError> {
        dispatch!(self.grants(user_id))
    }

    pub async fn check(&self, user_id: &str, permission: &str) -> Result<bool, CoreError> {
        dispatch!(self.check(user_id, permission))
    }

    /// Appends an audit entry (with a remote core: to the spool, delivered in order).
    pub async fn record(&self, a: Audit) {
        match &self.backend {
            Backend::Local(core) => core.record(a).await,
            Backend::Remote(core) => core.record(a),
        }
    }

    pub async fn audit_query(&self, f: &AuditFilter) -> Result<Vec<AuditEntry>, CoreError> {
        dispatch!(self.audit_query(f))
    }
}
