//! The route table: module routes, their validation and request matching (patterns
//! themselves are `pattern.rs`).
//!
//! Routes live under `/api/v1/<module>/...`; a pattern segment `{name}` captures one path
//! segment. The table is immutable once built; the host swaps in a new table when the
//! set of running modules changes. Serving HTTP is `server.rs`'s job.

use std::{collections::HashMap, sync::Arc};

use modhost_plugin_api::ffi::FfiHandlerBox;
use serde::Serialize;

use crate::routes::metrics::{Histogram, RouteMetrics};
use crate::routes::pattern::{split_path, Params, Pattern};

/// HTTP methods a module route may use.
pub const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];

/// A validated route pattern with its method and permission.
#[derive(Debug, Clone, Serialize)]
pub struct RouteInfo {
    pub method: String,
    pub path: String,
    pub permission: String,
}

/// A route in the table.
pub struct Route {
    pub module: Arc<str>,
    pub info: RouteInfo,
    /// Declared public in the module's manifest: no token needed.
    pub public: bool,
    pattern: Pattern,
    pub handler: Arc<FfiHandlerBox>,
    pub metrics: Arc<RouteMetrics>,
    /// The module's latency histogram (shared by its routes).
    pub latency: Arc<Histogram>,
    /// Requests running in this route's handler now (for draining on reload).
    pub inflight: std::sync::atomic::AtomicUsize,
    /// What the module described of it (plugin-api 1.2 `describe_route`), for OpenAPI.
    doc: std::sync::OnceLock<serde_json::Value>,
}

impl Route {
    /// Builds a route from a validated pattern.
    pub fn new(
        module: Arc<str>,
        info: RouteInfo,
        public: bool,
        handler: FfiHandlerBox,
        metrics: Arc<RouteMetrics>,
        latency: Arc<Histogram>,
    ) -> Result<Self, RouteError> {
        let pattern = parse_pattern(&module, &info.method, &info.path)?;
        Ok(Self {
            module,
            info,
            public,
            pattern,
            handler: Arc::new(handler),
            metrics,
            latency,
            inflight: std::sync::atomic::AtomicUsize::new(0),
            doc: std::sync::OnceLock::new(),
        })
    }

    /// The module's description of this route, if it gave one.
    pub fn doc(&self) -> Option<&serde_json::Value> {
        self.doc.get()
    }

    /// Takes the module's description (see `FfiHost::describe_route`): a JSON object
    /// whose `params` name only this route's path parameters and whose `responses` are
    /// keyed by HTTP status. Once per route.
    pub fn describe(&self, doc_json: &str) -> Result<(), String> {
        let what = format!("route {} {}", self.info.method, self.info.path);
        let doc: serde_json::Value = serde_json::from_str(doc_json)
            .map_err(|e| format!("{what}: its description is not JSON: {e}"))?;
        let Some(fields) = doc.as_object() else {
            return Err(format!("{what}: its description must be a JSON object"));
        };
        const KEYS: [&str; 6] = [
            "summary",
            "params",
            "query",
            "required_query",
            "body",
            "responses",
        ];
        if let Some(unknown) = fields.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(format!(
                "{what}: unknown key `{unknown}` in its description; use {}",
                KEYS.join(", ")
            ));
        }
        let names = self.pattern.param_names();
        if let Some(params) = doc.get("params").and_then(|p| p.as_object()) {
            if let Some(stray) = params.keys().find(|k| !names.iter().any(|n| n == *k)) {
                return Err(format!("{what}: its description names a path parameter `{stray}` the path does not have"));
            }
        }
        if let Some(responses) = doc.get("responses").and_then(|r| r.as_object()) {
            if let Some(bad) = responses
                .keys()
                .find(|k| !k.parse::<u16>().is_ok_and(|s| (100..600).contains(&s)))
            {
                return Err(format!(
                    "{what}: response `{bad}` in its description is not an HTTP status"
                ));
            }
        }
        self.doc
            .set(doc)
            .map_err(|_| format!("{what}: described twice"))
    }

    /// Whether `other` would answer exactly the same requests.
    pub fn conflicts_with(&self, other: &Route) -> bool {
        self.info.method == other.info.method && self.pattern.same_shape(&other.pattern)
    }
}

/// Why a route was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("route {method} {path}: unsupported method; use one of {}", METHODS.join(", "))]
    Method { method: String, path: String },
    #[error("route {method} {path}: outside the module's namespace; routes of module `{module}` must start with /api/v1/{module}/")]
    Namespace {
        module: String,
        method: String,
        path: String,
    },
    #[error("route {method} {path}: {why}")]
    Pattern {
        method: String,
        path: String,
        why: String,
    },
    #[error("route {method} {path} conflicts with {method} {existing}, already registered by this module")]
    Conflict {
        method: String,
        path: String,
        existing: String,
    },
    #[error("route {method} {path}: routes can only be registered while the module's init runs")]
    Closed { method: String, path: String },
    #[error("route {method} {path} requires permission `{permission}`, which module.yaml does not declare; add it under `permissions:`")]
    Undeclared {
        method: String,
        path: String,
        permission: String,
    },
    #[error("public_routes lists `{method} {path}`, but the module registered no such route")]
    PublicNotRegistered { method: String, path: String },
}

/// Validates a module route: its method, its namespace and its pattern.
pub fn parse_pattern(module: &str, method: &str, path: &str) -> Result<Pattern, RouteError> {
    if !METHODS.contains(&method) {
        return Err(RouteError::Method {
            method: method.into(),
            path: path.into(),
        });
    }
    let prefix = format!("/api/v1/{module}");
    let in_namespace = path == prefix || path.starts_with(&format!("{prefix}/"));
    if !in_namespace {
        return Err(RouteError::Namespace {
            module: module.into(),
            method: method.into(),
            path: path.into(),
        });
    }
    Pattern::parse(path).map_err(|why| RouteError::Pattern {
        method: method.into(),
        path: path.into(),
        why,
    })
}

/// Result of matching a request against the table.
pub enum Lookup<'a> {
    Found {
        route: &'a Arc<Route>,
        params: Params,
    },
    /// The path exists, not for this method.
    MethodNotAllowed {
        allowed: Vec<String>,
    },
    NotFound,
}

/// All routes of all running modules, by module name.
#[derive(Default)]
pub struct RouteTable {
    by_module: HashMap<String, Vec<Arc<Route>>>,
}

impl RouteTable {
    /// A table holding these modules' routes.
    pub fn new(routes: impl IntoIterator<Item = (String, Vec<Arc<Route>>)>) -> Self {
        Self {
            by_module: routes.into_iter().collect(),
        }
    }

    /// Matches `method` and `path` (the path without query string).
    pub fn lookup(&self, method: &str, path: &str) -> Lookup<'_> {
        let Some(rest) = path.strip_prefix("/api/v1/") else {
            return Lookup::NotFound;
        };
        let module = rest.split('/').next().unwrap_or_default();
        let Some(routes) = self.by_module.get(module) else {
            return Lookup::NotFound;
        };
        let parts = split_path(path);
        let mut best: Option<(usize, &Arc<Route>)> = None;
        let mut allowed = Vec::new();
        for route in routes {
            let Some(param_count) = route.pattern.matches(&parts) else {
                continue;
            };
            if route.info.method != method {
                allowed.push(route.info.method.clone());
                continue;
            }
            // Static segments beat parameters: fewest parameters wins.
            if best.is_none_or(|(n, _)| param_count < n) {
                best = Some((param_count, route));
            }
        }
        match best {
            Some((_, route)) => Lookup::Found {
                route,
                params: route.pattern.params(&parts),
            },
            None if !allowed.is_empty() => {
                allowed.sort();
                allowed.dedup();
                Lookup::MethodNotAllowed { allowed }
            }
            None => Lookup::NotFound,
        }
    }

    /// Every route, by module name order.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        let mut modules: Vec<&String> = self.by_module.keys().collect();
        modules.sort();
        modules.into_iter().flat_map(|m| self.by_module[m].iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_confined_to_the_module_namespace() {
        assert!(parse_pattern("blog", "GET", "/api/v1/blog/posts/{id}").is_ok());
        assert!(parse_pattern("blog", "GET", "/api/v1/blog").is_ok());
        for path in [
            "/api/v1/billing/x",
            "/api/v1/blogger/x",
            "/admin/modules",
            "/api/v1/blog//x",
        ] {
            assert!(parse_pattern("blog", "GET", path).is_err(), "{path}");
        }
        assert!(matches!(
            parse_pattern("blog", "GET", "/api/v1/blog/{id}/{id}"),
            Err(RouteError::Pattern { .. })
        ));
        assert!(matches!(
            parse_pattern("blog", "BREW", "/api/v1/blog/x"),
            Err(RouteError::Method { .. })
        ));
    }
}
