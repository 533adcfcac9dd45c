//! The error type plugin code returns from `init`, `start`, `stop`, handlers and helpers.
//!
//! An [`Error`] made from a database or call error keeps what a client should be told
//! (status and a public message), so `?` inside a handler answers the same response the
//! original error would have, and never the database's own text.

use std::fmt;

/// An error with a human-readable message; the host shows it as the module's failure
/// reason, and a handler returning it answers 500 with the message (or, when it came from
/// a [`crate::DbError`] or [`crate::CallError`], the response that error gives).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
    public: Option<PublicError>,
}

/// What a client is told when an error ends a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PublicError {
    pub(crate) status: u16,
    pub(crate) message: String,
    /// The id under which the host logged the detail.
    pub(crate) error_id: Option<String>,
}

impl Error {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            public: None,
        }
    }

    pub(crate) fn with_public(message: impl Into<String>, public: PublicError) -> Self {
        Self {
            message: message.into(),
            public: Some(public),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The HTTP status a handler returning this error answers.
    pub fn status(&self) -> u16 {
        self.public.as_ref().map_or(500, |p| p.status)
    }

    pub(crate) fn public(&self) -> Option<&PublicError> {
        self.public.as_ref()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Self::new(err.to_string())
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
