//! The `ModuleHost` service the host serves to one worker, on that worker's own socket:
//! each call is what the module's handle did in the worker, replayed on the module's
//! real handle in the host. Registrations get proxies to the worker; calls, events and
//! the cache go where an in-process module's would, with the same checks.

use std::sync::Arc;

use abi_stable::std_types::{RStr, RVec};
use modhost_plugin_api::ffi::{FfiHostBox, FfiRoute};
use tonic::{Request, Response, Status};

use crate::isolation::{
    convert,
    link::WorkerLink,
    proxies::{self, Deadlines},
    slot::WorkerSlot,
};
use crate::services::end_user;
use crate::wire::module_v1::{self as pb, module_host_server::ModuleHost};

type Reply<T> = Result<Response<T>, Status>;

/// The host side of one worker's callbacks.
pub struct Callbacks {
    host: FfiHostBox,
    link: Arc<WorkerLink>,
    slot: Arc<WorkerSlot>,
    deadlines: Deadlines,
}

impl Callbacks {
    pub fn new(
        host: FfiHostBox,
        link: Arc<WorkerLink>,
        slot: Arc<WorkerSlot>,
        deadlines: Deadlines,
    ) -> Self {
        Self {
            host,
            link,
            slot,
            deadlines,
        }
    }
}

fn ok<T>(value: T) -> Reply<T> {
    Ok(Response::new(value))
}

#[tonic::async_trait]
impl ModuleHost for Callbacks {
    async fn register_route(&self, r: Request<pb::RouteRegistration>) -> Reply<pb::Outcome> {
        let r = r.into_inner();
        let route = FfiRoute {
            method: r.method.into(),
            path: r.path.into(),
            permission: r.permission.into(),
            handler: proxies::route(self.link.clone(), r.handler, self.deadlines),
        };
        ok(convert::outcome(self.host.register_route(route)))
    }

    async fn subscribe(&self, r: Request<pb::Subscription>) -> Reply<pb::Outcome> {
        let r = r.into_inner();
        let handler = proxies::event(self.slot.clone(), &r.pattern, self.deadlines);
        let outcome = self.host.subscribe(RStr::from_str(&r.pattern), handler);
        if outcome.is_ok() {
            self.link.add_event_handler(&r.pattern, r.handler);
        }
        ok(convert::outcome(outcome))
    }

    async fn provide(&self, r: Request<pb::Provision>) -> Reply<pb::Outcome> {
        let r = r.into_inner();
        let handler = proxies::service(self.link.clone(), r.handler, self.deadlines);
        ok(convert::outcome(
            self.host.provide(RStr::from_str(&r.service), handler),
        ))
    }

    async fn describe_route(&self, r: Request<pb::RouteDescription>) -> Reply<pb::Outcome> {
        let r = r.into_inner();
        ok(convert::outcome(self.host.describe_route(
            RStr::from_str(&r.method),
            RStr::from_str(&r.path),
            r.doc_json.into(),
        )))
    }

    async fn describe_event(&self, r: Request<pb::EventDescription>) -> Reply<pb::Outcome> {
        let r = r.into_inner();
        ok(convert::outcome(self.host.describe_event(
            RStr::from_str(&r.topic),
            r.schema_json.into(),
        )))
    }

    async fn call(&self, r: Request<pb::OutgoingCall>) -> Reply<pb::CallReply> {
        let r = r.into_inner();
        // The user of the host's request or call the worker names; never one the
        // worker describes itself.
        let user = self.link.user_of(r.call);
        let host = self.host.clone();
        // The handle reads the end user when the call is made: make it inside the scope.
        let result = end_user::scope(user, async move {
            host.call(RStr::from_str(&r.service), r.request.into(), r.timeout_ms)
                .await
        })
        .await;
        ok(convert::call_reply(result))
    }

    async fn publish(&self, r: Request<pb::Publication>) -> Reply<pb::CallReply> {
        let r = r.into_inner();
        let result = self
            .host
            .publish(RStr::from_str(&r.topic), r.payload.into())
            .await;
        ok(convert::call_reply(result))
    }

    async fn cache_get(&self, r: Request<pb::CacheKey>) -> Reply<pb::CacheValue> {
        let key = r.into_inner().key;
        let reply = match self.host.cache_get(RStr::from_str(&key)).await {
            abi_stable::std_types::RResult::ROk(found) => {
                let found = found.into_option();
                pb::CacheValue {
                    ok: true,
                    present: found.is_some(),
                    value: found.map(RVec::into_vec).unwrap_or_default(),
                    ..Default::default()
                }
            }
            abi_stable::std_types::RResult::RErr(e) => pb::CacheValue {
                ok: false,
                error_kind: e.kind.into(),
                error: e.message.into_string(),
                ..Default::default()
            },
        };
        ok(reply)
    }

    async fn cache_set(&self, r: Request<pb::CacheEntry>) -> Reply<pb::CallReply> {
        let r = r.into_inner();
        let result = self
            .host
            .cache_set(RStr::from_str(&r.key), r.value.into(), r.ttl_ms)
            .await;
        ok(convert::call_reply(result.map(|()| "".into())))
    }

    async fn cache_delete(&self, r: Request<pb::CacheKey>) -> Reply<pb::CallReply> {
        let key = r.into_inner().key;
        let result = self.host.cache_delete(RStr::from_str(&key)).await;
        ok(convert::call_reply(result.map(|()| "".into())))
    }
}
