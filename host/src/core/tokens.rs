//! Signed tokens: JWTs with HMAC-SHA256 (HS256), and the signing key.
//!
//! Only HS256 is accepted; the header's `alg` must say so, which rules out `none` and
//! algorithm confusion. Signatures are compared in constant time.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The claims modhost puts in its tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The user id, or `console` for operator tokens from `modhost admin token`.
    pub sub: String,
    pub email: String,
    pub iat: i64,
    pub exp: i64,
    /// Unique token id, for revocation.
    pub jti: String,
    /// `access` or `refresh`.
    pub typ: String,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("bad token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
}

/// The HS256 signing key.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl SigningKey {
    /// A key from its hex form (at least 32 bytes).
    pub fn from_hex(hex: &str) -> Result<Self, String> {
        let hex = hex.trim();
        if hex.len() < 64 || !hex.len().is_multiple_of(2) {
            return Err("the signing key must be at least 64 hex characters (32 bytes)".into());
        }
        crate::hex::decode(hex)
            .map(SigningKey)
            .ok_or_else(|| "the signing key must be hex".into())
    }

    /// The key's bytes (for tools that check modhost's tokens with another library).
    pub fn secret(&self) -> &[u8] {
        &self.0
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length.
        match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        }
    }

    /// Signs `claims` into a compact JWT.
    pub fn sign(&self, claims: &Claims) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let mut mac = self.mac();
        mac.update(header.as_bytes());
        mac.update(b".");
        mac.update(payload.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{header}.{payload}.{sig}")
    }

    /// Checks the signature and expiry (`now` in Unix seconds) and returns the claims.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header_json = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| TokenError::Malformed)?;
        let header: serde_json::Value =
            serde_json::from_slice(&header_json).map_err(|_| TokenError::Malformed)?;
        if header["alg"] != "HS256" {
            return Err(TokenError::Malformed);
        }
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        let signed = token.rfind('.').map_or(token, |i| &token[..i]);
        mac.update(signed.as_bytes());
        mac.verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_hex(&"ab".repeat(32)).unwrap()
    }

    fn claims(exp: i64) -> Claims {
        Claims {
            iss: "modhost".into(),
            sub: "u1".into(),
            email: "a@b.c".into(),
            iat: 0,
            exp,
            jti: "j1".into(),
            typ: "access".into(),
        }
    }

    #[test]
    fn round_trip_expiry_and_tampering() {
        let t = key().sign(&claims(100));
        assert_eq!(key().verify(&t, 50).unwrap().sub, "u1");
        assert_eq!(key().verify(&t, 100), Err(TokenError::Expired));
        let other = SigningKey::from_hex(&"cd".repeat(32)).unwrap();
        assert_eq!(other.verify(&t, 50), Err(TokenError::BadSignature));
        // A forged payload with the original signature.
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&Claims {
                sub: "admin".into(),
                ..claims(100)
            })
            .unwrap(),
        );
        parts[1] = &forged;
        assert_eq!(
            key().verify(&parts.join("."), 50),
            Err(TokenError::BadSignature)
        );
        // alg=none is refused.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            parts[1]
        );
        assert_eq!(key().verify(&none, 50), Err(TokenError::Malformed));
        assert_eq!(key().verify("garbage", 50), Err(TokenError::Malformed));
    }

    #[test]
    fn short_or_non_hex_keys_are_refused() {
        assert!(SigningKey::from_hex("abcd").is_err());
        assert!(SigningKey::from_hex(&"zz".repeat(32)).is_err());
    }
}
