//! Request metrics and their Prometheus text rendering.
//!
//! Counters are atomics owned by the route (hot path: no locks); the registry maps
//! `(module, method, path)` to them so counts survive a route table swap. Module
//! states and load times are rendered from the host's module list by `admin.rs`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

/// Histogram bucket upper bounds, in seconds.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Counters of one route.
#[derive(Debug, Default)]
pub struct RouteMetrics {
    pub requests: AtomicU64,
    /// Responses with a 5xx status (panics and timeouts included).
    pub errors: AtomicU64,
    pub panics: AtomicU64,
    pub timeouts: AtomicU64,
}

/// Latency histogram of one module.
#[derive(Debug)]
pub struct Histogram {
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: BUCKETS.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

type RouteKey = (String, String, String);

/// All request metrics of the host.
#[derive(Default)]
pub struct Metrics {
    routes: Mutex<BTreeMap<RouteKey, Arc<RouteMetrics>>>,
    latency: Mutex<BTreeMap<String, Arc<Histogram>>>,
}

impl Metrics {
    /// The counters for a route, created on first use.
    pub fn route(&self, module: &str, method: &str, path: &str) -> Arc<RouteMetrics> {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes
            .entry((module.to_string(), method.to_string(), path.to_string()))
            .or_default()
            .clone()
    }

    /// The latency histogram of a module, created on first use.
    pub fn latency(&self, module: &str) -> Arc<Histogram> {
        let mut latency = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        latency.entry(module.to_string()).or_default().clone()
    }

    /// Appends the request metrics in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        type Field = fn(&RouteMetrics) -> &AtomicU64;
        let counters: [(&str, &str, Field); 4] = [
            (
                "modhost_requests_total",
                "Requests served by module routes.",
                |m| &m.requests,
            ),
            (
                "modhost_request_errors_total",
                "Module route responses with a 5xx status.",
                |m| &m.errors,
            ),
            (
                "modhost_handler_panics_total",
                "Module handlers that panicked.",
                |m| &m.panics,
            ),
            (
                "modhost_handler_timeouts_total",
                "Module handlers cut by the request timeout.",
                |m| &m.timeouts,
            ),
        ];
        for (name, help, field) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for ((module, method, path), m) in routes.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{module=\"{}\",method=\"{}\",route=\"{}\"}} {}",
                    escape(module),
                    escape(method),
                    escape(path),
                    field(m).load(Ordering::Relaxed)
                );
            }
        }
        drop(routes);

        let latency = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let name = "modhost_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time spent in module handlers.\n# TYPE {name} histogram"
        );
        for (module, h) in latency.iter() {
            let module = escape(module);
            let mut cumulative = 0;
            for (bound, bucket) in BUCKETS.iter().zip(&h.buckets) {
                cumulative += bucket.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "{name}_bucket{{module=\"{module}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let count = h.count.load(Ordering::Relaxed);
            let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(
                out,
                "{name}_bucket{{module=\"{module}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(out, "{name}_sum{{module=\"{module}\"}} {sum}");
            let _ = writeln!(out, "{name}_count{{module=\"{module}\"}} {count}");
        }
    }
}

/// Escapes a Prometheus label value.
pub fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        let h = m.latency("blog");
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        m.render(&mut out);
        assert!(out
            .contains("modhost_request_duration_seconds_bucket{module=\"blog\",le=\"0.0001\"} 1"));
        assert!(
            out.contains("modhost_request_duration_seconds_bucket{module=\"blog\",le=\"0.005\"} 2")
        );
        assert!(
            out.contains("modhost_request_duration_seconds_bucket{module=\"blog\",le=\"10\"} 2")
        );
        assert!(
            out.contains("modhost_request_duration_seconds_bucket{module=\"blog\",le=\"+Inf\"} 3")
        );
        assert!(out.contains("modhost_request_duration_seconds_count{module=\"blog\"} 3"));
    }
}
