//! `modhost core`: the core services as gRPC services, over one embedded [`Core`] (and
//! so one database). Each service listens on its own address (Auth 8081, Identity 8082, Authz
//! 8083, Audit 8084 by default), or all four share one; every listener also answers the
//! standard health check (`grpc.health.v1`) and server reflection, so `grpcurl` works.

use std::{net::SocketAddr, sync::Arc};

use tonic::{Request, Response, Status};

use crate::core::{audit::AuditFilter, Core};
use crate::wire::core_v1::{
    self as pb,
    audit_server::{Audit, AuditServer},
    auth_server::{Auth, AuthServer},
    authz_server::{Authz, AuthzServer},
    identity_server::{Identity, IdentityServer},
};

/// The four services; `Clone` is cheap (one shared [`Core`]).
#[derive(Clone)]
pub struct CoreServices {
    core: Arc<Core>,
}

impl CoreServices {
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// The embedded core these services serve.
    fn local(&self) -> Result<&crate::core::LocalCore, Status> {
        self.core
            .local()
            .ok_or_else(|| Status::failed_precondition("this process forwards to another core"))
    }
}

use super::grpc_status::to_status as status;

type Reply<T> = Result<Response<T>, Status>;

/// How often the change stream says it is alive when nothing else happens.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(2);

fn user(u: modhost_plugin_api::UserInfo) -> pb::User {
    pb::User {
        id: u.id,
        email: u.email,
        display_name: u.display_name,
        disabled: u.disabled,
        created_at: u.created_at,
    }
}

fn token_pair(pair: crate::core::auth::TokenPair) -> pb::TokenPair {
    pb::TokenPair {
        access_token: pair.access_token,
        refresh_token: pair.refresh_token,
        token_type: pair.token_type.to_string(),
        expires_in: pair.expires_in,
    }
}

fn role(r: crate::core::authz::RoleInfo) -> pb::Role {
    pb::Role {
        name: r.name,
        description: r.description,
        builtin: r.builtin,
        permissions: r.permissions,
    }
}

#[tonic::async_trait]
impl Auth for CoreServices {
    async fn login(&self, req: Request<pb::LoginRequest>) -> Reply<pb::TokenPair> {
        let r = req.into_inner();
        let pair = self
            .core
            .login(&r.email, &r.password)
            .await
            .map_err(status)?;
        Ok(Response::new(token_pair(pair)))
    }

    async fn refresh(&self, req: Request<pb::RefreshRequest>) -> Reply<pb::TokenPair> {
        let pair = self
            .core
            .refresh(&req.into_inner().refresh_token)
            .await
            .map_err(status)?;
        Ok(Response::new(token_pair(pair)))
    }

    async fn revoke(&self, req: Request<pb::RevokeRequest>) -> Reply<pb::RevokeResponse> {
        let r = req.into_inner();
        let actor_token = if r.actor_token.is_empty() {
            &r.token
        } else {
            &r.actor_token
        };
        let actor = self.core.authenticate(actor_token).await.map_err(status)?;
        self.core
            .revoke(&actor, actor_token, &r.token)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RevokeResponse {}))
    }

    async fn authenticate(&self, req: Request<pb::AuthenticateRequest>) -> Reply<pb::Principal> {
        let u = self
            .core
            .authenticate(&req.into_inner().access_token)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::Principal {
            user_id: u.id,
            email: u.email,
            permissions: u.permissions,
            expires_at: u.expires_at,
            token_id: u.jti,
        }))
    }

    async fn public_keys(&self, _req: Request<pb::PublicKeysRequest>) -> Reply<pb::PublicKeyList> {
        let local = self.local()?;
        Ok(Response::new(pb::PublicKeyList {
            keys: local
                .public_keys()
                .into_iter()
                .map(|(k, until)| pb::PublicKeyInfo {
                    kid: k.kid,
                    x: k.x,
                    valid_until: until.unwrap_or(0),
                })
                .collect(),
        }))
    }

    async fn revoked_tokens(
        &self,
        _req: Request<pb::RevokedTokensRequest>,
    ) -> Reply<pb::RevokedTokenList> {
        let (token_ids, expires_at) = self.local()?.revoked_tokens().into_iter().unzip();
        Ok(Response::new(pb::RevokedTokenList {
            token_ids,
            expires_at,
        }))
    }
}

#[tonic::async_trait]
impl Identity for CoreServices {
    async fn create_user(&self, req: Request<pb::CreateUserRequest>) -> Reply<pb::User> {
        let r = req.into_inner();
        let created = self
            .core
            .create_user(&r.actor, &r.email, &r.password, &r.display_name)
            .await
            .map_err(status)?;
        Ok(Response::new(user(created)))
    }

    async fn get_user(&self, req: Request<pb::GetUserRequest>) -> Reply<pb::User> {
        let found = self
            .core
            .get_user(&req.into_inner().id)
            .await
            .map_err(status)?;
        Ok(Response::new(user(found)))
    }

    async fn find_user_by_email(
        &self,
        req: Request<pb::FindUserByEmailRequest>,
    ) -> Reply<pb::User> {
        let found = self
            .core
            .find_by_email(&req.into_inner().email)
            .await
            .map_err(status)?;
        Ok(Response::new(user(found)))
    }

    async fn list_users(&self, req: Request<pb::ListUsersRequest>) -> Reply<pb::UserList> {
        let r = req.into_inner();
        let after = (!r.after.is_empty()).then_some(r.after.as_str());
        let users = self.core.list_users(r.limit, after).await.map_err(status)?;
        Ok(Response::new(pb::UserList {
            users: users.into_iter().map(user).collect(),
        }))
    }

    async fn disable_user(&self, req: Request<pb::DisableUserRequest>) -> Reply<pb::User> {
        let r = req.into_inner();
        let disabled = self
            .core
            .disable_user(&r.actor, &r.id)
            .await
            .map_err(status)?;
        Ok(Response::new(user(disabled)))
    }
}

#[tonic::async_trait]
impl Authz for CoreServices {
    async fn list_roles(&self, _req: Request<pb::ListRolesRequest>) -> Reply<pb::RoleList> {
        let roles = self.core.roles().await.map_err(status)?;
        Ok(Response::new(pb::RoleList {
            roles: roles.into_iter().map(role).collect(),
        }))
    }

    async fn create_role(&self, req: Request<pb::CreateRoleRequest>) -> Reply<pb::Role> {
        let r = req.into_inner();
        let created = self
            .core
            .create_role(&r.actor, &r.name, &r.description, &r.permissions)
            .await
            .map_err(status)?;
        Ok(Response::new(role(created)))
    }

    async fn update_role(&self, req: Request<pb::UpdateRoleRequest>) -> Reply<pb::Role> {
        let r = req.into_inner();
        let updated = self
            .core
            .set_role_permissions(&r.actor, &r.name, &r.permissions)
            .await
            .map_err(status)?;
        Ok(Response::new(role(updated)))
    }

    async fn delete_role(
        &self,
        req: Request<pb::DeleteRoleRequest>,
    ) -> Reply<pb::DeleteRoleResponse> {
        let r = req.into_inner();
        self.core
            .delete_role(&r.actor, &r.name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteRoleResponse {}))
    }

    async fn assign_role(&self, req: Request<pb::RoleAssignment>) -> Reply<pb::RoleAssignment> {
        let r = req.into_inner();
        self.core
            .assign_role(&r.actor, &r.user_id, &r.role)
            .await
            .map_err(status)?;
        Ok(Response::new(r))
    }

    async fn unassign_role(&self, req: Request<pb::RoleAssignment>) -> Reply<pb::RoleAssignment> {
        let r = req.into_inner();
        self.core
            .unassign_role(&r.actor, &r.user_id, &r.role)
            .await
            .map_err(status)?;
        Ok(Response::new(r))
    }

    async fn check(&self, req: Request<pb::CheckRequest>) -> Reply<pb::CheckResponse> {
        let r = req.into_inner();
        let allowed = self
            .core
            .check(&r.user_id, &r.permission)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CheckResponse { allowed }))
    }

    async fn user_permissions(
        &self,
        req: Request<pb::UserPermissionsRequest>,
    ) -> Reply<pb::PermissionList> {
        let grants = self
            .core
            .grants(&req.into_inner().user_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::PermissionList {
            permissions: grants.permissions.clone(),
        }))
    }

    async fn register_permissions(
        &self,
        req: Request<pb::RegisterPermissionsRequest>,
    ) -> Reply<pb::RegisterPermissionsResponse> {
        let r = req.into_inner();
        let name_ok = r
            .module
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase())
            && r.module
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !name_ok || r.module == "core" {
            return Err(Status::invalid_argument(format!(
                "`{}` is not a module name (a lower-case letter, then a-z, 0-9 or _; not `core`)",
                r.module
            )));
        }
        if let Some(foreign) = r
            .permissions
            .iter()
            .find(|p| !p.starts_with(&format!("{}.", r.module)))
        {
            return Err(Status::invalid_argument(format!(
                "permission `{foreign}` is outside module `{}`'s namespace",
                r.module
            )));
        }
        self.core
            .permissions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .register(&r.module, r.permissions)
            .map_err(|e| Status::already_exists(e.to_string()))?;
        Ok(Response::new(pb::RegisterPermissionsResponse {}))
    }

    async fn user_grants(&self, req: Request<pb::UserGrantsRequest>) -> Reply<pb::Grants> {
        let grants = self
            .core
            .grants(&req.into_inner().user_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::Grants {
            email: grants.email.clone(),
            disabled: grants.disabled,
            permissions: grants.permissions.clone(),
        }))
    }

    type WatchStream = tokio_stream::wrappers::ReceiverStream<Result<pb::Change, Status>>;

    async fn watch(&self, _req: Request<pb::WatchRequest>) -> Reply<Self::WatchStream> {
        use crate::core::Change;
        use pb::change::Event;
        let mut changes = self.local()?.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let message = |event| Ok(pb::Change { event: Some(event) });
        tokio::spawn(async move {
            if tx
                .send(message(Event::Resync(pb::Resync {})))
                .await
                .is_err()
            {
                return;
            }
            let mut beat = tokio::time::interval(HEARTBEAT);
            beat.tick().await;
            loop {
                let received = tokio::select! {
                    r = changes.recv() => r,
                    _ = beat.tick() => {
                        if tx.send(message(Event::Heartbeat(pb::Heartbeat {}))).await.is_err() {
                            return;
                        }
                        continue;
                    }
                };
                let event = match received {
                    Ok(Change::Grants(user)) => Event::GrantsChanged(pb::GrantsChanged {
                        user_id: user.unwrap_or_default(),
                    }),
                    Ok(Change::Revoked { jti, expires_at }) => {
                        Event::TokenRevoked(pb::TokenRevoked {
                            token_id: jti,
                            expires_at,
                        })
                    }
                    Ok(Change::Keys) => Event::KeysChanged(pb::KeysChanged {}),
                    // Fell behind: the host must start over.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        Event::Resync(pb::Resync {})
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                if tx.send(message(event)).await.is_err() {
                    return; // the host went away
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn declared_permissions(
        &self,
        _req: Request<pb::DeclaredPermissionsRequest>,
    ) -> Reply<pb::DeclaredPermissions> {
        let by_module = self
            .core
            .permissions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_module()
            .into_iter()
            .map(|(module, permissions)| (module, pb::PermissionList { permissions }))
            .collect();
        Ok(Response::new(pb::DeclaredPermissions { by_module }))
    }
}

#[tonic::async_trait]
impl Audit for CoreServices {
    async fn record(&self, req: Request<pb::RecordRequest>) -> Reply<pb::RecordResponse> {
        let records = req.into_inner().records;
        let count = u32::try_from(records.len()).unwrap_or(u32::MAX);
        let entries = records
            .into_iter()
            .map(|r| {
                let module = if r.module.is_empty() {
                    "core"
                } else {
                    &r.module
                };
                let outcome = if r.outcome.is_empty() {
                    "success"
                } else {
                    &r.outcome
                };
                let mut entry = crate::core::audit::Audit::new(&r.actor, &r.action, &r.target)
                    .module(module)
                    .outcome(outcome)
                    .detail(&r.detail);
                entry.time = (!r.time.is_empty()).then(|| r.time.clone());
                entry.record_id = (!r.record_id.is_empty()).then(|| r.record_id.clone());
                entry
            })
            .collect();
        let Some(local) = self.core.local() else {
            return Err(Status::failed_precondition(
                "this process forwards to another core; it does not store audit records",
            ));
        };
        local.record_all(entries).await.map_err(status)?;
        Ok(Response::new(pb::RecordResponse { recorded: count }))
    }

    async fn query(&self, req: Request<pb::AuditQuery>) -> Reply<pb::AuditEntries> {
        let q = req.into_inner();
        let filter = AuditFilter {
            actor: q.actor,
            module: q.module,
            action: q.action,
            outcome: q.outcome,
            since: q.since,
            until: q.until,
            before: q.before,
            limit: q.limit,
        };
        let entries = self.core.audit_query(&filter).await.map_err(status)?;
        Ok(Response::new(pb::AuditEntries {
            entries: entries
                .into_iter()
                .map(|e| pb::AuditEntry {
                    id: e.id,
                    time: e.time,
                    actor: e.actor,
                    module: e.module,
                    action: e.action,
                    target: e.target,
                    outcome: e.outcome,
                    detail: e.detail,
                })
                .collect(),
        }))
    }
}

/// Which services a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    Auth,
    Identity,
    Authz,
    Audit,
    /// All four on one address (`--grpc-listen`).
    All,
}

impl Served {
    /// The gRPC service names this listener answers for (health checks use them).
    pub fn names(self) -> &'static [&'static str] {
        match self {
            Served::Auth => &["modhost.core.v1.Auth"],
            Served::Identity => &["modhost.core.v1.Identity"],
            Served::Authz => &["modhost.core.v1.Authz"],
            Served::Audit => &["modhost.core.v1.Audit"],
            Served::All => &[
                "modhost.core.v1.Auth",
                "modhost.core.v1.Identity",
                "modhost.core.v1.Authz",
                "modhost.core.v1.Audit",
            ],
        }
    }
}

/// Why the core services could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "cannot listen on {addr} for the {what} service: {source}; is another process using it?"
    )]
    Listen {
        addr: SocketAddr,
        what: String,
        source: std::io::Error,
    },
    #[error("the gRPC server on {addr} failed: {source}")]
    Server {
        addr: SocketAddr,
        source: tonic::transport::Error,
    },
    #[error("cannot build the reflection service: {0}")]
    Reflection(String),
    #[error("TLS: {0}")]
    Tls(String),
}

/// TLS for the listeners: the core's certificate and key, and optionally the CA whose
/// client certificates it requires (mutual TLS). PEM text.
#[derive(Clone)]
pub struct ServerTls {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub client_ca: Option<Vec<u8>>,
}

/// Binds every listener (so a taken port fails before anything serves), logs each
/// address, then serves until `shutdown` resolves.
pub async fn serve(
    services: CoreServices,
    listeners: Vec<(Served, SocketAddr)>,
    tls: Option<ServerTls>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let mut bound = Vec::new();
    for (served, addr) in listeners {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Listen {
                addr,
                what: format!("{served:?}"),
                source,
            })?;
        let local = listener.local_addr().unwrap_or(addr);
        if !local.ip().is_loopback() && tls.as_ref().is_none_or(|t| t.client_ca.is_none()) {
            tracing::warn!(%local, "the core services trust every caller: without --tls-client-ca (mutual TLS) anyone who reaches {local} can act as an operator; keep it on a network only hosts reach");
        }
        tracing::info!(
            service = ?served,
            %local,
            tls = tls.is_some(),
            mutual_tls = tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
            "core gRPC service listening on {local}"
        );
        bound.push((served, local, listener));
    }
    let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut tasks = tokio::task::JoinSet::new();
    for (served, local, listener) in bound {
        let router = router(&services, served, tls.as_ref()).await?;
        let mut stopped = stop.subscribe();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tasks.spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stopped.recv().await;
                })
                .await
                .map_err(|source| ServeError::Server {
                    addr: local,
                    source,
                })
        });
    }
    tokio::select! {
        () = shutdown => {
            tracing::info!("core services stopping");
            let _ = stop.send(());
        }
        Some(Ok(Err(e))) = tasks.join_next() => {
            let _ = stop.send(());
            return Err(e);
        }
    }
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(e)) = done {
            return Err(e);
        }
    }
    Ok(())
}

/// The services of one listener, with health and reflection.
async fn router(
    services: &CoreServices,
    served: Served,
    tls: Option<&ServerTls>,
) -> Result<tonic::transport::server::Router, ServeError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in served.names() {
        reporter
            .set_service_status(*name, tonic_health::ServingStatus::Serving)
            .await;
    }
    // Reflection lists what this listener serves: its services, health and itself.
    let mut reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::wire::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .with_service_name("grpc.health.v1.Health")
        .with_service_name("grpc.reflection.v1.ServerReflection");
    for name in served.names() {
        reflection = reflection.with_service_name(*name);
    }
    let reflection = reflection
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let mut server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(5)));
    if let Some(tls) = tls {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert, &tls.key));
        if let Some(ca) = &tls.client_ca {
            config = config.client_ca_root(Certificate::from_pem(ca));
        }
        server = server
            .tls_config(config)
            .map_err(|e| ServeError::Tls(e.to_string()))?;
    }
    let router = server.add_service(health).add_service(reflection);
    let s = services.clone();
    Ok(match served {
        Served::Auth => router.add_service(AuthServer::new(s)),
        Served::Identity => router.add_service(IdentityServer::new(s)),
        Served::Authz => router.add_service(AuthzServer::new(s)),
        Served::Audit => router.add_service(AuditServer::new(s)),
        Served::All => router
            .add_service(AuthServer::new(s.clone()))
            .add_service(IdentityServer::new(s.clone()))
            .add_service(AuthzServer::new(s.clone()))
            .add_service(AuditServer::new(s)),
    })
}
