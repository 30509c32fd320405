//! The `oauth2` profile against the real emulator on 127.0.0.1.
#![allow(clippy::expect_used)] // Test code: a failed expectation fails the test.

mod upstream_support;

use std::time::{Duration, SystemTime};

use regent_agent::ErrorCode;
use regent_agent::secret::{ExposeSecret, SecretString, secret};
use regent_agent::upstream::{OAuth2, OAuth2Endpoint};
use reqwest::Method;
use serde_json::{Value, json};
use upstream_support::{Server, closed_port_url, http, http_with_timeout};
use url::Url;

const SECRET: &str = "mtclient-secret-value";

fn client(id: &str, extra: Value) -> Value {
    let mut spec = json!({
        "clientId": id,
        "clientSecret": SECRET,
        "accessTokenValidity": 3600,
        "refreshTokenValidity": 7200,
        "authorizedGrantTypes": ["client_credentials", "refresh_token"],
        "scope": ["entities_api", "users_api"],
    });
    if let (Value::Object(spec), Value::Object(extra)) = (&mut spec, extra) {
        spec.extend(extra);
    }
    spec
}

fn oauth2(server: &Server, client_id: &str, scope: Option<&str>) -> OAuth2 {
    OAuth2::new(
        http(),
        OAuth2Endpoint::TokenUrl(server.url_for("/oauth/token")),
        client_id.to_owned(),
        scope.map(str::to_owned),
    )
    .expect("loopback URL accepted")
}

fn client_secret() -> SecretString {
    secret(SECRET.to_owned())
}

#[tokio::test]
async fn client_credentials_then_refresh_with_rotation() {
    let server = Server::start().await;
    server.oauth_client(client("mtclient", json!({}))).await;
    let upstream = oauth2(&server, "mtclient", Some("entities_api"));

    let before = SystemTime::now();
    let grant = upstream
        .client_credentials(&client_secret())
        .await
        .expect("token");
    assert!(grant.received_at >= before);
    assert_eq!(grant.lifetime(), Duration::from_secs(3600));
    assert_eq!(grant.token_type, "Bearer");
    assert_eq!(grant.scope.as_deref(), Some("entities_api"));
    let refresh = grant.refresh_token.clone().expect("refresh token");

    let renewed = upstream
        .refresh(&client_secret(), &refresh)
        .await
        .expect("refresh");
    assert!(!renewed.same_token_as(&grant));
    let rotated = renewed
        .refresh_token
        .clone()
        .expect("rotated refresh token");
    assert_ne!(rotated.expose_secret(), refresh.expose_secret());

    // The used refresh token is gone: REVOKED, and the engine falls back to the secret.
    let e = upstream
        .refresh(&client_secret(), &refresh)
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Revoked, "{}", e.message);
    assert!(!e.message.contains(refresh.expose_secret()));
    upstream
        .client_credentials(&client_secret())
        .await
        .expect("fallback to the secret");
}

#[tokio::test]
async fn single_token_servers_reissue_the_same_token_with_less_time() {
    let server = Server::start().await;
    server.oauth_client(client("single", json!({}))).await;
    let upstream = oauth2(&server, "single", None);
    let first = upstream
        .client_credentials(&client_secret())
        .await
        .expect("first");
    let second = upstream
        .client_credentials(&client_secret())
        .await
        .expect("second");
    assert!(second.same_token_as(&first), "re-issued while valid");
    // Both expiries describe the same instant, to within the server's whole seconds.
    let skew = first
        .expires_at
        .duration_since(second.expires_at)
        .unwrap_or_else(|e| e.duration());
    assert!(skew <= Duration::from_secs(2), "{skew:?}");
}

#[tokio::test]
async fn wrong_secret_is_client_credentials_invalid() {
    let server = Server::start().await;
    server.oauth_client(client("mtclient", json!({}))).await;
    let upstream = oauth2(&server, "mtclient", None);
    let wrong = secret("not-the-secret-123".to_owned());
    let e = upstream.client_credentials(&wrong).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::ClientCredentialsInvalid, "{}", e.message);
    assert!(e.message.contains("\"mtclient\""), "{}", e.message);
    assert!(!e.message.contains("not-the-secret-123"));
    assert!(!e.is_retryable());

    let unknown = oauth2(&server, "nobody", None);
    let e = unknown
        .client_credentials(&client_secret())
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::ClientCredentialsInvalid, "{}", e.message);
}

#[tokio::test]
async fn disallowed_grant_or_scope_is_a_configuration_error() {
    let server = Server::start().await;
    server
        .oauth_client(client(
            "ccOnly",
            json!({"authorizedGrantTypes": ["client_credentials"]}),
        ))
        .await;
    let upstream = oauth2(&server, "ccOnly", Some("entities_api"));
    let grant = upstream
        .client_credentials(&client_secret())
        .await
        .expect("token");
    assert!(
        grant.refresh_token.is_none(),
        "no refresh grant, no refresh token"
    );
    let e = upstream
        .refresh(&client_secret(), &secret("some-refresh".to_owned()))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Config, "{}", e.message);
    assert!(e.message.contains("refresh_token grant"), "{}", e.message);

    let wrong_scope = oauth2(&server, "ccOnly", Some("admin_api"));
    let e = wrong_scope
        .client_credentials(&client_secret())
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Config, "{}", e.message);
    assert!(e.message.contains("admin_api"), "{}", e.message);
}

#[tokio::test]
async fn active_token_cap_is_token_limit_with_retry_after() {
    let server = Server::start().await;
    server
        .oauth_client(client("mtclient", json!({"accessTokenValidity": 120})))
        .await;
    let (status, answer) = server
        .admin(
            Method::PUT,
            "/oauth/customers/Customer",
            Some(json!({
                "id": "Customer",
                "applicationClients": ["mtclient"],
                "multitokenConfig": {"clientCredentialsMultiTokenConfig": {"maxActiveTokensAllowed": 2}}
            })),
        )
        .await;
    assert!(status.is_success(), "{answer}");
    let upstream = oauth2(&server, "mtclient", None);
    let a = upstream
        .client_credentials(&client_secret())
        .await
        .expect("first");
    let b = upstream
        .client_credentials(&client_secret())
        .await
        .expect("second");
    assert!(
        !a.same_token_as(&b),
        "multi-token mode mints a new token each time"
    );
    let e = upstream
        .client_credentials(&client_secret())
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::TokenLimit, "{}", e.message);
    assert!(e.code.is_retryable());
    let after = e
        .retry_after
        .expect("retry_after until the earliest token expires");
    assert!(
        after > Duration::from_secs(100) && after <= Duration::from_secs(120),
        "{after:?}"
    );
    assert!(
        e.message.contains("maxActiveTokensAllowed"),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn other_rate_limits_are_rate_limited() {
    let server = Server::start().await;
    server.oauth_client(client("mtclient", json!({}))).await;
    let upstream = oauth2(&server, "mtclient", None);
    server
        .control(
            Method::PUT,
            "/_emulator/rate-limit",
            Some(json!({"requests": 1, "perSeconds": 30})),
        )
        .await;
    upstream
        .client_credentials(&client_secret())
        .await
        .expect("within the budget");
    let e = upstream
        .client_credentials(&client_secret())
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::RateLimited, "{}", e.message);
    let after = e.retry_after.expect("retry_after");
    assert!(
        after > Duration::ZERO && after <= Duration::from_secs(30),
        "{after:?}"
    );
}

#[tokio::test]
async fn issuer_discovery_finds_and_caches_the_token_endpoint() {
    let server = Server::start().await;
    server.oauth_client(client("mtclient", json!({}))).await;
    let upstream = OAuth2::new(
        http(),
        OAuth2Endpoint::Issuer(server.url()),
        "mtclient".to_owned(),
        None,
    )
    .expect("issuer accepted");
    let grant = upstream
        .client_credentials(&client_secret())
        .await
        .expect("token");
    let refresh = grant.refresh_token.expect("refresh token");
    upstream
        .refresh(&client_secret(), &refresh)
        .await
        .expect("refresh");
    upstream
        .client_credentials(&client_secret())
        .await
        .expect("again");
    assert_eq!(server.requests("openid_configuration", "ok").await, 1);
    assert_eq!(server.requests("oauth_token", "ok").await, 3);
}

#[tokio::test]
async fn discovery_failure_is_retried_on_the_next_call() {
    let server = Server::start().await;
    server.oauth_client(client("mtclient", json!({}))).await;
    let upstream = OAuth2::new(
        http(),
        OAuth2Endpoint::Issuer(server.url()),
        "mtclient".into(),
        None,
    )
    .expect("issuer accepted");
    server
        .faults(
            json!({"nextStatus": {"status": 500, "count": 1}, "routes": ["openid_configuration"]}),
        )
        .await;
    let e = upstream
        .client_credentials(&client_secret())
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::ServerError, "{}", e.message);
    assert!(e.message.contains("OpenID configuration"), "{}", e.message);
    upstream
        .client_credentials(&client_secret())
        .await
        .expect("discovered on retry");
}

#[tokio::test]
async fn faults_map_to_retryable_codes() {
    let server = Server::start().await;
    server.oauth_client(client("mtclient", json!({}))).await;
    let upstream = oauth2(&server, "mtclient", None);

    server
        .faults(json!({"nextStatus": {"status": 503, "count": 1}}))
        .await;
    let e = upstream
        .client_credentials(&client_secret())
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::ServerError, "{}", e.message);
    assert!(e.code.is_retryable());
    assert_eq!(e.retry_after, Some(Duration::from_secs(1)));
    assert!(
        e.message.contains("temporarily_unavailable"),
        "{}",
        e.message
    );

    server.faults(json!({"dropConnections": 1})).await;
    let e = upstream
        .client_credentials(&client_secret())
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable, "{}", e.message);

    server.faults(json!({"failureRate": 1.0})).await;
    let e = upstream
        .client_credentials(&client_secret())
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::ServerError, "{}", e.message);

    server.faults(json!({"latencyMs": 3000})).await;
    let slow = OAuth2::new(
        http_with_timeout(Duration::from_millis(250)),
        OAuth2Endpoint::TokenUrl(server.url_for("/oauth/token")),
        "mtclient".into(),
        None,
    )
    .expect("oauth2");
    let e = slow.client_credentials(&client_secret()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout, "{}", e.message);

    server
        .control(Method::DELETE, "/_emulator/faults", None)
        .await;
    upstream
        .client_credentials(&client_secret())
        .await
        .expect("recovered");
}

#[tokio::test]
async fn unreachable_server_is_unavailable() {
    let url = closed_port_url().await;
    let upstream =
        OAuth2::new(http(), OAuth2Endpoint::Issuer(url), "c".into(), None).expect("oauth2");
    let e = upstream
        .client_credentials(&client_secret())
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable, "{}", e.message);
}

#[tokio::test]
async fn plain_http_is_refused_except_to_loopback() {
    for endpoint in [
        OAuth2Endpoint::TokenUrl(Url::parse("http://10.0.0.1/oauth/token").unwrap()),
        OAuth2Endpoint::Issuer(Url::parse("http://auth.example.com/").unwrap()),
    ] {
        let e = OAuth2::new(http(), endpoint, "c".into(), None).unwrap_err();
        assert_eq!(e.code, ErrorCode::Config);
        assert!(
            e.message.contains("refusing plain http://"),
            "{}",
            e.message
        );
    }
    let ok = OAuth2Endpoint::TokenUrl(Url::parse("https://auth.example.com/oauth/token").unwrap());
    assert!(OAuth2::new(http(), ok, "c".into(), None).is_ok());
}
