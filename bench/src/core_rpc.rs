//! The core services in-process vs over gRPC on loopback (`harness core`): a permission
//! check and a token check, each timed one call at a time (p50, p99), and logins per
//! second through `modhost core` (Argon2 bound).
//!
//! The embedded core runs in this process on a scratch SQLite area; `modhost core` runs as
//! a child process on another one, reached through the generated gRPC clients. Every loop
//! is bounded and targets 127.0.0.1 only.

use crate::percentile;
use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use modhost::wire::core_v1 as pb;
use pb::{auth_client::AuthClient, authz_client::AuthzClient, identity_client::IdentityClient};

const PASSWORD: &str = "bench password";

/// (p50, p99) in microseconds of `n` sequential runs of `call`.
async fn time<F, Fut>(n: usize, mut call: F) -> (f64, f64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut micros = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        call().await;
        micros.push(start.elapsed().as_secs_f64() * 1e6);
    }
    micros.sort_by(|a, b| a.total_cmp(b));
    (percentile(&micros, 0.5), percentile(&micros, 0.99))
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `modhost core` on a free port; returns it and its address.
fn start_core(bin: &Path, data: &Path) -> (Child, SocketAddr) {
    let mut process = Command::new(bin)
        .args([
            "--log-format",
            "json",
            "core",
            "--grpc-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data)
        .env("RUST_LOG", "warn,modhost::core::grpc_server=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start modhost core");
    let stdout = process.stdout.take().expect("stdout");
    let child = Child(process);
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if let Some(local) = v["local"].as_str() {
            return (child, local.parse().expect("address"));
        }
    }
    panic!("modhost core exited before it listened");
}

/// Runs the comparison and prints markdown.
pub fn run(modhost: &Path, n: usize, login_seconds: u64) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let scratch = std::env::temp_dir().join(format!("modhost-core-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&scratch);

        // In-process: the embedded core.
        let config = modhost::config::HostConfig {
            data_dir: scratch.join("embedded"),
            ..Default::default()
        };
        let core = modhost::app::open_core(&config).await.expect("embedded core");
        core.register_permissions("blog", vec!["blog.post.read".into()])
            .expect("permissions");
        let user = core
            .create_user("bench", "bench@example.com", PASSWORD, "")
            .await
            .expect("user");
        core.create_role("bench", "reader", "", &["blog.post.read".into()])
            .await
            .expect("role");
        core.assign_role("bench", &user.id, "reader").await.expect("assign");
        let pair = core.login("bench@example.com", PASSWORD).await.expect("login");
        let local_check = time(n, || async {
            assert!(core.check(&user.id, "blog.post.read").await.expect("check"));
        })
        .await;
        let local_auth = time(n, || async {
            core.authenticate(&pair.access_token).await.expect("authenticate");
        })
        .await;

        // Over gRPC: modhost core on loopback.
        let (_child, addr) = start_core(modhost, &scratch.join("remote"));
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let (mut auth, mut identity, mut authz) = (
            AuthClient::new(channel.clone()),
            IdentityClient::new(channel.clone()),
            AuthzClient::new(channel.clone()),
        );
        authz
            .register_permissions(pb::RegisterPermissionsRequest {
                module: "blog".into(),
                permissions: vec!["blog.post.read".into()],
            })
            .await
            .expect("permissions");
        let remote_user = identity
            .create_user(pb::CreateUserRequest {
                actor: "bench".into(),
                email: "bench@example.com".into(),
                password: PASSWORD.into(),
                display_name: String::new(),
            })
            .await
            .expect("user")
            .into_inner();
        authz
            .create_role(pb::CreateRoleRequest {
                actor: "bench".into(),
                name: "reader".into(),
                description: String::new(),
                permissions: vec!["blog.post.read".into()],
            })
            .await
            .expect("role");
        authz
            .assign_role(pb::RoleAssignment {
                actor: "bench".into(),
                user_id: remote_user.id.clone(),
                role: "reader".into(),
            })
            .await
            .expect("assign");
        let token = auth
            .login(pb::LoginRequest {
                email: "bench@example.com".into(),
                password: PASSWORD.into(),
            })
            .await
            .expect("login")
            .into_inner()
            .access_token;
        let remote_check = time(n, || {
            let mut authz = authz.clone();
            let user_id = remote_user.id.clone();
            async move {
                let allowed = authz
                    .check(pb::CheckRequest {
                        user_id,
                        permission: "blog.post.read".into(),
                    })
                    .await
                    .expect("check")
                    .into_inner()
                    .allowed;
                assert!(allowed);
            }
        })
        .await;
        let remote_auth = time(n, || {
            let mut auth = auth.clone();
            let access_token = token.clone();
            async move {
                auth.authenticate(pb::AuthenticateRequest { access_token })
                    .await
                    .expect("authenticate");
            }
        })
        .await;

        // A host on remote core services: tokens checked here with the core's public
        // keys, grants kept current by the change stream.
        let settings = modhost::core::remote::RemoteSettings {
            url: Some(format!("http://{addr}")),
            ..Default::default()
        };
        let remote_core = modhost::core::Core::remote(&settings, &scratch.join("host"))
            .expect("remote core");
        remote_core.authenticate(&token).await.expect("first check syncs");
        let host_auth = time(n, || async {
            remote_core.authenticate(&token).await.expect("authenticate");
        })
        .await;

        // The signature check alone, without the verified-token cache.
        let key = modhost::core::tokens::SigningKey::generate();
        let verifier = modhost::core::tokens::Verifier::new(&[key.public_key().clone()]);
        let claims = modhost::core::tokens::Claims {
            iss: "modhost".into(),
            sub: "u1".into(),
            email: "a@b.c".into(),
            iat: 0,
            exp: modhost::core::now_secs() + 3600,
            jti: "j1".into(),
            typ: "access".into(),
        };
        let signed = key.sign(&claims);
        let raw_verify = time(n, || async {
            verifier
                .verify(&signed, modhost::core::now_secs())
                .expect("verify");
        })
        .await;

        // Logins per second through the core: 4 clients at once.
        let until = Instant::now() + Duration::from_secs(login_seconds);
        let mut clients = Vec::new();
        for _ in 0..4 {
            let mut auth = auth.clone();
            clients.push(tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < until {
                    auth.login(pb::LoginRequest {
                        email: "bench@example.com".into(),
                        password: PASSWORD.into(),
                    })
                    .await
                    .expect("login");
                    done += 1;
                }
                done
            }));
        }
        let mut logins = 0;
        for c in clients {
            logins += c.await.expect("client");
        }
        let _ = std::fs::remove_dir_all(&scratch);

        println!("| Call ({n} sequential calls) | in-process p50 | p99 | over gRPC (loopback) p50 | p99 |");
        println!("|---|---|---|---|---|");
        println!(
            "| permission check (`Authz.Check`, cached grants) | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs |",
            local_check.0, local_check.1, remote_check.0, remote_check.1
        );
        println!(
            "| token check (`Auth.Authenticate`: signature, revocation, grants) | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs |",
            local_auth.0, local_auth.1, remote_auth.0, remote_auth.1
        );
        println!(
            "| token check on a host with `core_url` (local Ed25519 check, kept grants) | | | {:.1} µs | {:.1} µs |",
            host_auth.0, host_auth.1
        );
        println!(
            "| Ed25519 JWT signature and expiry check alone (jsonwebtoken, no cache) | {:.1} µs | {:.1} µs | | |",
            raw_verify.0, raw_verify.1
        );
        println!();
        println!(
            "Logins through `modhost core` (4 clients, {login_seconds} s, Argon2id): **{:.1} per second**.",
            logins as f64 / login_seconds as f64
        );
    });
}
