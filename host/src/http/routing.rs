//! Routing: which handler a request goes to, and the access that handler needs.
//!
//! Every request is routed to exactly one [`Destination`] before anything else happens:
//! a core API endpoint, a module route, or an operations endpoint. A path that matches
//! nothing is 404, a known path with another method 405 (with `Allow`). Authorization
//! (`enforce.rs`) then reads the destination's [`Access`], the same way for all three.

use std::sync::{Arc, OnceLock};

use hyper::{Method, Response, StatusCode};

use crate::core::api::{Access, Endpoint, CORE_NAMESPACES, ENDPOINTS};
use crate::http::respond::{json_error, method_not_allowed, Body};
use crate::routes::pattern::{split_path, Params, Pattern};
use crate::routes::table::{Lookup, Route, RouteTable};

/// Where a request goes.
pub enum Destination {
    /// A core API endpoint (`/api/v1/auth/...`, `/identity`, `/authz`, `/audit`).
    Core {
        endpoint: &'static Endpoint,
        params: Params,
    },
    /// A module's route.
    Module { route: Arc<Route>, params: Params },
    /// An operations endpoint.
    Ops(Ops),
}

/// Why a request has no destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unrouted {
    /// 404.
    NotFound,
    /// 405: the path exists for these methods.
    MethodNotAllowed {
        method: Method,
        allowed: Vec<String>,
    },
}

impl Unrouted {
    /// The response that says so.
    pub fn response(&self) -> Response<Body> {
        match self {
            Unrouted::NotFound => json_error(StatusCode::NOT_FOUND, "no such route"),
            Unrouted::MethodNotAllowed { method, allowed } => {
                method_not_allowed(method.as_str(), allowed)
            }
        }
    }

    fn method(method: &Method, allowed: &[impl AsRef<str>]) -> Self {
        Unrouted::MethodNotAllowed {
            method: method.clone(),
            allowed: allowed.iter().map(|m| m.as_ref().to_string()).collect(),
        }
    }
}

/// The operations endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ops {
    Health,
    Ready,
    Metrics,
    OpenApi,
    Modules,
    Services,
    DeadLetters,
    /// `GET /admin/cluster`: every host of the cluster, its modules and services.
    Cluster,
    /// `POST /admin/modules/{name}/reload`.
    Reload(String),
    /// A path under `/admin/` that is not one of the above (404 once authorized).
    UnknownAdmin,
    /// A method an `/admin/...` path does not answer (405 once authorized).
    AdminMethod {
        method: Method,
        allow: &'static str,
    },
}

/// Operations endpoints that answer GET only, and need no token.
const OPEN: [(&str, Ops); 4] = [
    ("/healthz", Ops::Health),
    ("/readyz", Ops::Ready),
    ("/metrics", Ops::Metrics),
    ("/openapi.json", Ops::OpenApi),
];

/// Administration reads, under `core.admin.read`.
const ADMIN_READS: [(&str, Ops); 4] = [
    ("/admin/modules", Ops::Modules),
    ("/admin/services", Ops::Services),
    ("/admin/dead-letters", Ops::DeadLetters),
    ("/admin/cluster", Ops::Cluster),
];

impl Destination {
    /// What the caller must present.
    pub fn access(&self, method: &Method) -> Access<'_> {
        match self {
            Destination::Core { endpoint, .. } => endpoint.access,
            Destination::Module { route, .. } if route.public => Access::Public,
            Destination::Module { route, .. } => Access::Permission(&route.info.permission),
            Destination::Ops(Ops::Health | Ops::Ready | Ops::Metrics | Ops::OpenApi) => {
                Access::Public
            }
            Destination::Ops(_) if method == Method::GET => Access::Permission("core.admin.read"),
            Destination::Ops(_) => Access::Permission("core.admin.write"),
        }
    }

    /// The module a request is about, for the audit log.
    pub fn module(&self) -> &str {
        match self {
            Destination::Module { route, .. } => &route.module,
            _ => "core",
        }
    }
}

/// Routes a request by its method and path.
pub fn route(table: &RouteTable, method: &Method, path: &str) -> Result<Destination, Unrouted> {
    if let Some(rest) = path.strip_prefix("/api/v1/") {
        let namespace = rest.split('/').next().unwrap_or_default();
        if CORE_NAMESPACES.contains(&namespace) {
            return core_endpoint(method, path);
        }
        return match table.lookup(method.as_str(), path) {
            Lookup::Found { route, params } => Ok(Destination::Module {
                route: route.clone(),
                params,
            }),
            Lookup::MethodNotAllowed { allowed } => Err(Unrouted::method(method, &allowed)),
            Lookup::NotFound => Err(Unrouted::NotFound),
        };
    }
    if let Some((_, op)) = OPEN.iter().find(|(p, _)| *p == path) {
        return match *method == Method::GET {
            true => Ok(Destination::Ops(op.clone())),
            false => Err(Unrouted::method(method, &["GET"])),
        };
    }
    if let Some((_, op)) = ADMIN_READS.iter().find(|(p, _)| *p == path) {
        return Ok(Destination::Ops(match *method == Method::GET {
            true => op.clone(),
            false => Ops::AdminMethod {
                method: method.clone(),
                allow: "GET",
            },
        }));
    }
    if let Some(name) = path
        .strip_prefix("/admin/modules/")
        .and_then(|rest| rest.strip_suffix("/reload"))
    {
        return Ok(Destination::Ops(match *method == Method::POST {
            true => Ops::Reload(name.to_string()),
            false => Ops::AdminMethod {
                method: method.clone(),
                allow: "POST",
            },
        }));
    }
    if path.starts_with("/admin/") {
        return Ok(Destination::Ops(Ops::UnknownAdmin));
    }
    Err(Unrouted::NotFound)
}

/// The core endpoints with their parsed patterns, built once.
fn core_patterns() -> &'static [(&'static Endpoint, Pattern)] {
    static PATTERNS: OnceLock<Vec<(&'static Endpoint, Pattern)>> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        ENDPOINTS
            .iter()
            .filter_map(|ep| match Pattern::parse(ep.path) {
                Ok(pattern) => Some((ep, pattern)),
                Err(why) => {
                    tracing::error!(path = ep.path, "core endpoint pattern refused: {why}");
                    None
                }
            })
            .collect()
    })
}

fn core_endpoint(method: &Method, path: &str) -> Result<Destination, Unrouted> {
    let parts = split_path(path);
    let mut allowed = Vec::new();
    for (endpoint, pattern) in core_patterns() {
        if pattern.matches(&parts).is_none() {
            continue;
        }
        if endpoint.method == method.as_str() {
            return Ok(Destination::Core {
                endpoint,
                params: pattern.params(&parts),
            });
        }
        allowed.push(endpoint.method);
    }
    match allowed.is_empty() {
        true => Err(Unrouted::NotFound),
        false => Err(Unrouted::method(method, &allowed)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_core_endpoint_has_a_valid_pattern() {
        assert_eq!(core_patterns().len(), ENDPOINTS.len());
    }

    #[test]
    fn requests_reach_their_destination_or_a_404_or_405() {
        let table = RouteTable::default();
        let found = route(&table, &Method::GET, "/api/v1/authz/roles");
        assert!(
            matches!(found, Ok(Destination::Core { endpoint, .. }) if endpoint.path == "/api/v1/authz/roles")
        );
        let roles = route(&table, &Method::PATCH, "/api/v1/authz/roles");
        let status = roles.err().map(|r| r.response().status());
        assert_eq!(status, Some(StatusCode::METHOD_NOT_ALLOWED));
        let missing = route(&table, &Method::GET, "/api/v1/nobody/x");
        assert_eq!(missing.err(), Some(Unrouted::NotFound));
        let reload = route(&table, &Method::POST, "/admin/modules/blog/reload");
        assert!(matches!(reload, Ok(Destination::Ops(Ops::Reload(name))) if name == "blog"));
        let health = route(&table, &Method::POST, "/healthz");
        let allowed = match health.err() {
            Some(Unrouted::MethodNotAllowed { allowed, .. }) => allowed,
            other => panic!("POST /healthz: {other:?}"),
        };
        assert_eq!(allowed, ["GET"]);
        let unknown = route(&table, &Method::GET, "/admin/nothing");
        let Ok(unknown) = unknown else {
            panic!("an /admin path is authorized before its 404")
        };
        assert_eq!(
            unknown.access(&Method::GET),
            Access::Permission("core.admin.read")
        );
    }
}
