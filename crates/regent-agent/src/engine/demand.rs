//! Demand: which `min_valid` recent requests and live subscriptions need,
//! and what a request may ask of upstream (spacing, lifetime).

use super::*;

#[derive(Default)]
pub(super) struct Demand {
    window_start: Option<Instant>,
    current_max: Duration,
    previous_max: Duration,
    last_request: Option<Instant>,
    /// Live subscriptions: how many ask for each `min_valid`. Ordered, so the
    /// largest is found without visiting them all (every handout asks).
    pub(super) subscribers: BTreeMap<Duration, usize>,
}

impl Demand {
    pub(super) fn roll(&mut self, now: Instant, window: Duration) {
        match self.window_start {
            Some(start) if now.duration_since(start) < window => {}
            Some(start) if now.duration_since(start) < window.saturating_mul(2) => {
                self.previous_max = self.current_max;
                self.current_max = Duration::ZERO;
                self.window_start = Some(now);
            }
            _ => {
                self.previous_max = Duration::ZERO;
                self.current_max = Duration::ZERO;
                self.window_start = Some(now);
            }
        }
    }

    /// The largest `min_valid` asked for recently, and whether anyone is asking.
    pub(super) fn recent(&mut self, now: Instant, window: Duration) -> Option<Duration> {
        self.roll(now, window);
        let subscribed = self.subscribers.keys().next_back().copied();
        let requested = self
            .last_request
            .filter(|t| now.duration_since(*t) < window)
            .map(|_| self.current_max.max(self.previous_max));
        match (subscribed, requested) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or_default().max(b.unwrap_or_default())),
        }
    }
}

/// Keeps a `min_valid` demand registered (a subscription) until dropped.
#[derive(Debug)]
pub struct DemandGuard {
    pub(super) shared: Weak<Shared>,
    pub(super) min_valid: Duration,
}

impl Drop for DemandGuard {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            let mut inner = shared.lock();
            let subscribers = &mut inner.demand.subscribers;
            if let Some(count) = subscribers.get_mut(&self.min_valid) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    subscribers.remove(&self.min_valid);
                }
            }
        }
    }
}

/// Records a request's `min_valid`; true when it raised the standing demand (the
/// scheduler must then renew earlier than planned).
pub(super) fn note_demand(inner: &mut Inner, min_valid: Duration) -> bool {
    let now = Instant::now();
    let window = inner.settings.demand_window;
    let before = inner.demand.recent(now, window);
    inner.demand.last_request = Some(now);
    inner.demand.current_max = inner.demand.current_max.max(min_valid);
    before.is_none_or(|b| min_valid > b)
}

/// The earliest a renewal may follow the current grant: `min_spacing` of its
/// lifetime after it was received. Scheduled renewals and renewals forced by
/// requests alike, so no client can make the agent call upstream more often
/// than this, whatever `min_valid` it asks for (issue 18, item 5).
pub(super) fn spacing_floor(grant: &Grant, settings: &EngineSettings) -> SystemTime {
    grant.received_at
        + grant
            .lifetime()
            .mul_f64(settings.min_spacing.clamp(0.0, 1.0))
}

/// Whether a request that the cache cannot satisfy may call upstream now.
/// `Err(UNAVAILABLE)` with `retry_after` when it may not: the current token
/// could have served it when new, and its renewal is more recent than the
/// spacing allows. A token that never could (shorter than `min_valid` from
/// the start, e.g. a re-issued one) does not hold the request back: one call
/// shows what a fresh token gives, and if that is still too short
/// `renew_locked` holds every request until the renewal point.
pub(super) fn demand_may_renew(inner: &Inner, min_valid: Duration, now: SystemTime) -> Result<()> {
    let Some(grant) = inner.grant.as_deref() else {
        return Ok(());
    };
    if grant.lifetime() <= min_valid {
        return Ok(());
    }
    let floor = spacing_floor(grant, &inner.settings);
    if floor > now {
        return Err(Error::new(
            ErrorCode::Unavailable,
            format!(
                "no token valid for {}s is available now: the current token has {}s left and the last renewal was too recent to renew again (renewals are at least {}s apart, [refresh] min_spacing); retry later or ask for less",
                min_valid.as_secs(),
                grant.remaining(now).as_secs(),
                floor.duration_since(grant.received_at).unwrap_or_default().as_secs()
            ),
        )
        .with_retry_after(floor.duration_since(now).unwrap_or_default().max(Duration::from_millis(100))));
    }
    Ok(())
}

/// A request for at least as long as the server's tokens last (the lifetime
/// of the last newly issued token, `Inner::issued_lifetime`) can never be
/// served, and retrying cannot
/// help: `BAD_REQUEST` naming the lifetime and what to ask for instead, with
/// no upstream call (asking again for the same 20-second token would not
/// make it longer). Half the lifetime is what the agent keeps on hand even
/// when renewals are spaced ([`demand_may_renew`]).
pub(super) fn beyond_lifetime(inner: &Inner, min_valid: Duration) -> Option<Error> {
    let lifetime = inner.issued_lifetime?;
    if min_valid < lifetime {
        return None;
    }
    // The lifetime is counted from when the agent received the token, a few
    // milliseconds under what the server grants: name the server's figure.
    let seconds = lifetime.as_millis().div_ceil(1000);
    let suggest = (seconds / 2).max(1);
    Some(Error::new(
        ErrorCode::BadRequest,
        format!(
            "this license server issues tokens valid for {seconds}s, so none can stay valid for {}s: ask for {suggest}s or less (`regent token --min-valid {suggest}`, or min_valid in the library call)",
            min_valid.as_secs(),
        ),
    ))
}

/// The error for a request the cache cannot satisfy.
pub(super) fn unavailable(
    inner: &Inner,
    min_valid: Duration,
    retry_at: SystemTime,
    now: SystemTime,
) -> Error {
    let retry_after = retry_at
        .duration_since(now)
        .unwrap_or_default()
        .max(Duration::from_millis(100));
    if let Some(e) = &inner.last_error {
        if !e.is_retryable() {
            return e.clone();
        }
        let has_token = inner
            .grant
            .as_ref()
            .is_some_and(|g| g.remaining(now) > Duration::ZERO);
        if !has_token
            && matches!(
                e.code,
                ErrorCode::TokenLimit | ErrorCode::RateLimited | ErrorCode::StoreUnavailable
            )
        {
            // No token at all because of a cap, a rate limit or a store that
            // cannot keep the renewed credential: say so.
            return e
                .clone()
                .with_retry_after(e.retry_after.unwrap_or_default().max(retry_after));
        }
        return Error::new(
            ErrorCode::Unavailable,
            format!(
                "no token valid for {}s is available: the last renewal failed ({}: {})",
                min_valid.as_secs(),
                e.code,
                e.message
            ),
        )
        .with_retry_after(e.retry_after.unwrap_or_default().max(retry_after));
    }
    let remaining = inner
        .grant
        .as_ref()
        .map(|g| g.remaining(now).as_secs())
        .unwrap_or(0);
    Error::new(
        ErrorCode::Unavailable,
        format!(
            "no token valid for {}s is available: the current token has {remaining}s left and the license server cannot issue a longer one yet",
            min_valid.as_secs()
        ),
    )
    .with_retry_after(retry_after)
}
