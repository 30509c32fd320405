//! The one error type of every Rust surface: the agent's, both clients', the
//! CLI's. A code from the one table ([`ErrorCode`]), a message for people,
//! and when retrying may help.

use std::time::Duration;

use crate::code::ErrorCode;
use crate::message::WireError;

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failure: its stable code, what happened (to what, and what to do about
/// it), and when trying again may help.
///
/// `Display` prints the message alone; the code is in [`Error::code`] and its
/// stable number (the C library's result, the CLI's exit status) in
/// [`Error::number`]. Messages never contain a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// The stable code.
    pub code: ErrorCode,
    /// What happened, to what, and what to do about it.
    pub message: String,
    /// When trying again may help (a server's `Retry-After`, a backoff, an
    /// expiry), if known.
    pub retry_after: Option<Duration>,
}

impl Error {
    /// An error with a code and a message, and no retry hint.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error, saying when to try again.
    #[must_use]
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// Whether trying the same call again later can succeed without anyone
    /// changing anything (the code table's verdict): `false` for a revoked
    /// credential, a refused registration token, a wrong client secret, a bad
    /// configuration.
    pub fn is_retryable(&self) -> bool {
        self.code.is_retryable()
    }

    /// The code's stable number.
    pub fn number(&self) -> u8 {
        self.code.number()
    }

    /// The message with its code, and the retry hint when there is one:
    /// `cannot reach … (AGENT_UNREACHABLE); retry in 1.5s`, as the CLI prints it.
    pub fn report(&self) -> String {
        let mut text = format!("{} ({})", self.message, self.code);
        if let Some(after) = self.retry_after {
            text.push_str(&format!("; retry in {:.1}s", after.as_secs_f64()));
        }
        text
    }
}

impl From<WireError> for Error {
    fn from(e: WireError) -> Self {
        Error {
            code: e.code,
            message: e.message,
            retry_after: e.retry_after_ms.map(Duration::from_millis),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wire_error_keeps_its_code_message_and_retry_time() {
        let mut wire = WireError::new(ErrorCode::RateLimited, "slow down");
        wire.retry_after_ms = Some(1500);
        let e = Error::from(wire);
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert_eq!(e.number(), 8);
        assert_eq!(e.to_string(), "slow down");
        assert_eq!(e.retry_after, Some(Duration::from_millis(1500)));
        assert!(e.is_retryable());
        assert_eq!(e.report(), "slow down (RATE_LIMITED); retry in 1.5s");
        let e = Error::new(ErrorCode::Revoked, "enroll again");
        assert!(!e.is_retryable());
        assert_eq!(e.report(), "enroll again (REVOKED)");
    }
}
