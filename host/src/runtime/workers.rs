//! Isolated modules in the running host: making an instance that runs in a worker
//! process, and what happens when a worker dies without being asked to.
//!
//! A crash marks the module `failed` with the signal or exit code. Its routes stay in
//! the table and answer 503 with `Retry-After`, its events wait in the bus's retries, and
//! calls to its services get the `unavailable` kind. It is restarted after a backoff that
//! doubles with each crash. After more than `worker_max_restarts` crashes within
//! `worker_restart_window` it stays failed, with the reason, until it is reloaded.
//! Every crash and restart is logged, counted in the metrics and audited.

use std::{
    path::{Path, PathBuf},
    sync::{atomic::Ordering, Arc},
    time::Instant,
};

use modhost_plugin_api::ffi::FfiModuleBox;

use crate::core::audit::Audit;
use crate::data::database::{AreaAccess, AreaPool};
use crate::data::db_handle::AreaDatabase;
use crate::isolation::{
    proxies::Deadlines,
    remote_module::{WorkerModule, WorkerSpec, WorkerState},
    slot::WorkerSlot,
    WorkerExit,
};
use crate::runtime::lifecycle::{call_plugin, Host, ModuleState};

/// Unix socket paths are limited to 108 bytes; a deeper data directory gets its worker
/// sockets under the temporary directory instead.
const MAX_SOCKET_DIR: usize = 90;

impl Host {
    /// A new instance of module `name` that runs in a worker process (started by its
    /// `init`), on the verified runtime copy `library`.
    pub(crate) async fn worker_instance(
        self: &Arc<Self>,
        name: &str,
        module_dir: &Path,
        library: &Path,
        pool: &AreaPool,
    ) -> Result<(FfiModuleBox, Arc<WorkerState>), String> {
        let database = self
            .databases
            .access(name)
            .ok_or_else(|| format!("module `{name}`: its database area is not set up"))?;
        if let AreaAccess::Sqlite { path, .. } = &database {
            sqlite_files_exist(name, pool, path).await?;
        }
        let n = self.worker_count.fetch_add(1, Ordering::Relaxed);
        let mut dir = self
            .runtime
            .path()
            .join("workers")
            .join(format!("{name}-{n}"));
        if dir.as_os_str().len() > MAX_SOCKET_DIR {
            dir = std::env::temp_dir().join(format!(
                "modhost-{}-{name}-{n}",
                crate::random::random_hex(6)
            ));
        }
        let scratch = self
            .runtime
            .path()
            .join("workers")
            .join(format!("{name}-{n}.tmp"));
        let program = worker_program()?;
        let spec = WorkerSpec {
            module: name.to_string(),
            program,
            dir,
            scratch,
            library: library.to_path_buf(),
            module_dir: module_dir.to_path_buf(),
            database,
            limits: self.config.isolation.limits_of(name),
            deadlines: Deadlines {
                request: self.config.request_timeout,
                event: self.config.events.handler_timeout,
            },
            entry_deadline: self.config.init_timeout,
            exits: self.worker_exits.clone(),
            slot: self.worker_slot(name),
            message_limit: message_limit(&self.config),
        };
        Ok(WorkerModule::create(spec))
    }

    /// The slot holding `module`'s current worker (made on first use).
    pub(crate) fn worker_slot(&self, module: &str) -> Arc<WorkerSlot> {
        self.worker_slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(module.to_string())
            .or_default()
            .clone()
    }

    /// Handles worker exits until shutdown.
    pub(crate) async fn watch_workers(
        self: Arc<Self>,
        mut exits: tokio::sync::mpsc::UnboundedReceiver<WorkerExit>,
    ) {
        let stopping = self.stopping();
        let mut stopped = std::pin::pin!(until_true(stopping));
        loop {
            tokio::select! {
                _ = &mut stopped => return,
                exit = exits.recv() => match exit {
                    Some(exit) => self.worker_exited(exit).await,
                    None => return,
                },
            }
        }
    }

    /// A worker died on its own: fail its module, then restart it or give up.
    async fn worker_exited(self: &Arc<Self>, exit: WorkerExit) {
        let _serial = self.reload_lock.lock().await;
        if self.is_stopping() {
            return;
        }
        let Some(idx) = self.entries().iter().position(|e| {
            e.name == exit.module
                && matches!(e.state, ModuleState::Started | ModuleState::Initialized)
                && e.worker
                    .as_ref()
                    .and_then(|w| w.link())
                    .is_some_and(|l| l.id() == exit.worker)
        }) else {
            // An old worker (replaced by a reload) or a module already gone.
            return;
        };
        self.crashed(idx, &exit.reason).await;
    }

    /// Records a crash of entry `idx`'s worker and schedules its restart (or gives up).
    async fn crashed(self: &Arc<Self>, idx: usize, reason: &str) {
        let settings = &self.config.isolation;
        let (name, crashes) = {
            let mut entries = self.entries();
            let e = &mut entries[idx];
            let now = Instant::now();
            e.crash_times
                .retain(|t| now.duration_since(*t) <= settings.restart_window);
            e.crash_times.push(now);
            e.crashes_total += 1;
            e.last_exit = Some(reason.to_string());
            (e.name.clone(), e.crash_times.len() as u32)
        };
        let audit = Audit::new("system", "module.crash", &name).module(&name);
        self.core
            .record(audit.outcome("failure").detail(reason))
            .await;
        if crashes > settings.max_restarts {
            let why = format!(
                "{reason}; it crashed {crashes} times within {:?}, so it is not restarted until it is reloaded",
                settings.restart_window
            );
            self.entries()[idx].restart_pending = false;
            self.fail(idx, why).await;
            self.publish_routes();
            return;
        }
        let delay = settings.backoff(crashes);
        tracing::warn!(module = %name, ?delay, crashes, "restarting the module's worker");
        let generation = {
            let mut entries = self.entries();
            let e = &mut entries[idx];
            e.state = ModuleState::Failed(reason.to_string());
            e.restart_pending = true;
            e.restart_generation += 1;
            e.restart_generation
        };
        let host = self.clone();
        tokio::spawn(async move {
            let stopping = host.stopping();
            tokio::select! {
                _ = tokio::time::sleep(delay) => host.restart_worker(name, generation).await,
                _ = until_true(stopping) => {}
            }
        });
    }

    /// Starts a new worker for a crashed module and switches to it, as a reload does
    /// (without a state hand-off: the old process is gone). Boxed: a failed restart
    /// schedules the next one, and the future's type would otherwise contain itself.
    fn restart_worker(
        self: Arc<Self>,
        name: String,
        generation: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move { self.restart_worker_now(&name, generation).await })
    }

    async fn restart_worker_now(self: &Arc<Self>, name: &str, generation: u64) {
        let _serial = self.reload_lock.lock().await;
        if self.is_stopping() {
            return;
        }
        let Some(idx) = self.entries().iter().position(|e| {
            e.name == name && e.restart_pending && e.restart_generation == generation
        }) else {
            // Reloaded, removed, failed otherwise or crashed again in the meantime (a
            // later restart is scheduled).
            return;
        };
        let found = self.entries()[idx].sources();
        let Some((dir, library, manifest)) = found else {
            return;
        };
        let prepared = match self.prepare(&dir, &library, &manifest).await {
            Ok(p) => p,
            Err(why) => return self.crashed(idx, &format!("restart failed: {why}")).await,
        };
        if let Err(why) = call_plugin(
            prepared.instance.start(),
            self.config.init_timeout,
            &prepared.handle,
        )
        .await
        {
            let _ = std::fs::remove_file(&prepared.runtime_path);
            return self
                .crashed(idx, &format!("restart failed: start failed: {why}"))
                .await;
        }
        let old_runtime: Option<PathBuf> = self.entries()[idx].runtime_path.clone();
        self.switch_to(idx, name, prepared).await;
        {
            let mut entries = self.entries();
            let e = &mut entries[idx];
            e.state = ModuleState::Started;
            e.restart_pending = false;
            e.restarts += 1;
        }
        self.publish_routes();
        if let Some(path) = old_runtime {
            let _ = std::fs::remove_file(path);
        }
        // Dependents that failed while it was down start again.
        self.revive().await;
        let pid = self.entries()[idx]
            .worker
            .as_ref()
            .and_then(|w| w.link())
            .map(|l| l.pid())
            .unwrap_or_default();
        tracing::info!(module = %name, pid, "module's worker restarted");
        let audit = Audit::new("system", "module.restart", name).module(name);
        self.core
            .record(audit.detail(&format!("new worker pid {pid}")))
            .await;
    }
}

/// The largest gRPC message between host and worker: room for the largest request body
/// and response the host allows, and at least 64 MiB (state hand-off, cache values).
fn message_limit(config: &crate::config::HostConfig) -> usize {
    let largest = config
        .max_body_bytes
        .max(config.max_response_bytes)
        .max(64 * 1024 * 1024)
        .saturating_add(1024 * 1024);
    usize::try_from(largest).unwrap_or(usize::MAX)
}

/// The `modhost` executable to start workers with. After the binary was replaced on disk
/// (an upgrade while running), the path names the new file or nothing: the running
/// binary is still `/proc/self/exe`.
fn worker_program() -> Result<PathBuf, String> {
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find the modhost executable to start a worker: {e}"))?;
    match exe.exists() {
        true => Ok(exe),
        false => Ok(PathBuf::from("/proc/self/exe")),
    }
}

/// Resolves once the watched flag turns `true` (shutdown has begun).
async fn until_true(mut flag: tokio::sync::watch::Receiver<bool>) {
    let _ = flag.wait_for(|s| *s).await.map(|_| ());
}

/// Makes sure the module's SQLite database, WAL and shared-memory files exist: the
/// worker's sandbox lets it write those files, not create files beside them.
async fn sqlite_files_exist(name: &str, pool: &AreaPool, path: &Path) -> Result<(), String> {
    let db = AreaDatabase::new(name, pool.clone());
    if let Err(e) = db.exec("SELECT 1", Vec::new()).await {
        return Err(format!("cannot open the module's database: {}", e.message));
    }
    for file in crate::isolation::sandbox::sqlite_files(path) {
        if !file.exists() {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&file)
                .map_err(|e| format!("cannot create {}: {e}", file.display()))?;
        }
    }
    Ok(())
}
