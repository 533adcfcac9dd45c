//! `modhost install`: checks a package (a module folder or a `.tar.gz` holding one) the
//! way the host will load it — manifest, signature under the trust policy, plugin-api
//! version and ABI — and only then moves it into the modules directory in one rename,
//! so a watching host sees the whole module appear once, never a half-copied one.
//!
//! The package is unpacked and checked in a private folder inside the modules directory
//! whose name starts with `.` (the host ignores such folders), so the final rename
//! stays on one file system. Replacing an installed module (`--replace`) swaps the two
//! folders atomically on Linux (`renameat2(RENAME_EXCHANGE)`).

use std::path::{Path, PathBuf};

use crate::module::discovery::discover_one;
use crate::module::loader::{load_verified, private_scratch_dir, LoadError, RuntimeDir};
use crate::module::manifest::MANIFEST_FILE;
use crate::module::signing::TrustPolicy;

/// What to install, where, under which policy.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// A module folder, or a `.tar.gz` from `modhost package`.
    pub package: PathBuf,
    pub modules_dir: PathBuf,
    pub policy: TrustPolicy,
    /// Replace a module of the same name that is already installed.
    pub replace: bool,
}

/// A module installed by [`install`].
#[derive(Debug)]
pub struct Installed {
    pub name: String,
    pub version: String,
    pub dir: PathBuf,
    pub signed_by: Option<String>,
    /// An installed module of the same name was replaced.
    pub replaced: bool,
}

/// Why a package was not installed. Nothing was changed in the modules directory.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{}: no such package; pass a module folder or a .tar.gz from `modhost package`", path.display())]
    NotFound { path: PathBuf },
    #[error("{}: cannot read the modules directory ({source}); create it or pass --modules DIR", path.display())]
    ModulesDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a module package: {why}", path.display())]
    NotAPackage { path: PathBuf, why: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Module(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("module `{name}` is already installed in {}; pass --replace to replace it (a watching host hot-reloads it)", dir.display())]
    Exists { name: String, dir: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The most a `.tar.gz` package may unpack to.
const MAX_UNPACKED_BYTES: u64 = 1024 * 1024 * 1024;

/// Removes the staging folder whatever happens.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Checks `options.package` and moves it into `options.modules_dir`.
pub fn install(options: &InstallOptions) -> Result<Installed, InstallError> {
    let package = &options.package;
    if !package.exists() {
        return Err(InstallError::NotFound {
            path: package.clone(),
        });
    }
    let modules = &options.modules_dir;
    std::fs::read_dir(modules).map_err(|source| InstallError::ModulesDir {
        path: modules.clone(),
        source,
    })?;
    let staging = Staging(modules.join(format!(".install-{}", crate::random::random_hex(8))));
    create_private_dir(&staging.0).map_err(io(&staging.0))?;
    let unpacked = if package.is_dir() {
        let name = package
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|f| f.to_owned()))
            .unwrap_or_else(|| "module".into());
        let dest = staging.0.join(name);
        copy_folder(package, &dest)?;
        dest
    } else {
        unpack(package, &staging.0)?
    };

    let found = discover_one(&unpacked)
        .map_err(|(_, e)| InstallError::Module(e.to_string()))?
        .ok_or_else(|| InstallError::NotAPackage {
            path: package.clone(),
            why: format!("no {MANIFEST_FILE}"),
        })?;
    let name = found.manifest.name.to_string();
    // The module may be installed under another folder name: that folder is the one
    // to replace (two folders with one module would fail both).
    let installed = crate::module::discovery::discover(modules)
        .ok()
        .and_then(|d| {
            d.modules
                .into_iter()
                .find(|m| m.manifest.name.as_str() == name)
                .map(|m| m.dir)
        });
    let target = installed.unwrap_or_else(|| modules.join(&name));
    let replaced = target.exists();
    if replaced && !options.replace {
        return Err(InstallError::Exists { name, dir: target });
    }
    // Name the package in the reasons, not the private folder it was checked in.
    let staged = found.dir.display().to_string();
    let signed_by = check_loads(&found, &options.policy).map_err(|e| match e {
        InstallError::Refused(why) => {
            InstallError::Refused(why.replace(&staged, &package.display().to_string()))
        }
        other => other,
    })?;
    if replaced {
        exchange(&unpacked, &target).map_err(io(&target))?;
    } else {
        std::fs::rename(&unpacked, &target).map_err(io(&target))?;
    }
    Ok(Installed {
        name,
        version: found.manifest.version.to_string(),
        dir: target,
        signed_by,
        replaced,
    })
}

/// Loads the unpacked module as the host would, in a private scratch directory.
fn check_loads(
    found: &crate::module::discovery::DiscoveredModule,
    policy: &TrustPolicy,
) -> Result<Option<String>, InstallError> {
    let scratch = private_scratch_dir().map_err(io(&found.dir))?;
    let runtime = RuntimeDir::create(&scratch).map_err(io(&scratch))?;
    let refused = |e: LoadError| InstallError::Refused(e.to_string());
    let loaded = load_verified(
        &found.dir,
        &found.manifest,
        &found.library,
        policy,
        &runtime,
    );
    runtime.remove();
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(loaded.map_err(refused)?.signed.map(|s| s.key))
}

fn create_private_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(path)
}

/// Copies a module folder's plain files (a symbolic link is refused).
fn copy_folder(from: &Path, to: &Path) -> Result<(), InstallError> {
    std::fs::create_dir_all(to).map_err(io(to))?;
    for entry in std::fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io(&path))?;
        let dest = to.join(entry.file_name());
        if kind.is_symlink() {
            return Err(InstallError::NotAPackage {
                path,
                why: "a symbolic link; a package holds plain files only".into(),
            });
        } else if kind.is_dir() {
            copy_folder(&path, &dest)?;
        } else {
            std::fs::copy(&path, &dest).map_err(io(&path))?;
        }
    }
    Ok(())
}

/// Unpacks a `.tar.gz` into `staging`; returns the module folder it held. The tar
/// reader never writes outside `staging` (no absolute paths, no `..`).
fn unpack(archive: &Path, staging: &Path) -> Result<PathBuf, InstallError> {
    let not_a_package = |why: String| InstallError::NotAPackage {
        path: archive.to_path_buf(),
        why,
    };
    let file = std::fs::File::open(archive).map_err(io(archive))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    tar.set_preserve_permissions(false);
    let root = staging.join("unpacked");
    std::fs::create_dir_all(&root).map_err(io(&root))?;
    let mut total: u64 = 0;
    let entries = tar
        .entries()
        .map_err(|e| not_a_package(format!("not a readable .tar.gz ({e})")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| not_a_package(format!("not a readable .tar.gz ({e})")))?;
        let kind = entry.header().entry_type();
        let path = entry
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if !(kind.is_file() || kind.is_dir()) {
            return Err(not_a_package(format!(
                "`{path}` is a link or a special file; a package holds plain files and folders only"
            )));
        }
        total = total.saturating_add(entry.header().size().unwrap_or(0));
        if total > MAX_UNPACKED_BYTES {
            return Err(not_a_package(format!(
                "it unpacks to more than {MAX_UNPACKED_BYTES} bytes"
            )));
        }
        // `unpack_in` refuses paths that leave `root` (absolute, `..`).
        let inside = entry
            .unpack_in(&root)
            .map_err(|e| not_a_package(format!("cannot unpack `{path}`: {e}")))?;
        if !inside {
            return Err(not_a_package(format!(
                "`{path}` points outside the package"
            )));
        }
    }
    if root.join(MANIFEST_FILE).is_file() {
        // The folder's files at the archive's top level.
        return Ok(root);
    }
    let mut folders = Vec::new();
    for entry in std::fs::read_dir(&root).map_err(io(&root))? {
        folders.push(entry.map_err(io(&root))?.path());
    }
    let is_folder = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
    match folders.as_slice() {
        [one] if is_folder(one) && one.join(MANIFEST_FILE).is_file() => Ok(one.clone()),
        _ => Err(not_a_package(format!(
            "it must hold one module folder with a {MANIFEST_FILE}"
        ))),
    }
}

/// Swaps `new` and `installed` in one step where the platform can; the old module ends
/// up at `new`'s path (inside the staging folder, removed with it).
fn exchange(new: &Path, installed: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt as _;
        let cstr = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
        let (a, b) = (cstr(new)?, cstr(installed)?);
        // SAFETY: both are valid NUL-terminated paths; AT_FDCWD resolves them like
        // rename(2) does.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                a.as_ptr(),
                libc::AT_FDCWD,
                b.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        // Not supported by this file system or kernel: fall back below.
        let unsupported = [libc::EINVAL, libc::ENOSYS, libc::EPERM];
        if !err.raw_os_error().is_some_and(|c| unsupported.contains(&c)) {
            return Err(err);
        }
    }
    // Two renames: a watching host may briefly see the module gone.
    let old = new.with_extension("old");
    std::fs::rename(installed, &old)?;
    if let Err(e) = std::fs::rename(new, installed) {
        // Put the installed module back before reporting.
        let _ = std::fs::rename(&old, installed);
        return Err(e);
    }
    Ok(())
}
