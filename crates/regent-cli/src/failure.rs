//! A command fails with [`regent_client::Error`], the one error type of every
//! Rust surface: its code becomes the exit status, and `main` prints its
//! [`report`](regent_client::Error::report) (message, code, retry time).

use regent_client::Error;
use regent_proto::ErrorCode;

/// I/O and other local failures that have no code of their own.
pub fn internal(context: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::Internal, format!("{context}: {e}"))
}
