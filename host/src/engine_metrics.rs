//! Counters an engine reports about itself (cache errors, events waiting in the
//! outbox, …), rendered by `/metrics` beside the host's own. Engines of every port use
//! this one type, so the HTTP layer needs to know none of them.

/// One Prometheus series an engine reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineMetric {
    /// The series name, `modhost_…`.
    pub name: &'static str,
    pub help: &'static str,
    /// `counter` or `gauge`.
    pub kind: &'static str,
    pub value: u64,
}

impl EngineMetric {
    pub fn counter(name: &'static str, help: &'static str, value: u64) -> Self {
        Self {
            name,
            help,
            kind: "counter",
            value,
        }
    }

    pub fn gauge(name: &'static str, help: &'static str, value: u64) -> Self {
        Self {
            name,
            help,
            kind: "gauge",
            value,
        }
    }
}
