//! Identity: users, with argon2 password hashes.

use argon2::{
    password_hash::{phc::PasswordHash, PasswordHasher, PasswordVerifier},
    Argon2,
};
use modhost_plugin_api::{ffi::FfiValue, UserInfo};

use super::{as_int, as_text, audit::Audit, rows, text_param, Core, CoreError};

/// Longest email accepted.
const MAX_EMAIL: usize = 254;
/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 8;

const USER_COLUMNS: &str = "id, email, display_name, disabled, created_at";

fn user_from(row: &[FfiValue]) -> Result<UserInfo, CoreError> {
    Ok(UserInfo {
        id: as_text(&row[0])?,
        email: as_text(&row[1])?,
        display_name: as_text(&row[2])?,
        disabled: as_int(&row[3])? != 0,
        created_at: as_text(&row[4])?,
    })
}

/// Normalises and checks an email address.
fn normalize_email(email: &str) -> Result<String, CoreError> {
    let email = email.trim().to_lowercase();
    let valid = email.len() <= MAX_EMAIL
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Ok(email)
    } else {
        Err(CoreError::Invalid(format!(
            "`{email}` is not a valid email address"
        )))
    }
}

/// Hashes a password (argon2id, random salt) off the async threads.
async fn hash_password(password: String) -> Result<String, CoreError> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| CoreError::Invalid(format!("cannot hash the password: {e}")))
    })
    .await
    .map_err(|e| CoreError::Database(format!("password hashing task failed: {e}")))?
}

/// Checks a password against a stored hash off the async threads.
pub(super) async fn verify_password(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

impl Core {
    /// Creates a user. `actor` is who asks (for the audit log).
    pub async fn create_user(
        &self,
        actor: &str,
        email: &str,
        password: &str,
        display_name: &str,
    ) -> Result<UserInfo, CoreError> {
        let email = normalize_email(email)?;
        if password.chars().count() < MIN_PASSWORD {
            return Err(CoreError::Invalid(format!(
                "the password must have at least {MIN_PASSWORD} characters"
            )));
        }
        let hash = hash_password(password.to_string()).await?;
        let id = crate::random::random_hex(16);
        let created_at = super::now_rfc3339();
        let inserted = self
            .db
            .exec(
                "INSERT INTO users (id, email, display_name, password_hash, disabled, created_at) VALUES ($1, $2, $3, $4, 0, $5)",
                vec![text_param(&id), text_param(&email), text_param(display_name.trim()), text_param(&hash), text_param(&created_at)],
            )
            .await;
        match inserted {
            Ok(_) => {}
            Err(e) if e.kind == modhost_plugin_api::ffi::db_error::CONSTRAINT => {
                return Err(CoreError::Conflict(format!(
                    "a user with email {email} already exists"
                )))
            }
            Err(e) => return Err(e.into()),
        }
        self.record(Audit::new(actor, "identity.user.create", &id).detail(&email))
            .await;
        self.get_user(&id).await
    }

    /// The user with `id`.
    pub async fn get_user(&self, id: &str) -> Result<UserInfo, CoreError> {
        let found = rows(
            self.db
                .fetch(
                    &format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"),
                    vec![text_param(id)],
                )
                .await?,
        );
        match found.first() {
            Some(row) => user_from(row),
            None => Err(CoreError::NotFound(format!("no user with id {id}"))),
        }
    }

    /// The user with `email`.
    pub async fn find_by_email(&self, email: &str) -> Result<UserInfo, CoreError> {
        let email = email.trim().to_lowercase();
        let found = rows(
            self.db
                .fetch(
                    &format!("SELECT {USER_COLUMNS} FROM users WHERE email = $1"),
                    vec![text_param(&email)],
                )
                .await?,
        );
        match found.first() {
            Some(row) => user_from(row),
            None => Err(CoreError::NotFound(format!("no user with email {email}"))),
        }
    }

    /// Users ordered by id, after `after`, at most `limit` (1..=500).
    pub async fn list_users(
        &self,
        limit: i64,
        after: Option<&str>,
    ) -> Result<Vec<UserInfo>, CoreError> {
        if !(1..=500).contains(&limit) {
            return Err(CoreError::Invalid("limit must be 1 to 500".into()));
        }
        let found = rows(
            self.db
                .fetch(
                    &format!("SELECT {USER_COLUMNS} FROM users WHERE id > $1 ORDER BY id LIMIT $2"),
                    vec![text_param(after.unwrap_or("")), FfiValue::Int(limit)],
                )
                .await?,
        );
        found.iter().map(|r| user_from(r)).collect()
    }

    /// Disables a user: their tokens stop working at once.
    pub async fn disable_user(&self, actor: &str, id: &str) -> Result<UserInfo, CoreError> {
        let n = self
            .db
            .exec(
                "UPDATE users SET disabled = 1 WHERE id = $1",
                vec![text_param(id)],
            )
            .await?;
        if n == 0 {
            return Err(CoreError::NotFound(format!("no user with id {id}")));
        }
        self.invalidate();
        self.record(Audit::new(actor, "identity.user.disable", id))
            .await;
        self.get_user(id).await
    }

    /// The user and password hash for `email`, for login.
    pub(super) async fn credentials(
        &self,
        email: &str,
    ) -> Result<Option<(UserInfo, String)>, CoreError> {
        let email = email.trim().to_lowercase();
        let found = rows(
            self.db
                .fetch(
                    &format!("SELECT {USER_COLUMNS}, password_hash FROM users WHERE email = $1"),
                    vec![text_param(&email)],
                )
                .await?,
        );
        match found.first() {
            Some(row) => Ok(Some((user_from(row)?, as_text(&row[5])?))),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_email;

    #[test]
    fn emails() {
        assert_eq!(
            normalize_email(" Ada@Example.COM ").unwrap(),
            "ada@example.com"
        );
        for bad in ["", "ada", "@x.io", "ada@", "ada@x", "a b@x.io", "ada@.io"] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
    }
}
