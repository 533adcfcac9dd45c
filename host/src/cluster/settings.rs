//! Cluster settings: which engines replace the embedded ones, and how this host is
//! known to the others. All are absent by default, which keeps the embedded host.

use std::{net::SocketAddr, time::Duration};

/// The cluster part of the host configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// `registry_url`: the etcd endpoints (`etcd://HOST:PORT[,HOST:PORT…]`).
    pub registry: Option<Vec<String>>,
    /// `event_bus_url`: the broker (`nats://HOST:PORT`, or `kafka://HOST:PORT[,…]`).
    pub event_bus: Option<String>,
    /// `cache_url`: the Redis server (`redis://HOST:PORT[/DB]`).
    pub cache: Option<String>,
    /// `cluster_listen`: where this host serves calls from other hosts.
    pub listen: SocketAddr,
    /// `cluster_advertise`: the address other hosts use; default the bound address.
    pub advertise: Option<SocketAddr>,
    /// `host_id`: default generated once and kept in the data dir.
    pub host_id: Option<String>,
    /// `cluster_name`: namespaces the cluster's keys in etcd, its NATS streams and its
    /// Redis keys, so that several clusters can share the engines.
    pub name: String,
    /// `registry_lease_ttl`: how long a host's records outlive its last keep-alive.
    pub lease_ttl: Duration,
    /// `dependency_wait`: how long a module whose dependency runs on no host yet waits
    /// for it before it fails.
    pub dependency_wait: Duration,
    /// `cluster_secret`: what every host of the cluster presents on peer calls, and
    /// the key module roles' PostgreSQL passwords are derived from. Required when
    /// `cluster_listen` is not a loopback address.
    pub secret: Option<String>,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            registry: None,
            event_bus: None,
            cache: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            host_id: None,
            name: "modhost".to_string(),
            lease_ttl: Duration::from_secs(5),
            dependency_wait: Duration::from_secs(30),
            secret: None,
        }
    }
}

impl ClusterSettings {
    /// Whether this host is part of a cluster (it has a registry).
    pub fn clustered(&self) -> bool {
        self.registry.is_some()
    }
}

/// `HOST:PORT` after `scheme://`, with a port. Errors show the host and port only,
/// never a user or password.
fn host_port<'a>(url: &'a str, scheme: &str) -> Result<&'a str, String> {
    let rest = url
        .strip_prefix(&format!("{scheme}://"))
        .ok_or_else(|| format!("expected {scheme}://HOST:PORT"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(authority)
        }
        _ => Err(format!(
            "`{authority}` is not HOST:PORT (expected {scheme}://HOST:PORT)"
        )),
    }
}

/// Parses `registry_url`: `etcd://HOST:PORT[,HOST:PORT…]` into `http://HOST:PORT` endpoints.
pub fn parse_registry_url(v: &str) -> Result<Vec<String>, String> {
    let rest = v
        .strip_prefix("etcd://")
        .ok_or("expected etcd://HOST:PORT[,HOST:PORT...] (etcd is the only registry engine)")?;
    rest.split(',')
        .map(|one| {
            host_port(&format!("etcd://{}", one.trim()), "etcd")
                .map(|authority| format!("http://{authority}"))
        })
        .collect()
}

/// Checks `event_bus_url`: `nats://HOST:PORT`, or `kafka://HOST:PORT[,HOST:PORT…]` in a
/// build with the `kafka` feature.
pub fn parse_event_bus_url(v: &str) -> Result<String, String> {
    if let Some(list) = v.strip_prefix("kafka://") {
        if !cfg!(feature = "kafka") {
            return Err("this modhost was built without the Kafka engine; build it with `--features kafka` (the scripts' release builds have it), or use nats://HOST:PORT".into());
        }
        for one in list.split(',') {
            host_port(&format!("kafka://{}", one.trim()), "kafka")?;
        }
        return Ok(v.to_string());
    }
    host_port(v, "nats").map(|_| v.to_string())
}

/// Checks `cache_url`: `redis://HOST:PORT[/DB]`.
pub fn parse_cache_url(v: &str) -> Result<String, String> {
    host_port(v, "redis").map(|_| v.to_string())
}

/// Checks a cluster name: what etcd keys, NATS stream names and Redis keys can all hold.
pub fn parse_cluster_name(v: &str) -> Result<String, String> {
    let ok = !v.is_empty()
        && v.len() <= 32
        && v.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && v.starts_with(|c: char| c.is_ascii_lowercase());
    if ok {
        Ok(v.to_string())
    } else {
        Err("expected 1 to 32 lower-case letters, digits or `-`, starting with a letter".into())
    }
}

/// Checks a cluster secret: at least 16 characters, no spaces.
pub fn parse_secret(v: &str) -> Result<String, String> {
    if v.len() >= 16 && !v.chars().any(char::is_whitespace) && v.is_ascii() {
        Ok(v.to_string())
    } else {
        Err(
            "expected at least 16 ASCII characters without spaces (e.g. `openssl rand -hex 32`)"
                .into(),
        )
    }
}

/// The longest `dependency_wait` accepted.
pub const MAX_DEPENDENCY_WAIT: Duration = Duration::from_secs(24 * 3600);

/// Checks a host id: the same alphabet as a cluster name, up to 64 characters.
pub fn parse_host_id(v: &str) -> Result<String, String> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(v.to_string())
    } else {
        Err("expected 1 to 64 letters, digits, `-` or `_`".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_named() {
        assert_eq!(
            parse_registry_url("etcd://127.0.0.1:2379,10.0.0.2:2379").unwrap(),
            ["http://127.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert!(parse_registry_url("consul://x:8500")
            .unwrap_err()
            .contains("etcd"));
        assert!(parse_registry_url("etcd://x")
            .unwrap_err()
            .contains("HOST:PORT"));
        assert!(parse_event_bus_url("nats://127.0.0.1:4222").is_ok());
        assert!(parse_event_bus_url("nats://127.0.0.1").is_err());
        match cfg!(feature = "kafka") {
            true => {
                assert!(parse_event_bus_url("kafka://x:9092,y:9093").is_ok());
                assert!(parse_event_bus_url("kafka://x").is_err());
            }
            false => assert!(parse_event_bus_url("kafka://x:9092")
                .unwrap_err()
                .contains("--features kafka")),
        }
        assert!(parse_cache_url("redis://127.0.0.1:6379/2").is_ok());
        assert!(parse_cache_url("127.0.0.1:6379").is_err());
        assert!(parse_cluster_name("test-1").is_ok());
        assert!(parse_cluster_name("Bad.Name").is_err());
        assert!(parse_host_id("host-a_1").is_ok());
        assert!(parse_host_id("a/b").is_err());
    }
}
