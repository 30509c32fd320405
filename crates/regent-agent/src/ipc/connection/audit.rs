//! The audit log: who received a token or changed enrollment, never a secret.

/// Target of audit events: who received a token, never the token.
///
/// Every handout is audited with the peer's pid, uid, executable and app
/// name and what it received (slot, token type, scope, expiry). The first
/// handout of each token to a connection is an `info` line; the same token
/// handed to the same connection again is a `debug` line, so a busy app does
/// not flood the log while every token still has an `info` record of who got
/// it. Enrollment changes (enroll, unenroll, refusals) are `info`/`warn`.
pub const AUDIT_TARGET: &str = "regent::audit";

/// One audit line about a connection's peer: who it is (pid, uid, SID,
/// executable, app name), then the event's own fields and message, e.g.
/// `audit!(self, Level::INFO, slot = 1, "instance slot leased")`.
macro_rules! audit {
    ($conn:expr, $level:expr, $($event:tt)+) => {
        tracing::event!(
            target: $crate::ipc::connection::AUDIT_TARGET,
            $level,
            pid = $conn.peer.pid,
            uid = $conn.peer.uid,
            sid = $conn.peer.sid.as_deref(),
            exe = ?$conn.exe,
            app = $conn.app.as_deref().unwrap_or(""),
            $($event)+
        )
    };
}

pub(super) use audit;
