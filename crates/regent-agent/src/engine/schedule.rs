//! The schedule: when to renew next (refresh ahead with jitter, demand,
//! keep-alive, backoff) and the scheduler task that sleeps until then.

use super::demand::spacing_floor;
use super::*;

/// Renewal at `ahead` of the lifetime, ± `jitter` of that point, so a fleet does
/// not renew in the same second.
pub(super) fn jittered_renewal_point(grant: &Grant, settings: &EngineSettings) -> SystemTime {
    let spread = (rand::random::<f64>() * 2.0 - 1.0) * settings.jitter;
    let fraction = (settings.ahead * (1.0 + spread)).clamp(0.05, 0.99);
    grant.received_at + grant.lifetime().mul_f64(fraction)
}

/// The renewal point of the first grant fetched after a start, an enrollment
/// or an outage: anywhere in one whole period (`ahead` of the lifetime) that
/// begins where demand may first renew (`min_spacing`, or `ahead × jitter`
/// when that is later). A fleet that started, or saw its server come back,
/// in the same instant then renews spread evenly over the period from its
/// second renewal on; ± `jitter` alone kept the herd's shape for many periods
/// (the fleet simulation measured peak/mean 2.5 after five). Only this one
/// renewal moves, so the steady-state rate does not change. Safe however
/// late it falls: with demand, the renewal is also due once the token would
/// drop below what clients ask (`plan`), and without demand the point is not
/// used (the keep-alive is).
pub(super) fn spread_renewal_point(grant: &Grant, settings: &EngineSettings) -> SystemTime {
    let earliest = (settings.ahead * settings.jitter)
        .max(settings.min_spacing)
        .clamp(0.05, 0.99);
    let latest = (earliest + settings.ahead).min(0.99);
    let fraction = earliest + rand::random::<f64>() * (latest - earliest);
    grant.received_at + grant.lifetime().mul_f64(fraction)
}

/// Exponential backoff (`backon`) with full jitter, never sooner than the
/// server's `Retry-After`.
pub(super) fn backoff_delay(
    settings: &EngineSettings,
    failures: u32,
    retry_after: Option<Duration>,
) -> Duration {
    let ceiling = ExponentialBuilder::default()
        .with_min_delay(settings.backoff_min)
        .with_max_delay(settings.backoff_max)
        .with_factor(2.0)
        .without_max_times()
        .build()
        .nth(failures.saturating_sub(1) as usize)
        .unwrap_or(settings.backoff_max);
    let floor = settings.backoff_min / 10;
    let jittered = ceiling.mul_f64(rand::random::<f64>()).max(floor);
    jittered.max(retry_after.unwrap_or_default())
}

/// A bound on durations added to a clock: any `min_valid` a client asks for,
/// and any setting, stays far below what `SystemTime` and `Duration` can hold
/// (an unbounded one panicked the scheduler; found while fuzzing the IPC decoder).
pub(super) const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// When the scheduler should next call upstream; `None` when it has nothing to do.
pub(super) fn next_due(inner: &mut Inner, now: SystemTime, mono: Instant) -> Option<SystemTime> {
    plan(inner, now, mono).map(|(at, _)| at)
}

/// When the scheduler should next call upstream, and why.
pub(super) fn plan(
    inner: &mut Inner,
    now: SystemTime,
    mono: Instant,
) -> Option<(SystemTime, RenewalReason)> {
    if inner.renewer.is_none() || inner.shutdown {
        return None;
    }
    if matches!(inner.state, SlotState::Revoked | SlotState::Enrolling) {
        return None;
    }
    let (due, why) = match inner.grant.as_deref() {
        None => (now, RenewalReason::FirstToken),
        Some(grant) => {
            let demand = inner.demand.recent(mono, inner.settings.demand_window);
            let lifetime = grant.lifetime();
            match demand {
                Some(min_valid) => {
                    let margin = inner.settings.margin.min(lifetime / 10);
                    let latest = grant
                        .expires_at
                        .checked_sub(min_valid.saturating_add(margin))
                        .unwrap_or(grant.received_at);
                    let planned = inner.renew_at.unwrap_or(latest);
                    // Demand is clamped to what the lifetime can serve: never
                    // plan renewals closer together than `min_spacing` of it.
                    // Requests for more get UNAVAILABLE, not a spinning agent.
                    let due = planned
                        .min(latest)
                        .max(spacing_floor(grant, &inner.settings));
                    (due, RenewalReason::Demand)
                }
                None => {
                    let last = inner.last_renewal.unwrap_or(grant.received_at);
                    let keepalive = last + inner.settings.keepalive.min(FAR_FUTURE);
                    let before_refresh_expiry = grant.refresh_expires_at.map(|refresh_expires| {
                        let life = refresh_expires
                            .duration_since(grant.received_at)
                            .unwrap_or_default();
                        grant.received_at + life.mul_f64(inner.settings.ahead)
                    });
                    match before_refresh_expiry {
                        Some(due) if due < keepalive => (due, RenewalReason::RefreshTokenExpiry),
                        _ => (keepalive, RenewalReason::KeepAlive),
                    }
                }
            }
        }
    };
    Some(match inner.not_before {
        Some(nb) if nb > due => (nb, RenewalReason::Retry),
        _ => (due, why),
    })
}

pub(super) async fn scheduler(weak: Weak<Shared>) {
    loop {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let due = {
            let mut inner = shared.lock();
            if inner.shutdown {
                return;
            }
            next_due(&mut inner, SystemTime::now(), Instant::now())
        };
        let now = SystemTime::now();
        match due {
            Some(at) if at <= now => {
                let engine = Engine {
                    shared: Arc::clone(&shared),
                };
                let _flight = shared.renew_lock.lock().await;
                // Re-check: a request may have renewed while we waited.
                let still_due = {
                    let mut inner = shared.lock();
                    next_due(&mut inner, SystemTime::now(), Instant::now())
                        .is_some_and(|at| at <= SystemTime::now())
                };
                if still_due {
                    engine.renew_locked().await;
                }
            }
            Some(at) => {
                let wait = at.duration_since(now).unwrap_or_default().min(MAX_SLEEP);
                // The strong reference is held for at most MAX_SLEEP, so a
                // dropped engine's scheduler ends soon after.
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shared.wake.notified() => {}
                }
            }
            None => {
                // Even with nothing due, wake now and then: the engine may have
                // been dropped, and demand windows expire.
                tokio::select! {
                    () = tokio::time::sleep(MAX_SLEEP) => {}
                    () = shared.wake.notified() => {}
                }
            }
        }
    }
}
