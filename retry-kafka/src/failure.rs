//! What a failed attempt says: its [`ErrorKind`] (what the runtime does next) and the
//! [`HandlerError`] behind it.

use std::fmt;

/// Why an attempt failed; written to the `rk-error-kind` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// May succeed later: retried through the levels, then dead-lettered.
    Transient,
    /// Will never succeed: straight to the dead-letter queue.
    Permanent,
    /// The payload did not decode: straight to the dead-letter queue, byte for byte.
    Decode,
    /// The handler panicked: retried like a transient failure.
    Panic,
    /// The attempt ran past the handler's `timeout`: retried like a transient failure.
    Timeout,
}

impl ErrorKind {
    /// The header value: `transient`, `permanent`, `decode`, `panic` or `timeout`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Transient => "transient",
            ErrorKind::Permanent => "permanent",
            ErrorKind::Decode => "decode",
            ErrorKind::Panic => "panic",
            ErrorKind::Timeout => "timeout",
        }
    }

    /// Parses a header value.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "transient" => ErrorKind::Transient,
            "permanent" => ErrorKind::Permanent,
            "decode" => ErrorKind::Decode,
            "panic" => ErrorKind::Panic,
            "timeout" => ErrorKind::Timeout,
            _ => return None,
        })
    }

    /// Whether a failure of this kind is worth another attempt.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Transient | ErrorKind::Panic | ErrorKind::Timeout)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed attempt: its [`ErrorKind`] and the error behind it.
///
/// `?` on any `std::error::Error` makes a transient failure; say `permanent` when retrying
/// cannot help.
///
/// ```
/// use retry_kafka::handler::{ErrorKind, HandlerError};
///
/// fn parse(amount: &str) -> Result<u64, HandlerError> {
///     let cents: u64 = amount.parse().map_err(HandlerError::permanent)?; // bad data: no retry
///     Ok(cents)
/// }
/// assert_eq!(parse("12x").unwrap_err().kind(), ErrorKind::Permanent);
///
/// fn call_bank() -> Result<(), HandlerError> {
///     Err(std::io::Error::other("bank timed out"))?; // plain `?`: transient, retried
///     Ok(())
/// }
/// assert_eq!(call_bank().unwrap_err().kind(), ErrorKind::Transient);
/// ```
pub struct HandlerError {
    kind: ErrorKind,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl HandlerError {
    /// A failure that may pass on a later attempt.
    pub fn transient(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::new(ErrorKind::Transient, error)
    }

    /// A failure no retry can fix: the message goes straight to the dead-letter queue.
    pub fn permanent(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::new(ErrorKind::Permanent, error)
    }

    /// A failure of the given kind.
    pub fn new(kind: ErrorKind, error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            kind,
            source: error.into(),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The error behind the failure.
    pub fn source(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(error: E) -> Self {
        Self::transient(error)
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .finish()
    }
}
