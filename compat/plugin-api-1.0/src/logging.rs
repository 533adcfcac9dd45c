//! Forwards the plugin's `tracing` events and panic messages to the host's logger.
//!
//! A plugin library carries its own copy of `tracing` and `std`, so without this its
//! logs and panic messages would go nowhere. Installed once per loaded library copy.

use std::{
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering},
        Once,
    },
};

use tracing::{
    field::{Field, Visit},
    level_filters::LevelFilter,
    span, Event, Level, Metadata, Subscriber,
};

use crate::ffi::{level, FfiHostBox};

static INSTALL: Once = Once::new();

/// Install the forwarding subscriber and panic hook (first call per library copy wins).
pub(crate) fn install(host: &FfiHostBox) {
    INSTALL.call_once(|| {
        let max = match host.max_log_level() {
            level::OFF => LevelFilter::OFF,
            level::ERROR => LevelFilter::ERROR,
            level::WARN => LevelFilter::WARN,
            level::INFO => LevelFilter::INFO,
            level::DEBUG => LevelFilter::DEBUG,
            _ => LevelFilter::TRACE,
        };
        let forwarder = Forwarder {
            host: host.clone(),
            max,
            next_span: AtomicU64::new(1),
        };
        // Fails only if this library copy already has a global subscriber: keep that one.
        let _ = tracing::subscriber::set_global_default(forwarder);

        let panic_host = host.clone();
        std::panic::set_hook(Box::new(move |info| {
            let location = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let message = format!("panic{location}: {}", crate::panic_message(info.payload()));
            panic_host.log(level::ERROR, "panic".into(), message.as_str().into());
        }));
    });
}

struct Forwarder {
    host: FfiHostBox,
    max: LevelFilter,
    next_span: AtomicU64,
}

fn level_code(level: &Level) -> u8 {
    match *level {
        Level::ERROR => level::ERROR,
        Level::WARN => level::WARN,
        Level::INFO => level::INFO,
        Level::DEBUG => level::DEBUG,
        Level::TRACE => level::TRACE,
    }
}

impl Subscriber for Forwarder {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.max >= *metadata.level()
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.max)
    }

    fn new_span(&self, _span: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed))
    }

    fn record(&self, _span: &span::Id, _values: &span::Record<'_>) {}

    fn record_follows_from(&self, _span: &span::Id, _follows: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut visitor = MessageVisitor::default();
        event.record(&mut visitor);
        let meta = event.metadata();
        self.host.log(
            level_code(meta.level()),
            meta.target().into(),
            visitor.text.as_str().into(),
        );
    }

    fn enter(&self, _span: &span::Id) {}

    fn exit(&self, _span: &span::Id) {}
}

/// Renders an event as `message key=value key=value`.
#[derive(Default)]
struct MessageVisitor {
    text: String,
}

impl Visit for MessageVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.text.insert_str(0, value);
        } else {
            let _ = write!(self.text, " {}={:?}", field.name(), value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.text.insert_str(0, &format!("{value:?}"));
        } else {
            let _ = write!(self.text, " {}={:?}", field.name(), value);
        }
    }
}
