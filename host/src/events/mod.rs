//! The event bus port: the [`EventBus`] interface every engine implements, its settings,
//! dead letters and topic patterns. Engines live beside it, one file each:
//! [`memory`] is the embedded, in-process engine; [`nats`] the cluster engine on NATS
//! JetStream; `kafka` (cargo feature `kafka`) the cluster engine on Kafka. Broker engines publish through one [`publisher`], which holds events in
//! the durable local [`outbox`] while the broker is away.
//!
//! Semantics every engine keeps (the plugin API does not change between them):
//! - every subscription receives every event whose topic matches its pattern, at least
//!   once, in publish order per topic;
//! - subscriptions run independently, so a slow subscriber delays only itself (the
//!   in-process engine gives each a bounded queue and worker; a broker engine a consumer);
//! - a handler that fails (error, panic or timeout) is retried with exponential backoff;
//!   after the last attempt the event becomes a dead letter (kept for `/admin`, audited)
//!   and the subscription moves on;
//! - overflow policy (in-process engine): when a subscription's queue is full, the
//!   publisher is not blocked; the event is dead-lettered for that subscription with
//!   reason "queue full". Broker engines have no such queue: events wait in the broker.
//!
//! May use: the plugin API's FFI event types, `core`'s clock, [`crate::trace`],
//! [`crate::engine_metrics`], and the leaf helpers `hex`, `random` and `redact`. Must not
//! use the runtime, HTTP or data layers.

pub mod dead_letters;
pub mod delivery;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod memory;
pub mod nats;
pub mod outbox;
pub mod publisher;
pub mod stops;

use std::{sync::Arc, time::Duration};

use futures_util::future::BoxFuture;
use modhost_plugin_api::ffi::{FfiEvent, FfiEventHandlerBox};
use serde::Serialize;

/// Delivery tuning, shared by every engine.
#[derive(Debug, Clone)]
pub struct BusSettings {
    /// Events a subscription may have waiting before new ones are dead-lettered.
    pub queue_capacity: usize,
    /// Retries after the first failed delivery.
    pub max_retries: u32,
    /// Delay before the first retry; doubles each time.
    pub retry_backoff: Duration,
    /// A handler still running after this has failed.
    pub handler_timeout: Duration,
}

impl Default for BusSettings {
    fn default() -> Self {
        Self {
            queue_capacity: 1024,
            max_retries: 3,
            retry_backoff: Duration::from_millis(100),
            handler_timeout: Duration::from_secs(30),
        }
    }
}

/// An event that could not be delivered.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DeadLetter {
    pub event_id: String,
    pub topic: String,
    pub source: String,
    pub payload: String,
    /// The subscribing module and its pattern.
    pub module: String,
    pub pattern: String,
    pub attempts: u32,
    pub error: String,
    pub time: String,
}

impl DeadLetter {
    /// The dead letter of `event` for `module`'s subscription to `pattern`.
    pub fn of(event: &FfiEvent, module: &str, pattern: &str, attempts: u32, error: String) -> Self {
        Self {
            event_id: event.id.to_string(),
            topic: event.topic.to_string(),
            source: event.source.to_string(),
            payload: event.payload.to_string(),
            module: module.to_string(),
            pattern: pattern.to_string(),
            attempts,
            error,
            time: crate::core::now_rfc3339(),
        }
    }
}

/// Called with each new dead letter (the host audits it).
pub type DeadLetterSink = Arc<dyn Fn(DeadLetter) + Send + Sync>;

/// The bus as the host uses it; engines implement it.
pub trait EventBus: Send + Sync {
    /// Publishes an event; returns its id (see [`new_event_id`]). Never waits for
    /// subscribers.
    fn publish(
        &self,
        source: &str,
        topic: &str,
        payload: String,
    ) -> BoxFuture<'_, Result<String, String>>;
    /// Adds a subscription for `module`.
    fn subscribe(&self, module: &str, pattern: &str, handler: Arc<FfiEventHandlerBox>);
    /// Removes every subscription of `module` (its queued events are dropped).
    fn unsubscribe_module(&self, module: &str);
    /// Stops routing new events to `module`'s oldest subscriptions, keeping the
    /// `keep_newest` most recent ones, and lets the retired ones finish what is queued
    /// (hot reload: the new instance's subscriptions are already live, so nothing is
    /// lost; an event may reach both, hence at-least-once).
    fn retire_module(&self, module: &str, keep_newest: usize);
    /// Dead letters, oldest first.
    fn dead_letters(&self) -> Vec<DeadLetter>;
    /// What the engine counts about itself, for `/metrics`.
    fn metrics(&self) -> Vec<crate::engine_metrics::EngineMetric> {
        Vec::new()
    }
    /// The host begins to shut down: a broker engine stops taking events, so that the
    /// other hosts running the same modules take them while this one drains. The
    /// in-process engine keeps delivering what it has queued.
    fn stop_taking(&self) {}
    /// The host is stopping: hand over what is still held (up to `deadline`).
    fn close(&self, deadline: Duration) -> BoxFuture<'_, ()> {
        let _ = deadline;
        Box::pin(async {})
    }
}

/// Of `module`'s subscriptions in `subs` (oldest first), removes all but the
/// `keep_newest` most recent, handing each removed one to `retire` (hot reload: the
/// new instance's subscriptions are the newest).
pub(crate) fn retire_oldest<T>(
    subs: &mut Vec<T>,
    module: &str,
    keep_newest: usize,
    module_of: impl Fn(&T) -> &str,
    mut retire: impl FnMut(T),
) {
    let total = subs.iter().filter(|s| module_of(s) == module).count();
    let mut seen = 0;
    let mut kept = Vec::with_capacity(subs.len());
    for s in subs.drain(..) {
        if module_of(&s) != module {
            kept.push(s);
            continue;
        }
        seen += 1;
        if seen > total.saturating_sub(keep_newest) {
            kept.push(s);
        } else {
            retire(s);
        }
    }
    *subs = kept;
}

/// The series every engine counts successful deliveries in.
pub const HANDLED_TOTAL: &str = "modhost_events_handled_total";
pub const HANDLED_HELP: &str = "Events this host's subscriptions handled successfully.";

/// A new event id: a UUIDv7, unique across restarts and hosts and ordered by time, so
/// a subscriber's `ON CONFLICT (event_id) DO NOTHING` never drops a new event.
pub fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Whether `topic` matches `pattern`: `*` is one segment, a final `>` one or more.
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    let mut p = pattern.split('.');
    let mut t = topic.split('.');
    loop {
        match (p.next(), t.next()) {
            (Some(">"), Some(_)) => return p.next().is_none(),
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::topic_matches as m;

    #[test]
    fn patterns() {
        assert!(m("blog.post.created", "blog.post.created"));
        assert!(m("blog.post.*", "blog.post.created"));
        assert!(m("blog.*.created", "blog.post.created"));
        assert!(m("blog.>", "blog.post.created"));
        assert!(m("blog.>", "blog.x"));
        assert!(!m("blog.>", "blog"));
        assert!(!m("blog.post.*", "blog.post.created.late"));
        assert!(!m("blog.post.*", "blog.post"));
        assert!(!m("billing.*", "blog.post"));
        assert!(!m("blog.post.created", "blog.post.created.x"));
    }
}
