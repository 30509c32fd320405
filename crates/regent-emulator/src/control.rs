//! Emulator-only controls under `/_emulator/` (guarded by `X-Emulator-Key`,
//! except `introspect`): counters, faults, realm settings, the rate limit and
//! token introspection.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::RateLimit;
use crate::clock;
use crate::error::ApiError;
use crate::extract::{ApiJson, authorization};
use crate::faults::FaultSpec;
use crate::state::{AppState, Subject};

/// Longest rate-limit window accepted, in seconds (one year).
const MAX_WINDOW_SECS: f64 = 365.0 * 24.0 * 3600.0;

/// `GET /_emulator/counters`
pub(crate) async fn counters(State(app): State<AppState>) -> Json<Value> {
    let (requests, redemptions, refreshes) = {
        let counters = app.counters();
        (
            counters.requests().clone(),
            counters.redemptions(),
            counters.refreshes(),
        )
    };
    let now = clock::now();
    let store = app.store();
    let active_tokens = store.oauth.active_counts(now);
    let registration_tokens: BTreeMap<&str, Value> = store
        .registration_tokens
        .values()
        .map(|t| {
            (
                t.id.as_str(),
                json!({ "count": t.count, "usedCount": t.used_count }),
            )
        })
        .collect();
    let active_sessions = store
        .sessions
        .values()
        .filter(|s| s.active && s.refresh_expires_at > now && s.subject != Subject::Admin)
        .count();
    Json(json!({
        "requests": requests,
        "activeTokens": active_tokens,
        "activeSessions": active_sessions,
        "registrationTokens": registration_tokens,
        "redemptions": redemptions,
        "refreshes": refreshes,
    }))
}

/// `POST /_emulator/counters/reset`
pub(crate) async fn reset_counters(State(app): State<AppState>) -> StatusCode {
    app.counters().reset();
    StatusCode::NO_CONTENT
}

/// `GET /_emulator/faults`
pub(crate) async fn get_faults(State(app): State<AppState>) -> Json<FaultSpec> {
    Json(app.faults().view())
}

/// `PUT /_emulator/faults`: replaces every fault setting.
pub(crate) async fn put_faults(
    State(app): State<AppState>,
    ApiJson(spec): ApiJson<FaultSpec>,
) -> Result<Json<FaultSpec>, ApiError> {
    let mut faults = app.faults();
    faults.replace(spec)?;
    Ok(Json(faults.view()))
}

/// `DELETE /_emulator/faults`
pub(crate) async fn delete_faults(State(app): State<AppState>) -> StatusCode {
    *app.faults() = Default::default();
    StatusCode::NO_CONTENT
}

/// Realm settings, in seconds.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RealmSpec {
    access_token_lifespan: Option<u64>,
    refresh_token_lifespan: Option<u64>,
    rotate_refresh_tokens: Option<bool>,
}

fn realm_view(app: &AppState) -> RealmSpec {
    let realm = app.store().realm;
    RealmSpec {
        access_token_lifespan: Some(realm.access_lifespan.as_secs()),
        refresh_token_lifespan: Some(realm.refresh_lifespan.as_secs()),
        rotate_refresh_tokens: Some(realm.rotate),
    }
}

/// `GET /_emulator/realm`
pub(crate) async fn get_realm(State(app): State<AppState>) -> Json<RealmSpec> {
    Json(realm_view(&app))
}

/// `PUT /_emulator/realm`: changes only the fields given; applies to tokens
/// issued from now on.
pub(crate) async fn put_realm(
    State(app): State<AppState>,
    ApiJson(spec): ApiJson<RealmSpec>,
) -> Result<Json<RealmSpec>, ApiError> {
    if spec.access_token_lifespan == Some(0) || spec.refresh_token_lifespan == Some(0) {
        return Err(ApiError::invalid_request(
            "token lifespans must be at least 1 second",
        ));
    }
    {
        let mut store = app.store();
        if let Some(secs) = spec.access_token_lifespan {
            store.realm.access_lifespan = Duration::from_secs(secs);
        }
        if let Some(secs) = spec.refresh_token_lifespan {
            store.realm.refresh_lifespan = Duration::from_secs(secs);
        }
        if let Some(rotate) = spec.rotate_refresh_tokens {
            store.realm.rotate = rotate;
        }
    }
    Ok(Json(realm_view(&app)))
}

/// Body of `PUT /_emulator/rate-limit`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RateLimitSpec {
    requests: u32,
    per_seconds: f64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RateLimitView {
    enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    requests: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    per_seconds: Option<f64>,
}

fn rate_limit_view(limit: Option<RateLimit>) -> RateLimitView {
    RateLimitView {
        enabled: limit.is_some(),
        requests: limit.map(|l| l.requests),
        per_seconds: limit.map(|l| l.per.as_secs_f64()),
    }
}

/// `GET /_emulator/rate-limit`
pub(crate) async fn get_rate_limit(State(app): State<AppState>) -> Json<RateLimitView> {
    Json(rate_limit_view(app.limiter().limit()))
}

/// `PUT /_emulator/rate-limit`: turns the limit on (windows restart).
pub(crate) async fn put_rate_limit(
    State(app): State<AppState>,
    ApiJson(spec): ApiJson<RateLimitSpec>,
) -> Result<Json<RateLimitView>, ApiError> {
    if spec.requests == 0 {
        return Err(ApiError::invalid_request("requests must be at least 1"));
    }
    let per = Some(spec.per_seconds)
        .filter(|s| *s > 0.0 && *s <= MAX_WINDOW_SECS)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| {
            ApiError::invalid_request(format!(
                "perSeconds must be above 0 and at most {MAX_WINDOW_SECS}"
            ))
        })?;
    let limit = Some(RateLimit {
        requests: spec.requests,
        per,
    });
    app.limiter().set(limit);
    Ok(Json(rate_limit_view(limit)))
}

/// `DELETE /_emulator/rate-limit`
pub(crate) async fn delete_rate_limit(State(app): State<AppState>) -> StatusCode {
    app.limiter().set(None);
    StatusCode::NO_CONTENT
}

/// `GET /_emulator/introspect` with `Authorization: Bearer <access token>`:
/// whether the server would accept that token now. Needs no emulator key: it
/// only answers about a token the caller already holds.
pub(crate) async fn introspect(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let token = authorization(&headers, "Bearer").ok_or_else(|| {
        ApiError::invalid_request("send the token to check as 'Authorization: Bearer <token>'")
    })?;
    let now = clock::now();
    let store = app.store();
    let answer = if let Some(bearer) = store.active_bearer(token, now) {
        let expires_in = clock::secs_until_floor(now, bearer.expires_at);
        match &bearer.subject {
            Subject::Device { auth_token_id } => json!({
                "active": true, "kind": "sentinel", "authTokenId": auth_token_id, "expiresIn": expires_in,
            }),
            Subject::Admin => json!({ "active": true, "kind": "admin", "expiresIn": expires_in }),
        }
    } else if let Some(access) = store.oauth.access.get(token).filter(|t| t.expires_at > now) {
        json!({
            "active": true,
            "kind": "oauth2",
            "clientId": access.client_id,
            "scope": access.scope,
            "expiresIn": clock::secs_until_floor(now, access.expires_at),
        })
    } else {
        json!({ "active": false })
    };
    Ok(Json(answer))
}
