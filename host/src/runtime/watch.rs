//! Watching the modules directory of a running host (`modhost run --watch`) and applying
//! what changes: a new folder is a drop-in, a changed one a reload, a removed one a
//! removal.
//!
//! Two ways to notice changes (`watch_mode`):
//! - `events` (default): the operating system reports changes (inotify on Linux, through
//!   the `notify` crate). A folder is looked at once it has been quiet for
//!   `watch_settle` (50 ms by default), so a rename into place is applied at once and a
//!   copy in progress is waited for.
//! - `poll`: the directory is listed every `watch_interval` (250 ms), and a folder is
//!   acted on once it looked the same for two polls in a row. For file systems that
//!   report no events (network mounts, some container volumes).
//!
//! Either way a half-written library is never loaded: before acting on a folder, its
//! library must be a complete shared library (every ELF table inside the file). One
//! that stays incomplete for [`INCOMPLETE_GRACE`] is handed to the loader anyway, which
//! refuses it with the reason, so a broken upload is reported rather than ignored.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use crate::config::WatchMode;
use crate::module::discovery::discover_one;
use crate::module::library_file;
use crate::runtime::lifecycle::Host;

/// How long a folder whose library is still incomplete is waited for before the loader
/// is asked to judge it.
pub const INCOMPLETE_GRACE: Duration = Duration::from_secs(5);

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

fn is_module_folder(path: &Path) -> bool {
    path.is_dir()
        && !path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

fn module_folders(root: &Path) -> BTreeMap<PathBuf, Fingerprint> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return BTreeMap::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| is_module_folder(p))
        .map(|p| {
            let f = fingerprint(&p);
            (p, f)
        })
        .collect()
}

/// Whether the folder's library is a complete shared library (the manifest parses and
/// the library's headers and tables all lie inside the file).
fn library_is_complete(dir: &Path) -> bool {
    match discover_one(dir) {
        Ok(Some(found)) => std::fs::read(&found.library)
            .map(|bytes| library_file::check(&bytes).is_ok())
            .unwrap_or(false),
        _ => false,
    }
}

/// Runs blocking file-system work off the runtime's workers.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(work).await.ok()
}

/// What the watcher has applied, and applies changes to the host.
struct Applier {
    host: Arc<Host>,
    /// The fingerprint of each folder as last acted on.
    applied: BTreeMap<PathBuf, Fingerprint>,
}

impl Applier {
    /// Brings the host in line with `dir` as it is now (`None`: the folder is gone).
    async fn apply(&mut self, dir: &Path, print: Option<Fingerprint>) {
        let Some(print) = print else {
            if self.applied.remove(dir).is_some() {
                tracing::info!(dir = %dir.display(), "module folder removed");
                self.host.remove_module(dir).await;
            }
            return;
        };
        if self.applied.get(dir) == Some(&print) {
            return;
        }
        let name = self
            .host
            .entries()
            .iter()
            .find(|e| e.dir == dir)
            .map(|e| e.name.clone());
        match name {
            Some(name) => {
                tracing::info!(module = %name, "change detected; reloading");
                let _ = self.host.reload_module(&name).await;
            }
            None => {
                tracing::info!(dir = %dir.display(), "new module folder detected");
                let _ = self.host.add_module(dir).await;
            }
        }
        self.applied.insert(dir.to_path_buf(), print);
    }
}

/// Starts watching the modules directory in the configured mode, until the host begins
/// to shut down. The host awaits the task before stopping modules.
pub fn spawn(host: Arc<Host>) {
    let stopping = host.stopping();
    let task = match host.config.watch_mode {
        WatchMode::Events => match EventSource::start(&host.config.modules_dir) {
            Ok(source) => tokio::spawn(watch_events(host.clone(), source, stopping)),
            Err(e) => {
                tracing::warn!(error = %e, dir = %host.config.modules_dir.display(), "cannot watch for file-system events; polling instead (set watch_mode = \"poll\" to choose this)");
                tokio::spawn(watch_polling(host.clone(), stopping))
            }
        },
        WatchMode::Poll => tokio::spawn(watch_polling(host.clone(), stopping)),
    };
    host.track(task);
}

/// File-system events under the modules directory, as the module folders they touch.
struct EventSource {
    // Kept alive: dropping it stops the events.
    _watcher: notify::RecommendedWatcher,
    folders: tokio::sync::mpsc::UnboundedReceiver<PathBuf>,
}

impl EventSource {
    fn start(root: &Path) -> notify::Result<EventSource> {
        use notify::Watcher as _;
        let (tx, folders) = tokio::sync::mpsc::unbounded_channel();
        // Events carry absolute paths, also when `modules_dir` is relative.
        let absolute = std::path::absolute(root)?;
        let configured = root.to_path_buf();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else {
                    return;
                };
                // Reads (the host's own, among others) change nothing.
                if matches!(event.kind, notify::EventKind::Access(_)) {
                    return;
                }
                for path in event.paths {
                    if let Some(folder) = folder_of(&absolute, &configured, &path) {
                        let _ = tx.send(folder);
                    }
                }
            })?;
        watcher.watch(root, notify::RecursiveMode::Recursive)?;
        Ok(EventSource {
            _watcher: watcher,
            folders,
        })
    }
}

/// The module folder that `path` (absolute, from an event) lies in, unless hidden, named
/// under the configured root as the host's module entries name it.
fn folder_of(absolute_root: &Path, configured_root: &Path, path: &Path) -> Option<PathBuf> {
    let first = path.strip_prefix(absolute_root).ok()?.components().next()?;
    let name = first.as_os_str().to_string_lossy();
    (!name.starts_with('.')).then(|| configured_root.join(first))
}

async fn watch_events(
    host: Arc<Host>,
    mut source: EventSource,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let root = host.config.modules_dir.clone();
    let settle = host.config.watch_settle;
    let scan_root = root.clone();
    let applied = blocking(move || module_folders(&scan_root))
        .await
        .unwrap_or_default();
    let mut applier = Applier { host, applied };
    // Folders with recent events: when the last one came, and since when the folder's
    // library has looked incomplete.
    let mut quiet_since: BTreeMap<PathBuf, Instant> = BTreeMap::new();
    let mut incomplete_since: BTreeMap<PathBuf, Instant> = BTreeMap::new();
    loop {
        let next_due = quiet_since.values().min().map(|last| *last + settle);
        let wake = async {
            match next_due {
                Some(due) => tokio::time::sleep_until(due.into()).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            folder = source.folders.recv() => match folder {
                Some(folder) => { quiet_since.insert(folder, Instant::now()); }
                None => break,
            },
            () = wake => {}
            _ = stopping.wait_for(|stopping| *stopping) => {}
        }
        if applier.host.is_stopping() {
            break;
        }
        if !applier.host.is_ready() {
            // Draining for shutdown: nothing is applied any more.
            quiet_since.clear();
            continue;
        }
        let now = Instant::now();
        let due: Vec<PathBuf> = quiet_since
            .iter()
            .filter(|(_, last)| now.duration_since(**last) >= settle)
            .map(|(dir, _)| dir.clone())
            .collect();
        for dir in due {
            quiet_since.remove(&dir);
            let look = dir.clone();
            let known = applier.applied.get(&dir).cloned();
            let seen = blocking(move || {
                if !is_module_folder(&look) {
                    return None;
                }
                let print = fingerprint(&look);
                // Unchanged folders need no completeness check (and no read).
                let complete = known.as_ref() == Some(&print) || library_is_complete(&look);
                Some((print, complete))
            })
            .await
            .flatten();
            let print = match seen {
                None => None,
                Some((print, complete)) => {
                    let waiting = *incomplete_since.entry(dir.clone()).or_insert(now);
                    if !complete && now.duration_since(waiting) < INCOMPLETE_GRACE {
                        // Look again soon, whether or not more events come.
                        tracing::debug!(dir = %dir.display(), "library incomplete; waiting");
                        quiet_since.insert(dir.clone(), now);
                        continue;
                    }
                    Some(print)
                }
            };
            incomplete_since.remove(&dir);
            if applier.host.is_stopping() {
                return;
            }
            applier.apply(&dir, print).await;
        }
    }
}

/// The polling fallback: act on a folder once it looked the same for two polls.
async fn watch_polling(host: Arc<Host>, mut stopping: tokio::sync::watch::Receiver<bool>) {
    let root = host.config.modules_dir.clone();
    let interval = host.config.watch_interval;
    let scan = |root: PathBuf| blocking(move || module_folders(&root));
    let applied = scan(root.clone()).await.unwrap_or_default();
    let mut previous = applied.clone();
    let mut applier = Applier { host, applied };
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stopping.wait_for(|stopping| *stopping) => {}
        }
        if applier.host.is_stopping() {
            break;
        }
        if !applier.host.is_ready() {
            continue;
        }
        let current = scan(root.clone()).await.unwrap_or_default();
        let gone: Vec<PathBuf> = applier
            .applied
            .keys()
            .filter(|d| !current.contains_key(*d))
            .cloned()
            .collect();
        let changes = current
            .iter()
            .filter(|(dir, print)| previous.get(*dir) == Some(*print))
            .map(|(dir, print)| (dir.clone(), Some(print.clone())))
            .chain(gone.into_iter().map(|dir| (dir, None)));
        for (dir, print) in changes.collect::<Vec<_>>() {
            if applier.host.is_stopping() {
                return;
            }
            applier.apply(&dir, print).await;
        }
        previous = current;
    }
}
