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
//! | `before-refresh` | the write-ahead is stored and a renewal is about to be sent; nothing changed at the server |
//! | `after-refresh` | the server answered a renewal (a refresh token may have rotated); not stored |
//! | `mid-store-write` | an atomic file write (`state.json`, the file store): the temporary file is written and flushed, not yet renamed into place. A renewal makes two: the write-ahead, then the renewed credential |
//! | `mid-chunk-write` | a chunked keychain value: chunk N of the new generation written, the head entry not yet switched |
//!
//! The variable is read once per process. With it unset a point costs one
//! atomic load; points sit on enrollment, renewal and store-write paths only,
//! never on a handout.
//!
//! Only debug builds (`debug_assertions`, which `cargo build` and `cargo test`
//! use, and which the crash-matrix tests run) have crash points. In a release
//! build every point is an empty function and the variable is never read: an
//! environment that happens to set it cannot stop a production agent
//! mid-renewal (issue 18, item 14).

#[cfg(debug_assertions)]
use std::sync::OnceLock;
#[cfg(debug_assertions)]
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

/// Whether this build has crash points (debug builds only).
pub const ENABLED: bool = cfg!(debug_assertions);

/// The armed point and at which hit it stops.
#[cfg(debug_assertions)]
struct Armed {
    name: String,
    nth: u64,
}

#[cfg(debug_assertions)]
static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
/// How often the armed point was reached so far.
#[cfg(debug_assertions)]
static HITS: AtomicU64 = AtomicU64::new(0);

#[cfg(debug_assertions)]
fn armed() -> Option<&'static Armed> {
    ARMED
        .get_or_init(|| parse(&std::env::var(CRASH_POINT_ENV).ok()?))
        .as_ref()
}

/// `NAME` (the first hit) or `NAME@N` (the N-th, from 1); anything else arms nothing.
#[cfg(debug_assertions)]
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
#[cfg(debug_assertions)]
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

/// Release builds: no crash points; the environment is never read.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn crash_point_with(_name: &str, _detail: impl FnOnce() -> String) {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// The point the child test reaches with the variable set.
    const PROBE: &str = "probe-point";

    /// Runs only as the child of the test below (the variable set): reaches
    /// an armed point, then says it went past it.
    #[test]
    fn child_reaches_an_armed_point() {
        if std::env::var(CRASH_POINT_ENV).ok().as_deref() != Some(PROBE) {
            return; // Not the child.
        }
        crash_point(PROBE);
        eprintln!("regent: went past {PROBE}");
    }

    /// A debug build stops at an armed point and says so; a release build
    /// (`cargo test --release`) never reads the variable and goes past it.
    #[test]
    fn an_armed_point_stops_only_a_debug_build() {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash::tests::child_reaches_an_armed_point",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_POINT_ENV, PROBE)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (lines_tx, lines_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    return;
                }
            }
        });
        let wanted = if ENABLED {
            format!("regent: crash point {PROBE} reached")
        } else {
            format!("regent: went past {PROBE}")
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        let found = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(left) {
                Ok(line) if line.contains(&wanted) => break true,
                Ok(line) => seen.push(line),
                Err(_) => break false,
            }
        };
        // A debug child is parked at the point for good: stop it.
        let _ = child.kill();
        let _ = child.wait();
        assert!(found, "{wanted:?} never printed; the child said: {seen:#?}");
        assert_eq!(ENABLED, cfg!(debug_assertions));
    }

    #[cfg(debug_assertions)]
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
