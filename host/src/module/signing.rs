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

use crate::module::loader::sha256_hex;

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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn read(path: &Path) -> Result<Vec<u8>, SignatureError> {
    std::fs::read(path).map_err(|source| SignatureError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The signed message: a domain tag and the SHA-256 of both files.
fn message(manifest: &[u8], library: &[u8]) -> Vec<u8> {
    format!(
        "modhost-module-signature-v1\nmanifest {}\nlibrary {}\n",
        sha256_hex(manifest),
        sha256_hex(library)
    )
    .into_bytes()
}

/// A new key pair: (secret hex, public hex).
pub fn keygen() -> (String, String) {
    let secret = crate::random::random_hex(32);
    let bytes: [u8; 32] = unhex(&secret)
        .and_then(|v| v.try_into().ok())
        .unwrap_or([0; 32]);
    let key = SigningKey::from_bytes(&bytes);
    (secret, hex(&key.verifying_key().to_bytes()))
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
    let bytes: [u8; 32] = unhex(&secret)
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| SignatureError::Malformed {
            path: key_file.to_path_buf(),
            why: "not a modhost secret key (64 hex characters from `modhost keygen`)".into(),
        })?;
    let key = SigningKey::from_bytes(&bytes);
    let signature = key.sign(&message(&read(manifest)?, &read(library)?));
    let file = ModuleSignature {
        key: hex(&key.verifying_key().to_bytes()),
        signature: hex(&signature.to_bytes()),
    };
    let text = serde_json::to_string_pretty(&file).unwrap_or_default();
    let path = dir.join(SIGNATURE_FILE);
    std::fs::write(&path, text + "\n").map_err(|source| SignatureError::Io { path, source })?;
    Ok(file.key)
}

/// Checks the module in `dir` against the trust policy.
pub fn verify(
    dir: &Path,
    manifest: &Path,
    library: &Path,
    trusted: &[String],
    required: bool,
) -> Result<(), SignatureError> {
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
    let key_bytes: [u8; 32] = unhex(&key)
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| malformed("bad public key".into()))?;
    let verifying = VerifyingKey::from_bytes(&key_bytes)
        .map_err(|e| malformed(format!("bad public key: {e}")))?;
    let sig_bytes: [u8; 64] = unhex(&file.signature)
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| malformed("bad signature encoding".into()))?;
    let signature = Signature::from_bytes(&sig_bytes);
    verifying
        .verify_strict(&message(&read(manifest)?, &read(library)?), &signature)
        .map_err(|_| SignatureError::Invalid {
            dir: dir.to_path_buf(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(matches!(
            verify(dir, &manifest, &library, &[], true),
            Err(SignatureError::Unsigned { .. })
        ));
        assert!(verify(dir, &manifest, &library, &[], false).is_ok());
        let (secret, public) = keygen();
        std::fs::write(&key_file, &secret).unwrap();
        assert_eq!(sign(dir, &manifest, &library, &key_file).unwrap(), public);
        assert!(verify(
            dir,
            &manifest,
            &library,
            std::slice::from_ref(&public),
            true
        )
        .is_ok());
        assert!(matches!(
            verify(dir, &manifest, &library, &[keygen().1], true),
            Err(SignatureError::Untrusted { .. })
        ));
        std::fs::write(&library, b"\x7fELF..!").unwrap();
        assert!(matches!(
            verify(
                dir,
                &manifest,
                &library,
                std::slice::from_ref(&public),
                true
            ),
            Err(SignatureError::Invalid { .. })
        ));
    }
}
