//! This host as a member of its cluster: its id and peer address, the directory of
//! the other hosts kept by the registry, calls to their providers, and what
//! `/admin/cluster` shows.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use modhost_plugin_api::ffi::{call_error, FfiUser};
use semver::VersionReq;
use serde::Serialize;

use super::{
    directory::Directory,
    etcd::{EtcdRegistry, RecordSource},
    peer_client::{PeerClients, PeerError},
    settings::ClusterSettings,
};
use crate::services::{local::ServiceRegistry, CallFailure, ServiceReport};

/// Why this host could not join its cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterSetupError {
    #[error("cluster_listen {addr}: cannot listen: {source}; choose a free address or port 0")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    HostId(#[from] super::host_id::HostIdError),
    #[error("cluster_listen {addr} is reachable from other machines, but no cluster_secret is set: any caller could run any module's services as any user; set cluster_secret (the same on every host, e.g. `openssl rand -hex 32`) or listen on a loopback address")]
    Unprotected { addr: SocketAddr },
    #[error("cluster_listen {addr} is not an address other hosts can dial; set cluster_advertise to this host's address on the cluster's network")]
    Unadvertised { addr: SocketAddr },
}

#[derive(Default)]
struct Counts {
    calls: AtomicU64,
    errors: AtomicU64,
}

/// This host in its cluster.
pub struct Cluster {
    pub host_id: String,
    /// The address other hosts call this one at.
    pub address: SocketAddr,
    directory: Arc<Directory>,
    peers: PeerClients,
    registry: Mutex<Option<Arc<EtcdRegistry>>>,
    /// Calls made to other hosts, by (service, provider host).
    counts: Mutex<BTreeMap<(String, String), Arc<Counts>>>,
    stop_server: tokio::sync::watch::Sender<bool>,
}

impl Cluster {
    /// Binds the peer server and starts serving `services` to other hosts. The
    /// registry starts with [`Cluster::register`], once the host can describe itself.
    pub async fn start(
        settings: &ClusterSettings,
        data_dir: &std::path::Path,
        services: Arc<ServiceRegistry>,
    ) -> Result<Arc<Self>, ClusterSetupError> {
        let host_id = super::host_id::host_id(settings.host_id.as_deref(), data_dir)?;
        if !settings.listen.ip().is_loopback() && settings.secret.is_none() {
            return Err(ClusterSetupError::Unprotected {
                addr: settings.listen,
            });
        }
        if settings.advertise.is_none() && settings.listen.ip().is_unspecified() {
            return Err(ClusterSetupError::Unadvertised {
                addr: settings.listen,
            });
        }
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .map_err(|source| ClusterSetupError::Listen {
                addr: settings.listen,
                source,
            })?;
        let bound = listener
            .local_addr()
            .map_err(|source| ClusterSetupError::Listen {
                addr: settings.listen,
                source,
            })?;
        let address = settings.advertise.unwrap_or(bound);
        let (stop_server, mut stopped) = tokio::sync::watch::channel(false);
        let secret = settings.secret.clone();
        tokio::spawn(async move {
            let stop = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            if let Err(e) = super::peer_server::serve(services, listener, secret, stop).await {
                tracing::error!(target: "modhost::cluster", "the peer server stopped: {e}");
            }
        });
        tracing::info!(target: "modhost::cluster", host_id = %host_id, peer = %bound, advertised = %address, "cluster peer server listening");
        Ok(Arc::new(Self {
            host_id: host_id.clone(),
            address,
            directory: Arc::new(Directory::new(&host_id)),
            peers: PeerClients::new(settings.secret.clone()),
            registry: Mutex::new(None),
            counts: Mutex::new(BTreeMap::new()),
            stop_server,
        }))
    }

    /// Starts announcing this host (as `record` describes it) and watching the others.
    pub fn register(&self, settings: &ClusterSettings, record: RecordSource) {
        let Some(endpoints) = settings.registry.clone() else {
            return;
        };
        let registry = EtcdRegistry::start(
            endpoints,
            &settings.name,
            &self.host_id,
            settings.lease_ttl,
            self.directory.clone(),
            record,
        );
        *self.registry.lock().unwrap_or_else(|p| p.into_inner()) = Some(registry);
    }

    /// Asks the registry to write this host's record now (a module changed state).
    pub fn announce(&self) {
        if let Some(r) = self
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            r.refresh.notify_one();
        }
    }

    /// Leaves the registry: other hosts stop calling this one. The peer server still
    /// answers the calls already on their way.
    pub async fn withdraw(&self) {
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(r) = registry {
            r.leave().await;
        }
    }

    /// Leaves the registry, if still in it, and stops the peer server.
    pub async fn leave(&self) {
        self.withdraw().await;
        let _ = self.stop_server.send(true);
    }

    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// Waits until another host runs `module` in a version `requirement` accepts, up to
    /// `deadline`; the error says what the cluster has instead.
    pub async fn wait_for_module(
        &self,
        module: &str,
        requirement: &VersionReq,
        deadline: Instant,
    ) -> Result<(), String> {
        let mut changes = self.directory.subscribe();
        loop {
            let why = match self.directory.runs(module, requirement) {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(why);
            }
            if tokio::time::timeout(left, changes.changed()).await.is_err() {
                // One last look after the deadline.
                return self.directory.runs(module, requirement);
            }
        }
    }

    fn counts(&self, service: &str, host: &str) -> Arc<Counts> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts
            .entry((service.to_string(), host.to_string()))
            .or_default()
            .clone()
    }

    /// Calls `service` of `module` (in a version `requirement` accepts) on another
    /// host: the providers in turn, the next one if a host cannot be reached or its
    /// provider is not running there (nothing ran), all within `deadline`. A call that
    /// may have run is never sent twice.
    #[allow(clippy::too_many_arguments)]
    pub async fn call(
        &self,
        caller: &str,
        module: &str,
        requirement: Option<&VersionReq>,
        service: &str,
        request: String,
        deadline: Duration,
        user: Option<Arc<FfiUser>>,
    ) -> Result<String, CallFailure> {
        let providers = self.directory.in_turn(service, module, requirement);
        if providers.is_empty() {
            return Err((
                call_error::UNAVAILABLE,
                format!("no host of the cluster runs a started `{module}` providing `{service}`"),
            ));
        }
        let until = Instant::now() + deadline;
        let mut passed = Vec::new();
        for p in &providers {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timed_out(service, deadline));
            }
            let counts = self.counts(service, &p.host_id);
            counts.calls.fetch_add(1, Ordering::Relaxed);
            let sent = self.peers.call(
                &p.address,
                caller,
                service,
                request.clone(),
                left,
                user.as_deref(),
            );
            let result = match tokio::time::timeout(left, sent).await {
                Ok(result) => result,
                Err(_) => Err(PeerError::TimedOut),
            };
            let failure = match result {
                Ok(json) => {
                    tracing::debug!(target: "modhost::cluster", service, host = %p.host_id, "called a provider on another host");
                    return Ok(json);
                }
                Err(e) => e,
            };
            counts.errors.fetch_add(1, Ordering::Relaxed);
            match failure {
                PeerError::Call((kind, why)) if kind == call_error::UNAVAILABLE => {
                    tracing::info!(target: "modhost::cluster", service, host = %p.host_id, "provider not running there, trying the next: {why}");
                    passed.push(format!("host {}: {why}", p.host_id));
                }
                PeerError::Call(failure) => {
                    tracing::debug!(target: "modhost::cluster", service, host = %p.host_id, kind = failure.0, "a provider on another host answered with an error: {}", failure.1);
                    return Err(failure);
                }
                PeerError::TimedOut => return Err(timed_out(service, deadline)),
                PeerError::Unreachable(why) => {
                    tracing::info!(target: "modhost::cluster", service, host = %p.host_id, "provider unreachable, trying the next: {why}");
                    passed.push(why);
                }
                PeerError::Unknown(why) => {
                    tracing::warn!(target: "modhost::cluster", service, host = %p.host_id, "call to another host failed after it was sent: {why}");
                    return Err((
                        call_error::FAILED,
                        format!("`{service}` on host {}: the call failed after it was sent, so it may have run: {why}", p.host_id),
                    ));
                }
            }
        }
        Err((
            call_error::UNAVAILABLE,
            format!(
                "no provider of `{service}` could answer: {}",
                passed.join("; ")
            ),
        ))
    }

    /// Services on other hosts, for `/admin/services`.
    pub fn remote_services(&self) -> Vec<ServiceReport> {
        let mut out = Vec::new();
        for host in self.directory.hosts() {
            if host.host_id == self.host_id {
                continue;
            }
            for m in &host.modules {
                for s in &m.services {
                    let counts = self.counts(s, &host.host_id);
                    out.push(ServiceReport {
                        service: s.clone(),
                        provider: m.name.clone(),
                        location: host.host_id.clone(),
                        healthy: m.started(),
                        calls: counts.calls.load(Ordering::Relaxed),
                        errors: counts.errors.load(Ordering::Relaxed),
                    });
                }
            }
        }
        out
    }

    /// What `/admin/cluster` shows.
    pub fn report(&self) -> ClusterReport {
        ClusterReport {
            host_id: self.host_id.clone(),
            address: self.address.to_string(),
            registry: self
                .registry
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some(),
            hosts: self.directory.hosts(),
        }
    }
}

fn timed_out(service: &str, deadline: Duration) -> CallFailure {
    (
        call_error::TIMEOUT,
        format!("`{service}` did not answer within {deadline:?}"),
    )
}

/// `/admin/cluster`.
#[derive(Debug, Serialize)]
pub struct ClusterReport {
    pub host_id: String,
    pub address: String,
    /// Whether a registry is configured.
    pub registry: bool,
    /// Every host the registry reports, this one included.
    pub hosts: Vec<super::record::HostRecord>,
}
