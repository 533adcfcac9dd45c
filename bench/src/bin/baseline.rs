//! The static baseline: the `hello` handler compiled into a plain hyper server, with the
//! same token check modhost does on `/private` (Ed25519 signature with the jsonwebtoken
//! crate, expiry, revocation set, permission match), so the comparison isolates the cost
//! of the plugin boundary. It exits cleanly on SIGINT/SIGTERM, so a profiler wrapping it
//! can write its report.
//!
//!   baseline ADDR SIGNING_KEY_HEX

use std::{collections::HashSet, convert::Infallible, sync::Arc};

use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use modhost::core::tokens::{SigningKey, Verifier};

fn reply(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// Checks a bearer token: signature, expiry; returns (subject, token id).
fn verify(key: &Key, token: &str) -> Option<(String, String)> {
    let claims = key.verify(token, modhost::core::now_secs()).ok()?;
    Some((claims.sub, claims.jti))
}

/// Checks tokens signed with the key whose seed is given (Ed25519, with jsonwebtoken:
/// the same check modhost makes).
type Key = Verifier;

fn key_from_hex(hex: &str) -> Result<Key, String> {
    Ok(Verifier::new(&[SigningKey::from_hex(hex)?
        .public_key()
        .clone()]))
}

fn handle(
    key: &Key,
    revoked: &HashSet<String>,
    req: &Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let mut parts = path.trim_start_matches('/').split('/');
    let (Some("api"), Some("v1"), Some("hello"), Some(kind), Some(name), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return reply(
            StatusCode::NOT_FOUND,
            br#"{"error":"no such route"}"#.to_vec(),
        );
    };
    if kind == "private" {
        let token = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let allowed = token
            .and_then(|t| verify(key, t))
            .is_some_and(|(sub, jti)| {
                let permissions: &[&str] = if sub == "console" { &["*"] } else { &[] };
                !revoked.contains(&jti)
                    && permissions
                        .iter()
                        .any(|p| modhost_plugin_api::permission_matches(p, "hello.greeting.read"))
            });
        if !allowed {
            return reply(
                StatusCode::UNAUTHORIZED,
                br#"{"error":"invalid token"}"#.to_vec(),
            );
        }
    } else if kind != "greet" {
        return reply(
            StatusCode::NOT_FOUND,
            br#"{"error":"no such route"}"#.to_vec(),
        );
    }
    reply(StatusCode::OK, modhost_bench::greeting_body("Hello", name))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(hex)) = (args.next(), args.next()) else {
        eprintln!("usage: baseline ADDR SIGNING_KEY_HEX");
        std::process::exit(2);
    };
    let key = Arc::new(key_from_hex(&hex)?);
    let revoked = Arc::new(HashSet::<String>::new());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
        };
        let (key, revoked) = (key.clone(), revoked.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let resp = handle(&key, &revoked, &req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
