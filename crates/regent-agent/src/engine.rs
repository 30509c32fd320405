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

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use regent_proto::ErrorCode;
use tokio::sync::{Notify, broadcast};

use crate::config::RefreshConfig;
use crate::error::{Error, Result};
use crate::grant::Grant;

/// A boxed, sendable future (the [`Renewer`] trait stays object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

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

/// The engine's timing settings (from `[refresh]`).
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSettings {
    /// Fraction of the lifetime at which to renew.
    pub ahead: f64,
    /// ± fraction of jitter around that point.
    pub jitter: f64,
    /// Safety added to the largest recent `min_valid`.
    pub margin: Duration,
    /// How long a request keeps the engine renewing ahead.
    pub demand_window: Duration,
    /// First backoff delay.
    pub backoff_min: Duration,
    /// Longest backoff delay.
    pub backoff_max: Duration,
    /// Idle keep-alive interval.
    pub keepalive: Duration,
    /// Fraction of a token's lifetime that must pass after a renewal before
    /// demand (a request or a subscription) may cause the next one.
    pub min_spacing: f64,
}

impl From<&RefreshConfig> for EngineSettings {
    fn from(c: &RefreshConfig) -> Self {
        EngineSettings {
            ahead: c.ahead,
            jitter: c.jitter,
            margin: Duration::from_secs(c.margin),
            demand_window: Duration::from_secs(c.demand_window),
            backoff_min: Duration::from_secs(c.backoff_min),
            backoff_max: Duration::from_secs(c.backoff_max),
            keepalive: Duration::from_secs(c.keepalive),
            min_spacing: c.min_spacing,
        }
    }
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings::from(&RefreshConfig::default())
    }
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
    /// The longest lifetime (received to expiry) of any token seen: how long
    /// the server's tokens last. The current grant's may be shorter (a
    /// server without multi-token support re-issues a token mid-life).
    longest_lifetime: Option<Duration>,
    /// The jittered renewal point chosen for the current grant.
    renew_at: Option<SystemTime>,
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

#[derive(Default)]
struct Demand {
    window_start: Option<Instant>,
    current_max: Duration,
    previous_max: Duration,
    last_request: Option<Instant>,
    /// Live subscriptions: how many ask for each `min_valid`. Ordered, so the
    /// largest is found without visiting them all (every handout asks).
    subscribers: BTreeMap<Duration, usize>,
}

impl Demand {
    fn roll(&mut self, now: Instant, window: Duration) {
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
    fn recent(&mut self, now: Instant, window: Duration) -> Option<Duration> {
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
    shared: Weak<Shared>,
    min_valid: Duration,
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
                longest_lifetime: None,
                renew_at: None,
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
            if let Some(g) = &grant {
                inner.last_renewal = Some(g.received_at);
                inner.longest_lifetime = inner.longest_lifetime.max(Some(g.lifetime()));
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
                let renew_at = jittered_renewal_point(&grant, &inner.settings);
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
                inner.longest_lifetime = inner.longest_lifetime.max(Some(grant.lifetime()));
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

/// Records a request's `min_valid`; true when it raised the standing demand (the
/// scheduler must then renew earlier than planned).
fn note_demand(inner: &mut Inner, min_valid: Duration) -> bool {
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
fn spacing_floor(grant: &Grant, settings: &EngineSettings) -> SystemTime {
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
fn demand_may_renew(inner: &Inner, min_valid: Duration, now: SystemTime) -> Result<()> {
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

/// A request for at least as long as the server's tokens last (the longest
/// lifetime of any token seen) can never be served, and retrying cannot
/// help: `BAD_REQUEST` naming the lifetime and what to ask for instead, with
/// no upstream call (asking again for the same 20-second token would not
/// make it longer). Half the lifetime is what the agent keeps on hand even
/// when renewals are spaced ([`demand_may_renew`]).
fn beyond_lifetime(inner: &Inner, min_valid: Duration) -> Option<Error> {
    let lifetime = inner.longest_lifetime?;
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
fn unavailable(inner: &Inner, min_valid: Duration, retry_at: SystemTime, now: SystemTime) -> Error {
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

/// Renewal at `ahead` of the lifetime, ± `jitter` of that point, so a fleet does
/// not renew in the same second.
fn jittered_renewal_point(grant: &Grant, settings: &EngineSettings) -> SystemTime {
    let spread = (rand::random::<f64>() * 2.0 - 1.0) * settings.jitter;
    let fraction = (settings.ahead * (1.0 + spread)).clamp(0.05, 0.99);
    grant.received_at + grant.lifetime().mul_f64(fraction)
}

/// Exponential backoff (`backon`) with full jitter, never sooner than the
/// server's `Retry-After`.
fn backoff_delay(
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
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// When the scheduler should next call upstream; `None` when it has nothing to do.
fn next_due(inner: &mut Inner, now: SystemTime, mono: Instant) -> Option<SystemTime> {
    plan(inner, now, mono).map(|(at, _)| at)
}

/// When the scheduler should next call upstream, and why.
fn plan(inner: &mut Inner, now: SystemTime, mono: Instant) -> Option<(SystemTime, RenewalReason)> {
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

async fn scheduler(weak: Weak<Shared>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::secret;

    fn grant_at(received_at: SystemTime, lifetime: Duration) -> Grant {
        Grant {
            access_token: secret("t".into()),
            token_type: "Bearer".into(),
            received_at,
            expires_at: received_at + lifetime,
            refresh_token: None,
            refresh_expires_at: None,
            scope: None,
        }
    }

    /// Hands out a new token per call, `lifetime` long; the first one was
    /// received `first_aged_by` ago (an answer that took long to arrive).
    struct Counting {
        calls: AtomicU64,
        lifetime: Duration,
        first_aged_by: Duration,
    }

    impl Counting {
        fn new(lifetime: Duration, first_aged_by: Duration) -> Arc<Counting> {
            Arc::new(Counting {
                calls: AtomicU64::new(0),
                lifetime,
                first_aged_by,
            })
        }

        fn calls(&self) -> u64 {
            self.calls.load(Ordering::SeqCst)
        }
    }

    impl Renewer for Counting {
        fn renew(&self) -> BoxFuture<'_, Result<Grant>> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let age = if n == 0 {
                self.first_aged_by
            } else {
                Duration::ZERO
            };
            let received_at = SystemTime::now() - age;
            Box::pin(async move {
                Ok(Grant {
                    access_token: secret(format!("token-{n}")),
                    ..grant_at(received_at, self.lifetime)
                })
            })
        }
    }

    const LIFETIME: Duration = Duration::from_secs(300);
    /// Age of the stale token: past the spacing (a fifth of the lifetime), so
    /// requests may renew.
    const STALE_AGE: Duration = Duration::from_secs(70);
    /// More than a token 70 s old has left: every request below misses the cache.
    const MIN_VALID: Duration = Duration::from_secs(235);

    /// An engine whose cached token (70 s old) is too short for `MIN_VALID`.
    /// The scheduler is idle until the requests raise the demand; then the
    /// tests already hold the renewal lock, and it finds the renewed token.
    async fn stale_engine(renewer: Arc<Counting>) -> Engine {
        let engine = Engine::start(EngineSettings::default());
        let old = Grant {
            access_token: secret("initial".into()),
            ..grant_at(SystemTime::now() - STALE_AGE, LIFETIME)
        };
        engine.activate(renewer, Some(old)).await;
        engine
    }

    /// `n` concurrent `token(MIN_VALID)` requests on `engine`.
    fn spawn_waiters(
        engine: &Engine,
        n: usize,
    ) -> Vec<tokio::task::JoinHandle<Result<std::sync::Arc<Grant>>>> {
        (0..n)
            .map(|_| {
                let engine = engine.clone();
                tokio::spawn(async move { engine.token(MIN_VALID).await })
            })
            .collect()
    }

    /// Regression (issue 9, 10,000 connections): requests queued behind an
    /// upstream call were released one lock hand-off at a time, so under a
    /// herd the last of them ran long after the renewal. Now one completed
    /// attempt answers every waiter at once, even while the lock is still held.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_completed_attempt_answers_every_waiter_at_once() {
        let renewer = Counting::new(LIFETIME, Duration::ZERO);
        let engine = stale_engine(Arc::clone(&renewer)).await;
        // A long upstream call in progress (as the scheduler's would be).
        let flight = engine.shared.renew_lock.lock().await;
        let waiters = spawn_waiters(&engine, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
        engine.renew_locked().await;
        let answered = tokio::time::timeout(Duration::from_secs(5), async {
            let mut tokens = Vec::new();
            for w in waiters {
                tokens.push(w.await.unwrap());
            }
            tokens
        })
        .await
        .expect("waiters answered while the lock is still held");
        drop(flight);
        for token in answered {
            assert!(token.unwrap().remaining(SystemTime::now()) >= MIN_VALID);
        }
        assert_eq!(renewer.calls(), 1, "one upstream call for every waiter");
    }

    /// Regression (issue 9, 10,000 connections): a waiter that found the
    /// attempt it waited for already completed, with a token that had aged
    /// below its `min_valid` meanwhile, answered UNAVAILABLE although the
    /// server was healthy. It now renews again (still one call at a time).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_token_that_aged_while_a_request_waited_is_renewed_again() {
        // The first answer arrives already 70 s old: too short for MIN_VALID.
        let renewer = Counting::new(LIFETIME, STALE_AGE);
        let engine = stale_engine(Arc::clone(&renewer)).await;
        let flight = engine.shared.renew_lock.lock().await;
        let waiter = {
            let engine = engine.clone();
            tokio::spawn(async move { engine.token(MIN_VALID).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        engine.renew_locked().await;
        drop(flight);
        let token = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("answered")
            .unwrap()
            .expect("a healthy server's token, not UNAVAILABLE");
        assert!(token.remaining(SystemTime::now()) >= MIN_VALID);
        assert_eq!(renewer.calls(), 2);
    }

    /// The other side of that rule: when the server's tokens are simply too
    /// short for `min_valid`, waiters share the outcome (UNAVAILABLE) and
    /// never call upstream once each.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tokens_too_short_for_min_valid_are_not_renewed_by_every_waiter() {
        let renewer = Counting::new(Duration::from_secs(200), Duration::ZERO);
        let engine = stale_engine(Arc::clone(&renewer)).await;
        let flight = engine.shared.renew_lock.lock().await;
        let waiters = spawn_waiters(&engine, 50);
        tokio::time::sleep(Duration::from_millis(50)).await;
        engine.renew_locked().await;
        drop(flight);
        for w in waiters {
            let e = tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("answered")
                .unwrap()
                .unwrap_err();
            assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
        }
        assert_eq!(renewer.calls(), 1);
    }

    #[test]
    fn renewal_point_stays_within_jitter() {
        let settings = EngineSettings::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let g = grant_at(t0, Duration::from_secs(300));
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..500 {
            let at = jittered_renewal_point(&g, &settings);
            let offset = at.duration_since(t0).unwrap().as_secs_f64();
            // 2/3 of 300 s = 200 s, ± 10 % = 180 … 220 s.
            assert!((180.0..=220.0).contains(&offset), "{offset}");
            seen.insert(offset as u64);
        }
        assert!(seen.len() > 20, "jitter should spread renewals: {seen:?}");
    }

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        let settings = EngineSettings {
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            ..EngineSettings::default()
        };
        for failures in 1..=20 {
            let ceiling =
                Duration::from_secs(1u64 << (failures - 1).min(20)).min(Duration::from_secs(300));
            for _ in 0..50 {
                let d = backoff_delay(&settings, failures, None);
                assert!(d <= ceiling, "failure {failures}: {d:?} > {ceiling:?}");
            }
        }
        let d = backoff_delay(&settings, 1, Some(Duration::from_secs(42)));
        assert!(d >= Duration::from_secs(42));
    }

    #[test]
    fn demand_pulls_renewal_earlier_and_idle_uses_keepalive() {
        let settings = EngineSettings::default();
        let t0 = SystemTime::now();
        let grant = grant_at(t0, Duration::from_secs(300));
        let mut inner = Inner {
            renew_at: Some(t0 + Duration::from_secs(200)),
            settings,
            renewer: None,
            state: SlotState::Active,
            grant: Some(Arc::new(grant)),
            longest_lifetime: None,
            not_before: None,
            last_error: None,
            last_renewal: Some(t0),
            failures: 0,
            attempts: 0,
            demand: Demand::default(),
            shutdown: false,
        };
        struct Never;
        impl Renewer for Never {
            fn renew(&self) -> BoxFuture<'_, Result<Grant>> {
                Box::pin(async { Err(Error::new(ErrorCode::Internal, "unused")) })
            }
        }
        inner.renewer = Some(Arc::new(Never));
        let mono = Instant::now();
        // Idle: keep-alive only (1 day).
        let idle = next_due(&mut inner, t0, mono).unwrap();
        assert_eq!(idle, t0 + Duration::from_secs(86_400));
        // A request for 200 s of validity: renew by 300 - 200 - 30 = 70 s.
        note_demand(&mut inner, Duration::from_secs(200));
        let due = next_due(&mut inner, t0, mono).unwrap();
        assert_eq!(due, t0 + Duration::from_secs(70));
        // A small demand leaves the jittered 2/3 point in charge.
        let mut inner2 = Inner {
            demand: Demand::default(),
            grant: inner.grant.clone(),
            renewer: inner.renewer.clone(),
            settings: inner.settings.clone(),
            ..inner
        };
        note_demand(&mut inner2, Duration::from_secs(5));
        assert_eq!(
            next_due(&mut inner2, t0, mono).unwrap(),
            t0 + Duration::from_secs(200)
        );
        // Backoff pushes it later.
        inner2.not_before = Some(t0 + Duration::from_secs(250));
        assert_eq!(
            next_due(&mut inner2, t0, mono).unwrap(),
            t0 + Duration::from_secs(250)
        );
    }

    /// Regression (issue 9, found while writing the IPC fuzz target): a client
    /// asking for `min_valid` = u64::MAX seconds (what `token(Duration::MAX)`
    /// sends) overflowed `min_valid + margin`, panicking the slot's scheduler
    /// and every `status` call for the demand window. Huge settings from the
    /// configuration file (keepalive, demand_window) overflowed the same way.
    #[test]
    fn absurd_demands_and_settings_do_not_overflow() {
        struct Never;
        impl Renewer for Never {
            fn renew(&self) -> BoxFuture<'_, Result<Grant>> {
                Box::pin(async { Err(Error::new(ErrorCode::Internal, "unused")) })
            }
        }
        let huge = Duration::from_secs(u64::MAX);
        let settings = EngineSettings {
            margin: huge,
            demand_window: huge,
            keepalive: huge,
            backoff_min: huge,
            backoff_max: huge,
            ..EngineSettings::default()
        };
        let t0 = SystemTime::now();
        let mut inner = Inner {
            renew_at: None,
            settings,
            renewer: Some(Arc::new(Never)),
            state: SlotState::Active,
            grant: Some(Arc::new(grant_at(t0, Duration::from_secs(300)))),
            longest_lifetime: None,
            not_before: None,
            last_error: None,
            last_renewal: Some(t0),
            failures: 0,
            attempts: 0,
            demand: Demand::default(),
            shutdown: false,
        };
        let mono = Instant::now();
        // Idle: the keep-alive is "far away", not a panic.
        assert!(next_due(&mut inner, t0, mono).unwrap() > t0);
        note_demand(&mut inner, huge);
        note_demand(&mut inner, Duration::MAX);
        // No token can satisfy the demand: renew as early as the spacing
        // allows (a fifth of the lifetime).
        let due = next_due(&mut inner, t0, mono).unwrap();
        assert_eq!(due, t0 + Duration::from_secs(60));
        let later = mono + Duration::from_secs(3600);
        assert!(inner.demand.recent(later, huge).is_some());
    }
    /// Regression (issue 18, item 5): `regent token --min-valid 299` against
    /// 300 s tokens renewed on every request (29 calls for 30 requests). Now
    /// a request may renew no sooner than the spacing after the last renewal:
    /// the rest get UNAVAILABLE with `retry_after`, and a modest demand is
    /// still served from the cache.
    #[tokio::test]
    async fn requests_cannot_renew_sooner_than_the_spacing_allows() {
        let renewer = Counting::new(LIFETIME, Duration::ZERO);
        let engine = Engine::start(EngineSettings::default());
        let fresh = grant_at(SystemTime::now() - Duration::from_secs(2), LIFETIME);
        engine
            .activate(Arc::clone(&renewer) as Arc<dyn Renewer>, Some(fresh))
            .await;
        for _ in 0..30 {
            let e = engine.token(Duration::from_secs(299)).await.unwrap_err();
            assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
            let retry = e.retry_after.expect("retry_after");
            // The spacing is 60 s after a renewal 2 s ago.
            assert!(
                retry > Duration::from_secs(50) && retry <= Duration::from_secs(58),
                "{retry:?}"
            );
        }
        assert_eq!(
            renewer.calls(),
            0,
            "no upstream call for requests inside the spacing"
        );
        engine
            .token(Duration::from_secs(60))
            .await
            .expect("served from the cache");
        assert_eq!(renewer.calls(), 0);
        // The scheduler's plan under that demand is clamped the same way.
        let due = engine.status().next_renewal.expect("planned");
        let after = due.duration_since(SystemTime::now()).unwrap_or_default();
        assert!(after > Duration::from_secs(50), "{after:?}");
    }

    /// As much validity as a whole token gives (or more) can never be
    /// served: refused as `BAD_REQUEST` naming the lifetime and what to ask
    /// for, with no upstream call (it was UNAVAILABLE after one renewal per
    /// renewal point, with a retry time that could never help).
    #[tokio::test]
    async fn a_demand_for_the_whole_lifetime_is_refused_without_calling_upstream() {
        let renewer = Counting::new(LIFETIME, Duration::ZERO);
        let engine = stale_engine(Arc::clone(&renewer)).await;
        for _ in 0..10 {
            let e = engine.token(LIFETIME).await.unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}");
            assert!(e.retry_after.is_none(), "{e:?}");
            assert!(
                e.message
                    .contains("valid for 300s, so none can stay valid for 300s")
                    && e.message.contains("--min-valid 150"),
                "{}",
                e.message
            );
        }
        assert_eq!(renewer.calls(), 0);
    }

    /// Regression (issue 18, item 6): the largest subscribed `min_valid` was
    /// found by visiting every subscription, once per subscription on each
    /// renewal. Subscriptions are now counted per value: the same answers,
    /// and dropping one of two equal demands keeps the other.
    #[test]
    fn subscribed_demand_is_a_counted_set() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _entered = runtime.enter();
        let engine = Engine::start(EngineSettings::default());
        let window = Duration::from_secs(600);
        let recent = |engine: &Engine| engine.shared.lock().demand.recent(Instant::now(), window);
        assert_eq!(recent(&engine), None);
        let a = engine.hold_demand(Duration::from_secs(30));
        let b = engine.hold_demand(Duration::from_secs(90));
        let c = engine.hold_demand(Duration::from_secs(90));
        assert_eq!(recent(&engine), Some(Duration::from_secs(90)));
        drop(b);
        assert_eq!(recent(&engine), Some(Duration::from_secs(90)));
        drop(c);
        assert_eq!(recent(&engine), Some(Duration::from_secs(30)));
        drop(a);
        assert_eq!(recent(&engine), None);
        let many: Vec<_> = (0..10_000)
            .map(|i| engine.hold_demand(Duration::from_secs(i % 7)))
            .collect();
        assert_eq!(recent(&engine), Some(Duration::from_secs(6)));
        assert_eq!(engine.shared.lock().demand.subscribers.len(), 7);
        drop(many);
        assert_eq!(recent(&engine), None);
    }
}
