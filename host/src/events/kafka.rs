//! The Kafka event-bus engine (`event_bus_url = "kafka://HOST:PORT[,HOST:PORT…]"`, cargo
//! feature `kafka`), with librdkafka through the `rdkafka` crate.
//!
//! - **Topics.** One Kafka topic per modhost topic, named `<cluster_name>.events.<topic>`,
//!   made by the host when first published to or subscribed to, with **one partition**,
//!   so each topic keeps publish order, and a replication factor of up to 3 (as many as
//!   the cluster has brokers). Dead letters go to `<cluster_name>.dead.<module>`, outside
//!   the events' namespace, so no subscription pattern reaches them.
//! - **Publishing** goes through the shared [`Publisher`]: the idempotent producer
//!   (`acks=all`) waits up to [`SEND_TIMEOUT`] for the broker's acknowledgement, then the
//!   event is held in the durable local outbox. Each message is keyed by its topic and
//!   carries the event id (`modhost-event-id`), source, time and `traceparent` as
//!   headers.
//! - **Subscribing.** One consumer group per (module, pattern), named after them and
//!   shared by every host that runs the module: Kafka gives each partition, so each
//!   topic, to one member at a time, and each event is processed once per module across
//!   the cluster. A pattern with wildcards is a regex subscription (new topics are seen
//!   within [`METADATA_REFRESH`]).
//! - **Delivery.** Events are handled one at a time per subscription, with the bus's
//!   retries; the offset is committed only after the handler succeeded, or after the
//!   event was kept as a dead letter: at least once. A host that dies mid-event leaves
//!   it uncommitted, and the member that takes the partition over handles it again;
//!   handlers deduplicate by event id.
//! - A new consumer group starts at the earliest retained event of its topics.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use futures_util::{future::BoxFuture, FutureExt as _};
use modhost_plugin_api::ffi::{FfiEvent, FfiEventHandlerBox};
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::{ClientContext, DefaultClientContext},
    consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer},
    message::{Header, Headers, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer as _},
    types::RDKafkaErrorCode,
    ClientConfig, Message,
};
use tokio::sync::watch;

use super::{
    dead_letters::DeadLetterList,
    outbox::Outbox,
    publisher::{Broker, Publisher, SendError},
    stops::Stops,
    BusSettings, DeadLetter, DeadLetterSink, EventBus,
};
use crate::{engine_metrics::EngineMetric, trace::TraceContext};

/// How long the producer tries to deliver one event before it is held in the outbox.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// How often consumers look for new topics matching a wildcard pattern.
pub const METADATA_REFRESH: Duration = Duration::from_secs(1);
/// A member that stops heart-beating for this long loses its partitions.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
/// The largest event taken (librdkafka's default `message.max.bytes`, less room for
/// the headers).
const MAX_EVENT_BYTES: usize = 1_000_000 - 4096;
/// A dead letter's copy of the payload is cut to this, so the letter always fits.
const DEAD_LETTER_PAYLOAD_BYTES: usize = 64 * 1024;
/// Attempts at storing a dead letter before the event is left for redelivery.
const DEAD_LETTER_ATTEMPTS: u32 = 10;
/// librdkafka's upper bound of `max.poll.interval.ms`.
const MAX_POLL_INTERVAL_MS: u128 = 86_400_000;

const EVENT_ID: &str = "modhost-event-id";
const SOURCE: &str = "modhost-source";
const OCCURRED: &str = "modhost-occurred-at";
const TRACEPARENT: &str = "traceparent";

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("event_bus_url `{url}`: {why} (expected kafka://HOST:PORT[,HOST:PORT...])")]
    Client { url: String, why: String },
    #[error(transparent)]
    Outbox(#[from] super::outbox::OutboxError),
}

/// `kafka://a:9092,b:9092` → `a:9092,b:9092`.
pub fn bootstrap_servers(url: &str) -> Option<String> {
    let list = url.strip_prefix("kafka://")?;
    let ok = !list.is_empty()
        && list.split(',').all(|one| {
            one.trim()
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
        });
    ok.then(|| list.split(',').map(str::trim).collect::<Vec<_>>().join(","))
}

/// Topic and group names of one cluster.
#[derive(Debug, Clone)]
struct Names {
    /// `<cluster>.events.`
    prefix: String,
    /// `<cluster>.dead.`
    dead_prefix: String,
    cluster: String,
}

impl Names {
    fn of(cluster: &str) -> Self {
        Self {
            prefix: format!("{cluster}.events."),
            dead_prefix: format!("{cluster}.dead."),
            cluster: cluster.to_string(),
        }
    }

    /// The consumer group of `module`'s subscription to `pattern`.
    fn group(&self, module: &str, pattern: &str) -> String {
        let hash = &crate::hex::sha256_hex(pattern.as_bytes())[..8];
        let readable: String = pattern
            .chars()
            .map(|c| match c {
                '*' => 'S',
                '>' => 'R',
                c => c,
            })
            .collect();
        format!("{}.{module}.{readable}.{hash}", self.cluster)
    }

    /// What a consumer subscribes to for `pattern`: a topic name, or a regex.
    fn subscription(&self, pattern: &str) -> String {
        if !pattern.contains(['*', '>']) {
            return format!("{}{pattern}", self.prefix);
        }
        let parts: Vec<String> = pattern
            .split('.')
            .map(|part| match part {
                "*" => "[^.]+".to_string(),
                ">" => ".+".to_string(),
                literal => regex_escape(literal),
            })
            .collect();
        format!("^{}{}$", regex_escape(&self.prefix), parts.join("\\."))
    }
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| match c {
            '.' | '-' | '+' | '(' | ')' | '[' | ']' | '{' | '}' | '^' | '$' | '|' | '?' | '*'
            | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}

/// The consumers' librdkafka context: its errors go to the log, except the one a
/// wildcard subscription raises while no topic matches yet (expected, and repeated at
/// every metadata refresh), which is kept at debug.
struct Quiet;

impl ClientContext for Quiet {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let expected = error.rdkafka_error_code()
            == Some(RDKafkaErrorCode::UnknownTopicOrPartition)
            && reason.contains("Subscribed topic not available");
        match expected {
            true => tracing::debug!(target: "modhost::cluster", "librdkafka: {reason}"),
            false => tracing::error!(target: "modhost::cluster", "librdkafka: {error}: {reason}"),
        }
    }
}

impl ConsumerContext for Quiet {}

/// A consumer with the [`Quiet`] context.
type QuietConsumer = StreamConsumer<Quiet>;

/// Makes topics (once per topic and process).
struct Topics {
    admin: AdminClient<DefaultClientContext>,
    producer_for_metadata: FutureProducer,
    known: Mutex<HashSet<String>>,
}

impl Topics {
    /// Forgets that `topic` exists (it was deleted, or the broker lost it).
    fn forget(&self, topic: &str) {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(topic);
    }

    /// Creates `topic` (one partition) unless it is known to exist.
    async fn ensure(&self, topic: &str) -> Result<(), SendError> {
        if self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(topic)
        {
            return Ok(());
        }
        let producer = self.producer_for_metadata.clone();
        let brokers = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, SEND_TIMEOUT)
                .map(|m| m.brokers().len())
        })
        .await
        .map_err(|e| SendError::Retry(e.to_string()))?
        .map_err(|e| SendError::Retry(format!("cannot read the cluster's metadata: {e}")))?;
        let replication = i32::try_from(brokers.clamp(1, 3)).unwrap_or(1);
        let new = NewTopic::new(topic, 1, TopicReplication::Fixed(replication));
        let options = AdminOptions::new()
            .operation_timeout(Some(SEND_TIMEOUT))
            .request_timeout(Some(SEND_TIMEOUT));
        let results = self
            .admin
            .create_topics([&new], &options)
            .await
            .map_err(|e| SendError::Retry(format!("cannot create topic {topic}: {e}")))?;
        for r in results {
            match r {
                Ok(_) => {
                    tracing::info!(target: "modhost::cluster", topic, replication, "Kafka topic created (1 partition)")
                }
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) if refused_for_good(code) => {
                    return Err(SendError::Refused(format!(
                        "cannot create topic {name}: {code}"
                    )))
                }
                Err((name, code)) => {
                    return Err(SendError::Retry(format!(
                        "cannot create topic {name}: {code}"
                    )))
                }
            }
        }
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.to_string());
        Ok(())
    }
}

/// Whether librdkafka's `code` means the broker will never take the message.
fn refused_for_good(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        MessageSizeTooLarge
            | MessageBatchTooLarge
            | InvalidTopic
            | TopicAuthorizationFailed
            | ClusterAuthorizationFailed
            | InvalidMessage
            | InvalidRecord
    )
}

/// Kafka as the publisher's broker.
struct KafkaSender {
    producer: FutureProducer,
    topics: Arc<Topics>,
}

impl Broker for KafkaSender {
    fn send<'a>(
        &'a self,
        subject: &'a str,
        headers: &'a [(String, String)],
        payload: &'a [u8],
    ) -> BoxFuture<'a, Result<(), SendError>> {
        async move {
            let send = async {
                self.topics.ensure(subject).await?;
                let mut owned = OwnedHeaders::new();
                for (name, value) in headers {
                    owned = owned.insert(Header {
                        key: name,
                        value: Some(value.as_bytes()),
                    });
                }
                let record = FutureRecord::to(subject)
                    .key(subject)
                    .payload(payload)
                    .headers(owned);
                match self.producer.send(record, SEND_TIMEOUT).await {
                    Ok(_) => Ok(()),
                    Err((e, _)) => {
                        let code = e.rdkafka_error_code();
                        if matches!(
                            code,
                            Some(
                                RDKafkaErrorCode::UnknownTopicOrPartition
                                    | RDKafkaErrorCode::UnknownTopic
                            )
                        ) {
                            // Deleted, or the broker lost it: made again next time.
                            self.topics.forget(subject);
                        }
                        match code.is_some_and(refused_for_good) {
                            true => Err(SendError::Refused(e.to_string())),
                            false => Err(SendError::Retry(e.to_string())),
                        }
                    }
                }
            };
            // Topic creation included, one send never waits much longer than the
            // producer's own limit.
            match tokio::time::timeout(SEND_TIMEOUT + Duration::from_secs(1), send).await {
                Ok(result) => result,
                Err(_) => Err(SendError::Retry(format!(
                    "no acknowledgement within {:?}",
                    SEND_TIMEOUT + Duration::from_secs(1)
                ))),
            }
        }
        .boxed()
    }

    fn ready(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "Kafka"
    }
}

/// The Kafka engine.
pub struct KafkaBus {
    servers: String,
    names: Names,
    settings: BusSettings,
    producer: FutureProducer,
    topics: Arc<Topics>,
    publisher: Arc<Publisher>,
    subscriptions: Stops,
    dead: Arc<DeadLetterList>,
    sink: DeadLetterSink,
    handled: Arc<AtomicU64>,
    stop_reader: watch::Sender<bool>,
    /// The subscriptions' tasks: shutdown waits for their consumers to leave.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

fn producer(servers: &str) -> Result<FutureProducer, rdkafka::error::KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", SEND_TIMEOUT.as_millis().to_string())
        .set("linger.ms", "1")
        .create()
}

impl KafkaBus {
    /// Creates the producer (it connects in the background: the host starts while
    /// Kafka is down) and starts the dead-letter reader.
    pub async fn start(
        url: &str,
        cluster: &str,
        settings: BusSettings,
        sink: DeadLetterSink,
        data_dir: &std::path::Path,
    ) -> Result<Arc<Self>, KafkaSetupError> {
        let fail = |why: String| KafkaSetupError::Client {
            url: crate::redact::url(url),
            why,
        };
        let servers = bootstrap_servers(url).ok_or_else(|| fail("not a broker list".into()))?;
        let outbox = Arc::new(Outbox::open(data_dir).await?);
        let producer = producer(&servers).map_err(|e| fail(e.to_string()))?;
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &servers)
            .create()
            .map_err(|e| fail(e.to_string()))?;
        let topics = Arc::new(Topics {
            admin,
            producer_for_metadata: producer.clone(),
            known: Mutex::new(HashSet::new()),
        });
        let publisher = Publisher::start(
            Arc::new(KafkaSender {
                producer: producer.clone(),
                topics: topics.clone(),
            }),
            outbox,
        );
        let (stop_reader, reader_stopped) = watch::channel(false);
        let bus = Arc::new(Self {
            servers,
            names: Names::of(cluster),
            settings,
            producer,
            topics,
            publisher,
            subscriptions: Stops::default(),
            dead: Arc::default(),
            sink,
            handled: Arc::new(AtomicU64::new(0)),
            stop_reader,
            tasks: Mutex::new(Vec::new()),
        });
        tokio::spawn(read_dead_letters(
            bus.servers.clone(),
            bus.names.clone(),
            bus.dead.clone(),
            reader_stopped,
        ));
        Ok(bus)
    }

    fn consumer(&self, group: &str) -> Result<QuietConsumer, rdkafka::error::KafkaError> {
        let max_poll =
            self.settings
                .handler_timeout
                .saturating_mul(self.settings.max_retries.saturating_add(2))
                .saturating_add(self.settings.retry_backoff.saturating_mul(
                    2u32.saturating_pow(self.settings.max_retries.saturating_add(1)),
                ))
                .saturating_add(Duration::from_secs(10));
        ClientConfig::new()
            .set("bootstrap.servers", &self.servers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set(
                "session.timeout.ms",
                SESSION_TIMEOUT.as_millis().to_string(),
            )
            .set("heartbeat.interval.ms", "1000")
            .set(
                "topic.metadata.refresh.interval.ms",
                METADATA_REFRESH.as_millis().to_string(),
            )
            .set(
                "max.poll.interval.ms",
                max_poll.as_millis().min(MAX_POLL_INTERVAL_MS).to_string(),
            )
            .create_with_context(Quiet)
    }
}

/// Ends a consumer off the async threads: leaving the group blocks.
/// Waits for it: a consumer that has not left its group when the process exits keeps
/// its partitions until the broker expires its session.
async fn close(consumer: QuietConsumer) {
    let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
}

/// What one subscription needs, apart from the bus.
struct Subscriber {
    module: String,
    pattern: String,
    group: String,
    handler: Arc<FfiEventHandlerBox>,
    settings: BusSettings,
    names: Names,
    producer: FutureProducer,
    topics: Arc<Topics>,
    sink: DeadLetterSink,
    handled: Arc<AtomicU64>,
}

fn header(message: &impl Message, name: &str) -> Option<String> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

impl Subscriber {
    async fn run(self, consumer: QuietConsumer, mut stop: watch::Receiver<bool>) {
        let subscription = self.names.subscription(&self.pattern);
        if !subscription.starts_with('^') {
            // A consumer subscribed to a topic that does not exist yet would wait for
            // the next metadata refresh; make it now.
            while let Err(why) = self.topics.ensure(&subscription).await {
                tracing::warn!(target: "modhost::cluster", module = %self.module, topic = %subscription, "waiting for Kafka: {why:?}");
                let stopped = tokio::select! {
                    _ = tokio::time::sleep(super::outbox::RETRY_EVERY) => false,
                    _ = stop.wait_for(|s| *s) => true,
                };
                if stopped {
                    return close(consumer).await;
                }
            }
        }
        if let Err(e) = consumer.subscribe(&[subscription.as_str()]) {
            tracing::error!(target: "modhost::cluster", module = %self.module, pattern = %self.pattern, "cannot subscribe to Kafka topic {subscription}: {e}");
            return close(consumer).await;
        }
        let mut logged = false;
        loop {
            let next = tokio::select! {
                m = consumer.recv() => m,
                _ = stop.wait_for(|s| *s) => break,
            };
            match next {
                Ok(message) => {
                    logged = false;
                    self.handle(&consumer, &message).await;
                }
                Err(e) => {
                    if !logged {
                        tracing::warn!(target: "modhost::cluster", module = %self.module, pattern = %self.pattern, "Kafka consumer: {e}");
                        logged = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(super::outbox::RETRY_EVERY) => {}
                        _ = stop.wait_for(|s| *s) => break,
                    }
                }
            }
            if *stop.borrow() {
                break;
            }
        }
        close(consumer).await;
    }

    async fn handle(
        &self,
        consumer: &QuietConsumer,
        message: &rdkafka::message::BorrowedMessage<'_>,
    ) {
        let topic = message
            .topic()
            .strip_prefix(&self.names.prefix)
            .unwrap_or(message.topic())
            .to_string();
        let payload = message
            .payload()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let event = FfiEvent {
            id: header(message, EVENT_ID).unwrap_or_default().into(),
            occurred_at_ms: header(message, OCCURRED)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            topic: topic.as_str().into(),
            source: header(message, SOURCE).unwrap_or_default().into(),
            payload: payload.into(),
            attempt: 0,
        };
        let trace = header(message, TRACEPARENT)
            .and_then(|h| TraceContext::parse(&h))
            .unwrap_or_else(TraceContext::new_root);
        let span = tracing::info_span!("event", trace_id = %trace.trace_id, module = %self.module, topic = %topic, event = %event.id);
        let work = super::delivery::deliver(&self.handler, &event, &self.settings);
        let outcome =
            crate::trace::scope(trace, tracing::Instrument::instrument(work, span.clone())).await;
        match outcome {
            Ok(()) => {
                self.handled.fetch_add(1, Ordering::Relaxed);
                span.in_scope(|| tracing::debug!(target: "modhost::cluster", "event handled"));
            }
            Err((attempts, error)) => {
                let mut letter =
                    DeadLetter::of(&event, &self.module, &self.pattern, attempts, error);
                tracing::warn!(module = %letter.module, topic = %letter.topic, event = %letter.event_id, error = %letter.error, "event dead-lettered");
                if letter.payload.len() > DEAD_LETTER_PAYLOAD_BYTES {
                    let mut cut = DEAD_LETTER_PAYLOAD_BYTES;
                    while !letter.payload.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    letter.payload.truncate(cut);
                    letter.payload.push_str("…(cut)");
                }
                if !self.keep_dead_letter(&letter).await {
                    // Not committed: the event comes back (here or on another host).
                    return;
                }
                (self.sink)(letter);
            }
        }
        if let Err(e) = consumer.commit_message(message, CommitMode::Async) {
            tracing::warn!(target: "modhost::cluster", module = %self.module, group = %self.group, event = %event.id, "offset not committed (the event may be handled again): {e}");
        }
    }
}

impl Subscriber {
    /// Stores `letter` in the module's dead-letter topic, a bounded number of times.
    async fn keep_dead_letter(&self, letter: &DeadLetter) -> bool {
        let dead_topic = format!("{}{}", self.names.dead_prefix, self.module);
        let body = serde_json::to_vec(letter).unwrap_or_default();
        for attempt in 1..=DEAD_LETTER_ATTEMPTS {
            let sent = async {
                self.topics
                    .ensure(&dead_topic)
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                let record = FutureRecord::to(&dead_topic)
                    .key(&letter.event_id)
                    .payload(&body);
                self.producer
                    .send(record, SEND_TIMEOUT)
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| e.to_string())
            };
            match sent.await {
                Ok(()) => return true,
                Err(e) => {
                    tracing::error!(target: "modhost::cluster", module = %self.module, event = %letter.event_id, attempt, "dead letter not stored: {e}");
                    tokio::time::sleep(super::outbox::RETRY_EVERY).await;
                }
            }
        }
        tracing::error!(target: "modhost::cluster", module = %self.module, event = %letter.event_id, "dead letter not stored after {DEAD_LETTER_ATTEMPTS} attempts; the event stays uncommitted and will be delivered again");
        false
    }
}

/// Mirrors every `<cluster>.dead.*` topic into memory for `/admin/dead-letters`, with a
/// group of its own per host that never commits, so each host reads them all.
async fn read_dead_letters(
    servers: String,
    names: Names,
    dead: Arc<DeadLetterList>,
    mut stop: watch::Receiver<bool>,
) {
    let group = format!(
        "{}.dead-letter-reader.{}",
        names.cluster,
        crate::random::random_hex(6)
    );
    let consumer: QuietConsumer = match ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "topic.metadata.refresh.interval.ms",
            METADATA_REFRESH.as_millis().to_string(),
        )
        .create_with_context(Quiet)
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(target: "modhost::cluster", "dead letters: cannot create the reader: {e}");
            return;
        }
    };
    let pattern = format!("^{}.+$", regex_escape(&names.dead_prefix));
    if let Err(e) = consumer.subscribe(&[pattern.as_str()]) {
        tracing::error!(target: "modhost::cluster", "dead letters: cannot subscribe: {e}");
        return close(consumer).await;
    }
    loop {
        let next = tokio::select! {
            m = consumer.recv() => m,
            _ = stop.wait_for(|s| *s) => break,
        };
        match next {
            Ok(m) => {
                if let Some(letter) = m.payload().and_then(|p| serde_json::from_slice(p).ok()) {
                    dead.push(letter);
                }
            }
            Err(_) => {
                tokio::select! {
                    _ = tokio::time::sleep(super::outbox::RETRY_EVERY) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        }
    }
    close(consumer).await;
}

impl EventBus for KafkaBus {
    fn publish(
        &self,
        source: &str,
        topic: &str,
        payload: String,
    ) -> BoxFuture<'_, Result<String, String>> {
        let id = super::new_event_id();
        let subject = format!("{}{topic}", self.names.prefix);
        let mut headers = vec![
            (EVENT_ID.to_string(), id.clone()),
            (SOURCE.to_string(), source.to_string()),
            (OCCURRED.to_string(), super::now_unix_ms().to_string()),
        ];
        if let Some(tp) = crate::trace::outgoing_header() {
            headers.push((TRACEPARENT.to_string(), tp));
        }
        async move {
            if payload.len() > MAX_EVENT_BYTES {
                return Err(format!(
                    "the event is {} bytes; Kafka takes at most {MAX_EVENT_BYTES} bytes per event here (message.max.bytes)",
                    payload.len()
                ));
            }
            self.publisher
                .publish(subject, headers, payload.into_bytes(), &id)
                .await?;
            Ok(id)
        }
        .boxed()
    }

    fn subscribe(&self, module: &str, pattern: &str, handler: Arc<FfiEventHandlerBox>) {
        let group = self.names.group(module, pattern);
        let consumer = match self.consumer(&group) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(target: "modhost::cluster", module, pattern, "cannot create a Kafka consumer: {e}; the subscription receives nothing");
                return;
            }
        };
        let stopped = self.subscriptions.add(module);
        let subscriber = Subscriber {
            module: module.to_string(),
            pattern: pattern.to_string(),
            group,
            handler,
            settings: self.settings.clone(),
            names: self.names.clone(),
            producer: self.producer.clone(),
            topics: self.topics.clone(),
            sink: self.sink.clone(),
            handled: self.handled.clone(),
        };
        let task = tokio::spawn(subscriber.run(consumer, stopped));
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
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
            let _ = self.stop_reader.send(true);
            // Every module was unsubscribed: wait for the consumers to leave their groups.
            let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
            let _ = tokio::time::timeout(deadline, futures_util::future::join_all(tasks)).await;
            let producer = self.producer.clone();
            let _ =
                tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(2))).await;
        }
        .boxed()
    }

    fn metrics(&self) -> Vec<EngineMetric> {
        let mut all = self.publisher.metrics();
        all.push(EngineMetric::counter(
            super::HANDLED_TOTAL,
            super::HANDLED_HELP,
            self.handled.load(Ordering::Relaxed),
        ));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_subscriptions() {
        assert_eq!(
            bootstrap_servers("kafka://a:9092, b:9093").as_deref(),
            Some("a:9092,b:9093")
        );
        assert_eq!(bootstrap_servers("kafka://a"), None);
        let n = Names::of("prod");
        assert_eq!(
            n.subscription("blog.post.created"),
            "prod.events.blog.post.created"
        );
        assert_eq!(
            n.subscription("billing.*"),
            "^prod\\.events\\.billing\\.[^.]+$"
        );
        assert_eq!(n.subscription("blog.>"), "^prod\\.events\\.blog\\..+$");
        // No subscription reaches the dead letters.
        assert!(!n.subscription("dead.*").starts_with("^prod\\.dead"));
        assert!(n
            .group("notifications", "billing.*")
            .starts_with("prod.notifications.billing.S."));
    }
}
