//! Events: [`Events`] publishes, [`crate::InitContext::subscribe`] receives.
//!
//! Topics are dot-separated (`blog.post.created`); subscription patterns may use `*` for
//! one segment and a final `>` for the rest. A module publishes only the topics and
//! subscribes only the patterns its `module.yaml` declares under `events`. Each
//! subscription receives every matching event at least once, in publish order per topic;
//! an `Err` or a panic makes the host retry with backoff, then park the event as a dead
//! letter. Handlers should therefore be idempotent (use [`Event::id`]).

use std::{future::Future, marker::PhantomData, sync::Arc};

use abi_stable::std_types::RResult;
use async_ffi::{FfiFuture, FutureExt as _};
use serde::{de::DeserializeOwned, Serialize};

use crate::{
    clients::{CallError, CallErrorKind},
    ffi::{FfiEvent, FfiEventHandler, FfiHostBox, FfiUnitResult},
    Error, Result,
};

/// An event as a subscriber receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Unique per host run; the same on a retry.
    pub id: u64,
    pub topic: String,
    /// The module that published it.
    pub source: String,
    pub payload: serde_json::Value,
    /// 1 on first delivery, more on retries.
    pub attempt: u32,
}

impl Event {
    /// The payload deserialised into `T`.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T> {
        T::deserialize(&self.payload)
            .map_err(|e| Error::new(format!("event {} payload: {e}", self.topic)))
    }
}

/// Publishes events. Cheap to clone into handlers.
#[derive(Clone)]
pub struct Events {
    pub(crate) host: FfiHostBox,
}

impl Events {
    /// Publishes `payload` (serialised to JSON) on `topic`.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        payload: &T,
    ) -> Result<(), CallError> {
        let json = serde_json::to_string(payload).map_err(|e| {
            CallError::new(
                CallErrorKind::BadRequest,
                format!("event payload is not JSON: {e}"),
            )
        })?;
        match self.host.publish(topic.into(), json.into()).await {
            RResult::ROk(()) => Ok(()),
            RResult::RErr(e) => Err(CallError::from_ffi(e)),
        }
    }
}

pub(crate) struct EventAdapter<H, Fut> {
    handler: Arc<H>,
    _marker: PhantomData<fn() -> Fut>,
}

impl<H, Fut> EventAdapter<H, Fut> {
    pub(crate) fn new(handler: H) -> Self {
        Self {
            handler: Arc::new(handler),
            _marker: PhantomData,
        }
    }
}

impl<H, Fut> FfiEventHandler for EventAdapter<H, Fut>
where
    H: Fn(Event) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    fn handle(&self, event: FfiEvent) -> FfiFuture<FfiUnitResult> {
        let handler = Arc::clone(&self.handler);
        async move {
            let payload =
                serde_json::from_str(event.payload.as_str()).unwrap_or(serde_json::Value::Null);
            let event = Event {
                id: event.id,
                topic: event.topic.into_string(),
                source: event.source.into_string(),
                payload,
                attempt: event.attempt,
            };
            match handler(event).await {
                Ok(()) => RResult::ROk(()),
                Err(e) => RResult::RErr(e.message().into()),
            }
        }
        .into_ffi()
    }
}
