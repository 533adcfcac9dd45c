//! Reading a request body: at most `max_body_bytes` (413 above it, declared or
//! streamed) and within `request_timeout` (408 for a body that arrives too slowly).

use http_body_util::{BodyExt, Limited};
use hyper::{
    body::{Bytes, Incoming},
    http::request::Parts,
    Request, Response, StatusCode,
};

use crate::config::HostConfig;
use crate::http::respond::{json_error, Body};

/// The request's head and its whole body, or the response that refuses it.
pub async fn read(
    config: &HostConfig,
    req: Request<Incoming>,
) -> Result<(Parts, Bytes), Response<Body>> {
    if hyper::body::Body::is_end_stream(req.body()) {
        // No body (a GET, say): nothing to read, no timer to arm.
        return Ok((req.into_parts().0, Bytes::new()));
    }
    let deadline = config.request_timeout;
    match tokio::time::timeout(deadline, read_limited(req, config.max_body_bytes)).await {
        Ok(read) => read,
        Err(_) => Err(json_error(
            StatusCode::REQUEST_TIMEOUT,
            &format!("the request body did not arrive within {deadline:?}"),
        )),
    }
}

async fn read_limited(
    req: Request<Incoming>,
    limit: u64,
) -> Result<(Parts, Bytes), Response<Body>> {
    let too_large = || {
        json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body is over the {limit}-byte limit"),
        )
    };
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let (parts, body) = req.into_parts();
    match Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX))
        .collect()
        .await
    {
        Ok(collected) => Ok((parts, collected.to_bytes())),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Err(e) => Err(json_error(
            StatusCode::BAD_REQUEST,
            &format!("cannot read the request body: {e}"),
        )),
    }
}
