//! The running host: its modules, their states, and the boot and shutdown sequences.
//!
//! Boot: discover, resolve, then load and init each module in dependency order, start
//! them in the same order, and publish their routes. Shutdown: stop the modules in
//! reverse order. A failure (error, panic or timeout) fails that module and its
//! dependents, never the host, unless `strict` is set.

use std::{
    collections::BTreeMap,
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, RwLock, Weak,
    },
    time::{Duration, Instant, SystemTime},
};

use abi_stable::std_types::RResult;
use async_ffi::FfiFuture;
use futures_util::FutureExt as _;
use modhost_plugin_api::ffi::{FfiInitContext, FfiModuleBox, FfiUnitResult};
use semver::Version;
use serde::Serialize;

use crate::cache::{memory::InProcessCache, CacheStore};
use crate::config::HostConfig;
use crate::core::{audit::Audit, Core, CoreSetupError};
use crate::data::database::{Databases, DbSetupError};
use crate::data::db_handle::AreaDatabase;
use crate::data::migrations;
use crate::events::{memory::InProcessBus, DeadLetter, DeadLetterSink, EventBus};
use crate::isolation::{remote_module::WorkerState, ExitSender};
use crate::module::discovery::{Discovery, DiscoveryError};
use crate::module::inspect::Inspection;
use crate::module::loader::{load_verified, verify_and_copy, LoadedLibrary, RuntimeDir};
use crate::module::manifest::{Dependency, Isolation, Manifest, ModuleName};
use crate::module::resolve::{resolve_with, Absent, ModuleSpec, Resolution, ResolveError};
use crate::routes::metrics::Metrics;
use crate::routes::table::{Route, RouteError, RouteInfo, RouteTable};
use crate::runtime::module_handle::{ModuleHandle, ModuleRules, Registrations};
use crate::runtime::platform::Platform;
use crate::services::local::ServiceRegistry;

/// Where a module is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleState {
    Discovered,
    Resolved,
    Loaded,
    Initialized,
    Started,
    Stopping,
    Stopped,
    Failed(String),
}

impl ModuleState {
    /// The state's name, e.g. `started`.
    pub fn name(&self) -> &'static str {
        match self {
            ModuleState::Discovered => "discovered",
            ModuleState::Resolved => "resolved",
            ModuleState::Loaded => "loaded",
            ModuleState::Initialized => "initialized",
            ModuleState::Started => "started",
            ModuleState::Stopping => "stopping",
            ModuleState::Stopped => "stopped",
            ModuleState::Failed(_) => "failed",
        }
    }

    /// All state names, for metrics.
    pub const NAMES: &'static [&'static str] = &[
        "discovered",
        "resolved",
        "loaded",
        "initialized",
        "started",
        "stopping",
        "stopped",
        "failed",
    ];
}

/// One module as the host sees it.
pub struct ModuleEntry {
    pub name: String,
    pub version: Option<Version>,
    pub dir: PathBuf,
    pub library: Option<PathBuf>,
    pub manifest: Option<Manifest>,
    pub state: ModuleState,
    /// Position in the load order (0-based), for modules that resolved.
    pub load_order: Option<usize>,
    pub runtime_path: Option<PathBuf>,
    pub plugin_api_version: Option<String>,
    /// The public key (hex) that signed the running version; `None`: unsigned.
    pub signed_by: Option<String>,
    /// Time to load the library and run `init`.
    pub load_time: Option<Duration>,
    pub loaded_at: Option<SystemTime>,
    pub routes: Vec<Arc<Route>>,
    /// Payload schemas of the topics it publishes, as it described them.
    pub event_docs: Vec<(String, serde_json::Value)>,
    pub(crate) instance: Option<Arc<FfiModuleBox>>,
    pub(crate) handle: Option<ModuleHandle>,
    /// A required dependency this module waits for (it starts when that one does).
    pub waiting_for: Option<String>,
    /// Why the last hot reload was refused (the previous version kept serving).
    pub last_reload_error: Option<String>,
    /// Why a stopped module is stopped (e.g. its dependency was removed).
    pub note: Option<String>,
    /// Where its code runs.
    pub isolation: Isolation,
    /// The running instance's worker, when isolated.
    pub(crate) worker: Option<Arc<WorkerState>>,
    /// Worker restarts after crashes, and crashes, since the host started.
    pub restarts: u32,
    pub crashes_total: u32,
    /// Crashes within the restart window.
    pub(crate) crash_times: Vec<Instant>,
    /// How the last worker ended on its own.
    pub last_exit: Option<String>,
    /// Crashed, and a restart is scheduled: its routes answer 503.
    pub(crate) restart_pending: bool,
    /// Numbers scheduled restarts: only the latest one runs.
    pub(crate) restart_generation: u64,
}

/// A new instance, initialised but not yet live.
pub(crate) struct Prepared {
    pub manifest: Manifest,
    pub library: PathBuf,
    pub instance: Arc<FfiModuleBox>,
    pub handle: ModuleHandle,
    pub registrations: Registrations,
    pub runtime_path: PathBuf,
    pub plugin_api_version: String,
    pub signed_by: Option<String>,
    pub load_time: Duration,
    pub isolation: Isolation,
    pub worker: Option<Arc<WorkerState>>,
}

impl ModuleEntry {
    pub(crate) fn new(name: String, dir: PathBuf) -> Self {
        Self {
            name,
            version: None,
            dir,
            library: None,
            manifest: None,
            state: ModuleState::Discovered,
            load_order: None,
            runtime_path: None,
            plugin_api_version: None,
            signed_by: None,
            load_time: None,
            loaded_at: None,
            routes: Vec::new(),
            event_docs: Vec::new(),
            instance: None,
            handle: None,
            waiting_for: None,
            last_reload_error: None,
            note: None,
            isolation: Isolation::InProcess,
            worker: None,
            restarts: 0,
            crashes_total: 0,
            crash_times: Vec::new(),
            last_exit: None,
            restart_pending: false,
            restart_generation: 0,
        }
    }

    /// Its folder, library and manifest, when it has them.
    pub(crate) fn sources(&self) -> Option<(PathBuf, PathBuf, Manifest)> {
        match (self.library.clone(), self.manifest.clone()) {
            (Some(library), Some(manifest)) => Some((self.dir.clone(), library, manifest)),
            _ => None,
        }
    }

    fn dependencies(&self) -> BTreeMap<ModuleName, Dependency> {
        self.manifest
            .as_ref()
            .map(|m| m.dependencies.clone())
            .unwrap_or_default()
    }
}

/// What `/admin/modules` shows of a module.
#[derive(Debug, Serialize)]
pub struct ModuleReport {
    pub name: String,
    pub version: Option<String>,
    pub state: &'static str,
    pub reason: Option<String>,
    /// Why the last hot reload was refused; the previous version kept serving.
    pub last_reload_error: Option<String>,
    pub load_order: Option<usize>,
    pub dependencies: BTreeMap<String, DependencyReport>,
    pub routes: Vec<RouteInfo>,
    pub dir: PathBuf,
    pub library: Option<PathBuf>,
    pub runtime_path: Option<PathBuf>,
    pub plugin_api_version: Option<String>,
    /// The public key (hex) that signed the running version; `null`: unsigned.
    pub signed_by: Option<String>,
    pub load_time_ms: Option<f64>,
    pub loaded_at_unix: Option<u64>,
    /// `in-process` or `process`.
    pub isolation: &'static str,
    /// Isolated modules: the worker's process id, while it runs.
    pub worker_pid: Option<u32>,
    /// Isolated modules: what the worker's sandbox enforces.
    pub worker_sandbox: Option<String>,
    /// Worker restarts after crashes since the host started.
    pub restarts: u32,
    pub crashes: u32,
    /// How the last worker ended on its own (signal or exit code).
    pub last_exit: Option<String>,
}

/// A dependency in a [`ModuleReport`].
#[derive(Debug, Serialize)]
pub struct DependencyReport {
    pub requirement: String,
    pub optional: bool,
}

/// Why the host could not boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot create the runtime directory under {}: {source}; check --data-dir", data_dir.display())]
    Runtime {
        data_dir: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error(transparent)]
    Database(#[from] DbSetupError),
    #[error(transparent)]
    Core(#[from] CoreSetupError),
    #[error(transparent)]
    RemoteCore(#[from] crate::core::remote::RemoteSetupError),
    #[error(transparent)]
    EventBus(#[from] crate::events::nats::NatsSetupError),
    #[cfg(feature = "kafka")]
    #[error(transparent)]
    Kafka(#[from] crate::events::kafka::KafkaSetupError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::node::ClusterSetupError),
    #[error(transparent)]
    Cache(#[from] crate::cache::redis::RedisSetupError),
    #[error("--strict: {} module(s) failed:\n  {}", .0.len(), .0.join("\n  "))]
    Strict(Vec<String>),
}

/// The running host.
pub struct Host {
    pub config: HostConfig,
    pub core: Arc<Core>,
    pub metrics: Arc<Metrics>,
    modules: Mutex<Vec<ModuleEntry>>,
    routes: RwLock<Arc<RouteTable>>,
    pub(crate) runtime: RuntimeDir,
    pub(crate) databases: Databases,
    /// Where isolated modules' workers report their exits (`runtime/workers.rs`).
    pub(crate) worker_exits: ExitSender,
    /// Numbers worker directories.
    pub(crate) worker_count: std::sync::atomic::AtomicU64,
    /// Each isolated module's current worker, for event deliveries.
    pub(crate) worker_slots:
        Mutex<std::collections::HashMap<String, Arc<crate::isolation::slot::WorkerSlot>>>,
    /// Serialises reloads, drop-ins and removals.
    pub(crate) reload_lock: tokio::sync::Mutex<()>,
    pub bus: Arc<dyn EventBus>,
    pub cache: Arc<dyn CacheStore>,
    pub services: Arc<ServiceRegistry>,
    /// This host in its cluster (`registry_url` set), or `None`: the host runs alone.
    pub cluster: Option<Arc<crate::cluster::node::Cluster>>,
    ready: AtomicBool,
    /// Turns `true` when shutdown begins: background tasks end, and reloads, drop-ins
    /// and removals waiting for `reload_lock` are refused.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Background tasks (the folder watcher) that shutdown waits for.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Host {
    /// Discovers, resolves, loads, initialises and starts every module.
    pub async fn boot(config: HostConfig) -> Result<Arc<Host>, BootError> {
        let runtime =
            RuntimeDir::create(&config.data_dir).map_err(|source| BootError::Runtime {
                data_dir: config.data_dir.clone(),
                source,
            })?;
        let databases = Databases::connect(&config.database()).await?;
        tracing::info!(database = %databases.describe(), "database ready");
        let core = Arc::new(match &config.core.url {
            None => Core::open(databases.core(), config.auth.clone()).await?,
            Some(url) => {
                tracing::info!(core = %url, "core services are remote (gRPC)");
                Core::remote(&config.core, &config.data_dir)?
            }
        });
        let Inspection {
            discovery,
            resolution,
        } = Inspection::of_with(&config.modules_dir, absent_dependencies(&config))?;

        let (mut entries, failed) = module_entries(discovery, resolution);
        for e in &failed {
            if let ModuleState::Failed(reason) = &e.state {
                tracing::error!(module = %e.name, dir = %e.dir.display(), "module failed: {reason}");
                let entry = Audit::new("system", "module.fail", &e.name).module(&e.name);
                core.record(entry.outcome("failure").detail(reason)).await;
            }
        }
        let count = entries.len();
        entries.extend(failed);
        let sink = audit_dead_letters(core.clone());
        let bus: Arc<dyn EventBus> = match &config.cluster.event_bus {
            None => Arc::new(InProcessBus::new(config.events.clone(), sink)),
            #[cfg(feature = "kafka")]
            Some(url) if url.starts_with("kafka://") => {
                tracing::info!(event_bus = %crate::redact::url(url), "event bus: Kafka");
                crate::events::kafka::KafkaBus::start(
                    url,
                    &config.cluster.name,
                    config.events.clone(),
                    sink,
                    &config.data_dir,
                )
                .await?
            }
            Some(url) => {
                tracing::info!(event_bus = %crate::redact::url(url), "event bus: NATS JetStream");
                crate::events::nats::NatsBus::start(
                    url,
                    &config.cluster.name,
                    config.events.clone(),
                    sink,
                    &config.data_dir,
                )
                .await?
            }
        };
        let cache: Arc<dyn CacheStore> = match &config.cluster.cache {
            None => Arc::new(InProcessCache::new(
                config.cache_max_bytes,
                config.cache_default_ttl,
            )),
            Some(url) => {
                tracing::info!(cache = %crate::redact::url(url), "cache: Redis");
                Arc::new(crate::cache::redis::RedisCache::new(
                    url,
                    &config.cluster.name,
                    config.cache_default_ttl,
                )?)
            }
        };
        let services = Arc::new(ServiceRegistry::default());
        let cluster = match config.cluster.clustered() {
            true => Some(
                crate::cluster::node::Cluster::start(
                    &config.cluster,
                    &config.data_dir,
                    services.clone(),
                )
                .await?,
            ),
            false => None,
        };
        let (worker_exits, exits) = tokio::sync::mpsc::unbounded_channel();
        let host = Arc::new(Host {
            config,
            core,
            metrics: Arc::new(Metrics::default()),
            modules: Mutex::new(entries),
            routes: RwLock::new(Arc::new(RouteTable::default())),
            runtime,
            databases,
            worker_exits,
            worker_count: std::sync::atomic::AtomicU64::new(0),
            worker_slots: Mutex::new(std::collections::HashMap::new()),
            reload_lock: tokio::sync::Mutex::new(()),
            bus,
            cache,
            services,
            cluster,
            ready: AtomicBool::new(false),
            stopping: tokio::sync::watch::Sender::new(false),
            tasks: Mutex::new(Vec::new()),
        });
        if let Some(cluster) = &host.cluster {
            let weak = Arc::downgrade(&host);
            let http = host.config.listen.to_string();
            let id = cluster.host_id.clone();
            let address = cluster.address.to_string();
            let record = move || match weak.upgrade() {
                Some(host) => host.cluster_record(),
                None => crate::cluster::record::HostRecord {
                    host_id: id.clone(),
                    address: address.clone(),
                    http: http.clone(),
                    modhost: env!("CARGO_PKG_VERSION").to_string(),
                    modules: Vec::new(),
                },
            };
            cluster.register(&host.config.cluster, Arc::new(record));
        }
        // First every module whose dependencies are here or already run elsewhere, so
        // that hosts needing each other's modules do not wait on each other; then, in
        // order, those that wait for a dependency on another host (and their local
        // dependents), up to `dependency_wait`.
        let mut deferred: Vec<usize> = Vec::new();
        for idx in 0..count {
            if host.needs_remote_wait(idx, &deferred) {
                deferred.push(idx);
                continue;
            }
            host.load_and_init(idx).await;
        }
        let remote_deadline = Instant::now() + host.config.cluster.dependency_wait;
        for idx in deferred {
            if let Err(why) = host
                .wait_for_remote_dependencies(idx, remote_deadline)
                .await
            {
                host.fail(idx, why).await;
                continue;
            }
            host.load_and_init(idx).await;
        }
        for idx in 0..count {
            host.start_module(idx).await;
        }
        host.publish_routes();
        if let Some(cluster) = &host.cluster {
            // The modules' states as booted, now rather than at the next refresh.
            cluster.announce();
        }
        // Exits during boot wait in the channel until every module is committed.
        host.track(tokio::spawn(host.clone().watch_workers(exits)));

        let failures: Vec<String> = host
            .entries()
            .iter()
            .filter_map(|e| match &e.state {
                ModuleState::Failed(reason) => Some(format!("{}: {reason}", e.name)),
                _ => None,
            })
            .collect();
        if host.config.strict && !failures.is_empty() {
            host.stop_all().await;
            return Err(BootError::Strict(failures));
        }
        host.ready.store(true, Ordering::SeqCst);
        Ok(host)
    }

    pub(crate) fn entries(&self) -> std::sync::MutexGuard<'_, Vec<ModuleEntry>> {
        self.modules.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the host has booted and is not shutting down.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The current route table.
    pub fn routes(&self) -> Arc<RouteTable> {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The event payloads the running modules described (for OpenAPI).
    pub fn event_docs(&self) -> Vec<(String, String, serde_json::Value)> {
        self.entries()
            .iter()
            .filter(|e| matches!(e.state, ModuleState::Started))
            .flat_map(|e| {
                e.event_docs
                    .iter()
                    .map(|(topic, schema)| (e.name.clone(), topic.clone(), schema.clone()))
            })
            .collect()
    }

    pub(crate) fn publish_routes(&self) {
        let table = {
            let entries = self.entries();
            RouteTable::new(
                entries
                    .iter()
                    // A crashed worker's routes stay, answering 503 until it is back.
                    .filter(|e| e.state == ModuleState::Started || e.restart_pending)
                    .map(|e| (e.name.clone(), e.routes.clone())),
            )
        };
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
    }

    pub(crate) async fn fail(&self, idx: usize, reason: String) {
        let name = {
            let mut entries = self.entries();
            let e = &mut entries[idx];
            tracing::error!(module = %e.name, "module failed: {reason}");
            e.state = ModuleState::Failed(reason.clone());
            e.routes.clear();
            e.instance = None;
            e.worker = None;
            e.restart_pending = false;
            e.name.clone()
        };
        self.bus.unsubscribe_module(&name);
        self.services.unregister_module(&name);
        self.core
            .record(
                Audit::new("system", "module.fail", &name)
                    .module(&name)
                    .outcome("failure")
                    .detail(&reason),
            )
            .await;
    }

    /// The first required dependency of entry `idx` that is not in `wanted` state (or
    /// started), and why.
    fn unmet_dependency(&self, idx: usize, wanted: &ModuleState) -> Option<(String, String)> {
        let entries = self.entries();
        let deps = entries[idx].dependencies();
        for (dep, spec) in deps {
            let found = entries.iter().find(|e| e.name == dep.as_str());
            // In a cluster, a dependency that is not a module of this host runs on
            // another one: `wait_for_remote_dependencies` checked it.
            if found.is_none() && self.cluster.is_some() {
                continue;
            }
            // A started dependency is also initialised.
            let ok = found.is_some_and(|e| &e.state == wanted || e.state == ModuleState::Started);
            if !ok && !spec.optional {
                let why = match found.map(|e| &e.state) {
                    Some(ModuleState::Failed(r)) => format!("dependency `{dep}` failed: {r}"),
                    Some(s) => format!("dependency `{dep}` is {}", s.name()),
                    None => format!("dependency `{dep}` is not present"),
                };
                return Some((dep.to_string(), why));
            }
        }
        None
    }

    /// Whether module `idx` must wait: a required dependency that is not a module of
    /// this host runs on no other host yet, or a dependency is among `deferred`.
    fn needs_remote_wait(&self, idx: usize, deferred: &[usize]) -> bool {
        let Some(cluster) = &self.cluster else {
            return false;
        };
        let entries = self.entries();
        entries[idx].dependencies().into_iter().any(|(dep, spec)| {
            match entries.iter().position(|e| e.name == dep.as_str()) {
                Some(local) => deferred.contains(&local),
                None => {
                    !spec.optional
                        && cluster
                            .directory()
                            .runs(dep.as_str(), &spec.version)
                            .is_err()
                }
            }
        })
    }

    /// In a cluster, waits (up to `deadline`) until every required dependency of
    /// module `idx` that is not a module of this host runs on another host in a
    /// matching version; the error is the module's failure reason.
    pub(crate) async fn wait_for_remote_dependencies(
        &self,
        idx: usize,
        deadline: Instant,
    ) -> Result<(), String> {
        let Some(cluster) = &self.cluster else {
            return Ok(());
        };
        let remote: Vec<(String, semver::VersionReq)> = {
            let entries = self.entries();
            entries[idx]
                .dependencies()
                .into_iter()
                .filter(|(dep, spec)| {
                    !spec.optional && !entries.iter().any(|e| e.name == dep.as_str())
                })
                .map(|(dep, spec)| (dep.to_string(), spec.version))
                .collect()
        };
        let waited = self.config.cluster.dependency_wait;
        for (dep, requirement) in remote {
            if cluster.directory().runs(&dep, &requirement).is_err() {
                tracing::info!(module = %self.entries()[idx].name, dependency = %dep, "waiting up to {waited:?} for a dependency on another host");
            }
            if let Err(found) = cluster.wait_for_module(&dep, &requirement, deadline).await {
                self.entries()[idx].waiting_for = Some(dep.clone());
                return Err(format!(
                    "dependency `{dep}` {requirement} is not a module of this host and {found} (waited up to dependency_wait = {waited:?}); start it on a host of the cluster, then reload this module"
                ));
            }
        }
        Ok(())
    }

    /// What this host announces in the registry.
    pub fn cluster_record(&self) -> crate::cluster::record::HostRecord {
        let modules = self
            .entries()
            .iter()
            .filter_map(|e| {
                let manifest = e.manifest.as_ref()?;
                Some(crate::cluster::record::ModuleRecord {
                    name: e.name.clone(),
                    version: manifest.version.to_string(),
                    state: e.state.name().to_string(),
                    services: manifest
                        .services
                        .iter()
                        .map(|s| s.as_str().to_string())
                        .collect(),
                })
            })
            .collect();
        crate::cluster::record::HostRecord {
            host_id: self
                .cluster
                .as_ref()
                .map(|c| c.host_id.clone())
                .unwrap_or_default(),
            address: self
                .cluster
                .as_ref()
                .map(|c| c.address.to_string())
                .unwrap_or_default(),
            http: self.config.listen.to_string(),
            modhost: env!("CARGO_PKG_VERSION").to_string(),
            modules,
        }
    }

    pub(crate) async fn load_and_init(self: &Arc<Self>, idx: usize) {
        if let Some((dep, why)) = self.unmet_dependency(idx, &ModuleState::Initialized) {
            self.fail(idx, why).await;
            self.entries()[idx].waiting_for = Some(dep);
            return;
        }
        let found = self.entries()[idx].sources();
        let Some((dir, library, manifest)) = found else {
            return self.fail(idx, "no library or manifest".into()).await;
        };
        match self.prepare(&dir, &library, &manifest).await {
            Ok(prepared) => self.commit(idx, prepared).await,
            Err(why) => self.fail(idx, why).await,
        }
    }

    /// Loads, migrates and initialises a new instance of a module, without making it
    /// visible: nothing it registered is live yet. On error nothing changed but the
    /// database (migrations that succeeded stay applied).
    pub(crate) async fn prepare(
        self: &Arc<Self>,
        dir: &Path,
        library: &Path,
        manifest: &Manifest,
    ) -> Result<Prepared, String> {
        let name = manifest.name.to_string();
        let rules = ModuleRules::of(manifest);
        self.core
            .register_permissions(&name, rules.permissions.iter().cloned().collect())?;
        let started = Instant::now();
        let isolation = self.config.isolation.of(manifest);
        let (runtime_path, signed, root) = match isolation {
            Isolation::InProcess => {
                let loaded = self.load_off_runtime(dir, library, manifest).await?;
                let root = (loaded.root, loaded.plugin_api_version);
                (loaded.runtime_path, loaded.signed, Some(root))
            }
            Isolation::Process => {
                let (copy, signed) = self.verify_off_runtime(dir, library, manifest).await?;
                (copy, signed, None)
            }
        };
        // From here on, a failure also deletes the runtime copy just made.
        let discard_copy = |why: String| {
            let _ = std::fs::remove_file(&runtime_path);
            why
        };
        let pool = self
            .databases
            .for_module(&name)
            .await
            .map_err(|e| discard_copy(e.to_string()))?;
        let signed_files = signed.as_ref().map(|s| &s.files);
        match migrations::apply(&pool, dir, signed_files).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(module = %name, applied = n, "migrations applied"),
            Err(e) => return Err(discard_copy(e.to_string())),
        }
        let (module, worker, version) = match root {
            Some((root, version)) => match (root.new_module())() {
                RResult::ROk(m) => (Arc::new(m), None, version),
                RResult::RErr(e) => return Err(discard_copy(e.into_string())),
            },
            None => {
                let (m, state) = self
                    .worker_instance(&name, dir, &runtime_path, &pool)
                    .await
                    .map_err(discard_copy)?;
                (Arc::new(m), Some(state), String::new())
            }
        };
        let handle = ModuleHandle::new(
            &name,
            AreaDatabase::new(&name, pool),
            rules.clone(),
            Arc::downgrade(self) as Weak<dyn Platform>,
        );
        let registrations = self
            .init_instance(&module, &handle, manifest)
            .await
            .map_err(|why| discard_copy(format!("init failed: {why}")))?;
        let plugin_api_version = match &worker {
            Some(w) => w.plugin_api_version().unwrap_or_default().to_string(),
            None => version,
        };
        Ok(Prepared {
            manifest: manifest.clone(),
            library: library.to_path_buf(),
            instance: module,
            handle,
            registrations,
            runtime_path,
            plugin_api_version,
            signed_by: signed.map(|s| s.key),
            load_time: started.elapsed(),
            isolation,
            worker,
        })
    }

    /// Verifies the library and makes its runtime copy on a blocking thread, without
    /// loading it into the host: for an isolated module, whose worker loads the copy.
    async fn verify_off_runtime(
        self: &Arc<Self>,
        dir: &Path,
        library: &Path,
        manifest: &Manifest,
    ) -> Result<(PathBuf, Option<crate::module::signing::SignedFolder>), String> {
        let (host, dir, manifest) = (self.clone(), dir.to_path_buf(), manifest.clone());
        let (library, policy) = (library.to_path_buf(), self.config.trust_policy());
        tokio::task::spawn_blocking(move || {
            verify_and_copy(&dir, &manifest, &library, &policy, &host.runtime)
        })
        .await
        .map_err(|e| format!("loading the library failed: {e}"))?
        .map_err(|e| e.to_string())
    }

    /// Verifies and loads the library on a blocking thread: reading, hashing and
    /// copying it and dlopen block, and the runtime's workers serve requests meanwhile.
    async fn load_off_runtime(
        self: &Arc<Self>,
        dir: &Path,
        library: &Path,
        manifest: &Manifest,
    ) -> Result<LoadedLibrary, String> {
        let (host, dir, manifest) = (self.clone(), dir.to_path_buf(), manifest.clone());
        let (library, policy) = (library.to_path_buf(), self.config.trust_policy());
        tokio::task::spawn_blocking(move || {
            load_verified(&dir, &manifest, &library, &policy, &host.runtime)
        })
        .await
        .map_err(|e| format!("loading the library failed: {e}"))?
        .map_err(|e| e.to_string())
    }

    /// Runs the module's `init` and checks what it registered against its manifest.
    async fn init_instance(
        &self,
        module: &FfiModuleBox,
        handle: &ModuleHandle,
        manifest: &Manifest,
    ) -> Result<Registrations, String> {
        let name = manifest.name.as_str();
        let ctx = FfiInitContext {
            module_name: name.into(),
            config_json: self
                .config
                .module_config(name, &manifest.config)
                .to_string()
                .into(),
            host: handle.to_ffi(),
        };
        let result = call_plugin(module.init(ctx), self.config.init_timeout, handle).await;
        let registrations = handle.take_registrations();
        result?;
        let mut errors = registrations.errors.clone();
        errors.extend(
            handle
                .rules()
                .public
                .iter()
                .filter(|(m, p)| {
                    !registrations
                        .routes
                        .iter()
                        .any(|r| &r.info.method == m && &r.info.path == p)
                })
                .map(|(m, p)| {
                    RouteError::PublicNotRegistered {
                        method: m.clone(),
                        path: p.clone(),
                    }
                    .to_string()
                }),
        );
        match errors.is_empty() {
            true => Ok(registrations),
            false => Err(errors.join("; ")),
        }
    }

    /// Makes a prepared instance the entry's current one (state `initialized`) and
    /// activates its subscriptions and services. Routes go live with `publish_routes`.
    pub(crate) async fn commit(&self, idx: usize, p: Prepared) {
        let name = p.manifest.name.to_string();
        self.core
            .record(
                Audit::new("system", "module.load", &name)
                    .module(&name)
                    .detail(&format!("version {}", p.manifest.version)),
            )
            .await;
        // Events for an isolated module go to this instance's worker from now on,
        // those still queued for a previous one included.
        if let Some(link) = p.worker.as_ref().and_then(|w| w.link()) {
            self.worker_slot(&name).set(link.clone());
        }
        for (pattern, handler) in p.registrations.subscriptions {
            self.bus.subscribe(&name, &pattern, handler);
        }
        for (service, handler) in p.registrations.services {
            self.services.register(&name, &service, handler);
        }
        let mut entries = self.entries();
        let e = &mut entries[idx];
        e.state = ModuleState::Initialized;
        e.version = Some(p.manifest.version.clone());
        e.library = Some(p.library);
        e.manifest = Some(p.manifest);
        e.routes = p.registrations.routes;
        e.event_docs = p.registrations.event_docs;
        e.instance = Some(p.instance);
        e.handle = Some(p.handle);
        e.runtime_path = Some(p.runtime_path);
        e.plugin_api_version = Some(p.plugin_api_version);
        e.signed_by = p.signed_by;
        e.load_time = Some(p.load_time);
        e.loaded_at = Some(SystemTime::now());
        e.isolation = p.isolation;
        e.worker = p.worker;
        e.restart_pending = false;
        e.waiting_for = None;
        e.last_reload_error = None;
        let routes: Vec<String> = e
            .routes
            .iter()
            .map(|r| format!("{} {} [{}]", r.info.method, r.info.path, r.info.permission))
            .collect();
        tracing::info!(
            module = %e.name,
            version = %e.version.as_ref().map(|v| v.to_string()).unwrap_or_default(),
            order = e.load_order.unwrap_or_default(),
            load_ms = format!("{:.1}", p.load_time.as_secs_f64() * 1000.0),
            signed_by = e.signed_by.as_deref().unwrap_or("unsigned"),
            isolation = e.isolation.name(),
            worker_pid = e.worker.as_ref().and_then(|w| w.link()).map(|l| l.pid()),
            routes = ?routes,
            "module loaded"
        );
    }

    /// Makes a prepared (and started) instance replace entry `idx`'s running one: its
    /// subscriptions and services go live, and the previous instance's are retired
    /// (those still queued drain to the old handlers). Routes go live with
    /// `publish_routes`.
    pub(crate) async fn switch_to(&self, idx: usize, name: &str, p: Prepared) {
        let new_subscriptions = p.registrations.subscriptions.len();
        let new_services: Vec<String> = p
            .registrations
            .services
            .iter()
            .map(|(s, _)| s.clone())
            .collect();
        self.commit(idx, p).await;
        self.services.retain_module(name, &new_services);
        self.bus.retire_module(name, new_subscriptions);
    }

    pub(crate) async fn start_module(&self, idx: usize) {
        let (name, instance, handle) = {
            let entries = self.entries();
            let e = &entries[idx];
            if e.state != ModuleState::Initialized {
                return;
            }
            let (Some(instance), Some(handle)) = (e.instance.clone(), e.handle.clone()) else {
                return;
            };
            (e.name.clone(), instance, handle)
        };
        if let Some((dep, why)) = self.unmet_dependency(idx, &ModuleState::Started) {
            self.fail(idx, why).await;
            self.entries()[idx].waiting_for = Some(dep);
            return;
        }
        match call_plugin(instance.start(), self.config.init_timeout, &handle).await {
            Ok(()) => {
                self.entries()[idx].state = ModuleState::Started;
                tracing::info!(module = %name, "module started");
            }
            Err(why) => self.fail(idx, format!("start failed: {why}")).await,
        }
    }

    /// Recomputes every module's place in the load order from the manifests the host
    /// holds now (dependencies first), so that shutdown, which stops modules in reverse
    /// order, still stops dependents before what they need after modules came and went.
    /// A module that does not resolve right now keeps no place.
    pub(crate) fn reorder(&self) {
        let mut entries = self.entries();
        let order = {
            let listed: Vec<(usize, ModuleSpec<'_>)> = entries
                .iter()
                .enumerate()
                .filter_map(|(i, e)| {
                    let manifest = e.manifest.as_ref()?;
                    Some((
                        i,
                        ModuleSpec {
                            name: manifest.name.as_str(),
                            version: &manifest.version,
                            dependencies: &manifest.dependencies,
                            origin: &e.dir,
                        },
                    ))
                })
                .collect();
            let specs: Vec<ModuleSpec<'_>> = listed.iter().map(|(_, s)| *s).collect();
            let resolution = resolve_with(&specs, absent_dependencies(&self.config));
            resolution
                .order
                .iter()
                .map(|&spec| listed[spec].0)
                .collect::<Vec<usize>>()
        };
        for e in entries.iter_mut() {
            e.load_order = None;
        }
        for (position, idx) in order.into_iter().enumerate() {
            entries[idx].load_order = Some(position);
        }
    }

    /// A receiver that turns `true` when shutdown begins.
    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// Whether shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Keeps `task` to be awaited at shutdown; it must end when [`Host::stopping`] turns
    /// `true`.
    pub fn track(&self, task: tokio::task::JoinHandle<()>) {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(task);
    }

    /// Stops every running module, in reverse load order. Returns the names in the
    /// order they were stopped.
    ///
    /// Background tasks end first, and a reload, drop-in or removal under way finishes
    /// before any module stops (they hold `reload_lock`); those that wait for the lock
    /// afterwards are refused.
    pub async fn stop_all(&self) -> Vec<String> {
        self.ready.store(false, Ordering::SeqCst);
        if let Some(cluster) = &self.cluster {
            cluster.leave().await;
        }
        // Events still held for the broker: handed over, or reported.
        self.bus.close(Duration::from_secs(5)).await;
        self.stopping.send_replace(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "a background task ended abnormally");
            }
        }
        let _serial = self.reload_lock.lock().await;
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(RouteTable::default());
        let running: Vec<(usize, String, Arc<FfiModuleBox>, ModuleHandle)> = {
            let entries = self.entries();
            let mut running: Vec<_> = entries
                .iter()
                .enumerate()
                .filter(|(_, e)| matches!(e.state, ModuleState::Started | ModuleState::Initialized))
                .filter_map(|(i, e)| {
                    Some((i, e.name.clone(), e.instance.clone()?, e.handle.clone()?))
                })
                .collect();
            running.sort_by_key(|(i, ..)| std::cmp::Reverse(entries[*i].load_order));
            running
        };
        let mut stopped = Vec::new();
        for (idx, name, instance, handle) in running {
            self.entries()[idx].state = ModuleState::Stopping;
            self.stop_instance(&name, &instance, &handle).await;
            let mut entries = self.entries();
            entries[idx].state = ModuleState::Stopped;
            entries[idx].routes.clear();
            entries[idx].worker = None;
            stopped.push(name);
        }
        self.runtime.remove();
        stopped
    }

    /// Runs `instance`'s `stop` (within `init_timeout`), records how it went, and takes
    /// its subscriptions and services away. Its routes are the caller's business.
    pub(crate) async fn stop_instance(
        &self,
        name: &str,
        instance: &FfiModuleBox,
        handle: &ModuleHandle,
    ) {
        // No new events for a module that is stopping: with a broker, another host
        // running it takes them.
        self.bus.unsubscribe_module(name);
        let entry = Audit::new("system", "module.stop", name).module(name);
        let entry = match call_plugin(instance.stop(), self.config.init_timeout, handle).await {
            Ok(()) => {
                tracing::info!(module = %name, "module stopped");
                entry
            }
            Err(why) => {
                tracing::warn!(module = %name, "module stopped with an error: {why}");
                entry.outcome("failure").detail(&why)
            }
        };
        self.core.record(entry).await;
        self.services.unregister_module(name);
    }

    /// Leaves the cluster's registry, so other hosts stop sending calls while this one
    /// drains what it has (the peer server still answers calls on their way).
    pub async fn leave_cluster(&self) {
        if let Some(cluster) = &self.cluster {
            cluster.withdraw().await;
        }
    }

    /// Marks the host as not ready (shutdown has begun); `/readyz` turns 503.
    pub fn begin_shutdown(&self) {
        self.ready.store(false, Ordering::SeqCst);
        self.bus.stop_taking();
    }

    /// The module whose manifest declares `service`, if any.
    pub fn service_provider(&self, service: &str) -> Option<String> {
        self.entries()
            .iter()
            .find(|e| {
                e.manifest
                    .as_ref()
                    .is_some_and(|m| m.services.iter().any(|s| s.as_str() == service))
            })
            .map(|e| e.name.clone())
            .or_else(|| {
                self.cluster
                    .as_ref()
                    .and_then(|c| c.directory().provider_module(service))
            })
    }

    /// Whether `module` is started.
    pub fn is_running(&self, module: &str) -> bool {
        self.entries()
            .iter()
            .any(|e| e.name == module && e.state == ModuleState::Started)
    }

    /// What `/admin/modules` shows.
    pub fn report(&self) -> Vec<ModuleReport> {
        self.entries()
            .iter()
            .map(|e| ModuleReport {
                name: e.name.clone(),
                version: e.version.as_ref().map(|v| v.to_string()),
                state: e.state.name(),
                reason: match &e.state {
                    ModuleState::Failed(r) => Some(r.clone()),
                    _ => e.note.clone(),
                },
                last_reload_error: e.last_reload_error.clone(),
                load_order: e.load_order,
                dependencies: e
                    .dependencies()
                    .into_iter()
                    .map(|(n, d)| {
                        (
                            n.to_string(),
                            DependencyReport {
                                requirement: d.version.to_string(),
                                optional: d.optional,
                            },
                        )
                    })
                    .collect(),
                routes: e.routes.iter().map(|r| r.info.clone()).collect(),
                dir: e.dir.clone(),
                library: e.library.clone(),
                runtime_path: e.runtime_path.clone(),
                plugin_api_version: e.plugin_api_version.clone(),
                signed_by: e.signed_by.clone(),
                load_time_ms: e.load_time.map(|d| d.as_secs_f64() * 1000.0),
                loaded_at_unix: e
                    .loaded_at
                    .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs()),
                isolation: e.isolation.name(),
                worker_pid: e
                    .worker
                    .as_ref()
                    .and_then(|w| w.link())
                    .filter(|l| l.is_alive())
                    .map(|l| l.pid()),
                worker_sandbox: e
                    .worker
                    .as_ref()
                    .and_then(|w| w.sandbox())
                    .map(str::to_string),
                restarts: e.restarts,
                crashes: e.crashes_total,
                last_exit: e.last_exit.clone(),
            })
            .collect()
    }
}

impl Platform for Host {
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn bus(&self) -> &dyn EventBus {
        self.bus.as_ref()
    }

    fn cache(&self) -> &dyn CacheStore {
        self.cache.as_ref()
    }

    fn core(&self) -> &Core {
        &self.core
    }

    fn services(&self) -> &ServiceRegistry {
        &self.services
    }

    fn service_provider(&self, service: &str) -> Option<String> {
        Host::service_provider(self, service)
    }

    fn cluster(&self) -> Option<&crate::cluster::node::Cluster> {
        self.cluster.as_deref()
    }
}

/// The host's module list from a discovery and its resolution: the resolved modules in
/// load order, and (second) those that failed, by name.
/// In a cluster a dependency that is not a module of this host may run on another.
fn absent_dependencies(config: &HostConfig) -> Absent {
    match config.cluster.clustered() {
        true => Absent::MayBeRemote,
        false => Absent::Fails,
    }
}

fn module_entries(
    discovery: Discovery,
    resolution: Resolution,
) -> (Vec<ModuleEntry>, Vec<ModuleEntry>) {
    let mut failed = Vec::new();
    for problem in discovery.problems {
        let mut e = ModuleEntry::new(problem.label, problem.dir);
        e.state = ModuleState::Failed(problem.error.to_string());
        failed.push(e);
    }
    let mut by_index: BTreeMap<usize, ModuleEntry> = BTreeMap::new();
    for (i, m) in discovery.modules.into_iter().enumerate() {
        let mut e = ModuleEntry::new(m.manifest.name.to_string(), m.dir);
        e.version = Some(m.manifest.version.clone());
        e.library = Some(m.library);
        e.manifest = Some(m.manifest);
        e.state = ModuleState::Resolved;
        by_index.insert(i, e);
    }
    for (i, err) in &resolution.failed {
        if let Some(mut e) = by_index.remove(i) {
            e.waiting_for = match err {
                ResolveError::Missing { dependency, .. }
                | ResolveError::DependencyFailed { dependency, .. } => Some(dependency.clone()),
                _ => None,
            };
            e.state = ModuleState::Failed(err.to_string());
            failed.push(e);
        }
    }
    let mut ordered = Vec::new();
    for (pos, i) in resolution.order.iter().enumerate() {
        if let Some(mut e) = by_index.remove(i) {
            e.load_order = Some(pos);
            ordered.push(e);
        }
    }
    failed.sort_by(|a, b| a.name.cmp(&b.name));
    (ordered, failed)
}

/// Writes each dead letter to the audit log.
fn audit_dead_letters(core: Arc<Core>) -> DeadLetterSink {
    Arc::new(move |d: DeadLetter| {
        let core = core.clone();
        tokio::spawn(async move {
            let target = format!("{} #{}", d.topic, d.event_id);
            let detail = format!("{} attempt(s): {}", d.attempts, d.error);
            let entry = Audit::new("system", "event.dead_letter", &target).module(&d.module);
            core.record(entry.outcome("failure").detail(&detail)).await;
        });
    })
}

/// Awaits a plugin entry point with a deadline, turning errors, panics and timeouts
/// into a reason. A panic's message is taken from the module's forwarded panic log.
pub(crate) async fn call_plugin(
    future: FfiFuture<FfiUnitResult>,
    deadline: Duration,
    handle: &ModuleHandle,
) -> Result<(), String> {
    match tokio::time::timeout(deadline, AssertUnwindSafe(future).catch_unwind()).await {
        Err(_) => Err(format!("did not finish within {deadline:?}")),
        Ok(Err(_)) => Err(match handle.last_panic() {
            Some(msg) => format!("it panicked: {msg}"),
            None => "it panicked".to_string(),
        }),
        Ok(Ok(RResult::RErr(e))) => Err(e.into_string()),
        Ok(Ok(RResult::ROk(()))) => Ok(()),
    }
}
