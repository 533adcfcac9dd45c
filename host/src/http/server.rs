//! The HTTP server: accepting connections, dispatching requests to module handlers, and
//! graceful shutdown.
//!
//! A request to `/api/v1/<module>/...` is matched in the route table, its body read up
//! to the configured limit, and handed to the module's handler; panics become 500 and
//! slow handlers 504, and the host keeps serving. Operations endpoints are `admin.rs`.

use std::{
    convert::Infallible, future::Future, net::SocketAddr, panic::AssertUnwindSafe, sync::Arc,
    time::Instant,
};

use abi_stable::std_types::RString;
use abi_stable::std_types::{RVec, Tuple2};
use futures_util::FutureExt as _;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    body::{Bytes, Incoming},
    header::{HeaderName, HeaderValue},
    service::service_fn,
    Request, Response, StatusCode,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use modhost_plugin_api::ffi::{FfiRequest, FfiUser};
use tokio::net::TcpListener;

use crate::core::{
    self,
    api::{CORE_NAMESPACES, ENDPOINTS},
};
use crate::http::admin;
use crate::http::enforce::{self, authorize, authorize_module, Target};
use crate::http::openapi;
use crate::http::respond::{json_error, json_response, method_not_allowed, Body};
use crate::routes::table::{match_pattern, Lookup, Route};
use crate::runtime::lifecycle::Host;

/// Serves `host` on `listener` until `shutdown` resolves, then stops accepting, drains
/// in-flight requests up to the configured deadline and stops the modules.
pub async fn serve(
    host: Arc<Host>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(host.config.header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let host = host.clone();
                let service = service_fn(move |req| handle(host.clone(), req, peer));
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    host.begin_shutdown();
    let deadline = host.config.shutdown_timeout;
    tracing::info!(
        ?deadline,
        "shutting down: no new connections; draining in-flight requests"
    );
    if tokio::time::timeout(deadline, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?deadline,
            "drain deadline passed; closing remaining connections"
        );
    }
    let stopped = host.stop_all().await;
    tracing::info!(?stopped, "all modules stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received SIGINT"),
        () = term => tracing::info!("received SIGTERM"),
    }
}

async fn handle(
    host: Arc<Host>,
    req: Request<Incoming>,
    _peer: SocketAddr,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path();
    if let Some(rest) = path.strip_prefix("/api/v1/") {
        let namespace = rest.split('/').next().unwrap_or_default();
        if CORE_NAMESPACES.contains(&namespace) {
            return Ok(dispatch_core(&host, req).await);
        }
        return Ok(dispatch(&host, req).await);
    }
    if path == "/openapi.json" {
        return Ok(json_response(
            StatusCode::OK,
            &openapi::document(&host.routes()),
        ));
    }
    Ok(admin::handle(&host, req).await)
}

/// Serves the core API: match the endpoint, enforce its access rule, run it.
async fn dispatch_core(host: &Host, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let mut allowed = Vec::new();
    let mut found = None;
    for ep in ENDPOINTS {
        if let Some(params) = match_pattern(ep.path, &path) {
            if ep.method == method {
                found = Some((ep, params));
                break;
            }
            allowed.push(ep.method);
        }
    }
    let Some((ep, params)) = found else {
        if allowed.is_empty() {
            return json_error(StatusCode::NOT_FOUND, "no such route");
        }
        return method_not_allowed(&method, &allowed);
    };
    let target = Target {
        module: "core",
        method: &method,
        path: &path,
    };
    let user = match authorize(&host.core, ep.access, req.headers(), target).await {
        Ok(user) => user,
        Err(resp) => return resp,
    };
    let bearer = enforce::bearer(req.headers()).map(str::to_string);
    let (parts, body) = match read_body(host, req).await {
        Ok(read) => read,
        Err(resp) => return resp,
    };
    let query = modhost_plugin_api::Request {
        query: parts.uri.query().unwrap_or("").to_string(),
        ..Default::default()
    }
    .query_pairs();
    let (status, value) = core::api::run(
        &host.core,
        ep.op,
        &params,
        &query,
        &body,
        user.as_ref(),
        bearer.as_deref(),
    )
    .await;
    json_response(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &value,
    )
}

async fn dispatch(host: &Host, req: Request<Incoming>) -> Response<Body> {
    let table = host.routes();
    let method = req.method().as_str().to_string();
    let (route, params) = match table.lookup(&method, req.uri().path()) {
        Lookup::Found { route, params } => (route.clone(), params),
        Lookup::MethodNotAllowed { allowed } => return method_not_allowed(&method, &allowed),
        Lookup::NotFound => return json_error(StatusCode::NOT_FOUND, "no such route"),
    };
    let started = Instant::now();
    route
        .metrics
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let response = {
        let _inflight = InFlight::enter(&route);
        call_route(host, &route, req, params).await
    };
    if response.status().is_server_error() {
        route
            .metrics
            .errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    route.latency.observe(started.elapsed());
    response
}

/// Counts a request as running in a route until dropped (also on cancellation).
struct InFlight<'a>(&'a Route);

impl<'a> InFlight<'a> {
    fn enter(route: &'a Route) -> Self {
        route
            .inflight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(route)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .inflight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Reads the body up to `limit` bytes; 413 above it.
async fn read_body(
    host: &Host,
    req: Request<Incoming>,
) -> Result<(hyper::http::request::Parts, Bytes), Response<Body>> {
    // A client that sends its body too slowly is cut: 408.
    let deadline = host.config.request_timeout;
    match tokio::time::timeout(deadline, read_body_limited(req, host.config.max_body_bytes)).await {
        Ok(read) => read,
        Err(_) => Err(json_error(
            StatusCode::REQUEST_TIMEOUT,
            &format!("the request body did not arrive within {deadline:?}"),
        )),
    }
}

async fn read_body_limited(
    req: Request<Incoming>,
    limit: u64,
) -> Result<(hyper::http::request::Parts, Bytes), Response<Body>> {
    let too_large = || {
        json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body is over the {limit}-byte limit"),
        )
    };
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let (parts, body) = req.into_parts();
    match Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX))
        .collect()
        .await
    {
        Ok(collected) => Ok((parts, collected.to_bytes())),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Err(e) => Err(json_error(
            StatusCode::BAD_REQUEST,
            &format!("cannot read the request body: {e}"),
        )),
    }
}

/// Headers that describe the connection or the message framing. The server sets them
/// from the body it sends; one from a module could desynchronise the client (a wrong
/// `content-length`, `transfer-encoding` on a fixed body) or close the connection.
const CONNECTION_HEADERS: [HeaderName; 8] = [
    hyper::header::CONTENT_LENGTH,
    hyper::header::TRANSFER_ENCODING,
    hyper::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    hyper::header::TE,
    hyper::header::TRAILER,
    hyper::header::UPGRADE,
];

async fn call_route(
    host: &Host,
    route: &Route,
    req: Request<Incoming>,
    params: Vec<(String, String)>,
) -> Response<Body> {
    let target = Target {
        module: &route.module,
        method: req.method().as_str(),
        path: req.uri().path(),
    };
    let user = match authorize_module(
        &host.core,
        &route.info.permission,
        route.public,
        req.headers(),
        target,
    )
    .await
    {
        Ok(user) => user,
        Err(resp) => return resp,
    };
    let (parts, body) = match read_body(host, req).await {
        Ok(read) => read,
        Err(resp) => return resp,
    };
    let request = FfiRequest {
        method: parts.method.as_str().into(),
        path: parts.uri.path().into(),
        params: params
            .into_iter()
            .map(|(k, v)| Tuple2(k.into(), v.into()))
            .collect(),
        query: parts.uri.query().unwrap_or("").into(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                Tuple2(
                    k.as_str().into(),
                    String::from_utf8_lossy(v.as_bytes()).as_ref().into(),
                )
            })
            .collect(),
        body: RVec::from(body.to_vec()),
        user: user
            .map(|u| FfiUser {
                id: u.id.into(),
                email: u.email.into(),
                permissions: u.permissions.into_iter().map(RString::from).collect(),
            })
            .into(),
    };
    let timeout = host.config.request_timeout;
    let mut call = Box::pin(AssertUnwindSafe(route.handler.call(request)).catch_unwind());
    // Most handlers answer on their first poll: only arm the timeout timer (a shared
    // timer-wheel entry per request) for those that do not.
    let outcome = match (&mut call).now_or_never() {
        Some(done) => Ok(done),
        None => tokio::time::timeout(timeout, call).await,
    };
    let response = match outcome {
        Ok(Ok(resp)) => resp,
        Ok(Err(_)) => {
            route
                .metrics
                .panics
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(module = %route.module, route = %route.info.path, "handler panicked; answered 500");
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the module's handler failed",
            );
        }
        Err(_) => {
            route
                .metrics
                .timeouts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(module = %route.module, route = %route.info.path, ?timeout, "handler timed out; answered 504");
            return json_error(
                StatusCode::GATEWAY_TIMEOUT,
                "the module's handler did not answer in time",
            );
        }
    };
    let limit = host.config.max_response_bytes;
    if response.body.len() as u64 > limit {
        tracing::error!(module = %route.module, route = %route.info.path, bytes = response.body.len(), limit, "response over max_response_bytes; answered 500");
        return json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the module's response is too large",
        );
    }
    let Ok(status) = StatusCode::from_u16(response.status) else {
        tracing::error!(module = %route.module, status = response.status, "handler returned an invalid status");
        return json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the module returned an invalid status",
        );
    };
    let mut resp = Response::new(Full::new(Bytes::from(response.body.into_vec())));
    *resp.status_mut() = status;
    for Tuple2(name, value) in response.headers {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value.as_str()),
        ) {
            (Ok(n), _) if CONNECTION_HEADERS.contains(&n) => {
                tracing::warn!(module = %route.module, header = %n, "dropped a response header that only the server may set")
            }
            (Ok(n), Ok(v)) => {
                resp.headers_mut().append(n, v);
            }
            _ => {
                tracing::warn!(module = %route.module, header = %name, "dropped an invalid response header")
            }
        }
    }
    resp
}
