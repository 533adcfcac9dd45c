//! The host side of [`FfiHost`]: the handle each module gets in `init`.
//!
//! It knows which module it belongs to, forwards the module's logs tagged with its name,
//! and collects the routes the module registers during `init`. Its methods are called
//! from plugin code through `extern "C"` shims, so they must never panic.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use abi_stable::std_types::{RResult, RStr, RString};
use async_ffi::{FfiFuture, FutureExt as _};
use modhost_plugin_api::ffi::{
    call_error, level, FfiCallError, FfiDatabaseBox, FfiHost, FfiHostBox, FfiHost_TO, FfiRoute,
    FfiUnitResult,
};
use tracing::level_filters::LevelFilter;

use crate::{
    core::Core,
    db_handle::AreaDatabase,
    metrics::Metrics,
    router::{Route, RouteError, RouteInfo},
};

/// Routes registered during one `init`, and the errors registration produced.
#[derive(Default)]
pub struct PendingRoutes {
    pub routes: Vec<Arc<Route>>,
    pub errors: Vec<RouteError>,
}

/// What a module's manifest allows its routes: declared permissions, public routes.
#[derive(Debug, Clone, Default)]
pub struct RouteRules {
    pub declared: HashSet<String>,
    /// `(METHOD, path pattern)` pairs from `public_routes`.
    pub public: HashSet<(String, String)>,
}

/// One module's handle.
#[derive(Clone)]
pub struct ModuleHost {
    module: Arc<str>,
    /// `Some` while init runs; `None` afterwards (registration closed).
    pending: Arc<Mutex<Option<PendingRoutes>>>,
    metrics: Arc<Metrics>,
    /// The last panic message the module's panic hook forwarded.
    last_panic: Arc<Mutex<Option<String>>>,
    database: AreaDatabase,
    rules: Arc<RouteRules>,
    core: Arc<Core>,
}

impl ModuleHost {
    /// A handle for `module`, open for route registration.
    pub fn new(
        module: &str,
        metrics: Arc<Metrics>,
        database: AreaDatabase,
        rules: RouteRules,
        core: Arc<Core>,
    ) -> Self {
        Self {
            module: Arc::from(module),
            pending: Arc::new(Mutex::new(Some(PendingRoutes::default()))),
            metrics,
            last_panic: Arc::new(Mutex::new(None)),
            database,
            rules: Arc::new(rules),
            core,
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
    pub fn take_routes(&self) -> PendingRoutes {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_default()
    }

    /// Takes the last panic message forwarded by the module, if any.
    pub fn last_panic(&self) -> Option<String> {
        self.last_panic
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn register(&self, route: FfiRoute) -> Result<(), RouteError> {
        let info = RouteInfo {
            method: route.method.into_string(),
            path: route.path.into_string(),
            permission: route.permission.into_string(),
        };
        let mut guard = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let Some(pending) = guard.as_mut() else {
            return Err(RouteError::Closed {
                method: info.method,
                path: info.path,
            });
        };
        if !self.rules.declared.contains(&info.permission) {
            let e = RouteError::Undeclared {
                method: info.method,
                path: info.path,
                permission: info.permission,
            };
            pending.errors.push(e.clone());
            return Err(e);
        }
        let key = (info.method.clone(), info.path.clone());
        let public = self.rules.public.contains(&key);
        let metrics = self.metrics.route(&self.module, &info.method, &info.path);
        let result = Route::new(self.module.clone(), info, public, route.handler, metrics)
            .and_then(
                |new| match pending.routes.iter().find(|r| r.conflicts_with(&new)) {
                    Some(existing) => Err(RouteError::Conflict {
                        method: new.info.method.clone(),
                        path: new.info.path.clone(),
                        existing: existing.info.path.clone(),
                    }),
                    None => Ok(new),
                },
            );
        match result {
            Ok(route) => {
                pending.routes.push(Arc::new(route));
                Ok(())
            }
            Err(e) => {
                pending.errors.push(e.clone());
                Err(e)
            }
        }
    }
}

impl FfiHost for ModuleHost {
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
        match self.register(route) {
            Ok(()) => RResult::ROk(()),
            Err(e) => RResult::RErr(RString::from(e.to_string())),
        }
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
        let (core, module, service) = (self.core.clone(), self.module.clone(), service.to_string());
        async move {
            let fail = |kind: u8, message: String| {
                RResult::RErr(FfiCallError {
                    kind,
                    message: message.into(),
                })
            };
            if !service.starts_with("core.") {
                return fail(
                    call_error::NOT_ALLOWED,
                    format!("unknown service `{service}`"),
                );
            }
            let deadline = Duration::from_millis(timeout_ms);
            match tokio::time::timeout(
                deadline,
                core.call_for_module(&module, &service, request.as_str()),
            )
            .await
            {
                Err(_) => fail(
                    call_error::TIMEOUT,
                    format!("{service} did not answer within {deadline:?}"),
                ),
                Ok(Err((kind, message))) => fail(kind, message),
                Ok(Ok(json)) => RResult::ROk(json.into()),
            }
        }
        .into_ffi()
    }
}
