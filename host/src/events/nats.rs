//! The cluster event-bus engine: NATS JetStream, shared by every host of a cluster.
//!
//! - **Streams.** `<NAME>_EVENTS` holds `<cluster>.events.<topic>` (file storage, kept
//!   for [`KEEP_EVENTS`], duplicates by event id dropped within [`DUPLICATE_WINDOW`]);
//!   `<NAME>_DEAD` holds `<cluster>.dead.<module>`, the dead letters.
//! - **Publishing** goes through the shared [`Publisher`]: JetStream's acknowledgement,
//!   or the durable local outbox while NATS is away. The event id is the `Nats-Msg-Id`,
//!   so an event sent twice (its acknowledgement lost, then sent from the outbox) is
//!   stored once.
//! - **Subscribing.** One durable pull consumer per (module, pattern), named after
//!   them, shared by every host that runs the module: each event is processed once per
//!   module across the cluster. `max_ack_pending = 1` keeps publish order per consumer
//!   (hence per topic); the handler's success acks, its failure `nak`s with a doubling
//!   delay, and after the last attempt the event is published to the dead-letter stream
//!   and terminated. While a handler runs the host tells JetStream it is still working,
//!   so `ack_wait` stays short: a host killed mid-event has it redelivered elsewhere
//!   after [`ACK_WAIT`].
//! - **Dead letters** are read back from their stream, so `/admin/dead-letters` on
//!   every host shows the whole cluster's; the host that parks one audits it.
//! - A consumer is created with `DeliverPolicy::New`: like the embedded bus, a
//!   subscription receives what is published after it first exists; from then on it is
//!   durable, and events wait for it while no host runs the module.

use std::{
    panic::AssertUnwindSafe,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use abi_stable::std_types::RResult;
use async_nats::{
    jetstream::{self, consumer::pull, stream, AckKind},
    HeaderMap,
};
use futures_util::{future::BoxFuture, FutureExt as _, StreamExt as _};
use modhost_plugin_api::ffi::{FfiEvent, FfiEventHandlerBox};
use tokio::sync::watch;

use super::{
    dead_letters::DeadLetterList,
    outbox::Outbox,
    publisher::{Broker, Publisher, SendError},
    stops::Stops,
    BusSettings, DeadLetter, DeadLetterSink, EventBus,
};
use crate::{engine_metrics::EngineMetric, trace::TraceContext};

/// How long the event stream keeps an event.
pub const KEEP_EVENTS: Duration = Duration::from_secs(7 * 24 * 3600);
/// Within this window JetStream stores an event id once.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);
/// A delivery not acknowledged (nor reported in progress) for this long goes to
/// another host.
pub const ACK_WAIT: Duration = Duration::from_secs(5);
/// How long publishing waits for JetStream before the event goes to the outbox.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

const SOURCE: &str = "Modhost-Source";
const OCCURRED: &str = "Modhost-Occurred-At";
const TRACEPARENT: &str = "traceparent";

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum NatsSetupError {
    #[error("event_bus_url `{url}`: {why}")]
    Connect { url: String, why: String },
    #[error(transparent)]
    Outbox(#[from] super::outbox::OutboxError),
}

/// The names this cluster uses in JetStream.
#[derive(Debug, Clone)]
struct Names {
    events_stream: String,
    dead_stream: String,
    events_prefix: String,
    dead_prefix: String,
}

impl Names {
    fn of(cluster: &str) -> Self {
        let upper = cluster.to_ascii_uppercase().replace('-', "_");
        Self {
            events_stream: format!("{upper}_EVENTS"),
            dead_stream: format!("{upper}_DEAD"),
            events_prefix: format!("{cluster}.events."),
            dead_prefix: format!("{cluster}.dead."),
        }
    }

    /// The durable consumer of `module`'s subscription to `pattern`.
    fn consumer(module: &str, pattern: &str) -> String {
        let readable: String = pattern
            .chars()
            .map(|c| match c {
                '*' => 'S',
                '>' => 'R',
                '.' => '_',
                c => c,
            })
            .collect();
        let hash = &crate::hex::sha256_hex(pattern.as_bytes())[..8];
        format!("{module}__{readable}__{hash}")
    }
}

/// The NATS JetStream engine.
pub struct NatsBus {
    client: async_nats::Client,
    context: jetstream::Context,
    names: Names,
    settings: BusSettings,
    publisher: Arc<Publisher>,
    /// `true` once both streams exist.
    ready: watch::Receiver<bool>,
    subscriptions: Stops,
    dead: Arc<DeadLetterList>,
    sink: DeadLetterSink,
    delivered: Arc<AtomicU64>,
}

impl NatsBus {
    /// Connects (in the background: the host starts while NATS is down), creates the
    /// streams when it can, and starts the outbox sender and the dead-letter reader.
    pub async fn start(
        url: &str,
        cluster: &str,
        settings: BusSettings,
        sink: DeadLetterSink,
        data_dir: &std::path::Path,
    ) -> Result<Arc<Self>, NatsSetupError> {
        let outbox = Arc::new(Outbox::open(data_dir).await?);
        let name = format!("modhost {cluster}");
        let client = async_nats::ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .event_callback(|event| async move {
                tracing::info!(target: "modhost::cluster", "NATS: {event}");
            })
            .connect(url)
            .await
            .map_err(|e| NatsSetupError::Connect {
                url: crate::redact::url(url),
                why: e.to_string(),
            })?;
        let context = jetstream::new(client.clone());
        let names = Names::of(cluster);
        let (ready_tx, ready) = watch::channel(false);
        let bus = Arc::new(Self {
            client,
            context: context.clone(),
            names,
            settings,
            publisher: Publisher::start(
                Arc::new(JetStream {
                    context: context.clone(),
                    ready: ready.clone(),
                }),
                outbox,
            ),
            ready,
            subscriptions: Stops::default(),
            dead: Arc::default(),
            sink,
            delivered: Arc::new(AtomicU64::new(0)),
        });
        tokio::spawn(keep_streams(
            bus.context.clone(),
            bus.names.clone(),
            ready_tx,
        ));
        tokio::spawn(read_dead_letters(Arc::downgrade(&bus)));
        Ok(bus)
    }
}

/// How often the streams are checked (and created again if the server lost them).
const CHECK_STREAMS_EVERY: Duration = Duration::from_secs(5);

/// Creates (or finds) the two streams, retrying until NATS answers, then checks them
/// every [`CHECK_STREAMS_EVERY`]: a server restarted without its storage gets them
/// back. Ends when the bus is dropped.
async fn keep_streams(context: jetstream::Context, names: Names, ready: watch::Sender<bool>) {
    let configs = [
        stream::Config {
            name: names.events_stream.clone(),
            subjects: vec![format!("{}>", names.events_prefix)],
            max_age: KEEP_EVENTS,
            duplicate_window: DUPLICATE_WINDOW,
            storage: stream::StorageType::File,
            ..Default::default()
        },
        stream::Config {
            name: names.dead_stream.clone(),
            subjects: vec![format!("{}>", names.dead_prefix)],
            max_age: KEEP_EVENTS,
            max_messages: i64::try_from(super::dead_letters::MAX_DEAD_LETTERS).unwrap_or(i64::MAX),
            storage: stream::StorageType::File,
            ..Default::default()
        },
    ];
    let mut logged = false;
    loop {
        let mut failed = None;
        for config in &configs {
            if let Err(e) = context.get_or_create_stream(config.clone()).await {
                failed = Some(format!("stream {}: {e}", config.name));
                break;
            }
        }
        match failed {
            None => {
                if !*ready.borrow() {
                    tracing::info!(target: "modhost::cluster", stream = %names.events_stream, "NATS JetStream streams ready");
                }
                let _ = ready.send(true);
                logged = false;
            }
            Some(why) if !logged => {
                tracing::warn!(target: "modhost::cluster", "NATS JetStream not ready, events wait in the outbox: {why} (is event_bus_url a nats-server started with JetStream, `-js`?)");
                logged = true;
            }
            Some(_) => {}
        }
        if ready.is_closed() {
            return;
        }
        let pause = match *ready.borrow() {
            true => CHECK_STREAMS_EVERY,
            false => super::outbox::RETRY_EVERY,
        };
        tokio::time::sleep(pause).await;
    }
}

/// JetStream as the publisher's broker.
struct JetStream {
    context: jetstream::Context,
    ready: watch::Receiver<bool>,
}

impl Broker for JetStream {
    fn send<'a>(
        &'a self,
        subject: &'a str,
        headers: &'a [(String, String)],
        payload: &'a [u8],
    ) -> BoxFuture<'a, Result<(), SendError>> {
        async move {
            let mut map = HeaderMap::new();
            for (name, value) in headers {
                map.insert(name.as_str(), value.as_str());
            }
            let send = async {
                let ack = self
                    .context
                    .publish_with_headers(subject.to_string(), map, payload.to_vec().into())
                    .await
                    .map_err(|e| e.to_string())?;
                ack.await.map_err(|e| e.to_string())
            };
            match tokio::time::timeout(PUBLISH_TIMEOUT, send).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) if e.contains("maximum payload") => Err(SendError::Refused(e)),
                Ok(Err(e)) => Err(SendError::Retry(e)),
                Err(_) => Err(SendError::Retry(format!(
                    "no acknowledgement within {PUBLISH_TIMEOUT:?}"
                ))),
            }
        }
        .boxed()
    }

    fn ready(&self) -> bool {
        *self.ready.borrow()
    }

    fn name(&self) -> &'static str {
        "NATS"
    }
}

/// Mirrors the dead-letter stream into memory for `/admin/dead-letters`.
async fn read_dead_letters(bus: std::sync::Weak<NatsBus>) {
    loop {
        let Some(this) = bus.upgrade() else { return };
        let (context, names, dead) = (this.context.clone(), this.names.clone(), this.dead.clone());
        let mut ready = this.ready.clone();
        drop(this);
        if ready.wait_for(|r| *r).await.is_err() {
            return;
        }
        let reading = async {
            let stream = context
                .get_stream(&names.dead_stream)
                .await
                .map_err(|e| e.to_string())?;
            let consumer = stream
                .create_consumer(pull::OrderedConfig {
                    filter_subject: format!("{}>", names.dead_prefix),
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
            // A restart re-reads the stream from its start.
            dead.clear();
            while let Some(message) = messages.next().await {
                let message = message.map_err(|e| e.to_string())?;
                if let Ok(letter) = serde_json::from_slice::<DeadLetter>(&message.payload) {
                    dead.push(letter);
                }
                if bus.strong_count() == 0 {
                    return Ok(());
                }
            }
            Ok::<(), String>(())
        };
        if let Err(e) = reading.await {
            tracing::debug!(target: "modhost::cluster", "dead letters: reading again after: {e}");
        }
        if bus.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(super::outbox::RETRY_EVERY).await;
    }
}

/// What one subscription needs, apart from the bus.
struct Subscriber {
    /// When the module subscribed: a consumer created now starts there, so nothing
    /// published since is missed while it is being created.
    since: async_nats::datetime::DateTime,
    module: String,
    pattern: String,
    handler: Arc<FfiEventHandlerBox>,
    settings: BusSettings,
    names: Names,
    context: jetstream::Context,
    sink: DeadLetterSink,
    delivered: Arc<AtomicU64>,
}

impl Subscriber {
    async fn consumer(&self) -> Result<jetstream::consumer::Consumer<pull::Config>, String> {
        let stream = self
            .context
            .get_stream(&self.names.events_stream)
            .await
            .map_err(|e| e.to_string())?;
        let name = Names::consumer(&self.module, &self.pattern);
        stream
            .get_or_create_consumer(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    description: Some(format!(
                        "modhost module {} subscribed to {}",
                        self.module, self.pattern
                    )),
                    filter_subject: format!("{}{}", self.names.events_prefix, self.pattern),
                    deliver_policy: jetstream::consumer::DeliverPolicy::ByStartTime {
                        start_time: self.since,
                    },
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    max_ack_pending: 1,
                    // Dead letters are the host's decision, made on the delivery count.
                    max_deliver: -1,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| e.to_string())
    }

    /// Pulls and handles events until `stop` turns true.
    async fn run(self, mut stop: watch::Receiver<bool>, mut ready: watch::Receiver<bool>) {
        let mut logged = false;
        loop {
            tokio::select! {
                r = ready.wait_for(|r| *r) => if r.is_err() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
            let failure = match self.consumer().await {
                Ok(consumer) => match consumer.messages().await {
                    Ok(mut messages) => {
                        logged = false;
                        loop {
                            let next = tokio::select! {
                                m = messages.next() => m,
                                _ = stop.wait_for(|s| *s) => return,
                            };
                            match next {
                                Some(Ok(message)) => self.handle(message).await,
                                Some(Err(e)) => break e.to_string(),
                                None => break "the consumer's message stream ended".into(),
                            }
                            if *stop.borrow() {
                                return;
                            }
                        }
                    }
                    Err(e) => e.to_string(),
                },
                Err(e) => e,
            };
            if !logged {
                tracing::warn!(target: "modhost::cluster", module = %self.module, pattern = %self.pattern, "event subscription waiting for NATS: {failure}");
                logged = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(super::outbox::RETRY_EVERY) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// Delivers one message to the handler, then acks, `nak`s or dead-letters it.
    async fn handle(&self, message: jetstream::Message) {
        let attempt = message
            .info()
            .map(|i| u32::try_from(i.delivered).unwrap_or(u32::MAX))
            .unwrap_or(1)
            .max(1);
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_string())
        };
        let topic = message
            .subject
            .as_str()
            .strip_prefix(&self.names.events_prefix)
            .unwrap_or(message.subject.as_str())
            .to_string();
        let event = FfiEvent {
            id: header("Nats-Msg-Id").unwrap_or_default().into(),
            occurred_at_ms: header(OCCURRED).and_then(|v| v.parse().ok()).unwrap_or(0),
            topic: topic.as_str().into(),
            source: header(SOURCE).unwrap_or_default().into(),
            payload: String::from_utf8_lossy(&message.payload)
                .into_owned()
                .into(),
            attempt,
        };
        let trace = header(TRACEPARENT)
            .and_then(|h| TraceContext::parse(&h))
            .unwrap_or_else(TraceContext::new_root);
        let span = tracing::info_span!("event", trace_id = %trace.trace_id, module = %self.module, topic = %topic, event = %event.id, attempt);
        let outcome = {
            let call = AssertUnwindSafe(self.handler.handle(event.clone())).catch_unwind();
            let timed = tokio::time::timeout(self.settings.handler_timeout, call);
            let work =
                crate::trace::scope(trace, tracing::Instrument::instrument(timed, span.clone()));
            tokio::pin!(work);
            // Tell JetStream the host is still at it, so `ack_wait` can stay short.
            let mut beat = tokio::time::interval(ACK_WAIT / 3);
            beat.tick().await;
            loop {
                tokio::select! {
                    done = &mut work => break done,
                    _ = beat.tick() => { let _ = message.ack_with(AckKind::Progress).await; }
                }
            }
        };
        let error = match outcome {
            Ok(Ok(RResult::ROk(()))) => None,
            Ok(Ok(RResult::RErr(msg))) => Some(msg.into_string()),
            Ok(Err(_)) => Some("the handler panicked".to_string()),
            Err(_) => Some(format!(
                "the handler did not finish within {:?}",
                self.settings.handler_timeout
            )),
        };
        let Some(error) = error else {
            self.delivered.fetch_add(1, Ordering::Relaxed);
            span.in_scope(|| tracing::debug!(target: "modhost::cluster", "event handled"));
            if let Err(e) = message.double_ack().await {
                tracing::warn!(target: "modhost::cluster", module = %self.module, event = %event.id, "event handled but its ack was lost (it may be delivered again): {e}");
            }
            return;
        };
        let attempts = self.settings.max_retries.saturating_add(1);
        if attempt < attempts {
            let delay = self
                .settings
                .retry_backoff
                .saturating_mul(2u32.saturating_pow(attempt - 1));
            let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
            return;
        }
        let letter = DeadLetter::of(&event, &self.module, &self.pattern, attempt, error);
        tracing::warn!(module = %letter.module, topic = %letter.topic, event = %letter.event_id, error = %letter.error, "event dead-lettered");
        let subject = format!("{}{}", self.names.dead_prefix, self.module);
        let body = serde_json::to_vec(&letter).unwrap_or_default();
        // Kept in the dead-letter stream before the event is let go.
        let kept = async {
            self.context
                .publish(subject, body.into())
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())
        };
        let kept = tokio::time::timeout(PUBLISH_TIMEOUT, kept);
        match kept
            .await
            .unwrap_or_else(|_| Err(format!("no acknowledgement within {PUBLISH_TIMEOUT:?}")))
        {
            Ok(_) => {
                (self.sink)(letter);
                let _ = message.ack_with(AckKind::Term).await;
            }
            Err(e) => {
                tracing::error!(target: "modhost::cluster", module = %self.module, "dead letter not stored, the event will be delivered again: {e}");
                let _ = message
                    .ack_with(AckKind::Nak(Some(self.settings.retry_backoff)))
                    .await;
            }
        }
    }
}

impl EventBus for NatsBus {
    fn publish(
        &self,
        source: &str,
        topic: &str,
        payload: String,
    ) -> BoxFuture<'_, Result<String, String>> {
        let id = super::new_event_id();
        let subject = format!("{}{topic}", self.names.events_prefix);
        let mut headers = vec![
            ("Nats-Msg-Id".to_string(), id.clone()),
            (SOURCE.to_string(), source.to_string()),
            (OCCURRED.to_string(), super::now_unix_ms().to_string()),
        ];
        if let Some(tp) = crate::trace::outgoing_header() {
            headers.push((TRACEPARENT.to_string(), tp));
        }
        async move {
            let payload = payload.into_bytes();
            let limit = self.client.server_info().max_payload;
            if limit > 0 && payload.len() + 1024 > limit {
                return Err(format!(
                    "the event is {} bytes; the NATS server takes at most {limit} bytes per message (its max_payload)",
                    payload.len()
                ));
            }
            self.publisher.publish(subject, headers, payload, &id).await?;
            Ok(id)
        }
        .boxed()
    }

    fn subscribe(&self, module: &str, pattern: &str, handler: Arc<FfiEventHandlerBox>) {
        let stopped = self.subscriptions.add(module);
        let subscriber = Subscriber {
            since: async_nats::datetime::DateTime::now_utc(),
            module: module.to_string(),
            pattern: pattern.to_string(),
            handler,
            settings: self.settings.clone(),
            names: self.names.clone(),
            context: self.context.clone(),
            sink: self.sink.clone(),
            delivered: self.delivered.clone(),
        };
        tokio::spawn(subscriber.run(stopped, self.ready.clone()));
    }

    fn unsubscribe_module(&self, module: &str) {
        self.subscriptions.stop_module(module);
    }

    fn retire_module(&self, module: &str, keep_newest: usize) {
        // A retired subscription finishes the event in hand; the new instance's, on
        // the same consumer (group), takes the next one.
        self.subscriptions.retire(module, keep_newest);
    }

    fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead.all()
    }

    fn stop_taking(&self) {
        self.subscriptions.stop_all();
    }

    fn close(&self, deadline: Duration) -> BoxFuture<'_, ()> {
        async move {
            self.publisher.close(deadline).await;
            let _ = self.client.flush().await;
        }
        .boxed()
    }

    fn metrics(&self) -> Vec<EngineMetric> {
        let mut all = self.publisher.metrics();
        all.push(EngineMetric::counter(
            super::HANDLED_TOTAL,
            super::HANDLED_HELP,
            self.delivered.load(Ordering::Relaxed),
        ));
        all
    }
}
