//! Watching the modules directory of a running host (`modhost run --watch`).
//!
//! The directory is polled (every `watch_interval`, 250 ms by default). A folder counts
//! as changed when the size or modification time of its manifest, library files or
//! migrations changed; the host acts only once the folder has looked the same for two
//! polls in a row, so a file still being written (copied, or written in place by a build)
//! is never loaded half-done. The loader then checks the library itself (headers, ABI).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use crate::runtime::lifecycle::Host;

/// What a module folder looks like on disk, cheaply.
type Fingerprint = Vec<(String, u64, Option<SystemTime>)>;

fn fingerprint(dir: &Path) -> Fingerprint {
    let mut out = Vec::new();
    let mut visit = |path: &Path, label: String| {
        if let Ok(meta) = std::fs::metadata(path) {
            out.push((label, meta.len(), meta.modified().ok()));
        }
    };
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue; // temporary files of atomic copies
            }
            visit(&entry.path(), name.clone());
            if name == crate::data::migrations::MIGRATIONS_DIR {
                if let Ok(migrations) = std::fs::read_dir(entry.path()) {
                    for m in migrations.flatten() {
                        visit(
                            &m.path(),
                            format!("{name}/{}", m.file_name().to_string_lossy()),
                        );
                    }
                }
            }
        }
    }
    out.sort();
    out
}

fn module_folders(root: &Path) -> BTreeMap<PathBuf, Fingerprint> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return BTreeMap::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .map(|p| {
            let f = fingerprint(&p);
            (p, f)
        })
        .collect()
}

/// Reads the modules directory on a blocking thread (directory listings and `stat`s
/// can block on slow or network file systems).
async fn scan(root: &Path) -> BTreeMap<PathBuf, Fingerprint> {
    let root = root.to_path_buf();
    tokio::task::spawn_blocking(move || module_folders(&root))
        .await
        .unwrap_or_default()
}

/// Polls the modules directory and applies additions, replacements and removals, until
/// the host begins to shut down. The host awaits the task before stopping modules.
pub fn spawn(host: Arc<Host>, interval: Duration) {
    let mut stopping = host.stopping();
    let watcher = host.clone();
    let task = tokio::spawn(async move {
        let host = watcher;
        let root = host.config.modules_dir.clone();
        // What the host has acted on, and the previous poll.
        let mut applied = scan(&root).await;
        let mut previous = applied.clone();
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                _ = stopping.changed() => {}
            }
            if host.is_stopping() {
                break;
            }
            if !host.is_ready() {
                continue;
            }
            let current = scan(&root).await;
            for (dir, print) in &current {
                if host.is_stopping() {
                    return;
                }
                let stable = previous.get(dir) == Some(print);
                if !stable || applied.get(dir) == Some(print) {
                    continue;
                }
                let known = host.entries().iter().any(|e| &e.dir == dir);
                if known {
                    let name = host
                        .entries()
                        .iter()
                        .find(|e| &e.dir == dir)
                        .map(|e| e.name.clone());
                    if let Some(name) = name {
                        tracing::info!(module = %name, "change detected; reloading");
                        let _ = host.reload_module(&name).await;
                    }
                } else {
                    tracing::info!(dir = %dir.display(), "new module folder detected");
                    let _ = host.add_module(dir).await;
                }
                applied.insert(dir.clone(), print.clone());
            }
            let gone: Vec<PathBuf> = applied
                .keys()
                .filter(|d| !current.contains_key(*d))
                .cloned()
                .collect();
            for dir in gone {
                if host.is_stopping() {
                    return;
                }
                tracing::info!(dir = %dir.display(), "module folder removed");
                host.remove_module(&dir).await;
                applied.remove(&dir);
            }
            previous = current;
        }
    });
    host.track(task);
}
