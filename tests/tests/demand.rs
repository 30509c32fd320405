//! Demand from clients cannot make the agent call the license server more
//! often than renewals are spaced (issue 18, item 5): requests asking for
//! nearly a whole token lifetime are answered `UNAVAILABLE` with
//! `retry_after`, and subscriptions for it renew at the spacing, not faster.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use regent_client::{Client, SubscriptionEvent};
use regent_proto::ErrorCode;
use regent_tests::procstat::UpstreamCounts;
use regent_tests::{AgentHome, AgentProc, EmulatorProc, code, text, wait_until};

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The default `[refresh] min_spacing`: a fifth of the lifetime.
const MIN_SPACING: f64 = 0.2;

fn enrolled(lifetime: u64) -> (EmulatorProc, AgentHome, AgentProc) {
    let emulator = EmulatorProc::start(lifetime);
    let home = AgentHome::new(&emulator.url, "");
    let agent = AgentProc::start(&home);
    let out = home.regent(&["enroll"], Some(&emulator.mint(1)));
    assert!(out.status.success(), "{}", text(&out));
    (emulator, home, agent)
}

/// Regression: `regent token --min-valid 299` 30 times against 300 s tokens
/// caused 29 upstream refreshes (one per call). A modest `min_valid` is
/// served from the cache; one close to the lifetime is refused with a retry
/// time until the spacing has passed.
#[tokio::test]
async fn requests_for_nearly_a_whole_lifetime_do_not_make_the_agent_call_upstream() {
    let lifetime = 300;
    let (emulator, home, _agent) = enrolled(lifetime);
    let started = Instant::now();
    let before = UpstreamCounts::fetch(&emulator.url).refreshes();

    // Control: a modest demand is answered from the cache.
    for _ in 0..30 {
        let out = home.regent(&["token", "--min-valid", "60"], None);
        assert!(out.status.success(), "{}", text(&out));
    }
    assert_eq!(
        UpstreamCounts::fetch(&emulator.url).refreshes(),
        before,
        "a cached token that satisfies the demand needs no renewal"
    );

    // Once the enrolled token has aged past a second, no cached token has
    // `lifetime - 1` seconds left: every such request is a cache miss.
    let out = home.regent(&["status", "--json"], None);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let expires_at = status["slots"][0]["expires_at"].as_u64().expect("a token");
    wait_until(
        Duration::from_secs(10),
        "the token to age by a second",
        || {
            // `expires_at` is whole seconds, rounded down.
            unix_now() + lifetime - 1 > expires_at + 1
        },
    );

    let mut served = 0;
    for _ in 0..30 {
        let out = home.regent(&["token", "--min-valid", &(lifetime - 1).to_string()], None);
        if out.status.success() {
            served += 1;
            continue;
        }
        assert_eq!(
            code(&out),
            i32::from(ErrorCode::Unavailable.number()),
            "{}",
            text(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("retry in"),
            "the refusal says when to retry: {}",
            text(&out)
        );
    }
    // At most one renewal per spacing since enrollment (the machine may be
    // slow enough for the spacing to pass once during the test).
    let spacing = lifetime as f64 * MIN_SPACING;
    let allowed = 1 + (started.elapsed().as_secs_f64() / spacing) as u64;
    let renewals = UpstreamCounts::fetch(&emulator.url).refreshes() - before;
    assert!(
        renewals <= allowed,
        "{renewals} upstream refreshes for 30 requests in {:?} (at most {allowed})",
        started.elapsed()
    );
    assert!(
        served <= renewals,
        "{served} of 30 requests for {}s of a {lifetime}s token were served",
        lifetime - 1
    );

    // The Rust client sees the retry time as a value.
    let client = Client::connect(home.client_options("demand"))
        .await
        .unwrap();
    let e = client
        .token(Duration::from_secs(lifetime - 1))
        .await
        .expect_err("nearly a whole lifetime is not on hand");
    assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
    let retry = e.retry_after.expect("retry_after");
    assert!(
        retry <= Duration::from_secs_f64(lifetime as f64 * MIN_SPACING),
        "{retry:?}"
    );
}

/// Regression: a subscription asking for nearly a whole lifetime made the
/// agent renew every tenth of the lifetime for as long as it lived. Renewals
/// now follow each other no sooner than the spacing: consecutive pushed
/// tokens were received (their expiry less the lifetime) that far apart.
#[tokio::test]
async fn a_subscription_for_nearly_a_whole_lifetime_renews_at_the_spacing() {
    let lifetime = 10;
    let (_emulator, home, _agent) = enrolled(lifetime);
    let client = Client::connect(home.client_options("subscriber"))
        .await
        .unwrap();
    let min_valid = Duration::from_secs(lifetime - 1);
    let mut subscription = client.subscribe(min_valid).await.unwrap();
    let mut expiries = Vec::new();
    while expiries.len() < 5 {
        let event = tokio::time::timeout(Duration::from_secs(60), subscription.next())
            .await
            .expect("a pushed token")
            .unwrap();
        if let SubscriptionEvent::Token(t) = event {
            expiries.push(t.expires_at);
        }
    }
    // Expiries are `received_at + lifetime` (milliseconds on the wire).
    let spacing = Duration::from_secs_f64(lifetime as f64 * MIN_SPACING) - Duration::from_millis(2);
    for pair in expiries.windows(2) {
        let gap = pair[1].duration_since(pair[0]).unwrap_or_default();
        assert!(
            gap >= spacing,
            "renewals {gap:?} apart, closer than the spacing {spacing:?}: {expiries:?}"
        );
    }
}
