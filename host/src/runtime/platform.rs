//! What a module's handle reaches through the host: metrics, the event bus, the cache,
//! the core services and other modules' services.
//!
//! The handle (`module_handle.rs`) holds a weak reference to a [`Platform`], not to the
//! [`Host`](super::lifecycle::Host) that implements it, so that the host owns its
//! handles and the handles do not depend on the host.

use crate::{
    cache::CacheStore, core::Core, events::EventBus, routes::metrics::Metrics,
    services::local::ServiceRegistry,
};

/// The host's shared engines, as a module handle uses them.
pub trait Platform: Send + Sync {
    fn metrics(&self) -> &Metrics;
    fn bus(&self) -> &dyn EventBus;
    fn cache(&self) -> &dyn CacheStore;
    fn core(&self) -> &Core;
    fn services(&self) -> &ServiceRegistry;
    /// The module whose manifest declares `service`, if any (in a cluster, on any host).
    fn service_provider(&self, service: &str) -> Option<String>;
    /// This host in its cluster, if it is in one.
    fn cluster(&self) -> Option<&crate::cluster::node::Cluster>;
}
