//! Publishing through a broker without ever losing an event: straight to the broker
//! when it answers, else into the durable local [`Outbox`], which a sender task empties
//! in order once the broker is back. Every broker engine (NATS JetStream, Kafka)
//! publishes through one [`Publisher`]; the engine gives it a [`Broker`] that sends one
//! event and waits for its acknowledgement.
//!
//! Order: once anything waits in the outbox, every new event queues behind it, so
//! events reach the broker in the order they were published. An event is sent with its
//! id, so a broker that deduplicates (JetStream's `Nats-Msg-Id`) or a handler that does
//! (by event id) absorbs a resend whose first acknowledgement was lost.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Weak,
    },
    time::{Duration, Instant},
};

use futures_util::future::BoxFuture;
use tokio::sync::Notify;

use super::outbox::{Outbox, RETRY_EVERY};
use crate::engine_metrics::EngineMetric;

/// Why a broker did not take an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// The broker may take it later (unreachable, timed out): keep it in the outbox.
    Retry(String),
    /// The broker will never take it (too large, an invalid or forbidden name): keeping
    /// it would block every later event, so it is refused.
    Refused(String),
}

/// What a broker engine does for the publisher.
pub trait Broker: Send + Sync + 'static {
    /// Sends one event and waits for the broker's acknowledgement (with the engine's
    /// own time limit).
    fn send<'a>(
        &'a self,
        subject: &'a str,
        headers: &'a [(String, String)],
        payload: &'a [u8],
    ) -> BoxFuture<'a, Result<(), SendError>>;
    /// Whether the broker can take events now (its streams or topics exist).
    fn ready(&self) -> bool;
    /// The broker's name, for logs (`NATS`, `Kafka`).
    fn name(&self) -> &'static str;
}

/// Publishes to a broker, holding events in the outbox while it is away.
pub struct Publisher {
    broker: Arc<dyn Broker>,
    outbox: Arc<Outbox>,
    added: Notify,
    direct: AtomicU64,
    /// Events the broker refused for good after they were held.
    refused: AtomicU64,
}

impl Publisher {
    /// A publisher over `broker` and `outbox`, with its sender task running.
    pub fn start(broker: Arc<dyn Broker>, outbox: Arc<Outbox>) -> Arc<Self> {
        let publisher = Arc::new(Self {
            broker,
            outbox,
            added: Notify::new(),
            direct: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        tokio::spawn(send_held(Arc::downgrade(&publisher)));
        publisher
    }

    /// Publishes one event: `Ok` once the broker acknowledged it or the outbox holds it
    /// on disk; an error when the broker refuses it for good (the module hears why).
    pub async fn publish(
        &self,
        subject: String,
        headers: Vec<(String, String)>,
        payload: Vec<u8>,
        event_id: &str,
    ) -> Result<(), String> {
        if self.outbox.waiting() == 0 && self.broker.ready() {
            match self.broker.send(&subject, &headers, &payload).await {
                Ok(()) => {
                    self.direct.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(SendError::Refused(why)) => {
                    return Err(format!("{} refused the event: {why}", self.broker.name()));
                }
                Err(SendError::Retry(why)) => {
                    tracing::warn!(target: "modhost::cluster", event = %event_id, "{} did not take the event, keeping it in the outbox: {why}", self.broker.name());
                }
            }
        }
        // On a task of its own: a caller that gives up waiting does not leave the
        // outbox half-written.
        let outbox = self.outbox.clone();
        let kept = tokio::spawn(async move { outbox.push(&subject, &headers, &payload).await });
        match kept.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("the event could not be published nor kept: {e}")),
            Err(e) => return Err(format!("the event could not be kept: {e}")),
        }
        self.added.notify_one();
        Ok(())
    }

    /// Waits up to `deadline` for the outbox to empty; logs what is left.
    pub async fn close(&self, deadline: Duration) {
        let until = Instant::now() + deadline;
        while self.outbox.waiting() > 0 && Instant::now() < until {
            self.added.notify_one();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = self.outbox.waiting();
        if left > 0 {
            tracing::warn!(target: "modhost::cluster", waiting = left, outbox = %self.outbox.path(), "stopping with events not yet in {}: they stay in the outbox and are sent when this host starts again with the same data dir", self.broker.name());
        }
    }

    /// The outbox's and the direct path's counters.
    pub fn metrics(&self) -> Vec<EngineMetric> {
        vec![
            EngineMetric::gauge(
                "modhost_event_outbox_waiting",
                "Events kept in the local outbox, waiting for the broker.",
                self.outbox.waiting(),
            ),
            EngineMetric::counter(
                "modhost_event_outbox_queued_total",
                "Events that went through the local outbox since start.",
                self.outbox.queued_total(),
            ),
            EngineMetric::counter(
                "modhost_event_outbox_refused_total",
                "Held events the broker refused for good (logged with their id), removed from the outbox.",
                self.refused.load(Ordering::Relaxed),
            ),
            EngineMetric::counter(
                "modhost_events_published_total",
                "Events the broker acknowledged at once (not through the outbox).",
                self.direct.load(Ordering::Relaxed),
            ),
        ]
    }
}

/// Sends what waits in the outbox, oldest first, whenever the broker takes it.
async fn send_held(publisher: Weak<Publisher>) {
    loop {
        let Some(this) = publisher.upgrade() else {
            return;
        };
        if this.outbox.waiting() == 0 || !this.broker.ready() {
            // Held for at most one pause: a dropped bus ends this task soon after.
            let _ = tokio::time::timeout(RETRY_EVERY, this.added.notified()).await;
            continue;
        }
        let batch = match this.outbox.oldest(256).await {
            Ok(b) if b.is_empty() => {
                // The count ran ahead of the table (a write that failed): set it right.
                this.outbox.recount().await;
                drop(this);
                tokio::time::sleep(RETRY_EVERY).await;
                continue;
            }
            Ok(b) => b,
            Err(e) => {
                tracing::error!(target: "modhost::cluster", "{e}");
                drop(this);
                tokio::time::sleep(RETRY_EVERY).await;
                continue;
            }
        };
        let mut stalled = false;
        for event in batch {
            let sent = this
                .broker
                .send(&event.subject, &event.headers, &event.payload)
                .await;
            match sent {
                Ok(()) => {}
                Err(SendError::Retry(why)) => {
                    tracing::debug!(target: "modhost::cluster", "outbox: {} did not take an event yet: {why}", this.broker.name());
                    stalled = true;
                    break;
                }
                Err(SendError::Refused(why)) => {
                    // Kept, it would block every later event for good.
                    let id = event
                        .headers
                        .iter()
                        .find(|(k, _)| k == "Nats-Msg-Id" || k == "modhost-event-id")
                        .map(|(_, v)| v.as_str())
                        .unwrap_or("?");
                    tracing::error!(target: "modhost::cluster", event = %id, subject = %event.subject, "{} refused a held event for good; it is dropped from the outbox: {why}", this.broker.name());
                    this.refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            if let Err(e) = this.outbox.sent(event.seq).await {
                tracing::error!(target: "modhost::cluster", "{e}");
                stalled = true;
                break;
            }
            if this.outbox.waiting() == 0 {
                tracing::info!(target: "modhost::cluster", "outbox empty: every held event is in {}", this.broker.name());
            }
        }
        drop(this);
        if stalled {
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }
}
