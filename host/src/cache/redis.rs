//! The cluster cache engine: Redis, shared by every host of a cluster.
//!
//! Keys are `<cluster>:cache:<module>:<key>`, written with `SET … PX <ttl>`, so TTLs are
//! Redis's own. Redis being unreachable is not an error for the module: a read is a
//! miss and a write is dropped, each counted (`modhost_cache_errors_total`) and logged
//! once per pause.
//! After a failure the engine stops asking for [`PAUSE_AFTER_FAILURE`], so requests do
//! not each wait for a dead server; the connection is re-established by the client on
//! the next attempt.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use futures_util::{future::BoxFuture, FutureExt as _};
use redis::{aio::ConnectionManager, AsyncCommands as _};

use super::CacheStore;
use crate::engine_metrics::EngineMetric;

/// How long one operation may take before it counts as a failure.
const OPERATION_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the engine answers misses without asking after a failure.
const PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Why the engine could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cache_url `{url}`: {why} (expected redis://HOST:PORT[/DB])")]
pub struct RedisSetupError {
    url: String,
    why: String,
}

/// The Redis engine.
pub struct RedisCache {
    connection: ConnectionManager,
    prefix: String,
    default_ttl: Duration,
    errors: AtomicU64,
    paused_until: Mutex<Option<Instant>>,
}

impl RedisCache {
    /// An engine for `url` (`redis://HOST:PORT[/DB]`); connects on first use, so a host
    /// starts while Redis is down.
    pub fn new(url: &str, cluster: &str, default_ttl: Duration) -> Result<Self, RedisSetupError> {
        let setup = |why: String| RedisSetupError {
            url: crate::redact::url(url),
            why,
        };
        let client = redis::Client::open(url).map_err(|e| setup(e.to_string()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_connection_timeout(Some(OPERATION_TIMEOUT))
            .set_response_timeout(Some(OPERATION_TIMEOUT));
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| setup(e.to_string()))?;
        Ok(Self {
            connection,
            prefix: format!("{cluster}:cache:"),
            default_ttl,
            errors: AtomicU64::new(0),
            paused_until: Mutex::new(None),
        })
    }

    fn key(&self, module: &str, key: &str) -> String {
        // Module names cannot contain `:`, so namespaces cannot collide.
        format!("{}{module}:{key}", self.prefix)
    }

    fn paused(&self) -> bool {
        let until = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        until.is_some_and(|t| Instant::now() < t)
    }

    /// Runs one operation; `None` (after logging and counting) if Redis did not answer.
    async fn run<T>(
        &self,
        what: &str,
        module: &str,
        op: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        if self.paused() {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let why = match tokio::time::timeout(OPERATION_TIMEOUT, op).await {
            Ok(Ok(value)) => return Some(value),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {OPERATION_TIMEOUT:?}"),
        };
        self.errors.fetch_add(1, Ordering::Relaxed);
        let first = {
            let mut until = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
            let first = until.is_none_or(|t| Instant::now() >= t);
            *until = Some(Instant::now() + PAUSE_AFTER_FAILURE);
            first
        };
        if first {
            tracing::warn!(
                module,
                "cache {what} failed, answering misses for {PAUSE_AFTER_FAILURE:?}: Redis: {why}"
            );
        }
        None
    }
}

impl CacheStore for RedisCache {
    fn get<'a>(&'a self, module: &'a str, key: &'a str) -> BoxFuture<'a, Option<Vec<u8>>> {
        async move {
            let mut c = self.connection.clone();
            let k = self.key(module, key);
            self.run("read", module, async move {
                c.get::<_, Option<Vec<u8>>>(k).await
            })
            .await
            .flatten()
        }
        .boxed()
    }

    fn set<'a>(
        &'a self,
        module: &'a str,
        key: &'a str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, ()> {
        async move {
            let mut c = self.connection.clone();
            let k = self.key(module, key);
            let ms = u64::try_from(ttl.unwrap_or(self.default_ttl).as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            self.run("write", module, async move {
                c.pset_ex::<_, _, ()>(k, value, ms).await
            })
            .await;
        }
        .boxed()
    }

    fn delete<'a>(&'a self, module: &'a str, key: &'a str) -> BoxFuture<'a, ()> {
        async move {
            let mut c = self.connection.clone();
            let k = self.key(module, key);
            self.run("delete", module, async move { c.del::<_, ()>(k).await })
                .await;
        }
        .boxed()
    }

    fn metrics(&self) -> Vec<EngineMetric> {
        vec![EngineMetric::counter(
            "modhost_cache_errors_total",
            "Cache operations Redis did not answer (answered as misses).",
            self.errors.load(Ordering::Relaxed),
        )]
    }
}
