//! Per-source-IP fixed-window rate limit for the token-issuing routes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use crate::RateLimit;
use crate::clock;

/// Forget idle windows once this many addresses are tracked.
const PRUNE_ABOVE: usize = 4096;

#[derive(Clone, Copy, Debug)]
struct Window {
    started: Instant,
    count: u32,
}

/// Request windows per source address. Windows use the monotonic clock: they
/// are not expiries, and must not jump with the wall clock.
#[derive(Debug, Default)]
pub(crate) struct RateLimiter {
    limit: Option<RateLimit>,
    windows: HashMap<IpAddr, Window>,
}

impl RateLimiter {
    pub(crate) fn new(limit: Option<RateLimit>) -> Self {
        Self {
            limit,
            windows: HashMap::new(),
        }
    }

    pub(crate) fn limit(&self) -> Option<RateLimit> {
        self.limit
    }

    /// Replaces the limit and starts every address afresh.
    pub(crate) fn set(&mut self, limit: Option<RateLimit>) {
        self.limit = limit;
        self.windows.clear();
    }

    /// Admits one request from `ip`, or returns the seconds (≥ 1) until its
    /// window ends.
    pub(crate) fn check(&mut self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        if self.windows.len() > PRUNE_ABOVE {
            self.windows
                .retain(|_, w| now.saturating_duration_since(w.started) < limit.per);
        }
        let window = self.windows.entry(ip).or_insert(Window {
            started: now,
            count: 0,
        });
        if now.saturating_duration_since(window.started) >= limit.per {
            *window = Window {
                started: now,
                count: 0,
            };
        }
        if window.count < limit.requests {
            window.count += 1;
            Ok(())
        } else {
            let left = limit
                .per
                .saturating_sub(now.saturating_duration_since(window.started));
            Err(clock::ceil_secs(left).max(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn admits_the_budget_then_refuses_until_the_window_ends() {
        let mut limiter = RateLimiter::new(Some(RateLimit {
            requests: 2,
            per: Duration::from_secs(10),
        }));
        let ip: IpAddr = [127, 0, 0, 1].into();
        let other: IpAddr = [127, 0, 0, 2].into();
        let t0 = Instant::now();
        assert!(limiter.check(ip, t0).is_ok());
        assert!(limiter.check(ip, t0).is_ok());
        assert_eq!(limiter.check(ip, t0 + Duration::from_millis(500)), Err(10));
        assert!(limiter.check(other, t0).is_ok(), "limits are per address");
        assert!(limiter.check(ip, t0 + Duration::from_secs(10)).is_ok());
    }

    #[test]
    fn off_admits_everything() {
        let mut limiter = RateLimiter::new(None);
        let ip: IpAddr = [127, 0, 0, 1].into();
        assert!((0..1000).all(|_| limiter.check(ip, Instant::now()).is_ok()));
    }
}
