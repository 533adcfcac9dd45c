//! Authz: roles (named sets of permissions and patterns), user-role assignments, and
//! `check(user, permission)`. Grants per user are cached in memory and dropped on every
//! change, so the request path reads no database.

use std::sync::Arc;

use modhost_plugin_api::permission_matches;
use serde::Serialize;

use super::{audit::Audit, int, rows, t, text, Core, CoreError};

/// What a user may do, as cached for the request path.
#[derive(Debug, Clone)]
pub struct Grants {
    pub email: String,
    pub disabled: bool,
    pub roles: Vec<String>,
    /// Permissions and patterns from all the user's roles.
    pub permissions: Vec<String>,
}

impl Grants {
    /// Whether these grants cover `permission`.
    pub fn allows(&self, permission: &str) -> bool {
        !self.disabled
            && self
                .permissions
                .iter()
                .any(|p| permission_matches(p, permission))
    }
}

/// A role as listed by the API.
#[derive(Debug, Clone, Serialize)]
pub struct RoleInfo {
    pub name: String,
    pub description: String,
    pub builtin: bool,
    pub permissions: Vec<String>,
}

fn check_role_name(name: &str) -> Result<(), CoreError> {
    let ok = name.len() <= 64
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(CoreError::Invalid(format!(
            "invalid role name `{name}`: use a lower-case letter, then a-z, 0-9 or _"
        )))
    }
}

impl Core {
    fn validate_grants(&self, permissions: &[String]) -> Result<(), CoreError> {
        let registry = self.permissions.read().unwrap_or_else(|p| p.into_inner());
        for p in permissions {
            registry.validate_grant(p).map_err(CoreError::Invalid)?;
        }
        Ok(())
    }

    async fn role_exists(&self, name: &str) -> Result<Option<bool>, CoreError> {
        let found = rows(
            self.db
                .fetch("SELECT builtin FROM roles WHERE name = $1", vec![t(name)])
                .await?,
        );
        Ok(found.first().map(|r| int(&r[0]) != 0))
    }

    /// Creates a role.
    pub async fn create_role(
        &self,
        actor: &str,
        name: &str,
        description: &str,
        permissions: &[String],
    ) -> Result<RoleInfo, CoreError> {
        check_role_name(name)?;
        self.validate_grants(permissions)?;
        if self.role_exists(name).await?.is_some() {
            return Err(CoreError::Conflict(format!("role `{name}` already exists")));
        }
        self.db
            .exec(
                "INSERT INTO roles (name, description, builtin) VALUES ($1, $2, 0)",
                vec![t(name), t(description)],
            )
            .await?;
        self.write_permissions(name, permissions).await?;
        self.invalidate();
        self.record(Audit::new(actor, "authz.role.create", name).detail(&permissions.join(",")))
            .await;
        self.role(name).await
    }

    /// Replaces a role's permissions.
    pub async fn set_role_permissions(
        &self,
        actor: &str,
        name: &str,
        permissions: &[String],
    ) -> Result<RoleInfo, CoreError> {
        self.validate_grants(permissions)?;
        match self.role_exists(name).await? {
            None => return Err(CoreError::NotFound(format!("no role `{name}`"))),
            Some(true) => {
                return Err(CoreError::Forbidden(format!(
                    "role `{name}` is built in and cannot be changed"
                )))
            }
            Some(false) => {}
        }
        self.db
            .exec(
                "DELETE FROM role_permissions WHERE role = $1",
                vec![t(name)],
            )
            .await?;
        self.write_permissions(name, permissions).await?;
        self.invalidate();
        self.record(Audit::new(actor, "authz.role.update", name).detail(&permissions.join(",")))
            .await;
        self.role(name).await
    }

    async fn write_permissions(&self, role: &str, permissions: &[String]) -> Result<(), CoreError> {
        let mut unique: Vec<&String> = permissions.iter().collect();
        unique.sort();
        unique.dedup();
        for p in unique {
            self.db
                .exec(
                    "INSERT INTO role_permissions (role, permission) VALUES ($1, $2)",
                    vec![t(role), t(p)],
                )
                .await?;
        }
        Ok(())
    }

    /// Deletes a role (and its assignments).
    pub async fn delete_role(&self, actor: &str, name: &str) -> Result<(), CoreError> {
        match self.role_exists(name).await? {
            None => return Err(CoreError::NotFound(format!("no role `{name}`"))),
            Some(true) => {
                return Err(CoreError::Forbidden(format!(
                    "role `{name}` is built in and cannot be deleted"
                )))
            }
            Some(false) => {}
        }
        self.db
            .exec("DELETE FROM user_roles WHERE role = $1", vec![t(name)])
            .await?;
        self.db
            .exec(
                "DELETE FROM role_permissions WHERE role = $1",
                vec![t(name)],
            )
            .await?;
        self.db
            .exec("DELETE FROM roles WHERE name = $1", vec![t(name)])
            .await?;
        self.invalidate();
        self.record(Audit::new(actor, "authz.role.delete", name))
            .await;
        Ok(())
    }

    /// One role.
    pub async fn role(&self, name: &str) -> Result<RoleInfo, CoreError> {
        self.roles()
            .await?
            .into_iter()
            .find(|r| r.name == name)
            .ok_or_else(|| CoreError::NotFound(format!("no role `{name}`")))
    }

    /// Every role, by name.
    pub async fn roles(&self) -> Result<Vec<RoleInfo>, CoreError> {
        let roles = rows(
            self.db
                .fetch(
                    "SELECT name, description, builtin FROM roles ORDER BY name",
                    vec![],
                )
                .await?,
        );
        let perms = rows(
            self.db
                .fetch(
                    "SELECT role, permission FROM role_permissions ORDER BY role, permission",
                    vec![],
                )
                .await?,
        );
        Ok(roles
            .iter()
            .map(|r| {
                let name = text(&r[0]);
                RoleInfo {
                    permissions: perms
                        .iter()
                        .filter(|p| text(&p[0]) == name)
                        .map(|p| text(&p[1]))
                        .collect(),
                    description: text(&r[1]),
                    builtin: int(&r[2]) != 0,
                    name,
                }
            })
            .collect())
    }

    /// Gives `user_id` the role `role`.
    pub async fn assign_role(
        &self,
        actor: &str,
        user_id: &str,
        role: &str,
    ) -> Result<(), CoreError> {
        self.get_user(user_id).await?;
        if self.role_exists(role).await?.is_none() {
            return Err(CoreError::NotFound(format!("no role `{role}`")));
        }
        let has = rows(
            self.db
                .fetch(
                    "SELECT 1 FROM user_roles WHERE user_id = $1 AND role = $2",
                    vec![t(user_id), t(role)],
                )
                .await?,
        );
        if has.is_empty() {
            self.db
                .exec(
                    "INSERT INTO user_roles (user_id, role) VALUES ($1, $2)",
                    vec![t(user_id), t(role)],
                )
                .await?;
        }
        self.invalidate();
        self.record(Audit::new(actor, "authz.role.assign", user_id).detail(role))
            .await;
        Ok(())
    }

    /// Takes the role `role` from `user_id`.
    pub async fn unassign_role(
        &self,
        actor: &str,
        user_id: &str,
        role: &str,
    ) -> Result<(), CoreError> {
        let n = self
            .db
            .exec(
                "DELETE FROM user_roles WHERE user_id = $1 AND role = $2",
                vec![t(user_id), t(role)],
            )
            .await?;
        if n == 0 {
            return Err(CoreError::NotFound(format!(
                "user {user_id} does not have role `{role}`"
            )));
        }
        self.invalidate();
        self.record(Audit::new(actor, "authz.role.unassign", user_id).detail(role))
            .await;
        Ok(())
    }

    /// The user's grants (cached).
    pub async fn grants(&self, user_id: &str) -> Result<Arc<Grants>, CoreError> {
        if let Some(g) = self
            .grants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(user_id)
        {
            return Ok(g.clone());
        }
        let user = self.get_user(user_id).await?;
        let roles: Vec<String> = rows(
            self.db
                .fetch(
                    "SELECT role FROM user_roles WHERE user_id = $1 ORDER BY role",
                    vec![t(user_id)],
                )
                .await?,
        )
        .iter()
        .map(|r| text(&r[0]))
        .collect();
        let mut permissions: Vec<String> = rows(
            self.db
                .fetch(
                    "SELECT DISTINCT rp.permission FROM role_permissions rp JOIN user_roles ur ON ur.role = rp.role WHERE ur.user_id = $1",
                    vec![t(user_id)],
                )
                .await?,
        )
        .iter()
        .map(|r| text(&r[0]))
        .collect();
        permissions.sort();
        let grants = Arc::new(Grants {
            email: user.email,
            disabled: user.disabled,
            roles,
            permissions,
        });
        self.grants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(user_id.to_string(), grants.clone());
        Ok(grants)
    }

    /// Whether `user_id` holds `permission`. Unknown and disabled users hold nothing.
    pub async fn check(&self, user_id: &str, permission: &str) -> Result<bool, CoreError> {
        match self.grants(user_id).await {
            Ok(g) => Ok(g.allows(permission)),
            Err(CoreError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
