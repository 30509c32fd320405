//! Reltio-style OAuth2: discovery, client credentials re-issue, multi-token
//! mode and its cap, refresh tokens, client and customer admin, revocation.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{Harness, refusal, retry_after, token_of};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn discovery_names_the_token_endpoint() {
    let h = Harness::start().await;
    let doc: Value = h
        .http
        .get(h.url("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["issuer"], h.emu.url());
    assert_eq!(
        doc["token_endpoint"],
        format!("{}/oauth/token", h.emu.url())
    );
    let grants = doc["grant_types_supported"].as_array().unwrap();
    assert!(grants.contains(&json!("client_credentials")));
}

#[tokio::test]
async fn without_multi_token_the_same_token_is_reissued_until_it_expires() {
    let h = Harness::start().await;
    h.oauth_clients(json!({ "clientId": "svc", "clientSecret": "s3cret", "accessTokenValidity": 2, "scope": ["entities_api"] }))
        .await;
    let issued = Instant::now();
    let first = token_of(h.client_credentials("svc", "s3cret").await).await;
    assert_eq!(first["token_type"], "bearer");
    assert_eq!(first["expires_in"], 2);
    assert_eq!(first["scope"], "entities_api");
    assert!(
        first.get("refresh_token").is_none(),
        "no refresh_token unless the client has that grant"
    );

    let again = token_of(h.client_credentials("svc", "s3cret").await).await;
    assert_eq!(
        again["access_token"], first["access_token"],
        "same token re-issued"
    );
    assert!(
        again["expires_in"].as_u64().unwrap() < 2,
        "with the remaining validity"
    );

    tokio::time::sleep(Duration::from_millis(2100).saturating_sub(issued.elapsed())).await;
    let fresh = token_of(h.client_credentials("svc", "s3cret").await).await;
    assert_ne!(fresh["access_token"], first["access_token"]);
    assert_eq!(fresh["expires_in"], 2);
    assert_eq!(
        h.introspect(first["access_token"].as_str().unwrap()).await["active"],
        false
    );
    let seen = h.introspect(fresh["access_token"].as_str().unwrap()).await;
    assert_eq!(
        (
            seen["active"].clone(),
            seen["kind"].clone(),
            seen["clientId"].clone()
        ),
        (json!(true), json!("oauth2"), json!("svc"))
    );
}

async fn multi_token_setup(h: &Harness, max: u32, clients: &[&str]) {
    let specs: Vec<Value> = clients
        .iter()
        .map(|id| json!({ "clientId": id, "clientSecret": format!("{id}-secret"), "accessTokenValidity": 3600 }))
        .collect();
    h.oauth_clients(Value::Array(specs)).await;
    let customer = json!({
        "id": "Customer",
        "tenants": ["mttenant"],
        "applicationClients": clients,
        "multitokenConfig": { "clientCredentialsMultiTokenConfig": { "maxActiveTokensAllowed": max } },
    });
    let stored = h
        .admin_ok(
            Method::PUT,
            "/oauth/customers/Customer",
            Some(customer),
            StatusCode::CREATED,
        )
        .await;
    assert_eq!(
        stored["multitokenConfig"]["clientCredentialsMultiTokenConfig"]["maxActiveTokensAllowed"],
        max
    );
    assert_eq!(
        stored["tenants"],
        json!(["mttenant"]),
        "unknown fields are kept"
    );
}

#[tokio::test]
async fn multi_token_mints_new_tokens_up_to_the_cap_then_429() {
    let h = Harness::start().await;
    multi_token_setup(&h, 5, &["mtclient"]).await;
    let mut tokens = Vec::new();
    for _ in 0..5 {
        let t = token_of(h.client_credentials("mtclient", "mtclient-secret").await).await;
        assert_eq!(
            t["expires_in"], 3600,
            "each token's validity starts when it is issued"
        );
        tokens.push(t["access_token"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        tokens.iter().collect::<HashSet<_>>().len(),
        5,
        "distinct tokens"
    );

    let resp = h.client_credentials("mtclient", "mtclient-secret").await;
    let r = refusal(resp).await;
    assert_eq!(
        (r.status, r.error.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "active_token_limit_exceeded")
    );
    assert!(r.description.contains("limit 5"), "{}", r.description);
    assert!(
        r.description.contains("maxActiveTokensAllowed"),
        "{}",
        r.description
    );
    let wait = retry_after(&r.headers);
    assert!(
        (3590..=3600).contains(&wait),
        "Retry-After = until the earliest token expires: {wait}"
    );

    let listing = h
        .admin(
            Method::GET,
            "/oauth/customers/Customer/clients/mtclient/multitokens",
            None,
        )
        .await;
    assert_eq!(listing.status(), StatusCode::OK);
    let text = listing.text().await.unwrap();
    assert!(
        tokens.iter().all(|t| !text.contains(t.as_str())),
        "listings never show full tokens"
    );
    let listing: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(listing["activeTokenCount"], 5);
    assert_eq!(listing["maxActiveTokensAllowed"], 5);
    assert_eq!(listing["tokens"].as_array().unwrap().len(), 5);
    assert!(listing["tokens"][0]["tokenId"].is_string());
    assert!(
        listing["tokens"][0]["expiresAt"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );

    let counters = h.counters().await;
    assert_eq!(counters["activeTokens"]["mtclient"], 5);
    assert_eq!(counters["requests"]["oauth_token"]["ok"], 5);
    assert_eq!(
        counters["requests"]["oauth_token"]["active_token_limit_exceeded"],
        1
    );

    let revoked = h
        .admin_ok(
            Method::PUT,
            "/oauth/customers/Customer/clients/mtclient/revoketokens",
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(revoked["revokedTokens"], 5);
    assert_eq!(h.introspect(&tokens[0]).await["active"], false);
    assert_eq!(h.counters().await["activeTokens"].get("mtclient"), None);
    token_of(h.client_credentials("mtclient", "mtclient-secret").await).await;
}

#[tokio::test]
async fn the_cap_applies_to_each_client_separately() {
    let h = Harness::start().await;
    multi_token_setup(&h, 2, &["a1", "a2"]).await;
    for client in ["a1", "a2"] {
        let secret = format!("{client}-secret");
        token_of(h.client_credentials(client, &secret).await).await;
        token_of(h.client_credentials(client, &secret).await).await;
        let r = refusal(h.client_credentials(client, &secret).await).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    }
}

#[tokio::test]
async fn max_active_tokens_is_capped_at_200() {
    let h = Harness::start().await;
    let with_max = |max: i64| json!({ "id": "C", "applicationClients": ["x"], "multitokenConfig": { "clientCredentialsMultiTokenConfig": { "maxActiveTokensAllowed": max } } });
    let r = refusal(
        h.admin(Method::PUT, "/oauth/customers/C", Some(with_max(201)))
            .await,
    )
    .await;
    assert_eq!(
        (r.status, r.error.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    assert!(
        r.description.contains("200"),
        "names the platform limit: {}",
        r.description
    );
    let r = refusal(
        h.admin(Method::POST, "/oauth/customers/C", Some(with_max(0)))
            .await,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    h.admin_ok(
        Method::POST,
        "/oauth/customers/C",
        Some(with_max(200)),
        StatusCode::CREATED,
    )
    .await;
    h.admin_ok(
        Method::PUT,
        "/oauth/customers/C",
        Some(with_max(3)),
        StatusCode::OK,
    )
    .await;
    let stored = h
        .admin_ok(Method::GET, "/oauth/customers/C", None, StatusCode::OK)
        .await;
    assert_eq!(
        stored["multitokenConfig"]["clientCredentialsMultiTokenConfig"]["maxActiveTokensAllowed"],
        3
    );
    let mismatch = json!({ "id": "D", "applicationClients": [] });
    let r = refusal(
        h.admin(Method::PUT, "/oauth/customers/C", Some(mismatch))
            .await,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = refusal(h.admin(Method::GET, "/oauth/customers/nobody", None).await).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = refusal(
        h.admin(
            Method::GET,
            "/oauth/customers/C/clients/stranger/multitokens",
            None,
        )
        .await,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn client_authentication_and_grant_errors() {
    let h = Harness::start().await;
    h.oauth_clients(json!({ "clientId": "svc", "clientSecret": "right" }))
        .await;
    let r = refusal(h.client_credentials("svc", "wrong").await).await;
    assert_eq!(
        (r.status, r.error.as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_client")
    );
    let r = refusal(h.client_credentials("nobody", "right").await).await;
    assert_eq!(
        (r.status, r.error.as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_client")
    );

    let post = |form: Vec<(&'static str, &'static str)>, basic: bool| {
        let mut req = h.http.post(h.url("/oauth/token")).form(&form);
        if basic {
            req = req.basic_auth("svc", Some("right"));
        }
        async move { req.send().await.unwrap() }
    };
    let r = refusal(post(vec![("grant_type", "client_credentials")], false).await).await;
    assert_eq!(
        (r.status, r.error.as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_client")
    );
    let r = refusal(
        post(
            vec![("grant_type", "refresh_token"), ("refresh_token", "x")],
            true,
        )
        .await,
    )
    .await;
    assert_eq!(
        (r.status, r.error.as_str()),
        (StatusCode::BAD_REQUEST, "unauthorized_client")
    );
    // A sign-in grant this client was not given.
    let r = refusal(post(vec![("grant_type", "authorization_code")], true).await).await;
    assert_eq!(
        (r.status, r.error.as_str()),
        (StatusCode::BAD_REQUEST, "unauthorized_client")
    );
    let r = refusal(post(vec![("grant_type", "implicit")], true).await).await;
    assert_eq!(
        (r.status, r.error.as_str()),
        (StatusCode::BAD_REQUEST, "unsupported_grant_type")
    );
    // A client without configured scopes gets what it asks for.
    let t = token_of(
        post(
            vec![("grant_type", "client_credentials"), ("scope", "admin_api")],
            true,
        )
        .await,
    )
    .await;
    assert_eq!(t["scope"], "admin_api");

    // client_id / client_secret in the form instead of HTTP Basic.
    let form = post(
        vec![
            ("grant_type", "client_credentials"),
            ("client_id", "svc"),
            ("client_secret", "right"),
        ],
        false,
    );
    token_of(form.await).await;
    let r = refusal(
        post(
            vec![("grant_type", "client_credentials"), ("client_id", "svc")],
            false,
        )
        .await,
    )
    .await;
    assert_eq!(
        (r.status, r.error.as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_client")
    );
}

#[tokio::test]
async fn scopes_are_checked_against_the_client() {
    let h = Harness::start().await;
    h.oauth_clients(
        json!({ "clientId": "svc", "clientSecret": "pw", "scope": ["entities_api", "users_api"] }),
    )
    .await;
    let ask = |scope: &'static str| {
        let req = h
            .http
            .post(h.url("/oauth/token"))
            .basic_auth("svc", Some("pw"))
            .form(&[("grant_type", "client_credentials"), ("scope", scope)]);
        async move { req.send().await.unwrap() }
    };
    assert_eq!(token_of(ask("users_api").await).await["scope"], "users_api");
    let r = refusal(ask("graphs_api").await).await;
    assert_eq!(
        (r.status, r.error.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_scope")
    );
    assert_eq!(
        token_of(h.client_credentials("svc", "pw").await).await["scope"],
        "entities_api users_api"
    );
}

#[tokio::test]
async fn refresh_tokens_rotate_unless_the_client_says_otherwise() {
    let h = Harness::start().await;
    h.oauth_clients(json!([
        { "clientId": "rot", "clientSecret": "pw", "authorizedGrantTypes": ["client_credentials", "refresh_token"], "refreshTokenValidity": 3600 },
        { "clientId": "keep", "clientSecret": "pw", "authorizedGrantTypes": ["client_credentials", "refresh_token"], "rotateRefreshTokens": false },
    ]))
    .await;
    let refresh = |client: &'static str, token: String| {
        let req = h
            .http
            .post(h.url("/oauth/token"))
            .basic_auth(client, Some("pw"))
            .form(&[
                ("grant_type", "refresh_token".to_owned()),
                ("refresh_token", token),
            ]);
        async move { req.send().await.unwrap() }
    };

    let first = token_of(h.client_credentials("rot", "pw").await).await;
    let old = first["refresh_token"].as_str().unwrap().to_owned();
    // The re-issued token comes with its refresh token.
    assert_eq!(
        token_of(h.client_credentials("rot", "pw").await).await["refresh_token"],
        old.as_str()
    );
    let renewed = token_of(refresh("rot", old.clone()).await).await;
    assert_ne!(renewed["access_token"], first["access_token"]);
    assert_ne!(renewed["refresh_token"], old.as_str());
    let r = refusal(refresh("rot", old.clone()).await).await;
    assert_eq!(
        (r.status, r.error.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_grant")
    );
    let r = refusal(
        refresh(
            "keep",
            renewed["refresh_token"].as_str().unwrap().to_owned(),
        )
        .await,
    )
    .await;
    assert_eq!(
        r.error, "invalid_grant",
        "a refresh token only works for its own client"
    );
    assert_eq!(h.counters().await["refreshes"], 1);

    let kept = token_of(h.client_credentials("keep", "pw").await).await;
    let kept_refresh = kept["refresh_token"].as_str().unwrap().to_owned();
    for _ in 0..2 {
        let again = token_of(refresh("keep", kept_refresh.clone()).await).await;
        assert_eq!(again["refresh_token"], kept_refresh.as_str());
    }
}

#[tokio::test]
async fn client_admin_never_shows_secrets() {
    let h = Harness::start().await;
    let created = h
        .oauth_clients(json!([{ "clientId": "mtclient", "clientSecret": "very-secret", "authorities": ["ROLE_API"], "accessTokenValidity": 60 }]))
        .await;
    assert!(created.is_array());
    assert_eq!(created[0]["clientId"], "mtclient");
    assert_eq!(created[0]["accessTokenValidity"], 60);
    assert_eq!(created[0]["refreshTokenValidity"], 28 * 24 * 3600);
    assert_eq!(
        created[0]["authorizedGrantTypes"],
        json!(["client_credentials"])
    );
    assert_eq!(created[0]["rotateRefreshTokens"], true);
    assert_eq!(created[0]["authorities"], json!(["ROLE_API"]));
    let one = h
        .oauth_clients(json!({ "clientId": "single", "clientSecret": "x" }))
        .await;
    assert!(one.is_object());

    let list = h.admin(Method::GET, "/oauth/clients", None).await;
    let text = list.text().await.unwrap();
    assert!(!text.contains("very-secret"));
    assert!(!text.contains("clientSecret"));
    let list: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let got = h
        .admin_ok(Method::GET, "/oauth/clients/mtclient", None, StatusCode::OK)
        .await;
    assert_eq!(got["clientId"], "mtclient");
    let r = refusal(h.admin(Method::GET, "/oauth/clients/ghost", None).await).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    for bad in [
        json!([]),
        json!("x"),
        json!({ "clientId": "" , "clientSecret": "x" }),
        json!({ "clientId": "a", "clientSecret": "" }),
        json!({ "clientId": "a", "authorizedGrantTypes": ["client_credentials"] }),
        json!({ "clientId": "a", "clientSecret": "b", "accessTokenValidity": 0 }),
    ] {
        let r = refusal(
            h.admin(Method::POST, "/oauth/clients", Some(bad.clone()))
                .await,
        )
        .await;
        assert_eq!(
            (r.status, r.error.as_str()),
            (StatusCode::BAD_REQUEST, "invalid_request"),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn the_admin_user_can_log_in_at_the_oauth_endpoint() {
    let h = Harness::start().await;
    let resp = h
        .http
        .post(h.url("/oauth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", "admin"),
        ])
        .send()
        .await
        .unwrap();
    let token = token_of(resp).await;
    let bearer = token["access_token"].as_str().unwrap();
    let resp = h
        .http
        .get(h.url("/oauth/clients"))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = h
        .http
        .post(h.url("/oauth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", "nope"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(refusal(resp).await.error, "invalid_grant");
}
