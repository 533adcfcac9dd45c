//! The durable local outbox of the cluster bus: events a module published while the
//! broker could not take them, kept in a SQLite file in the data dir
//! (`outbox.sqlite`) and sent, oldest first, when the broker is back.
//!
//! Publishing never loses an event: `publish` answers only once the broker has
//! acknowledged the event or the outbox has it on disk, and once anything waits in the
//! outbox every new event queues behind it, so events reach the broker in the order
//! they were published. The outbox survives a host restart.
//!
//! This is an outbox *beside* the module's database, not inside its transaction: an
//! event published by a module whose transaction then rolls back is still sent (see
//! docs/scale-out.md).

use std::{
    path::Path,
    str::FromStr as _,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use sqlx::{
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    Row as _, SqlitePool,
};

/// One event waiting for the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The outbox's own order.
    pub seq: i64,
    pub subject: String,
    /// Header names and values, in order.
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

/// Why the outbox could not be used.
#[derive(Debug, thiserror::Error)]
#[error("the event outbox {path}: {source}")]
pub struct OutboxError {
    path: String,
    source: sqlx::Error,
}

/// The outbox file.
pub struct Outbox {
    pool: SqlitePool,
    path: String,
    /// Events on disk, not yet sent.
    waiting: AtomicU64,
    /// Events that went through the outbox since start.
    queued_total: AtomicU64,
}

impl Outbox {
    /// Opens (or creates) `data_dir/outbox.sqlite`.
    pub async fn open(data_dir: &Path) -> Result<Self, OutboxError> {
        let file = data_dir.join("outbox.sqlite");
        let path = file.display().to_string();
        let fail = |source| OutboxError {
            path: path.clone(),
            source,
        };
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(fail)?
            .filename(&file)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Every event on disk before `publish` answers.
            .synchronous(SqliteSynchronous::Full);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(fail)?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS outbox (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                subject TEXT NOT NULL,
                headers TEXT NOT NULL,
                payload BLOB NOT NULL
            )",
        )
        .execute(&pool)
        .await
        .map_err(fail)?;
        let waiting: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
            .fetch_one(&pool)
            .await
            .map_err(fail)?;
        Ok(Self {
            pool,
            path,
            waiting: AtomicU64::new(u64::try_from(waiting).unwrap_or(0)),
            queued_total: AtomicU64::new(0),
        })
    }

    fn error(&self, source: sqlx::Error) -> OutboxError {
        OutboxError {
            path: self.path.clone(),
            source,
        }
    }

    /// Events waiting.
    pub fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::SeqCst)
    }

    /// The outbox file.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Sets the count of waiting events from the table.
    pub async fn recount(&self) {
        if let Ok(n) = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM outbox")
            .fetch_one(&self.pool)
            .await
        {
            self.waiting
                .store(u64::try_from(n).unwrap_or(0), Ordering::SeqCst);
        }
    }

    /// Events that went through the outbox since start.
    pub fn queued_total(&self) -> u64 {
        self.queued_total.load(Ordering::Relaxed)
    }

    /// Keeps an event on disk.
    pub async fn push(
        &self,
        subject: &str,
        headers: &[(String, String)],
        payload: &[u8],
    ) -> Result<(), OutboxError> {
        let headers = serde_json::to_string(headers).unwrap_or_else(|_| "[]".into());
        // Counted first, so a concurrent publish sees that something waits.
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let stored = sqlx::query("INSERT INTO outbox (subject, headers, payload) VALUES (?, ?, ?)")
            .bind(subject)
            .bind(headers)
            .bind(payload)
            .execute(&self.pool)
            .await;
        if let Err(e) = stored {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(self.error(e));
        }
        self.queued_total.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The oldest `limit` events.
    pub async fn oldest(&self, limit: u32) -> Result<Vec<Pending>, OutboxError> {
        let rows =
            sqlx::query("SELECT seq, subject, headers, payload FROM outbox ORDER BY seq LIMIT ?")
                .bind(limit)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.error(e))?;
        Ok(rows
            .into_iter()
            .map(|r| Pending {
                seq: r.get(0),
                subject: r.get(1),
                headers: serde_json::from_str(r.get::<&str, _>(2)).unwrap_or_default(),
                payload: r.get(3),
            })
            .collect())
    }

    /// Forgets an event the broker acknowledged.
    pub async fn sent(&self, seq: i64) -> Result<(), OutboxError> {
        let done = sqlx::query("DELETE FROM outbox WHERE seq = ?")
            .bind(seq)
            .execute(&self.pool)
            .await
            .map_err(|e| self.error(e))?;
        if done.rows_affected() > 0 {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// How long the sender waits between attempts while the broker is away.
pub const RETRY_EVERY: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_survive_a_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).await.unwrap();
        for i in 0..3 {
            let h = vec![("Nats-Msg-Id".to_string(), format!("id-{i}"))];
            outbox
                .push("c.events.t", &h, format!("{i}").as_bytes())
                .await
                .unwrap();
        }
        assert_eq!(outbox.waiting(), 3);
        drop(outbox);
        let outbox = Outbox::open(dir.path()).await.unwrap();
        assert_eq!(outbox.waiting(), 3);
        let all = outbox.oldest(10).await.unwrap();
        let payloads: Vec<_> = all.iter().map(|p| p.payload.clone()).collect();
        assert_eq!(payloads, [b"0".to_vec(), b"1".to_vec(), b"2".to_vec()]);
        assert_eq!(
            all[1].headers,
            [("Nats-Msg-Id".to_string(), "id-1".to_string())]
        );
        outbox.sent(all[0].seq).await.unwrap();
        outbox.sent(all[0].seq).await.unwrap();
        assert_eq!(outbox.waiting(), 2);
        assert_eq!(outbox.oldest(1).await.unwrap()[0].payload, b"1");
    }
}
