//! The audit spool of a host using remote core services: every record is appended to a
//! file in the data dir (`core-spool/audit.jsonl`) before anything else, and a task
//! delivers the file to the core's Audit service in order, in batches, recording how far
//! it got (`core-spool/delivered`). So no record is lost while the core is unreachable
//! or when the host stops; a host that restarts delivers what is left.
//!
//! Each record carries a unique id: a batch resent after a lost answer is stored once.
//! Each append is synced to disk. When the records not yet delivered reach
//! `audit_spool_max_bytes`, new records are dropped: each drop is logged at error level,
//! and the spool empties as the core takes records again. Delivered records are cut away
//! (the file emptied, or compacted under steady load). The file I/O is short and done
//! where the record is made.

use std::{
    io::{BufRead, BufReader, Read as _, Seek, SeekFrom, Write as _},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use super::audit::Audit;
use crate::wire::core_v1::{self as pb, audit_client::AuditClient};

/// Records sent in one call.
const BATCH: usize = 200;

/// One spooled record, as a line of the spool file.
#[derive(Serialize, Deserialize)]
struct Line {
    id: String,
    time: String,
    actor: String,
    module: String,
    action: String,
    target: String,
    outcome: String,
    detail: String,
}

struct Files {
    spool: PathBuf,
    delivered: PathBuf,
}

/// The spool; clones share it.
#[derive(Clone)]
pub struct AuditSpool {
    inner: Arc<Inner>,
}

struct Inner {
    files: Files,
    /// Appends and the truncation of a fully delivered file take turns.
    lock: Mutex<()>,
    max_bytes: u64,
    /// How far the core took the spool (also kept in `delivered`, for restarts).
    delivered: AtomicU64,
    dropped: AtomicU64,
    wake: tokio::sync::Notify,
}

impl AuditSpool {
    /// Opens (or creates) the spool in `dir` and starts delivering it to `client`.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        client: AuditClient<Channel>,
        reachable: Arc<AtomicBool>,
    ) -> std::io::Result<AuditSpool> {
        std::fs::create_dir_all(dir)?;
        let files = Files {
            spool: dir.join("audit.jsonl"),
            delivered: dir.join("delivered"),
        };
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&files.spool)?;
        repair_torn_tail(&files.spool)?;
        let delivered = std::fs::read_to_string(&files.delivered)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        let spool = AuditSpool {
            inner: Arc::new(Inner {
                files,
                lock: Mutex::new(()),
                max_bytes,
                delivered: AtomicU64::new(delivered),
                dropped: AtomicU64::new(0),
                wake: tokio::sync::Notify::new(),
            }),
        };
        let deliverer = spool.clone();
        tokio::spawn(async move { deliverer.deliver(client, reachable).await });
        Ok(spool)
    }

    /// Records dropped because the spool was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Appends a record (blocking file I/O of one short line).
    pub fn append(&self, a: Audit) {
        let a = a.clipped();
        let line = Line {
            id: a
                .record_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            time: a.time.clone().unwrap_or_else(super::now_rfc3339),
            actor: a.actor,
            module: a.module,
            action: a.action,
            target: a.target,
            outcome: a.outcome,
            detail: a.detail,
        };
        let mut text = serde_json::to_string(&line).unwrap_or_default();
        text.push('\n');
        let written = {
            let _turn = self.inner.lock.lock().unwrap_or_else(|p| p.into_inner());
            let path = &self.inner.files.spool;
            let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            // Only records not yet delivered count against the limit.
            let waiting = size.saturating_sub(self.delivered());
            if waiting + text.len() as u64 > self.inner.max_bytes {
                Err(None)
            } else {
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(path)
                    .and_then(|mut f| {
                        f.write_all(text.as_bytes())?;
                        f.sync_data()
                    })
                    .map_err(Some)
            }
        };
        match written {
            Ok(()) => self.inner.wake.notify_one(),
            Err(why) => {
                self.inner.dropped.fetch_add(1, Ordering::Relaxed);
                let why = why.map_or_else(
                    || {
                        format!(
                            "the spool is full (audit_spool_max_bytes = {})",
                            self.inner.max_bytes
                        )
                    },
                    |e| e.to_string(),
                );
                tracing::error!(action = %line.action, actor = %line.actor, target = %line.target, error = %why, "audit record dropped: cannot spool it for the core");
            }
        }
    }

    /// Delivers the spool in order, forever: a batch at a time, from the offset recorded
    /// as delivered; waits and retries while the core is unreachable.
    async fn deliver(self, client: AuditClient<Channel>, reachable: Arc<AtomicBool>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let (offset, batch, end) = match self.read_batch() {
                Ok(read) => read,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the audit spool");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if batch.is_empty() {
                self.truncate_if_done(offset);
                self.compact(offset);
                // New records wake this up; the timeout also retries lost wake-ups.
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), self.inner.wake.notified()).await;
                continue;
            }
            let count = batch.len();
            let sent = client
                .clone()
                .record(pb::RecordRequest { records: batch })
                .await;
            match sent {
                Ok(_) => {
                    reachable.store(true, Ordering::Relaxed);
                    backoff = Duration::from_millis(100);
                    if let Err(e) = self.set_delivered(end) {
                        tracing::error!(error = %e, "cannot record the audit spool's progress");
                    }
                    tracing::debug!(count, "audit records delivered to the core");
                }
                Err(status) => {
                    if matches!(
                        status.code(),
                        tonic::Code::Unavailable
                            | tonic::Code::DeadlineExceeded
                            | tonic::Code::Unknown
                    ) {
                        reachable.store(false, Ordering::Relaxed);
                    }
                    tracing::warn!(count, error = %status.message(), retry_in = ?backoff, "audit records kept in the spool: the core did not take them");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    fn delivered(&self) -> u64 {
        self.inner.delivered.load(Ordering::Acquire)
    }

    fn set_delivered(&self, offset: u64) -> std::io::Result<()> {
        let tmp = self.inner.files.delivered.with_extension("tmp");
        std::fs::write(&tmp, offset.to_string())?;
        std::fs::rename(&tmp, &self.inner.files.delivered)?;
        self.inner.delivered.store(offset, Ordering::Release);
        Ok(())
    }

    /// Up to [`BATCH`] whole lines after the delivered offset: (offset, records, the
    /// offset after them).
    fn read_batch(&self) -> std::io::Result<(u64, Vec<pb::AuditRecord>, u64)> {
        let mut offset = self.delivered();
        let mut file = std::fs::File::open(&self.inner.files.spool)?;
        let len = file.metadata()?.len();
        if offset > len {
            // The spool was emptied after its progress was reset: start over.
            self.set_delivered(0)?;
            offset = 0;
        }
        if offset >= len {
            return Ok((offset, Vec::new(), offset));
        }
        file.seek(SeekFrom::Start(offset))?;
        let mut reader = BufReader::new(file.take(len - offset));
        let (mut end, mut batch, mut line) = (offset, Vec::new(), String::new());
        while batch.len() < BATCH {
            line.clear();
            let n = reader.read_line(&mut line)?;
            if n == 0 || !line.ends_with('\n') {
                break; // the end, or a line still being written
            }
            end += n as u64;
            match serde_json::from_str::<Line>(line.trim_end()) {
                Ok(l) => batch.push(pb::AuditRecord {
                    actor: l.actor,
                    action: l.action,
                    target: l.target,
                    module: l.module,
                    outcome: l.outcome,
                    detail: l.detail,
                    time: l.time,
                    record_id: l.id,
                }),
                Err(e) => {
                    tracing::error!(error = %e, "skipping an unreadable line of the audit spool")
                }
            }
        }
        Ok((offset, batch, end))
    }

    /// Under steady load the spool never drains to empty: once more than 1 MiB of it
    /// was delivered and that is most of it, the rest is copied to a fresh file.
    fn compact(&self, offset: u64) {
        const ENOUGH: u64 = 1024 * 1024;
        let _turn = self.inner.lock.lock().unwrap_or_else(|p| p.into_inner());
        let path = &self.inner.files.spool;
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if offset < ENOUGH || offset.saturating_mul(2) < len || offset > len {
            return;
        }
        let tmp = path.with_extension("compact");
        let copied = (|| {
            let mut from = std::fs::File::open(path)?;
            from.seek(SeekFrom::Start(offset))?;
            let mut to = std::fs::File::create(&tmp)?;
            std::io::copy(&mut from, &mut to)?;
            to.sync_data()?;
            std::fs::rename(&tmp, path)?;
            // A crash before this line resends the copied records; the core skips them.
            self.set_delivered(0)
        })();
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&tmp);
            tracing::error!(error = %e, "cannot compact the audit spool");
        }
    }

    /// Empties the spool once everything in it was delivered.
    fn truncate_if_done(&self, offset: u64) {
        if offset == 0 {
            return;
        }
        let _turn = self.inner.lock.lock().unwrap_or_else(|p| p.into_inner());
        let path = &self.inner.files.spool;
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if len == offset {
            // Progress first: a crash in between resends records the core then skips.
            let emptied = self.set_delivered(0).and_then(|()| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(path)
                    .map(|_| ())
            });
            if let Err(e) = emptied {
                tracing::error!(error = %e, "cannot empty the delivered audit spool");
            }
        }
    }
}

/// Cuts a last line that a crash left without its newline, so the next record does not
/// get glued onto it.
fn repair_torn_tail(path: &Path) -> std::io::Result<()> {
    let bytes = std::fs::read(path)?;
    if bytes.last().is_some_and(|b| *b != b'\n') {
        let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let file = std::fs::OpenOptions::new().write(true).open(path)?;
        file.set_len(keep as u64)?;
        tracing::warn!(
            cut = bytes.len() - keep,
            "cut a torn last line from the audit spool"
        );
    }
    Ok(())
}
