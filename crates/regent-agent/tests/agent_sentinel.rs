//! The agent core against the real emulator: enrollment, refusals, the refresh
//! cycle, rotation, revocation and outages (issue: agent core, "done means").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use common::{Server, secret, sentinel_config, short_tokens, wait_for_renewals, wait_for_state};
use regent_agent::ErrorCode;
use regent_agent::agent::{Agent, EnrollOptions};
use regent_agent::engine::SlotState;
use regent_agent::secret::ExposeSecret;
use regent_emulator::EmulatorConfig;
use reqwest::Method;
use serde_json::json;

const FAST_BACKOFF: &str = "backoff_min = 1\nbackoff_max = 4";

#[tokio::test]
async fn enrollment_redeems_once_and_serves_a_live_token() {
    let server = Server::start(EmulatorConfig::default()).await;
    let (id, token) = server.mint(json!({"count": 3})).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::open(sentinel_config(&server.url(), dir.path(), ""))
        .await
        .unwrap();
    assert_eq!(agent.engine_status().state, SlotState::Unenrolled);
    let err = agent.token(Duration::from_secs(1)).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::NotEnrolled);

    let enrolled = agent
        .enroll(secret(&token), EnrollOptions::default())
        .await
        .unwrap();
    assert!(enrolled.auth_token_id.is_some());
    assert_eq!(agent.engine_status().state, SlotState::Active);
    let grant = agent.token(Duration::from_secs(60)).await.unwrap();
    assert!(grant.remaining(SystemTime::now()) >= Duration::from_secs(60));
    let seen = server.introspect(grant.access_token.expose_secret()).await;
    assert_eq!(seen["active"], true, "{seen}");
    assert_eq!(server.registration(&id).await["usedCount"], 1);

    // The redeemer is visible to the administrator.
    let tokens = server.auth_tokens().await;
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0]["identifier"], enrolled.identifier);

    // Enrolling again would cost a count: refused unless forced.
    let again = agent
        .enroll(secret(&token), EnrollOptions::default())
        .await
        .unwrap_err();
    assert_eq!(again.code, ErrorCode::AlreadyEnrolled);
    assert_eq!(server.registration(&id).await["usedCount"], 1);

    // A restart serves the stored token without a second redemption.
    drop(agent);
    let agent = Agent::open(sentinel_config(&server.url(), dir.path(), ""))
        .await
        .unwrap();
    let again = agent.token(Duration::from_secs(60)).await.unwrap();
    assert_eq!(
        again.access_token.expose_secret(),
        grant.access_token.expose_secret()
    );
    assert_eq!(server.registration(&id).await["usedCount"], 1);
    assert_eq!(server.count("redeem", "ok").await, 1);
}

#[tokio::test]
async fn each_registration_token_refusal_has_its_own_code_and_leaves_nothing_behind() {
    let server = Server::start(EmulatorConfig::default()).await;
    let (_, expired) = server
        .mint(json!({"count": 5, "expiryDate": "2020-01-01T00:00:00Z"}))
        .await;
    let (_, disabled) = server.mint(json!({"count": 5, "isEnabled": false})).await;
    let (exhausted_id, exhausted) = server.mint(json!({"count": 1})).await;
    // Someone else used the only count.
    let resp = server
        .http
        .post(format!("{}/token/api/v5/authTokens", server.url()))
        .header("Authorization", format!("Basic {exhausted}"))
        .json(&json!({"authToken": {"identifier": "another-device-0"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);

    let cases = [
        (
            "not-a-real-registration-token",
            ErrorCode::RegistrationTokenInvalid,
        ),
        (expired.as_str(), ErrorCode::RegistrationTokenExpired),
        (disabled.as_str(), ErrorCode::RegistrationTokenDisabled),
        (exhausted.as_str(), ErrorCode::RegistrationTokenExhausted),
    ];
    for (token, code) in cases {
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::open(sentinel_config(&server.url(), dir.path(), ""))
            .await
            .unwrap();
        let err = agent
            .enroll(secret(token), EnrollOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.code, code, "{}", err.message);
        assert!(
            err.message.contains("administrator"),
            "message should tell what to do: {}",
            err.message
        );
        assert!(
            !err.message.contains(token),
            "the message must not echo the token"
        );
        // Nothing half-written: no pending marker, no stored secret.
        let status = agent.status().await;
        assert!(!status.slots[0].pending_redemption);
        assert_eq!(status.slots[0].state, SlotState::Unenrolled);
        assert_eq!(status.slots[0].last_error_code, Some(code));
        let secrets = std::fs::read_to_string(dir.path().join("secrets.json")).unwrap_or_default();
        assert!(!secrets.contains("slot-0"), "store still holds: {secrets}");
    }
    assert_eq!(server.registration(&exhausted_id).await["usedCount"], 1);
}

#[tokio::test]
async fn hundred_requesters_share_one_renewal_per_period_and_never_get_short_tokens() {
    let server = Server::start(short_tokens(3)).await;
    let (id, token) = server.mint(json!({"count": 1})).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::open(sentinel_config(&server.url(), dir.path(), ""))
        .await
        .unwrap();
    agent
        .enroll(secret(&token), EnrollOptions::default())
        .await
        .unwrap();
    let before = server.total("realm_token").await;

    let min_valid = Duration::from_secs(1);
    let handed = Arc::new(AtomicU64::new(0));
    let short = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    // Five renewal periods of a 3 s token renewed about every 1.7-2.2 s.
    let run_for = Duration::from_secs(10);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let agent = Arc::clone(&agent);
        let (handed, short) = (Arc::clone(&handed), Arc::clone(&short));
        tasks.push(tokio::spawn(async move {
            while started.elapsed() < run_for {
                match agent.token(min_valid).await {
                    Ok(g) => {
                        handed.fetch_add(1, Ordering::Relaxed);
                        if g.remaining(SystemTime::now()) < min_valid - Duration::from_millis(5) {
                            short.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => panic!("a requester failed while the server was healthy: {e:?}"),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let renewals = server.total("realm_token").await - before;
    let handed = handed.load(Ordering::Relaxed);
    assert!(handed > 10_000, "requesters got {handed} tokens");
    assert_eq!(
        short.load(Ordering::Relaxed),
        0,
        "tokens handed out below min_valid"
    );
    // 10 s / (renewal every 1.7-2.2 s) = 5 periods; exactly 5 ± 1 upstream calls.
    assert!(
        (4..=6).contains(&renewals),
        "{renewals} upstream renewals in 5 periods"
    );
    assert_eq!(server.registration(&id).await["usedCount"], 1);
}

#[tokio::test]
async fn rotation_with_reuse_detection_keeps_the_session_alive_and_the_store_current() {
    let server = Server::start(EmulatorConfig {
        rotate_refresh_tokens: true,
        access_token_lifespan: Duration::from_secs(10),
        ..EmulatorConfig::default()
    })
    .await;
    let (_, token) = server.mint(json!({"count": 1})).await;
    let dir = tempfile::tempdir().unwrap();
    // Renewals may follow each other after 0.5 s (the smallest spacing).
    let config = sentinel_config(&server.url(), dir.path(), "min_spacing = 0.05");
    let mut agent = Agent::open(config.clone()).await.unwrap();
    agent
        .enroll(secret(&token), EnrollOptions::default())
        .await
        .unwrap();
    let mut previous = String::new();
    for round in 0..20 {
        // Asking for nearly the whole lifetime forces one renewal per round.
        let demand = Duration::from_millis(9_400);
        let grant = agent
            .token(demand)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        let value = grant.access_token.expose_secret().to_owned();
        assert_ne!(value, previous, "round {round} should have renewed");
        assert_eq!(server.introspect(&value).await["active"], true);
        previous = value;
        // Let the cached token drop below the demand (0.6 s, past the spacing).
        let below = grant.expires_at - demand + Duration::from_millis(10);
        tokio::time::sleep(below.duration_since(SystemTime::now()).unwrap_or_default()).await;
        if round % 5 == 4 {
            // A fresh process renews with what the store holds: with reuse
            // detection on, a stale refresh token would kill the session.
            // The old one exits as the daemon does: a renewal it had in flight
            // (the scheduler plans one for about now) finishes and is stored
            // first. (Dropped mid-renewal, it rotated the token at the server
            // after the new one had read the store: seen under Wine.)
            agent.shutdown();
            agent.save_unsaved().await;
            drop(agent);
            agent = Agent::open(config.clone()).await.unwrap();
        }
    }
    assert_eq!(server.count("realm_token", "invalid_grant").await, 0);
    assert_eq!(agent.engine_status().state, SlotState::Active);
}

#[tokio::test]
async fn revocation_is_noticed_within_one_renewal_and_a_new_token_reenrolls_without_restart() {
    let server = Server::start(short_tokens(2)).await;
    let (_, first) = server.mint(json!({"count": 1})).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::open(sentinel_config(&server.url(), dir.path(), ""))
        .await
        .unwrap();
    agent
        .enroll(secret(&first), EnrollOptions::default())
        .await
        .unwrap();
    agent.token(Duration::from_millis(500)).await.unwrap();

    let auth_id = server.auth_tokens().await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = server
        .admin_call(
            Method::DELETE,
            &format!("/token/api/v5/authTokens/{auth_id}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    // Keep demand up so the engine renews; one renewal period is ~1.3 s.
    let demand = agent.hold_demand(Duration::from_millis(500));
    wait_for_state(&agent, SlotState::Revoked, Duration::from_secs(5)).await;
    let err = agent.token(Duration::from_millis(100)).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Revoked);

    let (_, second) = server.mint(json!({"count": 1})).await;
    agent
        .enroll(secret(&second), EnrollOptions::default())
        .await
        .unwrap();
    let grant = agent.token(Duration::from_millis(500)).await.unwrap();
    assert_eq!(
        server.introspect(grant.access_token.expose_secret()).await["active"],
        true
    );
    drop(demand);
}

#[tokio::test]
async fn outage_serves_cache_then_unavailable_backs_off_and_recovers() {
    let server = Server::start(short_tokens(4)).await;
    let (_, token) = server.mint(json!({"count": 1})).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::open(sentinel_config(&server.url(), dir.path(), FAST_BACKOFF))
        .await
        .unwrap();
    agent
        .enroll(secret(&token), EnrollOptions::default())
        .await
        .unwrap();
    let cached = agent.token(Duration::from_secs(1)).await.unwrap();

    server
        .control(
            Method::PUT,
            "/_emulator/faults",
            Some(json!({"failureRate": 1.0, "routes": ["realm_token"]})),
        )
        .await;
    let outage_started = Instant::now();
    // Many requesters during the outage must not multiply upstream attempts.
    let mut served_cached = 0u32;
    let mut unavailable = None;
    while outage_started.elapsed() < Duration::from_secs(8) {
        for _ in 0..20 {
            match agent.token(Duration::from_millis(200)).await {
                Ok(g) => {
                    assert_eq!(
                        g.access_token.expose_secret(),
                        cached.access_token.expose_secret()
                    );
                    assert!(g.remaining(SystemTime::now()) >= Duration::from_millis(195));
                    served_cached += 1;
                }
                Err(e) => {
                    assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
                    assert!(e.retry_after.is_some());
                    assert!(e.message.contains("SERVER_ERROR"), "{}", e.message);
                    unavailable = Some(e);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        served_cached > 0,
        "the cached token should be served while valid"
    );
    assert!(
        unavailable.is_some(),
        "after expiry requests get UNAVAILABLE"
    );
    assert_eq!(agent.engine_status().state, SlotState::Degraded);
    // Backoff 1 s doubling to 4 s with full jitter: over 8 s at most a handful
    // of attempts (without backoff, the 20 requesters per round would make hundreds).
    let attempts = server.count("realm_token", "fault").await;
    assert!(
        (2..=12).contains(&attempts),
        "{attempts} renewal attempts during an 8 s outage"
    );

    server
        .control(Method::DELETE, "/_emulator/faults", None)
        .await;
    wait_for_state(&agent, SlotState::Active, Duration::from_secs(10)).await;
    let grant = agent.token(Duration::from_secs(1)).await.unwrap();
    assert_eq!(
        server.introspect(grant.access_token.expose_secret()).await["active"],
        true
    );
}

#[tokio::test]
async fn subscription_demand_keeps_renewing_and_idle_engine_does_not() {
    let server = Server::start(short_tokens(2)).await;
    let (_, token) = server.mint(json!({"count": 1})).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::open(sentinel_config(
        &server.url(),
        dir.path(),
        "demand_window = 1",
    ))
    .await
    .unwrap();
    agent
        .enroll(secret(&token), EnrollOptions::default())
        .await
        .unwrap();
    let guard = agent.hold_demand(Duration::from_millis(500));
    wait_for_renewals(&agent, 3, Duration::from_secs(10)).await;
    drop(guard);
    // Without demand the engine idles: once the demand windows have passed,
    // the next planned call is the keep-alive, a day away.
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let next = agent
            .engine_status()
            .next_renewal
            .expect("a keep-alive is planned");
        if next.duration_since(SystemTime::now()).unwrap_or_default() > Duration::from_secs(3_600) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "engine still renewing ahead without demand"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let renewals = agent.engine_status().renewals_ok;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        agent.engine_status().renewals_ok,
        renewals,
        "idle engine renewed"
    );
}

/// Regression (issue 14, item 1): the upstream latency histogram was one
/// process-wide static, so every agent in a process (hundreds in the test
/// suites) reported the others' requests. Each agent now owns its own.
#[tokio::test]
async fn each_agent_counts_only_its_own_upstream_requests() {
    let server = Server::start(EmulatorConfig::default()).await;
    let (_, token) = server.mint(json!({"count": 1})).await;
    let (busy_dir, idle_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let busy = Agent::open(sentinel_config(&server.url(), busy_dir.path(), ""))
        .await
        .unwrap();
    let idle = Agent::open(sentinel_config(&server.url(), idle_dir.path(), ""))
        .await
        .unwrap();
    busy.enroll(secret(&token), EnrollOptions::default())
        .await
        .unwrap();
    let counters = regent_agent::metrics::Counters::default();
    let count = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("regent_upstream_request_duration_seconds_count "))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap()
    };
    assert!(
        count(&busy.render_metrics(&counters)) >= 1,
        "the enrollment was timed"
    );
    assert_eq!(
        count(&idle.render_metrics(&counters)),
        0,
        "another agent's requests"
    );
}
