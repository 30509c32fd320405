//! The oauth2 profile against the emulator: re-issue detection and the
//! multi-token cap.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::{Server, oauth2_config, secret};
use regent_agent::ErrorCode;
use regent_agent::agent::{Agent, EnrollOptions};
use regent_agent::secret::ExposeSecret;
use regent_emulator::EmulatorConfig;
use reqwest::Method;
use serde_json::json;

async fn client(server: &Server, id: &str, validity: u64) {
    let (status, body) = server
        .admin_call(
            Method::POST,
            "/oauth/clients",
            Some(json!({"clientId": id, "clientSecret": format!("{id}-secret"), "accessTokenValidity": validity,
                        "authorizedGrantTypes": ["client_credentials"]})),
        )
        .await;
    assert!(status == 200 || status == 201, "{status} {body}");
}

#[tokio::test]
async fn wrong_client_secret_is_refused_and_nothing_stored() {
    let server = Server::start(EmulatorConfig::default()).await;
    client(&server, "app", 60).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::open(oauth2_config(&server.url(), "app", dir.path(), "", ""))
        .await
        .unwrap();
    let err = agent
        .enroll(secret("wrong"), EnrollOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::ClientCredentialsInvalid, "{err:?}");
    let secrets = std::fs::read_to_string(dir.path().join("secrets.json")).unwrap_or_default();
    assert!(!secrets.contains("slot-0"));
    agent
        .enroll(secret("app-secret"), EnrollOptions::default())
        .await
        .unwrap();
    agent.token(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn reissue_mode_never_hands_out_a_token_that_expires_too_soon() {
    // Multi-token off: the server re-issues the same token until it expires.
    let server = Server::start(EmulatorConfig::default()).await;
    client(&server, "single", 4).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::open(oauth2_config(
        &server.url(),
        "single",
        dir.path(),
        "",
        "backoff_min = 1\nbackoff_max = 2",
    ))
    .await
    .unwrap();
    agent
        .enroll(secret("single-secret"), EnrollOptions::default())
        .await
        .unwrap();

    let min_valid = Duration::from_secs(2);
    let started = Instant::now();
    let (mut served, mut unavailable, mut distinct) = (0, 0, std::collections::HashSet::new());
    // Three token lifetimes.
    while started.elapsed() < Duration::from_secs(12) {
        match agent.token(min_valid).await {
            Ok(g) => {
                assert!(g.remaining(SystemTime::now()) >= min_valid - Duration::from_millis(5));
                distinct.insert(g.access_token.expose_secret().to_owned());
                served += 1;
            }
            Err(e) => {
                assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
                let after = e.retry_after.expect("retry_after");
                assert!(after <= Duration::from_secs(5), "{after:?}");
                unavailable += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        served > 50 && unavailable > 0,
        "served {served}, unavailable {unavailable}"
    );
    assert!(distinct.len() >= 2, "a new token after each expiry");
    // No spinning: a few fetches per 4 s lifetime, not one per request.
    let calls = server.total("oauth_token").await;
    assert!(calls <= 15, "{calls} token requests in 12 s");
}

#[tokio::test]
async fn multitoken_cap_is_respected_and_a_429_is_waited_out_not_hammered() {
    let server = Server::start(EmulatorConfig::default()).await;
    client(&server, "multi", 3).await;
    let (status, body) = server
        .admin_call(
            Method::PUT,
            "/oauth/customers/acme",
            Some(json!({"id": "acme", "applicationClients": ["multi"],
                        "multitokenConfig": {"clientCredentialsMultiTokenConfig": {"maxActiveTokensAllowed": 5}}})),
        )
        .await;
    assert!(status == 200 || status == 201, "{status} {body}");

    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::open(oauth2_config(
        &server.url(),
        "multi",
        dir.path(),
        "max_active_tokens = 5",
        "backoff_min = 1\nbackoff_max = 8",
    ))
    .await
    .unwrap();
    agent
        .enroll(secret("multi-secret"), EnrollOptions::default())
        .await
        .unwrap();

    // Another consumer of the same client fills the rest of the cap.
    for _ in 0..4 {
        let resp = server
            .http
            .post(format!("{}/oauth/token", server.url()))
            .basic_auth("multi", Some("multi-secret"))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
    }
    let refused_before = server.total("oauth_token").await;

    // Steady demand: the agent's renewal hits the cap, waits for the earliest
    // token to expire (Retry-After) and then succeeds.
    let _demand = agent.hold_demand(Duration::from_millis(500));
    let started = Instant::now();
    let mut max_active = 0;
    let mut served = 0;
    while started.elapsed() < Duration::from_secs(8) {
        if agent.token(Duration::from_millis(500)).await.is_ok() {
            served += 1;
        }
        let active = server.counters().await["activeTokens"]["multi"]
            .as_u64()
            .unwrap_or(0);
        max_active = max_active.max(active);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(max_active <= 5, "{max_active} active tokens");
    assert!(
        served > 20,
        "the agent recovered and served tokens ({served})"
    );
    let status = agent.engine_status();
    assert!(status.renewals_ok >= 2, "{status:?}");
    // Waiting, not hammering: 8 s of 3 s tokens is a handful of requests.
    let requests = server.total("oauth_token").await - refused_before;
    assert!(requests <= 10, "{requests} token requests in 8 s");
}
