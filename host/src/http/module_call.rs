//! Calling a module's route handler across the FFI boundary, and everything around that
//! call: the route's in-flight count (which a reload drains on), its metrics, the
//! handler timeout (504), panics (500), the response size limit and the headers a
//! module may not set.

use std::{panic::AssertUnwindSafe, sync::Arc, time::Instant};

use abi_stable::std_types::{ROption, RSlice, RStr, RString, Tuple2};
use futures_util::FutureExt as _;
use http_body_util::Full;
use hyper::{
    body::Bytes,
    header::{HeaderName, HeaderValue},
    http::request::Parts,
    Response, StatusCode,
};
use modhost_plugin_api::ffi::{
    FfiRequest, FfiRequestView, FfiRequestView_TO, FfiResponse, FfiUser,
};

use crate::config::HostConfig;
use crate::core::AuthUser;
use crate::http::respond::{json_error, Body};
use crate::routes::pattern::Params;
use crate::routes::table::Route;
use crate::services::end_user;

/// A request inside a module route, from routing to the answer: counted in flight (a
/// reload waits for it) and in the route's request count; on [`RouteVisit::finish`] its
/// latency and server errors are recorded.
pub struct RouteVisit {
    route: Arc<Route>,
    started: Instant,
}

impl RouteVisit {
    pub fn enter(route: &Arc<Route>) -> Self {
        use std::sync::atomic::Ordering;
        route.inflight.fetch_add(1, Ordering::SeqCst);
        route.metrics.requests.fetch_add(1, Ordering::Relaxed);
        Self {
            route: route.clone(),
            started: Instant::now(),
        }
    }

    /// Records the answer's status and the latency.
    pub fn finish(self, status: StatusCode) {
        if status.is_server_error() {
            self.route
                .metrics
                .errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.route.latency.observe(self.started.elapsed());
    }
}

impl Drop for RouteVisit {
    fn drop(&mut self) {
        self.route
            .inflight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
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

/// Calls `route`'s handler with the request and answers with what it returned.
pub async fn call(
    config: &HostConfig,
    route: &Route,
    parts: Parts,
    body: Bytes,
    params: Params,
    user: Option<AuthUser>,
) -> Response<Body> {
    let user = user.map(|u| Arc::new(ffi_user(&u)));
    // Service calls the handler makes carry its user to the provider; a request without
    // a token (a public route) carries an anonymous user, so a provider never mistakes
    // it for a call made outside any request.
    let end = user.clone().or_else(|| Some(anonymous()));
    let request = ffi_request(parts, body, params, user);
    let timeout = config.request_timeout;
    let call = end_user::scope(end, route.handler.call(request));
    let mut call = std::pin::pin!(AssertUnwindSafe(call).catch_unwind());
    // Most handlers answer on their first poll: only arm the timeout timer (a shared
    // timer-wheel entry per request) for those that do not.
    let outcome = match call.as_mut().now_or_never() {
        Some(done) => Ok(done),
        None => tokio::time::timeout(timeout, call).await,
    };
    match outcome {
        Ok(Ok(response)) => http_response(config, route, response),
        Ok(Err(_)) => {
            route
                .metrics
                .panics
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(module = %route.module, route = %route.info.path, "handler panicked; answered 500");
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the module's handler failed",
            )
        }
        Err(_) => {
            route
                .metrics
                .timeouts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(module = %route.module, route = %route.info.path, ?timeout, "handler timed out; answered 504");
            json_error(
                StatusCode::GATEWAY_TIMEOUT,
                "the module's handler did not answer in time",
            )
        }
    }
}

/// The request as the module sees it: the host's own copy, lent through accessors.
struct HostRequest {
    parts: Parts,
    body: Bytes,
    params: Params,
    user: Option<Arc<FfiUser>>,
}

impl FfiRequestView for HostRequest {
    fn method(&self) -> RStr<'_> {
        self.parts.method.as_str().into()
    }

    fn path(&self) -> RStr<'_> {
        self.parts.uri.path().into()
    }

    fn query(&self) -> RStr<'_> {
        self.parts.uri.query().unwrap_or("").into()
    }

    fn param(&self, index: usize) -> ROption<Tuple2<RStr<'_>, RStr<'_>>> {
        self.params
            .get(index)
            .map(|(k, v)| Tuple2(k.as_str().into(), v.as_str().into()))
            .into()
    }

    fn header(&self, index: usize) -> ROption<Tuple2<RStr<'_>, RSlice<'_, u8>>> {
        self.parts
            .headers
            .iter()
            .nth(index)
            .map(|(k, v)| Tuple2(k.as_str().into(), v.as_bytes().into()))
            .into()
    }

    fn body(&self) -> RSlice<'_, u8> {
        self.body.as_ref().into()
    }

    fn user(&self) -> ROption<FfiUser> {
        self.user.as_deref().cloned().into()
    }
}

/// The end user of a request that carried no token: no id, no permissions.
fn anonymous() -> Arc<FfiUser> {
    static ANONYMOUS: std::sync::OnceLock<Arc<FfiUser>> = std::sync::OnceLock::new();
    ANONYMOUS
        .get_or_init(|| {
            Arc::new(FfiUser {
                id: RString::new(),
                email: RString::new(),
                permissions: abi_stable::std_types::RVec::new(),
            })
        })
        .clone()
}

fn ffi_user(u: &AuthUser) -> FfiUser {
    FfiUser {
        id: u.id.as_str().into(),
        email: u.email.as_str().into(),
        permissions: u
            .permissions
            .iter()
            .map(|p| RString::from(p.as_str()))
            .collect(),
    }
}

fn ffi_request(
    parts: Parts,
    body: Bytes,
    params: Params,
    user: Option<Arc<FfiUser>>,
) -> FfiRequest {
    let request = HostRequest {
        parts,
        body,
        params,
        user,
    };
    FfiRequestView_TO::from_value(request, abi_stable::sabi_trait::TD_Opaque)
}

/// The module's response as an HTTP response, within the size limit and without the
/// headers only the server may set.
fn http_response(config: &HostConfig, route: &Route, response: FfiResponse) -> Response<Body> {
    let limit = config.max_response_bytes;
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
    // The body the module allocated is handed to hyper as it is, and freed through its
    // own vtable once sent: no copy.
    let mut resp = Response::new(Full::new(Bytes::from_owner(response.body)));
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
