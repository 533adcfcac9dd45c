//! The request pipeline: the order in which every request meets the host's concerns,
//! written once for the core API, module routes and operations endpoints alike.
//!
//! route (404/405) → count it in its module route (in flight, metrics) → authorize
//! (401/403, audited) → read the body (413/408) → run the handler → answer.

use std::sync::Arc;

use hyper::{body::Incoming, Request, Response, StatusCode};

use crate::core;
use crate::http::module_call::{self, RouteVisit};
use crate::http::respond::{json_response, Body};
use crate::http::routing::{self, Destination};
use crate::http::{admin, body, enforce};
use crate::runtime::lifecycle::Host;

/// Answers one request.
pub async fn handle(host: Arc<Host>, req: Request<Incoming>) -> Response<Body> {
    let destination = match routing::route(&host.routes(), req.method(), req.uri().path()) {
        Ok(destination) => destination,
        Err(unrouted) => return unrouted.response(),
    };
    let visit = match &destination {
        Destination::Module { route, .. } => Some(RouteVisit::enter(route)),
        _ => None,
    };
    let response = guarded(&host, destination, req).await;
    if let Some(visit) = visit {
        visit.finish(response.status());
    }
    response
}

/// Authorizes the request for its destination, then runs it.
async fn guarded(
    host: &Arc<Host>,
    destination: Destination,
    req: Request<Incoming>,
) -> Response<Body> {
    let target = enforce::Target {
        module: destination.module(),
        method: req.method().as_str(),
        path: req.uri().path(),
    };
    let access = destination.access(req.method());
    let user = match enforce::authorize(&host.core, access, req.headers(), target).await {
        Ok(user) => user,
        Err(denied) => return denied,
    };
    // The operations and core branches are boxed: their futures (a reload, say) are
    // large, and would otherwise make every request's future as large, to be moved
    // and copied on the module path too.
    match destination {
        Destination::Ops(op) => Box::pin(admin::answer(host, op)).await,
        Destination::Core { endpoint, params } => {
            let bearer = enforce::bearer(req.headers()).map(str::to_string);
            let (parts, bytes) = match body::read(&host.config, req).await {
                Ok(read) => read,
                Err(refused) => return refused,
            };
            let query = modhost_plugin_api::Request::new(parts.method.as_str(), parts.uri.path())
                .with_query(parts.uri.query().unwrap_or(""))
                .query_pairs();
            let request = core::api::CoreRequest {
                params: &params,
                query: &query,
                body: &bytes,
                user: user.as_ref(),
                bearer: bearer.as_deref(),
            };
            let (status, value) = Box::pin(core::api::run(&host.core, endpoint.op, &request)).await;
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            json_response(status, &value)
        }
        Destination::Module { route, params } => {
            let (parts, bytes) = match body::read(&host.config, req).await {
                Ok(read) => read,
                Err(refused) => return refused,
            };
            // A trace crosses hosts in cluster mode, or when the client sent one; the
            // embedded host does not pay for ids nobody reads.
            let incoming = parts
                .headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .and_then(crate::trace::TraceContext::parse);
            let call = module_call::call(&host.config, &route, parts, bytes, params, user);
            if incoming.is_none() && host.cluster.is_none() {
                return call.await;
            }
            let trace = incoming.unwrap_or_else(crate::trace::TraceContext::new_root);
            let span = tracing::info_span!("request", trace_id = %trace.trace_id);
            crate::trace::scope(trace, tracing::Instrument::instrument(call, span)).await
        }
    }
}
