//! Clients for the core services (auth, identity, authz, audit) and for calls to other
//! modules' services. They are interfaces over the host: today the services run inside
//! the host, later they may run elsewhere, and plugin code does not change.

use std::{fmt, time::Duration};

use abi_stable::std_types::RResult;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::json;

use crate::{
    error::PublicError,
    ffi::{call_error, FfiHostBox},
    Error, Response,
};

/// Default deadline of a call.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong with a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallErrorKind {
    /// No such service, or this module may not call it (declare the dependency).
    NotAllowed,
    /// The provider is not running.
    Unavailable,
    /// No answer within the timeout.
    Timeout,
    /// The request was refused as invalid.
    BadRequest,
    /// The item asked for does not exist.
    NotFound,
    /// The provider failed.
    Failed,
}

/// A failed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    pub kind: CallErrorKind,
    pub message: String,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "call failed ({:?}): {}", self.kind, self.message)
    }
}

impl std::error::Error for CallError {}

/// Keeps the response the call error gives, so `?` in a handler returning
/// [`crate::Result`] answers 404/400/503/504/500 as the call error would.
impl From<CallError> for Error {
    fn from(e: CallError) -> Self {
        let public = PublicError {
            status: e.status(),
            message: e.message.clone(),
            error_id: None,
        };
        Error::with_public(e.to_string(), public)
    }
}

/// 404, 400, 503, 504, or 500, by kind.
impl From<CallError> for Response {
    fn from(e: CallError) -> Self {
        Response::error(e.status(), e.message)
    }
}

/// Calls `service` with `request` as JSON and decodes the JSON answer.
pub(crate) async fn call_json<Req: Serialize, Resp: DeserializeOwned>(
    host: &FfiHostBox,
    service: &str,
    request: &Req,
    timeout: Duration,
) -> Result<Resp, CallError> {
    let body = serde_json::to_string(request).map_err(|e| CallError {
        kind: CallErrorKind::BadRequest,
        message: format!("request to {service} is not JSON: {e}"),
    })?;
    let millis = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    match host.call(service.into(), body.into(), millis).await {
        RResult::ROk(text) => serde_json::from_str(text.as_str()).map_err(|e| CallError {
            kind: CallErrorKind::Failed,
            message: format!("answer from {service} does not have the expected shape: {e}"),
        }),
        RResult::RErr(e) => Err(CallError::from_ffi(e)),
    }
}

impl CallError {
    /// An error of `kind` with `message`.
    pub fn new(kind: CallErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// The item asked for does not exist (404 when it ends a request).
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(CallErrorKind::NotFound, message)
    }

    /// The request was invalid (400).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(CallErrorKind::BadRequest, message)
    }

    /// The caller may not do this (500 when it ends a request: a declaration is missing).
    pub fn not_allowed(message: impl Into<String>) -> Self {
        Self::new(CallErrorKind::NotAllowed, message)
    }

    /// Something the provider needs is down; try later (503).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(CallErrorKind::Unavailable, message)
    }

    /// The provider failed (500).
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(CallErrorKind::Failed, message)
    }

    /// The HTTP status this error answers when it ends a request.
    pub fn status(&self) -> u16 {
        match self.kind {
            CallErrorKind::NotFound => 404,
            CallErrorKind::BadRequest => 400,
            CallErrorKind::Unavailable => 503,
            CallErrorKind::Timeout => 504,
            CallErrorKind::NotAllowed | CallErrorKind::Failed => 500,
        }
    }

    pub(crate) fn from_ffi(e: crate::ffi::FfiCallError) -> Self {
        let kind = match e.kind {
            call_error::NOT_ALLOWED => CallErrorKind::NotAllowed,
            call_error::UNAVAILABLE => CallErrorKind::Unavailable,
            call_error::TIMEOUT => CallErrorKind::Timeout,
            call_error::BAD_REQUEST => CallErrorKind::BadRequest,
            call_error::NOT_FOUND => CallErrorKind::NotFound,
            _ => CallErrorKind::Failed,
        };
        Self::new(kind, e.message.into_string())
    }

    pub(crate) fn to_ffi(&self) -> crate::ffi::FfiCallError {
        let kind = match self.kind {
            CallErrorKind::NotAllowed => call_error::NOT_ALLOWED,
            CallErrorKind::Unavailable => call_error::UNAVAILABLE,
            CallErrorKind::Timeout => call_error::TIMEOUT,
            CallErrorKind::BadRequest => call_error::BAD_REQUEST,
            CallErrorKind::NotFound => call_error::NOT_FOUND,
            CallErrorKind::Failed => call_error::FAILED,
        };
        crate::ffi::FfiCallError {
            kind,
            message: self.message.as_str().into(),
        }
    }
}

/// The error's public message when it has one (an error made from a database error
/// never carries the database's text across), else its message.
impl From<Error> for CallError {
    fn from(e: Error) -> Self {
        match e.public() {
            Some(p) => CallError::new(CallErrorKind::Failed, public_text(p)),
            None => CallError::new(CallErrorKind::Failed, e.message()),
        }
    }
}

/// A generic message with the error id: the calling module, and its client, never see
/// the database's text (the host logged it under that id).
impl From<crate::DbError> for CallError {
    fn from(e: crate::DbError) -> Self {
        let kind = match e.kind {
            crate::DbErrorKind::Unavailable => CallErrorKind::Unavailable,
            _ => CallErrorKind::Failed,
        };
        let error = Error::from(e);
        let message = error.public().map(public_text).unwrap_or_default();
        CallError::new(kind, message)
    }
}

fn public_text(p: &PublicError) -> String {
    match &p.error_id {
        Some(id) => format!("{} (error id {id})", p.message),
        None => p.message.clone(),
    }
}

/// A user as the identity service describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub id: String,
    pub email: String,
    pub display_name: String,
    pub disabled: bool,
    pub created_at: String,
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub user_id: String,
    pub email: String,
    /// Seconds since the Unix epoch.
    pub expires_at: i64,
    pub permissions: Vec<String>,
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    pub time: String,
    pub actor: String,
    pub module: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub detail: String,
}

/// Token validation.
#[derive(Clone)]
pub struct AuthClient {
    pub(crate) host: FfiHostBox,
}

impl AuthClient {
    /// Validates an access token (signature, expiry, revocation, user enabled).
    pub async fn validate_token(&self, token: &str) -> Result<TokenInfo, CallError> {
        call_json(
            &self.host,
            "core.auth.validate_token",
            &json!({ "token": token }),
            DEFAULT_CALL_TIMEOUT,
        )
        .await
    }
}

/// Read access to users.
#[derive(Clone)]
pub struct IdentityClient {
    pub(crate) host: FfiHostBox,
}

impl IdentityClient {
    /// The user with this id.
    pub async fn get_user(&self, id: &str) -> Result<UserInfo, CallError> {
        call_json(
            &self.host,
            "core.identity.get_user",
            &json!({ "id": id }),
            DEFAULT_CALL_TIMEOUT,
        )
        .await
    }

    /// The user with this email.
    pub async fn find_by_email(&self, email: &str) -> Result<UserInfo, CallError> {
        call_json(
            &self.host,
            "core.identity.find_by_email",
            &json!({ "email": email }),
            DEFAULT_CALL_TIMEOUT,
        )
        .await
    }

    /// Users ordered by id, after `after` (exclusive), at most `limit`.
    pub async fn list_users(
        &self,
        limit: u32,
        after: Option<&str>,
    ) -> Result<Vec<UserInfo>, CallError> {
        call_json(
            &self.host,
            "core.identity.list_users",
            &json!({ "limit": limit, "after": after }),
            DEFAULT_CALL_TIMEOUT,
        )
        .await
    }
}

/// Permission checks.
#[derive(Clone)]
pub struct AuthzClient {
    pub(crate) host: FfiHostBox,
}

impl AuthzClient {
    /// Whether the user holds `permission` (through any of their roles).
    pub async fn check(
        &self,
        user_id: &str,
        permission: impl AsRef<str>,
    ) -> Result<bool, CallError> {
        let r: serde_json::Value = call_json(
            &self.host,
            "core.authz.check",
            &json!({ "user_id": user_id, "permission": permission.as_ref() }),
            DEFAULT_CALL_TIMEOUT,
        )
        .await?;
        Ok(r["allowed"].as_bool().unwrap_or(false))
    }

    /// The permissions and patterns the user holds.
    pub async fn user_permissions(&self, user_id: &str) -> Result<Vec<String>, CallError> {
        call_json(
            &self.host,
            "core.authz.user_permissions",
            &json!({ "user_id": user_id }),
            DEFAULT_CALL_TIMEOUT,
        )
        .await
    }
}

/// The audit log: this module's entries.
#[derive(Clone)]
pub struct AuditClient {
    pub(crate) host: FfiHostBox,
}

impl AuditClient {
    /// Appends an entry; the host records this module as its source.
    pub async fn record(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        outcome: &str,
        detail: &str,
    ) -> Result<(), CallError> {
        let _: serde_json::Value = call_json(
            &self.host,
            "core.audit.record",
            &json!({ "actor": actor, "action": action, "target": target, "outcome": outcome, "detail": detail }),
            DEFAULT_CALL_TIMEOUT,
        )
        .await?;
        Ok(())
    }

    /// This module's entries, newest first, before entry `before` (exclusive).
    pub async fn query(
        &self,
        action: Option<&str>,
        limit: u32,
        before: Option<i64>,
    ) -> Result<Vec<AuditEntry>, CallError> {
        call_json(
            &self.host,
            "core.audit.query",
            &json!({ "action": action, "limit": limit, "before": before }),
            DEFAULT_CALL_TIMEOUT,
        )
        .await
    }
}
