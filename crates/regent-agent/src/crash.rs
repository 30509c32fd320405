//! Named crash points, so tests can kill the agent at an exact step of
//! enrollment or renewal (DESIGN §5 crash safety).
//!
//! When `REGENT_CRASH_POINT` names a point, the process announces it on stderr
//! (`regent: crash point NAME reached`) and stops there for good, waiting for
//! the test to SIGKILL it. With the variable unset this costs one environment
//! lookup, and only on enrollment and renewal paths, never on a handout.

/// The environment variable that arms a crash point.
pub const CRASH_POINT_ENV: &str = "REGENT_CRASH_POINT";

/// Stops here forever when `REGENT_CRASH_POINT` equals `name`.
pub fn crash_point(name: &str) {
    let armed = std::env::var(CRASH_POINT_ENV).is_ok_and(|v| v == name);
    if armed {
        eprintln!("regent: crash point {name} reached");
        // Block this thread and never return: the test kills the process. No
        // further step (a store write, a reply) may run after the point.
        loop {
            std::thread::park();
        }
    }
}
