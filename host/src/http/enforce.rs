//! Authorization: every request passes through [`authorize`] with the access its
//! destination needs (`routing.rs`) before its handler runs. Deny by default: no or a bad token gives 401, a valid token
//! without the route's permission gives 403, and both are audited.

use hyper::{
    header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE},
    HeaderMap, Response, StatusCode,
};

use crate::core::{api::Access, audit::Audit, AuthUser, Core, CoreError};
use crate::http::respond::{json_error, Body};

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// What is being accessed, for the audit log.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub module: &'a str,
    pub method: &'a str,
    pub path: &'a str,
}

/// Checks a request against `access`; returns the caller, or the response to send.
pub async fn authorize(
    core: &Core,
    access: Access<'_>,
    headers: &HeaderMap,
    target: Target<'_>,
) -> Result<Option<AuthUser>, Response<Body>> {
    let token = bearer(headers);
    if access == Access::Public {
        return Ok(match token {
            Some(t) => core.authenticate(t).await.ok(),
            None => None,
        });
    }
    let Some(token) = token else {
        return Err(deny(
            core,
            &target,
            None,
            StatusCode::UNAUTHORIZED,
            "authentication required: send `Authorization: Bearer <token>`",
        )
        .await);
    };
    let user = match core.authenticate(token).await {
        Ok(u) => u,
        Err(CoreError::Database(e) | CoreError::Unavailable(e)) => {
            tracing::error!(error = %e, "cannot authenticate: the core services are unavailable");
            return Err(json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "authentication is unavailable; try again later",
            ));
        }
        Err(e) => {
            let why = format!("invalid token: {e}");
            return Err(deny(core, &target, None, StatusCode::UNAUTHORIZED, &why).await);
        }
    };
    if let Access::Permission(p) = access {
        if !user.allows(p) {
            let why = format!("permission `{p}` required");
            return Err(deny(core, &target, Some(&user), StatusCode::FORBIDDEN, &why).await);
        }
    }
    Ok(Some(user))
}

async fn deny(
    core: &Core,
    target: &Target<'_>,
    user: Option<&AuthUser>,
    status: StatusCode,
    why: &str,
) -> Response<Body> {
    let actor = user.map_or("anonymous", |u| u.id.as_str());
    core.record_denial(
        Audit::new(
            actor,
            "request.denied",
            &format!("{} {}", target.method, target.path),
        )
        .module(target.module)
        .outcome("denied")
        .detail(&format!("{}: {why}", status.as_u16())),
    )
    .await;
    let mut resp = json_error(status, why);
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_extracted() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc.def"));
        assert_eq!(bearer(&h), Some("abc.def"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("bearer   xyz "));
        assert_eq!(bearer(&h), Some("xyz"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic dXNlcg=="));
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), None);
    }
}
