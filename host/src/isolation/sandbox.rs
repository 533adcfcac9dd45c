//! The worker's filesystem sandbox (Linux Landlock), applied by the worker to itself
//! before it starts any thread or loads the module's library, so every thread and the
//! library's own code inherit it.
//!
//! Allowed: reading the module's folder and its library copy; reading (and executing)
//! system libraries and `/etc`; reading and writing the module's own SQLite files (not
//! creating or removing files beside them); everything inside the worker's private
//! directories (its sockets and its `TMPDIR`). Everything else on the filesystem is
//! refused, other modules' folders and databases and the host's data included. Where
//! the kernel has Landlock 6, signals to processes outside the worker (the host) and
//! abstract Unix sockets are refused too. A kernel without Landlock runs the worker
//! unconfined, and `/admin/modules` says so.
//!
//! Landlock before Linux 7 cannot refuse connecting to a Unix socket by path: the
//! sockets' other ends check who connects (`spawn::only_from`).

use std::path::{Path, PathBuf};

use landlock::{
    path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    Scope, ABI,
};

/// What the worker may reach.
#[derive(Debug, Clone, Default)]
pub struct SandboxPaths {
    pub module_dir: PathBuf,
    pub library: PathBuf,
    /// The worker's own directories: sockets and scratch (read, write, create).
    pub private: Vec<PathBuf>,
    /// Existing files it may read and write (its SQLite database and WAL files).
    pub files: Vec<PathBuf>,
}

/// System paths the worker reads: shared libraries, the dynamic loader's cache, name
/// resolution and TLS roots.
const SYSTEM_READ: &[&str] = &["/usr", "/lib", "/lib64", "/etc"];
const DEVICES_READ: &[&str] = &["/dev/urandom", "/dev/random"];
const DEVICES_WRITE: &[&str] = &["/dev/null"];

/// Confines this thread and its future threads; returns what is enforced, in words.
pub fn restrict(paths: &SandboxPaths) -> Result<String, String> {
    let abi = ABI::V5;
    // Landlock 6 (Linux 6.12): no signals to processes outside the worker (the host
    // included), no connections to abstract Unix sockets outside it. Best effort: an
    // older kernel enforces the rest.
    let scopes = Scope::from_all(ABI::V6);
    let read = AccessFs::from_read(abi);
    let file_rw = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate;
    let fail = |e: landlock::RulesetError| format!("cannot set up the Landlock sandbox: {e}");
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(fail)?
        .scope(scopes)
        .map_err(fail)?
        .create()
        .map_err(fail)?
        .add_rules(path_beneath_rules(SYSTEM_READ, read))
        .map_err(fail)?
        .add_rules(path_beneath_rules(DEVICES_READ, AccessFs::ReadFile))
        .map_err(fail)?
        .add_rules(path_beneath_rules(DEVICES_WRITE, file_rw))
        .map_err(fail)?
        .add_rules(path_beneath_rules(
            [paths.module_dir.as_path(), paths.library.as_path()],
            read,
        ))
        .map_err(fail)?
        .add_rules(path_beneath_rules(
            paths.files.iter().map(PathBuf::as_path),
            file_rw,
        ))
        .map_err(fail)?
        .add_rules(path_beneath_rules(
            paths.private.iter().map(PathBuf::as_path),
            AccessFs::from_all(abi),
        ))
        .map_err(fail)?
        .restrict_self()
        .map_err(fail)?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => "landlock: enforced".to_string(),
        RulesetStatus::PartiallyEnforced => {
            "landlock: partly enforced (this kernel's Landlock lacks some access rights)"
                .to_string()
        }
        RulesetStatus::NotEnforced => {
            "landlock: not supported by this kernel; the worker's filesystem access is not confined"
                .to_string()
        }
    })
}

/// The SQLite files of a database at `path`: the database, its WAL and its shared memory.
pub fn sqlite_files(path: &Path) -> Vec<PathBuf> {
    let name = path.as_os_str().to_owned();
    ["", "-wal", "-shm"]
        .iter()
        .map(|suffix| {
            let mut p = name.clone();
            p.push(suffix);
            PathBuf::from(p)
        })
        .collect()
}
