//! A command's failure: the error-table code (the exit status) and a message.

use regent_proto::ErrorCode;

/// Why a command failed.
#[derive(Debug)]
pub struct Failure {
    /// Becomes the exit status.
    pub code: ErrorCode,
    /// Printed on stderr.
    pub message: String,
}

impl Failure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<regent_client::Error> for Failure {
    fn from(e: regent_client::Error) -> Self {
        let mut message = format!("{} ({})", e.message, e.code);
        if let Some(after) = e.retry_after {
            message.push_str(&format!("; retry in {:.1}s", after.as_secs_f64()));
        }
        Failure::new(e.code, message)
    }
}

impl From<regent_agent::Error> for Failure {
    fn from(e: regent_agent::Error) -> Self {
        Failure::new(e.code, format!("{} ({})", e.message, e.code))
    }
}

/// I/O and other local failures that have no code of their own.
pub fn internal(context: &str, e: impl std::fmt::Display) -> Failure {
    Failure::new(ErrorCode::Internal, format!("{context}: {e}"))
}
