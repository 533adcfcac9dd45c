//! Vendor signatures: ed25519 over the list of every file in a module folder.
//!
//! A vendor runs `modhost keygen` once and `modhost sign MODULE_DIR --key vendor.key`
//! (or `modhost package --sign`) for each release; the module folder then ships a
//! `module.sig` that lists every file of the folder (`module.yaml`, the library,
//! `migrations/…`, anything else) with its SHA-256, signed as a whole. The host trusts
//! the public keys listed in `trusted_keys`; with `require_signatures = true` it refuses
//! unsigned modules, and it always refuses a signature that does not verify, a key it
//! does not trust, and a folder whose files differ from the signed list: a file
//! changed, added or removed.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::hex::{self, sha256_hex};

/// The signature file in a module folder.
pub const SIGNATURE_FILE: &str = "module.sig";

/// The signature format this host writes and reads.
const FORMAT: u32 = 2;

/// What `module.sig` holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct ModuleSignature {
    /// 2: the signature covers `files`. Format 1 (no `format` field) covered only the
    /// manifest and the library, and is refused.
    #[serde(default)]
    pub format: u32,
    /// The vendor's public key, hex.
    pub key: String,
    /// Every file of the folder but `module.sig`: path relative to the folder (with `/`)
    /// to SHA-256, hex.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// Ed25519 signature of the message, hex.
    pub signature: String,
}

/// A module folder whose signature verified.
#[derive(Debug, Clone)]
pub struct SignedFolder {
    /// The public key that signed it, hex.
    pub key: String,
    /// The signed files and their SHA-256: later readers of the folder (migrations)
    /// check what they read against it.
    pub files: BTreeMap<String, String>,
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
    #[error("{}: the signature does not match the signed file list: module.sig was edited after signing", dir.display())]
    Invalid { dir: PathBuf },
    #[error("{}: {file} was {what} after signing; refusing the module (install the vendor's package again)", dir.display())]
    Tampered {
        dir: PathBuf,
        file: String,
        what: &'static str,
    },
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

/// The signed message: a domain tag, then one line per file in path order.
fn message(files: &BTreeMap<String, String>) -> Vec<u8> {
    let mut text = String::from("modhost-module-signature-v2\n");
    for (path, sha) in files {
        text.push_str(&format!("file {sha} {path}\n"));
    }
    text.into_bytes()
}

/// Every file in `dir` but `module.sig`, by path relative to `dir` (with `/`). A
/// symbolic link or a path that is not UTF-8 (or holds a newline) is refused: a signed
/// folder holds plain files with plain names.
pub fn folder_files(dir: &Path) -> Result<BTreeMap<String, PathBuf>, SignatureError> {
    let mut found = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current).map_err(|source| SignatureError::Io {
            path: current.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| SignatureError::Io {
                path: current.clone(),
                source,
            })?;
            let path = entry.path();
            let kind = entry.file_type().map_err(|source| SignatureError::Io {
                path: path.clone(),
                source,
            })?;
            let relative = path
                .strip_prefix(dir)
                .ok()
                .and_then(Path::to_str)
                .filter(|r| !r.contains('\n'))
                .map(|r| r.replace(std::path::MAIN_SEPARATOR, "/"))
                .ok_or_else(|| SignatureError::Malformed {
                    path: path.clone(),
                    why: "a file name in a signed module must be UTF-8 without newlines".into(),
                })?;
            if kind.is_symlink() {
                return Err(SignatureError::Malformed {
                    path,
                    why: "a symbolic link; a signed module folder holds plain files only".into(),
                });
            } else if kind.is_dir() {
                pending.push(path);
            } else if relative != SIGNATURE_FILE {
                found.insert(relative, path);
            }
        }
    }
    Ok(found)
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

/// Signs every file of the module folder `dir` with the secret in `key_file`; writes
/// `module.sig` and returns the public key.
pub fn sign(dir: &Path, key_file: &Path) -> Result<String, SignatureError> {
    if let (Ok(key), Ok(folder)) = (key_file.canonicalize(), dir.canonicalize()) {
        if key.starts_with(&folder) {
            return Err(SignatureError::Malformed {
                path: key_file.to_path_buf(),
                why: "the secret key is inside the module folder: it would be signed and shipped with the module; keep it elsewhere".into(),
            });
        }
    }
    let secret = String::from_utf8_lossy(&read(key_file)?).into_owned();
    let bytes: [u8; 32] = hex::decode_array(&secret).ok_or_else(|| SignatureError::Malformed {
        path: key_file.to_path_buf(),
        why: "not a modhost secret key (64 hex characters from `modhost keygen`)".into(),
    })?;
    let key = SigningKey::from_bytes(&bytes);
    let mut files = BTreeMap::new();
    for (relative, path) in folder_files(dir)? {
        files.insert(relative, sha256_hex(&read(&path)?));
    }
    let signature = key.sign(&message(&files));
    let file = ModuleSignature {
        format: FORMAT,
        key: hex::encode(&key.verifying_key().to_bytes()),
        files,
        signature: hex::encode(&signature.to_bytes()),
    };
    let text = serde_json::to_string_pretty(&file).unwrap_or_default();
    let path = dir.join(SIGNATURE_FILE);
    std::fs::write(&path, text + "\n").map_err(|source| SignatureError::Io { path, source })?;
    Ok(file.key)
}

/// The digests of the files the caller has already read (and will use): the parsed
/// manifest, the library bytes that will be loaded. Everything else is read here.
pub struct KnownDigests<'a> {
    pub manifest_sha256: &'a str,
    /// The library's path relative to the folder, and its digest (computed only when the
    /// module is signed: hashing a large library is not free).
    pub library: (&'a str, &'a dyn Fn() -> String),
}

/// Checks the module in `dir` against the trust policy; `Some` with the signing key and
/// the signed file list when it is signed.
pub fn verify(
    dir: &Path,
    known: &KnownDigests<'_>,
    policy: &TrustPolicy,
) -> Result<Option<SignedFolder>, SignatureError> {
    let (trusted, required) = (&policy.trusted_keys, policy.require_signatures);
    let sig_path = dir.join(SIGNATURE_FILE);
    if !sig_path.exists() {
        return if required {
            Err(SignatureError::Unsigned {
                dir: dir.to_path_buf(),
            })
        } else {
            Ok(None)
        };
    }
    let malformed = |why: String| SignatureError::Malformed {
        path: sig_path.clone(),
        why,
    };
    let file: ModuleSignature = serde_json::from_slice(&read(&sig_path)?)
        .map_err(|e| malformed(format!("not a module signature: {e}")))?;
    if file.format != FORMAT {
        return Err(malformed(format!(
            "signature format {} covers only module.yaml and the library; this host needs format {FORMAT}, which covers every file: re-sign the module with `modhost sign`",
            file.format.max(1)
        )));
    }
    let well_formed = file.files.iter().all(|(path, digest)| {
        digest.len() == 64
            && digest.chars().all(|c| c.is_ascii_hexdigit())
            && !path.is_empty()
            && !path.starts_with('/')
            && !path.contains('\n')
            && !path.split('/').any(|part| part == ".." || part.is_empty())
    });
    if !well_formed {
        return Err(malformed(
            "the signed file list holds a path or a digest that is not well formed".into(),
        ));
    }
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
        .verify_strict(&message(&file.files), &signature)
        .map_err(|_| SignatureError::Invalid {
            dir: dir.to_path_buf(),
        })?;
    check_files(dir, &file.files, known)?;
    Ok(Some(SignedFolder {
        key,
        files: file.files,
    }))
}

/// The folder holds exactly the signed files, each with its signed digest.
fn check_files(
    dir: &Path,
    signed: &BTreeMap<String, String>,
    known: &KnownDigests<'_>,
) -> Result<(), SignatureError> {
    let tampered = |file: &str, what| SignatureError::Tampered {
        dir: dir.to_path_buf(),
        file: file.to_string(),
        what,
    };
    let present = folder_files(dir)?;
    if let Some(added) = present.keys().find(|p| !signed.contains_key(*p)) {
        return Err(tampered(added, "added"));
    }
    for (relative, expected) in signed {
        let Some(path) = present.get(relative) else {
            return Err(tampered(relative, "removed"));
        };
        let digest = if relative == "module.yaml" {
            known.manifest_sha256.to_string()
        } else if relative == known.library.0 {
            (known.library.1)()
        } else {
            sha256_hex(&read(path)?)
        };
        if !digest.eq_ignore_ascii_case(expected) {
            return Err(tampered(relative, "changed"));
        }
    }
    Ok(())
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

    /// Verifies `dir` as the loader does: manifest and library digests from their bytes.
    fn check(dir: &Path, policy: &TrustPolicy) -> Result<Option<SignedFolder>, SignatureError> {
        let manifest = sha256_hex(&std::fs::read(dir.join("module.yaml")).unwrap());
        let library = sha256_hex(&std::fs::read(dir.join("lib.so")).unwrap());
        let lib = move || library.clone();
        let known = KnownDigests {
            manifest_sha256: &manifest,
            library: ("lib.so", &lib),
        };
        verify(dir, &known, policy)
    }

    fn module_folder() -> (tempfile::TempDir, tempfile::TempDir) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(dir.join("module.yaml"), "name: x\n").unwrap();
        std::fs::write(dir.join("lib.so"), b"\x7fELF...").unwrap();
        std::fs::create_dir(dir.join("migrations")).unwrap();
        std::fs::write(
            dir.join("migrations/0001_init.sql"),
            "CREATE TABLE t (a INT);",
        )
        .unwrap();
        (tmp, tempfile::tempdir().unwrap())
    }

    #[test]
    fn sign_verify_untrusted_unsigned() {
        let (tmp, keys) = module_folder();
        let dir = tmp.path();
        assert!(matches!(
            check(dir, &policy(&[], true)),
            Err(SignatureError::Unsigned { .. })
        ));
        assert!(check(dir, &policy(&[], false)).unwrap().is_none());
        let (secret, public) = keygen();
        let key_file = keys.path().join("vendor.key");
        std::fs::write(&key_file, &secret).unwrap();
        assert_eq!(sign(dir, &key_file).unwrap(), public);
        let trusting = policy(std::slice::from_ref(&public), true);
        let signed = check(dir, &trusting).unwrap().expect("signed");
        assert_eq!(signed.key, public);
        assert_eq!(
            signed.files.keys().collect::<Vec<_>>(),
            ["lib.so", "migrations/0001_init.sql", "module.yaml"]
        );
        assert!(matches!(
            check(dir, &policy(&[keygen().1], true)),
            Err(SignatureError::Untrusted { .. })
        ));
    }

    /// Every file is covered: a migration changed, a file added or removed, the library
    /// or the manifest changed: each is refused, naming the file.
    #[test]
    fn any_change_to_the_folder_is_refused() {
        let (secret, public) = keygen();
        let trusting = policy(std::slice::from_ref(&public), false);
        type Change = fn(&Path);
        let cases: [(&str, &str, Change); 5] = [
            ("migrations/0001_init.sql", "changed", |d| {
                std::fs::write(d.join("migrations/0001_init.sql"), "DROP TABLE users;").unwrap()
            }),
            ("migrations/0002_more.sql", "added", |d| {
                std::fs::write(d.join("migrations/0002_more.sql"), "SELECT 1;").unwrap()
            }),
            ("migrations/0001_init.sql", "removed", |d| {
                std::fs::remove_file(d.join("migrations/0001_init.sql")).unwrap()
            }),
            ("lib.so", "changed", |d| {
                std::fs::write(d.join("lib.so"), b"\x7fELF..!").unwrap()
            }),
            ("module.yaml", "changed", |d| {
                std::fs::write(d.join("module.yaml"), "name: y\n").unwrap()
            }),
        ];
        for (file, what, change) in cases {
            let (tmp, keys) = module_folder();
            let key_file = keys.path().join("vendor.key");
            std::fs::write(&key_file, &secret).unwrap();
            sign(tmp.path(), &key_file).unwrap();
            change(tmp.path());
            match check(tmp.path(), &trusting) {
                Err(SignatureError::Tampered {
                    file: f, what: w, ..
                }) => {
                    assert_eq!((f.as_str(), w), (file, what));
                }
                other => panic!("{file} {what}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_edited_file_list_or_an_old_format_is_refused() {
        let (tmp, keys) = module_folder();
        let dir = tmp.path();
        let (secret, public) = keygen();
        let key_file = keys.path().join("vendor.key");
        std::fs::write(&key_file, &secret).unwrap();
        sign(dir, &key_file).unwrap();
        let trusting = policy(std::slice::from_ref(&public), false);
        // Dropping a file from the list (to hide an added one) breaks the signature.
        let sig = std::fs::read_to_string(dir.join(SIGNATURE_FILE)).unwrap();
        let mut parsed: ModuleSignature = serde_json::from_str(&sig).unwrap();
        parsed.files.remove("migrations/0001_init.sql");
        std::fs::write(
            dir.join(SIGNATURE_FILE),
            serde_json::to_string(&parsed).unwrap(),
        )
        .unwrap();
        assert!(matches!(
            check(dir, &trusting),
            Err(SignatureError::Invalid { .. })
        ));
        // A format-1 signature (manifest and library only) is refused with what to do.
        let v1 = format!("{{\"key\":\"{public}\",\"signature\":\"00\"}}");
        std::fs::write(dir.join(SIGNATURE_FILE), v1).unwrap();
        let err = check(dir, &trusting).unwrap_err().to_string();
        assert!(err.contains("re-sign the module"), "{err}");
    }

    /// A key file that is not hex is refused; it must never become an all-zero key.
    #[test]
    fn a_malformed_secret_key_is_refused() {
        let (tmp, keys) = module_folder();
        for bad in ["", "zz", &"é".repeat(32), &"0".repeat(63)] {
            std::fs::write(keys.path().join("vendor.key"), bad).unwrap();
            let signed = sign(tmp.path(), &keys.path().join("vendor.key"));
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
