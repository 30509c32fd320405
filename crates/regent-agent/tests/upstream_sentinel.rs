//! The `sentinel` profile against the real emulator on 127.0.0.1.
#![allow(clippy::expect_used)] // Test code: a failed expectation fails the test.

mod upstream_support;

use std::time::{Duration, SystemTime};

use regent_agent::ErrorCode;
use regent_agent::secret::{ExposeSecret, SecretString, secret};
use regent_agent::upstream::{DeviceIdentity, Sentinel};
use reqwest::{Method, StatusCode};
use serde_json::json;
use upstream_support::{Server, closed_port_url, http, http_with_timeout};
use url::Url;

fn identity(identifier: &str) -> DeviceIdentity {
    DeviceIdentity {
        identifier: identifier.to_owned(),
        fqdn: "build-07.example.internal".to_owned(),
        mac_address: "aa:bb:cc:dd:ee:07".to_owned(),
        system_user_name: "alice".to_owned(),
        ref_id1: Some("cost-centre-9".to_owned()),
        ref_id2: None,
    }
}

async fn sentinel(server: &Server) -> Sentinel {
    Sentinel::new(http(), server.url()).expect("loopback URL accepted")
}

#[tokio::test]
async fn redeem_then_refresh_with_rotation() {
    let server = Server::start().await;
    let (_, value) = server.registration_token(json!({"count": 2})).await;
    let upstream = sentinel(&server).await;

    let before = SystemTime::now();
    let redemption = upstream
        .redeem(&secret(value), &identity("dev-a/0"))
        .await
        .expect("redemption succeeds");
    assert!(!redemption.auth_token_id.is_empty());
    let grant = &redemption.grant;
    assert!(grant.received_at >= before && grant.received_at <= SystemTime::now());
    assert_eq!(grant.lifetime(), Duration::from_secs(300));
    assert_eq!(grant.token_type, "Bearer");
    let first_refresh = grant.refresh_token.clone().expect("a refresh token");

    // The administrator sees who redeemed.
    let (status, list) = server
        .admin(Method::GET, "/token/api/v5/authTokens", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let listed = list.to_string();
    for fact in [
        "dev-a/0",
        "build-07.example.internal",
        "aa:bb:cc:dd:ee:07",
        "alice",
        "cost-centre-9",
    ] {
        assert!(listed.contains(fact), "{fact} missing from {listed}");
    }

    let renewed = upstream
        .refresh(&first_refresh)
        .await
        .expect("refresh succeeds");
    assert!(!renewed.same_token_as(grant), "a fresh access token");
    let rotated = renewed
        .refresh_token
        .clone()
        .expect("rotated refresh token");
    assert_ne!(rotated.expose_secret(), first_refresh.expose_secret());

    // Presenting the superseded refresh token kills the session (reuse detection).
    let reuse = upstream.refresh(&first_refresh).await.unwrap_err();
    assert_eq!(reuse.code, ErrorCode::Revoked, "{}", reuse.message);
    assert!(reuse.message.contains("reuse"), "{}", reuse.message);
    assert!(!reuse.message.contains(first_refresh.expose_secret()));
    assert_eq!(
        upstream.refresh(&rotated).await.unwrap_err().code,
        ErrorCode::Revoked
    );
}

#[tokio::test]
async fn replay_returns_the_same_auth_token_without_a_count() {
    let server = Server::start().await;
    let (id, value) = server.registration_token(json!({"count": 1})).await;
    let upstream = sentinel(&server).await;
    let token = secret(value);
    let first = upstream
        .redeem(&token, &identity("dev-b/0"))
        .await
        .expect("first");
    let again = upstream
        .redeem(&token, &identity("dev-b/0"))
        .await
        .expect("replay");
    assert_eq!(first.auth_token_id, again.auth_token_id);
    let counters = server.counters().await;
    assert_eq!(
        counters["registrationTokens"][&id]["usedCount"], 1,
        "{counters}"
    );
    assert_eq!(server.requests("redeem", "replay").await, 1);
    // The replay opened a fresh session: its refresh token works.
    let refresh = again.grant.refresh_token.expect("refresh token");
    upstream
        .refresh(&refresh)
        .await
        .expect("refresh after replay");
}

#[tokio::test]
async fn each_refusal_has_its_code_and_an_actionable_message() {
    let server = Server::start().await;
    let upstream = sentinel(&server).await;

    let unknown = secret("never-issued-value".to_owned());
    let e = upstream
        .redeem(&unknown, &identity("dev-c/0"))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::RegistrationTokenInvalid, "{}", e.message);
    assert!(e.message.contains("not recognised"), "{}", e.message);
    assert!(!e.message.contains("never-issued-value"));

    let (_, disabled) = server
        .registration_token(json!({"count": 5, "isEnabled": false}))
        .await;
    let e = upstream
        .redeem(&secret(disabled.clone()), &identity("dev-c/0"))
        .await
        .unwrap_err();
    assert_eq!(
        e.code,
        ErrorCode::RegistrationTokenDisabled,
        "{}",
        e.message
    );
    assert!(e.message.contains("disabled") && e.message.contains("administrator"));
    assert!(!e.message.contains(&disabled));

    let (_, expired) = server
        .registration_token(json!({"count": 5, "expiryDate": "2001-01-01"}))
        .await;
    let e = upstream
        .redeem(&secret(expired), &identity("dev-c/0"))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::RegistrationTokenExpired, "{}", e.message);
    assert!(
        e.message.contains("2001-01-01"),
        "server's description passed through: {}",
        e.message
    );

    let (_, single) = server.registration_token(json!({"count": 1})).await;
    let single = secret(single);
    upstream
        .redeem(&single, &identity("dev-c/0"))
        .await
        .expect("first count");
    let e = upstream
        .redeem(&single, &identity("dev-c/1"))
        .await
        .unwrap_err();
    assert_eq!(
        e.code,
        ErrorCode::RegistrationTokenExhausted,
        "{}",
        e.message
    );
    assert!(
        e.message
            .starts_with("registration token refused: it has no counts left (server: "),
        "{}",
        e.message
    );
    assert!(
        e.message
            .ends_with("ask your administrator to raise its count or issue a new one")
    );
    for code in [
        e.code,
        ErrorCode::RegistrationTokenInvalid,
        ErrorCode::RegistrationTokenDisabled,
    ] {
        assert!(!code.is_retryable());
    }
}

#[tokio::test]
async fn deleting_the_auth_token_revokes_the_device() {
    let server = Server::start().await;
    let (_, value) = server.registration_token(json!({"count": 1})).await;
    let upstream = sentinel(&server).await;
    let redemption = upstream
        .redeem(&secret(value), &identity("dev-d/0"))
        .await
        .expect("redeem");
    let (status, _) = server
        .admin(
            Method::DELETE,
            &format!("/token/api/v5/authTokens/{}", redemption.auth_token_id),
            None,
        )
        .await;
    assert!(status.is_success(), "{status}");
    let refresh = redemption.grant.refresh_token.expect("refresh token");
    let e = upstream.refresh(&refresh).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Revoked, "{}", e.message);
    assert!(
        e.message.contains("ended this device's session"),
        "{}",
        e.message
    );
    assert!(!e.is_retryable());
}

#[tokio::test]
async fn discovery_is_cached_and_retried_after_a_failure() {
    let server = Server::start().await;
    let (_, value) = server.registration_token(json!({"count": 1})).await;
    let upstream = sentinel(&server).await;
    let redemption = upstream
        .redeem(&secret(value), &identity("dev-e/0"))
        .await
        .expect("redeem");
    let mut refresh = redemption.grant.refresh_token.expect("refresh token");

    server
        .faults(
            json!({"nextStatus": {"status": 503, "count": 1}, "routes": ["idp_configurations"]}),
        )
        .await;
    let e = upstream.refresh(&refresh).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::ServerError, "{}", e.message);
    assert!(e.code.is_retryable());
    assert_eq!(e.retry_after, Some(Duration::from_secs(1)));

    for _ in 0..3 {
        let grant = upstream.refresh(&refresh).await.expect("refresh");
        refresh = grant.refresh_token.expect("rotated");
    }
    let idp = upstream.idp_config().await.expect("cached");
    assert_eq!(idp.realm, "regent");
    assert_eq!(idp.client_id, "regent-agent");
    assert_eq!(
        server.requests("idp_configurations", "ok").await,
        1,
        "discovered once, then cached"
    );
}

#[tokio::test]
async fn server_errors_are_retryable_and_pass_the_description_through() {
    let server = Server::start().await;
    let (_, value) = server.registration_token(json!({"count": 1})).await;
    let token = secret(value);
    let upstream = sentinel(&server).await;
    server
        .faults(json!({"nextStatus": {"status": 503, "count": 1}, "routes": ["redeem"]}))
        .await;
    let e = upstream
        .redeem(&token, &identity("dev-f/0"))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::ServerError, "{}", e.message);
    assert!(e.code.is_retryable());
    assert!(
        e.message
            .contains("temporarily_unavailable: injected fault"),
        "{}",
        e.message
    );
    assert_eq!(e.retry_after, Some(Duration::from_secs(1)));

    server
        .faults(json!({"nextStatus": {"status": 500, "count": 1}, "routes": ["redeem"]}))
        .await;
    let e = upstream
        .redeem(&token, &identity("dev-f/0"))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::ServerError);

    // Retrying with the same identifier after failures costs one count in total.
    upstream
        .redeem(&token, &identity("dev-f/0"))
        .await
        .expect("retry succeeds");
}

#[tokio::test]
async fn rate_limit_is_reported_with_retry_after() {
    let server = Server::start().await;
    let (_, value) = server.registration_token(json!({"count": 1})).await;
    let token = secret(value);
    let upstream = sentinel(&server).await;
    let (status, _) = server
        .control(
            Method::PUT,
            "/_emulator/rate-limit",
            Some(json!({"requests": 1, "perSeconds": 60})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    upstream
        .redeem(&token, &identity("dev-g/0"))
        .await
        .expect("within the budget");
    let e = upstream
        .redeem(&token, &identity("dev-g/0"))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::RateLimited, "{}", e.message);
    let after = e.retry_after.expect("retry_after from Retry-After");
    assert!(
        after > Duration::ZERO && after <= Duration::from_secs(60),
        "{after:?}"
    );
}

#[tokio::test]
async fn dropped_connections_are_unavailable_not_a_panic() {
    let server = Server::start().await;
    let (_, value) = server.registration_token(json!({"count": 1})).await;
    let upstream = sentinel(&server).await;
    server
        .faults(json!({"dropConnections": 1, "routes": ["redeem"]}))
        .await;
    let e = upstream
        .redeem(&secret(value), &identity("dev-h/0"))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable, "{}", e.message);
    assert!(
        e.message
            .contains("cannot reach the license server at 127.0.0.1:"),
        "{}",
        e.message
    );
    assert!(e.code.is_retryable());
}

#[tokio::test]
async fn slow_server_is_a_timeout() {
    let server = Server::start().await;
    let (_, value) = server.registration_token(json!({"count": 1})).await;
    let upstream = Sentinel::new(http_with_timeout(Duration::from_millis(300)), server.url())
        .expect("sentinel");
    server
        .faults(json!({"latencyMs": 3000, "routes": ["redeem"]}))
        .await;
    let started = std::time::Instant::now();
    let e = upstream
        .redeem(&secret(value), &identity("dev-i/0"))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout, "{}", e.message);
    assert!(
        e.message.contains("did not answer within 300 ms"),
        "{}",
        e.message
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn unreachable_server_is_unavailable() {
    let url = closed_port_url().await;
    let upstream = Sentinel::new(http(), url).expect("sentinel");
    let e = upstream
        .redeem(&secret("x-token".to_owned()), &identity("dev-j/0"))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable, "{}", e.message);
    assert!(
        e.message
            .contains("cannot reach the license server at 127.0.0.1:"),
        "{}",
        e.message
    );
    assert!(
        e.message.to_lowercase().contains("refused"),
        "{}",
        e.message
    );
    let e = upstream.refresh(&secret("r".to_owned())).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable, "{}", e.message);
}

#[tokio::test]
async fn plain_http_is_refused_except_to_loopback() {
    // `localhost` is a name the system resolver answers for: refused too.
    for url in [
        "http://10.0.0.1/",
        "http://licenses.example.com/ems/",
        "http://localhost:1/",
    ] {
        let e = Sentinel::new(http(), Url::parse(url).unwrap()).unwrap_err();
        assert_eq!(e.code, ErrorCode::Config, "{url}");
        assert!(
            e.message.contains("refusing plain http://"),
            "{}",
            e.message
        );
    }
    for url in [
        "https://licenses.example.com/ems/",
        "http://127.0.0.1:1/",
        "http://[::1]:1/",
    ] {
        assert!(
            Sentinel::new(http(), Url::parse(url).unwrap()).is_ok(),
            "{url}"
        );
    }
}

#[tokio::test]
async fn debug_output_never_shows_secrets() {
    let server = Server::start().await;
    let (_, value) = server.registration_token(json!({"count": 1})).await;
    let upstream = sentinel(&server).await;
    let token: SecretString = secret(value.clone());
    let redemption = upstream
        .redeem(&token, &identity("dev-k/0"))
        .await
        .expect("redeem");
    let shown = format!("{redemption:?} {upstream:?} {token:?}");
    let access = redemption.grant.access_token.expose_secret();
    let refresh = redemption
        .grant
        .refresh_token
        .as_ref()
        .expect("refresh")
        .expose_secret();
    for secret_value in [value.as_str(), access, refresh] {
        assert!(!shown.contains(secret_value), "{shown}");
    }
}
