//! The core services as modules reach them: JSON requests to `core.<service>.<method>`
//! through their host handle. Modules get read access to users and permissions, token
//! validation, and the audit log for their own entries; changes to users and roles go
//! through the HTTP API, which checks the caller's permissions.

use modhost_plugin_api::{ffi::call_error, TokenInfo};
use serde::{de::DeserializeOwned, Deserialize};
use serde_json::json;

use super::{
    audit::{Audit, AuditFilter},
    Core, CoreError,
};

/// A failed call: a kind from `call_error` and a message.
pub use crate::services::CallFailure;

fn parse<T: DeserializeOwned>(service: &str, request: &str) -> Result<T, CallFailure> {
    serde_json::from_str(request).map_err(|e| {
        (
            call_error::BAD_REQUEST,
            format!("{service}: invalid request: {e}"),
        )
    })
}

fn failure(e: CoreError) -> CallFailure {
    let kind = match e {
        CoreError::NotFound(_) => call_error::NOT_FOUND,
        CoreError::Invalid(_) | CoreError::Unauthorized(_) => call_error::BAD_REQUEST,
        CoreError::Forbidden(_) => call_error::NOT_ALLOWED,
        CoreError::Conflict(_) => call_error::FAILED,
        CoreError::Database(_) | CoreError::Unavailable(_) => call_error::UNAVAILABLE,
    };
    (kind, e.to_string())
}

fn reply<T: serde::Serialize>(v: T) -> Result<String, CallFailure> {
    serde_json::to_string(&v).map_err(|e| (call_error::FAILED, e.to_string()))
}

#[derive(Deserialize)]
struct Token {
    token: String,
}
#[derive(Deserialize)]
struct Id {
    id: String,
}
#[derive(Deserialize)]
struct Email {
    email: String,
}
#[derive(Deserialize)]
struct List {
    limit: Option<i64>,
    after: Option<String>,
}
#[derive(Deserialize)]
struct Check {
    user_id: String,
    permission: String,
}
#[derive(Deserialize)]
struct UserId {
    user_id: String,
}
#[derive(Deserialize)]
struct Record {
    actor: String,
    action: String,
    target: String,
    outcome: String,
    #[serde(default)]
    detail: String,
}
#[derive(Deserialize)]
struct Query {
    action: Option<String>,
    limit: Option<i64>,
    before: Option<i64>,
}

impl Core {
    /// Runs `service` (a `core.*` name) for module `caller`.
    pub async fn call_for_module(
        &self,
        caller: &str,
        service: &str,
        request: &str,
    ) -> Result<String, CallFailure> {
        match service {
            "core.auth.validate_token" => {
                let r: Token = parse(service, request)?;
                let user = self.authenticate(&r.token).await.map_err(failure)?;
                reply(TokenInfo {
                    user_id: user.id,
                    email: user.email,
                    expires_at: user.expires_at,
                    permissions: user.permissions,
                })
            }
            "core.identity.get_user" => {
                let r: Id = parse(service, request)?;
                reply(self.get_user(&r.id).await.map_err(failure)?)
            }
            "core.identity.find_by_email" => {
                let r: Email = parse(service, request)?;
                reply(self.find_by_email(&r.email).await.map_err(failure)?)
            }
            "core.identity.list_users" => {
                let r: List = parse(service, request)?;
                reply(self.list_users(r.limit.unwrap_or(100), r.after.as_deref()).await.map_err(failure)?)
            }
            "core.authz.check" => {
                let r: Check = parse(service, request)?;
                reply(json!({ "allowed": self.check(&r.user_id, &r.permission).await.map_err(failure)? }))
            }
            "core.authz.user_permissions" => {
                let r: UserId = parse(service, request)?;
                match self.grants(&r.user_id).await {
                    Ok(g) if !g.disabled => reply(&g.permissions),
                    Ok(_) => reply(Vec::<String>::new()),
                    Err(e) => Err(failure(e)),
                }
            }
            "core.audit.record" => {
                let r: Record = parse(service, request)?;
                if !["success", "denied", "failure"].contains(&r.outcome.as_str()) {
                    return Err((call_error::BAD_REQUEST, "outcome must be success, denied or failure".into()));
                }
                self.record(Audit::new(&r.actor, &r.action, &r.target).module(caller).outcome(&r.outcome).detail(&r.detail)).await;
                reply(json!({}))
            }
            "core.audit.query" => {
                let r: Query = parse(service, request)?;
                let filter = AuditFilter {
                    module: Some(caller.to_string()),
                    action: r.action,
                    before: r.before,
                    limit: r.limit,
                    ..AuditFilter::default()
                };
                reply(self.audit_query(&filter).await.map_err(failure)?)
            }
            other => Err((
                call_error::NOT_ALLOWED,
                format!("unknown core service `{other}`; modules may call core.auth.validate_token, core.identity.get_user|find_by_email|list_users, core.authz.check|user_permissions, core.audit.record|query"),
            )),
        }
    }
}
