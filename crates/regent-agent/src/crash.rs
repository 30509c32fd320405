//! Named crash points, so tests can kill the agent at an exact step of
//! enrollment or renewal (DESIGN §5 crash safety).
//!
//! When `REGENT_CRASH_POINT` names a point, the process announces it on stderr
//! (`regent: crash point NAME reached`, plus what it was doing) and stops there
//! for good, waiting for the test to SIGKILL it. `NAME@N` stops at the N-th time
//! the point is reached instead of the first (`mid-store-write@3`: the third
//! atomic file write since start).
//!
//! The points are the [`CrashPoint`] enum, so a call site cannot name one that
//! does not exist; a value of the variable that names no point is refused when
//! the agent starts ([`check_env`]), naming the known ones, instead of silently
//! never firing.
//!
//! The variable is read once per process. With it unset a point costs one
//! atomic load; points sit on enrollment, renewal and store-write paths only,
//! never on a handout.
//!
//! Only builds with the `crash-points` cargo feature have crash points (the
//! workspace's tests enable it through `tests/Cargo.toml`; `cargo build -p
//! regent-cli --features crash-points` for a binary of your own). Release
//! builds leave it out: every point is an empty function and the variable is
//! never acted on, so an environment that happens to set it cannot stop a
//! production agent mid-renewal (issue 18, item 14).

use regent_proto::ErrorCode;

use crate::error::{Error, Result};

/// The environment variable that arms a crash point.
pub const CRASH_POINT_ENV: &str = "REGENT_CRASH_POINT";

macro_rules! crash_points {
    ($($(#[doc = $doc:literal])* $point:ident = $name:literal,)*) => {
        /// A step of enrollment, renewal or a store write where a test may
        /// stop the agent.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum CrashPoint {
            $($(#[doc = $doc])* $point,)*
        }

        impl CrashPoint {
            /// Every crash point, for tests and documentation.
            pub const ALL: &[CrashPoint] = &[$(CrashPoint::$point,)*];

            /// The name `REGENT_CRASH_POINT` uses.
            pub fn name(self) -> &'static str {
                match self {
                    $(CrashPoint::$point => $name,)*
                }
            }
        }
    };
}

crash_points! {
    /// Marker, identifier and registration token durable; nothing sent.
    BeforeRedeem = "before-redeem",
    /// The server answered the redemption; nothing stored.
    AfterRedeem = "after-redeem",
    /// The credential is stored; the pending marker is not cleared.
    AfterStore = "after-store",
    /// The write-ahead is stored and a renewal is about to be sent; nothing
    /// changed at the server.
    BeforeRefresh = "before-refresh",
    /// The server answered a renewal (a refresh token may have rotated); not
    /// stored.
    AfterRefresh = "after-refresh",
    /// An atomic file write (`state.json`, the file store): the temporary
    /// file is written and flushed, not yet renamed into place. A renewal
    /// makes two: the write-ahead, then the renewed credential.
    MidStoreWrite = "mid-store-write",
    /// A chunked keychain value: chunk N of the new generation written, the
    /// head entry not yet switched.
    MidChunkWrite = "mid-chunk-write",
}

impl std::str::FromStr for CrashPoint {
    type Err = Error;

    fn from_str(name: &str) -> Result<CrashPoint> {
        CrashPoint::ALL
            .iter()
            .copied()
            .find(|p| p.name() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = CrashPoint::ALL.iter().map(|p| p.name()).collect();
                Error::new(
                    ErrorCode::Config,
                    format!(
                        "{CRASH_POINT_ENV}={name:?} names no crash point; the known ones are {} \
                         (NAME or NAME@N, N from 1)",
                        known.join(", ")
                    ),
                )
            })
    }
}

/// Whether this build has crash points (the `crash-points` feature).
pub const ENABLED: bool = cfg!(feature = "crash-points");

/// The armed point and at which hit it stops.
#[derive(Debug, PartialEq, Eq)]
struct Armed {
    point: CrashPoint,
    nth: u64,
}

/// `NAME` (the first hit) or `NAME@N` (the N-th, from 1).
fn parse(value: &str) -> Result<Armed> {
    let (name, nth) = match value.split_once('@') {
        Some((name, nth)) => {
            let nth = nth.parse::<u64>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                Error::new(
                    ErrorCode::Config,
                    format!(
                        "{CRASH_POINT_ENV}={value:?}: the hit number after @ must be a whole \
                         number from 1"
                    ),
                )
            })?;
            (name, nth)
        }
        None => (value, 1),
    };
    Ok(Armed {
        point: name.parse()?,
        nth,
    })
}

/// Refuses a `REGENT_CRASH_POINT` that arms nothing (a typo, an unknown
/// name), so a crash test cannot wait for a point that never fires. Called
/// when the agent starts. A build without crash points only warns that the
/// variable is ignored.
///
/// # Errors
/// `CONFIG` naming the value and the known points.
pub fn check_env() -> Result<()> {
    let Ok(value) = std::env::var(CRASH_POINT_ENV) else {
        return Ok(());
    };
    if !ENABLED {
        tracing::warn!(
            "{CRASH_POINT_ENV} is set but this build has no crash points \
             (the crash-points feature); it is ignored"
        );
        return Ok(());
    }
    parse(&value).map(drop)
}

#[cfg(feature = "crash-points")]
mod armed {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::{Armed, CRASH_POINT_ENV, CrashPoint, parse};

    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    /// How often the armed point was reached so far.
    static HITS: AtomicU64 = AtomicU64::new(0);

    /// Whether this hit of `point` is the armed one. A value [`super::check_env`]
    /// refuses arms nothing.
    pub(super) fn stops_at(point: CrashPoint) -> bool {
        let armed = ARMED.get_or_init(|| parse(&std::env::var(CRASH_POINT_ENV).ok()?).ok());
        armed.as_ref().is_some_and(|armed| {
            armed.point == point && HITS.fetch_add(1, Ordering::Relaxed) + 1 == armed.nth
        })
    }
}

/// Stops here forever when `REGENT_CRASH_POINT` arms `point` (and this is the
/// armed hit).
pub fn crash_point(point: CrashPoint) {
    crash_point_with(point, String::new);
}

/// Like [`crash_point`], announcing `detail()` (what was being done, never a
/// secret) after the name. `detail` only runs when the point stops.
#[cfg(feature = "crash-points")]
pub fn crash_point_with(point: CrashPoint, detail: impl FnOnce() -> String) {
    if !armed::stops_at(point) {
        return;
    }
    let name = point.name();
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

/// Builds without the `crash-points` feature: no crash points.
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub fn crash_point_with(_point: CrashPoint, _detail: impl FnOnce() -> String) {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// The point the child test reaches with the variable set.
    const PROBE: CrashPoint = CrashPoint::AfterRedeem;

    /// Runs only as the child of the test below (the variable set): reaches
    /// an armed point, then says it went past it.
    #[test]
    fn child_reaches_an_armed_point() {
        if std::env::var(CRASH_POINT_ENV).ok().as_deref() != Some(PROBE.name()) {
            return; // Not the child.
        }
        crash_point(PROBE);
        eprintln!("regent: went past {}", PROBE.name());
    }

    /// A build with the `crash-points` feature stops at an armed point and
    /// says so; one without goes past it.
    #[test]
    fn an_armed_point_stops_only_a_build_with_crash_points() {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash::tests::child_reaches_an_armed_point",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_POINT_ENV, PROBE.name())
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
            format!("regent: crash point {} reached", PROBE.name())
        } else {
            format!("regent: went past {}", PROBE.name())
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
        assert_eq!(ENABLED, cfg!(feature = "crash-points"));
    }

    #[test]
    fn names_and_hit_numbers_parse() {
        let armed = |v: &str| parse(v).map(|a| (a.point, a.nth)).ok();
        assert_eq!(armed("after-redeem"), Some((CrashPoint::AfterRedeem, 1)));
        assert_eq!(
            armed("mid-store-write@3"),
            Some((CrashPoint::MidStoreWrite, 3))
        );
        assert_eq!(armed("mid-store-write@0"), None);
        assert_eq!(armed("mid-store-write@x"), None);
        assert_eq!(armed(""), None);
        assert_eq!(armed("@2"), None);
        for point in CrashPoint::ALL {
            assert_eq!(armed(point.name()), Some((*point, 1)));
        }
    }

    /// A typo names no point: refused, naming the known ones, rather than a
    /// test waiting for a point that never fires.
    #[test]
    fn an_unknown_name_is_refused_naming_the_known_ones() {
        let e = parse("after-redem").unwrap_err();
        assert_eq!(e.code, ErrorCode::Config);
        assert!(e.message.contains("\"after-redem\""), "{}", e.message);
        for point in CrashPoint::ALL {
            assert!(e.message.contains(point.name()), "{}", e.message);
        }
    }

    #[test]
    fn an_unarmed_point_returns() {
        // The test process never arms a point: every call passes through.
        for point in CrashPoint::ALL {
            crash_point(*point);
            crash_point_with(*point, || {
                unreachable!("detail is only built when stopping")
            });
        }
    }
}
