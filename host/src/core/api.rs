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
    /// JSON body fields: name, JSON Schema (as JSON text), required. The schemas say
    /// exactly what the operation accepts: the OpenAPI document is built from them.
    pub body: &'static [Field],
    /// Query parameters: name, JSON Schema, required.
    pub query: &'static [Field],
    pub op: Op,
}

/// A body field or a query parameter: name, JSON Schema (JSON text), required.
pub type Field = (&'static str, &'static str, bool);

const fn endpoint(
    method: &'static str,
    path: &'static str,
    access: Access<'static>,
    summary: &'static str,
    body: &'static [Field],
    query: &'static [Field],
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

/// Schemas of what the operations accept (checked where the operations run).
mod schema {
    pub const TEXT: &str = r#"{"type":"string"}"#;
    /// What `identity::normalize_email` accepts.
    pub const EMAIL: &str = r#"{"type":"string","format":"email","maxLength":254}"#;
    /// `identity::MIN_PASSWORD` characters at least.
    pub const PASSWORD: &str = r#"{"type":"string","minLength":8}"#;
    /// What `authz::check_role_name` accepts.
    pub const ROLE: &str = r#"{"type":"string","pattern":"^[a-z][a-z0-9_]{0,63}$"}"#;
    /// Declared permissions and patterns: the `Grant` schema is made from the running
    /// modules' declarations.
    pub const GRANTS: &str = r##"{"type":"array","items":{"$ref":"#/components/schemas/Grant"}}"##;
    pub const INTEGER: &str = r#"{"type":"integer","format":"int64"}"#;
    pub const USER_LIMIT: &str = r#"{"type":"integer","minimum":1,"maximum":500}"#;
    pub const AUDIT_LIMIT: &str = r#"{"type":"integer","minimum":1,"maximum":1000}"#;
}

/// Path parameters whose values are constrained: (name, JSON Schema).
pub const PATH_PARAMS: &[(&str, &str)] = &[("name", schema::ROLE), ("role", schema::ROLE)];

use Access::{Authenticated, Permission, Public};

/// Every core endpoint.
pub const ENDPOINTS: &[Endpoint] = &[
    endpoint(
        "POST",
        "/api/v1/auth/login",
        Public,
        "Log in with email and password; returns an access and a refresh token",
        &[
            ("email", schema::TEXT, true),
            ("password", schema::TEXT, true),
        ],
        &[],
        Op::Login,
    ),
    endpoint(
        "POST",
        "/api/v1/auth/refresh",
        Public,
        "Trade a refresh token for a new token pair",
        &[("refresh_token", schema::TEXT, true)],
        &[],
        Op::Refresh,
    ),
    endpoint(
        "POST",
        "/api/v1/auth/revoke",
        Authenticated,
        "Revoke a token (default: the one presented)",
        &[("token", schema::TEXT, false)],
        &[],
        Op::Revoke,
    ),
    endpoint(
        "GET",
        "/api/v1/auth/me",
        Authenticated,
        "The caller and their permissions",
        &[],
        &[],
        Op::Me,
    ),
    endpoint(
        "POST",
        "/api/v1/identity/users",
        Permission("core.user.create"),
        "Create a user",
        &[
            ("email", schema::EMAIL, true),
            ("password", schema::PASSWORD, true),
            ("display_name", schema::TEXT, false),
        ],
        &[],
        Op::CreateUser,
    ),
    endpoint(
        "GET",
        "/api/v1/identity/users",
        Permission("core.user.read"),
        "List users, or find one by email",
        &[],
        &[
            ("email", schema::EMAIL, false),
            ("limit", schema::USER_LIMIT, false),
            ("after", schema::TEXT, false),
        ],
        Op::ListUsers,
    ),
    endpoint(
        "GET",
        "/api/v1/identity/users/{id}",
        Permission("core.user.read"),
        "Get a user",
        &[],
        &[],
        Op::GetUser,
    ),
    endpoint(
        "POST",
        "/api/v1/identity/users/{id}/disable",
        Permission("core.user.disable"),
        "Disable a user; their tokens stop working",
        &[],
        &[],
        Op::DisableUser,
    ),
    endpoint(
        "GET",
        "/api/v1/authz/roles",
        Permission("core.role.read"),
        "List roles with their permissions",
        &[],
        &[],
        Op::ListRoles,
    ),
    endpoint(
        "POST",
        "/api/v1/authz/roles",
        Permission("core.role.write"),
        "Create a role",
        &[
            ("name", schema::ROLE, true),
            ("description", schema::TEXT, false),
            ("permissions", schema::GRANTS, true),
        ],
        &[],
        Op::CreateRole,
    ),
    endpoint(
        "PUT",
        "/api/v1/authz/roles/{name}",
        Permission("core.role.write"),
        "Replace a role's permissions",
        &[("permissions", schema::GRANTS, true)],
        &[],
        Op::UpdateRole,
    ),
    endpoint(
        "DELETE",
        "/api/v1/authz/roles/{name}",
        Permission("core.role.write"),
        "Delete a role",
        &[],
        &[],
        Op::DeleteRole,
    ),
    endpoint(
        "POST",
        "/api/v1/authz/users/{id}/roles",
        Permission("core.role.assign"),
        "Give a user a role",
        &[("role", schema::ROLE, true)],
        &[],
        Op::AssignRole,
    ),
    endpoint(
        "DELETE",
        "/api/v1/authz/users/{id}/roles/{role}",
        Permission("core.role.assign"),
        "Take a role from a user",
        &[],
        &[],
        Op::UnassignRole,
    ),
    endpoint(
        "GET",
        "/api/v1/authz/check",
        Permission("core.role.read"),
        "Whether a user holds a permission",
        &[],
        &[
            ("user_id", schema::TEXT, true),
            ("permission", schema::TEXT, true),
        ],
        Op::Check,
    ),
    endpoint(
        "GET",
        "/api/v1/authz/permissions",
        Permission("core.role.read"),
        "Every declared permission, by module",
        &[],
        &[],
        Op::Permissions,
    ),
    endpoint(
        "GET",
        "/api/v1/audit",
        Permission("core.audit.read"),
        "Query the audit log, newest first",
        &[],
        &[
            ("actor", schema::TEXT, false),
            ("module", schema::TEXT, false),
            ("action", schema::TEXT, false),
            ("outcome", schema::TEXT, false),
            ("since", schema::TEXT, false),
            ("until", schema::TEXT, false),
            ("before", schema::INTEGER, false),
            ("limit", schema::AUDIT_LIMIT, false),
        ],
        Op::Audit,
    ),
];

/// Module namespaces the core's API occupies.
pub const CORE_NAMESPACES: &[&str] = &["auth", "identity", "authz", "audit"];

/// A status and JSON body.
pub type Reply = (u16, serde_json::Value);

fn error_reply(e: CoreError) -> Reply {
    (e.status(), json!({ "error": e.to_string() }))
}

/// An operation handed to the wrong service's function: a bug in [`run`], answered as
/// a 500 rather than running some other operation.
fn misrouted(op: Op) -> Reply {
    tracing::error!(?op, "core operation routed to the wrong service");
    (
        500,
        json!({ "error": "internal error: operation misrouted" }),
    )
}

fn bad_request(message: &str) -> Reply {
    (400, json!({ "error": message }))
}

fn to_json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

/// What an endpoint's operation gets from its request.
pub struct CoreRequest<'a> {
    /// Path parameters.
    pub params: &'a [(String, String)],
    /// Decoded query pairs.
    pub query: &'a [(String, String)],
    pub body: &'a [u8],
    /// The authenticated caller, if any.
    pub user: Option<&'a AuthUser>,
    /// The token presented, if any.
    pub bearer: Option<&'a str>,
}

impl CoreRequest<'_> {
    fn param(&self, name: &str) -> &str {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }

    fn query(&self, name: &str) -> Option<String> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    fn query_int(&self, name: &str) -> Result<Option<i64>, Reply> {
        self.query(name)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| bad_request(&format!("{name} must be an integer")))
            })
            .transpose()
    }

    fn body<T: serde::de::DeserializeOwned>(&self) -> Result<T, Reply> {
        serde_json::from_slice(self.body)
            .map_err(|e| bad_request(&format!("invalid JSON body: {e}")))
    }

    /// Who acts, for the audit log.
    fn actor(&self) -> &str {
        self.user.map_or("anonymous", |u| u.id.as_str())
    }

    fn caller(&self) -> Result<&AuthUser, Reply> {
        self.user
            .ok_or_else(|| error_reply(CoreError::Unauthorized("authentication required".into())))
    }
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

/// Runs an endpoint's operation.
pub async fn run(core: &Core, op: Op, req: &CoreRequest<'_>) -> Reply {
    let result = match op {
        Op::Login | Op::Refresh | Op::Revoke | Op::Me => auth(core, op, req).await,
        Op::CreateUser | Op::ListUsers | Op::GetUser | Op::DisableUser => {
            identity(core, op, req).await
        }
        Op::ListRoles
        | Op::CreateRole
        | Op::UpdateRole
        | Op::DeleteRole
        | Op::AssignRole
        | Op::UnassignRole
        | Op::Check
        | Op::Permissions => authz(core, op, req).await,
        Op::Audit => audit(core, req).await,
    };
    result.unwrap_or_else(|reply| reply)
}

async fn auth(core: &Core, op: Op, req: &CoreRequest<'_>) -> Result<Reply, Reply> {
    match op {
        Op::Login => {
            let login: Login = req.body()?;
            let pair = core.login(&login.email, &login.password).await;
            Ok((200, to_json(&pair.map_err(error_reply)?)))
        }
        Op::Refresh => {
            let refresh: Refresh = req.body()?;
            let pair = core.refresh(&refresh.refresh_token).await;
            Ok((200, to_json(&pair.map_err(error_reply)?)))
        }
        Op::Revoke => {
            let revoke: Revoke = match req.body.is_empty() {
                true => Revoke::default(),
                false => req.body()?,
            };
            let caller = req.caller()?;
            let token = revoke.token.as_deref().or(req.bearer).unwrap_or_default();
            let actor_token = req.bearer.unwrap_or_default();
            core.revoke(caller, actor_token, token)
                .await
                .map_err(error_reply)?;
            Ok((200, json!({ "revoked": true })))
        }
        Op::Me => {
            let u = req.caller()?;
            Ok((
                200,
                json!({ "id": u.id, "email": u.email, "permissions": u.permissions, "expires_at": u.expires_at }),
            ))
        }
        other => Err(misrouted(other)),
    }
}

async fn identity(core: &Core, op: Op, req: &CoreRequest<'_>) -> Result<Reply, Reply> {
    let id = req.param("id");
    let found = match op {
        Op::CreateUser => {
            let user: NewUser = req.body()?;
            let created = core
                .create_user(req.actor(), &user.email, &user.password, &user.display_name)
                .await
                .map_err(error_reply)?;
            return Ok((201, to_json(&created)));
        }
        Op::ListUsers => match req.query("email") {
            Some(email) => core.find_by_email(&email).await.map(|u| vec![u]),
            None => {
                let limit = req.query_int("limit")?.unwrap_or(100);
                let after = req.query("after");
                core.list_users(limit, after.as_deref()).await
            }
        }
        .map(|users| to_json(&users)),
        Op::GetUser => core.get_user(id).await.map(|u| to_json(&u)),
        Op::DisableUser => core
            .disable_user(req.actor(), id)
            .await
            .map(|u| to_json(&u)),
        other => return Err(misrouted(other)),
    };
    Ok((200, found.map_err(error_reply)?))
}

async fn authz(core: &Core, op: Op, req: &CoreRequest<'_>) -> Result<Reply, Reply> {
    let actor = req.actor();
    let value = match op {
        Op::ListRoles => to_json(&core.roles().await.map_err(error_reply)?),
        Op::CreateRole => {
            let role: NewRole = req.body()?;
            let created = core
                .create_role(actor, &role.name, &role.description, &role.permissions)
                .await
                .map_err(error_reply)?;
            return Ok((201, to_json(&created)));
        }
        Op::UpdateRole => {
            let update: RolePermissions = req.body()?;
            let name = req.param("name");
            let role = core
                .set_role_permissions(actor, name, &update.permissions)
                .await;
            to_json(&role.map_err(error_reply)?)
        }
        Op::DeleteRole => {
            let name = req.param("name");
            core.delete_role(actor, name).await.map_err(error_reply)?;
            json!({ "deleted": name })
        }
        Op::AssignRole => {
            let assign: Assign = req.body()?;
            let user_id = req.param("id");
            core.assign_role(actor, user_id, &assign.role)
                .await
                .map_err(error_reply)?;
            json!({ "user_id": user_id, "role": assign.role })
        }
        Op::UnassignRole => {
            let (user_id, role) = (req.param("id"), req.param("role"));
            core.unassign_role(actor, user_id, role)
                .await
                .map_err(error_reply)?;
            json!({ "user_id": user_id, "removed": role })
        }
        Op::Check => {
            let (Some(user_id), Some(permission)) = (req.query("user_id"), req.query("permission"))
            else {
                return Err(bad_request(
                    "user_id and permission are required query parameters",
                ));
            };
            let allowed = core
                .check(&user_id, &permission)
                .await
                .map_err(error_reply)?;
            json!({ "user_id": user_id, "permission": permission, "allowed": allowed })
        }
        Op::Permissions => to_json(&core.declared_permissions().await.map_err(error_reply)?),
        other => return Err(misrouted(other)),
    };
    Ok((200, value))
}

async fn audit(core: &Core, req: &CoreRequest<'_>) -> Result<Reply, Reply> {
    let filter = AuditFilter {
        actor: req.query("actor"),
        module: req.query("module"),
        action: req.query("action"),
        outcome: req.query("outcome"),
        since: req.query("since"),
        until: req.query("until"),
        before: req.query_int("before")?,
        limit: req.query_int("limit")?,
    };
    let entries = core.audit_query(&filter).await.map_err(error_reply)?;
    Ok((200, to_json(&entries)))
}
