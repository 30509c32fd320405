//! Users who sign in: the authorization code flow with PKCE through the login
//! form, the device flow through the verification page, refresh rotation with
//! reuse detection, revocation, userinfo and the ID token.
#![allow(
    clippy::unwrap_used,
    reason = "a failed request or unexpected body must fail the test"
)]

mod common;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{Harness, refusal, token_of};
use regent_emulator::{EmulatorConfig, UserSpec};
use reqwest::{Client, Method, StatusCode, redirect};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

const CLIENT: &str = "desktop";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const REDIRECT: &str = "http://127.0.0.1:41234/callback";

fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

async fn harness() -> Harness {
    Harness::with(EmulatorConfig {
        users: vec![UserSpec {
            username: "alice".into(),
            password: "wonderland".into(),
            email: Some("alice@example.com".into()),
        }],
        public_clients: vec![CLIENT.into()],
        device_interval: Duration::from_secs(1),
        access_token_lifespan: Duration::from_secs(60),
        ..EmulatorConfig::default()
    })
    .await
}

/// A browser that does not follow redirects, so the test sees them.
fn browser() -> Client {
    Client::builder()
        .redirect(redirect::Policy::none())
        .build()
        .unwrap()
}

fn authorize_url(h: &Harness, state: &str, scope: &str) -> String {
    let mut url = reqwest::Url::parse(&h.url("/oauth/authorize")).unwrap();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", CLIENT)
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("scope", scope)
        .append_pair("state", state)
        .append_pair("code_challenge", &challenge(VERIFIER))
        .append_pair("code_challenge_method", "S256");
    url.to_string()
}

/// Opens the login page, submits `username`/`password` with `action`, and
/// returns the response to the submission.
async fn submit_login(
    h: &Harness,
    url: &str,
    user: &str,
    password: &str,
    action: &str,
) -> reqwest::Response {
    let b = browser();
    let page = b.get(url).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let html = page.text().await.unwrap();
    let mut form = regent_emulator::login_form_fields(&html);
    form.push(("username".into(), user.into()));
    form.push(("password".into(), password.into()));
    form.push(("action".into(), action.into()));
    b.post(h.url("/oauth/authorize"))
        .form(&form)
        .send()
        .await
        .unwrap()
}

/// The query of a redirect to `REDIRECT`.
fn redirect_query(resp: &reqwest::Response) -> Vec<(String, String)> {
    assert_eq!(resp.status(), StatusCode::FOUND);
    let location = resp.headers()["location"].to_str().unwrap();
    assert!(location.starts_with(REDIRECT), "{location}");
    reqwest::Url::parse(location)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn param<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn exchange(h: &Harness, code: &str, verifier: &str) -> reqwest::Response {
    h.http
        .post(h.url("/oauth/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", CLIENT),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ])
        .send()
        .await
        .unwrap()
}

async fn refresh(h: &Harness, token: &str) -> reqwest::Response {
    h.http
        .post(h.url("/oauth/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT),
            ("refresh_token", token),
        ])
        .send()
        .await
        .unwrap()
}

async fn sign_in(h: &Harness, scope: &str) -> Value {
    let resp = submit_login(
        h,
        &authorize_url(h, "st-1", scope),
        "alice",
        "wonderland",
        "allow",
    )
    .await;
    let query = redirect_query(&resp);
    assert_eq!(param(&query, "state"), Some("st-1"));
    let code = param(&query, "code").unwrap().to_owned();
    token_of(exchange(h, &code, VERIFIER).await).await
}

fn claims(id_token: &str) -> Value {
    let payload = id_token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[tokio::test]
async fn discovery_names_the_sign_in_endpoints() {
    let h = harness().await;
    let doc: Value = h
        .http
        .get(h.url("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (key, path) in [
        ("authorization_endpoint", "/oauth/authorize"),
        (
            "device_authorization_endpoint",
            "/oauth/device_authorization",
        ),
        ("revocation_endpoint", "/oauth/revoke"),
        ("userinfo_endpoint", "/oauth/userinfo"),
    ] {
        assert_eq!(doc[key], h.url(path), "{key}");
    }
    assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
}

#[tokio::test]
async fn the_code_flow_signs_a_user_in_with_pkce() {
    let h = harness().await;
    let tokens = sign_in(&h, "openid profile").await;
    assert_eq!(tokens["scope"], "openid profile");
    assert!(tokens["refresh_token"].is_string());
    let id = claims(tokens["id_token"].as_str().unwrap());
    assert_eq!(id["preferred_username"], "alice");
    assert_eq!(id["email"], "alice@example.com");
    assert_eq!(id["aud"], CLIENT);
    assert_eq!(id["iss"], h.emu.url());

    let info: Value = h
        .http
        .get(h.url("/oauth/userinfo"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["sub"], id["sub"]);
    assert_eq!(info["preferred_username"], "alice");

    // Without `openid` there is no ID token; userinfo still answers.
    let plain = sign_in(&h, "profile").await;
    assert!(plain.get("id_token").is_none());
}

#[tokio::test]
async fn wrong_passwords_cancel_and_bad_requests_are_handled_like_a_provider() {
    let h = harness().await;
    let url = authorize_url(&h, "st-2", "openid");
    let wrong = submit_login(&h, &url, "alice", "nope", "allow").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let html = wrong.text().await.unwrap();
    assert!(html.contains("Wrong user name or password"), "{html}");
    assert!(!html.contains("nope"), "the typed password is not echoed");

    let cancelled = submit_login(&h, &url, "", "", "deny").await;
    let query = redirect_query(&cancelled);
    assert_eq!(param(&query, "error"), Some("access_denied"));
    assert_eq!(param(&query, "state"), Some("st-2"));

    // A redirect URI that is neither loopback nor registered is never used.
    let evil = url.replace("127.0.0.1%3A41234", "evil.example");
    let page = browser().get(&evil).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::BAD_REQUEST);
    assert!(page.text().await.unwrap().contains("not loopback"));

    // A public client without PKCE is sent back with invalid_request.
    let no_pkce = url.replace("code_challenge_method=S256", "");
    let no_pkce = no_pkce.split("&code_challenge=").next().unwrap().to_owned();
    let resp = browser().get(&no_pkce).send().await.unwrap();
    let query = redirect_query(&resp);
    assert_eq!(param(&query, "error"), Some("invalid_request"));
}

#[tokio::test]
async fn codes_need_the_verifier_and_work_once() {
    let h = harness().await;
    let resp = submit_login(
        &h,
        &authorize_url(&h, "s", "openid"),
        "alice",
        "wonderland",
        "allow",
    )
    .await;
    let code = param(&redirect_query(&resp), "code").unwrap().to_owned();
    let wrong = refusal(exchange(&h, &code, &"x".repeat(43)).await).await;
    assert_eq!(wrong.error, "invalid_grant");
    assert!(wrong.description.contains("PKCE"), "{}", wrong.description);
    // The failed attempt used the code up, as a stolen code should be.
    let again = refusal(exchange(&h, &code, VERIFIER).await).await;
    assert_eq!(again.error, "invalid_grant");

    let resp = submit_login(
        &h,
        &authorize_url(&h, "s", "openid"),
        "alice",
        "wonderland",
        "allow",
    )
    .await;
    let code = param(&redirect_query(&resp), "code").unwrap().to_owned();
    token_of(exchange(&h, &code, VERIFIER).await).await;
    assert_eq!(
        refusal(exchange(&h, &code, VERIFIER).await).await.error,
        "invalid_grant"
    );
}

#[tokio::test]
async fn a_verifier_for_a_code_issued_without_pkce_is_refused() {
    // A confidential client may skip PKCE; a verifier it then sends means it
    // believes it used PKCE when it did not (a downgrade), so it is refused.
    let h = harness().await;
    h.oauth_clients(json!({"clientId": "web", "clientSecret": "s3cret",
        "authorizedGrantTypes": ["authorization_code", "refresh_token"]}))
        .await;
    let mut url = reqwest::Url::parse(&h.url("/oauth/authorize")).unwrap();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", "web")
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("state", "w");
    let resp = submit_login(&h, url.as_str(), "alice", "wonderland", "allow").await;
    let code = param(&redirect_query(&resp), "code").unwrap().to_owned();
    let refused = h
        .http
        .post(h.url("/oauth/token"))
        .basic_auth("web", Some("s3cret"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await
        .unwrap();
    let refused = refusal(refused).await;
    assert_eq!(refused.error, "invalid_grant");
    assert!(
        refused.description.contains("no code_challenge"),
        "{}",
        refused.description
    );
}

#[tokio::test]
async fn refresh_rotates_and_a_reused_token_ends_the_sign_in() {
    let h = harness().await;
    let first = sign_in(&h, "openid").await;
    let old = first["refresh_token"].as_str().unwrap();
    let second = token_of(refresh(&h, old).await).await;
    let new = second["refresh_token"].as_str().unwrap();
    assert_ne!(old, new, "rotated");
    assert_eq!(
        claims(second["id_token"].as_str().unwrap())["preferred_username"],
        "alice"
    );

    let reused = refusal(refresh(&h, old).await).await;
    assert_eq!(reused.error, "invalid_grant");
    assert!(
        reused.description.contains("reuse"),
        "{}",
        reused.description
    );
    // ... and the current one died with it.
    assert_eq!(refusal(refresh(&h, new).await).await.error, "invalid_grant");
    let info = h
        .http
        .get(h.url("/oauth/userinfo"))
        .bearer_auth(second["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(info.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn revocation_ends_the_sign_in_and_unknown_tokens_are_fine() {
    let h = harness().await;
    let tokens = sign_in(&h, "openid").await;
    let refresh_token = tokens["refresh_token"].as_str().unwrap();
    for token in [refresh_token, "never-issued"] {
        let resp = h
            .http
            .post(h.url("/oauth/revoke"))
            .form(&[
                ("client_id", CLIENT),
                ("token", token),
                ("token_type_hint", "refresh_token"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    assert_eq!(
        refusal(refresh(&h, refresh_token).await).await.error,
        "invalid_grant"
    );
    assert_eq!(
        h.introspect(tokens["access_token"].as_str().unwrap()).await["active"],
        false
    );
}

async fn device_start(h: &Harness) -> Value {
    token_of(
        h.http
            .post(h.url("/oauth/device_authorization"))
            .form(&[("client_id", CLIENT), ("scope", "openid")])
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn device_poll(h: &Harness, device_code: &str) -> reqwest::Response {
    h.http
        .post(h.url("/oauth/token"))
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("client_id", CLIENT),
            ("device_code", device_code),
        ])
        .send()
        .await
        .unwrap()
}

async fn device_decide(
    h: &Harness,
    user_code: &str,
    password: &str,
    action: &str,
) -> reqwest::Response {
    browser()
        .post(h.url("/oauth/device"))
        .form(&[
            ("user_code", user_code),
            ("username", "alice"),
            ("password", password),
            ("action", action),
        ])
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_device_flow_pends_slows_down_and_signs_in() {
    let h = harness().await;
    let start = device_start(&h).await;
    assert_eq!(start["interval"], 1);
    let device_code = start["device_code"].as_str().unwrap();
    let user_code = start["user_code"].as_str().unwrap();
    assert_eq!(
        start["verification_uri_complete"],
        format!("{}?user_code={user_code}", h.url("/oauth/device"))
    );
    let page = browser()
        .get(start["verification_uri_complete"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(user_code),
        "the complete URI fills the code in"
    );

    assert_eq!(
        refusal(device_poll(&h, device_code).await).await.error,
        "authorization_pending"
    );
    // At once again: faster than the interval.
    assert_eq!(
        refusal(device_poll(&h, device_code).await).await.error,
        "slow_down"
    );

    let wrong = device_decide(&h, user_code, "nope", "allow").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let ok = device_decide(
        &h,
        &user_code.to_lowercase().replace('-', " "),
        "wonderland",
        "allow",
    )
    .await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert!(
        ok.text()
            .await
            .unwrap()
            .contains("signed in as <b>alice</b>")
    );
    // Once approved, the next poll gets the tokens, once.
    let tokens = token_of(device_poll(&h, device_code).await).await;
    assert_eq!(
        claims(tokens["id_token"].as_str().unwrap())["preferred_username"],
        "alice"
    );
    assert_eq!(
        refusal(device_poll(&h, device_code).await).await.error,
        "invalid_grant"
    );
}

#[tokio::test]
async fn a_denied_device_hears_access_denied() {
    let h = harness().await;
    let start = device_start(&h).await;
    let resp = device_decide(&h, start["user_code"].as_str().unwrap(), "", "deny").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let denied = refusal(device_poll(&h, start["device_code"].as_str().unwrap()).await).await;
    assert_eq!(denied.error, "access_denied");
    let unknown = device_decide(&h, "BCDF-GHJK", "wonderland", "allow").await;
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn users_and_public_clients_are_managed_at_run_time() {
    let h = harness().await;
    let key = h.emu.admin_key().to_owned();
    let control = |method: Method, path: &str| {
        h.http
            .request(method, h.url(path))
            .header("x-emulator-key", key.clone())
    };
    let added = control(Method::POST, "/_emulator/users")
        .json(&json!({"username": "bob", "password": "builder"}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), StatusCode::CREATED);
    let users: Value = control(Method::GET, "/_emulator/users")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    assert!(
        !users.to_string().contains("builder"),
        "passwords are never listed"
    );

    // Deleting a user ends their sign-ins.
    let tokens = sign_in(&h, "openid").await;
    let deleted = control(Method::DELETE, "/_emulator/users/alice")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let refused = refusal(refresh(&h, tokens["refresh_token"].as_str().unwrap()).await).await;
    assert_eq!(refused.error, "invalid_grant");

    // A client registered without a secret is public; it may not ask for
    // client credentials, and a confidential one may not skip its secret.
    let public = h
        .oauth_clients(json!({"clientId": "app2", "scope": ["openid"]}))
        .await;
    assert_eq!(public["public"], true);
    let refused = h
        .admin(
            Method::POST,
            "/oauth/clients",
            Some(json!({"clientId": "app3", "authorizedGrantTypes": ["client_credentials"]})),
        )
        .await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    h.oauth_clients(json!({"clientId": "svc", "clientSecret": "s3cret"}))
        .await;
    let no_secret = h
        .http
        .post(h.url("/oauth/token"))
        .form(&[("grant_type", "client_credentials"), ("client_id", "svc")])
        .send()
        .await
        .unwrap();
    assert_eq!(refusal(no_secret).await.error, "invalid_client");
}

#[tokio::test]
async fn faults_reach_the_sign_in_routes() {
    let h = harness().await;
    let key = h.emu.admin_key().to_owned();
    let put = h
        .http
        .put(h.url("/_emulator/faults"))
        .header("x-emulator-key", key)
        .json(
            &json!({"nextStatus": {"status": 503, "count": 1}, "routes": ["device_authorization"]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let failed = h
        .http
        .post(h.url("/oauth/device_authorization"))
        .form(&[("client_id", CLIENT)])
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), StatusCode::SERVICE_UNAVAILABLE);
    device_start(&h).await;
    let counters = h.counters().await;
    assert_eq!(counters["requests"]["device_authorization"]["fault"], 1);
    assert_eq!(counters["requests"]["device_authorization"]["ok"], 1);
}
