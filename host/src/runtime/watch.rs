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

/// Polls the modules directory and applies additions, replacements and removals.
pub fn spawn(host: Arc<Host>, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let root = host.config.modules_dir.clone();
        // What the host has acted on, and the previous poll.
        let mut applied = module_folders(&root);
        let mut previous = applied.clone();
        loop {
            tokio::time::sleep(interval).await;
            if !host.is_ready() {
                continue;
            }
            let current = module_folders(&root);
            for (dir, print) in &current {
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
                tracing::info!(dir = %dir.display(), "module folder removed");
                host.remove_module(&dir).await;
                applied.remove(&dir);
            }
            previous = current;
        }
    })
}
