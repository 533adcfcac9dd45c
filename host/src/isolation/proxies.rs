//! What the host registers for an isolated module: route handlers, event handlers and
//! service handlers that forward each call to the worker. A worker that is down (crashed,
//! restarting) answers routes with 503 and `Retry-After`, events with an error (the bus
//! retries them), and service calls with the `unavailable` kind.

use std::{sync::Arc, time::Duration};

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RArc, ROption, RResult, RString, Tuple2},
};
use async_ffi::{FfiFuture, FutureExt as _};
use modhost_plugin_api::ffi::{
    FfiCallError, FfiEvent, FfiEventHandler, FfiEventHandlerBox, FfiEventHandler_TO, FfiHandler,
    FfiHandlerBox, FfiHandler_TO, FfiRequest, FfiResponse, FfiServiceHandler, FfiServiceHandlerBox,
    FfiServiceHandler_TO, FfiUnitResult, FfiUser,
};

use crate::isolation::{
    convert,
    link::{LinkError, WorkerLink},
    slot::WorkerSlot,
};
use crate::wire::module_v1 as pb;

/// How long a client is asked to wait before retrying a module whose worker is down.
pub const RETRY_AFTER_SECS: u32 = 1;

/// The deadlines of calls into the module's code.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub request: Duration,
    pub event: Duration,
}

struct RouteProxy {
    link: Arc<WorkerLink>,
    handler: u64,
    deadline: Duration,
}

pub fn route(link: Arc<WorkerLink>, handler: u64, deadlines: Deadlines) -> FfiHandlerBox {
    let proxy = RouteProxy {
        link,
        handler,
        deadline: deadlines.request,
    };
    FfiHandler_TO::from_ptr(RArc::new(proxy), TD_Opaque)
}

impl FfiHandler for RouteProxy {
    fn call(&self, request: FfiRequest) -> FfiFuture<FfiResponse> {
        let mut wire = route_request(self.handler, &request);
        drop(request);
        let (link, deadline) = (self.link.clone(), self.deadline);
        async move {
            // The request's end user (anonymous without a token), read inside the
            // host's scope for this request: the worker's calls back name the call.
            let call = link.enter(crate::services::end_user::current());
            wire.call = call.id();
            let result = link
                .run(deadline, "a route handler", move |mut c| async move {
                    c.handle_route(wire).await
                })
                .await;
            match result {
                Ok(response) => convert::response_from_wire(response),
                Err(LinkError::Killed(_)) => {
                    json(504, "the module's handler did not answer in time", false)
                }
                // Unwinds through the FFI future as the module's own panic would
                // in-process, so the host answers, counts and logs it the same way.
                Err(LinkError::Panicked) => std::panic::resume_unwind(Box::new(
                    "the module's handler panicked in its worker process",
                )),
                Err(e @ LinkError::Failed(_)) => {
                    tracing::error!(module = %link.module(), error = %e, "answered 500");
                    json(500, "the module's handler failed", false)
                }
                Err(e) => json(
                    503,
                    &format!(
                        "module `{}` is unavailable: {e}; retry shortly",
                        link.module()
                    ),
                    true,
                ),
            }
        }
        .into_ffi()
    }
}

fn route_request(handler: u64, r: &FfiRequest) -> pb::RouteRequest {
    let mut params = Vec::new();
    while let ROption::RSome(Tuple2(name, value)) = r.param(params.len()) {
        params.push(pb::Pair {
            name: name.to_string(),
            value: value.as_str().as_bytes().to_vec(),
        });
    }
    let mut headers = Vec::new();
    while let ROption::RSome(Tuple2(name, value)) = r.header(headers.len()) {
        headers.push(pb::Pair {
            name: name.to_string(),
            value: value.to_vec(),
        });
    }
    pb::RouteRequest {
        handler,
        method: r.method().to_string(),
        path: r.path().to_string(),
        query: r.query().to_string(),
        params,
        headers,
        body: r.body().to_vec(),
        user: r.user().into_option().as_ref().map(convert::user_to_wire),
        call: 0,
    }
}

/// A JSON error response, as the host's own (`{"error": ...}`).
fn json(status: u16, message: &str, retry: bool) -> FfiResponse {
    let mut headers = vec![Tuple2(
        RString::from("content-type"),
        RString::from("application/json"),
    )];
    if retry {
        headers.push(Tuple2(
            "retry-after".into(),
            RETRY_AFTER_SECS.to_string().into(),
        ));
    }
    FfiResponse {
        status,
        headers: headers.into(),
        body: serde_json::json!({ "error": message })
            .to_string()
            .into_bytes()
            .into(),
    }
}

struct EventProxy {
    slot: Arc<WorkerSlot>,
    pattern: String,
    deadline: Duration,
}

/// An event handler that delivers to whichever worker runs the module when the event is
/// handled (see [`WorkerSlot`]): events queued before a crash or a reload reach the next
/// worker. While none is alive, it waits up to the event deadline.
pub fn event(slot: Arc<WorkerSlot>, pattern: &str, deadlines: Deadlines) -> FfiEventHandlerBox {
    let proxy = EventProxy {
        slot,
        pattern: pattern.to_string(),
        deadline: deadlines.event,
    };
    FfiEventHandler_TO::from_ptr(RArc::new(proxy), TD_Opaque)
}

impl FfiEventHandler for EventProxy {
    fn handle(&self, event: FfiEvent) -> FfiFuture<FfiUnitResult> {
        let event = convert::event_to_wire(&event);
        let (slot, pattern, deadline) = (self.slot.clone(), self.pattern.clone(), self.deadline);
        async move {
            let Some(link) = slot.live(deadline).await else {
                return RResult::RErr(LinkError::Down.to_string().into());
            };
            let Some(handler) = link.event_handler(&pattern) else {
                let why = format!(
                    "module `{}` no longer subscribes to `{pattern}`",
                    link.module()
                );
                return RResult::RErr(why.into());
            };
            let delivery = pb::EventDelivery {
                handler,
                event: Some(event),
            };
            let result = link
                .run(deadline, "an event handler", move |mut c| async move {
                    c.deliver_event(delivery).await
                })
                .await;
            match result {
                Ok(outcome) => convert::from_outcome(outcome),
                Err(e) => RResult::RErr(e.to_string().into()),
            }
        }
        .into_ffi()
    }
}

struct ServiceProxy {
    link: Arc<WorkerLink>,
    handler: u64,
    deadline: Duration,
}

pub fn service(link: Arc<WorkerLink>, handler: u64, deadlines: Deadlines) -> FfiServiceHandlerBox {
    let proxy = ServiceProxy {
        link,
        handler,
        deadline: deadlines.request,
    };
    FfiServiceHandler_TO::from_ptr(RArc::new(proxy), TD_Opaque)
}

impl FfiServiceHandler for ServiceProxy {
    fn call(&self, caller: RString, request: RString) -> FfiFuture<RResult<RString, FfiCallError>> {
        self.call_as(caller, ROption::RNone, request)
    }

    fn call_as(
        &self,
        caller: RString,
        user: ROption<FfiUser>,
        request: RString,
    ) -> FfiFuture<RResult<RString, FfiCallError>> {
        let user = user.into_option();
        let mut call = pb::ServiceCall {
            handler: self.handler,
            caller: caller.into_string(),
            user: user.as_ref().map(convert::user_to_wire),
            request: request.into_string(),
            call: 0,
        };
        let (link, deadline) = (self.link.clone(), self.deadline);
        async move {
            // The provider's own calls carry the same user, as in-process.
            let in_flight = link.enter(user.map(Arc::new));
            call.call = in_flight.id();
            let result = link
                .run(deadline, "a service handler", move |mut c| async move {
                    c.call_service(call).await
                })
                .await;
            drop(in_flight);
            match result {
                Ok(reply) => convert::from_call_reply(reply),
                Err(e @ LinkError::Failed(_)) => RResult::RErr(FfiCallError {
                    kind: modhost_plugin_api::ffi::call_error::FAILED,
                    message: format!("module `{}`: {e}", link.module()).into(),
                }),
                Err(LinkError::Killed(d)) => RResult::RErr(FfiCallError {
                    kind: modhost_plugin_api::ffi::call_error::TIMEOUT,
                    message: format!(
                        "module `{}`: the service did not answer within {d:?}",
                        link.module()
                    )
                    .into(),
                }),
                Err(e) => RResult::RErr(convert::unavailable(format!(
                    "module `{}`: {e}",
                    link.module()
                ))),
            }
        }
        .into_ffi()
    }
}
