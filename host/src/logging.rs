//! The host's log subscriber: `RUST_LOG` filtering, text or JSON lines on stdout (the
//! server) or stderr (the other commands).

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// The server (`modhost run`): logs are its output.
    Stdout,
    /// Commands whose stdout is their result (`check`, `admin token`, ...).
    Stderr,
}

/// Whether text logs carry ANSI colour codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Color {
    /// Only when the log goes to a terminal (not a file or a pipe).
    Auto,
    Always,
    Never,
}

impl Color {
    /// Whether to colour a log written to `target`.
    pub fn enabled(self, target: LogTarget) -> bool {
        use std::io::IsTerminal as _;
        match self {
            Color::Always => true,
            Color::Never => false,
            Color::Auto => match target {
                LogTarget::Stdout => std::io::stdout().is_terminal(),
                LogTarget::Stderr => std::io::stderr().is_terminal(),
            },
        }
    }
}

/// Installs the global subscriber (once; later calls are ignored) and a panic hook that
/// logs panics instead of printing them raw.
pub fn init(format: LogFormat, target: LogTarget, color: Color) {
    // PostgreSQL's NOTICEs ("schema core already exists, skipping" from the idempotent
    // setup statements) are not news: sqlx logs them at info, so keep them below it
    // unless RUST_LOG asks for them.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx::postgres::notice=warn"));
    let writer = match target {
        LogTarget::Stdout => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stdout),
        LogTarget::Stderr => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
    };
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(color.enabled(target));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        if message == "FFI future panicked" {
            // A module panicked; its own message was already forwarded by the module.
            tracing::debug!(%location, "module future panicked");
        } else {
            tracing::error!(%location, "panic: {message}");
        }
    }));
}
