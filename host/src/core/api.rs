//! The core services' HTTP API under `/api/v1/auth`, `/identity`, `/authz` and `/audit`.
//!
//! [`ENDPOINTS`] is the single table of routes, their access rule and summary; dispatch,
//! enforcement and the OpenAPI document all read it.

use serde::Deserialize;
use serde_json::json;

use super::{audit::AuditFilter, AuthUser, Core, CoreError};

/// Who may call an endpoint (a core endpoint, a module route or an operations
/// endpoint alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access<'a> {
    /// Anyone.
    Public,
    /// Any valid token.
    Authenticated,
    /// A valid token holding this permission.
    Permission(&'a str),
}

/// The operations behind the endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Login,
    Refresh,
    Revoke,
    Me,
    CreateUser,
    ListUsers,
    GetUser,
    DisableUser,
    ListRoles,
    CreateRole,
    UpdateRole,
    DeleteRole,
    AssignRole,
    UnassignRole,
    Check,
    Permissions,
    Audit,
}

/// One core endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access<'static>,
    pub summary: &'static str,
    /// JSON body fields (name, type, required), for the OpenAPI document.
    pub body: &'static [(&'static str, &'static str, bool)],
    /// Query parameters (name, type), for the OpenAPI document.
    pub query: &'static [(&'static str, &'static str)],
    pub op: Op,
}

const fn ep(
    method: &'static str,
    path: &'static str,
    access: Access<'static>,
    summary: &'static str,
    body: &'static [(&'static str, &'static str, bool)],
    query: &'static [(&'static str, &'static str)],
    op: Op,
) -> Endpoint {
    Endpoint {
        method,
        path,
        access,
        summary,
        body,
        query,
        op,
    }
}

use Access::{Authenticated, Permission, Public};

/// Every core endpoint.
pub const ENDPOINTS: &[Endpoint] = &[
    ep(
        "POST",
        "/api/v1/auth/login",
        Public,
        "Log in with email and password; returns an access and a refresh token",
        &[("email", "string", true), ("password", "string", true)],
        &[],
        Op::Login,
    ),
    ep(
        "POST",
        "/api/v1/auth/refresh",
        Public,
        "Trade a refresh token for a new token pair",
        &[("refresh_token", "string", true)],
        &[],
        Op::Refresh,
    ),
    ep(
        "POST",
        "/api/v1/auth/revoke",
        Authenticated,
        "Revoke a token (default: the one presented)",
        &[("token", "string", false)],
        &[],
        Op::Revoke,
    ),
    ep(
        "GET",
        "/api/v1/auth/me",
        Authenticated,
        "The caller and their permissions",
        &[],
        &[],
        Op::Me,
    ),
    ep(
        "POST",
        "/api/v1/identity/users",
        Permission("core.user.create"),
        "Create a user",
        &[
            ("email", "string", true),
            ("password", "string", true),
            ("display_name", "string", false),
        ],
        &[],
        Op::CreateUser,
    ),
    ep(
        "GET",
        "/api/v1/identity/users",
        Permission("core.user.read"),
        "List users, or find one by email",
        &[],
        &[
            ("email", "string"),
            ("limit", "integer"),
            ("after", "string"),
        ],
        Op::ListUsers,
    ),
    ep(
        "GET",
        "/api/v1/identity/users/{id}",
        Permission("core.user.read"),
        "Get a user",
        &[],
        &[],
        Op::GetUser,
    ),
    ep(
        "POST",
        "/api/v1/identity/users/{id}/disable",
        Permission("core.user.disable"),
        "Disable a user; their tokens stop working",
        &[],
        &[],
        Op::DisableUser,
    ),
    ep(
        "GET",
        "/api/v1/authz/roles",
        Permission("core.role.read"),
        "List roles with their permissions",
        &[],
        &[],
        Op::ListRoles,
    ),
    ep(
        "POST",
        "/api/v1/authz/roles",
        Permission("core.role.write"),
        "Create a role",
        &[
            ("name", "string", true),
            ("description", "string", false),
            ("permissions", "array", true),
        ],
        &[],
        Op::CreateRole,
    ),
    ep(
        "PUT",
        "/api/v1/authz/roles/{name}",
        Permission("core.role.write"),
        "Replace a role's permissions",
        &[("permissions", "array", true)],
        &[],
        Op::UpdateRole,
    ),
    ep(
        "DELETE",
        "/api/v1/authz/roles/{name}",
        Permission("core.role.write"),
        "Delete a role",
        &[],
        &[],
        Op::DeleteRole,
    ),
    ep(
        "POST",
        "/api/v1/authz/users/{id}/roles",
        Permission("core.role.assign"),
        "Give a user a role",
        &[("role", "string", true)],
        &[],
        Op::AssignRole,
    ),
    ep(
        "DELETE",
        "/api/v1/authz/users/{id}/roles/{role}",
        Permission("core.role.assign"),
        "Take a role from a user",
        &[],
        &[],
        Op::UnassignRole,
    ),
    ep(
        "GET",
        "/api/v1/authz/check",
        Permission("core.role.read"),
        "Whether a user holds a permission",
        &[],
        &[("user_id", "string"), ("permission", "string")],
        Op::Check,
    ),
    ep(
        "GET",
        "/api/v1/authz/permissions",
        Permission("core.role.read"),
        "Every declared permission, by module",
        &[],
        &[],
        Op::Permissions,
    ),
    ep(
        "GET",
        "/api/v1/audit",
        Permission("core.audit.read"),
        "Query the audit log, newest first",
        &[],
        &[
            ("actor", "string"),
            ("module", "string"),
            ("action", "string"),
            ("outcome", "string"),
            ("since", "string"),
            ("until", "string"),
            ("before", "integer"),
            ("limit", "integer"),
        ],
        Op::Audit,
    ),
];

/// Module namespaces the core's API occupies.
pub const CORE_NAMESPACES: &[&str] = &["auth", "identity", "authz", "audit"];

/// A status and JSON body.
pub type Reply = (u16, serde_json::Value);

fn err(e: CoreError) -> Reply {
    (e.status(), json!({ "error": e.to_string() }))
}

fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Reply> {
    serde_json::from_slice(bytes)
        .map_err(|e| (400, json!({ "error": format!("invalid JSON body: {e}") })))
}

fn j<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> &'a str {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

fn query(pairs: &[(String, String)], name: &str) -> Option<String> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

fn query_int(pairs: &[(String, String)], name: &str) -> Result<Option<i64>, Reply> {
    query(pairs, name)
        .map(|v| {
            v.parse::<i64>().map_err(|_| {
                (
                    400,
                    json!({ "error": format!("{name} must be an integer") }),
                )
            })
        })
        .transpose()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    email: String,
    password: String,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Refresh {
    refresh_token: String,
}
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Revoke {
    token: Option<String>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    email: String,
    password: String,
    #[serde(default)]
    display_name: String,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRole {
    name: String,
    #[serde(default)]
    description: String,
    permissions: Vec<String>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RolePermissions {
    permissions: Vec<String>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Assign {
    role: String,
}

/// Runs an endpoint's operation. `user` is the authenticated caller (if any),
/// `bearer` the token presented.
pub async fn run(
    core: &Core,
    op: Op,
    params: &[(String, String)],
    query_pairs: &[(String, String)],
    bytes: &[u8],
    user: Option<&AuthUser>,
    bearer: Option<&str>,
) -> Reply {
    match run_inner(core, op, params, query_pairs, bytes, user, bearer).await {
        Ok(reply) => reply,
        Err(reply) => reply,
    }
}

async fn run_inner(
    core: &Core,
    op: Op,
    params: &[(String, String)],
    q: &[(String, String)],
    bytes: &[u8],
    user: Option<&AuthUser>,
    bearer: Option<&str>,
) -> Result<Reply, Reply> {
    let actor = user.map_or("anonymous", |u| u.id.as_str());
    let ok = |v: serde_json::Value| Ok((200, v));
    match op {
        Op::Login => {
            let b: Login = body(bytes)?;
            ok(j(&core.login(&b.email, &b.password).await.map_err(err)?))
        }
        Op::Refresh => {
            let b: Refresh = body(bytes)?;
            ok(j(&core.refresh(&b.refresh_token).await.map_err(err)?))
        }
        Op::Revoke => {
            let b: Revoke = if bytes.is_empty() {
                Revoke::default()
            } else {
                body(bytes)?
            };
            let Some(caller) = user else {
                return Err(err(CoreError::Unauthorized(
                    "authentication required".into(),
                )));
            };
            let token = b.token.as_deref().or(bearer).unwrap_or_default();
            core.revoke(caller, token).await.map_err(err)?;
            ok(json!({ "revoked": true }))
        }
        Op::Me => {
            let Some(u) = user else {
                return Err(err(CoreError::Unauthorized(
                    "authentication required".into(),
                )));
            };
            ok(
                json!({ "id": u.id, "email": u.email, "permissions": u.permissions, "expires_at": u.expires_at }),
            )
        }
        Op::CreateUser => {
            let b: NewUser = body(bytes)?;
            let created = core
                .create_user(actor, &b.email, &b.password, &b.display_name)
                .await
                .map_err(err)?;
            Ok((201, j(&created)))
        }
        Op::ListUsers => {
            if let Some(email) = query(q, "email") {
                return ok(j(&vec![core.find_by_email(&email).await.map_err(err)?]));
            }
            let limit = query_int(q, "limit")?.unwrap_or(100);
            ok(j(&core
                .list_users(limit, query(q, "after").as_deref())
                .await
                .map_err(err)?))
        }
        Op::GetUser => ok(j(&core.get_user(param(params, "id")).await.map_err(err)?)),
        Op::DisableUser => ok(j(&core
            .disable_user(actor, param(params, "id"))
            .await
            .map_err(err)?)),
        Op::ListRoles => ok(j(&core.roles().await.map_err(err)?)),
        Op::CreateRole => {
            let b: NewRole = body(bytes)?;
            let role = core
                .create_role(actor, &b.name, &b.description, &b.permissions)
                .await
                .map_err(err)?;
            Ok((201, j(&role)))
        }
        Op::UpdateRole => {
            let b: RolePermissions = body(bytes)?;
            ok(j(&core
                .set_role_permissions(actor, param(params, "name"), &b.permissions)
                .await
                .map_err(err)?))
        }
        Op::DeleteRole => {
            core.delete_role(actor, param(params, "name"))
                .await
                .map_err(err)?;
            ok(json!({ "deleted": param(params, "name") }))
        }
        Op::AssignRole => {
            let b: Assign = body(bytes)?;
            core.assign_role(actor, param(params, "id"), &b.role)
                .await
                .map_err(err)?;
            ok(json!({ "user_id": param(params, "id"), "role": b.role }))
        }
        Op::UnassignRole => {
            core.unassign_role(actor, param(params, "id"), param(params, "role"))
                .await
                .map_err(err)?;
            ok(json!({ "user_id": param(params, "id"), "removed": param(params, "role") }))
        }
        Op::Check => {
            let (Some(user_id), Some(permission)) = (query(q, "user_id"), query(q, "permission"))
            else {
                return Err((
                    400,
                    json!({ "error": "user_id and permission are required query parameters" }),
                ));
            };
            ok(
                json!({ "user_id": user_id, "permission": permission, "allowed": core.check(&user_id, &permission).await.map_err(err)? }),
            )
        }
        Op::Permissions => {
            let by_module = core
                .permissions
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .by_module();
            ok(j(&by_module))
        }
        Op::Audit => {
            let filter = AuditFilter {
                actor: query(q, "actor"),
                module: query(q, "module"),
                action: query(q, "action"),
                outcome: query(q, "outcome"),
                since: query(q, "since"),
                until: query(q, "until"),
                before: query_int(q, "before")?,
                limit: query_int(q, "limit")?,
            };
            ok(j(&core.audit_query(&filter).await.map_err(err)?))
        }
    }
}
