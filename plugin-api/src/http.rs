//! Plain-Rust HTTP types a handler sees: [`Method`], [`Request`], [`Response`].

use std::sync::OnceLock;

use abi_stable::std_types::Tuple2;
use serde::{de::DeserializeOwned, Serialize};

use crate::{ffi::FfiRequest, Error, User};

/// HTTP methods a route can be registered for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    /// The method's name as on the wire, e.g. `"GET"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// A request routed to a module's handler.
///
/// Its parts are read through methods that borrow from the request as the host received
/// it: nothing is copied unless you copy it. For tests, build one with [`Request::new`]
/// and the `with_*` methods.
pub struct Request {
    source: Source,
    /// The caller, converted on first use.
    user: OnceLock<Option<User>>,
}

enum Source {
    Host(FfiRequest),
    Local(Local),
}

/// A request built in plain Rust (tests, examples).
#[derive(Debug, Clone, Default)]
struct Local {
    method: String,
    path: String,
    query: String,
    params: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    user: Option<User>,
}

impl Default for Request {
    /// `GET /` with nothing else.
    fn default() -> Self {
        Request::new("GET", "/")
    }
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method())
            .field("path", &self.path())
            .field("query", &self.query())
            .field("body_bytes", &self.body().len())
            .finish_non_exhaustive()
    }
}

impl Request {
    /// A request for tests and examples: `method` and `path`, nothing else.
    pub fn new(method: &str, path: &str) -> Self {
        Self::local(Local {
            method: method.to_string(),
            path: path.to_string(),
            ..Local::default()
        })
    }

    fn local(local: Local) -> Self {
        Request {
            source: Source::Local(local),
            user: OnceLock::new(),
        }
    }

    pub(crate) fn from_host(request: FfiRequest) -> Self {
        Request {
            source: Source::Host(request),
            user: OnceLock::new(),
        }
    }

    fn edit(mut self, change: impl FnOnce(&mut Local)) -> Self {
        if let Source::Local(local) = &mut self.source {
            change(local);
        }
        self
    }

    /// With this raw query string (without `?`).
    pub fn with_query(self, query: &str) -> Self {
        self.edit(|l| l.query = query.to_string())
    }

    /// With a path parameter.
    pub fn with_param(self, name: &str, value: &str) -> Self {
        self.edit(|l| l.params.push((name.to_string(), value.to_string())))
    }

    /// With a header (name in lower case).
    pub fn with_header(self, name: &str, value: &str) -> Self {
        self.edit(|l| {
            l.headers
                .push((name.to_ascii_lowercase(), value.to_string()))
        })
    }

    /// With this body.
    pub fn with_body(self, body: impl Into<Vec<u8>>) -> Self {
        self.edit(|l| l.body = body.into())
    }

    /// With an authenticated caller.
    pub fn with_user(self, user: User) -> Self {
        self.edit(|l| l.user = Some(user))
    }

    /// `GET`, `POST`, ...
    pub fn method(&self) -> &str {
        match &self.source {
            Source::Host(r) => r.method().as_str(),
            Source::Local(l) => &l.method,
        }
    }

    /// The full path, e.g. `/api/v1/blog/posts/7`.
    pub fn path(&self) -> &str {
        match &self.source {
            Source::Host(r) => r.path().as_str(),
            Source::Local(l) => &l.path,
        }
    }

    /// The raw query string, without `?` (empty when absent).
    pub fn query(&self) -> &str {
        match &self.source {
            Source::Host(r) => r.query().as_str(),
            Source::Local(l) => &l.query,
        }
    }

    /// The request body.
    pub fn body(&self) -> &[u8] {
        match &self.source {
            Source::Host(r) => r.body().as_slice(),
            Source::Local(l) => &l.body,
        }
    }

    /// The authenticated caller; `None` only on routes the manifest declares public
    /// when no valid token was sent.
    pub fn user(&self) -> Option<&User> {
        self.user
            .get_or_init(|| match &self.source {
                Source::Host(r) => r.user().into_option().map(User::from_ffi),
                Source::Local(l) => l.user.clone(),
            })
            .as_ref()
    }

    /// A path parameter by name: for `/posts/{id}`, `param("id")`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// Every path parameter, in pattern order.
    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        (0..).map_while(move |i| match &self.source {
            Source::Host(r) => r
                .param(i)
                .into_option()
                .map(|Tuple2(k, v)| (k.as_str(), v.as_str())),
            Source::Local(l) => l.params.get(i).map(|(k, v)| (k.as_str(), v.as_str())),
        })
    }

    /// Every header whose value is text, in the order received (names lower-case).
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        (0..)
            .map_while(move |i| match &self.source {
                Source::Host(r) => r
                    .header(i)
                    .into_option()
                    .map(|Tuple2(k, v)| (k.as_str(), std::str::from_utf8(v.as_slice()).ok())),
                Source::Local(l) => l
                    .headers
                    .get(i)
                    .map(|(k, v)| (k.as_str(), Some(v.as_str()))),
            })
            .filter_map(|(k, v)| Some((k, v?)))
    }

    /// The first header with this name (case-insensitive), if its value is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The query string decoded into pairs (`a=1&b=x%20y` → `[("a","1"),("b","x y")]`).
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        self.query()
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect()
    }

    /// The first query parameter with this name.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// The body parsed as JSON. On failure the error is a ready 400 response.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Response> {
        serde_json::from_slice(self.body())
            .map_err(|e| Response::error(400, format!("invalid JSON body: {e}")))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A response from a handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A response with this status and no body.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `text/plain; charset=utf-8` response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::new(status)
            .with_header("content-type", "text/plain; charset=utf-8")
            .with_body(body.into().into_bytes())
    }

    /// An `application/json` response with `value` serialised as its body.
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self::new(status)
                .with_header("content-type", "application/json")
                .with_body(body),
            Err(e) => Self::error(500, format!("response is not valid JSON: {e}")),
        }
    }

    /// A JSON error response: `{"error": message}`.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        let body = serde_json::json!({ "error": message.into() });
        Self::new(status)
            .with_header("content-type", "application/json")
            .with_body(body.to_string().into_bytes())
    }

    /// `{"error": message, "error_id": id}` when the host logged the detail under an id.
    pub(crate) fn public_error(p: &crate::error::PublicError) -> Self {
        match &p.error_id {
            None => Self::error(p.status, p.message.clone()),
            Some(id) => {
                let body = serde_json::json!({ "error": p.message, "error_id": id });
                Self::new(p.status)
                    .with_header("content-type", "application/json")
                    .with_body(body.to_string().into_bytes())
            }
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Replaces the body.
    pub fn with_body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }
}

/// 500 with the message; an error made from a [`crate::DbError`] or
/// [`crate::CallError`] answers what that error answers.
impl From<Error> for Response {
    fn from(err: Error) -> Self {
        match err.public() {
            Some(p) => Response::public_error(p),
            None => Response::error(500, err.message()),
        }
    }
}

/// What a handler may return: a [`Response`], or a `Result` whose both sides convert.
pub trait IntoResponse {
    fn into_response(self) -> Response;
}

impl IntoResponse for Response {
    fn into_response(self) -> Response {
        self
    }
}

impl<T: IntoResponse, E: Into<Response>> IntoResponse for Result<T, E> {
    fn into_response(self) -> Response {
        match self {
            Ok(ok) => ok.into_response(),
            Err(err) => err.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_decode_percent_and_plus() {
        let req = Request::new("GET", "/").with_query("a=1&b=x%20y+z&c&d=%zz");
        assert_eq!(
            req.query_pairs(),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y z".into()),
                ("c".into(), "".into()),
                ("d".into(), "%zz".into()),
            ]
        );
        assert_eq!(req.query_param("b").as_deref(), Some("x y z"));
    }

    #[test]
    fn json_body_errors_are_400() {
        let req = Request::new("POST", "/").with_body(b"{not json".to_vec());
        let err = req.json::<serde_json::Value>().unwrap_err();
        assert_eq!(err.status, 400);
        assert!(String::from_utf8_lossy(&err.body).contains("invalid JSON body"));
    }
}
