//! The running host: its modules, their states, and the boot and shutdown sequences.
//!
//! Boot: discover, resolve, then load and init each module in dependency order, start
//! them in the same order, and publish their routes. Shutdown: stop the modules in
//! reverse order. A failure (error, panic or timeout) fails that module and its
//! dependents, never the host, unless `strict` is set.

use std::{
    collections::BTreeMap,
    panic::AssertUnwindSafe,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant, SystemTime},
};

use abi_stable::std_types::RResult;
use async_ffi::FfiFuture;
use futures_util::FutureExt as _;
use modhost_plugin_api::ffi::{FfiInitContext, FfiModuleBox, FfiUnitResult};
use semver::Version;
use serde::Serialize;

use crate::{
    cache::{CacheStore, InProcessCache},
    config::HostConfig,
    core::{audit::Audit, Core, CoreSetupError},
    database::{Databases, DbSetupError},
    db_handle::AreaDatabase,
    discovery::DiscoveryError,
    events::{DeadLetter, EventBus, InProcessBus},
    host_handle::{ModuleHost, ModuleRules},
    inspect::Inspection,
    loader::{load_library, RuntimeDir},
    manifest::{Dependency, Manifest, ModuleName},
    metrics::Metrics,
    migrations,
    router::{Route, RouteError, RouteInfo, RouteTable},
    services::ServiceRegistry,
};

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
    /// Time to load the library and run `init`.
    pub load_time: Option<Duration>,
    pub loaded_at: Option<SystemTime>,
    pub routes: Vec<Arc<Route>>,
    instance: Option<Arc<FfiModuleBox>>,
    handle: Option<ModuleHost>,
}

impl ModuleEntry {
    fn new(name: String, dir: PathBuf) -> Self {
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
            load_time: None,
            loaded_at: None,
            routes: Vec::new(),
            instance: None,
            handle: None,
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
    pub load_order: Option<usize>,
    pub dependencies: BTreeMap<String, DependencyReport>,
    pub routes: Vec<RouteInfo>,
    pub dir: PathBuf,
    pub library: Option<PathBuf>,
    pub runtime_path: Option<PathBuf>,
    pub plugin_api_version: Option<String>,
    pub load_time_ms: Option<f64>,
    pub loaded_at_unix: Option<u64>,
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
    runtime: RuntimeDir,
    databases: Databases,
    pub bus: Arc<dyn EventBus>,
    pub cache: Arc<dyn CacheStore>,
    pub services: Arc<ServiceRegistry>,
    ready: AtomicBool,
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
        let core = Arc::new(Core::open(databases.core(), config.auth.clone()).await?);
        let Inspection {
            discovery,
            resolution,
        } = Inspection::of(&config.modules_dir)?;

        let mut ordered = Vec::new();
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
                e.state = ModuleState::Failed(err.to_string());
                failed.push(e);
            }
        }
        for (pos, i) in resolution.order.iter().enumerate() {
            if let Some(mut e) = by_index.remove(i) {
                e.load_order = Some(pos);
                ordered.push(e);
            }
        }
        failed.sort_by(|a, b| a.name.cmp(&b.name));
        for e in &failed {
            if let ModuleState::Failed(reason) = &e.state {
                tracing::error!(module = %e.name, dir = %e.dir.display(), "module failed: {reason}");
                let entry = Audit::new("system", "module.fail", &e.name).module(&e.name);
                core.record(entry.outcome("failure").detail(reason)).await;
            }
        }
        let count = ordered.len();
        ordered.extend(failed);
        let audit_core = core.clone();
        let sink = Arc::new(move |d: DeadLetter| {
            let core = audit_core.clone();
            tokio::spawn(async move {
                let target = format!("{} #{}", d.topic, d.event_id);
                let detail = format!("{} attempt(s): {}", d.attempts, d.error);
                let entry = Audit::new("system", "event.dead_letter", &target).module(&d.module);
                core.record(entry.outcome("failure").detail(&detail)).await;
            });
        });
        let bus: Arc<dyn EventBus> = Arc::new(InProcessBus::new(config.events.clone(), sink));
        let (cache_max_bytes, cache_ttl) = (config.cache_max_bytes, config.cache_default_ttl);
        let host = Arc::new(Host {
            config,
            core,
            metrics: Arc::new(Metrics::default()),
            modules: Mutex::new(ordered),
            routes: RwLock::new(Arc::new(RouteTable::default())),
            runtime,
            databases,
            bus,
            cache: Arc::new(InProcessCache::new(cache_max_bytes, cache_ttl)),
            services: Arc::new(ServiceRegistry::default()),
            ready: AtomicBool::new(false),
        });
        for idx in 0..count {
            host.load_and_init(idx).await;
        }
        for idx in 0..count {
            host.start_module(idx).await;
        }
        host.publish_routes();

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

    fn entries(&self) -> std::sync::MutexGuard<'_, Vec<ModuleEntry>> {
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

    fn publish_routes(&self) {
        let table = {
            let entries = self.entries();
            RouteTable::new(
                entries
                    .iter()
                    .filter(|e| e.state == ModuleState::Started)
                    .map(|e| (e.name.clone(), e.routes.clone())),
            )
        };
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
    }

    async fn fail(&self, idx: usize, reason: String) {
        let name = {
            let mut entries = self.entries();
            let e = &mut entries[idx];
            tracing::error!(module = %e.name, "module failed: {reason}");
            e.state = ModuleState::Failed(reason.clone());
            e.routes.clear();
            e.instance = None;
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

    /// The first required dependency of entry `idx` that is not in `wanted` state.
    fn unmet_dependency(&self, idx: usize, wanted: &ModuleState) -> Option<String> {
        let entries = self.entries();
        let deps = entries[idx].dependencies();
        for (dep, spec) in deps {
            let found = entries.iter().find(|e| e.name == dep.as_str());
            let ok = found.is_some_and(|e| &e.state == wanted);
            if !ok && !spec.optional {
                let why = match found.map(|e| &e.state) {
                    Some(ModuleState::Failed(r)) => format!("dependency `{dep}` failed: {r}"),
                    Some(s) => format!("dependency `{dep}` is {}", s.name()),
                    None => format!("dependency `{dep}` is not present"),
                };
                return Some(why);
            }
        }
        None
    }

    async fn load_and_init(self: &Arc<Self>, idx: usize) {
        if let Some(why) = self.unmet_dependency(idx, &ModuleState::Initialized) {
            return self.fail(idx, why).await;
        }
        let found = {
            let entries = self.entries();
            let e = &entries[idx];
            match (e.library.clone(), e.manifest.clone()) {
                (Some(library), Some(manifest)) => {
                    Some((e.name.clone(), e.dir.clone(), library, manifest))
                }
                _ => None,
            }
        };
        let Some((name, dir, library, manifest)) = found else {
            return self.fail(idx, "no library or manifest".into()).await;
        };
        let defaults = manifest.config.clone();
        let declared: Vec<String> = manifest
            .permissions
            .iter()
            .map(|p| p.as_str().to_string())
            .collect();
        let registered = self
            .core
            .permissions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .register(&name, declared.clone());
        if let Err(e) = registered {
            return self.fail(idx, e.to_string()).await;
        }
        let rules = ModuleRules {
            permissions: declared.into_iter().collect(),
            public: manifest
                .public_routes
                .iter()
                .filter_map(|r| r.split_once(' '))
                .map(|(m, p)| (m.to_string(), p.to_string()))
                .collect(),
            publishes: manifest
                .events
                .publishes
                .iter()
                .map(|t| t.as_str().to_string())
                .collect(),
            subscribes: manifest
                .events
                .subscribes
                .iter()
                .map(|t| t.as_str().to_string())
                .collect(),
            provides: manifest
                .services
                .iter()
                .map(|s| s.as_str().to_string())
                .collect(),
            dependencies: manifest
                .dependencies
                .keys()
                .map(|d| d.to_string())
                .collect(),
        };
        let started = Instant::now();
        let loaded = match load_library(&name, &library, &self.runtime) {
            Ok(l) => l,
            Err(e) => return self.fail(idx, e.to_string()).await,
        };
        {
            let mut entries = self.entries();
            let e = &mut entries[idx];
            e.state = ModuleState::Loaded;
            e.runtime_path = Some(loaded.runtime_path.clone());
            e.plugin_api_version = Some(loaded.plugin_api_version.clone());
        }
        let pool = match self.databases.for_module(&name).await {
            Ok(pool) => pool,
            Err(e) => return self.fail(idx, e.to_string()).await,
        };
        match migrations::apply(&pool, &dir).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(module = %name, applied = n, "migrations applied"),
            Err(e) => return self.fail(idx, e.to_string()).await,
        }
        let module = match (loaded.root.new_module())() {
            RResult::ROk(m) => Arc::new(m),
            RResult::RErr(e) => return self.fail(idx, e.into_string()).await,
        };
        let handle = ModuleHost::new(
            &name,
            AreaDatabase::new(pool),
            rules.clone(),
            Arc::downgrade(self),
        );
        let config = self.config.module_config(&name, &defaults);
        let ctx = FfiInitContext {
            module_name: name.as_str().into(),
            config_json: config.to_string().into(),
            host: handle.to_ffi(),
        };
        let result = call_plugin(module.init(ctx), self.config.init_timeout, &handle).await;
        let pending = handle.take_registrations();
        if let Err(why) = result {
            return self.fail(idx, format!("init failed: {why}")).await;
        }
        if !pending.errors.is_empty() {
            return self
                .fail(idx, format!("init failed: {}", pending.errors.join("; ")))
                .await;
        }
        let unregistered: Vec<String> = rules
            .public
            .iter()
            .filter(|(m, p)| {
                !pending
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
            })
            .collect();
        if !unregistered.is_empty() {
            return self
                .fail(idx, format!("init failed: {}", unregistered.join("; ")))
                .await;
        }
        self.core
            .record(
                Audit::new("system", "module.load", &name)
                    .module(&name)
                    .detail(&format!("version {}", manifest.version)),
            )
            .await;
        for (pattern, handler) in pending.subscriptions {
            self.bus.subscribe(&name, &pattern, handler);
        }
        for (service, handler) in pending.services {
            self.services.register(&name, &service, handler);
        }
        let mut entries = self.entries();
        let e = &mut entries[idx];
        e.state = ModuleState::Initialized;
        e.routes = pending.routes;
        e.instance = Some(module);
        e.handle = Some(handle);
        e.load_time = Some(started.elapsed());
        e.loaded_at = Some(SystemTime::now());
        let routes: Vec<String> = e
            .routes
            .iter()
            .map(|r| format!("{} {} [{}]", r.info.method, r.info.path, r.info.permission))
            .collect();
        tracing::info!(
            module = %e.name,
            version = %e.version.as_ref().map(|v| v.to_string()).unwrap_or_default(),
            order = e.load_order.unwrap_or_default(),
            load_ms = format!("{:.1}", started.elapsed().as_secs_f64() * 1000.0),
            routes = ?routes,
            "module loaded"
        );
    }

    async fn start_module(&self, idx: usize) {
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
        if let Some(why) = self.unmet_dependency(idx, &ModuleState::Started) {
            return self.fail(idx, why).await;
        }
        match call_plugin(instance.start(), self.config.init_timeout, &handle).await {
            Ok(()) => {
                self.entries()[idx].state = ModuleState::Started;
                tracing::info!(module = %name, "module started");
            }
            Err(why) => self.fail(idx, format!("start failed: {why}")).await,
        }
    }

    /// Stops every running module, in reverse load order. Returns the names in the
    /// order they were stopped.
    pub async fn stop_all(&self) -> Vec<String> {
        self.ready.store(false, Ordering::SeqCst);
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(RouteTable::default());
        let running: Vec<(usize, String, Arc<FfiModuleBox>, ModuleHost)> = {
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
            let outcome =
                match call_plugin(instance.stop(), self.config.init_timeout, &handle).await {
                    Ok(()) => {
                        tracing::info!(module = %name, "module stopped");
                        Audit::new("system", "module.stop", &name).module(&name)
                    }
                    Err(why) => {
                        tracing::warn!(module = %name, "module stopped with an error: {why}");
                        Audit::new("system", "module.stop", &name)
                            .module(&name)
                            .outcome("failure")
                            .detail(&why)
                    }
                };
            self.core.record(outcome).await;
            self.bus.unsubscribe_module(&name);
            self.services.unregister_module(&name);
            let mut entries = self.entries();
            entries[idx].state = ModuleState::Stopped;
            entries[idx].routes.clear();
            stopped.push(name);
        }
        self.runtime.remove();
        stopped
    }

    /// Marks the host as not ready (shutdown has begun); `/readyz` turns 503.
    pub fn begin_shutdown(&self) {
        self.ready.store(false, Ordering::SeqCst);
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
                    _ => None,
                },
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
                load_time_ms: e.load_time.map(|d| d.as_secs_f64() * 1000.0),
                loaded_at_unix: e
                    .loaded_at
                    .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs()),
            })
            .collect()
    }
}

/// Awaits a plugin entry point with a deadline, turning errors, panics and timeouts
/// into a reason. A panic's message is taken from the module's forwarded panic log.
async fn call_plugin(
    future: FfiFuture<FfiUnitResult>,
    deadline: Duration,
    handle: &ModuleHost,
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
