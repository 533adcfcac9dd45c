//! The embedded cache engine: moka, bounded by bytes, with a TTL per entry.

use std::time::{Duration, Instant};

use futures_util::{future::BoxFuture, FutureExt as _};
use moka::{sync::Cache, Expiry};

use super::CacheStore;

#[derive(Clone)]
struct Entry {
    value: std::sync::Arc<Vec<u8>>,
    ttl: Duration,
}

struct PerEntryTtl;

impl Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _key: &String, value: &Entry, _now: Instant) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Entry,
        _now: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// The embedded engine.
pub struct InProcessCache {
    cache: Cache<String, Entry>,
    default_ttl: Duration,
}

impl InProcessCache {
    /// A cache holding at most about `max_bytes` of keys and values.
    pub fn new(max_bytes: u64, default_ttl: Duration) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &String, v: &Entry| {
                u32::try_from(k.len() + v.value.len() + 64).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .build();
        Self { cache, default_ttl }
    }

    fn key(module: &str, key: &str) -> String {
        // Module names cannot contain NUL, so namespaces cannot collide.
        format!("{module}\0{key}")
    }
}

impl InProcessCache {
    fn get_now(&self, module: &str, key: &str) -> Option<Vec<u8>> {
        self.cache
            .get(&Self::key(module, key))
            .map(|e| e.value.as_ref().clone())
    }

    fn set_now(&self, module: &str, key: &str, value: Vec<u8>, ttl: Option<Duration>) {
        let entry = Entry {
            value: std::sync::Arc::new(value),
            ttl: ttl.unwrap_or(self.default_ttl),
        };
        self.cache.insert(Self::key(module, key), entry);
    }
}

// Every operation is answered at once; the futures only fit the port's shape.
impl CacheStore for InProcessCache {
    fn get<'a>(&'a self, module: &'a str, key: &'a str) -> BoxFuture<'a, Option<Vec<u8>>> {
        futures_util::future::ready(self.get_now(module, key)).boxed()
    }

    fn set<'a>(
        &'a self,
        module: &'a str,
        key: &'a str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, ()> {
        self.set_now(module, key, value, ttl);
        futures_util::future::ready(()).boxed()
    }

    fn delete<'a>(&'a self, module: &'a str, key: &'a str) -> BoxFuture<'a, ()> {
        self.cache.invalidate(&Self::key(module, key));
        futures_util::future::ready(()).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_separate() {
        let c = InProcessCache::new(1 << 20, Duration::from_secs(60));
        c.set_now("a", "k", b"from a".to_vec(), None);
        assert_eq!(c.get_now("b", "k"), None);
        c.set_now("b", "k", b"from b".to_vec(), None);
        assert_eq!(c.get_now("a", "k").as_deref(), Some(&b"from a"[..]));
        c.cache.invalidate(&InProcessCache::key("b", "k"));
        assert_eq!(c.get_now("a", "k").as_deref(), Some(&b"from a"[..]));
    }
}
