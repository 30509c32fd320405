//! The client's error: a code from the one table (DESIGN §7), a message for
//! people, and when retrying may help.

use std::io;
use std::path::Path;
use std::time::Duration;

use regent_proto::ErrorCode;

/// A failed call — the agent's answer, or what went wrong on the way to it —
/// is [`regent_proto::Error`], the one error type of every Rust surface.
pub use regent_proto::error::{Error, Result};

/// How a request failed, which decides whether it may be sent again.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The request never reached the agent: resending any operation is safe.
    NotSent(Error),
    /// The connection broke after the request may have reached the agent.
    Lost(Error),
    /// Anything else (timeout, protocol violation, a request too large).
    Other(Error),
}

impl Failure {
    pub(crate) fn into_error(self) -> Error {
        match self {
            Failure::NotSent(e) | Failure::Lost(e) | Failure::Other(e) => e,
        }
    }
}

/// Whether an operation may be resent after the connection broke mid-request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resend {
    /// Reading operations (`token`, `status`, `metrics`): resend once on a new connection.
    Idempotent,
    /// `enroll`, `unenroll`: resend only if the request surely never arrived.
    OnlyIfNotSent,
}

/// Connecting failed: no agent, someone else's socket, or no answer in time.
pub(crate) fn connect_failed(socket: &Path, e: &io::Error) -> Error {
    let socket = socket.display();
    match e.kind() {
        io::ErrorKind::PermissionDenied => Error::new(
            ErrorCode::PermissionDenied,
            format!(
                "permission denied opening the regent agent's socket {socket}; \
                 run as a user the agent allows (allow_uids / allow_groups) \
                 or set REGENT_SOCKET to your own agent's socket"
            ),
        ),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Error::new(
            ErrorCode::Timeout,
            format!(
                "the regent agent at {socket} did not accept the connection in time; it may be overloaded or stuck"
            ),
        ),
        _ => Error::new(
            ErrorCode::AgentUnreachable,
            format!(
                "cannot reach the regent agent at {socket} ({e}); \
                 start the agent (`regent agent`) or set REGENT_SOCKET to its socket"
            ),
        ),
    }
}

/// Connecting and the `hello` exchange together took longer than `connect_timeout`.
pub(crate) fn handshake_timeout(socket: &Path, limit: Duration) -> Error {
    Error::new(
        ErrorCode::Timeout,
        format!(
            "the regent agent at {} did not complete the connection handshake within {limit:?}; \
             it may be overloaded or stuck",
            socket.display()
        ),
    )
}

/// The connection broke.
pub(crate) fn connection_lost(socket: &Path, cause: &dyn std::fmt::Display) -> Error {
    Error::new(
        ErrorCode::AgentUnreachable,
        format!(
            "lost the connection to the regent agent at {} ({cause}); \
             it may have restarted: the next call reconnects",
            socket.display()
        ),
    )
}

/// The connection broke while a non-idempotent request may have been applied.
pub(crate) fn outcome_unknown(socket: &Path, op: &str) -> Error {
    Error::new(
        ErrorCode::AgentUnreachable,
        format!(
            "lost the connection to the regent agent at {} while waiting for the answer to `{op}`; \
             it may or may not have been applied: check `regent status` before trying again",
            socket.display()
        ),
    )
}

/// No answer within `request_timeout`.
pub(crate) fn timed_out(socket: &Path, op: &str, limit: Duration) -> Error {
    Error::new(
        ErrorCode::Timeout,
        format!(
            "the regent agent at {} did not answer `{op}` within {limit:?}",
            socket.display()
        ),
    )
}

/// The agent sent bytes that are not a protocol frame.
pub(crate) fn malformed(socket: &Path, detail: &str) -> Error {
    Error::new(
        ErrorCode::BadRequest,
        format!(
            "the regent agent at {} sent a malformed response ({detail}); \
             the connection was closed — are the client and agent versions compatible?",
            socket.display()
        ),
    )
}

/// The agent answered with the wrong kind of reply.
pub(crate) fn unexpected(socket: &Path, op: &str, got: &str) -> Error {
    Error::new(
        ErrorCode::Internal,
        format!(
            "the regent agent at {} answered `{op}` with an unexpected `{got}`; please report this",
            socket.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_errors_name_the_socket_and_the_remedy() {
        let path = Path::new("/tmp/nowhere/agent.sock");
        let e = connect_failed(path, &io::Error::from(io::ErrorKind::NotFound));
        assert_eq!(e.code, ErrorCode::AgentUnreachable);
        assert!(e.message.contains("/tmp/nowhere/agent.sock"), "{e}");
        assert!(e.message.contains("REGENT_SOCKET"), "{e}");
        assert!(e.message.contains("start the agent"), "{e}");
        let e = connect_failed(path, &io::Error::from(io::ErrorKind::PermissionDenied));
        assert_eq!(e.code, ErrorCode::PermissionDenied);
        let e = connect_failed(path, &io::Error::from(io::ErrorKind::TimedOut));
        assert_eq!(e.code, ErrorCode::Timeout);
    }
}
