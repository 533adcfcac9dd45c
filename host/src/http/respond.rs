//! The shapes of the host's own HTTP answers: the response body type, JSON responses,
//! JSON errors and 405 with `Allow`. Every handler in `http/` answers through these.

use http_body_util::Full;
use hyper::{
    body::Bytes,
    header::{HeaderValue, CONTENT_TYPE},
    Response, StatusCode,
};

/// The response body type.
pub type Body = Full<Bytes>;

/// A JSON error response: `{"error": message}`.
pub fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, &serde_json::json!({ "error": message }))
}

/// 405 with the `Allow` header.
pub fn method_not_allowed<S: AsRef<str>>(method: &str, allowed: &[S]) -> Response<Body> {
    let mut resp = json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("method {method} not allowed here"),
    );
    let allowed: Vec<&str> = allowed.iter().map(AsRef::as_ref).collect();
    if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
        resp.headers_mut().insert(hyper::header::ALLOW, v);
    }
    resp
}

/// A JSON response.
pub fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
