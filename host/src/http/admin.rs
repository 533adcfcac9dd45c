//! Operations endpoints: `/healthz`, `/readyz`, `/metrics` (open) and `/admin/modules`
//! (needs `core.admin.read`).

use std::{fmt::Write as _, sync::Arc};

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::HeaderValue,
    header::CONTENT_TYPE,
    Method, Request, Response, StatusCode,
};

use crate::core::api::Access;
use crate::http::enforce::{authorize, Target};
use crate::http::respond::{json_error, json_response, Body};
use crate::routes::metrics::escape;
use crate::runtime::lifecycle::{Host, ModuleState};
use crate::runtime::reload::ReloadError;

/// Answers a request outside `/api/v1/`. `/admin/*` needs `core.admin.read` (reads)
/// or `core.admin.write` (changes); `/healthz`, `/readyz` and `/metrics` are open.
pub async fn handle(host: &Arc<Host>, req: Request<Incoming>) -> Response<Body> {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let known = [
        "/healthz",
        "/readyz",
        "/metrics",
        "/admin/modules",
        "/admin/services",
        "/admin/dead-letters",
    ];
    if known.contains(&path.as_str()) && method != Method::GET {
        return json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{path} answers GET only"),
        );
    }
    if path.starts_with("/admin/") {
        let permission = if method == Method::GET {
            "core.admin.read"
        } else {
            "core.admin.write"
        };
        let target = Target {
            module: "core",
            method: method.as_str(),
            path: &path,
        };
        let access = Access::Permission(permission);
        if let Err(resp) = authorize(&host.core, access, req.headers(), target).await {
            return resp;
        }
    }
    if let Some(name) = path
        .strip_prefix("/admin/modules/")
        .and_then(|rest| rest.strip_suffix("/reload"))
    {
        if method != Method::POST {
            return json_error(StatusCode::METHOD_NOT_ALLOWED, "reload answers POST only");
        }
        return match host.reload_module(name).await {
            Ok(version) => json_response(
                StatusCode::OK,
                &serde_json::json!({ "module": name, "version": version, "reloaded": true }),
            ),
            Err(e @ ReloadError::NotFound(_)) => json_error(StatusCode::NOT_FOUND, &e.to_string()),
            Err(e @ ReloadError::ShuttingDown) => {
                json_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
            }
            Err(e @ ReloadError::Refused(_)) => json_error(StatusCode::CONFLICT, &e.to_string()),
        };
    }
    match path.as_str() {
        "/healthz" => json_response(StatusCode::OK, &serde_json::json!({ "status": "ok" })),
        "/readyz" if host.is_ready() => {
            json_response(StatusCode::OK, &serde_json::json!({ "status": "ready" }))
        }
        "/readyz" => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "status": "not ready" }),
        ),
        "/admin/modules" => json_response(StatusCode::OK, &host.report()),
        "/admin/services" => json_response(
            StatusCode::OK,
            &host.services.report(|m| host.is_running(m)),
        ),
        "/admin/dead-letters" => json_response(StatusCode::OK, &host.bus.dead_letters()),
        "/metrics" => {
            let mut resp = Response::new(Full::new(Bytes::from(render_metrics(host))));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        _ => json_error(StatusCode::NOT_FOUND, "no such route"),
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
