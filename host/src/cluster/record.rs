//! What a host announces about itself in the registry: its id, the address of its
//! peer server, and every module it runs with its version, state and services.

use serde::{Deserialize, Serialize};

/// One host, as the registry holds it (JSON under `<cluster>/hosts/<host_id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub host_id: String,
    /// The peer server (`HOST:PORT`): service calls from other hosts.
    pub address: String,
    /// The HTTP listener, for operators.
    pub http: String,
    /// The modhost version the host runs.
    pub modhost: String,
    pub modules: Vec<ModuleRecord>,
}

/// One module of a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleRecord {
    pub name: String,
    pub version: String,
    /// The runtime state name (`started`, `failed`, …).
    pub state: String,
    /// The services it provides (its manifest's), live when `state` is `started`.
    pub services: Vec<String>,
}

impl ModuleRecord {
    pub fn started(&self) -> bool {
        self.state == "started"
    }
}
