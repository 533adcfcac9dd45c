//! The embedded event-bus engine: in-process, one bounded queue and worker per
//! subscription, retries with doubling backoff, dead letters kept in memory.
//!
//! The cluster engine, `nats.rs`, keeps the same semantics on NATS JetStream (durable
//! consumers shared across hosts, order per topic, retries, dead letters).

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, Mutex,
};

use futures_util::{future::BoxFuture, FutureExt as _};
use modhost_plugin_api::ffi::{FfiEvent, FfiEventHandlerBox};
use tokio::sync::mpsc;

use super::{
    dead_letters::DeadLetterList, topic_matches, BusSettings, DeadLetter, DeadLetterSink, EventBus,
};

struct Subscription {
    module: String,
    pattern: String,
    queue: mpsc::Sender<FfiEvent>,
    /// Cleared when the module stops: its worker drops what is still queued.
    active: Arc<AtomicBool>,
}

/// The embedded engine.
pub struct InProcessBus {
    settings: BusSettings,
    subscriptions: Mutex<Vec<Subscription>>,
    dead: Arc<DeadLetterList>,
    sink: DeadLetterSink,
    /// Events the subscriptions handled successfully.
    handled: Arc<std::sync::atomic::AtomicU64>,
}

impl InProcessBus {
    pub fn new(settings: BusSettings, sink: DeadLetterSink) -> Self {
        Self {
            settings,
            subscriptions: Mutex::new(Vec::new()),
            dead: Arc::default(),
            sink,
            handled: Arc::default(),
        }
    }

    fn park(dead: &DeadLetterList, sink: &DeadLetterSink, letter: DeadLetter) {
        tracing::warn!(module = %letter.module, topic = %letter.topic, event = %letter.event_id, error = %letter.error, "event dead-lettered");
        dead.push(letter.clone());
        sink(letter);
    }
}

impl EventBus for InProcessBus {
    fn publish(
        &self,
        source: &str,
        topic: &str,
        payload: String,
    ) -> BoxFuture<'_, Result<String, String>> {
        let id = super::new_event_id();
        let event = FfiEvent {
            id: id.as_str().into(),
            occurred_at_ms: super::now_unix_ms(),
            topic: topic.into(),
            source: source.into(),
            payload: payload.into(),
            attempt: 0,
        };
        let subs = self.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
        for sub in subs.iter().filter(|s| topic_matches(&s.pattern, topic)) {
            if let Err(e) = sub.queue.try_send(event.clone()) {
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => format!(
                        "subscription queue full ({} events waiting)",
                        self.settings.queue_capacity
                    ),
                    mpsc::error::TrySendError::Closed(_) => "subscription closed".to_string(),
                };
                Self::park(
                    &self.dead,
                    &self.sink,
                    DeadLetter::of(&event, &sub.module, &sub.pattern, 0, why),
                );
            }
        }
        drop(subs);
        async move { Ok(id) }.boxed()
    }

    fn subscribe(&self, module: &str, pattern: &str, handler: Arc<FfiEventHandlerBox>) {
        let (tx, mut rx) = mpsc::channel::<FfiEvent>(self.settings.queue_capacity.max(1));
        let (module_name, pat) = (module.to_string(), pattern.to_string());
        let (settings, dead, sink) = (self.settings.clone(), self.dead.clone(), self.sink.clone());
        let handled = self.handled.clone();
        let active = Arc::new(AtomicBool::new(true));
        let running = active.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                if !running.load(Ordering::SeqCst) {
                    break;
                }
                let delivered = super::delivery::deliver(&handler, &event, &settings).await;
                if delivered.is_ok() {
                    handled.fetch_add(1, Ordering::Relaxed);
                }
                if let Err((attempts, error)) = delivered {
                    Self::park(
                        &dead,
                        &sink,
                        DeadLetter::of(&event, &module_name, &pat, attempts, error),
                    );
                }
            }
        });
        self.subscriptions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Subscription {
                module: module.to_string(),
                pattern: pattern.to_string(),
                queue: tx,
                active,
            });
    }

    fn unsubscribe_module(&self, module: &str) {
        let mut subs = self.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
        for s in subs.iter().filter(|s| s.module == module) {
            s.active.store(false, Ordering::SeqCst);
        }
        subs.retain(|s| s.module != module);
    }

    fn retire_module(&self, module: &str, keep_newest: usize) {
        let mut subs = self.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
        // Dropping a sender ends its worker once its queue is drained.
        super::retire_oldest(&mut subs, module, keep_newest, |s| &s.module, drop);
    }

    fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead.all()
    }

    fn metrics(&self) -> Vec<crate::engine_metrics::EngineMetric> {
        vec![crate::engine_metrics::EngineMetric::counter(
            super::HANDLED_TOTAL,
            super::HANDLED_HELP,
            self.handled.load(Ordering::Relaxed),
        )]
    }
}
