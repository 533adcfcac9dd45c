//! Authz: roles (named sets of permissions and patterns), user-role assignments, and
//! `check(user, permission)`. Grants per user are cached in memory and dropped on every
//! change, so the request path reads no database.

use std::sync::Arc;

use modhost_plugin_api::{ffi::FfiValue, permission_matches};
use serde::Serialize;

use super::{as_int, as_text, audit::Audit, rows, text_param, CoreError, LocalCore};

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

/// The statements that give `role` each of `permissions` (once each).
fn permission_rows<'a>(
    role: &'a str,
    permissions: &'a [String],
) -> impl Iterator<Item = (&'static str, Vec<FfiValue>)> + 'a {
    let mut unique: Vec<&String> = permissions.iter().collect();
    unique.sort();
    unique.dedup();
    unique.into_iter().map(move |p| {
        (
            "INSERT INTO role_permissions (role, permission) VALUES ($1, $2)",
            vec![text_param(role), text_param(p)],
        )
    })
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

impl LocalCore {
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
                .fetch(
                    "SELECT builtin FROM roles WHERE name = $1",
                    vec![text_param(name)],
                )
                .await?,
        );
        found.first().map(|r| Ok(as_int(&r[0])? != 0)).transpose()
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
        let mut statements = vec![(
            "INSERT INTO roles (name, description, builtin) VALUES ($1, $2, 0)",
            vec![text_param(name), text_param(description)],
        )];
        statements.extend(permission_rows(name, permissions));
        self.db.exec_all(statements).await?;
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
        let mut statements = vec![(
            "DELETE FROM role_permissions WHERE role = $1",
            vec![text_param(name)],
        )];
        statements.extend(permission_rows(name, permissions));
        self.db.exec_all(statements).await?;
        self.invalidate();
        self.record(Audit::new(actor, "authz.role.update", name).detail(&permissions.join(",")))
            .await;
        self.role(name).await
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
            .exec_all(vec![
                (
                    "DELETE FROM user_roles WHERE role = $1",
                    vec![text_param(name)],
                ),
                (
                    "DELETE FROM role_permissions WHERE role = $1",
                    vec![text_param(name)],
                ),
                ("DELETE FROM roles WHERE name = $1", vec![text_param(name)]),
            ])
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
        let perms: Vec<(String, String)> = perms
            .iter()
            .map(|p| Ok((as_text(&p[0])?, as_text(&p[1])?)))
            .collect::<Result<_, CoreError>>()?;
        roles
            .iter()
            .map(|r| {
                let name = as_text(&r[0])?;
                Ok(RoleInfo {
                    permissions: perms
                        .iter()
                        .filter(|(role, _)| *role == name)
                        .map(|(_, permission)| permission.clone())
                        .collect(),
                    description: as_text(&r[1])?,
                    builtin: as_int(&r[2])? != 0,
                    name,
                })
            })
            .collect()
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
                    vec![text_param(user_id), text_param(role)],
                )
                .await?,
        );
        if has.is_empty() {
            self.db
                .exec(
                    "INSERT INTO user_roles (user_id, role) VALUES ($1, $2)",
                    vec![text_param(user_id), text_param(role)],
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
                vec![text_param(user_id), text_param(role)],
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

    /// The user's grants (cached; see [`GrantsCache`](super::GrantsCache) for why a
    /// result computed across an invalidation is returned but not cached).
    pub async fn grants(&self, user_id: &str) -> Result<Arc<Grants>, CoreError> {
        let generation = {
            let cache = self.grants.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(g) = cache.by_user.get(user_id) {
                return Ok(g.clone());
            }
            cache.generation
        };
        let grants = Arc::new(self.load_grants(user_id).await?);
        #[cfg(test)]
        self.pause_before_caching_grants().await;
        let mut cache = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        if cache.generation == generation {
            cache.by_user.insert(user_id.to_string(), grants.clone());
        }
        Ok(grants)
    }

    /// Reads the user's grants from the core area.
    async fn load_grants(&self, user_id: &str) -> Result<Grants, CoreError> {
        let user = self.get_user(user_id).await?;
        let roles = rows(
            self.db
                .fetch(
                    "SELECT role FROM user_roles WHERE user_id = $1 ORDER BY role",
                    vec![text_param(user_id)],
                )
                .await?,
        )
        .iter()
        .map(|r| as_text(&r[0]))
        .collect::<Result<Vec<_>, _>>()?;
        let mut permissions = rows(
            self.db
                .fetch(
                    "SELECT DISTINCT rp.permission FROM role_permissions rp JOIN user_roles ur ON ur.role = rp.role WHERE ur.user_id = $1",
                    vec![text_param(user_id)],
                )
                .await?,
        )
        .iter()
        .map(|r| as_text(&r[0]))
        .collect::<Result<Vec<_>, _>>()?;
        permissions.sort();
        Ok(Grants {
            email: user.email,
            disabled: user.disabled,
            roles,
            permissions,
        })
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

#[cfg(test)]
pub(super) mod tests {
    use std::{sync::Arc, time::Duration};

    use tokio::sync::Notify;

    use crate::{
        core::{AuthSettings, CoreError, LocalCore},
        data::database::{DatabaseSettings, Databases},
        module::permissions::PermissionRegistry,
    };

    /// A test's hold on `grants()` between its reads and its cache insert.
    #[derive(Default)]
    pub struct Pause {
        reached: Notify,
        resume: Notify,
    }

    impl LocalCore {
        pub(in crate::core) async fn pause_before_caching_grants(&self) {
            let pause = self
                .grants_pause
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(pause) = pause {
                pause.reached.notify_one();
                pause.resume.notified().await;
            }
        }
    }

    /// A core on a fresh SQLite area, with module `app`'s permissions registered.
    pub(in crate::core) async fn core(dir: &std::path::Path) -> LocalCore {
        let settings = DatabaseSettings {
            url: None,
            data_dir: dir.to_path_buf(),
            connect_timeout: Duration::from_secs(5),
            max_connections: 2,
            role_prefix: "modhost_".into(),
            shared: None,
        };
        let databases = Databases::connect(&settings).await.expect("sqlite opens");
        let mut registry = PermissionRegistry::default();
        let declared = ["app.doc.read", "app.doc.write", "app.doc.delete"];
        registry
            .register("app", declared.iter().map(|p| p.to_string()))
            .expect("no duplicates");
        let registry = Arc::new(std::sync::RwLock::new(registry));
        LocalCore::open(databases.core(), AuthSettings::default(), registry)
            .await
            .expect("core opens")
    }

    /// The embedded core behind its door ([`crate::core::Core`]), on a fresh SQLite area.
    pub(in crate::core) async fn facade(dir: &std::path::Path) -> crate::core::Core {
        let settings = DatabaseSettings {
            url: None,
            data_dir: dir.to_path_buf(),
            connect_timeout: Duration::from_secs(5),
            max_connections: 2,
            role_prefix: "modhost_".into(),
            shared: None,
        };
        let databases = Databases::connect(&settings).await.expect("sqlite opens");
        crate::core::Core::open(databases.core(), AuthSettings::default())
            .await
            .expect("core opens")
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|p| p.to_string()).collect()
    }

    /// A role narrowed while `grants()` is between its reads and its cache insert must
    /// not come back from the cache: the stale result may answer the request already in
    /// flight, never a later one.
    #[tokio::test]
    async fn a_role_narrowed_while_grants_are_read_is_not_undone_by_the_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let core = Arc::new(core(dir.path()).await);
        let user = core
            .create_user("test", "ada@example.com", "a long password", "Ada")
            .await
            .expect("user");
        core.create_role("test", "editor", "", &strings(&["app.doc.*"]))
            .await
            .expect("role");
        core.assign_role("test", &user.id, "editor")
            .await
            .expect("assign");

        let pause = Arc::new(super::tests::Pause::default());
        *core.grants_pause.lock().expect("lock") = Some(pause.clone());
        let reached = pause.reached.notified();
        let reader = {
            let (core, id) = (core.clone(), user.id.clone());
            tokio::spawn(async move { core.grants(&id).await })
        };
        tokio::time::timeout(Duration::from_secs(10), reached)
            .await
            .expect("grants() reached the pause");
        core.set_role_permissions("test", "editor", &strings(&["app.doc.read"]))
            .await
            .expect("narrow");
        pause.resume.notify_one();
        let in_flight = reader.await.expect("reader").expect("grants");
        assert!(
            in_flight.allows("app.doc.delete"),
            "the read began before the change, so it saw the old role"
        );

        let next = core.grants(&user.id).await.expect("grants");
        assert!(
            !next.allows("app.doc.delete"),
            "the narrowed role must apply to the next check, not the cached stale grants"
        );
        assert!(next.allows("app.doc.read"));
    }

    /// A role write that fails half-way leaves the role as it was.
    #[tokio::test]
    async fn a_failing_role_write_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let core = core(dir.path()).await;
        core.create_role("test", "editor", "", &strings(&["app.doc.read"]))
            .await
            .expect("role");
        // Make the second INSERT of the next write fail, as a full disk or a dropped
        // connection would.
        core.db
            .exec(
                "CREATE TRIGGER refuse_write_grant BEFORE INSERT ON role_permissions \
                 WHEN NEW.permission = 'app.doc.write' BEGIN SELECT RAISE(ABORT, 'refused'); END",
                vec![],
            )
            .await
            .expect("trigger");
        let result = core
            .set_role_permissions(
                "test",
                "editor",
                &strings(&["app.doc.delete", "app.doc.write"]),
            )
            .await;
        assert!(matches!(result, Err(CoreError::Database(_))), "{result:?}");
        let role = core.role("editor").await.expect("role");
        assert_eq!(role.permissions, strings(&["app.doc.read"]));

        let created = core
            .create_role("test", "writer", "", &strings(&["app.doc.write"]))
            .await;
        assert!(created.is_err(), "{created:?}");
        let found = core.role("writer").await;
        assert!(
            matches!(found, Err(CoreError::NotFound(_))),
            "a role whose permissions could not be written must not exist: {found:?}"
        );
    }

    /// A core row holding the wrong type is an error, not a silent "" or 0.
    #[tokio::test]
    async fn a_bad_value_in_the_core_area_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let core = core(dir.path()).await;
        core.db
            .exec(
                "INSERT INTO roles (name, description, builtin) VALUES ('odd', 'x', 'yes')",
                vec![],
            )
            .await
            .expect("insert");
        let roles = core.roles().await;
        assert!(matches!(roles, Err(CoreError::Database(_))), "{roles:?}");
    }
}
