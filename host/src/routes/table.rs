//! The route table: route patterns, their validation and request matching.
//!
//! Routes live under `/api/v1/<module>/...`; a pattern segment `{name}` captures one path
//! segment. The table is immutable once built; the host swaps in a new table when the
//! set of running modules changes. Serving HTTP is `server.rs`'s job.

use std::{collections::HashMap, sync::Arc};

use modhost_plugin_api::ffi::FfiHandlerBox;
use serde::Serialize;

use crate::routes::metrics::RouteMetrics;

/// HTTP methods a module route may use.
pub const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];

/// One segment of a route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Static(String),
    Param(String),
}

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
    segments: Vec<Segment>,
    pub handler: Arc<FfiHandlerBox>,
    pub metrics: Arc<RouteMetrics>,
    /// The module's latency histogram (shared by its routes).
    pub latency: Arc<crate::routes::metrics::Histogram>,
    /// Requests running in this route's handler now (for draining on reload).
    pub inflight: std::sync::atomic::AtomicUsize,
}

impl Route {
    /// Builds a route from a validated pattern.
    pub fn new(
        module: Arc<str>,
        info: RouteInfo,
        public: bool,
        handler: FfiHandlerBox,
        metrics: Arc<RouteMetrics>,
        latency: Arc<crate::routes::metrics::Histogram>,
    ) -> Result<Self, RouteError> {
        let segments = parse_pattern(&module, &info.method, &info.path)?;
        Ok(Self {
            module,
            info,
            public,
            segments,
            handler: Arc::new(handler),
            metrics,
            latency,
            inflight: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn shape(&self) -> Vec<Option<&str>> {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Static(s) => Some(s.as_str()),
                Segment::Param(_) => None,
            })
            .collect()
    }

    /// Whether `other` would answer exactly the same requests.
    pub fn conflicts_with(&self, other: &Route) -> bool {
        self.info.method == other.info.method && self.shape() == other.shape()
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

/// Validates `path` for `module` and splits it into segments.
pub fn parse_pattern(module: &str, method: &str, path: &str) -> Result<Vec<Segment>, RouteError> {
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
    let bad = |why: String| RouteError::Pattern {
        method: method.into(),
        path: path.into(),
        why,
    };
    let mut segments = Vec::new();
    let mut names = Vec::new();
    for seg in path[1..].split('/') {
        if seg.is_empty() {
            return Err(bad("empty path segment (double or trailing `/`)".into()));
        }
        if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(bad(format!("invalid parameter name `{name}`")));
            }
            if names.contains(&name) {
                return Err(bad(format!("parameter `{name}` appears twice")));
            }
            names.push(name);
            segments.push(Segment::Param(name.to_string()));
        } else if seg.contains(['{', '}', '?', '#', '%']) {
            return Err(bad(format!("invalid characters in segment `{seg}`")));
        } else {
            segments.push(Segment::Static(seg.to_string()));
        }
    }
    Ok(segments)
}

/// Result of matching a request against the table.
pub enum Lookup<'a> {
    Found {
        route: &'a Arc<Route>,
        params: Vec<(String, String)>,
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
        let parts: Vec<&str> = path[1..].split('/').collect();
        let mut best: Option<(usize, &Arc<Route>)> = None;
        let mut allowed = Vec::new();
        for route in routes {
            let Some(param_count) = match_segments(&route.segments, &parts) else {
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
            Some((_, route)) => {
                let params = route
                    .segments
                    .iter()
                    .zip(&parts)
                    .filter_map(|(seg, part)| match seg {
                        Segment::Param(name) => Some((name.clone(), percent_decode(part))),
                        Segment::Static(_) => None,
                    })
                    .collect();
                Lookup::Found { route, params }
            }
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

/// Matches `path` against a pattern such as `/api/v1/authz/roles/{name}`; returns the
/// parameters.
pub fn match_pattern(pattern: &str, path: &str) -> Option<Vec<(String, String)>> {
    let pat: Vec<&str> = pattern.split('/').collect();
    let parts: Vec<&str> = path.split('/').collect();
    if pat.len() != parts.len() {
        return None;
    }
    let mut params = Vec::new();
    for (p, part) in pat.iter().zip(&parts) {
        match p.strip_prefix('{').and_then(|n| n.strip_suffix('}')) {
            Some(_) if part.is_empty() => return None,
            Some(name) => params.push((name.to_string(), percent_decode(part))),
            None if p == part => {}
            None => return None,
        }
    }
    Some(params)
}

fn match_segments(segments: &[Segment], parts: &[&str]) -> Option<usize> {
    if segments.len() != parts.len() {
        return None;
    }
    let mut params = 0;
    for (seg, part) in segments.iter().zip(parts) {
        match seg {
            Segment::Static(s) if s == part => {}
            Segment::Static(_) => return None,
            Segment::Param(_) if part.is_empty() => return None,
            Segment::Param(_) => params += 1,
        }
    }
    Some(params)
}

/// Decodes `%XX` escapes in a path segment (invalid escapes are kept as they are).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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

    #[test]
    fn percent_decoding_of_params() {
        assert_eq!(percent_decode("a%20b"), "a b");
        assert_eq!(percent_decode("..%2F..%2Fetc"), "../../etc");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
