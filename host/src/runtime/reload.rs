//! Hot reload and drop-in deployment on a running host: replacing a module with a new
//! build, adding a module folder, removing one.
//!
//! A replacement is prepared completely (library loaded and checked, migrations, `init`,
//! `start`, state hand-off) while the old instance keeps serving; only then are its
//! routes, subscriptions and services switched, in one step. Requests already inside the
//! old instance finish (up to `shutdown_timeout`), then the old instance is stopped. Its
//! library stays mapped (never unloaded); its runtime copy is deleted. Any failure before
//! the switch leaves the old version serving and is reported in `/admin/modules`
//! (`last_reload_error`), the log and the audit log. All changes are serialised.

use std::{
    path::Path,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use abi_stable::std_types::{ROption, RResult};

use modhost_plugin_api::ffi::FfiModuleBox;

use crate::core::audit::Audit;
use crate::module::discovery::discover_one;
use crate::routes::table::Route;
use crate::runtime::lifecycle::{call_plugin, Host, ModuleEntry, ModuleState};
use crate::runtime::module_handle::ModuleHandle;

/// Extra wait after a drained instance reached zero in-flight requests, for requests
/// that looked the old route up just before the switch.
const DRAIN_GRACE: Duration = Duration::from_millis(50);

/// Why a change asked for during shutdown is refused.
const SHUTTING_DOWN: &str = "the host is shutting down";

/// Why a reload did not happen. Unless the module is unknown, the previous version (if
/// any) keeps serving.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReloadError {
    #[error("no module named `{0}`")]
    NotFound(String),
    #[error("{SHUTTING_DOWN}")]
    ShuttingDown,
    /// The new version was refused; the reason says why.
    #[error("{0}")]
    Refused(String),
}

impl From<String> for ReloadError {
    fn from(why: String) -> Self {
        ReloadError::Refused(why)
    }
}

impl Host {
    /// Replaces module `name` with what its folder holds now; returns the new version.
    pub async fn reload_module(self: &Arc<Self>, name: &str) -> Result<String, ReloadError> {
        let _serial = self.reload_lock.lock().await;
        let result = match self.is_stopping() {
            true => Err(ReloadError::ShuttingDown),
            false => self.reload_locked(name).await,
        };
        // A new version may depend on other modules than the old one.
        self.reorder();
        match &result {
            Ok(version) => {
                tracing::info!(module = %name, %version, "module reloaded");
                let entry = Audit::new("system", "module.reload", name).module(name);
                self.core
                    .record(entry.detail(&format!("version {version}")))
                    .await;
            }
            Err(error) => {
                let why = error.to_string();
                tracing::error!(module = %name, "reload refused, the previous version keeps serving: {why}");
                if let Some(e) = self.entries().iter_mut().find(|e| e.name == name) {
                    e.last_reload_error = Some(why.clone());
                }
                let entry = Audit::new("system", "module.reload", name).module(name);
                self.core
                    .record(entry.outcome("failure").detail(&why))
                    .await;
            }
        }
        result
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.entries().iter().position(|e| e.name == name)
    }

    async fn reload_locked(self: &Arc<Self>, name: &str) -> Result<String, ReloadError> {
        let idx = self
            .index_of(name)
            .ok_or_else(|| ReloadError::NotFound(name.to_string()))?;
        // A reload starts an isolated module's crash count afresh.
        self.entries()[idx].crash_times.clear();
        Ok(self.replace_module(idx, name).await?)
    }

    /// Replaces entry `idx` (module `name`) with what its folder holds now.
    async fn replace_module(self: &Arc<Self>, idx: usize, name: &str) -> Result<String, String> {
        // A crashed isolated module waiting for its restart is replaced like a running
        // one: its routes, subscriptions and services are still in place.
        let (dir, running) = {
            let entries = self.entries();
            let e = &entries[idx];
            (
                e.dir.clone(),
                e.state == ModuleState::Started || e.restart_pending,
            )
        };
        let found = discover_one(&dir)
            .map_err(|(_, e)| e.to_string())?
            .ok_or_else(|| format!("{} no longer holds a module.yaml", dir.display()))?;
        let manifest = found.manifest;
        if manifest.name.as_str() != name {
            return Err(format!(
                "the manifest in {} now names module `{}`; a module keeps its name (remove the folder and add a new one instead)",
                dir.display(),
                manifest.name
            ));
        }
        self.check_versions(name, &manifest)?;
        if !running {
            // Nothing serving: this is a plain (re)start with the new files.
            {
                let mut entries = self.entries();
                let e = &mut entries[idx];
                e.manifest = Some(manifest.clone());
                e.library = Some(found.library);
                e.version = Some(manifest.version.clone());
                e.state = ModuleState::Resolved;
            }
            self.load_and_init(idx).await;
            self.start_module(idx).await;
            self.publish_routes();
            self.revive().await;
            let entries = self.entries();
            return match &entries[idx].state {
                ModuleState::Started => Ok(manifest.version.to_string()),
                ModuleState::Failed(why) => Err(why.clone()),
                other => Err(format!("module is {}", other.name())),
            };
        }
        let prepared = self.prepare(&dir, &found.library, &manifest).await?;
        let new_runtime = prepared.runtime_path.clone();
        let refuse_new = |why: String| {
            let _ = std::fs::remove_file(&new_runtime);
            why
        };
        call_plugin(
            prepared.instance.start(),
            self.config.init_timeout,
            &prepared.handle,
        )
        .await
        .map_err(|why| refuse_new(format!("start failed: {why}")))?;
        let (old_instance, old_handle, old_routes, old_runtime) = {
            let entries = self.entries();
            let e = &entries[idx];
            (
                e.instance.clone(),
                e.handle.clone(),
                e.routes.clone(),
                e.runtime_path.clone(),
            )
        };
        // A crashed worker has no state left to hand over.
        let old_alive = {
            let entries = self.entries();
            let worker = entries[idx].worker.as_ref().and_then(|w| w.link());
            worker.is_none_or(|link| link.is_alive())
        };
        if let (Some(old), Some(old_handle), true) = (&old_instance, &old_handle, old_alive) {
            self.hand_over_state(old, old_handle, &prepared.instance)
                .await
                .map_err(refuse_new)?;
        }

        // The switch: new subscriptions and services first, then routes, then retire the old.
        let version = prepared.manifest.version.to_string();
        self.switch_to(idx, name, prepared).await;
        self.entries()[idx].state = ModuleState::Started;
        self.publish_routes();

        // Drain and stop the old instance.
        self.drain(&old_routes).await;
        if let (Some(old), Some(old_handle)) = (old_instance, old_handle) {
            if let Err(why) = call_plugin(old.stop(), self.config.init_timeout, &old_handle).await {
                tracing::warn!(module = %name, "the previous version stopped with an error: {why}");
            }
        }
        if let Some(path) = old_runtime {
            let _ = std::fs::remove_file(path);
        }
        self.revive().await;
        Ok(version)
    }

    /// Moves the running version's exported state (if it exports any) into the new one.
    async fn hand_over_state(
        &self,
        old: &FfiModuleBox,
        old_handle: &ModuleHandle,
        new: &FfiModuleBox,
    ) -> Result<(), String> {
        let deadline = self.config.init_timeout;
        let state = match tokio::time::timeout(deadline, old.export_state()).await {
            Ok(RResult::ROk(ROption::RSome(bytes))) => bytes,
            Ok(RResult::ROk(ROption::RNone)) => return Ok(()),
            Ok(RResult::RErr(e)) => {
                return Err(format!(
                    "the running version could not export its state: {e}"
                ))
            }
            Err(_) => return Err("the running version did not export its state in time".into()),
        };
        call_plugin(new.import_state(state), deadline, old_handle)
            .await
            .map_err(|why| format!("the new version refused the state hand-off: {why}"))
    }

    /// Waits until no request runs in `routes` (or the shutdown deadline passes).
    async fn drain(&self, routes: &[Arc<Route>]) {
        let deadline = Instant::now() + self.config.shutdown_timeout;
        let busy = || {
            routes
                .iter()
                .map(|r| r.inflight.load(Ordering::SeqCst))
                .sum::<usize>()
        };
        loop {
            if busy() == 0 {
                tokio::time::sleep(DRAIN_GRACE).await;
                if busy() == 0 {
                    return;
                }
            }
            if Instant::now() > deadline {
                tracing::warn!(
                    requests = busy(),
                    "drain deadline passed; stopping the previous version anyway"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Refuses a new version of `name` that its dependents' requirements exclude, or
    /// whose own required dependencies are not running in a matching version.
    fn check_versions(
        &self,
        name: &str,
        manifest: &crate::module::manifest::Manifest,
    ) -> Result<(), String> {
        let entries = self.entries();
        for e in entries.iter().filter(|e| e.state == ModuleState::Started) {
            if let Some(spec) = e
                .manifest
                .as_ref()
                .and_then(|m| m.dependencies.iter().find(|(d, _)| d.as_str() == name))
                .map(|(_, s)| s)
            {
                if !spec.version.matches(&manifest.version) {
                    return Err(format!(
                        "version {} does not satisfy `{}`, which requires `{name}` {}",
                        manifest.version, e.name, spec.version
                    ));
                }
            }
        }
        for (dep, spec) in &manifest.dependencies {
            let found = entries
                .iter()
                .find(|e| e.name == dep.as_str() && e.state == ModuleState::Started);
            match found.and_then(|e| e.version.as_ref()) {
                Some(v) if spec.version.matches(v) => {}
                Some(v) => {
                    return Err(format!(
                        "needs `{dep}` {}, but `{dep}` {v} is running",
                        spec.version
                    ))
                }
                None if spec.optional => {}
                // In a cluster, a dependency that is not a module of this host may run
                // on another one.
                None if self.cluster.is_some()
                    && !entries.iter().any(|e| e.name == dep.as_str()) =>
                {
                    if let Some(cluster) = &self.cluster {
                        cluster
                            .directory()
                            .runs(dep.as_str(), &spec.version)
                            .map_err(|found| {
                                format!("needs `{dep}` {}, which {found}", spec.version)
                            })?;
                    }
                }
                None => {
                    return Err(format!(
                        "needs `{dep}` {}, which is not running",
                        spec.version
                    ))
                }
            }
        }
        Ok(())
    }

    /// Adds the module in `dir` (a drop-in).
    pub async fn add_module(self: &Arc<Self>, dir: &Path) -> Result<(), String> {
        let _serial = self.reload_lock.lock().await;
        if self.is_stopping() {
            return Err(SHUTTING_DOWN.to_string());
        }
        let found = match discover_one(dir) {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(()),
            Err((label, e)) => {
                let why = e.to_string();
                let mut entry = ModuleEntry::new(label.clone(), dir.to_path_buf());
                entry.state = ModuleState::Failed(why.clone());
                self.replace_or_push(entry);
                tracing::error!(module = %label, "dropped-in module refused: {why}");
                return Err(why);
            }
        };
        let name = found.manifest.name.to_string();
        let clash = self
            .entries()
            .iter()
            .find(|e| e.name == name && e.dir != dir)
            .map(|e| e.dir.clone());
        if let Some(other) = clash {
            let why = format!(
                "a module named `{name}` already runs from {}; remove or rename one",
                other.display()
            );
            tracing::error!(module = %name, dir = %dir.display(), "{why}");
            return Err(why);
        }
        let mut entry = ModuleEntry::new(name.clone(), dir.to_path_buf());
        entry.version = Some(found.manifest.version.clone());
        entry.library = Some(found.library);
        entry.state = ModuleState::Resolved;
        let checked = self.check_versions(&name, &found.manifest);
        entry.manifest = Some(found.manifest);
        let idx = self.replace_or_push(entry);
        if let Err(why) = checked {
            self.fail(idx, why.clone()).await;
            return Err(why);
        }
        self.reorder();
        self.load_and_init(idx).await;
        self.start_module(idx).await;
        self.publish_routes();
        self.revive().await;
        let state = self.entries()[idx].state.clone();
        match state {
            ModuleState::Started => {
                tracing::info!(module = %name, "module dropped in and started");
                Ok(())
            }
            ModuleState::Failed(why) => Err(why),
            other => Err(format!("module is {}", other.name())),
        }
    }

    /// Puts `entry` in place of the entry for the same folder, or appends it.
    fn replace_or_push(&self, entry: ModuleEntry) -> usize {
        let mut entries = self.entries();
        match entries.iter().position(|e| e.dir == entry.dir) {
            Some(i) => {
                entries[i] = entry;
                i
            }
            None => {
                entries.push(entry);
                entries.len() - 1
            }
        }
    }

    /// Removes the module that lived in `dir`: its dependents stop first (and wait for
    /// it to come back), then it stops, and its entry goes.
    pub async fn remove_module(self: &Arc<Self>, dir: &Path) {
        let _serial = self.reload_lock.lock().await;
        if self.is_stopping() {
            return;
        }
        let Some(name) = self
            .entries()
            .iter()
            .find(|e| e.dir == dir)
            .map(|e| e.name.clone())
        else {
            return;
        };
        let mut dependents = self.dependents_of(&name);
        dependents.reverse();
        for dependent in dependents {
            let note = format!("stopped: dependency `{name}` was removed from the modules directory; it starts again when `{name}` returns");
            self.stop_one(&dependent, Some(note), Some(name.clone()))
                .await;
        }
        self.stop_one(&name, None, None).await;
        self.entries().retain(|e| e.dir != dir);
        self.reorder();
        self.publish_routes();
        tracing::info!(module = %name, "module removed");
        let entry = Audit::new("system", "module.remove", &name).module(&name);
        self.core.record(entry).await;
    }

    /// Running modules that need `name`, directly or not, in load order.
    fn dependents_of(&self, name: &str) -> Vec<String> {
        let entries = self.entries();
        let mut out: Vec<String> = Vec::new();
        let mut frontier = vec![name.to_string()];
        while let Some(current) = frontier.pop() {
            for e in entries.iter().filter(|e| e.state == ModuleState::Started) {
                let needs = e.manifest.as_ref().is_some_and(|m| {
                    m.dependencies
                        .iter()
                        .any(|(d, s)| d.as_str() == current && !s.optional)
                });
                if needs && !out.contains(&e.name) {
                    out.push(e.name.clone());
                    frontier.push(e.name.clone());
                }
            }
        }
        out.sort_by_key(|n| {
            entries
                .iter()
                .find(|e| &e.name == n)
                .and_then(|e| e.load_order)
        });
        out
    }

    /// Stops one running module: its routes leave the table, in-flight requests drain,
    /// then `stop` runs and its subscriptions and services go.
    async fn stop_one(&self, name: &str, note: Option<String>, waiting_for: Option<String>) {
        let Some(idx) = self.index_of(name) else {
            return;
        };
        let (instance, handle, routes) = {
            let mut entries = self.entries();
            let e = &mut entries[idx];
            // A crashed isolated module waiting for its restart still holds its
            // subscriptions and services: it is stopped like a running one.
            let running = matches!(e.state, ModuleState::Started | ModuleState::Initialized);
            if !running && !e.restart_pending {
                e.note = note.clone().or(e.note.take());
                e.waiting_for = waiting_for.clone().or(e.waiting_for.take());
                return;
            }
            e.state = ModuleState::Stopping;
            (e.instance.clone(), e.handle.clone(), e.routes.clone())
        };
        self.publish_routes();
        self.drain(&routes).await;
        match (instance, handle) {
            (Some(instance), Some(handle)) => self.stop_instance(name, &instance, &handle).await,
            _ => {
                self.bus.unsubscribe_module(name);
                self.services.unregister_module(name);
            }
        }
        let runtime = {
            let mut entries = self.entries();
            let e = &mut entries[idx];
            e.state = ModuleState::Stopped;
            e.routes.clear();
            e.instance = None;
            e.handle = None;
            e.worker = None;
            e.restart_pending = false;
            e.note = note;
            e.waiting_for = waiting_for;
            e.runtime_path.take()
        };
        if let Some(path) = runtime {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Starts modules that wait for a dependency that now runs, until none is left.
    pub(crate) async fn revive(self: &Arc<Self>) {
        loop {
            let ready = {
                let entries = self.entries();
                entries.iter().position(|e| {
                    e.state != ModuleState::Started
                        && e.manifest.is_some()
                        && e.library.is_some()
                        && e.waiting_for.as_ref().is_some_and(|dep| {
                            entries
                                .iter()
                                .any(|d| &d.name == dep && d.state == ModuleState::Started)
                        })
                })
            };
            let Some(idx) = ready else { return };
            let name = {
                let mut entries = self.entries();
                let e = &mut entries[idx];
                e.state = ModuleState::Resolved;
                e.waiting_for = None;
                e.note = None;
                e.name.clone()
            };
            tracing::info!(module = %name, "dependency is back; starting");
            self.load_and_init(idx).await;
            self.start_module(idx).await;
            self.publish_routes();
        }
    }
}
