//! Auth: login (email and password to a token pair), refresh, revocation, and
//! authenticating a request's bearer token.

use std::{sync::Arc, time::Duration};

use modhost_plugin_api::ffi::FfiValue;
use serde::Serialize;

use super::{
    audit::Audit,
    identity::verify_password,
    now_secs, text_param,
    tokens::{Claims, TokenError},
    CoreError, LocalCore,
};

/// The subject of operator tokens minted by `modhost admin token`.
pub const CONSOLE_SUBJECT: &str = "console";

/// What a login or refresh returns.
#[derive(Debug, Clone, Serialize)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: i64,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser {
    pub id: String,
    pub email: String,
    pub permissions: Vec<String>,
    pub expires_at: i64,
    pub jti: String,
}

impl AuthUser {
    /// Whether the caller holds `permission`.
    pub fn allows(&self, permission: &str) -> bool {
        self.permissions
            .iter()
            .any(|p| modhost_plugin_api::permission_matches(p, permission))
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl LocalCore {
    fn claims(&self, sub: &str, email: &str, typ: &str, ttl: Duration) -> Claims {
        let now = now_secs();
        Claims {
            iss: "modhost".into(),
            sub: sub.to_string(),
            email: email.to_string(),
            iat: now,
            exp: now.saturating_add(secs(ttl)),
            jti: crate::random::random_hex(16),
            typ: typ.to_string(),
        }
    }

    fn pair(&self, user_id: &str, email: &str) -> TokenPair {
        let access = self.claims(user_id, email, "access", self.settings.access_ttl);
        let refresh = self.claims(user_id, email, "refresh", self.settings.refresh_ttl);
        TokenPair {
            access_token: self.sign(&access),
            refresh_token: self.sign(&refresh),
            token_type: "Bearer",
            expires_in: secs(self.settings.access_ttl),
        }
    }

    /// Email and password to a token pair. Every attempt is audited.
    pub async fn login(&self, email: &str, password: &str) -> Result<TokenPair, CoreError> {
        let refused = || CoreError::Unauthorized("wrong email or password".into());
        let found = self.credentials(email).await?;
        let Some((user, hash)) = found else {
            // Same work as a real check, so timing does not reveal which emails exist.
            let _ = verify_password(password.to_string(), DUMMY_HASH.to_string()).await;
            self.record(
                Audit::new(email, "auth.login", email)
                    .outcome("failure")
                    .detail("unknown email"),
            )
            .await;
            return Err(refused());
        };
        if !verify_password(password.to_string(), hash).await {
            self.record(
                Audit::new(&user.id, "auth.login", &user.id)
                    .outcome("failure")
                    .detail("wrong password"),
            )
            .await;
            return Err(refused());
        }
        if user.disabled {
            self.record(
                Audit::new(&user.id, "auth.login", &user.id)
                    .outcome("failure")
                    .detail("user disabled"),
            )
            .await;
            return Err(CoreError::Unauthorized("this user is disabled".into()));
        }
        self.record(Audit::new(&user.id, "auth.login", &user.id))
            .await;
        Ok(self.pair(&user.id, &user.email))
    }

    /// A refresh token to a new pair; the refresh token used is revoked.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, CoreError> {
        let claims = self.verify(refresh_token, "refresh")?;
        let grants = self
            .grants(&claims.sub)
            .await
            .map_err(|_| CoreError::Unauthorized("unknown user".into()))?;
        if grants.disabled {
            return Err(CoreError::Unauthorized("this user is disabled".into()));
        }
        self.revoke_claims(&claims).await?;
        self.verified.invalidate(refresh_token);
        self.record(Audit::new(&claims.sub, "auth.refresh", &claims.sub))
            .await;
        Ok(self.pair(&claims.sub, &grants.email))
    }

    /// Revokes `token` (access or refresh). `actor` may revoke their own tokens; with
    /// `core.admin.write` anyone's.
    pub async fn revoke(&self, actor: &AuthUser, token: &str) -> Result<(), CoreError> {
        let now = now_secs();
        let claims = match self.verify_token(token, now) {
            Ok(c) => c,
            Err(TokenError::Expired) => return Ok(()),
            Err(e) => return Err(CoreError::Invalid(format!("cannot revoke: {e}"))),
        };
        if claims.sub != actor.id && !actor.allows("core.admin.write") {
            return Err(CoreError::Forbidden(
                "you may only revoke your own tokens (or hold core.admin.write)".into(),
            ));
        }
        self.revoke_claims(&claims).await?;
        self.verified.invalidate(token);
        self.record(Audit::new(&actor.id, "auth.revoke", &claims.sub).detail(&claims.jti))
            .await;
        Ok(())
    }

    async fn revoke_claims(&self, claims: &Claims) -> Result<(), CoreError> {
        let already = self
            .revoked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&claims.jti);
        if !already {
            self.db
                .exec(
                    "INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2)",
                    vec![text_param(&claims.jti), FfiValue::Int(claims.exp)],
                )
                .await?;
            let access = claims.typ == "access";
            {
                let mut revoked = self.revoked.write().unwrap_or_else(|p| p.into_inner());
                revoked.insert(claims.jti.clone(), (claims.exp, access));
                // Revocations of expired tokens are dropped now and then.
                if revoked.len().is_multiple_of(1024) {
                    let now = now_secs();
                    revoked.retain(|_, (exp, _)| *exp > now);
                }
            }
            // Hosts only ever accept access tokens.
            if access {
                let _ = self.changes.send(super::Change::Revoked {
                    jti: claims.jti.clone(),
                    expires_at: claims.exp,
                });
            }
        }
        Ok(())
    }

    fn verify(&self, token: &str, typ: &str) -> Result<Arc<Claims>, CoreError> {
        let now = now_secs();
        let claims = match self.verified.get(token) {
            // A token whose signature was checked already: only its expiry can change.
            Some(claims) if claims.exp > now => claims,
            Some(_) => return Err(CoreError::Unauthorized(TokenError::Expired.to_string())),
            None => {
                let claims = self
                    .verify_token(token, now)
                    .map_err(|e| CoreError::Unauthorized(e.to_string()))?;
                let claims = Arc::new(claims);
                self.verified.insert(token.to_string(), claims.clone());
                claims
            }
        };
        if claims.typ != typ {
            return Err(CoreError::Unauthorized(format!("expected an {typ} token")));
        }
        if self
            .revoked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&claims.jti)
        {
            return Err(CoreError::Unauthorized("token revoked".into()));
        }
        Ok(claims)
    }

    /// Authenticates an access token: signature, expiry, revocation, user enabled.
    /// Memory only when the user's grants are cached.
    pub async fn authenticate(&self, token: &str) -> Result<AuthUser, CoreError> {
        let claims = self.verify(token, "access")?;
        principal(&claims, || self.grants(&claims.sub)).await
    }

    /// An operator token with every permission, for `modhost admin token`.
    pub fn console_token(&self, ttl: Duration) -> String {
        self.sign(&self.claims(CONSOLE_SUBJECT, CONSOLE_SUBJECT, "access", ttl))
    }
}

/// An argon2 hash of a random password, checked against when the email is unknown.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$6yYgzh7UgpjXQGlH0MOAvGl1WWhhx8O6QUd4hgJk2p0";

/// Who a checked access token is: the console (every permission), or its user with the
/// user's grants (asked of `grants` only then); an unknown or disabled user is refused.
/// Shared by the embedded core and hosts on remote core services.
pub(super) async fn principal<F, Fut>(claims: &Claims, grants: F) -> Result<AuthUser, CoreError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Arc<super::authz::Grants>, CoreError>>,
{
    if claims.sub == CONSOLE_SUBJECT {
        return Ok(AuthUser {
            id: CONSOLE_SUBJECT.into(),
            email: CONSOLE_SUBJECT.into(),
            permissions: vec!["*".into()],
            expires_at: claims.exp,
            jti: claims.jti.clone(),
        });
    }
    let grants = match grants().await {
        Ok(g) => g,
        Err(CoreError::NotFound(_)) => return Err(CoreError::Unauthorized("unknown user".into())),
        Err(e) => return Err(e),
    };
    if grants.disabled {
        return Err(CoreError::Unauthorized("this user is disabled".into()));
    }
    Ok(AuthUser {
        id: claims.sub.clone(),
        email: grants.email.clone(),
        permissions: grants.permissions.clone(),
        expires_at: claims.exp,
        jti: claims.jti.clone(),
    })
}
