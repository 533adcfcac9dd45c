//! [`WorkerHost`]: the `FfiHost` a module gets in a worker. Its registrations and calls
//! go back to the host over the `ModuleHost` service; the database is the worker's own
//! connection with the module's credentials, and the timer is the worker's.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RArc, ROption, RResult, RStr, RString, RVec},
};
use async_ffi::{FfiFuture, FutureExt as _};
use modhost_plugin_api::ffi::{
    call_error, level, FfiCallError, FfiDatabaseBox, FfiEventHandlerBox, FfiHandlerBox, FfiHost,
    FfiHostBox, FfiHost_TO, FfiRoute, FfiServiceHandlerBox, FfiUnitResult,
};
use tonic::{transport::Channel, Response, Status};

use crate::data::db_handle::AreaDatabase;
use crate::isolation::{convert, worker_log};
use crate::wire::module_v1::{self as pb, module_host_client::ModuleHostClient};

tokio::task_local! {
    /// The host's request or service call the running handler serves.
    static CALL: u64;
}

/// Runs `future` as part of the host's call `id` (its calls back name it).
pub fn in_call<F: std::future::Future>(
    id: u64,
    future: F,
) -> impl std::future::Future<Output = F::Output> {
    CALL.scope(id, future)
}

/// The host's call the running code serves; 0 outside any (event handlers, `start`).
fn current_call() -> u64 {
    CALL.try_with(|c| *c).unwrap_or(0)
}

/// The module's handlers, by the ids the host knows them by.
#[derive(Default)]
pub struct Handlers {
    next: std::sync::atomic::AtomicU64,
    pub routes: RwLock<HashMap<u64, Arc<FfiHandlerBox>>>,
    pub events: RwLock<HashMap<u64, Arc<FfiEventHandlerBox>>>,
    pub services: RwLock<HashMap<u64, Arc<FfiServiceHandlerBox>>>,
}

impl Handlers {
    fn next_id(&self) -> u64 {
        self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }
}

pub fn get<T>(map: &RwLock<HashMap<u64, Arc<T>>>, id: u64) -> Option<Arc<T>> {
    map.read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&id)
        .cloned()
}

/// The `FfiHost` a module gets in a worker: calls back to the host.
#[derive(Clone)]
pub struct WorkerHost {
    pub host: ModuleHostClient<Channel>,
    pub handlers: Arc<Handlers>,
    pub database: AreaDatabase,
    pub max_level: u8,
    /// The last panic message the module's panic hook forwarded.
    pub last_panic: Arc<std::sync::Mutex<Option<String>>>,
}

fn transport(e: Status) -> FfiCallError {
    convert::unavailable(format!("the host cannot be reached: {}", e.message()))
}

impl WorkerHost {
    pub fn to_ffi(&self) -> FfiHostBox {
        FfiHost_TO::from_ptr(RArc::new(self.clone()), TD_Opaque)
    }

    /// Makes a registration call to the host and waits for its answer: registrations
    /// happen while `init` runs (synchronously, in plugin-api), and the host's answer
    /// (accepted, or why not) is what the module sees, as in-process.
    fn register<F, Fut>(&self, call: F) -> FfiUnitResult
    where
        F: FnOnce(ModuleHostClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<pb::Outcome>, Status>>,
    {
        let client = self.host.clone();
        let run = || {
            tokio::runtime::Handle::current().block_on(async move {
                match call(client).await {
                    Ok(r) => convert::from_outcome(r.into_inner()),
                    Err(e) => {
                        RResult::RErr(format!("the host cannot be reached: {}", e.message()).into())
                    }
                }
            })
        };
        match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(run),
            Err(_) => RResult::RErr("registrations are only possible during init".into()),
        }
    }
}

impl FfiHost for WorkerHost {
    fn log(&self, lvl: u8, target: RStr<'_>, message: RStr<'_>) {
        if lvl == level::ERROR && target.as_str() == "panic" {
            *self.last_panic.lock().unwrap_or_else(|p| p.into_inner()) = Some(message.to_string());
        }
        if lvl > self.max_level {
            return;
        }
        worker_log::write_line(lvl, target.as_str(), message.as_str());
    }

    fn max_log_level(&self) -> u8 {
        self.max_level
    }

    fn register_route(&self, route: FfiRoute) -> FfiUnitResult {
        let id = self.handlers.next_id();
        self.handlers
            .routes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Arc::new(route.handler));
        let registration = pb::RouteRegistration {
            method: route.method.into_string(),
            path: route.path.into_string(),
            permission: route.permission.into_string(),
            handler: id,
        };
        self.register(|mut c| async move { c.register_route(registration).await })
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
        let call = pb::OutgoingCall {
            service: service.to_string(),
            request: request.into_string(),
            timeout_ms,
            // Read now, while the calling handler runs inside the host's call.
            call: current_call(),
        };
        let mut client = self.host.clone();
        async move {
            match client.call(call).await {
                Ok(reply) => convert::from_call_reply(reply.into_inner()),
                Err(e) => RResult::RErr(transport(e)),
            }
        }
        .into_ffi()
    }

    fn publish(
        &self,
        topic: RStr<'_>,
        payload: RString,
    ) -> FfiFuture<RResult<RString, FfiCallError>> {
        let publication = pb::Publication {
            topic: topic.to_string(),
            payload: payload.into_string(),
        };
        let mut client = self.host.clone();
        async move {
            match client.publish(publication).await {
                Ok(reply) => convert::from_call_reply(reply.into_inner()),
                Err(e) => RResult::RErr(transport(e)),
            }
        }
        .into_ffi()
    }

    fn subscribe(&self, pattern: RStr<'_>, handler: FfiEventHandlerBox) -> FfiUnitResult {
        let id = self.handlers.next_id();
        self.handlers
            .events
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Arc::new(handler));
        let subscription = pb::Subscription {
            pattern: pattern.to_string(),
            handler: id,
        };
        self.register(|mut c| async move { c.subscribe(subscription).await })
    }

    fn provide(&self, service: RStr<'_>, handler: FfiServiceHandlerBox) -> FfiUnitResult {
        let id = self.handlers.next_id();
        self.handlers
            .services
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Arc::new(handler));
        let provision = pb::Provision {
            service: service.to_string(),
            handler: id,
        };
        self.register(|mut c| async move { c.provide(provision).await })
    }

    fn cache_get(&self, key: RStr<'_>) -> FfiFuture<RResult<ROption<RVec<u8>>, FfiCallError>> {
        let key = pb::CacheKey {
            key: key.to_string(),
        };
        let mut client = self.host.clone();
        async move {
            match client.cache_get(key).await {
                Ok(reply) => {
                    let v = reply.into_inner();
                    match v.ok {
                        true if v.present => RResult::ROk(ROption::RSome(v.value.into())),
                        true => RResult::ROk(ROption::RNone),
                        false => RResult::RErr(FfiCallError {
                            kind: u8::try_from(v.error_kind).unwrap_or(call_error::FAILED),
                            message: v.error.into(),
                        }),
                    }
                }
                Err(e) => RResult::RErr(transport(e)),
            }
        }
        .into_ffi()
    }

    fn cache_set(
        &self,
        key: RStr<'_>,
        value: RVec<u8>,
        ttl_ms: u64,
    ) -> FfiFuture<RResult<(), FfiCallError>> {
        let entry = pb::CacheEntry {
            key: key.to_string(),
            value: value.into_vec(),
            ttl_ms,
        };
        let mut client = self.host.clone();
        async move {
            match client.cache_set(entry).await {
                Ok(reply) => convert::from_call_reply(reply.into_inner()).map(|_| ()),
                Err(e) => RResult::RErr(transport(e)),
            }
        }
        .into_ffi()
    }

    fn cache_delete(&self, key: RStr<'_>) -> FfiFuture<RResult<(), FfiCallError>> {
        let key = pb::CacheKey {
            key: key.to_string(),
        };
        let mut client = self.host.clone();
        async move {
            match client.cache_delete(key).await {
                Ok(reply) => convert::from_call_reply(reply.into_inner()).map(|_| ()),
                Err(e) => RResult::RErr(transport(e)),
            }
        }
        .into_ffi()
    }

    fn sleep(&self, ms: u64) -> FfiFuture<()> {
        async move { tokio::time::sleep(Duration::from_millis(ms)).await }.into_ffi()
    }

    fn describe_route(&self, method: RStr<'_>, path: RStr<'_>, doc_json: RString) -> FfiUnitResult {
        let description = pb::RouteDescription {
            method: method.to_string(),
            path: path.to_string(),
            doc_json: doc_json.into_string(),
        };
        self.register(|mut c| async move { c.describe_route(description).await })
    }

    fn describe_event(&self, topic: RStr<'_>, schema_json: RString) -> FfiUnitResult {
        let description = pb::EventDescription {
            topic: topic.to_string(),
            schema_json: schema_json.into_string(),
        };
        self.register(|mut c| async move { c.describe_event(description).await })
    }
}
