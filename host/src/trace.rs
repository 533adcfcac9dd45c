//! W3C trace context (`traceparent`): the trace a request belongs to, carried from host
//! to host on service calls (gRPC metadata) and events (a NATS or Kafka header), so the logs of
//! every host a request crosses show the same `trace_id`.
//!
//! The HTTP layer starts a trace per request (or continues the caller's `traceparent`)
//! and runs the request inside [`scope`]; whatever the host does for the module on that
//! task (a call, a publish) reads [`current`]. Spans are log fields only: nothing is
//! exported to a tracing backend.
//!
//! May use: [`crate::random`]. Nothing else of the host.

use std::future::Future;

/// The trace a piece of work belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lower-case hex digits, never all zero.
    pub trace_id: String,
    /// The caller's span: 16 lower-case hex digits.
    pub parent_id: String,
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// A random id of `bytes` bytes in hex; all-zero ids are invalid, so never that.
fn hex_id(bytes: usize) -> String {
    loop {
        let id = crate::random::random_hex(bytes);
        if id.bytes().any(|b| b != b'0') {
            return id;
        }
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

impl TraceContext {
    /// A new trace.
    pub fn new_root() -> Self {
        Self {
            trace_id: hex_id(16),
            parent_id: hex_id(8),
        }
    }

    /// The trace in a `traceparent` header (version 00), if it is well formed.
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let ok = version == "00"
            && parts.next().is_none()
            && is_hex(trace, 32)
            && is_hex(parent, 16)
            && flags.len() == 2
            && flags.bytes().all(|b| b.is_ascii_hexdigit());
        ok.then(|| Self {
            trace_id: trace.to_string(),
            parent_id: parent.to_string(),
        })
    }

    /// The `traceparent` to send onwards: this trace, a new span id, sampled.
    pub fn child_header(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, hex_id(8))
    }
}

/// The current task's trace, if it runs inside [`scope`].
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(Clone::clone).ok()
}

/// The `traceparent` header to send from the current task, if it has a trace.
pub fn outgoing_header() -> Option<String> {
    current().map(|c| c.child_header())
}

/// Runs `work` inside `trace`.
pub async fn scope<F: Future>(trace: TraceContext, work: F) -> F::Output {
    CURRENT.scope(trace, work).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trip() {
        let root = TraceContext::new_root();
        let header = root.child_header();
        let back = TraceContext::parse(&header).unwrap();
        assert_eq!(back.trace_id, root.trace_id);
        assert_ne!(back.parent_id, root.parent_id);
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn scope_sets_current() {
        assert_eq!(current(), None);
        let t = TraceContext::new_root();
        let seen = scope(t.clone(), async { current() }).await;
        assert_eq!(seen, Some(t));
    }
}
