//! The etcd engine of the service registry.
//!
//! Each host keeps one key, `<cluster>/hosts/<host_id>`, whose value is its
//! [`HostRecord`] (JSON), attached to a lease of `registry_lease_ttl` that the host
//! keeps alive (a keep-alive every third of the TTL). The host reads every host's key
//! once, then watches the prefix from the revision it read, so its [`Directory`]
//! follows the cluster. Its own record is compared with what it last wrote once a
//! second (and at once when asked) and rewritten when it changed.
//!
//! Whatever fails (etcd restarted, the lease lost, a watch cancelled after a
//! compaction), the session starts over: a new lease, the record written again, a full
//! read. Meanwhile the directory keeps what it last knew, so calls to other hosts go on.
//! On shutdown the lease is revoked, so the other hosts drop this one at once.

use std::{sync::Arc, time::Duration};

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};
use tokio::sync::{watch, Notify};

use super::{directory::Directory, record::HostRecord};

/// Builds this host's record when asked.
pub type RecordSource = Arc<dyn Fn() -> HostRecord + Send + Sync>;

/// How often the host's own record is compared with what was written.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// Pause between sessions after a failure.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// A running registration.
pub struct EtcdRegistry {
    stop: watch::Sender<bool>,
    /// Wakes the session to write the record now.
    pub refresh: Arc<Notify>,
    done: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Where a session stands, for logs.
struct Session<'a> {
    endpoints: &'a [String],
    prefix: String,
    key: String,
    ttl: Duration,
    directory: &'a Directory,
    record: &'a RecordSource,
    refresh: &'a Notify,
}

impl EtcdRegistry {
    /// Starts registering and watching in the background.
    pub fn start(
        endpoints: Vec<String>,
        cluster: &str,
        host_id: &str,
        ttl: Duration,
        directory: Arc<Directory>,
        record: RecordSource,
    ) -> Arc<Self> {
        let (stop, stopped) = watch::channel(false);
        let refresh = Arc::new(Notify::new());
        let prefix = format!("{cluster}/hosts/");
        let key = format!("{prefix}{host_id}");
        let task = tokio::spawn(run(
            endpoints,
            prefix,
            key,
            ttl,
            directory,
            record,
            refresh.clone(),
            stopped,
        ));
        Arc::new(Self {
            stop,
            refresh,
            done: tokio::sync::Mutex::new(Some(task)),
        })
    }

    /// Revokes the lease (this host's record disappears at once) and stops.
    pub async fn leave(&self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.done.lock().await.take() {
            let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    endpoints: Vec<String>,
    prefix: String,
    key: String,
    ttl: Duration,
    directory: Arc<Directory>,
    record: RecordSource,
    refresh: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let session = Session {
        endpoints: &endpoints,
        prefix,
        key,
        ttl,
        directory: &directory,
        record: &record,
        refresh: &refresh,
    };
    let mut failures = 0u32;
    loop {
        match session.run(&mut stop).await {
            Ok(()) => return,
            Err(why) => {
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(target: "modhost::cluster", endpoints = %endpoints.join(","), attempt = failures, "etcd registry: {why}; registering again");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY_AFTER) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn parse(value: &[u8]) -> Option<HostRecord> {
    serde_json::from_slice(value).ok()
}

impl Session<'_> {
    /// One lease's life: `Ok` when asked to stop, `Err` when it must start over.
    async fn run(&self, stop: &mut watch::Receiver<bool>) -> Result<(), String> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(3))
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2));
        let mut client = Client::connect(self.endpoints, Some(options))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let ttl_secs = i64::try_from(self.ttl.as_secs()).unwrap_or(5).max(2);
        let lease = client
            .lease_grant(ttl_secs, None)
            .await
            .map_err(|e| format!("cannot grant a lease: {e}"))?
            .id();
        let result = self.serve(&mut client, lease, stop).await;
        if result.is_ok() {
            // Leaving: the record goes with the lease.
            let _ = client.lease_revoke(lease).await;
            tracing::info!(target: "modhost::cluster", key = %self.key, "left the etcd registry");
        }
        result
    }

    async fn serve(
        &self,
        client: &mut Client,
        lease: i64,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), String> {
        let mut written = (self.record)();
        self.put(client, lease, &written).await?;
        let (mut keeper, mut acks) = client
            .lease_keep_alive(lease)
            .await
            .map_err(|e| format!("cannot keep the lease alive: {e}"))?;
        let all = client
            .get(self.prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| format!("cannot read {}: {e}", self.prefix))?;
        let revision = all.header().map_or(0, |h| h.revision());
        self.directory.replace(
            all.kvs()
                .iter()
                .filter_map(|kv| parse(kv.value()))
                .collect(),
        );
        let mut watch = client
            .watch(
                self.prefix.as_str(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            )
            .await
            .map_err(|e| format!("cannot watch {}: {e}", self.prefix))?;
        tracing::info!(target: "modhost::cluster", key = %self.key, lease, hosts = self.directory.hosts().len(), "registered in etcd");
        let mut beat = tokio::time::interval(self.ttl / 3);
        let mut poll = tokio::time::interval(REFRESH_EVERY);
        loop {
            tokio::select! {
                _ = stopped(stop) => return Ok(()),
                _ = beat.tick() => keeper
                    .keep_alive()
                    .await
                    .map_err(|e| format!("keep-alive failed: {e}"))?,
                ack = acks.message() => match ack {
                    Ok(Some(r)) if r.ttl() > 0 => {}
                    Ok(Some(_)) => return Err("the lease expired".into()),
                    Ok(None) => return Err("the keep-alive stream ended".into()),
                    Err(e) => return Err(format!("keep-alive failed: {e}")),
                },
                change = watch.message() => {
                    let change = change.map_err(|e| format!("the watch failed: {e}"))?;
                    let Some(change) = change else {
                        return Err("the watch ended".into());
                    };
                    if change.canceled() {
                        return Err(format!("the watch was cancelled: {}", change.cancel_reason()));
                    }
                    for event in change.events() {
                        let Some(kv) = event.kv() else { continue };
                        let id = String::from_utf8_lossy(kv.key());
                        let id = id.strip_prefix(&self.prefix).unwrap_or(&id);
                        match event.event_type() {
                            EventType::Put => match parse(kv.value()) {
                                Some(host) => self.directory.upsert(host),
                                None => tracing::warn!(target: "modhost::cluster", host = %id, "etcd: a host record that is not JSON, ignored"),
                            },
                            EventType::Delete if kv.key() == self.key.as_bytes() => {
                                // Someone removed this host's record: write it again.
                                tracing::warn!(target: "modhost::cluster", key = %self.key, "this host's record was deleted from etcd; writing it again");
                                self.put(client, lease, &written).await?;
                            }
                            EventType::Delete => {
                                tracing::info!(target: "modhost::cluster", host = %id, "host left the cluster (lease expired or revoked)");
                                self.directory.remove(id);
                            }
                        }
                    }
                },
                _ = poll.tick() => {}
                _ = self.refresh.notified() => {}
            }
            let now = (self.record)();
            if now != written {
                self.put(client, lease, &now).await?;
                written = now;
            }
        }
    }

    async fn put(
        &self,
        client: &mut Client,
        lease: i64,
        record: &HostRecord,
    ) -> Result<(), String> {
        let value = serde_json::to_vec(record).map_err(|e| e.to_string())?;
        client
            .put(
                self.key.as_str(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(|e| format!("cannot write {}: {e}", self.key))?;
        Ok(())
    }
}
