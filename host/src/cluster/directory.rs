//! Every host of the cluster as the registry last reported it, and the questions the
//! host asks of it: who provides a service (in turn), which version of a module runs
//! somewhere. A host that left (its lease expired or was revoked) is gone from here,
//! so it receives no more calls.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        RwLock,
    },
};

use semver::{Version, VersionReq};
use tokio::sync::watch;

use super::record::HostRecord;

/// A host that can answer a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    pub host_id: String,
    pub address: String,
    pub module: String,
}

/// The cluster as this host knows it.
pub struct Directory {
    own_id: String,
    hosts: RwLock<BTreeMap<String, HostRecord>>,
    next: AtomicUsize,
    /// Bumped on every change, so waiters can look again.
    changes: watch::Sender<u64>,
}

impl Directory {
    pub fn new(own_id: &str) -> Self {
        Self {
            own_id: own_id.to_string(),
            hosts: RwLock::new(BTreeMap::new()),
            next: AtomicUsize::new(0),
            changes: watch::Sender::new(0),
        }
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Replaces everything (after a full read of the registry).
    pub fn replace(&self, hosts: Vec<HostRecord>) {
        let map = hosts.into_iter().map(|h| (h.host_id.clone(), h)).collect();
        *self.hosts.write().unwrap_or_else(|p| p.into_inner()) = map;
        self.changed();
    }

    /// A host announced itself or changed.
    pub fn upsert(&self, host: HostRecord) {
        self.hosts
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host.host_id.clone(), host);
        self.changed();
    }

    /// A host left.
    pub fn remove(&self, host_id: &str) {
        self.hosts
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(host_id);
        self.changed();
    }

    /// Every host, this one included, by id.
    pub fn hosts(&self) -> Vec<HostRecord> {
        let hosts = self.hosts.read().unwrap_or_else(|p| p.into_inner());
        hosts.values().cloned().collect()
    }

    /// The number of (host, service) pairs known, for the scale figures.
    pub fn provider_count(&self) -> usize {
        let hosts = self.hosts.read().unwrap_or_else(|p| p.into_inner());
        hosts
            .values()
            .flat_map(|h| h.modules.iter())
            .map(|m| m.services.len())
            .sum()
    }

    /// Every other host running `module` started (in a version `requirement` accepts),
    /// providing `service`.
    pub fn providers(
        &self,
        service: &str,
        module: &str,
        requirement: Option<&VersionReq>,
    ) -> Vec<Provider> {
        let hosts = self.hosts.read().unwrap_or_else(|p| p.into_inner());
        let accepted = |version: &str| match requirement {
            None => true,
            Some(req) => Version::parse(version).is_ok_and(|v| req.matches(&v)),
        };
        hosts
            .values()
            .filter(|h| h.host_id != self.own_id)
            .flat_map(|h| {
                h.modules
                    .iter()
                    .filter(|m| {
                        m.name == module
                            && m.started()
                            && accepted(&m.version)
                            && m.services.iter().any(|s| s == service)
                    })
                    .map(|m| Provider {
                        host_id: h.host_id.clone(),
                        address: h.address.clone(),
                        module: m.name.clone(),
                    })
            })
            .collect()
    }

    /// The other providers of `service`, starting with the next in turn (round-robin).
    pub fn in_turn(
        &self,
        service: &str,
        module: &str,
        requirement: Option<&VersionReq>,
    ) -> Vec<Provider> {
        let mut all = self.providers(service, module, requirement);
        if !all.is_empty() {
            let n = all.len();
            all.rotate_left(self.next.fetch_add(1, Ordering::Relaxed) % n);
        }
        all
    }

    /// The module that provides `service` on some host (running or not).
    pub fn provider_module(&self, service: &str) -> Option<String> {
        let hosts = self.hosts.read().unwrap_or_else(|p| p.into_inner());
        hosts
            .values()
            .flat_map(|h| h.modules.iter())
            .find(|m| m.services.iter().any(|s| s == service))
            .map(|m| m.name.clone())
    }

    /// Whether another host runs `module` started, in a version `requirement` accepts;
    /// otherwise what was found, in words.
    pub fn runs(&self, module: &str, requirement: &VersionReq) -> Result<(), String> {
        let hosts = self.hosts.read().unwrap_or_else(|p| p.into_inner());
        let mut seen = Vec::new();
        for h in hosts.values().filter(|h| h.host_id != self.own_id) {
            for m in h.modules.iter().filter(|m| m.name == module) {
                let version = Version::parse(&m.version).ok();
                if m.started() && version.as_ref().is_some_and(|v| requirement.matches(v)) {
                    return Ok(());
                }
                seen.push(format!(
                    "{} {} ({}) on host {}",
                    m.name, m.version, m.state, h.host_id
                ));
            }
        }
        Err(match seen.is_empty() {
            true => "it runs on no host of the cluster".to_string(),
            false => format!("the cluster has only {}", seen.join(", ")),
        })
    }

    /// Resolves at the next change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::record::ModuleRecord;

    fn host(id: &str, module: &str, version: &str, state: &str) -> HostRecord {
        HostRecord {
            host_id: id.into(),
            address: format!("{id}:1"),
            http: String::new(),
            modhost: String::new(),
            modules: vec![ModuleRecord {
                name: module.into(),
                version: version.into(),
                state: state.into(),
                services: vec![format!("{module}.check")],
            }],
        }
    }

    #[test]
    fn providers_in_turn_skip_self_and_stopped_and_leave_with_their_host() {
        let d = Directory::new("a");
        d.replace(vec![
            host("a", "billing", "1.0.0", "started"),
            host("b", "billing", "1.0.0", "started"),
            host("c", "billing", "1.0.0", "started"),
            host("d", "billing", "1.0.0", "failed"),
        ]);
        let firsts: Vec<String> = (0..4)
            .map(|_| {
                d.in_turn("billing.check", "billing", None)[0]
                    .host_id
                    .clone()
            })
            .collect();
        assert_eq!(firsts, ["b", "c", "b", "c"]);
        let old = VersionReq::parse("^0.9").unwrap();
        assert!(d
            .providers("billing.check", "billing", Some(&old))
            .is_empty());
        assert!(d.providers("billing.check", "other", None).is_empty());
        d.remove("b");
        assert_eq!(d.providers("billing.check", "billing", None).len(), 1);
        assert_eq!(
            d.provider_module("billing.check").as_deref(),
            Some("billing")
        );
        assert_eq!(d.provider_count(), 3);
    }

    #[test]
    fn versions_are_checked_against_the_requirement() {
        let d = Directory::new("a");
        d.upsert(host("b", "billing", "1.4.0", "started"));
        assert!(d
            .runs("billing", &VersionReq::parse("^1.2").unwrap())
            .is_ok());
        let why = d
            .runs("billing", &VersionReq::parse("^2").unwrap())
            .unwrap_err();
        assert!(why.contains("billing 1.4.0 (started) on host b"), "{why}");
        let why = d.runs("blog", &VersionReq::STAR).unwrap_err();
        assert!(why.contains("no host"), "{why}");
    }
}
