//! The worker's log lines: everything the worker's code and the module log goes to
//! stderr as one JSON line per event (`spawn::log_line`), which the host reads and
//! re-logs under the module's name.

use std::{io::Write as _, sync::Mutex};

use modhost_plugin_api::ffi::level;

use crate::isolation::spawn;

/// Serialises the worker's stderr lines.
static STDERR: Mutex<()> = Mutex::new(());

/// Writes one log line to stderr.
pub fn write_line(lvl: u8, target: &str, message: &str) {
    let line = spawn::log_line(lvl, target, message);
    let _guard = STDERR.lock().unwrap_or_else(|p| p.into_inner());
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The worker's own log events (the database's errors, say), written to stderr in the
/// line format the host re-logs.
struct StderrLines;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for StderrLines {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                use std::fmt::Write as _;
                match field.name() {
                    "message" => {
                        let _ = write!(self.0, "{value:?}");
                    }
                    name => {
                        let _ = write!(self.0, " {name}={value:?}");
                    }
                }
            }
        }
        let meta = event.metadata();
        let lvl = match *meta.level() {
            tracing::Level::ERROR => level::ERROR,
            tracing::Level::WARN => level::WARN,
            tracing::Level::INFO => level::INFO,
            tracing::Level::DEBUG => level::DEBUG,
            tracing::Level::TRACE => level::TRACE,
        };
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        write_line(lvl, meta.target(), &fields.0);
    }
}

/// Installs [`StderrLines`] at info level for the worker's own code.
pub fn install_logging() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let subscriber = tracing_subscriber::registry()
        .with(StderrLines)
        .with(tracing_subscriber::filter::LevelFilter::INFO);
    let _ = tracing::subscriber::set_global_default(subscriber);
}
