//! Hostile or sloppy input: every refusal is RFC 6749 JSON and the server
//! keeps serving. Also the admin guard, lifecycle and the `run` entry point.

mod common;

use std::io;
use std::time::Duration;

use common::{Harness, refusal};
use regent_emulator::{BODY_LIMIT, Emulator, EmulatorConfig};
use reqwest::header::HeaderValue;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn malformed_bodies_get_json_errors_and_the_server_keeps_serving() {
    let h = Harness::start().await;
    let token = h.registration_token(json!({ "count": 1 })).await;
    let basic = format!("Basic {}", token["token"].as_str().unwrap());
    let redeem = || {
        h.http
            .post(h.url("/token/api/v5/authTokens"))
            .header("Authorization", basic.clone())
    };

    let cases = [
        (
            redeem()
                .header("content-type", "application/json")
                .body("{not json"),
            StatusCode::BAD_REQUEST,
        ),
        (
            redeem()
                .header("content-type", "application/json")
                .body("[]"),
            StatusCode::BAD_REQUEST,
        ),
        (
            redeem().header("content-type", "application/json").body(""),
            StatusCode::BAD_REQUEST,
        ),
        (
            redeem().header("content-type", "text/plain").body("{}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (redeem().body("{}"), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (
            redeem()
                .header("content-type", "application/json")
                .body(vec![b' '; BODY_LIMIT * 3]),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            h.http
                .post(h.realm_token_url())
                .json(&json!({ "grant_type": "refresh_token" })),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            h.http
                .post(h.realm_token_url())
                .header("content-type", "application/x-www-form-urlencoded")
                .body("grant_type=password&grant_type=refresh_token&client_id=regent-agent"),
            StatusCode::BAD_REQUEST,
        ),
        (
            h.http
                .post(h.url("/oauth/token"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(vec![b'a'; BODY_LIMIT + 1]),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            h.http
                .put(h.url("/_emulator/faults"))
                .header("X-Emulator-Key", h.emu.admin_key())
                .body("{}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            h.http
                .post(h.url("/token/api/v5/registrationTokens"))
                .bearer_auth(&h.admin)
                .header("content-type", "application/json")
                .body(r#"{"registrationToken":{"count":1.5}}"#),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (i, (request, status)) in cases.into_iter().enumerate() {
        let r = refusal(request.send().await.unwrap()).await;
        assert_eq!(r.status, status, "case {i}: {}", r.description);
        assert_eq!(r.error, "invalid_request", "case {i}");
        assert!(!r.description.is_empty());
        assert_eq!(
            h.idp_status().await,
            StatusCode::OK,
            "still serving after case {i}"
        );
    }
    // Nothing above consumed the count.
    h.redeem_ok(token["token"].as_str().unwrap(), "after").await;
}

#[tokio::test]
async fn odd_headers_and_paths_are_refused_cleanly() {
    let h = Harness::start().await;
    let odd: [&[u8]; 5] = [
        b"Basic",
        b"Bearer abc",
        b"Basic !!!not-base64!!!",
        b"Basic \xff\xfe not utf-8",
        b"Basic  ",
    ];
    for bytes in odd {
        let (name, value) = ("Authorization", HeaderValue::from_bytes(bytes).unwrap());
        let resp = h
            .http
            .post(h.url("/token/api/v5/authTokens"))
            .header(name, value.clone())
            .json(&json!({ "authToken": { "identifier": "x" } }))
            .send()
            .await
            .unwrap();
        assert_eq!(
            refusal(resp).await.error,
            "invalid_registration_token",
            "{value:?}"
        );
        let resp = h
            .http
            .post(h.url("/oauth/token"))
            .header(name, value.clone())
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        assert!(refusal(resp).await.status.is_client_error());
    }
    let r = refusal(h.http.get(h.url("/no/such/route")).send().await.unwrap()).await;
    assert_eq!(
        (r.status, r.error.as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let r = refusal(h.http.delete(h.url("/oauth/token")).send().await.unwrap()).await;
    assert_eq!(
        (r.status, r.error.as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "invalid_request")
    );
    let r = refusal(
        h.admin(Method::GET, "/token/api/v5/registrationTokens/%FF%FE", None)
            .await,
    )
    .await;
    assert!(r.status.is_client_error());
    // Lossy percent-decoding: an undecodable filter simply matches nothing.
    let listed = h
        .admin(
            Method::GET,
            "/token/api/v5/authTokens?registrationTokenId=%FF",
            None,
        )
        .await;
    assert_eq!(listed.status(), StatusCode::OK);
    assert_eq!(
        listed.json::<Value>().await.unwrap(),
        json!({ "authTokens": [] })
    );
}

#[tokio::test]
async fn admin_routes_need_an_admin_bearer_token() {
    let h = Harness::start().await;
    let routes = [
        (Method::GET, "/token/api/v5/registrationTokens"),
        (Method::POST, "/token/api/v5/registrationTokens"),
        (Method::GET, "/token/api/v5/authTokens"),
        (Method::DELETE, "/token/api/v5/authTokens/x"),
        (Method::PATCH, "/token/api/v5/registrationTokens/x"),
        (Method::GET, "/oauth/clients"),
        (Method::PUT, "/oauth/customers/C"),
        (Method::PUT, "/oauth/customers/C/clients/x/revoketokens"),
    ];
    let token = h.registration_token(json!({ "count": 1 })).await;
    let device = h.redeem_ok(token["token"].as_str().unwrap(), "dev").await;
    let device_access = device["token"]["access_token"].as_str().unwrap();
    for (method, path) in routes {
        let bare = h
            .http
            .request(method.clone(), h.url(path))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let r = refusal(bare).await;
        assert_eq!(
            (r.status, r.error.as_str()),
            (StatusCode::UNAUTHORIZED, "invalid_token"),
            "{method} {path}"
        );
        assert!(
            r.headers["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
        let bad = h
            .http
            .request(method.clone(), h.url(path))
            .bearer_auth("forged")
            .send()
            .await
            .unwrap();
        assert_eq!(
            refusal(bad).await.status,
            StatusCode::UNAUTHORIZED,
            "{method} {path}"
        );
        let device = h
            .http
            .request(method.clone(), h.url(path))
            .bearer_auth(device_access)
            .send()
            .await
            .unwrap();
        let r = refusal(device).await;
        assert_eq!(
            (r.status, r.error.as_str()),
            (StatusCode::FORBIDDEN, "insufficient_scope"),
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn shutdown_is_graceful_and_frees_the_port() {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let url = emu.url();
    assert!(url.starts_with("http://127.0.0.1:"));
    assert!(!url.ends_with('/'));
    assert_eq!(
        emu.addr().port(),
        url.rsplit(':').next().unwrap().parse::<u16>().unwrap()
    );
    let http = reqwest::Client::new();
    let ok = http
        .get(format!("{url}/token/api/v5/idpConfigurations"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(10), emu.shutdown())
        .await
        .unwrap();
    let refused = reqwest::Client::new()
        .get(format!("{url}/token/api/v5/idpConfigurations"))
        .send()
        .await;
    assert!(refused.is_err(), "nothing listens after shutdown");
}

#[tokio::test]
async fn run_serves_a_given_listener_until_the_shutdown_future_resolves() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = EmulatorConfig {
        realm: "acme".into(),
        client_id: "acme-agent".into(),
        ..EmulatorConfig::default()
    };
    let server = tokio::spawn(regent_emulator::run(listener, config, async {
        let _ = stopped.await;
    }));
    let idp: Value = reqwest::get(format!("http://{addr}/token/api/v5/idpConfigurations"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        idp,
        json!({ "realm": "acme", "tokenEndpoint": format!("http://{addr}/auth/"), "clientId": "acme-agent" })
    );
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn unusable_configurations_are_refused_at_start() {
    let bad = EmulatorConfig {
        admin_key: String::new(),
        ..EmulatorConfig::default()
    };
    let err = Emulator::start(bad).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    let bad = EmulatorConfig {
        access_token_lifespan: Duration::ZERO,
        ..EmulatorConfig::default()
    };
    assert_eq!(
        Emulator::start(bad).await.unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
}
