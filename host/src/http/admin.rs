//! Operations endpoints: `/healthz`, `/readyz`, `/metrics`, `/openapi.json` (open) and
//! `/admin/...` (`core.admin.read` to read, `core.admin.write` to change; checked by
//! the pipeline before [`answer`] runs).

use std::{fmt::Write as _, sync::Arc};

use http_body_util::Full;
use hyper::{
    body::Bytes,
    header::{HeaderValue, CONTENT_TYPE},
    Response, StatusCode,
};

use crate::http::openapi;
use crate::http::respond::{json_error, json_response, method_not_allowed, Body};
use crate::http::routing::Ops;
use crate::routes::metrics::escape;
use crate::runtime::lifecycle::{Host, ModuleState};
use crate::runtime::reload::ReloadError;

/// Answers an operations endpoint; the caller was already authorized for it.
pub async fn answer(host: &Arc<Host>, op: Ops) -> Response<Body> {
    match op {
        Ops::Health => json_response(StatusCode::OK, &serde_json::json!({ "status": "ok" })),
        Ops::Ready if !host.core.reachable() => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "status": "not ready", "core": "unreachable" }),
        ),
        Ops::Ready if host.is_ready() => {
            json_response(StatusCode::OK, &serde_json::json!({ "status": "ready" }))
        }
        Ops::Ready => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "status": "not ready" }),
        ),
        Ops::Metrics => {
            let mut resp = Response::new(Full::new(Bytes::from(render_metrics(host))));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        Ops::OpenApi => {
            let events: Vec<openapi::EventDoc> = host
                .event_docs()
                .into_iter()
                .map(|(module, topic, schema)| openapi::EventDoc {
                    module,
                    topic,
                    schema,
                })
                .collect();
            let declared: Vec<String> = host
                .core
                .permissions
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .by_module()
                .into_values()
                .flatten()
                .collect();
            json_response(
                StatusCode::OK,
                &openapi::document(&host.routes(), &events, &declared),
            )
        }
        Ops::Modules => json_response(StatusCode::OK, &host.report()),
        Ops::Services => {
            let mut services = host.services.report(|m| host.is_running(m));
            if let Some(cluster) = &host.cluster {
                services.extend(cluster.remote_services());
            }
            json_response(StatusCode::OK, &services)
        }
        Ops::Cluster => match &host.cluster {
            Some(cluster) => json_response(StatusCode::OK, &cluster.report()),
            None => json_response(
                StatusCode::OK,
                &serde_json::json!({
                    "host_id": null,
                    "registry": false,
                    "hosts": [],
                    "note": "this host runs alone: set registry_url to join a cluster"
                }),
            ),
        },
        Ops::DeadLetters => json_response(StatusCode::OK, &host.bus.dead_letters()),
        Ops::Reload(name) => reload(host, &name).await,
        Ops::UnknownAdmin => json_error(StatusCode::NOT_FOUND, "no such route"),
        Ops::AdminMethod { method, allow } => method_not_allowed(method.as_str(), &[allow]),
    }
}

async fn reload(host: &Arc<Host>, name: &str) -> Response<Body> {
    match host.reload_module(name).await {
        Ok(version) => json_response(
            StatusCode::OK,
            &serde_json::json!({ "module": name, "version": version, "reloaded": true }),
        ),
        Err(e @ ReloadError::NotFound(_)) => json_error(StatusCode::NOT_FOUND, &e.to_string()),
        Err(e @ ReloadError::ShuttingDown) => {
            json_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
        Err(e @ ReloadError::Refused(_)) => json_error(StatusCode::CONFLICT, &e.to_string()),
    }
}

/// All metrics in the Prometheus text format.
pub fn render_metrics(host: &Host) -> String {
    let mut out = String::new();
    host.metrics.render(&mut out);
    let report = host.report();
    let name = "modhost_module_state";
    let _ = writeln!(
        out,
        "# HELP {name} 1 for the state each module is in.\n# TYPE {name} gauge"
    );
    for m in &report {
        for state in ModuleState::NAMES {
            let v = u8::from(m.state == *state);
            let _ = writeln!(
                out,
                "{name}{{module=\"{}\",state=\"{state}\"}} {v}",
                escape(&m.name)
            );
        }
    }
    for (name, help, value) in [
        (
            "modhost_worker_crashes_total",
            "Times an isolated module's worker process ended on its own.",
            (|m: &crate::runtime::lifecycle::ModuleReport| m.crashes) as fn(&_) -> u32,
        ),
        (
            "modhost_worker_restarts_total",
            "Times an isolated module's worker was restarted after a crash.",
            |m| m.restarts,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for m in report.iter().filter(|m| m.isolation == "process") {
            let _ = writeln!(out, "{name}{{module=\"{}\"}} {}", escape(&m.name), value(m));
        }
    }
    for metric in host.bus.metrics().into_iter().chain(host.cache.metrics()) {
        let (name, help, kind, value) = (metric.name, metric.help, metric.kind, metric.value);
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    let name = "modhost_module_load_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time to load the module's library and run its init.\n# TYPE {name} gauge"
    );
    for m in &report {
        if let Some(ms) = m.load_time_ms {
            let _ = writeln!(
                out,
                "{name}{{module=\"{}\"}} {}",
                escape(&m.name),
                ms / 1000.0
            );
        }
    }
    out
}
