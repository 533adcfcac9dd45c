//! `modhost package`: a vendor's module crate, anywhere on disk, turned into what
//! operators install: a release build, stripped, assembled with its `module.yaml` and
//! `migrations/` into `OUT/<name>/`, signed (optionally), checked as the host would load
//! it, and archived as `OUT/<name>-<version>.tar.gz`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::data::migrations::MIGRATIONS_DIR;
use crate::hex::sha256_hex;
use crate::module::loader::{load_verified, LoadError, RuntimeDir};
use crate::module::manifest::MANIFEST_FILE;
use crate::module::manifest::{Manifest, ManifestError};
use crate::module::signing::{self, SignatureError, TrustPolicy};

/// What to package.
#[derive(Debug, Clone)]
pub struct PackageOptions {
    /// The module's crate: its `Cargo.toml` and `module.yaml`.
    pub crate_dir: PathBuf,
    /// Where `<name>/` and `<name>-<version>.tar.gz` are written.
    pub out_dir: PathBuf,
    /// A secret key from `modhost keygen`: sign the package with it.
    pub sign_key: Option<PathBuf>,
    /// The cargo to build with (`$CARGO`, else `cargo`).
    pub cargo: String,
}

/// A package written by [`package`].
#[derive(Debug)]
pub struct Package {
    pub name: String,
    pub version: String,
    /// `OUT/<name>/`, ready to drop into `modules/` or to `modhost install`.
    pub folder: PathBuf,
    /// `OUT/<name>-<version>.tar.gz`, holding `<name>/`.
    pub archive: PathBuf,
    /// Files in the package, relative to its folder.
    pub files: Vec<String>,
    /// The public key that signed it.
    pub signed_by: Option<String>,
}

/// Why packaging failed.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("{}: no {MANIFEST_FILE}; a module crate keeps its manifest beside Cargo.toml (see `scripts/new-plugin.sh`)", dir.display())]
    NoManifest { dir: PathBuf },
    #[error("{}: no Cargo.toml; pass the module's crate folder", dir.display())]
    NoCargoToml { dir: PathBuf },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("cannot run `{cargo}`: {source}; install Rust (rustup.rs) or set CARGO")]
    CargoMissing {
        cargo: String,
        source: std::io::Error,
    },
    #[error("the release build of {} failed (cargo's errors are above)", dir.display())]
    Build { dir: PathBuf },
    #[error("the build of {} produced no cdylib; set `crate-type = [\"cdylib\"]` under [lib] in its Cargo.toml", dir.display())]
    NoLibrary { dir: PathBuf },
    #[error("module.yaml pins sha256 {pinned}, but the built library has {built}; remove the `sha256:` line or update it")]
    Pin { pinned: String, built: String },
    #[error("{} exists and is not an earlier package of this module (a crate, the crate being packaged, or another folder); pick another --out", path.display())]
    OutExists { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("signing: {0}")]
    Sign(#[from] SignatureError),
    #[error("the package would not load: {0}")]
    Load(#[from] LoadError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PackageError + '_ {
    move |source| PackageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Builds, assembles, signs, checks and archives the module crate in `options`.
pub fn package(options: &PackageOptions) -> Result<Package, PackageError> {
    let crate_dir = &options.crate_dir;
    let manifest_path = crate_dir.join(MANIFEST_FILE);
    if !manifest_path.is_file() {
        return Err(PackageError::NoManifest {
            dir: crate_dir.clone(),
        });
    }
    if !crate_dir.join("Cargo.toml").is_file() {
        return Err(PackageError::NoCargoToml {
            dir: crate_dir.clone(),
        });
    }
    let manifest = Manifest::load(&manifest_path)?;
    let built = build(options)?;
    let library_bytes = std::fs::read(&built).map_err(io(&built))?;
    if let Some(pinned) = &manifest.sha256 {
        let digest = sha256_hex(&library_bytes);
        if !digest.eq_ignore_ascii_case(pinned) {
            return Err(PackageError::Pin {
                pinned: pinned.clone(),
                built: digest,
            });
        }
    }
    let name = manifest.name.to_string();
    let library_name = match &manifest.library {
        Some(named) => named.clone(),
        None => built
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or("module.so")
            .to_string(),
    };

    // Assemble and check beside the final folder, then move it into place.
    std::fs::create_dir_all(&options.out_dir).map_err(io(&options.out_dir))?;
    let folder = options.out_dir.join(&name);
    refuse_non_package(&folder, crate_dir)?;
    let staging = options
        .out_dir
        .join(format!(".{name}-{}", crate::random::random_hex(6)));
    let assembled = assemble(crate_dir, &staging, &library_name, &library_bytes);
    let assembled = assembled.and_then(|files| {
        let signed_by = match &options.sign_key {
            Some(key) => Some(signing::sign(&staging, key)?),
            None => None,
        };
        check_loads(&staging, signed_by.as_deref())?;
        Ok((files, signed_by))
    });
    let (mut files, signed_by) = match assembled {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if signed_by.is_some() {
        files.push(signing::SIGNATURE_FILE.to_string());
    }
    replace_dir(&staging, &folder)?;
    let archive = options
        .out_dir
        .join(format!("{name}-{}.tar.gz", manifest.version));
    write_archive(&folder, &name, &archive)?;
    files.sort();
    Ok(Package {
        name,
        version: manifest.version.to_string(),
        folder,
        archive,
        files,
        signed_by,
    })
}

/// `cargo build --release --lib` of the crate, stripped; returns the cdylib's path.
fn build(options: &PackageOptions) -> Result<PathBuf, PackageError> {
    let cargo_toml = options.crate_dir.join("Cargo.toml");
    let output = Command::new(&options.cargo)
        .args([
            "build",
            "--release",
            "--lib",
            "--message-format=json-render-diagnostics",
        ])
        .arg("--manifest-path")
        .arg(&cargo_toml)
        // Strip the symbol table (the exported root-module symbol is dynamic and stays).
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .stderr(Stdio::inherit())
        .output()
        .map_err(|source| PackageError::CargoMissing {
            cargo: options.cargo.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(PackageError::Build {
            dir: options.crate_dir.clone(),
        });
    }
    let ours = std::fs::canonicalize(&cargo_toml).map_err(io(&cargo_toml))?;
    let suffix = std::env::consts::DLL_SUFFIX;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| {
            m["manifest_path"]
                .as_str()
                .and_then(|p| std::fs::canonicalize(p).ok())
                .is_some_and(|p| p == ours)
        })
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "cdylib"))
        })
        .flat_map(|m| {
            m["filenames"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|f| f.as_str().map(PathBuf::from))
        })
        .find(|f| f.to_string_lossy().ends_with(suffix))
        .ok_or_else(|| PackageError::NoLibrary {
            dir: options.crate_dir.clone(),
        })
}

/// Writes module.yaml, the library and the migrations into `dir`; returns their paths.
fn assemble(
    crate_dir: &Path,
    dir: &Path,
    library_name: &str,
    library: &[u8],
) -> Result<Vec<String>, PackageError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let manifest = dir.join(MANIFEST_FILE);
    std::fs::copy(crate_dir.join(MANIFEST_FILE), &manifest).map_err(io(&manifest))?;
    let lib = dir.join(library_name);
    if let Some(parent) = lib.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    std::fs::write(&lib, library).map_err(io(&lib))?;
    let mut files = vec![MANIFEST_FILE.to_string(), library_name.to_string()];
    let migrations = crate_dir.join(MIGRATIONS_DIR);
    if migrations.is_dir() {
        let target = dir.join(MIGRATIONS_DIR);
        std::fs::create_dir_all(&target).map_err(io(&target))?;
        for entry in std::fs::read_dir(&migrations).map_err(io(&migrations))? {
            let path = entry.map_err(io(&migrations))?.path();
            let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
                continue;
            };
            if path.is_file() && file.ends_with(".sql") {
                std::fs::copy(&path, target.join(file)).map_err(io(&path))?;
                files.push(format!("{MIGRATIONS_DIR}/{file}"));
            }
        }
    }
    Ok(files)
}

/// Refuses an output folder that is not an earlier package: anything but a package
/// folder, a crate (it holds a `Cargo.toml`), or the crate being packaged or a folder
/// holding it (`--out` pointing at the crate's own parent).
fn refuse_non_package(folder: &Path, crate_dir: &Path) -> Result<(), PackageError> {
    if !folder.exists() {
        return Ok(());
    }
    let refused = || PackageError::OutExists {
        path: folder.to_path_buf(),
    };
    let (Ok(out), Ok(krate)) = (folder.canonicalize(), crate_dir.canonicalize()) else {
        return Err(refused());
    };
    if krate.starts_with(&out)
        || folder.join("Cargo.toml").exists()
        || !folder.join(MANIFEST_FILE).is_file()
    {
        return Err(refused());
    }
    Ok(())
}

/// Moves the assembled and checked `staging` folder to `folder`: the earlier package is
/// moved aside first and deleted only once the new one is in place. `staging` is gone
/// afterwards, whatever happens.
fn replace_dir(staging: &Path, folder: &Path) -> Result<(), PackageError> {
    let aside = staging.with_extension("old");
    let result = (|| {
        if folder.exists() {
            std::fs::rename(folder, &aside).map_err(io(folder))?;
        }
        match std::fs::rename(staging, folder) {
            Ok(()) => Ok(()),
            Err(e) => {
                // Put the earlier package back.
                let _ = std::fs::rename(&aside, folder);
                Err(io(folder)(e))
            }
        }
    })();
    let _ = std::fs::remove_dir_all(&aside);
    let _ = std::fs::remove_dir_all(staging);
    result
}

/// Loads the package as a host would (signature, pin, ELF headers, plugin-api version
/// and layout), in a private scratch directory; runs no module entry point.
fn check_loads(folder: &Path, signed_by: Option<&str>) -> Result<(), PackageError> {
    let found = crate::module::discovery::discover_one(folder)
        .map_err(|(_, e)| PackageError::Io {
            path: folder.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?
        .ok_or_else(|| PackageError::NoManifest {
            dir: folder.to_path_buf(),
        })?;
    let scratch = crate::module::loader::private_scratch_dir().map_err(io(folder))?;
    let runtime = RuntimeDir::create(&scratch).map_err(io(&scratch))?;
    let policy = TrustPolicy {
        trusted_keys: signed_by.map(str::to_string).into_iter().collect(),
        require_signatures: signed_by.is_some(),
    };
    let loaded = load_verified(
        &found.dir,
        &found.manifest,
        &found.library,
        &policy,
        &runtime,
    );
    runtime.remove();
    let _ = std::fs::remove_dir_all(&scratch);
    loaded.map(|_| ()).map_err(PackageError::from)
}

/// `archive`: a gzip'd tar of `folder`, under the top-level name `name/`.
fn write_archive(folder: &Path, name: &str, archive: &Path) -> Result<(), PackageError> {
    let file = std::fs::File::create(archive).map_err(io(archive))?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    tar.append_dir_all(name, folder).map_err(io(archive))?;
    let gz = tar.into_inner().map_err(io(archive))?;
    gz.finish().map_err(io(archive))?;
    Ok(())
}
