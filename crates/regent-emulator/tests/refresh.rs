//! The realm token endpoint: refresh with rotation and reuse detection,
//! rotation off, expiry, client and grant errors, the admin password grant.

mod common;

use std::time::{Duration, Instant};

use common::{Harness, refusal};
use regent_emulator::EmulatorConfig;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn twenty_rotations_then_reuse_of_an_old_token_kills_the_session() {
    let h = Harness::start().await;
    let auth = h.enroll("device-1/0").await;
    let mut history = vec![auth["token"]["refresh_token"].as_str().unwrap().to_owned()];
    for _ in 0..20 {
        let current = history.last().unwrap().clone();
        let body = h.refresh_ok(&current).await;
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 300);
        assert_eq!(body["refresh_expires_in"], 30 * 24 * 3600);
        assert!(body["scope"].is_string());
        let next = body["refresh_token"].as_str().unwrap().to_owned();
        assert!(
            !history.contains(&next),
            "each refresh rotates the refresh token"
        );
        assert_eq!(
            h.introspect(body["access_token"].as_str().unwrap()).await["active"],
            true
        );
        history.push(next);
    }
    assert_eq!(h.counters().await["refreshes"], 20);

    let r = refusal(h.refresh(&history[10]).await).await;
    assert_eq!(
        (r.status, r.error.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_grant")
    );
    assert_eq!(
        r.description,
        "Maximum allowed refresh token reuse exceeded"
    );
    // Keycloak reuse detection: the newest token dies with the session.
    let r = refusal(h.refresh(history.last().unwrap()).await).await;
    assert_eq!(
        (r.error.as_str(), r.description.as_str()),
        ("invalid_grant", "Session not active")
    );
    assert_eq!(
        h.counters().await["requests"]["realm_token"]["invalid_grant"],
        2
    );
}

#[tokio::test]
async fn with_rotation_off_the_same_refresh_token_comes_back() {
    let h = Harness::with(EmulatorConfig {
        rotate_refresh_tokens: false,
        ..EmulatorConfig::default()
    })
    .await;
    let auth = h.enroll("device-1/0").await;
    let refresh = auth["token"]["refresh_token"].as_str().unwrap();
    let mut access_tokens = vec![auth["token"]["access_token"].clone()];
    for _ in 0..3 {
        let body = h.refresh_ok(refresh).await;
        assert_eq!(body["refresh_token"], refresh);
        assert!(
            !access_tokens.contains(&body["access_token"]),
            "access tokens are always new"
        );
        access_tokens.push(body["access_token"].clone());
    }
}

#[tokio::test]
async fn rotation_can_be_switched_at_run_time() {
    let h = Harness::start().await;
    let auth = h.enroll("device-1/0").await;
    let realm = h
        .control_ok(
            Method::PUT,
            "/_emulator/realm",
            Some(json!({ "rotateRefreshTokens": false })),
        )
        .await;
    assert_eq!(
        realm,
        json!({ "accessTokenLifespan": 300, "refreshTokenLifespan": 2592000, "rotateRefreshTokens": false })
    );
    let refresh = auth["token"]["refresh_token"].as_str().unwrap();
    assert_eq!(h.refresh_ok(refresh).await["refresh_token"], refresh);
    h.control_ok(
        Method::PUT,
        "/_emulator/realm",
        Some(json!({ "rotateRefreshTokens": true, "accessTokenLifespan": 60 })),
    )
    .await;
    let rotated = h.refresh_ok(refresh).await;
    assert_ne!(rotated["refresh_token"], refresh);
    assert_eq!(rotated["expires_in"], 60);
    assert_eq!(
        h.control_ok(Method::GET, "/_emulator/realm", None).await["accessTokenLifespan"],
        60
    );
}

#[tokio::test]
async fn realm_token_errors() {
    let h = Harness::start().await;
    let auth = h.enroll("device-1/0").await;
    let refresh = auth["token"]["refresh_token"].as_str().unwrap();
    let post = |form: Vec<(&'static str, String)>| {
        let req = h.http.post(h.realm_token_url()).form(&form);
        async move { refusal(req.send().await.unwrap()).await }
    };

    let r = post(vec![
        ("grant_type", "refresh_token".into()),
        ("refresh_token", refresh.into()),
        ("client_id", "someone-else".into()),
    ])
    .await;
    assert_eq!(
        (r.status, r.error.as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_client")
    );
    let r = post(vec![
        ("grant_type", "refresh_token".into()),
        ("refresh_token", refresh.into()),
    ])
    .await;
    assert_eq!(
        (r.status, r.error.as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_client")
    );
    let r = post(vec![
        ("grant_type", "client_credentials".into()),
        ("client_id", "regent-agent".into()),
    ])
    .await;
    assert_eq!(
        (r.status, r.error.as_str()),
        (StatusCode::BAD_REQUEST, "unsupported_grant_type")
    );
    let r = post(vec![("client_id", "regent-agent".into())]).await;
    assert_eq!(
        (r.status, r.error.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let r = post(vec![
        ("grant_type", "refresh_token".into()),
        ("client_id", "regent-agent".into()),
    ])
    .await;
    assert_eq!(
        (r.status, r.error.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    for unknown in ["garbage", "abc.def", ".", "x".repeat(5000).as_str()] {
        let r = post(vec![
            ("grant_type", "refresh_token".into()),
            ("refresh_token", unknown.into()),
            ("client_id", "regent-agent".into()),
        ])
        .await;
        assert_eq!(
            (r.error.as_str(), r.description.as_str()),
            ("invalid_grant", "Token is not active")
        );
    }
    let r = post(vec![
        ("grant_type", "password".into()),
        ("username", "admin".into()),
        ("password", "wrong".into()),
        ("client_id", "regent-agent".into()),
    ])
    .await;
    assert_eq!(
        (r.status, r.error.as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_grant")
    );
    assert_eq!(r.description, "Invalid user credentials");

    let wrong_realm = h
        .http
        .post(h.url("/auth/realms/other/protocol/openid-connect/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", "regent-agent"),
        ])
        .send()
        .await
        .unwrap();
    let r = refusal(wrong_realm).await;
    assert_eq!(
        (r.status, r.error.as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );

    // None of that disturbed the session.
    h.refresh_ok(refresh).await;
}

#[tokio::test]
async fn an_idle_refresh_token_expires() {
    let h = Harness::with(EmulatorConfig {
        refresh_token_lifespan: Duration::from_secs(1),
        ..EmulatorConfig::default()
    })
    .await;
    let issued = Instant::now();
    let auth = h.enroll("device-1/0").await;
    assert_eq!(auth["token"]["refresh_expires_in"], 1);
    tokio::time::sleep(Duration::from_millis(1200).saturating_sub(issued.elapsed())).await;
    let r = refusal(
        h.refresh(auth["token"]["refresh_token"].as_str().unwrap())
            .await,
    )
    .await;
    assert_eq!(
        (r.error.as_str(), r.description.as_str()),
        ("invalid_grant", "Token is not active")
    );
}

#[tokio::test]
async fn access_tokens_stay_valid_until_they_expire() {
    let h = Harness::with(EmulatorConfig {
        access_token_lifespan: Duration::from_secs(1),
        ..EmulatorConfig::default()
    })
    .await;
    let issued = Instant::now();
    let auth = h.enroll("device-1/0").await;
    assert_eq!(auth["token"]["expires_in"], 1);
    let first = auth["token"]["access_token"].as_str().unwrap();
    let seen = h.introspect(first).await;
    assert_eq!(seen["active"], true);
    assert!(seen["expiresIn"].as_u64().unwrap() <= 1);
    // A refresh does not end the access tokens issued before it.
    h.refresh_ok(auth["token"]["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(h.introspect(first).await["active"], true);
    tokio::time::sleep(Duration::from_millis(1200).saturating_sub(issued.elapsed())).await;
    assert_eq!(h.introspect(first).await["active"], false);
}

#[tokio::test]
async fn admin_sessions_refresh_too() {
    let h = Harness::start().await;
    let login: Value = h
        .http
        .post(h.realm_token_url())
        .form(&[
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", "admin"),
            ("client_id", "regent-agent"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(login["token_type"], "Bearer");
    let refreshed = h.refresh_ok(login["refresh_token"].as_str().unwrap()).await;
    let token = refreshed["access_token"].as_str().unwrap();
    assert_eq!(h.introspect(token).await["kind"], "admin");
    let resp = h
        .http
        .get(h.url("/token/api/v5/registrationTokens"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}
