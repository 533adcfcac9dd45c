//! Events: [`Events`] publishes, [`crate::InitContext::subscribe`] receives.
//!
//! Topics are dot-separated (`blog.post.created`); subscription patterns may use `*` for
//! one segment and a final `>` for the rest. A module publishes only the topics and
//! subscribes only the patterns its `module.yaml` declares under `events`. Each
//! subscription receives every matching event at least once, in publish order per topic;
//! an `Err` or a panic makes the host retry with backoff, then park the event as a dead
//! letter. Handlers should therefore be idempotent: [`Event::id`] is globally unique
//! (across restarts and hosts) and the same on every retry, so a table keyed by it
//! (`INSERT … ON CONFLICT (event_id) DO NOTHING`) processes each event once.

use std::{
    future::Future,
    marker::PhantomData,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use abi_stable::std_types::RResult;
use async_ffi::{FfiFuture, FutureExt as _};
use serde::{de::DeserializeOwned, Serialize};

use crate::{
    clients::{CallError, CallErrorKind},
    ffi::{FfiEvent, FfiEventHandler, FfiHostBox, FfiUnitResult},
    Error, Result,
};

/// An event as a subscriber receives it. New fields may be added in a minor release.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Event {
    /// Globally unique and the same on every retry: a UUIDv7 in text form
    /// (`0193a5c2-…`), unique across host restarts and hosts, ordered by time.
    pub id: String,
    /// When the event was published.
    pub occurred_at: SystemTime,
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
    /// Publishes `payload` (serialised to JSON) on `topic`; returns the new event's id.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        payload: &T,
    ) -> Result<String, CallError> {
        let json = serde_json::to_string(payload).map_err(|e| {
            CallError::new(
                CallErrorKind::BadRequest,
                format!("event payload is not JSON: {e}"),
            )
        })?;
        match self.host.publish(topic.into(), json.into()).await {
            RResult::ROk(id) => Ok(id.into_string()),
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
            let offset = Duration::from_millis(event.occurred_at_ms.max(0).unsigned_abs());
            let event = Event {
                id: event.id.into_string(),
                occurred_at: UNIX_EPOCH + offset,
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
