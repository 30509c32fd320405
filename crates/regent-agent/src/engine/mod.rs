//! One token engine per slot (DESIGN §4): refresh ahead with jitter, single-flight,
//! backoff, permanent-failure classification and wall-clock expiry checks.
//!
//! The engine knows nothing of HTTP or storage: a [`Renewer`] gets it a new
//! [`Grant`] (and persists whatever must survive a crash before returning). The
//! engine decides *when* to call it and *who* may share the answer.
//!
//! - A scheduler task renews ahead of expiry while there is demand (a recent
//!   request or a live subscription), and otherwise only keeps the credential
//!   alive. It sleeps in short chunks and recomputes against the wall clock, so a
//!   suspended laptop or a clock jump re-arms the timer.
//! - Requests that the cache cannot satisfy queue on one async lock; the first
//!   calls upstream, the others see that an attempt completed while they waited
//!   and share its outcome instead of calling again. Every completed attempt
//!   also wakes all of them at once to re-check the cache, so thousands of
//!   waiters are answered together rather than one lock hand-off at a time;
//!   and a successful attempt whose token aged below a waiter's `min_valid`
//!   before that waiter ran (a busy agent) is renewed again, one call at a
//!   time, instead of answered `UNAVAILABLE`.
//! - Demand never sets the upstream rate: a renewal, scheduled or forced by
//!   a request, follows the current token's receipt no sooner than
//!   `min_spacing` of its lifetime; requests the cache cannot satisfy before
//!   then get `UNAVAILABLE` with `retry_after` (never a spin).

mod demand;
mod schedule;
mod settings;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use regent_proto::ErrorCode;
use tokio::sync::{Notify, broadcast};

use crate::config::RefreshConfig;
use crate::error::{Error, Result};
use crate::grant::Grant;

pub use self::demand::DemandGuard;
use self::demand::{Demand, beyond_lifetime, demand_may_renew, note_demand, unavailable};
use self::schedule::{
    FAR_FUTURE, backoff_delay, jittered_renewal_point, plan, scheduler, spread_renewal_point,
};
pub use self::settings::EngineSettings;

/// A boxed, sendable future (the [`Renewer`] trait stays object-safe).
pub use crate::upstream::BoxFuture;

/// Gets a fresh grant from upstream. Implementations persist rotated secrets
/// before returning, so a grant the engine receives is already crash-safe.
pub trait Renewer: Send + Sync + 'static {
    /// One upstream renewal.
    fn renew(&self) -> BoxFuture<'_, Result<Grant>>;

    /// Stores a renewed credential that the store refused earlier and that is
    /// still held in memory (called at shutdown); `Ok` when there is none.
    fn save_unsaved(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

pub use regent_proto::status::{RenewalReason, SlotState};

/// Something subscribers hear about.
#[derive(Debug, Clone)]
pub enum Event {
    /// The state changed; `error` says why when it was a failure.
    State {
        /// Previous state.
        from: SlotState,
        /// New state.
        to: SlotState,
        /// The failure behind the change, if any.
        error: Option<Error>,
    },
    /// A renewal produced a token valid until `expires_at`.
    Renewed {
        /// When the new token expires.
        expires_at: SystemTime,
    },
}

/// A point-in-time view of the engine, for status output.
#[derive(Debug, Clone)]
pub struct EngineStatus {
    /// Current state.
    pub state: SlotState,
    /// When the cached access token expires.
    pub expires_at: Option<SystemTime>,
    /// When the scheduler will next call upstream (if it knows).
    pub next_renewal: Option<SystemTime>,
    /// Why it will (with `next_renewal`).
    pub next_renewal_reason: Option<RenewalReason>,
    /// When the last successful renewal happened.
    pub last_renewal: Option<SystemTime>,
    /// The last failure, kept until a renewal succeeds.
    pub last_error: Option<Error>,
    /// Consecutive transient failures.
    pub failures: u32,
    /// Successful upstream renewals since start.
    pub renewals_ok: u64,
    /// Failed upstream renewals since start.
    pub renewals_failed: u64,
    /// Tokens handed out since start.
    pub handouts: u64,
}

/// Longest single sleep of the scheduler: after it, deadlines are recomputed
/// against the wall clock (suspend, clock jumps).
const MAX_SLEEP: Duration = Duration::from_secs(5);
/// After a re-issued (unchanged) token, ask again this long after it expires.
const REISSUE_GRACE: Duration = Duration::from_millis(250);

/// One slot's token engine. Cheap to clone; the scheduler stops when the last
/// clone is dropped or [`Engine::shutdown`] is called.
#[derive(Clone, Debug)]
pub struct Engine {
    shared: Arc<Shared>,
}

struct Shared {
    inner: Mutex<Inner>,
    /// Held for the whole of an upstream call: one in flight per slot.
    renew_lock: tokio::sync::Mutex<()>,
    wake: Notify,
    /// Woken (all waiters) whenever an upstream attempt completes or a
    /// credential is installed: requests queued for a token re-check the cache.
    attempt_done: Notify,
    events: broadcast::Sender<Event>,
    renewals_ok: AtomicU64,
    renewals_failed: AtomicU64,
    handouts: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

struct Inner {
    settings: EngineSettings,
    renewer: Option<Arc<dyn Renewer>>,
    state: SlotState,
    grant: Option<Arc<Grant>>,
    /// The lifetime (received to expiry) of the last token a renewal newly
    /// issued in place of a different one: how long the server's tokens
    /// last. A token loaded at start, the first one after enrollment, or one
    /// re-issued mid-life by a server without multi-token support says
    /// nothing about that, so it is not counted.
    issued_lifetime: Option<Duration>,
    /// The jittered renewal point chosen for the current grant.
    renew_at: Option<SystemTime>,
    /// The next grant fetched is the first after a start, an enrollment or a
    /// failed renewal: its renewal point is spread over a whole period
    /// ([`spread_renewal_point`]), so a fleet that did this together does
    /// not stay a herd.
    spread_next: bool,
    /// No upstream call before this (backoff, or a re-issued token's expiry).
    not_before: Option<SystemTime>,
    last_error: Option<Error>,
    last_renewal: Option<SystemTime>,
    failures: u32,
    /// Completed upstream attempts; lets queued requesters see that someone
    /// else already tried while they waited.
    attempts: u64,
    demand: Demand,
    shutdown: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock would be a bug in this module; keep
        // serving with whatever state is there rather than poisoning every caller.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn emit(&self, event: Event) {
        // No receivers is fine: nobody is listening.
        let _ = self.events.send(event);
    }
}

impl Engine {
    /// Creates an unenrolled engine and starts its scheduler on the current
    /// tokio runtime.
    pub fn start(settings: EngineSettings) -> Engine {
        let (events, _) = broadcast::channel(64);
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                settings,
                renewer: None,
                state: SlotState::Unenrolled,
                grant: None,
                issued_lifetime: None,
                renew_at: None,
                spread_next: true,
                not_before: None,
                last_error: None,
                last_renewal: None,
                failures: 0,
                attempts: 0,
                demand: Demand::default(),
                shutdown: false,
            }),
            renew_lock: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            attempt_done: Notify::new(),
            events,
            renewals_ok: AtomicU64::new(0),
            renewals_failed: AtomicU64::new(0),
            handouts: AtomicU64::new(0),
        });
        tokio::spawn(scheduler(Arc::downgrade(&shared)));
        Engine { shared }
    }

    /// Stops the scheduler. Requests still answer from the cache.
    pub fn shutdown(&self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_one();
    }

    /// Waits for a renewal in flight, then lets the renewer store what it
    /// still holds unsaved (at shutdown, after [`Engine::shutdown`]).
    ///
    /// # Errors
    /// `STORE_UNAVAILABLE` when a renewed credential could not be stored.
    pub async fn save_unsaved(&self) -> Result<()> {
        let _flight = self.shared.renew_lock.lock().await;
        let renewer = self.shared.lock().renewer.clone();
        match renewer {
            Some(renewer) => renewer.save_unsaved().await,
            None => Ok(()),
        }
    }

    /// Replaces the timing settings (live config reload).
    pub fn set_settings(&self, settings: EngineSettings) {
        let mut inner = self.shared.lock();
        if inner.settings != settings {
            inner.renew_at = inner
                .grant
                .as_deref()
                .map(|g| jittered_renewal_point(g, &settings));
            inner.settings = settings;
            drop(inner);
            self.shared.wake.notify_one();
        }
    }

    /// Listens to state changes and renewals.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// Marks the slot as enrolling; requests answer `NOT_ENROLLED` meanwhile
    /// unless a usable credential is still active.
    pub fn begin_enrolling(&self) {
        self.set_state(SlotState::Enrolling, None);
    }

    /// A redemption failed: back to `Unenrolled` (or stay where a working
    /// credential still is), remembering why.
    pub fn enrolling_failed(&self, error: Error) {
        let (has_renewer, state) = {
            let inner = self.shared.lock();
            (inner.renewer.is_some(), inner.state)
        };
        if state == SlotState::Enrolling {
            let to = if has_renewer {
                SlotState::Active
            } else {
                SlotState::Unenrolled
            };
            self.set_state(to, Some(error));
        }
    }

    /// Installs a credential's renewer and, when the redemption or the store
    /// already gave one, its grant. Waits for any in-flight renewal of the old
    /// credential, so its answer cannot overwrite the new one.
    pub async fn activate(&self, renewer: Arc<dyn Renewer>, grant: Option<Grant>) {
        let _flight = self.shared.renew_lock.lock().await;
        let from;
        {
            let mut inner = self.shared.lock();
            from = inner.state;
            inner.renewer = Some(renewer);
            inner.renew_at = grant
                .as_ref()
                .map(|g| jittered_renewal_point(g, &inner.settings));
            // The next token fetched (at once, when none or an expired one
            // was given) is the first since a start or an enrollment: its
            // renewal is spread, so a fleet that did this together does not
            // stay a herd. A token handed in keeps its ordinary point: apps
            // may be counting on it, and it says nothing about the fleet.
            inner.spread_next = true;
            if let Some(g) = &grant {
                inner.last_renewal = Some(g.received_at);
            }
            inner.grant = grant.map(Arc::new);
            inner.not_before = None;
            inner.failures = 0;
            inner.last_error = None;
            inner.state = SlotState::Active;
        }
        self.shared.attempt_done.notify_waiters();
        if from != SlotState::Active {
            self.shared.emit(Event::State {
                from,
                to: SlotState::Active,
                error: None,
            });
        }
        self.shared.wake.notify_one();
    }

    /// The slot's stored credential cannot be loaded (`Some`, the error
    /// requests then get), or no longer needs reporting (`None`). Ignored once
    /// a credential is active.
    pub fn set_unreadable(&self, error: Option<Error>) {
        {
            let mut inner = self.shared.lock();
            if inner.renewer.is_some() {
                return;
            }
            inner.last_error.clone_from(&error);
        }
        self.set_state(SlotState::Unenrolled, error);
    }

    /// Forgets the credential (unenroll).
    pub async fn deactivate(&self) {
        let _flight = self.shared.renew_lock.lock().await;
        {
            let mut inner = self.shared.lock();
            inner.renewer = None;
            inner.grant = None;
            inner.renew_at = None;
            inner.not_before = None;
            inner.failures = 0;
            inner.last_error = None;
        }
        self.set_state(SlotState::Unenrolled, None);
    }

    /// Registers a standing demand for `min_valid` (a subscription): the engine
    /// keeps renewing ahead so that a token with that much validity is always
    /// on hand, until the guard is dropped.
    pub fn hold_demand(&self, min_valid: Duration) -> DemandGuard {
        {
            let mut inner = self.shared.lock();
            *inner.demand.subscribers.entry(min_valid).or_insert(0) += 1;
        }
        self.shared.wake.notify_one();
        DemandGuard {
            shared: Arc::downgrade(&self.shared),
            min_valid,
        }
    }

    /// A point-in-time status.
    pub fn status(&self) -> EngineStatus {
        let mut inner = self.shared.lock();
        let planned = plan(&mut inner, SystemTime::now(), Instant::now());
        EngineStatus {
            state: inner.state,
            expires_at: inner.grant.as_ref().map(|g| g.expires_at),
            next_renewal: planned.map(|(at, _)| at),
            next_renewal_reason: planned.map(|(_, why)| why),
            last_renewal: inner.last_renewal,
            last_error: inner.last_error.clone(),
            failures: inner.failures,
            renewals_ok: self.shared.renewals_ok.load(Ordering::Relaxed),
            renewals_failed: self.shared.renewals_failed.load(Ordering::Relaxed),
            handouts: self.shared.handouts.load(Ordering::Relaxed),
        }
    }

    /// A token that stays valid for at least `min_valid`, from the cache when it
    /// can be, otherwise after one (shared) upstream renewal.
    ///
    /// # Errors
    /// `NOT_ENROLLED`; the permanent error that revoked the slot; `UNAVAILABLE`
    /// with `retry_after` when no token with that much validity can be had now
    /// (outage, backoff, a server re-issuing a token that expires too soon).
    pub async fn token(&self, min_valid: Duration) -> Result<Arc<Grant>> {
        // The attempts completed when this request started waiting.
        let mut attempts_seen = None;
        loop {
            // Registered before the cache is checked, so an attempt that
            // completes in between still wakes this request.
            let completed = self.shared.attempt_done.notified();
            tokio::pin!(completed);
            completed.as_mut().enable();
            {
                let mut inner = self.shared.lock();
                if attempts_seen.is_none() && note_demand(&mut inner, min_valid) {
                    // The standing demand rose: the scheduler must plan earlier.
                    self.shared.wake.notify_one();
                }
                let now = SystemTime::now();
                if let Some(handout) = self.cached(&inner, min_valid, now)? {
                    return Ok(handout);
                }
                if let Some(e) = beyond_lifetime(&inner, min_valid) {
                    return Err(e);
                }
                if let Some(nb) = inner.not_before.filter(|nb| *nb > now) {
                    return Err(unavailable(&inner, min_valid, nb, now));
                }
                if let Some(seen) = attempts_seen
                    && inner.attempts != seen
                {
                    self.share_attempt(&inner, min_valid, now)?;
                }
                demand_may_renew(&inner, min_valid, now)?;
                attempts_seen = Some(inner.attempts);
            }
            // Wait for the right to call upstream, or for someone else's
            // attempt to complete (then re-check the cache, lock-free).
            let flight = tokio::select! {
                biased;
                () = &mut completed => continue,
                flight = self.shared.renew_lock.lock() => flight,
            };
            {
                let inner = self.shared.lock();
                let now = SystemTime::now();
                if let Some(handout) = self.cached(&inner, min_valid, now)? {
                    return Ok(handout);
                }
                if attempts_seen != Some(inner.attempts) {
                    self.share_attempt(&inner, min_valid, now)?;
                }
                demand_may_renew(&inner, min_valid, now)?;
            }
            self.renew_locked().await;
            let inner = self.shared.lock();
            let now = SystemTime::now();
            if let Some(handout) = self.cached(&inner, min_valid, now)? {
                return Ok(handout);
            }
            drop(flight);
            // The renewal may just have shown that the server's tokens are
            // never that long.
            if let Some(e) = beyond_lifetime(&inner, min_valid) {
                return Err(e);
            }
            let retry = inner.not_before.unwrap_or(now);
            return Err(unavailable(&inner, min_valid, retry, now));
        }
    }

    /// Someone else's attempt completed while this request waited and the
    /// cache still cannot satisfy it: share that attempt's failure (`Err`)
    /// rather than call upstream again. `Ok` only when the attempt succeeded
    /// with a token long enough for `min_valid` that has since aged below it
    /// (the waiter was slow to run): then another renewal is in order.
    fn share_attempt(&self, inner: &Inner, min_valid: Duration, now: SystemTime) -> Result<()> {
        let aged = inner.last_error.is_none()
            && inner.not_before.is_none_or(|nb| nb <= now)
            && inner
                .grant
                .as_deref()
                .is_some_and(|g| g.lifetime() > min_valid);
        if aged {
            return Ok(());
        }
        let retry = inner.not_before.unwrap_or(now);
        Err(unavailable(inner, min_valid, retry, now))
    }

    /// The cached grant if it satisfies `min_valid` now; `Err` when the slot's
    /// state forbids any handout.
    fn cached(
        &self,
        inner: &Inner,
        min_valid: Duration,
        now: SystemTime,
    ) -> Result<Option<Arc<Grant>>> {
        match inner.state {
            SlotState::Unenrolled | SlotState::Enrolling if inner.renewer.is_none() => {
                return Err(inner.last_error.clone().unwrap_or_else(|| {
                    Error::new(
                        ErrorCode::NotEnrolled,
                        "this device is not enrolled: run `regent enroll` with a registration token",
                    )
                }));
            }
            SlotState::Revoked => {
                return Err(inner.last_error.clone().unwrap_or_else(|| {
                    Error::new(
                        ErrorCode::Revoked,
                        "the auth token was revoked; enroll again",
                    )
                }));
            }
            _ => {}
        }
        match &inner.grant {
            // Wall-clock check on every handout: a machine that slept past the
            // expiry never gets a stale token.
            Some(g) if g.remaining(now) >= min_valid && g.remaining(now) > Duration::ZERO => {
                self.shared.handouts.fetch_add(1, Ordering::Relaxed);
                Ok(Some(Arc::clone(g)))
            }
            _ => Ok(None),
        }
    }

    /// One upstream renewal; the caller holds `renew_lock`.
    async fn renew_locked(&self) {
        let renewer = self.shared.lock().renewer.clone();
        let Some(renewer) = renewer else {
            return;
        };
        let result = renewer.renew().await;
        let now = SystemTime::now();
        let mut inner = self.shared.lock();
        inner.attempts += 1;
        // Waiting requests re-check once this function's lock is released.
        let _wake_waiters = WakeOnDrop(&self.shared.attempt_done);
        let from = inner.state;
        match result {
            Ok(grant) => {
                self.shared.renewals_ok.fetch_add(1, Ordering::Relaxed);
                let reissued = inner
                    .grant
                    .as_deref()
                    .is_some_and(|old| old.same_token_as(&grant));
                // A server without multi-token support hands back the same token
                // until it expires: asking again before then only spins.
                inner.not_before = reissued.then(|| grant.expires_at + REISSUE_GRACE);
                if reissued {
                    tracing::debug!(
                        remaining_s = grant.remaining(now).as_secs(),
                        "server re-issued the same access token; next fetch after it expires"
                    );
                }
                let renew_at = if std::mem::take(&mut inner.spread_next) {
                    spread_renewal_point(&grant, &inner.settings)
                } else {
                    jittered_renewal_point(&grant, &inner.settings)
                };
                // A server whose tokens live no longer than clients ask for:
                // another token before the renewal point would be no longer,
                // so requests get UNAVAILABLE until then instead of each one
                // (and the scheduler, every tenth of the lifetime) calling
                // upstream again.
                let window = inner.settings.demand_window;
                let wanted = inner.demand.recent(Instant::now(), window);
                if !reissued && wanted.is_some_and(|w| grant.lifetime() <= w) {
                    inner.not_before = Some(renew_at);
                    tracing::debug!(
                        lifetime_s = grant.lifetime().as_secs(),
                        "the license server's tokens are shorter than clients ask for; next fetch at the renewal point"
                    );
                }
                inner.renew_at = Some(renew_at);
                inner.last_renewal = Some(now);
                inner.failures = 0;
                inner.last_error = None;
                inner.state = SlotState::Active;
                let expires_at = grant.expires_at;
                if !reissued && inner.grant.is_some() {
                    inner.issued_lifetime = Some(grant.lifetime());
                }
                inner.grant = Some(Arc::new(grant));
                drop(inner);
                tracing::info!(
                    valid_for_s = expires_at.duration_since(now).unwrap_or_default().as_secs(),
                    "access token renewed"
                );
                if from != SlotState::Active {
                    self.shared.emit(Event::State {
                        from,
                        to: SlotState::Active,
                        error: None,
                    });
                }
                self.shared.emit(Event::Renewed { expires_at });
            }
            Err(error) if !error.is_retryable() => {
                self.shared.renewals_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(code = %error.code, error = %error.message, "renewal failed permanently");
                inner.grant = None;
                inner.renew_at = None;
                inner.not_before = None;
                inner.last_error = Some(error.clone());
                inner.state = SlotState::Revoked;
                drop(inner);
                if from != SlotState::Revoked {
                    self.shared.emit(Event::State {
                        from,
                        to: SlotState::Revoked,
                        error: Some(error),
                    });
                }
            }
            Err(error) => {
                self.shared.renewals_failed.fetch_add(1, Ordering::Relaxed);
                inner.failures = inner.failures.saturating_add(1);
                // The fleet failed together (an outage): it recovers together,
                // so the renewal after the recovery is spread.
                inner.spread_next = true;
                let delay = backoff_delay(&inner.settings, inner.failures, error.retry_after);
                tracing::warn!(
                    code = %error.code,
                    error = %error.message,
                    retry_in_ms = delay.as_millis() as u64,
                    failures = inner.failures,
                    "renewal failed; will retry"
                );
                inner.not_before = Some(now + delay.min(FAR_FUTURE));
                inner.last_error = Some(error.clone());
                inner.state = SlotState::Degraded;
                drop(inner);
                if from != SlotState::Degraded {
                    self.shared.emit(Event::State {
                        from,
                        to: SlotState::Degraded,
                        error: Some(error),
                    });
                }
            }
        }
    }

    fn set_state(&self, to: SlotState, error: Option<Error>) {
        let from = {
            let mut inner = self.shared.lock();
            let from = inner.state;
            inner.state = to;
            if error.is_some() {
                inner.last_error = error.clone();
            }
            from
        };
        if from != to {
            tracing::info!(from = from.as_str(), to = to.as_str(), "slot state changed");
            self.shared.emit(Event::State { from, to, error });
        }
        self.shared.wake.notify_one();
    }
}

/// Wakes every waiter of a [`Notify`] when dropped (after the state lock
/// taken before it is released, so woken requests see the new state).
struct WakeOnDrop<'a>(&'a Notify);

impl Drop for WakeOnDrop<'_> {
    fn drop(&mut self) {
        self.0.notify_waiters();
    }
}

#[cfg(test)]
mod tests;
