use super::demand::*;
use super::schedule::*;
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
/// short for `min_valid`, waiters share the outcome — `BAD_REQUEST` naming
/// the lifetime the renewal showed, since retrying cannot help — and never
/// call upstream once each.
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
        assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}");
        assert!(e.message.contains("valid for 200s"), "{e:?}");
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
fn the_first_renewal_point_is_spread_over_a_whole_period() {
    let settings = EngineSettings::default();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let g = grant_at(t0, Duration::from_secs(300));
    // Default ahead 2/3, min_spacing 0.2: one period (200 s) from 60 s, where
    // demand may first renew, to 260 s.
    let mut deciles = [0u32; 10];
    for _ in 0..4000 {
        let at = spread_renewal_point(&g, &settings);
        let offset = at.duration_since(t0).unwrap().as_secs_f64();
        assert!((60.0..=260.0).contains(&offset), "{offset}");
        let k = (((offset - 60.0) / 20.0) as usize).min(9);
        deciles[k] += 1;
    }
    // Uniform: each tenth of the window holds about 400 of 4000.
    assert!(deciles.iter().all(|&n| n > 250), "{deciles:?}");
    // The window stays inside the lifetime whatever the settings.
    let odd = EngineSettings {
        ahead: 0.5,
        jitter: 0.0,
        min_spacing: 0.9,
        ..EngineSettings::default()
    };
    for _ in 0..100 {
        let offset = spread_renewal_point(&g, &odd).duration_since(t0).unwrap();
        assert!(
            (270.0..=297.0).contains(&offset.as_secs_f64()),
            "{offset:?}"
        );
    }
}

/// A synchronised start (every engine's first token at once) is spread over
/// the first period; the renewals after that use the ordinary ± jitter.
#[tokio::test]
async fn after_a_start_and_after_a_failure_the_next_fetched_renewal_is_spread() {
    let engine = Engine::start(EngineSettings::default());
    let renewer = Counting::new(LIFETIME, Duration::ZERO);
    engine.activate(renewer.clone(), None).await;
    let _first = engine.token(Duration::from_secs(1)).await.unwrap();
    let (renew_at, spread_next, received) = {
        let inner = engine.shared.lock();
        let grant = inner.grant.clone().unwrap();
        (
            inner.renew_at.unwrap(),
            inner.spread_next,
            grant.received_at,
        )
    };
    assert!(!spread_next, "only the first grant fetched is spread");
    let offset = renew_at.duration_since(received).unwrap().as_secs_f64();
    assert!((60.0..=260.0).contains(&offset), "{offset}");
    // A failed renewal marks the next grant for spreading again.
    engine.shared.lock().renewer = Some(Arc::new(Failing));
    engine.renew_locked().await;
    assert!(
        engine.shared.lock().spread_next,
        "a failure spreads the next"
    );
    engine.shutdown();

    // A token handed in (from the store, a redemption) keeps its ordinary
    // point; the one fetched after it is spread.
    let handed = Engine::start(EngineSettings::default());
    let t0 = SystemTime::now();
    let renewer = Counting::new(LIFETIME, Duration::ZERO);
    handed.activate(renewer, Some(grant_at(t0, LIFETIME))).await;
    {
        let inner = handed.shared.lock();
        let offset = inner.renew_at.unwrap().duration_since(t0).unwrap();
        assert!(
            (180.0..=220.0).contains(&offset.as_secs_f64()),
            "{offset:?}"
        );
        assert!(inner.spread_next);
    }
    handed.shutdown();
}

/// Fails every renewal with a retryable error.
struct Failing;

impl Renewer for Failing {
    fn renew(&self) -> BoxFuture<'_, Result<Grant>> {
        Box::pin(async { Err(Error::new(ErrorCode::Unavailable, "down")) })
    }
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
        spread_next: false,
        settings,
        renewer: None,
        state: SlotState::Active,
        grant: Some(Arc::new(grant)),
        issued_lifetime: None,
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
        spread_next: false,
        settings,
        renewer: Some(Arc::new(Never)),
        state: SlotState::Active,
        grant: Some(Arc::new(grant_at(t0, Duration::from_secs(300)))),
        issued_lifetime: None,
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

/// As much validity as a whole token gives (or more) can never be served:
/// one renewal shows the server's lifetime (a token loaded at start may be
/// a re-issue, so it does not count), then every request is `BAD_REQUEST`
/// naming the lifetime and what to ask for, with no upstream call (it was
/// UNAVAILABLE after one renewal per renewal point, with a retry time that
/// could never help).
#[tokio::test]
async fn a_demand_for_the_whole_lifetime_is_refused_after_one_renewal() {
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
    assert_eq!(renewer.calls(), 1);
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
