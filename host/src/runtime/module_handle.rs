//! The host side of [`FfiHost`]: the handle each module gets in `init`.
//!
//! It knows which module it belongs to and what that module's manifest allows. It
//! forwards the module's logs tagged with its name, collects what the module registers
//! during `init` (routes, subscriptions, services), and routes the module's calls to the
//! database, the core services, other modules' services, the event bus, the cache and the
//! timer. Its methods are called from plugin code through `extern "C"` shims, so they must
//! never panic.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use abi_stable::std_types::{ROption, RResult, RStr, RString, RVec};
use async_ffi::{FfiFuture, FutureExt as _};
use modhost_plugin_api::ffi::{
    call_error, level, FfiCallError, FfiDatabaseBox, FfiEventHandlerBox, FfiHost, FfiHostBox,
    FfiHost_TO, FfiRoute, FfiServiceHandlerBox, FfiUnitResult, FfiUser,
};
use tracing::level_filters::LevelFilter;

use crate::data::db_handle::AreaDatabase;
use crate::module::manifest::Manifest;
use crate::routes::table::{Route, RouteError, RouteInfo};
use crate::runtime::platform::Platform;

/// What one `init` registered, and the errors registration produced.
#[derive(Default)]
pub struct Registrations {
    pub routes: Vec<Arc<Route>>,
    pub subscriptions: Vec<(String, Arc<FfiEventHandlerBox>)>,
    pub services: Vec<(String, Arc<FfiServiceHandlerBox>)>,
    /// Payload schemas of published topics (`describe_event`), for OpenAPI.
    pub event_docs: Vec<(String, serde_json::Value)>,
    pub errors: Vec<String>,
}

/// What a module's manifest allows it.
#[derive(Debug, Clone, Default)]
pub struct ModuleRules {
    /// Declared permissions.
    pub permissions: HashSet<String>,
    /// `(METHOD, path pattern)` pairs from `public_routes`.
    pub public: HashSet<(String, String)>,
    pub publishes: HashSet<String>,
    pub subscribes: HashSet<String>,
    pub provides: HashSet<String>,
    /// Names of the modules it depends on.
    pub dependencies: HashSet<String>,
    /// The version each dependency must have (a provider on another host is checked
    /// against it at every call).
    pub requirements: std::collections::HashMap<String, semver::VersionReq>,
}

impl ModuleRules {
    /// What `manifest` allows.
    pub fn of(manifest: &Manifest) -> Self {
        let names = |items: &[crate::module::manifest::Permission]| {
            items.iter().map(|p| p.as_str().to_string()).collect()
        };
        Self {
            permissions: names(&manifest.permissions),
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
            provides: names(&manifest.services),
            dependencies: manifest
                .dependencies
                .keys()
                .map(|d| d.to_string())
                .collect(),
            requirements: manifest
                .dependencies
                .iter()
                .map(|(name, dep)| (name.to_string(), dep.version.clone()))
                .collect(),
        }
    }
}

/// One module's handle.
#[derive(Clone)]
pub struct ModuleHandle {
    module: Arc<str>,
    /// `Some` while init runs; `None` afterwards (registration closed).
    pending: Arc<Mutex<Option<Registrations>>>,
    /// The last panic message the module's panic hook forwarded.
    last_panic: Arc<Mutex<Option<String>>>,
    database: AreaDatabase,
    rules: Arc<ModuleRules>,
    host: Weak<dyn Platform>,
}

fn shutting_down() -> FfiCallError {
    call_err(call_error::UNAVAILABLE, "the host is shutting down".into())
}

fn call_err(kind: u8, message: String) -> FfiCallError {
    FfiCallError {
        kind,
        message: message.into(),
    }
}

impl ModuleHandle {
    /// A handle for `module`, open for registration.
    pub fn new(
        module: &str,
        database: AreaDatabase,
        rules: ModuleRules,
        host: Weak<dyn Platform>,
    ) -> Self {
        Self {
            module: Arc::from(module),
            pending: Arc::new(Mutex::new(Some(Registrations::default()))),
            last_panic: Arc::new(Mutex::new(None)),
            database,
            rules: Arc::new(rules),
            host,
        }
    }

    /// The FFI object handed to the module.
    pub fn to_ffi(&self) -> FfiHostBox {
        FfiHost_TO::from_ptr(
            abi_stable::std_types::RArc::new(self.clone()),
            abi_stable::sabi_trait::TD_Opaque,
        )
    }

    /// Closes registration and returns what was registered.
    pub fn take_registrations(&self) -> Registrations {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_default()
    }

    /// What the module's manifest allows it.
    pub fn rules(&self) -> &ModuleRules {
        &self.rules
    }

    /// Takes the last panic message forwarded by the module, if any.
    pub fn last_panic(&self) -> Option<String> {
        self.last_panic
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Runs `f` on the open registrations, or reports that init is over.
    fn while_open(
        &self,
        what: &str,
        f: impl FnOnce(&mut Registrations) -> Result<(), String>,
    ) -> FfiUnitResult {
        let mut guard = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let result = match guard.as_mut() {
            None => Err(format!(
                "{what}: can only be registered while the module's init runs"
            )),
            Some(pending) => match f(pending) {
                Ok(()) => Ok(()),
                Err(e) => {
                    pending.errors.push(e.clone());
                    Err(e)
                }
            },
        };
        match result {
            Ok(()) => RResult::ROk(()),
            Err(e) => RResult::RErr(RString::from(e)),
        }
    }

    fn register_route_inner(
        &self,
        route: FfiRoute,
        pending: &mut Registrations,
    ) -> Result<(), String> {
        let host = self.host.upgrade().ok_or("the host is shutting down")?;
        let info = RouteInfo {
            method: route.method.into_string(),
            path: route.path.into_string(),
            permission: route.permission.into_string(),
        };
        if !self.rules.permissions.contains(&info.permission) {
            return Err(RouteError::Undeclared {
                method: info.method,
                path: info.path,
                permission: info.permission,
            }
            .to_string());
        }
        let public = self
            .rules
            .public
            .contains(&(info.method.clone(), info.path.clone()));
        let metrics = host.metrics().route(&self.module, &info.method, &info.path);
        let latency = host.metrics().latency(&self.module);
        let new = Route::new(
            self.module.clone(),
            info,
            public,
            route.handler,
            metrics,
            latency,
        )
        .map_err(|e| e.to_string())?;
        if let Some(existing) = pending.routes.iter().find(|r| r.conflicts_with(&new)) {
            return Err(RouteError::Conflict {
                method: new.info.method.clone(),
                path: new.info.path.clone(),
                existing: existing.info.path.clone(),
            }
            .to_string());
        }
        pending.routes.push(Arc::new(new));
        Ok(())
    }
}

impl FfiHost for ModuleHandle {
    fn log(&self, lvl: u8, target: RStr<'_>, message: RStr<'_>) {
        let module = &*self.module;
        let target = target.as_str();
        let message = message.as_str();
        if lvl == level::ERROR && target == "panic" {
            *self.last_panic.lock().unwrap_or_else(|p| p.into_inner()) = Some(message.to_string());
        }
        match lvl {
            level::ERROR => {
                tracing::error!(target: "modhost::module", module, plugin_target = target, "{message}")
            }
            level::WARN => {
                tracing::warn!(target: "modhost::module", module, plugin_target = target, "{message}")
            }
            level::INFO => {
                tracing::info!(target: "modhost::module", module, plugin_target = target, "{message}")
            }
            level::DEBUG => {
                tracing::debug!(target: "modhost::module", module, plugin_target = target, "{message}")
            }
            _ => {
                tracing::trace!(target: "modhost::module", module, plugin_target = target, "{message}")
            }
        }
    }

    fn max_log_level(&self) -> u8 {
        match LevelFilter::current() {
            LevelFilter::OFF => level::OFF,
            LevelFilter::ERROR => level::ERROR,
            LevelFilter::WARN => level::WARN,
            LevelFilter::INFO => level::INFO,
            LevelFilter::DEBUG => level::DEBUG,
            _ => level::TRACE,
        }
    }

    fn register_route(&self, route: FfiRoute) -> FfiUnitResult {
        let what = format!("route {} {}", route.method, route.path);
        self.while_open(&what, |pending| self.register_route_inner(route, pending))
    }

    fn database(&self) -> FfiDatabaseBox {
        self.database.to_ffi()
    }

    fn call(
        &self,
        service: RStr<'_>,
        request: RString,
        timeout_ms: u64,
    ) -> FfiFuture<RResult<RString, FfiCallError>> {
        let (this, service) = (self.clone(), service.to_string());
        // Read now, while the calling handler is being polled inside its request.
        let user = crate::services::end_user::current();
        async move {
            let deadline = Duration::from_millis(timeout_ms);
            match this.call_checked(&service, request, deadline, user).await {
                Ok(json) => RResult::ROk(json.into()),
                Err((kind, message)) => RResult::RErr(call_err(kind, message)),
            }
        }
        .into_ffi()
    }

    fn publish(
        &self,
        topic: RStr<'_>,
        payload: RString,
    ) -> FfiFuture<RResult<RString, FfiCallError>> {
        let (this, topic) = (self.clone(), topic.to_string());
        async move {
            if !this.rules.publishes.contains(&topic) {
                let why = format!("module `{}` publishes `{topic}`, which its module.yaml does not declare under events.publishes", this.module);
                return RResult::RErr(call_err(call_error::NOT_ALLOWED, why));
            }
            let Some(host) = this.host.upgrade() else {
                return RResult::RErr(shutting_down());
            };
            match host.bus().publish(&this.module, &topic, payload.into_string()).await {
                Ok(id) => RResult::ROk(id.into()),
                Err(e) => RResult::RErr(call_err(call_error::UNAVAILABLE, e)),
            }
        }
        .into_ffi()
    }

    fn subscribe(&self, pattern: RStr<'_>, handler: FfiEventHandlerBox) -> FfiUnitResult {
        let pattern = pattern.to_string();
        self.while_open(&format!("subscription {pattern}"), |pending| {
            if !self.rules.subscribes.contains(&pattern) {
                return Err(format!("module `{}` subscribes to `{pattern}`, which its module.yaml does not declare under events.subscribes", self.module));
            }
            pending.subscriptions.push((pattern.clone(), Arc::new(handler)));
            Ok(())
        })
    }

    fn describe_route(&self, method: RStr<'_>, path: RStr<'_>, doc_json: RString) -> FfiUnitResult {
        let what = format!("description of route {method} {path}");
        self.while_open(&what, |pending| {
            let route = pending
                .routes
                .iter()
                .find(|r| r.info.method == method.as_str() && r.info.path == path.as_str())
                .ok_or_else(|| {
                    format!("{what}: no such route registered; register it with `route` first")
                })?;
            route.describe(doc_json.as_str())
        })
    }

    fn describe_event(&self, topic: RStr<'_>, schema_json: RString) -> FfiUnitResult {
        let topic = topic.to_string();
        self.while_open(&format!("description of event {topic}"), |pending| {
            if !self.rules.publishes.contains(&topic) {
                return Err(format!("module `{}` describes `{topic}`, which its module.yaml does not declare under events.publishes", self.module));
            }
            let schema: serde_json::Value = serde_json::from_str(schema_json.as_str())
                .map_err(|e| format!("event {topic}: its schema is not JSON: {e}"))?;
            if pending.event_docs.iter().any(|(t, _)| t == &topic) {
                return Err(format!("event {topic}: described twice"));
            }
            pending.event_docs.push((topic.clone(), schema));
            Ok(())
        })
    }

    fn provide(&self, service: RStr<'_>, handler: FfiServiceHandlerBox) -> FfiUnitResult {
        let service = service.to_string();
        self.while_open(&format!("service {service}"), |pending| {
            if !self.rules.provides.contains(&service) {
                return Err(format!("module `{}` provides `{service}`, which its module.yaml does not declare under services", self.module));
            }
            if pending.services.iter().any(|(s, _)| s == &service) {
                return Err(format!("service `{service}` is provided twice"));
            }
            pending.services.push((service.clone(), Arc::new(handler)));
            Ok(())
        })
    }

    fn cache_get(&self, key: RStr<'_>) -> FfiFuture<RResult<ROption<RVec<u8>>, FfiCallError>> {
        let (host, module, key) = (self.host.upgrade(), self.module.clone(), key.to_string());
        async move {
            let Some(host) = host else {
                return RResult::RErr(shutting_down());
            };
            let found = host.cache().get(&module, &key).await;
            RResult::ROk(found.map(RVec::from).into())
        }
        .into_ffi()
    }

    fn cache_set(
        &self,
        key: RStr<'_>,
        value: RVec<u8>,
        ttl_ms: u64,
    ) -> FfiFuture<RResult<(), FfiCallError>> {
        let ttl = (ttl_ms > 0).then(|| Duration::from_millis(ttl_ms));
        let (host, module, key) = (self.host.upgrade(), self.module.clone(), key.to_string());
        async move {
            let Some(host) = host else {
                return RResult::RErr(shutting_down());
            };
            host.cache().set(&module, &key, value.into_vec(), ttl).await;
            RResult::ROk(())
        }
        .into_ffi()
    }

    fn cache_delete(&self, key: RStr<'_>) -> FfiFuture<RResult<(), FfiCallError>> {
        let (host, module, key) = (self.host.upgrade(), self.module.clone(), key.to_string());
        async move {
            let Some(host) = host else {
                return RResult::RErr(shutting_down());
            };
            host.cache().delete(&module, &key).await;
            RResult::ROk(())
        }
        .into_ffi()
    }

    fn sleep(&self, ms: u64) -> FfiFuture<()> {
        async move { tokio::time::sleep(Duration::from_millis(ms)).await }.into_ffi()
    }
}

impl ModuleHandle {
    /// A service call, after checking that the caller may make it.
    async fn call_checked(
        &self,
        service: &str,
        request: RString,
        deadline: Duration,
        user: Option<Arc<FfiUser>>,
    ) -> Result<String, (u8, String)> {
        let host = self.host.upgrade().ok_or((
            call_error::UNAVAILABLE,
            "the host is shutting down".to_string(),
        ))?;
        if service.starts_with("core.") {
            return match tokio::time::timeout(
                deadline,
                host.core()
                    .call_for_module(&self.module, service, request.as_str()),
            )
            .await
            {
                Err(_) => Err((
                    call_error::TIMEOUT,
                    format!("{service} did not answer within {deadline:?}"),
                )),
                Ok(result) => result,
            };
        }
        let Some(provider) = host.service_provider(service) else {
            return Err((
                call_error::NOT_ALLOWED,
                format!("no module declares the service `{service}`"),
            ));
        };
        if !self.rules.dependencies.contains(&provider) {
            return Err((
                call_error::NOT_ALLOWED,
                format!("module `{}` calls `{service}` but does not list its provider `{provider}` among its dependencies in module.yaml", self.module),
            ));
        }
        // A provider on this host answers in-process; otherwise, in a cluster, a host
        // that runs it does.
        match host.cluster() {
            Some(cluster) if !host.services().provides(service) => {
                let requirement = self.rules.requirements.get(&provider);
                cluster
                    .call(
                        &self.module,
                        &provider,
                        requirement,
                        service,
                        request.into_string(),
                        deadline,
                        user,
                    )
                    .await
            }
            _ => {
                host.services()
                    .call(&self.module, service, request, deadline, user)
                    .await
            }
        }
    }
}
