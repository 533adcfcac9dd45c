//! Which modules run isolated, and the limits and restart policy of their workers.
//!
//! Precedence for a module's isolation: the operator's `[modules.<name>] isolation`,
//! then the module.yaml hint (`isolation:`), then the host-wide `isolation` setting.

use std::{collections::BTreeMap, time::Duration};

use crate::module::manifest::{Isolation, Manifest};

/// What one worker may use. Enforced on Linux; see the README for what each means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerLimits {
    /// Writable private memory (`RLIMIT_DATA`), bytes; `None`: unlimited.
    pub memory_bytes: Option<u64>,
    /// Open file descriptors (`RLIMIT_NOFILE`).
    pub open_files: u64,
    /// Confine the worker's filesystem access with Landlock.
    pub landlock: bool,
}

impl Default for WorkerLimits {
    fn default() -> Self {
        Self {
            memory_bytes: Some(1024 * 1024 * 1024),
            open_files: 1024,
            landlock: true,
        }
    }
}

/// A module's own overrides, from `[modules.<name>]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleIsolation {
    pub isolation: Option<Isolation>,
    pub memory_bytes: Option<Option<u64>>,
    pub open_files: Option<u64>,
}

/// The host's isolation settings.
#[derive(Debug, Clone)]
pub struct IsolationSettings {
    /// The host-wide default (`isolation`).
    pub default: Isolation,
    /// Limits for every worker (`worker_memory_limit`, `worker_open_files`,
    /// `worker_landlock`).
    pub limits: WorkerLimits,
    /// A worker that crashes this many times within `restart_window` stays failed.
    pub max_restarts: u32,
    pub restart_window: Duration,
    /// The first restart's delay; each further one within the window doubles it.
    pub restart_backoff: Duration,
    /// Per-module overrides.
    pub modules: BTreeMap<String, ModuleIsolation>,
}

impl Default for IsolationSettings {
    fn default() -> Self {
        Self {
            default: Isolation::InProcess,
            limits: WorkerLimits::default(),
            max_restarts: 5,
            restart_window: Duration::from_secs(60),
            restart_backoff: Duration::from_millis(200),
            modules: BTreeMap::new(),
        }
    }
}

/// Keys of `[modules.<name>]` that are host settings, not the module's config.
pub const MODULE_KEYS: &[&str] = &["isolation", "worker_memory_limit", "worker_open_files"];

impl IsolationSettings {
    /// Where `manifest`'s module runs.
    pub fn of(&self, manifest: &Manifest) -> Isolation {
        self.modules
            .get(manifest.name.as_str())
            .and_then(|m| m.isolation)
            .or(manifest.isolation)
            .unwrap_or(self.default)
    }

    /// The limits of `module`'s worker.
    pub fn limits_of(&self, module: &str) -> WorkerLimits {
        let mut limits = self.limits.clone();
        if let Some(own) = self.modules.get(module) {
            if let Some(memory) = own.memory_bytes {
                limits.memory_bytes = memory;
            }
            if let Some(files) = own.open_files {
                limits.open_files = files;
            }
        }
        limits
    }

    /// The delay before restart number `n` (1-based) within the window.
    pub fn backoff(&self, n: u32) -> Duration {
        let doublings = n.saturating_sub(1).min(10);
        let cap = Duration::from_secs(30);
        self.restart_backoff
            .checked_mul(2u32.pow(doublings))
            .unwrap_or(cap)
            .min(cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_overrides_the_manifest_hint_which_overrides_the_default() {
        let text = "name: m\nversion: 1.0.0\nisolation: process\n";
        let manifest = Manifest::parse(text, std::path::Path::new("module.yaml")).unwrap();
        let mut settings = IsolationSettings::default();
        assert_eq!(settings.of(&manifest), Isolation::Process);
        settings.modules.insert(
            "m".into(),
            ModuleIsolation {
                isolation: Some(Isolation::InProcess),
                ..Default::default()
            },
        );
        assert_eq!(settings.of(&manifest), Isolation::InProcess);
        let plain =
            Manifest::parse("name: n\nversion: 1.0.0\n", std::path::Path::new("x")).unwrap();
        settings.default = Isolation::Process;
        assert_eq!(settings.of(&plain), Isolation::Process);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let s = IsolationSettings::default();
        assert_eq!(s.backoff(1), Duration::from_millis(200));
        assert_eq!(s.backoff(3), Duration::from_millis(800));
        assert_eq!(s.backoff(40), Duration::from_secs(30));
    }
}
