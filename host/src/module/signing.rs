//! Vendor signatures: ed25519 over a module's manifest and library.
//!
//! A vendor runs `modhost keygen` once and `modhost sign MODULE_DIR --key vendor.key` for
//! each release; the module folder then ships a `module.sig`. The host trusts the public
//! keys listed in `trusted_keys`; with `require_signatures = true` it refuses unsigned
//! modules, and it always refuses a signature that does not verify or a key it does not
//! trust. The signed message binds both files: changing one byte of either breaks it.

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::hex::{self, sha256_hex};

/// The signature file in a module folder.
pub const SIGNATURE_FILE: &str = "module.sig";

/// What `module.sig` holds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleSignature {
    /// The vendor's public key, hex.
    pub key: String,
    /// Ed25519 signature of the message, hex.
    pub signature: String,
}

/// Why a module's signature was refused.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("{}: unsigned module, and this host requires signatures (require_signatures); ask the vendor for a signed build (module.sig)", dir.display())]
    Unsigned { dir: PathBuf },
    #[error("{}: {why}", path.display())]
    Malformed { path: PathBuf, why: String },
    #[error("{}: signed by key {key}, which this host does not trust; add it to trusted_keys if you trust this vendor", dir.display())]
    Untrusted { dir: PathBuf, key: String },
    #[error("{}: the signature does not match module.yaml and the library: one of them changed after signing", dir.display())]
    Invalid { dir: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, SignatureError> {
    std::fs::read(path).map_err(|source| SignatureError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Who may sign modules for this host, and whether unsigned ones load.
#[derive(Debug, Clone, Default)]
pub struct TrustPolicy {
    /// Trusted vendor public keys, hex.
    pub trusted_keys: Vec<String>,
    /// Refuse unsigned modules.
    pub require_signatures: bool,
}

/// The signed message: a domain tag and the SHA-256 (hex) of both files.
fn message(manifest_sha256: &str, library_sha256: &str) -> Vec<u8> {
    format!("modhost-module-signature-v1\nmanifest {manifest_sha256}\nlibrary {library_sha256}\n")
        .into_bytes()
}

/// A new key pair: (secret hex, public hex).
pub fn keygen() -> (String, String) {
    let mut secret = [0u8; 32];
    if let Err(e) = getrandom::fill(&mut secret) {
        panic!("the operating system's random number generator failed: {e}");
    }
    let key = SigningKey::from_bytes(&secret);
    (
        hex::encode(&secret),
        hex::encode(&key.verifying_key().to_bytes()),
    )
}

/// Signs the module in `dir` (its manifest and library) with the secret in `key_file`;
/// writes `module.sig` and returns the public key.
pub fn sign(
    dir: &Path,
    manifest: &Path,
    library: &Path,
    key_file: &Path,
) -> Result<String, SignatureError> {
    let secret = String::from_utf8_lossy(&read(key_file)?).into_owned();
    let bytes: [u8; 32] = hex::decode_array(&secret).ok_or_else(|| SignatureError::Malformed {
        path: key_file.to_path_buf(),
        why: "not a modhost secret key (64 hex characters from `modhost keygen`)".into(),
    })?;
    let key = SigningKey::from_bytes(&bytes);
    let signed = message(&sha256_hex(&read(manifest)?), &sha256_hex(&read(library)?));
    let signature = key.sign(&signed);
    let file = ModuleSignature {
        key: hex::encode(&key.verifying_key().to_bytes()),
        signature: hex::encode(&signature.to_bytes()),
    };
    let text = serde_json::to_string_pretty(&file).unwrap_or_default();
    let path = dir.join(SIGNATURE_FILE);
    std::fs::write(&path, text + "\n").map_err(|source| SignatureError::Io { path, source })?;
    Ok(file.key)
}

/// Checks the module in `dir` against the trust policy. The digests are those of the
/// manifest that was parsed and of the library bytes that will be loaded, so what is
/// verified is exactly what runs. The library's digest is asked for only when the
/// module is signed (hashing a large library is not free).
pub fn verify(
    dir: &Path,
    manifest_sha256: &str,
    library_sha256: &dyn Fn() -> String,
    policy: &TrustPolicy,
) -> Result<(), SignatureError> {
    let (trusted, required) = (&policy.trusted_keys, policy.require_signatures);
    let sig_path = dir.join(SIGNATURE_FILE);
    if !sig_path.exists() {
        return if required {
            Err(SignatureError::Unsigned {
                dir: dir.to_path_buf(),
            })
        } else {
            Ok(())
        };
    }
    let malformed = |why: String| SignatureError::Malformed {
        path: sig_path.clone(),
        why,
    };
    let file: ModuleSignature = serde_json::from_slice(&read(&sig_path)?)
        .map_err(|e| malformed(format!("not a module signature: {e}")))?;
    let key = file.key.trim().to_lowercase();
    if !trusted.iter().any(|t| t.trim().eq_ignore_ascii_case(&key)) {
        return Err(SignatureError::Untrusted {
            dir: dir.to_path_buf(),
            key,
        });
    }
    let key_bytes: [u8; 32] =
        hex::decode_array(&key).ok_or_else(|| malformed("bad public key".into()))?;
    let verifying = VerifyingKey::from_bytes(&key_bytes)
        .map_err(|e| malformed(format!("bad public key: {e}")))?;
    let sig_bytes: [u8; 64] = hex::decode_array(&file.signature)
        .ok_or_else(|| malformed("bad signature encoding".into()))?;
    let signature = Signature::from_bytes(&sig_bytes);
    verifying
        .verify_strict(&message(manifest_sha256, &library_sha256()), &signature)
        .map_err(|_| SignatureError::Invalid {
            dir: dir.to_path_buf(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(keys: &[String], required: bool) -> TrustPolicy {
        TrustPolicy {
            trusted_keys: keys.to_vec(),
            require_signatures: required,
        }
    }

    #[test]
    fn sign_verify_tamper_untrusted_unsigned() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (manifest, library, key_file) = (
            dir.join("module.yaml"),
            dir.join("lib.so"),
            tmp.path().join("vendor.key"),
        );
        std::fs::write(&manifest, "name: x\n").unwrap();
        std::fs::write(&library, b"\x7fELF...").unwrap();
        let manifest_sha = sha256_hex(b"name: x\n");
        let library_sha = sha256_hex(b"\x7fELF...");
        assert!(matches!(
            verify(
                dir,
                &manifest_sha,
                &|| library_sha.clone(),
                &policy(&[], true)
            ),
            Err(SignatureError::Unsigned { .. })
        ));
        assert!(verify(
            dir,
            &manifest_sha,
            &|| library_sha.clone(),
            &policy(&[], false)
        )
        .is_ok());
        let (secret, public) = keygen();
        std::fs::write(&key_file, &secret).unwrap();
        assert_eq!(sign(dir, &manifest, &library, &key_file).unwrap(), public);
        let trusting = policy(std::slice::from_ref(&public), true);
        assert!(verify(dir, &manifest_sha, &|| library_sha.clone(), &trusting).is_ok());
        assert!(matches!(
            verify(
                dir,
                &manifest_sha,
                &|| library_sha.clone(),
                &policy(&[keygen().1], true)
            ),
            Err(SignatureError::Untrusted { .. })
        ));
        let tampered = sha256_hex(b"\x7fELF..!");
        assert!(matches!(
            verify(dir, &manifest_sha, &|| tampered.clone(), &trusting),
            Err(SignatureError::Invalid { .. })
        ));
    }

    /// A key file that is not hex is refused; it must never become an all-zero key.
    #[test]
    fn a_malformed_secret_key_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(dir.join("module.yaml"), "name: x\n").unwrap();
        std::fs::write(dir.join("lib.so"), b"\x7fELF").unwrap();
        for bad in ["", "zz", &"é".repeat(32), &"0".repeat(63)] {
            std::fs::write(dir.join("vendor.key"), bad).unwrap();
            let signed = sign(
                dir,
                &dir.join("module.yaml"),
                &dir.join("lib.so"),
                &dir.join("vendor.key"),
            );
            assert!(
                matches!(signed, Err(SignatureError::Malformed { .. })),
                "{bad:?}: {signed:?}"
            );
        }
    }

    #[test]
    fn keys_are_random_and_match() {
        let (secret_a, public_a) = keygen();
        let (secret_b, _) = keygen();
        assert_ne!(secret_a, secret_b);
        assert_ne!(secret_a, "0".repeat(64));
        let bytes: [u8; 32] = hex::decode_array(&secret_a).unwrap();
        let derived = SigningKey::from_bytes(&bytes).verifying_key().to_bytes();
        assert_eq!(hex::encode(&derived), public_a);
    }
}
