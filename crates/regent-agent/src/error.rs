//! The agent's error: a code from the one table, a message for people, and when
//! it is worth trying again.

use std::time::Duration;

use regent_proto::ErrorCode;

/// Result with the agent's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error the agent reports to callers. The message says what happened, to
/// what, and what the user can do; it never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// The stable code (DESIGN §7).
    pub code: ErrorCode,
    /// What happened and what to do.
    pub message: String,
    /// When trying again may help (from `Retry-After`, a backoff, or an expiry).
    pub retry_after: Option<Duration>,
}

impl Error {
    /// An error with a code and a message.
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

    /// True when retrying without anyone changing anything cannot help
    /// (revocation, a refused registration token, a wrong client secret, bad config).
    pub fn is_permanent(&self) -> bool {
        !self.code.is_retryable()
    }
}
