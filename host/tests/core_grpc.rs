//! `modhost core` serves the core services over gRPC: a real process on loopback, called
//! by a tonic client as a module host would, on embedded SQLite and on PostgreSQL. Every
//! listener answers the standard health check and server reflection (what `grpcurl`
//! uses); each service's own port serves that service only.

mod common;

use std::{net::SocketAddr, process::Command, time::Duration};

use common::core::CoreProcess;
use modhost::wire::core_v1 as pb;
use pb::{
    audit_client::AuditClient, auth_client::AuthClient, authz_client::AuthzClient,
    identity_client::IdentityClient,
};
use tonic::{transport::Channel, Code};

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connect to modhost core")
}

/// The services' whole surface, as a module host uses it.
async fn exercise(core: &CoreProcess) {
    let mut auth = AuthClient::new(channel(core.addr("Auth")).await);
    let mut identity = IdentityClient::new(channel(core.addr("Identity")).await);
    let mut authz = AuthzClient::new(channel(core.addr("Authz")).await);
    let mut audit = AuditClient::new(channel(core.addr("Audit")).await);

    // A host declares its modules' permissions, then roles can grant them.
    authz
        .register_permissions(pb::RegisterPermissionsRequest {
            module: "blog".into(),
            permissions: vec!["blog.post.read".into(), "blog.post.create".into()],
        })
        .await
        .expect("register blog's permissions");
    let foreign = authz
        .register_permissions(pb::RegisterPermissionsRequest {
            module: "evil".into(),
            permissions: vec!["blog.post.read".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), Code::InvalidArgument, "{foreign}");
    // A module name is a module name: not a prefix of another's namespace, not `core`.
    for module in ["blog.post", "core"] {
        let refused = authz
            .register_permissions(pb::RegisterPermissionsRequest {
                module: module.into(),
                permissions: vec![format!("{module}.x.read")],
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{module}: {refused}");
    }
    let declared = authz
        .declared_permissions(pb::DeclaredPermissionsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        declared.by_module["blog"].permissions,
        ["blog.post.create", "blog.post.read"]
    );

    // Users.
    let bad = identity
        .create_user(pb::CreateUserRequest {
            actor: "console".into(),
            email: "not-an-email".into(),
            password: "correct horse".into(),
            display_name: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad}");
    let ada = identity
        .create_user(pb::CreateUserRequest {
            actor: "console".into(),
            email: "ada@example.com".into(),
            password: "correct horse".into(),
            display_name: "Ada".into(),
        })
        .await
        .expect("create ada")
        .into_inner();
    let again = identity
        .create_user(pb::CreateUserRequest {
            actor: "console".into(),
            email: "ada@example.com".into(),
            password: "correct horse".into(),
            display_name: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again}");
    let found = identity
        .find_user_by_email(pb::FindUserByEmailRequest {
            email: "ADA@example.com".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.id, ada.id);
    let listed = identity
        .list_users(pb::ListUsersRequest {
            limit: 10,
            after: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.users.len(), 1);

    // Roles and checks.
    authz
        .create_role(pb::CreateRoleRequest {
            actor: "console".into(),
            name: "reader".into(),
            description: "reads posts".into(),
            permissions: vec!["blog.post.read".into()],
        })
        .await
        .expect("create role");
    authz
        .assign_role(pb::RoleAssignment {
            actor: "console".into(),
            user_id: ada.id.clone(),
            role: "reader".into(),
        })
        .await
        .expect("assign");
    let check = |permission: &str| pb::CheckRequest {
        user_id: ada.id.clone(),
        permission: permission.into(),
    };
    assert!(
        authz
            .check(check("blog.post.read"))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    assert!(
        !authz
            .check(check("blog.post.create"))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );

    // Tokens: login, authenticate, refresh, revoke.
    let wrong = auth
        .login(pb::LoginRequest {
            email: "ada@example.com".into(),
            password: "wrong password".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    let pair = auth
        .login(pb::LoginRequest {
            email: "ada@example.com".into(),
            password: "correct horse".into(),
        })
        .await
        .expect("login")
        .into_inner();
    let principal = auth
        .authenticate(pb::AuthenticateRequest {
            access_token: pair.access_token.clone(),
        })
        .await
        .expect("authenticate")
        .into_inner();
    assert_eq!(principal.user_id, ada.id);
    assert_eq!(principal.permissions, ["blog.post.read"]);
    let refreshed = auth
        .refresh(pb::RefreshRequest {
            refresh_token: pair.refresh_token.clone(),
        })
        .await
        .expect("refresh")
        .into_inner();
    let reused = auth
        .refresh(pb::RefreshRequest {
            refresh_token: pair.refresh_token,
        })
        .await
        .unwrap_err();
    assert_eq!(
        reused.code(),
        Code::Unauthenticated,
        "a refresh token works once"
    );
    auth.revoke(pb::RevokeRequest {
        actor_token: String::new(),
        token: refreshed.access_token.clone(),
    })
    .await
    .expect("revoke");
    let revoked = auth
        .authenticate(pb::AuthenticateRequest {
            access_token: refreshed.access_token,
        })
        .await
        .unwrap_err();
    assert_eq!(revoked.code(), Code::Unauthenticated);
    // One user may not revoke another's token.
    identity
        .create_user(pb::CreateUserRequest {
            actor: "console".into(),
            email: "eve@example.com".into(),
            password: "correct horse".into(),
            display_name: String::new(),
        })
        .await
        .expect("create eve");
    let login = |email: &str| pb::LoginRequest {
        email: email.into(),
        password: "correct horse".into(),
    };
    let eve = auth
        .login(login("eve@example.com"))
        .await
        .unwrap()
        .into_inner();
    let ada_now = auth
        .login(login("ada@example.com"))
        .await
        .unwrap()
        .into_inner();
    let denied = auth
        .revoke(pb::RevokeRequest {
            actor_token: eve.access_token,
            token: ada_now.access_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied}");
    auth.authenticate(pb::AuthenticateRequest {
        access_token: ada_now.access_token,
    })
    .await
    .expect("ada's token still works");

    // The audit log: a host's batch, in order, and what the core recorded itself.
    let records: Vec<pb::AuditRecord> = (0..3)
        .map(|i| pb::AuditRecord {
            actor: ada.id.clone(),
            action: "blog.post.create".into(),
            target: format!("post {i}"),
            module: "blog".into(),
            outcome: "success".into(),
            detail: String::new(),
            time: String::new(),
            record_id: format!("rec-{i}"),
        })
        .collect();
    let recorded = audit
        .record(pb::RecordRequest {
            records: records.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(recorded.recorded, 3);
    // A batch sent again (its answer was lost) is stored once.
    audit
        .record(pb::RecordRequest { records })
        .await
        .expect("the resent batch is accepted");
    let posts = audit
        .query(pb::AuditQuery {
            module: Some("blog".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let targets: Vec<&str> = posts.entries.iter().map(|e| e.target.as_str()).collect();
    assert_eq!(targets, ["post 2", "post 1", "post 0"], "newest first");
    let logins = audit
        .query(pb::AuditQuery {
            action: Some("auth.login".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let outcomes: Vec<&str> = logins.entries.iter().map(|e| e.outcome.as_str()).collect();
    assert_eq!(
        outcomes,
        ["success", "success", "success", "failure"],
        "ada's first login (refused, then accepted), eve's and ada's again: {logins:?}"
    );
    let limit = audit
        .query(pb::AuditQuery {
            limit: Some(5000),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(limit.code(), Code::InvalidArgument);
}

async fn health(addr: SocketAddr, service: &str) -> Result<i32, tonic::Status> {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let mut client = HealthClient::new(channel(addr).await);
    client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
}

/// The service names server reflection lists (`grpcurl list`).
async fn reflected(addr: SocketAddr) -> Vec<String> {
    use tokio_stream::StreamExt as _;
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut client = ServerReflectionClient::new(channel(addr).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let Some(Ok(answer)) = stream.next().await else {
        panic!("no reflection answer");
    };
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer: {other:?}"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_four_services_on_their_own_ports_answer_health_reflection_and_their_calls() {
    let data = tempfile::tempdir().unwrap();
    let any = "127.0.0.1:0";
    let core = CoreProcess::start(
        data.path(),
        &[
            "--auth-listen",
            any,
            "--identity-listen",
            any,
            "--authz-listen",
            any,
            "--audit-listen",
            any,
        ],
        &[],
    );
    runtime().block_on(async {
        for (service, name) in [
            ("Auth", "modhost.core.v1.Auth"),
            ("Identity", "modhost.core.v1.Identity"),
            ("Authz", "modhost.core.v1.Authz"),
            ("Audit", "modhost.core.v1.Audit"),
        ] {
            let addr = core.addr(service);
            assert_eq!(health(addr, name).await.unwrap(), 1, "{service} SERVING");
            assert_eq!(health(addr, "").await.unwrap(), 1, "the server as a whole");
            let mut names = reflected(addr).await;
            names.sort();
            assert_eq!(
                names,
                [
                    "grpc.health.v1.Health",
                    "grpc.reflection.v1.ServerReflection",
                    name
                ],
                "{service} lists what it serves"
            );
        }
        // Each port serves its own service only.
        let mut wrong = AuthClient::new(channel(core.addr("Identity")).await);
        let refused = wrong
            .login(pb::LoginRequest {
                email: "a@b.io".into(),
                password: "x".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unimplemented, "{refused}");
        exercise(&core).await;
    });
}

#[test]
fn one_port_for_all_four_on_postgres() {
    let Some(db) = common::pg::PgTestDb::create() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let core = CoreProcess::start(
        data.path(),
        &["--grpc-listen", "127.0.0.1:0", "--database-url", &db.url],
        &[("MODHOST_POSTGRES_ROLE_PREFIX", &db.prefix)],
    );
    runtime().block_on(async {
        let addr = core.addr("All");
        for name in [
            "modhost.core.v1.Auth",
            "modhost.core.v1.Identity",
            "modhost.core.v1.Authz",
            "modhost.core.v1.Audit",
        ] {
            assert_eq!(health(addr, name).await.unwrap(), 1, "{name} SERVING");
        }
        exercise(&core).await;
    });
}

#[test]
fn a_taken_port_is_refused_naming_the_service_and_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_modhost"))
        .args(["core", "--data-dir"])
        .arg(data.path())
        .args(["--auth-listen", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on {addr} for the Auth service")),
        "{err}"
    );
}

/// The next message of the change stream, within 10 s.
async fn next_change(changes: &mut tonic::Streaming<pb::Change>) -> pb::Change {
    tokio::time::timeout(Duration::from_secs(10), changes.message())
        .await
        .expect("a change within 10 s")
        .expect("the stream")
        .expect("a message")
}

/// The change stream starts with a resync and then carries grant changes and
/// revocations; `modhost core rotate-key` makes a new key that the running core takes
/// within seconds, while tokens signed with the old one keep working.
#[test]
fn changes_stream_and_keys_rotate() {
    use pb::change::Event;
    let data = tempfile::tempdir().unwrap();
    let core = CoreProcess::start(data.path(), &["--grpc-listen", "127.0.0.1:0"], &[]);
    runtime().block_on(async {
        let ch = channel(core.addr("All")).await;
        let (mut auth, mut authz, mut identity) = (
            AuthClient::new(ch.clone()),
            AuthzClient::new(ch.clone()),
            IdentityClient::new(ch.clone()),
        );
        let mut changes = authz
            .watch(pb::WatchRequest {})
            .await
            .expect("watch")
            .into_inner();
        let first = next_change(&mut changes).await;
        assert!(matches!(first.event, Some(Event::Resync(_))), "{first:?}");

        let user = identity
            .create_user(pb::CreateUserRequest {
                actor: "console".into(),
                email: "kid@example.com".into(),
                password: "correct horse".into(),
                display_name: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        authz
            .create_role(pb::CreateRoleRequest {
                actor: "console".into(),
                name: "watchers".into(),
                description: String::new(),
                permissions: vec![],
            })
            .await
            .unwrap();
        let next = next_change(&mut changes).await;
        assert!(
            matches!(next.event, Some(Event::GrantsChanged(_))),
            "{next:?}"
        );

        let keys = auth
            .public_keys(pb::PublicKeysRequest {})
            .await
            .unwrap()
            .into_inner()
            .keys;
        assert_eq!(keys.len(), 1, "{keys:?}");
        let old_kid = keys[0].kid.clone();
        let login = |auth: &mut AuthClient<Channel>| {
            let mut auth = auth.clone();
            async move {
                auth.login(pb::LoginRequest {
                    email: "kid@example.com".into(),
                    password: "correct horse".into(),
                })
                .await
                .unwrap()
                .into_inner()
            }
        };
        let before = login(&mut auth).await;
        // Revoking the refresh token is not news to hosts (they never accept one);
        // revoking an access token is.
        auth.revoke(pb::RevokeRequest {
            actor_token: before.access_token.clone(),
            token: before.refresh_token.clone(),
        })
        .await
        .unwrap();
        let doomed = login(&mut auth).await;
        auth.revoke(pb::RevokeRequest {
            actor_token: doomed.access_token.clone(),
            token: doomed.access_token.clone(),
        })
        .await
        .unwrap();
        let until = std::time::Instant::now() + Duration::from_secs(20);
        let revoked = loop {
            let event = next_change(&mut changes).await.event;
            if let Some(Event::TokenRevoked(t)) = event {
                break t;
            }
            assert!(
                std::time::Instant::now() < until,
                "no TokenRevoked within 20 s; last: {event:?}"
            );
        };
        assert_eq!(revoked.token_id.len(), 32, "{revoked:?}");

        // Rotate the key from another process, as an operator would.
        let out = Command::new(env!("CARGO_BIN_EXE_modhost"))
            .args(["core", "rotate-key", "--data-dir"])
            .arg(data.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let until = std::time::Instant::now() + Duration::from_secs(15);
        let keys = loop {
            let keys = auth
                .public_keys(pb::PublicKeysRequest {})
                .await
                .unwrap()
                .into_inner()
                .keys;
            if keys.len() == 2 {
                break keys;
            }
            assert!(
                std::time::Instant::now() < until,
                "the core did not take the new key: {keys:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let until = std::time::Instant::now() + Duration::from_secs(20);
        let keys_changed = loop {
            let event = next_change(&mut changes).await.event;
            if let Some(Event::KeysChanged(_)) = event {
                break true;
            }
            assert!(
                std::time::Instant::now() < until,
                "no KeysChanged within 20 s; last: {event:?}"
            );
        };
        assert!(keys_changed, "hosts hear of the new key");
        let old = keys
            .iter()
            .find(|k| k.kid == old_kid)
            .expect("the old key is still listed");
        assert!(
            old.valid_until > 0,
            "the old key is retired with a deadline: {old:?}"
        );
        let after = login(&mut auth).await;
        let header = |token: &str| {
            use base64::Engine as _;
            let part = token.split('.').next().unwrap();
            let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap();
            serde_json::from_slice::<serde_json::Value>(&json).unwrap()
        };
        assert_eq!(header(&before.access_token)["kid"], old_kid.as_str());
        assert_ne!(header(&after.access_token)["kid"], old_kid.as_str());
        assert_eq!(header(&after.access_token)["alg"], "EdDSA");
        // A token signed with the old key still works until it expires.
        for token in [before.access_token, after.access_token] {
            let who = auth
                .authenticate(pb::AuthenticateRequest {
                    access_token: token,
                })
                .await
                .expect("authenticate")
                .into_inner();
            assert_eq!(who.user_id, user.id);
        }
    });
}
