//! Signed tokens: JWTs signed with Ed25519 (EdDSA), made and checked with the
//! `jsonwebtoken` crate. The header names the signing key (`kid`), so keys can rotate:
//! whoever holds the public keys ([`PublicKey`]) checks tokens; only the holder of the
//! [`SigningKey`] (the core) makes them.
//!
//! Only EdDSA is accepted, with the expiry required and checked, which rules out `none`
//! and algorithm confusion.

use std::collections::HashMap;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

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
    /// Signed with a key this verifier does not know (yet: keys rotate).
    #[error("token signed with an unknown key")]
    UnknownKey(String),
}

/// A public key that checks tokens: its id and the key (base64url, as a JWK's `x`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    pub kid: String,
    pub x: String,
}

/// The Ed25519 key that signs tokens.
#[derive(Clone)]
pub struct SigningKey {
    seed: [u8; 32],
    public: PublicKey,
    encoding: EncodingKey,
}

/// PKCS#8 v1 DER of an Ed25519 private key (RFC 8410): this prefix, then the 32-byte seed.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

impl SigningKey {
    /// A key from its seed, hex (64 characters).
    pub fn from_hex(hex: &str) -> Result<Self, String> {
        let seed: [u8; 32] = crate::hex::decode_array(hex.trim()).ok_or_else(|| {
            "the signing key must be 64 hex characters (an Ed25519 seed, from `modhost core rotate-key` or 32 random bytes)".to_string()
        })?;
        Ok(Self::from_seed(seed))
    }

    /// A new random key.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        if let Err(e) = getrandom::fill(&mut seed) {
            panic!("the operating system's random number generator failed: {e}");
        }
        Self::from_seed(seed)
    }

    fn from_seed(seed: [u8; 32]) -> Self {
        let public = ed25519_dalek::SigningKey::from_bytes(&seed)
            .verifying_key()
            .to_bytes();
        let kid = crate::hex::sha256_hex(&public)[..16].to_string();
        let mut der = PKCS8_ED25519_PREFIX.to_vec();
        der.extend_from_slice(&seed);
        Self {
            seed,
            public: PublicKey {
                kid,
                x: URL_SAFE_NO_PAD.encode(public),
            },
            encoding: EncodingKey::from_ed_der(&der),
        }
    }

    /// The seed, hex (for storing the key).
    pub fn to_hex(&self) -> String {
        crate::hex::encode(&self.seed)
    }

    /// The public half, which checks this key's tokens.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Signs `claims` into a compact JWT naming this key.
    pub fn sign(&self, claims: &Claims) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.public.kid.clone());
        // Signing cannot fail (a valid Ed25519 key, claims that serialise); if it ever
        // did, the empty token would be refused everywhere: fail closed, and say why.
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot sign a token");
            String::new()
        })
    }
}

/// Public keys that check tokens, by id.
#[derive(Clone)]
pub struct Verifier {
    keys: HashMap<String, DecodingKey>,
    validation: Validation,
}

impl Verifier {
    /// A verifier of tokens signed by any of `keys`.
    pub fn new(keys: &[PublicKey]) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = 0;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        Self {
            keys: keys
                .iter()
                .map(|k| (k.kid.clone(), DecodingKey::from_ed_components(&k.x)))
                .filter_map(|(kid, key)| key.ok().map(|k| (kid, k)))
                .collect(),
            validation,
        }
    }

    /// Checks the signature and expiry (`now` in Unix seconds) and returns the claims.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Malformed);
        }
        let kid = header.kid.ok_or(TokenError::Malformed)?;
        let key = self
            .keys
            .get(&kid)
            .ok_or_else(|| TokenError::UnknownKey(kid.clone()))?;
        // The library checks `exp` against its own clock; this checks it against `now`
        // too, so callers decide what "now" is.
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                _ => TokenError::Malformed,
            }
        })?;
        if data.claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(data.claims)
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

    fn now() -> i64 {
        crate::core::now_secs()
    }

    #[test]
    fn round_trip_expiry_tampering_and_unknown_keys() {
        let verifier = Verifier::new(&[key().public_key().clone()]);
        let t = key().sign(&claims(now() + 100));
        assert_eq!(verifier.verify(&t, now()).unwrap().sub, "u1");
        assert_eq!(
            verifier.verify(&t, now() + 100),
            Err(TokenError::Expired),
            "expired at `now`"
        );
        let past = key().sign(&claims(now() - 10));
        assert_eq!(verifier.verify(&past, now()), Err(TokenError::Expired));
        // Another key, even under the same kid, does not verify.
        let other = SigningKey::from_hex(&"cd".repeat(32)).unwrap();
        assert_eq!(
            Verifier::new(&[other.public_key().clone()]).verify(&t, now()),
            Err(TokenError::UnknownKey(key().public_key().kid.clone()))
        );
        let impostor = PublicKey {
            kid: key().public_key().kid.clone(),
            x: other.public_key().x.clone(),
        };
        assert_eq!(
            Verifier::new(&[impostor]).verify(&t, now()),
            Err(TokenError::BadSignature)
        );
        // A forged payload with the original signature.
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&Claims {
                sub: "admin".into(),
                ..claims(now() + 100)
            })
            .unwrap(),
        );
        parts[1] = &forged;
        assert_eq!(
            verifier.verify(&parts.join("."), now()),
            Err(TokenError::BadSignature)
        );
        // alg=none and HS256 are refused.
        for alg in [
            r#"{"alg":"none","kid":"x"}"#,
            r#"{"alg":"HS256","kid":"x"}"#,
        ] {
            let other = format!("{}.{}.", URL_SAFE_NO_PAD.encode(alg), parts[1]);
            assert_eq!(verifier.verify(&other, now()), Err(TokenError::Malformed));
        }
        assert_eq!(
            verifier.verify("garbage", now()),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn keys_are_ed25519_seeds_in_hex() {
        assert!(SigningKey::from_hex("abcd").is_err());
        assert!(SigningKey::from_hex(&"zz".repeat(32)).is_err());
        let k = SigningKey::generate();
        assert_eq!(
            SigningKey::from_hex(&k.to_hex()).unwrap().public_key(),
            k.public_key()
        );
        assert_ne!(SigningKey::generate().public_key().kid, k.public_key().kid);
    }
}
