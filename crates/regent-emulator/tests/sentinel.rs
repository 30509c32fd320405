//! Registration tokens, redemption, replay, auth-token admin and revocation.

mod common;

use std::collections::HashSet;

use base64::Engine as _;
use common::{Harness, refusal};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn idp_configuration_names_the_realm_token_endpoint() {
    let h = Harness::start().await;
    let idp: Value = h
        .http
        .get(h.url("/token/api/v5/idpConfigurations"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(idp["realm"], "regent");
    assert_eq!(idp["clientId"], "regent-agent");
    assert_eq!(idp["tokenEndpoint"], format!("{}/auth/", h.emu.url()));

    // The agent composes the refresh URL from these three values.
    let token = h.registration_token(json!({ "count": 1 })).await;
    let auth = h.redeem_ok(token["token"].as_str().unwrap(), "dev-1").await;
    let url = format!(
        "{}realms/{}/protocol/openid-connect/token",
        idp["tokenEndpoint"].as_str().unwrap(),
        idp["realm"].as_str().unwrap()
    );
    let resp = h
        .http
        .post(url)
        .form(&[
            ("grant_type", "refresh_token"),
            (
                "refresh_token",
                auth["token"]["refresh_token"].as_str().unwrap(),
            ),
            ("client_id", idp["clientId"].as_str().unwrap()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn redemption_answers_201_with_an_auth_token_and_a_token_pair() {
    let h = Harness::start().await;
    let token = h.registration_token(json!({ "count": 3 })).await;
    let resp = h
        .redeem(token["token"].as_str().unwrap(), "device-a/0")
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body: Value = resp.json().await.unwrap();
    let auth = &body["authToken"];
    assert_eq!(auth["identifier"], "device-a/0");
    assert_eq!(auth["id"].as_str().unwrap().len(), 36);
    let pair = &auth["token"];
    assert_eq!(pair["token_type"], "Bearer");
    assert_eq!(pair["expires_in"], 300);
    assert_eq!(pair["refresh_expires_in"], 30 * 24 * 3600);
    let access = pair["access_token"].as_str().unwrap();
    assert!(access.len() >= 43);
    let seen = h.introspect(access).await;
    assert_eq!(seen["active"], true);
    assert_eq!(seen["kind"], "sentinel");
    assert_eq!(seen["authTokenId"], auth["id"]);
    assert_eq!(
        h.registration_token_record(token["id"].as_str().unwrap())
            .await["usedCount"],
        1
    );
}

#[tokio::test]
async fn each_registration_token_refusal_has_its_own_code() {
    let h = Harness::start().await;

    let r = refusal(h.redeem("no-such-token", "dev").await).await;
    assert_eq!(
        (r.status, r.error.as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_registration_token")
    );

    let missing = h
        .http
        .post(h.url("/token/api/v5/authTokens"))
        .json(&json!({ "authToken": { "identifier": "dev" } }))
        .send()
        .await
        .unwrap();
    let r = refusal(missing).await;
    assert_eq!(
        (r.status, r.error.as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_registration_token")
    );
    assert!(
        r.description.contains("Authorization: Basic"),
        "{}",
        r.description
    );

    let disabled = h
        .registration_token(json!({ "count": 5, "isEnabled": false }))
        .await;
    assert_eq!(disabled["state"], "DISABLED");
    let r = refusal(h.redeem(disabled["token"].as_str().unwrap(), "dev").await).await;
    assert_eq!(
        (r.status, r.error.as_str()),
        (StatusCode::FORBIDDEN, "registration_token_disabled")
    );
    assert!(r.description.contains("administrator"), "{}", r.description);

    let expired = h
        .registration_token(json!({ "count": 5, "expiryDate": "2020-01-01" }))
        .await;
    assert_eq!(expired["state"], "EXPIRED");
    let r = refusal(h.redeem(expired["token"].as_str().unwrap(), "dev").await).await;
    assert_eq!(
        (r.status, r.error.as_str()),
        (StatusCode::FORBIDDEN, "registration_token_expired")
    );
    assert!(
        r.description.contains("2020-01-01"),
        "names the expiry: {}",
        r.description
    );
    assert!(
        r.description.contains("5 of 5 counts unused"),
        "{}",
        r.description
    );

    let single = h.registration_token(json!({ "count": 1 })).await;
    let value = single["token"].as_str().unwrap();
    assert_eq!(h.redeem(value, "first").await.status(), StatusCode::CREATED);
    let r = refusal(h.redeem(value, "second").await).await;
    assert_eq!(
        (r.status, r.error.as_str()),
        (StatusCode::FORBIDDEN, "registration_token_exhausted")
    );
    assert!(
        r.description.contains("all 1 of its counts"),
        "{}",
        r.description
    );
    assert!(
        r.description.contains("raise its count"),
        "{}",
        r.description
    );

    // No refusal leaks the secret value.
    assert!(!r.description.contains(value));
}

#[tokio::test]
async fn fifty_concurrent_redemptions_against_count_ten_create_exactly_ten() {
    let h = Harness::start().await;
    let token = h.registration_token(json!({ "count": 10 })).await;
    let value = token["token"].as_str().unwrap().to_owned();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let http = h.http.clone();
        let url = h.url("/token/api/v5/authTokens");
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            http.post(url)
                .header("Authorization", format!("Basic {value}"))
                .json(&json!({ "authToken": { "identifier": format!("device-{i}") } }))
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    let mut created = 0;
    let mut exhausted = 0;
    for task in tasks {
        match task.await.unwrap() {
            StatusCode::CREATED => created += 1,
            StatusCode::FORBIDDEN => exhausted += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((created, exhausted), (10, 40));
    let record = h
        .registration_token_record(token["id"].as_str().unwrap())
        .await;
    assert_eq!(record["usedCount"], 10);
    let counters = h.counters().await;
    assert_eq!(counters["redemptions"], 10);
    assert_eq!(counters["requests"]["redeem"]["ok"], 10);
    assert_eq!(
        counters["requests"]["redeem"]["registration_token_exhausted"],
        40
    );
    assert_eq!(
        counters["registrationTokens"][token["id"].as_str().unwrap()]["usedCount"],
        10
    );
    let listed = h
        .admin_ok(
            Method::GET,
            "/token/api/v5/authTokens",
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(listed["authTokens"].as_array().unwrap().len(), 10);
}

#[tokio::test]
async fn replay_returns_the_same_auth_token_without_consuming_a_count() {
    let h = Harness::start().await;
    let token = h.registration_token(json!({ "count": 2 })).await;
    let value = token["token"].as_str().unwrap();
    let id = token["id"].as_str().unwrap();

    let first = h.redeem(value, "slot-1").await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let replay = h.redeem(value, "slot-1").await;
    assert_eq!(replay.status(), StatusCode::OK, "a replay is 200, not 201");
    let replay: Value = replay.json().await.unwrap();
    assert_eq!(replay["authToken"]["id"], first["authToken"]["id"]);
    assert_ne!(
        replay["authToken"]["token"]["refresh_token"],
        first["authToken"]["token"]["refresh_token"]
    );
    assert_eq!(h.registration_token_record(id).await["usedCount"], 1);

    // The replay started a new session: the earlier refresh token is dead,
    // the new one works, and the earlier access token lives until it expires.
    let old_refresh = first["authToken"]["token"]["refresh_token"]
        .as_str()
        .unwrap();
    let r = refusal(h.refresh(old_refresh).await).await;
    assert_eq!(
        (r.error.as_str(), r.description.as_str()),
        ("invalid_grant", "Session not active")
    );
    h.refresh_ok(
        replay["authToken"]["token"]["refresh_token"]
            .as_str()
            .unwrap(),
    )
    .await;
    let old_access = first["authToken"]["token"]["access_token"]
        .as_str()
        .unwrap();
    assert_eq!(h.introspect(old_access).await["active"], true);

    // Even an exhausted token replays for an identifier it already served.
    assert_eq!(
        h.redeem(value, "slot-2").await.status(),
        StatusCode::CREATED
    );
    let r = refusal(h.redeem(value, "slot-3").await).await;
    assert_eq!(r.error, "registration_token_exhausted");
    let again = h.redeem(value, "slot-1").await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(
        again.json::<Value>().await.unwrap()["authToken"]["id"],
        first["authToken"]["id"]
    );
    assert_eq!(h.registration_token_record(id).await["usedCount"], 2);

    let counters = h.counters().await;
    assert_eq!(counters["requests"]["redeem"]["replay"], 2);
    assert_eq!(counters["redemptions"], 2);

    // A disabled token refuses replays too.
    let patch = json!({ "registrationToken": { "isEnabled": false } });
    let path = format!("/token/api/v5/registrationTokens/{id}");
    h.admin_ok(Method::PATCH, &path, Some(patch), StatusCode::OK)
        .await;
    let r = refusal(h.redeem(value, "slot-1").await).await;
    assert_eq!(r.error, "registration_token_disabled");
}

#[tokio::test]
async fn a_replay_is_per_registration_token() {
    let h = Harness::start().await;
    let a = h.registration_token(json!({ "count": 1 })).await;
    let b = h.registration_token(json!({ "count": 1 })).await;
    let from_a = h
        .redeem_ok(a["token"].as_str().unwrap(), "same-device")
        .await;
    let from_b = h.redeem(b["token"].as_str().unwrap(), "same-device").await;
    assert_eq!(from_b.status(), StatusCode::CREATED);
    let from_b: Value = from_b.json().await.unwrap();
    assert_ne!(from_a["id"], from_b["authToken"]["id"]);
}

#[tokio::test]
async fn auth_token_listing_shows_who_redeemed() {
    let h = Harness::start().await;
    let a = h.registration_token(json!({ "count": 5 })).await;
    let b = h.registration_token(json!({ "count": 5 })).await;
    let details = json!({
        "identifier": "laptop-7/0",
        "fqdn": "laptop-7.example.com",
        "macAddress": "00:11:22:33:44:55",
        "systemUserName": "alice",
        "refId1": "cost-centre-9",
        "refId2": "ticket-42",
    });
    let resp = h.redeem_with(a["token"].as_str().unwrap(), details).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let redeemed: Value = resp.json().await.unwrap();
    let other = h
        .redeem_ok(b["token"].as_str().unwrap(), "desktop-1/0")
        .await;

    let listed = h.admin(Method::GET, "/token/api/v5/authTokens", None).await;
    assert_eq!(listed.status(), StatusCode::OK);
    let text = listed.text().await.unwrap();
    for secret in [
        &redeemed["authToken"]["token"]["access_token"],
        &redeemed["authToken"]["token"]["refresh_token"],
    ] {
        assert!(
            !text.contains(secret.as_str().unwrap()),
            "listings never show token values"
        );
    }
    let listed: Value = serde_json::from_str(&text).unwrap();
    let all = listed["authTokens"].as_array().unwrap();
    assert_eq!(all.len(), 2);
    let laptop = &all[0];
    assert_eq!(laptop["id"], redeemed["authToken"]["id"]);
    assert_eq!(laptop["identifier"], "laptop-7/0");
    assert_eq!(laptop["fqdn"], "laptop-7.example.com");
    assert_eq!(laptop["macAddress"], "00:11:22:33:44:55");
    assert_eq!(laptop["systemUserName"], "alice");
    assert_eq!(laptop["refId1"], "cost-centre-9");
    assert_eq!(laptop["refId2"], "ticket-42");
    assert_eq!(laptop["registrationTokenId"], a["id"]);
    assert!(laptop["creationDate"].as_str().unwrap().ends_with('Z'));
    assert_eq!(laptop["lastRefreshDate"], Value::Null);

    let path = format!(
        "/token/api/v5/authTokens?registrationTokenId={}",
        b["id"].as_str().unwrap()
    );
    let filtered = h.admin_ok(Method::GET, &path, None, StatusCode::OK).await;
    let filtered = filtered["authTokens"].as_array().unwrap();
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0]["id"], other["id"]);

    h.refresh_ok(
        redeemed["authToken"]["token"]["refresh_token"]
            .as_str()
            .unwrap(),
    )
    .await;
    let path = format!(
        "/token/api/v5/authTokens/{}",
        redeemed["authToken"]["id"].as_str().unwrap()
    );
    let one = h.admin_ok(Method::GET, &path, None, StatusCode::OK).await;
    assert!(
        one["authToken"]["lastRefreshDate"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
}

#[tokio::test]
async fn deleting_an_auth_token_revokes_it() {
    let h = Harness::start().await;
    let token = h.registration_token(json!({ "count": 5 })).await;
    let value = token["token"].as_str().unwrap();
    let auth = h.redeem_ok(value, "dev-1").await;
    let access = auth["token"]["access_token"].as_str().unwrap();
    let refresh = auth["token"]["refresh_token"].as_str().unwrap();
    assert_eq!(h.introspect(access).await["active"], true);

    let path = format!("/token/api/v5/authTokens/{}", auth["id"].as_str().unwrap());
    h.admin_ok(Method::DELETE, &path, None, StatusCode::NO_CONTENT)
        .await;

    let r = refusal(h.refresh(refresh).await).await;
    assert_eq!(
        (r.status, r.error.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_grant")
    );
    assert_eq!(r.description, "Session not active");
    assert_eq!(h.introspect(access).await["active"], false);
    let r = refusal(h.admin(Method::GET, &path, None).await).await;
    assert_eq!(
        (r.status, r.error.as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let r = refusal(h.admin(Method::DELETE, &path, None).await).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // The identifier is no longer bound to a live auth token: redeeming again
    // creates a new one and consumes a count.
    let resp = h.redeem(value, "dev-1").await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let again: Value = resp.json().await.unwrap();
    assert_ne!(again["authToken"]["id"], auth["id"]);
    assert_eq!(
        h.registration_token_record(token["id"].as_str().unwrap())
            .await["usedCount"],
        2
    );
}

#[tokio::test]
async fn registration_token_admin_create_list_patch_delete() {
    let h = Harness::start().await;
    let created = h
        .registration_token(json!({ "count": 3, "identifier": "fleet-a", "refId1": "po-17" }))
        .await;
    assert_eq!(created["count"], 3);
    assert_eq!(created["usedCount"], 0);
    assert_eq!(created["isEnabled"], true);
    assert_eq!(created["state"], "ENABLED");
    assert_eq!(created["identifier"], "fleet-a");
    assert_eq!(created["refId1"], "po-17");
    assert_eq!(created["refId2"], Value::Null);
    assert!(created["token"].as_str().unwrap().len() >= 43);
    assert!(created["expiryDate"].as_str().unwrap() > created["creationDate"].as_str().unwrap());
    let id = created["id"].as_str().unwrap();
    let value = created["token"].as_str().unwrap();

    for bad in [
        json!({ "count": 0 }),
        json!({ "count": -1 }),
        json!({}),
        json!({ "count": 1, "expiryDate": "soon" }),
    ] {
        let body = json!({ "registrationToken": bad });
        let r = refusal(
            h.admin(Method::POST, "/token/api/v5/registrationTokens", Some(body))
                .await,
        )
        .await;
        assert_eq!(
            (r.status, r.error.as_str()),
            (StatusCode::BAD_REQUEST, "invalid_request"),
            "{bad}"
        );
    }

    let exact = h
        .registration_token(json!({ "count": 1, "expiryDate": "2031-05-06T07:08:09Z" }))
        .await;
    assert_eq!(exact["expiryDate"], "2031-05-06T07:08:09Z");

    let list = h
        .admin_ok(
            Method::GET,
            "/token/api/v5/registrationTokens",
            None,
            StatusCode::OK,
        )
        .await;
    let ids: Vec<&str> = list["registrationTokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [id, exact["id"].as_str().unwrap()],
        "listed in creation order"
    );

    h.redeem_ok(value, "a").await;
    h.redeem_ok(value, "b").await;
    let path = format!("/token/api/v5/registrationTokens/{id}");
    let below = json!({ "registrationToken": { "count": 1 } });
    let r = refusal(h.admin(Method::PATCH, &path, Some(below)).await).await;
    assert_eq!(
        (r.status, r.error.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    assert!(r.description.contains("usedCount 2"), "{}", r.description);

    let patch = json!({ "registrationToken": { "count": 10, "isEnabled": false, "expiryDate": "2099-12-31", "refId2": "x" } });
    let patched = h
        .admin_ok(Method::PATCH, &path, Some(patch), StatusCode::OK)
        .await;
    let patched = &patched["registrationToken"];
    assert_eq!(patched["count"], 10);
    assert_eq!(patched["usedCount"], 2);
    assert_eq!(patched["state"], "DISABLED");
    assert_eq!(patched["expiryDate"], "2099-12-31T23:59:59Z");
    assert_eq!(
        patched["refId1"], "po-17",
        "fields not named stay as they were"
    );
    assert_eq!(patched["refId2"], "x");

    let enable = json!({ "registrationToken": { "isEnabled": true } });
    h.admin_ok(Method::PATCH, &path, Some(enable), StatusCode::OK)
        .await;
    h.redeem_ok(value, "c").await;

    h.admin_ok(Method::DELETE, &path, None, StatusCode::NO_CONTENT)
        .await;
    let r = refusal(h.admin(Method::GET, &path, None).await).await;
    assert_eq!(
        (r.status, r.error.as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let r = refusal(h.redeem(value, "d").await).await;
    assert_eq!(r.error, "invalid_registration_token");
    let r = refusal(
        h.admin(
            Method::PATCH,
            &path,
            Some(json!({ "registrationToken": {} })),
        )
        .await,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn extending_an_expired_token_lets_it_redeem_again() {
    let h = Harness::start().await;
    let token = h
        .registration_token(json!({ "count": 1, "expiryDate": "2021-06-30" }))
        .await;
    let value = token["token"].as_str().unwrap();
    assert_eq!(
        refusal(h.redeem(value, "d").await).await.error,
        "registration_token_expired"
    );
    let path = format!(
        "/token/api/v5/registrationTokens/{}",
        token["id"].as_str().unwrap()
    );
    let patch = json!({ "registrationToken": { "expiryDate": "2099-01-01" } });
    let patched = h
        .admin_ok(Method::PATCH, &path, Some(patch), StatusCode::OK)
        .await;
    assert_eq!(patched["registrationToken"]["state"], "ENABLED");
    assert_eq!(h.redeem(value, "d").await.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn the_registration_token_may_also_be_sent_base64_encoded() {
    let h = Harness::start().await;
    let token = h.registration_token(json!({ "count": 2 })).await;
    let value = token["token"].as_str().unwrap();
    let encoded = base64::engine::general_purpose::STANDARD.encode(value);
    assert_eq!(
        h.redeem(&encoded, "b64").await.status(),
        StatusCode::CREATED
    );
    // `user:password` form with the token as the user and no password.
    let pair = base64::engine::general_purpose::STANDARD.encode(format!("{value}:"));
    assert_eq!(h.redeem(&pair, "pair").await.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn redemption_needs_an_identifier() {
    let h = Harness::start().await;
    let token = h.registration_token(json!({ "count": 2 })).await;
    let value = token["token"].as_str().unwrap();
    for details in [
        json!({}),
        json!({ "identifier": "  " }),
        json!({ "identifier": 7 }),
    ] {
        let r = refusal(h.redeem_with(value, details.clone()).await).await;
        assert_eq!(
            (r.status, r.error.as_str()),
            (StatusCode::BAD_REQUEST, "invalid_request"),
            "{details}"
        );
    }
    assert_eq!(
        h.registration_token_record(token["id"].as_str().unwrap())
            .await["usedCount"],
        0
    );
}

#[tokio::test]
async fn token_values_and_ids_are_unguessable() {
    let h = Harness::start().await;
    let token = h.registration_token(json!({ "count": 20 })).await;
    let value = token["token"].as_str().unwrap();
    let mut seen = HashSet::new();
    for i in 0..20 {
        let auth = h.redeem_ok(value, &format!("d{i}")).await;
        for v in [
            &auth["id"],
            &auth["token"]["access_token"],
            &auth["token"]["refresh_token"],
        ] {
            assert!(
                seen.insert(v.as_str().unwrap().to_owned()),
                "duplicate value"
            );
        }
    }
    let a = h.registration_token(json!({ "count": 1 })).await;
    let b = h.registration_token(json!({ "count": 1 })).await;
    let common_prefix = a["token"]
        .as_str()
        .unwrap()
        .chars()
        .zip(b["token"].as_str().unwrap().chars())
        .take_while(|(x, y)| x == y)
        .count();
    assert!(common_prefix < 8, "consecutive tokens share no structure");
}
