//! Finding modules on disk: which folders are modules, their manifests and libraries.
//!
//! A module is a subdirectory of the modules dir holding a `module.yaml`. This file
//! reads folders and manifests and picks each module's library file; it never loads a
//! library (`loader.rs`) nor looks at dependencies (`resolve.rs`).

use std::path::{Path, PathBuf};

use crate::module::manifest::{Manifest, ManifestError, MANIFEST_FILE};

/// A module folder whose manifest and library file were found.
#[derive(Debug, Clone)]
pub struct DiscoveredModule {
    /// The module folder.
    pub dir: PathBuf,
    /// Its `module.yaml`.
    pub manifest_path: PathBuf,
    pub manifest: Manifest,
    /// The library file, inside `dir`.
    pub library: PathBuf,
}

/// A module folder that could not be used, and why.
#[derive(Debug)]
pub struct DiscoveryProblem {
    /// The module folder.
    pub dir: PathBuf,
    /// The module's name if the manifest could be read, else the folder's name.
    pub label: String,
    pub error: DiscoveryError,
}

/// Why a module folder (or the modules dir) could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot read the modules directory {}: {source}; create it, or name the directory that holds the module folders (`modhost run --modules DIR`, `modhost check DIR`)", path.display())]
    ModulesDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{}: found {found} but no {MANIFEST_FILE}; rename it to {MANIFEST_FILE}", dir.display())]
    MisnamedManifest { dir: PathBuf, found: String },
    #[error("{}: no shared library (*.{ext}) in the module folder{}; build the plugin and copy its library here, or name it with `library:` in {MANIFEST_FILE}", dir.display(), listing(found))]
    NoLibrary {
        dir: PathBuf,
        ext: &'static str,
        found: Vec<String>,
    },
    #[error("{}: several shared libraries ({}); name the right one with `library:` in {MANIFEST_FILE}", dir.display(), found.join(", "))]
    SeveralLibraries { dir: PathBuf, found: Vec<String> },
    #[error("{}: library `{library}` named in {MANIFEST_FILE} does not exist", dir.display())]
    LibraryMissing { dir: PathBuf, library: String },
    #[error("{}: library `{library}` resolves to {}, outside the module folder; refusing to load it", dir.display(), target.display())]
    LibraryEscapes {
        dir: PathBuf,
        library: String,
        target: PathBuf,
    },
    #[error("{}: cannot read the module folder: {source}", dir.display())]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
}

fn listing(found: &[String]) -> String {
    if found.is_empty() {
        " (the folder holds nothing else)".to_string()
    } else {
        format!(" (found: {})", found.join(", "))
    }
}

/// What a scan of the modules dir found.
#[derive(Debug, Default)]
pub struct Discovery {
    pub modules: Vec<DiscoveredModule>,
    pub problems: Vec<DiscoveryProblem>,
}

/// Scans `modules_dir`. Fails only if the directory itself cannot be read; problems with
/// single modules are collected in [`Discovery::problems`].
pub fn discover(modules_dir: &Path) -> Result<Discovery, DiscoveryError> {
    let entries = std::fs::read_dir(modules_dir).map_err(|source| DiscoveryError::ModulesDir {
        path: modules_dir.to_path_buf(),
        source,
    })?;
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .filter(|p| !file_name(p).starts_with('.'))
        .collect();
    dirs.sort();

    let mut out = Discovery::default();
    for dir in dirs {
        match discover_one(&dir) {
            Ok(Some(module)) => out.modules.push(module),
            Ok(None) => {}
            Err((label, error)) => out.problems.push(DiscoveryProblem { dir, label, error }),
        }
    }
    Ok(out)
}

/// Reads one module folder. `Ok(None)`: not a module folder.
pub fn discover_one(dir: &Path) -> Result<Option<DiscoveredModule>, (String, DiscoveryError)> {
    let folder = file_name(dir);
    let manifest_path = dir.join(MANIFEST_FILE);
    if !manifest_path.exists() {
        for alt in ["module.yml", "Module.yaml", "module.yaml.txt"] {
            if dir.join(alt).exists() {
                return Err((
                    folder,
                    DiscoveryError::MisnamedManifest {
                        dir: dir.to_path_buf(),
                        found: alt.to_string(),
                    },
                ));
            }
        }
        tracing::debug!(dir = %dir.display(), "no {MANIFEST_FILE}; not a module folder");
        return Ok(None);
    }
    let manifest = Manifest::load(&manifest_path).map_err(|e| (folder.clone(), e.into()))?;
    let label = manifest.name.to_string();
    let library = find_library(dir, manifest.library.as_deref()).map_err(|e| (label, e))?;
    Ok(Some(DiscoveredModule {
        dir: dir.to_path_buf(),
        manifest_path,
        manifest,
        library,
    }))
}

/// The module's library: the one `library:` names, or the only `*.so`/`*.dylib`/`*.dll`.
fn find_library(dir: &Path, named: Option<&str>) -> Result<PathBuf, DiscoveryError> {
    let ext = std::env::consts::DLL_EXTENSION;
    let (path, library) = match named {
        Some(lib) => {
            crate::module::manifest::check_library_path(lib).map_err(|_| {
                DiscoveryError::LibraryEscapes {
                    dir: dir.to_path_buf(),
                    library: lib.to_string(),
                    target: PathBuf::from(lib),
                }
            })?;
            let path = dir.join(lib);
            if std::fs::symlink_metadata(&path).is_err() {
                return Err(DiscoveryError::LibraryMissing {
                    dir: dir.to_path_buf(),
                    library: lib.to_string(),
                });
            }
            (path, lib.to_string())
        }
        None => {
            let io = |source| DiscoveryError::Io {
                dir: dir.to_path_buf(),
                source,
            };
            let mut all: Vec<String> = std::fs::read_dir(dir)
                .map_err(io)?
                .filter_map(|e| e.ok())
                .map(|e| file_name(&e.path()))
                .filter(|n| n != MANIFEST_FILE)
                .collect();
            all.sort();
            let libs: Vec<String> = all
                .iter()
                .filter(|n| Path::new(n).extension().is_some_and(|e| e == ext))
                .cloned()
                .collect();
            match libs.as_slice() {
                [one] => (dir.join(one), one.clone()),
                [] => {
                    return Err(DiscoveryError::NoLibrary {
                        dir: dir.to_path_buf(),
                        ext,
                        found: all,
                    })
                }
                _ => {
                    return Err(DiscoveryError::SeveralLibraries {
                        dir: dir.to_path_buf(),
                        found: libs,
                    })
                }
            }
        }
    };
    // Follow symlinks: the real file must live inside the module folder.
    let io = |source| DiscoveryError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    let real_dir = dir.canonicalize().map_err(io)?;
    let real = path
        .canonicalize()
        .map_err(|_| DiscoveryError::LibraryMissing {
            dir: dir.to_path_buf(),
            library: library.clone(),
        })?;
    if !real.starts_with(&real_dir) {
        return Err(DiscoveryError::LibraryEscapes {
            dir: dir.to_path_buf(),
            library,
            target: real,
        });
    }
    Ok(path)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
