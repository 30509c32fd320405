//! Sentinel-style admin API: registration tokens (create / list / get / patch /
//! delete) and auth tokens (list who redeemed / get / delete = revoke). Every
//! route needs an admin bearer token.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::clock;
use crate::error::ApiError;
use crate::extract::{AdminAuth, ApiJson, ApiPath, ApiQuery};
use crate::records::{AuthToken, RegistrationToken};
use crate::secret;
use crate::state::{AppState, Store, Subject};

/// Registration tokens expire after this long unless `expiryDate` is given.
const DEFAULT_EXPIRY: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RegistrationTokenBody {
    registration_token: RegistrationTokenFields,
}

/// Fields an admin may set; all optional so one shape serves POST and PATCH.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegistrationTokenFields {
    identifier: Option<String>,
    count: Option<i64>,
    ref_id1: Option<String>,
    ref_id2: Option<String>,
    is_enabled: Option<bool>,
    expiry_date: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RegistrationTokenView {
    id: String,
    token: String,
    identifier: Option<String>,
    count: u32,
    used_count: u32,
    ref_id1: Option<String>,
    ref_id2: Option<String>,
    is_enabled: bool,
    state: &'static str,
    expiry_date: String,
    creation_date: String,
}

impl RegistrationTokenView {
    fn new(token: &RegistrationToken, now: OffsetDateTime) -> Self {
        Self {
            id: token.id.clone(),
            token: token.value.clone(),
            identifier: token.identifier.clone(),
            count: token.count,
            used_count: token.used_count,
            ref_id1: token.ref_id1.clone(),
            ref_id2: token.ref_id2.clone(),
            is_enabled: token.is_enabled,
            state: token.state(now),
            expiry_date: clock::rfc3339(token.expiry),
            creation_date: clock::rfc3339(token.created),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct OneRegistrationToken {
    registration_token: RegistrationTokenView,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RegistrationTokenList {
    registration_tokens: Vec<RegistrationTokenView>,
}

fn parse_count(count: i64) -> Result<u32, ApiError> {
    if count < 1 {
        return Err(ApiError::invalid_request(format!(
            "count must be at least 1 (got {count}): it is how many auth tokens this \
             registration token may create"
        )));
    }
    u32::try_from(count).map_err(|_| {
        ApiError::invalid_request(format!("count {count} is larger than {}", u32::MAX))
    })
}

fn registration_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("no registration token with id '{id}'"))
}

fn auth_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("no auth token with id '{id}'"))
}

/// `POST /token/api/v5/registrationTokens`
pub(crate) async fn create_registration_token(
    State(app): State<AppState>,
    _admin: AdminAuth,
    ApiJson(body): ApiJson<RegistrationTokenBody>,
) -> Result<Response, ApiError> {
    let fields = body.registration_token;
    let count = parse_count(
        fields
            .count
            .ok_or_else(|| ApiError::invalid_request("registrationToken.count is required"))?,
    )?;
    let now = clock::now();
    let expiry = match fields.expiry_date.as_deref() {
        Some(text) => clock::parse_expiry(text).map_err(ApiError::invalid_request)?,
        None => clock::after(now, DEFAULT_EXPIRY),
    };
    let mut store = app.store();
    let token = RegistrationToken {
        id: secret::uuid(),
        value: secret::token(),
        identifier: fields.identifier,
        count,
        used_count: 0,
        ref_id1: fields.ref_id1,
        ref_id2: fields.ref_id2,
        is_enabled: fields.is_enabled.unwrap_or(true),
        expiry,
        created: now,
        seq: store.next_seq(),
    };
    let view = RegistrationTokenView::new(&token, now);
    store
        .registration_ids_by_value
        .insert(token.value.clone(), token.id.clone());
    store.registration_tokens.insert(token.id.clone(), token);
    drop(store);
    Ok((
        StatusCode::CREATED,
        Json(OneRegistrationToken {
            registration_token: view,
        }),
    )
        .into_response())
}

/// `GET /token/api/v5/registrationTokens`
pub(crate) async fn list_registration_tokens(
    State(app): State<AppState>,
    _admin: AdminAuth,
) -> Response {
    let now = clock::now();
    let store = app.store();
    let mut tokens: Vec<&RegistrationToken> = store.registration_tokens.values().collect();
    tokens.sort_by_key(|t| t.seq);
    let registration_tokens = tokens
        .into_iter()
        .map(|t| RegistrationTokenView::new(t, now))
        .collect();
    drop(store);
    Json(RegistrationTokenList {
        registration_tokens,
    })
    .into_response()
}

/// `GET /token/api/v5/registrationTokens/{id}`
pub(crate) async fn get_registration_token(
    State(app): State<AppState>,
    _admin: AdminAuth,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let now = clock::now();
    let store = app.store();
    let token = store
        .registration_tokens
        .get(&id)
        .ok_or_else(|| registration_not_found(&id))?;
    let registration_token = RegistrationTokenView::new(token, now);
    drop(store);
    Ok(Json(OneRegistrationToken { registration_token }).into_response())
}

/// `PATCH /token/api/v5/registrationTokens/{id}`
pub(crate) async fn patch_registration_token(
    State(app): State<AppState>,
    _admin: AdminAuth,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<RegistrationTokenBody>,
) -> Result<Response, ApiError> {
    let fields = body.registration_token;
    let count = fields.count.map(parse_count).transpose()?;
    let expiry = fields
        .expiry_date
        .as_deref()
        .map(clock::parse_expiry)
        .transpose()
        .map_err(ApiError::invalid_request)?;
    let now = clock::now();
    let mut store = app.store();
    let token = store
        .registration_tokens
        .get_mut(&id)
        .ok_or_else(|| registration_not_found(&id))?;
    if let Some(count) = count {
        if count < token.used_count {
            return Err(ApiError::invalid_request(format!(
                "count {count} is below usedCount {}: auth tokens already created cannot be \
                 uncounted; delete auth tokens instead",
                token.used_count
            )));
        }
        token.count = count;
    }
    if let Some(expiry) = expiry {
        token.expiry = expiry;
    }
    if let Some(enabled) = fields.is_enabled {
        token.is_enabled = enabled;
    }
    if fields.identifier.is_some() {
        token.identifier = fields.identifier;
    }
    if fields.ref_id1.is_some() {
        token.ref_id1 = fields.ref_id1;
    }
    if fields.ref_id2.is_some() {
        token.ref_id2 = fields.ref_id2;
    }
    let registration_token = RegistrationTokenView::new(token, now);
    drop(store);
    Ok(Json(OneRegistrationToken { registration_token }).into_response())
}

/// `DELETE /token/api/v5/registrationTokens/{id}`: auth tokens already created
/// from it stay valid.
pub(crate) async fn delete_registration_token(
    State(app): State<AppState>,
    _admin: AdminAuth,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let mut store = app.store();
    let token = store
        .registration_tokens
        .remove(&id)
        .ok_or_else(|| registration_not_found(&id))?;
    store.registration_ids_by_value.remove(&token.value);
    store.redemptions.retain(|(token_id, _), _| *token_id != id);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct AuthTokenView {
    id: String,
    identifier: String,
    fqdn: Option<String>,
    mac_address: Option<String>,
    system_user_name: Option<String>,
    ref_id1: Option<String>,
    ref_id2: Option<String>,
    registration_token_id: String,
    creation_date: String,
    last_refresh_date: Option<String>,
}

impl From<&AuthToken> for AuthTokenView {
    fn from(auth: &AuthToken) -> Self {
        Self {
            id: auth.id.clone(),
            identifier: auth.identifier.clone(),
            fqdn: auth.fqdn.clone(),
            mac_address: auth.mac_address.clone(),
            system_user_name: auth.system_user_name.clone(),
            ref_id1: auth.ref_id1.clone(),
            ref_id2: auth.ref_id2.clone(),
            registration_token_id: auth.registration_token_id.clone(),
            creation_date: clock::rfc3339(auth.created),
            last_refresh_date: auth.last_refresh.map(clock::rfc3339),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AuthTokenFilter {
    registration_token_id: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct AuthTokenList {
    auth_tokens: Vec<AuthTokenView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct OneAuthToken {
    auth_token: AuthTokenView,
}

/// `GET /token/api/v5/authTokens[?registrationTokenId=]`
pub(crate) async fn list_auth_tokens(
    State(app): State<AppState>,
    _admin: AdminAuth,
    ApiQuery(filter): ApiQuery<AuthTokenFilter>,
) -> Response {
    let store = app.store();
    let mut tokens: Vec<&AuthToken> = store
        .auth_tokens
        .values()
        .filter(|a| {
            filter
                .registration_token_id
                .as_ref()
                .is_none_or(|id| *id == a.registration_token_id)
        })
        .collect();
    tokens.sort_by_key(|a| a.seq);
    let auth_tokens = tokens.into_iter().map(AuthTokenView::from).collect();
    drop(store);
    Json(AuthTokenList { auth_tokens }).into_response()
}

/// `GET /token/api/v5/authTokens/{id}`
pub(crate) async fn get_auth_token(
    State(app): State<AppState>,
    _admin: AdminAuth,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let store = app.store();
    let auth_token = store
        .auth_tokens
        .get(&id)
        .map(AuthTokenView::from)
        .ok_or_else(|| auth_not_found(&id))?;
    drop(store);
    Ok(Json(OneAuthToken { auth_token }).into_response())
}

/// `DELETE /token/api/v5/authTokens/{id}`: revocation.
pub(crate) async fn delete_auth_token(
    State(app): State<AppState>,
    _admin: AdminAuth,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    if app.store().revoke_auth_token(&id) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(auth_not_found(&id))
    }
}

impl Store {
    /// Deletes an auth token: its session dies (refresh → "Session not
    /// active") and its access tokens stop being active at once.
    fn revoke_auth_token(&mut self, id: &str) -> bool {
        let Some(auth) = self.auth_tokens.remove(id) else {
            return false;
        };
        if let Some(session) = self.sessions.get_mut(&auth.session_id) {
            session.active = false;
        }
        self.bearer_tokens.retain(|_, t| match &t.subject {
            Subject::Device { auth_token_id } => auth_token_id != id,
            Subject::Admin => true,
        });
        self.redemptions
            .remove(&(auth.registration_token_id, auth.identifier));
        true
    }
}
