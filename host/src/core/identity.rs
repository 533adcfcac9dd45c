//! Identity: users, with argon2 password hashes.

use argon2::{
    password_hash::{phc::PasswordHash, PasswordHasher, PasswordVerifier},
    Argon2,
};
use modhost_plugin_api::{ffi::FfiValue, UserInfo};

use super::{as_int, as_text, audit::Audit, rows, text_param, CoreError, LocalCore};

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

/// Argon2 hashes running at once: one per CPU. Each takes about 19 MiB and a core's worth
/// of work, so a flood of logins queues here instead of exhausting memory and the
/// blocking thread pool.
fn hashing_slots() -> &'static std::sync::Arc<tokio::sync::Semaphore> {
    static SLOTS: std::sync::OnceLock<std::sync::Arc<tokio::sync::Semaphore>> =
        std::sync::OnceLock::new();
    SLOTS.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::sync::Arc::new(tokio::sync::Semaphore::new(cpus))
    })
}

/// Runs one Argon2 computation on a blocking thread, within [`hashing_slots`].
async fn with_hashing_slot<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, CoreError> {
    // The permit moves into the blocking task: a caller that goes away (a client that
    // disconnects) does not free the slot while the hash still runs.
    let slot = hashing_slots()
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| CoreError::Database(format!("password hashing is unavailable: {e}")))?;
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        #[cfg(test)]
        let _running = tests::Running::enter();
        work()
    })
    .await
    .map_err(|e| CoreError::Database(format!("password hashing task failed: {e}")))
}

/// Hashes a password (argon2id, random salt) off the async threads.
async fn hash_password(password: String) -> Result<String, CoreError> {
    with_hashing_slot(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| CoreError::Invalid(format!("cannot hash the password: {e}")))
    })
    .await?
}

/// Checks a password against a stored hash off the async threads.
pub(super) async fn verify_password(password: String, hash: String) -> bool {
    with_hashing_slot(move || {
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

impl LocalCore {
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::{hash_password, hashing_slots, normalize_email, verify_password};

    static RUNNING: AtomicUsize = AtomicUsize::new(0);
    static PEAK: AtomicUsize = AtomicUsize::new(0);

    /// Counts an Argon2 computation while it runs, and the most ever seen at once.
    pub(super) struct Running;

    impl Running {
        pub(super) fn enter() -> Self {
            let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
            PEAK.fetch_max(now, Ordering::SeqCst);
            Running
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            RUNNING.fetch_sub(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn password_hashing_runs_at_most_one_per_cpu_at_once() {
        let limit = hashing_slots().available_permits();
        let hash = hash_password("a long password".into()).await.unwrap();
        let tasks: Vec<_> = (0..4 * limit + 4)
            .map(|i| {
                let hash = hash.clone();
                tokio::spawn(async move {
                    let guess = if i % 2 == 0 {
                        "a long password"
                    } else {
                        "wrong"
                    };
                    verify_password(guess.into(), hash).await == (i % 2 == 0)
                })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap(), "a verification gave the wrong answer");
        }
        let peak = PEAK.load(Ordering::SeqCst);
        assert!(peak >= 1, "no hashing was observed");
        assert!(
            peak <= limit,
            "{peak} hashes ran at once; the limit is {limit}"
        );
    }

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
