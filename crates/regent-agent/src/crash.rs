//! Named crash points, so tests can kill the agent at an exact step of
//! enrollment or renewal (DESIGN §5 crash safety).
//!
//! When `REGENT_CRASH_POINT` names a point, the process announces it on stderr
//! (`regent: crash point NAME reached`, plus what it was doing) and stops there
//! for good, waiting for the test to SIGKILL it. `NAME@N` stops at the N-th time
//! the point is reached instead of the first (`mid-store-write@3`: the third
//! atomic file write since start).
//!
//! | point | where |
//! |---|---|
//! | `before-redeem` | marker, identifier and registration token durable; nothing sent |
//! | `after-redeem` | the server answered the redemption; nothing stored |
//! | `after-store` | the credential is stored; the pending marker is not cleared |
//! | `before-refresh` | a renewal is about to be sent; nothing changed at the server |
//! | `after-refresh` | the server answered a renewal (a refresh token may have rotated); not stored |
//! | `mid-store-write` | an atomic file write (`state.json`, the file store): the temporary file is written and flushed, not yet renamed into place |
//! | `mid-chunk-write` | a chunked keychain value: chunk N of the new generation written, the head entry not yet switched |
//!
//! The variable is read once per process. With it unset a point costs one
//! atomic load; points sit on enrollment, renewal and store-write paths only,
//! never on a handout.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that arms a crash point.
pub const CRASH_POINT_ENV: &str = "REGENT_CRASH_POINT";

/// Every crash point, for tests and documentation.
pub const CRASH_POINTS: &[&str] = &[
    "before-redeem",
    "after-redeem",
    "after-store",
    "before-refresh",
    "after-refresh",
    "mid-store-write",
    "mid-chunk-write",
];

/// The armed point and at which hit it stops.
struct Armed {
    name: String,
    nth: u64,
}

static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
/// How often the armed point was reached so far.
static HITS: AtomicU64 = AtomicU64::new(0);

fn armed() -> Option<&'static Armed> {
    ARMED
        .get_or_init(|| parse(&std::env::var(CRASH_POINT_ENV).ok()?))
        .as_ref()
}

/// `NAME` (the first hit) or `NAME@N` (the N-th, from 1); anything else arms nothing.
fn parse(value: &str) -> Option<Armed> {
    let (name, nth) = match value.split_once('@') {
        Some((name, nth)) => (name, nth.parse::<u64>().ok().filter(|n| *n >= 1)?),
        None => (value, 1),
    };
    (!name.is_empty()).then(|| Armed {
        name: name.to_owned(),
        nth,
    })
}

/// Stops here forever when `REGENT_CRASH_POINT` arms `name` (and this is the
/// armed hit).
pub fn crash_point(name: &str) {
    crash_point_with(name, String::new);
}

/// Like [`crash_point`], announcing `detail()` (what was being done, never a
/// secret) after the name. `detail` only runs when the point stops.
pub fn crash_point_with(name: &str, detail: impl FnOnce() -> String) {
    let Some(armed) = armed() else {
        return;
    };
    if armed.name != name || HITS.fetch_add(1, Ordering::Relaxed) + 1 != armed.nth {
        return;
    }
    let detail = detail();
    if detail.is_empty() {
        eprintln!("regent: crash point {name} reached");
    } else {
        eprintln!("regent: crash point {name} reached ({detail})");
    }
    // Block this thread and never return: the test kills the process. No
    // further step (a store write, a reply) may run after the point.
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_hit_numbers_parse() {
        let armed = |v: &str| parse(v).map(|a| (a.name, a.nth));
        assert_eq!(armed("after-redeem"), Some(("after-redeem".into(), 1)));
        assert_eq!(
            armed("mid-store-write@3"),
            Some(("mid-store-write".into(), 3))
        );
        assert_eq!(armed("mid-store-write@0"), None);
        assert_eq!(armed("mid-store-write@x"), None);
        assert_eq!(armed(""), None);
        assert_eq!(armed("@2"), None);
    }

    #[test]
    fn an_unarmed_point_returns() {
        // The test process never arms a point: every call passes through.
        for name in CRASH_POINTS {
            crash_point(name);
            crash_point_with(name, || unreachable!("detail is only built when stopping"));
        }
    }
}
