//! Wall-clock instants as they cross a boundary: unix milliseconds (or
//! seconds) on the wire, in status documents and in stores; [`SystemTime`]
//! inside the programs.
//!
//! Every conversion of a received or stored number into an instant goes
//! through [`from_unix_ms`] / [`from_unix_secs`], which refuse anything after
//! [`LATEST_UNIX_MS`]. `UNIX_EPOCH + Duration::from_millis(ms)` panics when
//! the sum does not fit, and what fits depends on the platform: Windows'
//! `SystemTime` ends in the year 30828, so a tampered store or a hostile peer
//! could crash a Windows agent with a value Linux accepts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The latest instant regent turns into a [`SystemTime`]:
/// 9999-12-31T23:59:59.999Z, which every platform's `SystemTime` holds. A
/// later expiry is damage, not a real date.
pub const LATEST_UNIX_MS: u64 = 253_402_300_799_999;

/// Unix milliseconds as an instant; `None` past [`LATEST_UNIX_MS`].
pub fn from_unix_ms(ms: u64) -> Option<SystemTime> {
    if ms > LATEST_UNIX_MS {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

/// Unix seconds as an instant; `None` past [`LATEST_UNIX_MS`].
pub fn from_unix_secs(secs: u64) -> Option<SystemTime> {
    secs.checked_mul(1000).and_then(from_unix_ms)
}

/// An instant as unix milliseconds: 0 before 1970, saturating at `u64::MAX`.
pub fn to_unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `t + d`, or `None` when the sum passes [`LATEST_UNIX_MS`] (or does not fit).
pub fn checked_add(t: SystemTime, d: Duration) -> Option<SystemTime> {
    let sum = t.checked_add(d)?;
    (to_unix_ms(sum) <= LATEST_UNIX_MS).then_some(sum)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_latest_instant_is_the_end_of_year_9999() {
        let latest = from_unix_ms(LATEST_UNIX_MS).unwrap();
        assert_eq!(to_unix_ms(latest), LATEST_UNIX_MS);
        // 10000-01-01T00:00:00Z, one millisecond later.
        assert_eq!(LATEST_UNIX_MS + 1, 253_402_300_800_000);
    }

    /// These values once panicked a Windows agent (`UNIX_EPOCH + ms`); the
    /// helper refuses them on every platform.
    #[test]
    fn instants_past_the_bound_are_refused_not_panics() {
        for ms in [LATEST_UNIX_MS + 1, 1 << 62, u64::MAX - 1, u64::MAX] {
            assert_eq!(from_unix_ms(ms), None, "{ms}");
        }
        for secs in [LATEST_UNIX_MS / 1000 + 1, u64::MAX / 1000 + 1, u64::MAX] {
            assert_eq!(from_unix_secs(secs), None, "{secs}");
        }
        assert_eq!(
            from_unix_secs(1_700_000_000),
            from_unix_ms(1_700_000_000_000)
        );
        assert_eq!(from_unix_ms(0), Some(UNIX_EPOCH));
        let latest = from_unix_ms(LATEST_UNIX_MS).unwrap();
        assert_eq!(checked_add(latest, Duration::from_millis(1)), None);
        assert_eq!(checked_add(latest, Duration::MAX), None);
        assert_eq!(checked_add(UNIX_EPOCH, Duration::ZERO), Some(UNIX_EPOCH));
    }

    #[test]
    fn milliseconds_round_trip_and_saturate() {
        let t = from_unix_ms(1_790_000_000_123).unwrap();
        assert_eq!(to_unix_ms(t), 1_790_000_000_123);
        assert_eq!(to_unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
