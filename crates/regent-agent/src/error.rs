//! The agent's errors are [`regent_proto::Error`]: the one error type of
//! every Rust surface (a code from the one table, a message for people, and
//! when it is worth trying again). Messages never contain a secret.

pub use regent_proto::error::{Error, Result};
