//! Wall-clock helpers. Every expiry in the emulator is a wall-clock instant, and
//! none of these helpers panics, whatever the system clock says.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime, PrimitiveDateTime, UtcOffset};

/// The current wall-clock time in UTC.
pub(crate) fn now() -> OffsetDateTime {
    let nanos = match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => i128::try_from(since.as_nanos()).unwrap_or(i128::MAX),
        Err(before) => i128::try_from(before.duration().as_nanos())
            .map(|n| -n)
            .unwrap_or(i128::MIN),
    };
    OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or_else(|_| {
        if nanos < 0 {
            PrimitiveDateTime::MIN.assume_utc()
        } else {
            latest()
        }
    })
}

/// The latest representable instant; "never expires" in practice.
pub(crate) fn latest() -> OffsetDateTime {
    PrimitiveDateTime::MAX.assume_utc()
}

/// `t + d`, saturating at [`latest`] instead of overflowing.
pub(crate) fn after(t: OffsetDateTime, d: Duration) -> OffsetDateTime {
    time::Duration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d))
        .unwrap_or_else(latest)
}

/// Whole seconds from `now` until `t`, rounded down (never overstates validity);
/// 0 once `t` has passed.
pub(crate) fn secs_until_floor(now: OffsetDateTime, t: OffsetDateTime) -> u64 {
    let left = t - now;
    if left.is_negative() {
        0
    } else {
        u64::try_from(left.whole_seconds()).unwrap_or(0)
    }
}

/// Whole seconds from `now` until `t`, rounded up (for `Retry-After`); 0 once
/// `t` has passed.
pub(crate) fn secs_until_ceil(now: OffsetDateTime, t: OffsetDateTime) -> u64 {
    let left = t - now;
    if !left.is_positive() {
        return 0;
    }
    let whole = u64::try_from(left.whole_seconds()).unwrap_or(0);
    if left.subsec_nanoseconds() > 0 {
        whole.saturating_add(1)
    } else {
        whole
    }
}

/// A [`Duration`] in whole seconds, rounded up.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

/// RFC 3339 text in UTC, to the second (`2026-11-30T23:59:59Z`).
pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    let utc = t.checked_to_offset(UtcOffset::UTC).unwrap_or(t);
    utc.replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| utc.unix_timestamp().to_string())
}

/// Parses an admin-supplied expiry: RFC 3339, or a bare `YYYY-MM-DD` meaning the
/// end of that day (23:59:59 UTC), so the date named is the last valid day.
pub(crate) fn parse_expiry(text: &str) -> Result<OffsetDateTime, String> {
    let text = text.trim();
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t.checked_to_offset(UtcOffset::UTC).unwrap_or(t));
    }
    let day = Date::parse(text, format_description!("[year]-[month]-[day]")).map_err(|_| {
        format!("expiryDate '{text}' is neither RFC 3339 (2026-11-30T12:00:00Z) nor YYYY-MM-DD")
    })?;
    day.with_hms(23, 59, 59)
        .map(PrimitiveDateTime::assume_utc)
        .map_err(|e| format!("expiryDate '{text}': {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_only_expiry_is_the_end_of_that_day() {
        let t = parse_expiry("2026-11-30").unwrap();
        assert_eq!(rfc3339(t), "2026-11-30T23:59:59Z");
    }

    #[test]
    fn rfc3339_expiry_is_normalised_to_utc() {
        let t = parse_expiry("2026-11-30T12:00:00+02:00").unwrap();
        assert_eq!(rfc3339(t), "2026-11-30T10:00:00Z");
    }

    #[test]
    fn garbage_expiry_is_refused_with_the_accepted_forms() {
        let err = parse_expiry("next tuesday").unwrap_err();
        assert!(err.contains("YYYY-MM-DD"), "{err}");
        assert!(parse_expiry("2026-02-30").is_err());
    }

    #[test]
    fn adding_huge_durations_saturates() {
        assert_eq!(after(now(), Duration::MAX), latest());
        assert_eq!(rfc3339(latest()), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn remaining_seconds_round_in_the_safe_direction() {
        let t0 = now();
        let t1 = after(t0, Duration::from_millis(1500));
        assert_eq!(secs_until_floor(t0, t1), 1);
        assert_eq!(secs_until_ceil(t0, t1), 2);
        assert_eq!(secs_until_floor(t1, t0), 0);
        assert_eq!(secs_until_ceil(t1, t0), 0);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(3)), 3);
    }
}
