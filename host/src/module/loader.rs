//! Loading module libraries through abi_stable.
//!
//! Each library is first copied to a unique path in the host's runtime directory and
//! loaded from there (dlopen caches by path, and a build overwriting a mapped file would
//! crash the host). Libraries are never unloaded. This file turns abi_stable's long
//! reports into one-line errors; the full report goes to the debug log.
//!
//! The library file is read once ([`read_library`]); its signature, its `sha256:` pin
//! and its ELF headers are checked on those bytes, and the runtime copy is written from
//! them, so the bytes that were checked are the bytes that are loaded. Nothing reaches
//! the dynamic loader (whose ELF constructors run vendor code) before every check passed.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use abi_stable::{
    abi_stability::abi_checking::check_layout_compatibility,
    library::{lib_header_from_path, LibraryError},
    sabi_types::VersionNumber,
    StableAbi,
};
use modhost_plugin_api::{ffi::ModuleRootRef, PLUGIN_API_VERSION};

pub use crate::hex::sha256_hex;
use crate::module::manifest::Manifest;
use crate::module::signing::{self, KnownDigests, SignatureError, SignedFolder, TrustPolicy};

/// A library loaded and checked against this host's plugin-api.
pub struct LoadedLibrary {
    pub root: ModuleRootRef,
    /// The copy the library was loaded from.
    pub runtime_path: PathBuf,
    /// The plugin-api version the library was built against.
    pub plugin_api_version: String,
    /// The verified signature, when the module is signed.
    pub signed: Option<SignedFolder>,
}

/// Why a library was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("module `{module}`: cannot copy {} to {}: {source}", from.display(), to.display())]
    Copy {
        module: String,
        from: PathBuf,
        to: PathBuf,
        source: std::io::Error,
    },
    #[error("module `{module}`: {} is not a loadable shared library: {detail}", path.display())]
    NotALibrary {
        module: String,
        path: PathBuf,
        detail: String,
    },
    #[error("module `{module}`: {} is a shared library but not a modhost module (no root module symbol); build it with `modhost_plugin_api::export_module!`", path.display())]
    NotAModule { module: String, path: PathBuf },
    #[error("module `{module}` was built against plugin-api {found}; this host uses {host}; rebuild it against plugin-api {host}")]
    IncompatibleVersion {
        module: String,
        found: String,
        host: String,
    },
    #[error("module `{module}` was built against plugin-api {found}, newer than this host's {host}; upgrade the host to a release with plugin-api {found} or later, or rebuild the module against plugin-api {host}")]
    NewerMinor {
        module: String,
        found: String,
        host: String,
    },
    #[error("module `{module}` was built against a plugin-api whose interface differs from this host's (it reports plugin-api {found}; the host uses {host}); rebuild it against plugin-api {host} (RUST_LOG=debug shows the full layout report)")]
    IncompatibleInterface {
        module: String,
        found: String,
        host: String,
    },
    #[error("module `{module}`: {} has SHA-256 {found}, but module.yaml says {expected}; the library was changed or corrupted after packaging, refusing to load it", path.display())]
    Integrity {
        module: String,
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("module `{module}`: {source}")]
    Signature {
        module: String,
        source: SignatureError,
    },
    #[error("module `{module}`: loading the library failed: {detail}")]
    Other { module: String, detail: String },
}

/// A library file's bytes, read once.
pub struct LibraryBytes {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    /// SHA-256 of `bytes`, hex: computed only when a pin or a signature needs it.
    sha256: std::sync::OnceLock<String>,
}

impl LibraryBytes {
    /// SHA-256 of the bytes, hex.
    pub fn sha256(&self) -> &str {
        self.sha256.get_or_init(|| sha256_hex(&self.bytes))
    }
}

/// Where library copies live while the host runs: `<data dir>/runtime/<pid>/`.
#[derive(Debug)]
pub struct RuntimeDir {
    path: PathBuf,
    counter: AtomicU64,
}

impl RuntimeDir {
    /// Creates this process's runtime directory, removing those of dead processes.
    pub fn create(data_dir: &Path) -> std::io::Result<Self> {
        let base = data_dir.join("runtime");
        std::fs::create_dir_all(&base)?;
        remove_stale(&base);
        let path = base.join(std::process::id().to_string());
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::create_dir_all(&path)?;
        Ok(Self {
            path,
            counter: AtomicU64::new(0),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn next_copy(&self, module: &str, library: &Path) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let ext = library
            .extension()
            .map(|e| format!(".{}", e.to_string_lossy()))
            .unwrap_or_default();
        self.path.join(format!("{module}-{n}{ext}"))
    }

    /// Removes the directory (at shutdown). Loaded code stays mapped.
    pub fn remove(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::debug!(path = %self.path.display(), error = %e, "could not remove runtime dir");
        }
    }
}

/// A new directory only this user can enter, with a name nobody could guess: the copies
/// `check`, `package` and `install` load must not be replaceable between the check and
/// the load.
pub fn private_scratch_dir() -> std::io::Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("modhost-check-{}", crate::random::random_hex(8)));
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(&path)?;
    Ok(path)
}

/// Removes runtime dirs of processes that no longer exist (Linux: checks /proc).
fn remove_stale(base: &Path) {
    let proc_fs = Path::new("/proc/self");
    if !proc_fs.exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.parse::<u32>().is_ok() && !Path::new("/proc").join(&name).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Reads, checks and loads the library of the module in `dir`: the file is read once,
/// its signature (under `policy`) and `sha256:` pin are verified on those bytes, then
/// its ELF headers; only then is a copy written from the same bytes and loaded.
///
/// Blocking (file I/O, hashing, dlopen): call it off the async runtime's workers.
pub fn load_verified(
    dir: &Path,
    manifest: &Manifest,
    library: &Path,
    policy: &TrustPolicy,
    runtime: &RuntimeDir,
) -> Result<LoadedLibrary, LoadError> {
    let module = manifest.name.as_str();
    let lib = read_library(module, library)?;
    let signed = verify(dir, manifest, &lib, policy)?;
    let mut loaded = load_library(module, &lib, runtime)?;
    loaded.signed = signed;
    Ok(loaded)
}

/// Reads a library file once.
/// The same checks as [`load_verified`] (integrity pin, signature, ELF headers), then a
/// runtime copy, without loading it into this process: for an isolated module, whose
/// worker loads the copy. Returns the copy and the verified signature.
pub fn verify_and_copy(
    dir: &Path,
    manifest: &Manifest,
    library: &Path,
    policy: &TrustPolicy,
    runtime: &RuntimeDir,
) -> Result<(PathBuf, Option<SignedFolder>), LoadError> {
    let module = manifest.name.as_str();
    let lib = read_library(module, library)?;
    let signed = verify(dir, manifest, &lib, policy)?;
    Ok((copy_checked(module, &lib, runtime)?, signed))
}

pub fn read_library(module: &str, path: &Path) -> Result<LibraryBytes, LoadError> {
    let bytes = std::fs::read(path).map_err(|e| LoadError::NotALibrary {
        module: module.to_string(),
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    Ok(LibraryBytes {
        path: path.to_path_buf(),
        bytes,
        sha256: std::sync::OnceLock::new(),
    })
}

/// Checks the library's bytes against the manifest's `sha256:` pin and the module's
/// signature (which covers every file of the folder: for the manifest and the library,
/// the parsed manifest and these bytes); `Some` when the module is signed.
pub fn verify(
    dir: &Path,
    manifest: &Manifest,
    lib: &LibraryBytes,
    policy: &TrustPolicy,
) -> Result<Option<SignedFolder>, LoadError> {
    let module = manifest.name.as_str();
    if let Some(expected) = &manifest.sha256 {
        if !lib.sha256().eq_ignore_ascii_case(expected) {
            return Err(LoadError::Integrity {
                module: module.to_string(),
                path: lib.path.clone(),
                expected: expected.clone(),
                found: lib.sha256().to_string(),
            });
        }
    }
    let library = lib
        .path
        .strip_prefix(dir)
        .ok()
        .and_then(Path::to_str)
        .map(|p| p.replace(std::path::MAIN_SEPARATOR, "/"))
        .unwrap_or_default();
    let digest = || lib.sha256().to_string();
    let known = KnownDigests {
        manifest_sha256: &manifest.source_sha256,
        library: (&library, &digest),
    };
    signing::verify(dir, &known, policy).map_err(|source| LoadError::Signature {
        module: module.to_string(),
        source,
    })
}

/// Checks the ELF headers of verified bytes, writes them to a fresh runtime copy and
/// loads that copy.
pub fn load_library(
    module: &str,
    lib: &LibraryBytes,
    runtime: &RuntimeDir,
) -> Result<LoadedLibrary, LoadError> {
    let copy = copy_checked(module, lib, runtime)?;
    match load_from(module, &lib.path, &copy) {
        Ok(root) => Ok(LoadedLibrary {
            root: root.0,
            runtime_path: copy,
            plugin_api_version: root.1,
            signed: None,
        }),
        Err(e) => {
            let _ = std::fs::remove_file(&copy);
            Err(e)
        }
    }
}

/// Checks the ELF headers of verified bytes and writes them to a fresh runtime copy,
/// without loading it: an isolated module's worker loads the copy (see [`load_copy`]).
pub fn copy_checked(
    module: &str,
    lib: &LibraryBytes,
    runtime: &RuntimeDir,
) -> Result<PathBuf, LoadError> {
    crate::module::library_file::check(&lib.bytes).map_err(|detail| LoadError::NotALibrary {
        module: module.to_string(),
        path: lib.path.clone(),
        detail,
    })?;
    let copy = runtime.next_copy(module, &lib.path);
    std::fs::write(&copy, &lib.bytes).map_err(|source| LoadError::Copy {
        module: module.to_string(),
        from: lib.path.clone(),
        to: copy.clone(),
        source,
    })?;
    Ok(copy)
}

/// Loads a runtime copy made by [`copy_checked`], with the same version and layout
/// checks as the host's own loading; returns the root module and the plugin-api version
/// the library was built against.
pub fn load_copy(copy: &Path, module: &str) -> Result<(ModuleRootRef, String), LoadError> {
    load_from(module, copy, copy)
}

fn load_from(
    module: &str,
    original: &Path,
    copy: &Path,
) -> Result<(ModuleRootRef, String), LoadError> {
    let header = lib_header_from_path(copy).map_err(|e| classify(module, original, e, None))?;
    let version = VersionNumber::new(header.version_strings());
    let found = version
        .as_ref()
        .map(|v| v.to_string())
        .unwrap_or_else(|_| header.version_strings().version.to_string());
    if let Ok(version) = version {
        check_compatible(module, version)?;
    }
    check_layout(module, original, header, &found)?;
    // SAFETY: `check_layout` compared the library's root module layout with the host's,
    // every type reachable from it included, just above.
    let root = unsafe { header.init_root_module_with_unchecked_layout::<ModuleRootRef>() }
        .map_err(|e| classify(module, original, e, Some(&found)))?;
    Ok((root, found))
}

/// Checks the library's FFI types against the host's, with the library as the
/// *interface* and the host as the *implementation*: abi_stable then accepts a host
/// whose `#[sabi_trait]`s have more methods at the end (a newer minor), which is the
/// direction the compatibility promise needs. abi_stable's own check, in
/// `init_root_module`, has the roles the other way round and would refuse every module
/// built against an older minor.
fn check_layout(
    module: &str,
    path: &Path,
    header: &abi_stable::library::LibHeader,
    found: &str,
) -> Result<(), LoadError> {
    let refused = |detail: &dyn std::fmt::Display| {
        tracing::debug!(module, library = %path.display(), report = %detail, "library layout check failed (full report)");
        LoadError::IncompatibleInterface {
            module: module.to_string(),
            found: found.to_string(),
            host: PLUGIN_API_VERSION.to_string(),
        }
    };
    let Some(library) = header.layout() else {
        return Err(refused(&"the library was built without layout information"));
    };
    check_layout_compatibility(library, <ModuleRootRef as StableAbi>::LAYOUT)
        .map_err(|errors| refused(&errors))
}

/// The compatibility promise (docs/compatibility.md): a module built against plugin-api
/// 1.x runs on every host 1.y with y >= x. Another major (or, before 1.0, another minor)
/// is refused; so is a *newer* minor, which could call methods this host lacks. Checked
/// on the library's header, before its layout and before any entry point is called.
fn check_compatible(module: &str, found: VersionNumber) -> Result<(), LoadError> {
    let host = host_version();
    if found.major != host.major || (host.major == 0 && found.minor != host.minor) {
        return Err(LoadError::IncompatibleVersion {
            module: module.to_string(),
            found: found.to_string(),
            host: host.to_string(),
        });
    }
    if found.minor > host.minor {
        return Err(LoadError::NewerMinor {
            module: module.to_string(),
            found: found.to_string(),
            host: host.to_string(),
        });
    }
    Ok(())
}

/// This host's plugin-api version.
fn host_version() -> VersionNumber {
    let mut parts = PLUGIN_API_VERSION
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    VersionNumber {
        major: parts.next().unwrap_or(0),
        minor: parts.next().unwrap_or(0),
        patch: parts.next().unwrap_or(0),
    }
}

fn classify(module: &str, path: &Path, err: LibraryError, found: Option<&str>) -> LoadError {
    tracing::debug!(module, library = %path.display(), report = %err, "library load error (full report)");
    let module = module.to_string();
    let host = PLUGIN_API_VERSION.to_string();
    match err {
        LibraryError::OpenError { err, .. } => LoadError::NotALibrary {
            module,
            path: path.to_path_buf(),
            detail: short_dl_error(&err.to_string()),
        },
        LibraryError::GetSymbolError { .. } => LoadError::NotAModule {
            module,
            path: path.to_path_buf(),
        },
        LibraryError::IncompatibleVersionNumber { actual_version, .. } => {
            LoadError::IncompatibleVersion {
                module,
                found: actual_version.to_string(),
                host,
            }
        }
        LibraryError::AbiInstability(_)
        | LibraryError::InvalidAbiHeader(_)
        | LibraryError::InvalidCAbi { .. } => LoadError::IncompatibleInterface {
            module,
            found: found.unwrap_or("an unknown version").to_string(),
            host,
        },
        other => LoadError::Other {
            module,
            detail: first_line(&other.to_string()),
        },
    }
}

/// dlopen messages repeat the (runtime copy) path; keep the reason.
fn short_dl_error(msg: &str) -> String {
    let msg = first_line(msg);
    msg.rsplit(": ").next().unwrap_or(&msg).to_string()
}

fn first_line(s: &str) -> String {
    s.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}
