//! The embedded service registry: which module in this process provides which
//! service, with call and error counts, and the in-process call itself.

use std::{
    collections::BTreeMap,
    panic::AssertUnwindSafe,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock,
    },
    time::Duration,
};

use super::{end_user, CallFailure, ServiceReport};
use abi_stable::std_types::{RResult, RString};
use futures_util::FutureExt as _;
use modhost_plugin_api::ffi::{call_error, FfiServiceHandlerBox, FfiUser};

struct Provider {
    module: String,
    handler: Arc<FfiServiceHandlerBox>,
    calls: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
}

/// Registered services.
#[derive(Default)]
pub struct ServiceRegistry {
    providers: RwLock<BTreeMap<String, Provider>>,
}

impl ServiceRegistry {
    /// Registers `module`'s handler for `service`.
    pub fn register(&self, module: &str, service: &str, handler: Arc<FfiServiceHandlerBox>) {
        self.providers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                service.to_string(),
                Provider {
                    module: module.to_string(),
                    handler,
                    calls: Arc::new(AtomicU64::new(0)),
                    errors: Arc::new(AtomicU64::new(0)),
                },
            );
    }

    /// Removes `module`'s services that are not in `keep` (after a reload).
    pub fn retain_module(&self, module: &str, keep: &[String]) {
        self.providers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|name, p| p.module != module || keep.contains(name));
    }

    /// Removes every service of `module`.
    pub fn unregister_module(&self, module: &str) {
        self.providers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, p| p.module != module);
    }

    /// Whether a module of this host provides `service`.
    pub fn provides(&self, service: &str) -> bool {
        self.providers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(service)
    }

    /// Every service with its provider; `healthy` from `is_running(provider)`.
    pub fn report(&self, is_running: impl Fn(&str) -> bool) -> Vec<ServiceReport> {
        self.providers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(name, p)| ServiceReport {
                service: name.clone(),
                provider: p.module.clone(),
                location: "local".to_string(),
                healthy: is_running(&p.module),
                calls: p.calls.load(Ordering::Relaxed),
                errors: p.errors.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Calls `service` for `caller` (already checked against the manifests by the
    /// host) with a deadline.
    pub async fn call(
        &self,
        caller: &str,
        service: &str,
        request: RString,
        deadline: Duration,
        user: Option<Arc<FfiUser>>,
    ) -> Result<String, CallFailure> {
        let found = {
            let providers = self.providers.read().unwrap_or_else(|p| p.into_inner());
            providers
                .get(service)
                .map(|p| (p.handler.clone(), p.calls.clone(), p.errors.clone()))
        };
        let Some((handler, calls, errors)) = found else {
            return Err((
                call_error::UNAVAILABLE,
                format!("the provider of `{service}` is not running"),
            ));
        };
        calls.fetch_add(1, Ordering::Relaxed);
        let ffi_user = user.as_deref().cloned().into();
        let call = handler.call_as(caller.into(), ffi_user, request);
        let call = AssertUnwindSafe(end_user::scope(user, call)).catch_unwind();
        let result = match tokio::time::timeout(deadline, call).await {
            Err(_) => Err((
                call_error::TIMEOUT,
                format!("`{service}` did not answer within {deadline:?}"),
            )),
            Ok(Err(_)) => Err((call_error::FAILED, format!("`{service}` panicked"))),
            Ok(Ok(RResult::RErr(e))) => Err((e.kind, e.message.into_string())),
            Ok(Ok(RResult::ROk(json))) => Ok(json.into_string()),
        };
        if result.is_err() {
            errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}
