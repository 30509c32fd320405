//! `/_emulator/*`: key guard, counters, faults, rate limit, introspection.

mod common;

use std::time::{Duration, Instant};

use common::{Harness, refusal, retry_after};
use regent_emulator::{EmulatorConfig, RateLimit};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn emulator_routes_need_the_admin_key() {
    let h = Harness::start().await;
    let bare = h
        .http
        .get(h.url("/_emulator/counters"))
        .send()
        .await
        .unwrap();
    let r = refusal(bare).await;
    assert_eq!(
        (r.status, r.error.as_str()),
        (StatusCode::FORBIDDEN, "access_denied")
    );
    let wrong = h
        .http
        .put(h.url("/_emulator/faults"))
        .header("X-Emulator-Key", "guess")
        .json(&json!({ "failureRate": 1.0 }))
        .send()
        .await
        .unwrap();
    assert_eq!(refusal(wrong).await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        h.idp_status().await,
        StatusCode::OK,
        "the refused PUT changed nothing"
    );
    // An admin bearer token is not the emulator key.
    let bearer = h
        .http
        .get(h.url("/_emulator/counters"))
        .bearer_auth(&h.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), StatusCode::FORBIDDEN);
    assert!(h.counters().await.is_object());
}

#[tokio::test]
async fn counters_count_requests_by_route_and_outcome_and_reset() {
    let h = Harness::start().await;
    let token = h.registration_token(json!({ "count": 1 })).await;
    let value = token["token"].as_str().unwrap();
    h.idp_status().await;
    h.redeem_ok(value, "a").await;
    h.redeem_ok(value, "a").await;
    refusal(h.redeem(value, "b").await).await;
    refusal(h.redeem("nope", "b").await).await;
    let counters = h.counters().await;
    assert_eq!(
        counters["requests"]["idp_configurations"]["ok"], 2,
        "the harness's admin login discovers too"
    );
    assert_eq!(
        counters["requests"]["redeem"],
        json!({ "ok": 1, "replay": 1, "registration_token_exhausted": 1, "invalid_registration_token": 1 })
    );
    assert_eq!(
        counters["requests"]["realm_token"]["ok"], 1,
        "the harness's admin login"
    );
    assert_eq!(counters["requests"]["registration_tokens_admin"]["ok"], 1);
    assert_eq!(counters["redemptions"], 1);
    assert_eq!(counters["activeSessions"], 1);
    assert!(
        counters["requests"].get("emulator").is_none(),
        "reading counters is not counted"
    );

    let reset = h
        .control(Method::POST, "/_emulator/counters/reset", None)
        .await;
    assert_eq!(reset.status(), StatusCode::NO_CONTENT);
    let counters = h.counters().await;
    assert_eq!(counters["requests"], json!({}));
    assert_eq!(counters["redemptions"], 0);
    assert_eq!(
        counters["registrationTokens"][token["id"].as_str().unwrap()],
        json!({ "count": 1, "usedCount": 1 })
    );
}

#[tokio::test]
async fn latency_fault_delays_token_routes_only() {
    let h = Harness::start().await;
    let set = h
        .control_ok(
            Method::PUT,
            "/_emulator/faults",
            Some(json!({ "latencyMs": 300 })),
        )
        .await;
    assert_eq!(set["latencyMs"], 300);
    assert_eq!(
        set["routes"],
        json!(["idp_configurations", "redeem", "realm_token", "oauth_token"])
    );
    let started = Instant::now();
    assert_eq!(h.idp_status().await, StatusCode::OK);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        h.control_ok(Method::GET, "/_emulator/faults", None).await["latencyMs"],
        300
    );
    h.control_ok(Method::DELETE, "/_emulator/faults", None)
        .await;
    assert_eq!(
        h.control_ok(Method::GET, "/_emulator/faults", None).await["latencyMs"],
        0
    );
}

#[tokio::test]
async fn failure_rate_one_fails_every_token_route_but_not_admin() {
    let h = Harness::start().await;
    let token = h.registration_token(json!({ "count": 5 })).await;
    h.control_ok(
        Method::PUT,
        "/_emulator/faults",
        Some(json!({ "failureRate": 1.0 })),
    )
    .await;
    for _ in 0..3 {
        let r = refusal(h.redeem(token["token"].as_str().unwrap(), "dev").await).await;
        assert_eq!(
            (r.status, r.error.as_str()),
            (StatusCode::INTERNAL_SERVER_ERROR, "server_error")
        );
    }
    let r = refusal(
        h.http
            .get(h.url("/token/api/v5/idpConfigurations"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    // Admin routes are never faulted, and nothing was consumed.
    assert_eq!(
        h.registration_token_record(token["id"].as_str().unwrap())
            .await["usedCount"],
        0
    );
    assert_eq!(h.counters().await["requests"]["redeem"]["fault"], 3);
    h.control_ok(Method::DELETE, "/_emulator/faults", None)
        .await;
    h.redeem_ok(token["token"].as_str().unwrap(), "dev").await;
}

#[tokio::test]
async fn next_status_answers_exactly_n_requests() {
    let h = Harness::start().await;
    h.control_ok(
        Method::PUT,
        "/_emulator/faults",
        Some(json!({ "nextStatus": { "status": 503, "count": 3 }, "routes": ["idp_configurations"] })),
    )
    .await;
    for _ in 0..3 {
        let resp = h
            .http
            .get(h.url("/token/api/v5/idpConfigurations"))
            .send()
            .await
            .unwrap();
        let r = refusal(resp).await;
        assert_eq!(
            (r.status, r.error.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable")
        );
    }
    assert_eq!(h.idp_status().await, StatusCode::OK);
    assert_eq!(h.idp_status().await, StatusCode::OK);
    let counters = h.counters().await;
    assert_eq!(
        counters["requests"]["idp_configurations"],
        json!({ "fault": 3, "ok": 3 }),
        "two here, one from the harness's admin login"
    );
    assert_eq!(
        h.control_ok(Method::GET, "/_emulator/faults", None).await["nextStatus"],
        Value::Null
    );

    h.control_ok(
        Method::PUT,
        "/_emulator/faults",
        Some(json!({ "nextStatus": { "status": 429, "count": 1 } })),
    )
    .await;
    let r = refusal(
        h.http
            .get(h.url("/token/api/v5/idpConfigurations"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&r.headers), 1);
}

#[tokio::test]
async fn dropped_connections_break_the_response() {
    let h = Harness::start().await;
    h.control_ok(
        Method::PUT,
        "/_emulator/faults",
        Some(json!({ "dropConnections": 2 })),
    )
    .await;
    for _ in 0..2 {
        let result = h
            .http
            .get(h.url("/token/api/v5/idpConfigurations"))
            .send()
            .await;
        let err = result.expect_err("the connection is closed without a response");
        assert!(!err.is_status(), "{err:?}");
    }
    assert_eq!(
        h.idp_status().await,
        StatusCode::OK,
        "the server keeps serving"
    );
    assert_eq!(
        h.counters().await["requests"]["idp_configurations"],
        json!({ "dropped": 2, "ok": 2 }),
        "one here, one from the harness's admin login"
    );
}

#[tokio::test]
async fn fault_settings_are_validated() {
    let h = Harness::start().await;
    for bad in [
        json!({ "failureRate": 2 }),
        json!({ "routes": ["registration_tokens_admin"] }),
        json!({ "routes": ["nowhere"] }),
        json!({ "nextStatus": { "status": 200, "count": 1 } }),
        json!({ "latency": 5 }),
    ] {
        let resp = h
            .control(Method::PUT, "/_emulator/faults", Some(bad.clone()))
            .await;
        let r = refusal(resp).await;
        assert_eq!(
            (r.status, r.error.as_str()),
            (StatusCode::BAD_REQUEST, "invalid_request"),
            "{bad}"
        );
    }
    assert_eq!(h.idp_status().await, StatusCode::OK);
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let h = Harness::start().await;
    h.oauth_clients(json!({ "clientId": "svc", "clientSecret": "pw" }))
        .await;
    let set = h
        .control_ok(
            Method::PUT,
            "/_emulator/rate-limit",
            Some(json!({ "requests": 3, "perSeconds": 60 })),
        )
        .await;
    assert_eq!(
        set,
        json!({ "enabled": true, "requests": 3, "perSeconds": 60.0 })
    );
    for _ in 0..3 {
        assert_eq!(
            h.client_credentials("svc", "pw").await.status(),
            StatusCode::OK
        );
    }
    let r = refusal(h.client_credentials("svc", "pw").await).await;
    assert_eq!(
        (r.status, r.error.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    let wait = retry_after(&r.headers);
    assert!((1..=60).contains(&wait), "{wait}");
    // Every token-issuing route shares the budget; discovery does not count.
    let r = refusal(h.refresh("whatever").await).await;
    assert_eq!(r.error, "rate_limited");
    assert_eq!(h.idp_status().await, StatusCode::OK);
    assert_eq!(
        h.counters().await["requests"]["oauth_token"]["rate_limited"],
        1
    );

    h.control_ok(Method::DELETE, "/_emulator/rate-limit", None)
        .await;
    assert_eq!(
        h.control_ok(Method::GET, "/_emulator/rate-limit", None)
            .await,
        json!({ "enabled": false })
    );
    assert_eq!(
        h.client_credentials("svc", "pw").await.status(),
        StatusCode::OK
    );
    for bad in [
        json!({ "requests": 0, "perSeconds": 1 }),
        json!({ "requests": 1, "perSeconds": 0 }),
        json!({ "requests": 1 }),
    ] {
        let r = refusal(
            h.control(Method::PUT, "/_emulator/rate-limit", Some(bad))
                .await,
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn a_configured_rate_limit_is_on_from_the_start() {
    let h = Harness::with(EmulatorConfig {
        rate_limit: Some(RateLimit {
            requests: 2,
            per: Duration::from_secs(30),
        }),
        ..EmulatorConfig::default()
    })
    .await;
    // The harness's admin login used one request of the budget.
    let token = h.registration_token(json!({ "count": 5 })).await;
    h.redeem_ok(token["token"].as_str().unwrap(), "a").await;
    let r = refusal(h.redeem(token["token"].as_str().unwrap(), "b").await).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        h.registration_token_record(token["id"].as_str().unwrap())
            .await["usedCount"],
        1
    );
}

#[tokio::test]
async fn introspection_reports_what_the_server_would_accept() {
    let h = Harness::start().await;
    assert_eq!(
        h.introspect("not-a-token").await,
        json!({ "active": false })
    );
    let admin = h.introspect(&h.admin).await;
    assert_eq!(
        (admin["active"].clone(), admin["kind"].clone()),
        (json!(true), json!("admin"))
    );
    assert!(admin["expiresIn"].as_u64().unwrap() > 3500);
    let missing = h
        .http
        .get(h.url("/_emulator/introspect"))
        .send()
        .await
        .unwrap();
    assert_eq!(refusal(missing).await.status, StatusCode::BAD_REQUEST);
}
