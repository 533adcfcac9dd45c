//! Operations endpoints: `/healthz`, `/readyz`, `/metrics` and `/admin/modules`.

use std::fmt::Write as _;

use http_body_util::Full;
use hyper::{body::Bytes, header::HeaderValue, header::CONTENT_TYPE, Method, Response, StatusCode};

use crate::{
    lifecycle::{Host, ModuleState},
    metrics::escape,
    server::{json_error, json_response, Body},
};

/// Answers a request outside `/api/v1/`.
pub fn handle(host: &Host, method: &Method, path: &str) -> Response<Body> {
    let known = ["/healthz", "/readyz", "/metrics", "/admin/modules"];
    if known.contains(&path) && method != Method::GET {
        return json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{path} answers GET only"),
        );
    }
    match path {
        "/healthz" => json_response(StatusCode::OK, &serde_json::json!({ "status": "ok" })),
        "/readyz" if host.is_ready() => {
            json_response(StatusCode::OK, &serde_json::json!({ "status": "ready" }))
        }
        "/readyz" => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "status": "not ready" }),
        ),
        "/admin/modules" => json_response(StatusCode::OK, &host.report()),
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
