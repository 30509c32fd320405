//! Reltio-style admin API: `/oauth/clients` (validities, grant types, scopes,
//! rotation) and `/oauth/customers/{id}` (multi-token cap, at most 200), plus a
//! client's active multi-tokens and their revocation. Admin bearer required.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::clock;
use crate::error::ApiError;
use crate::extract::{AdminAuth, ApiJson, ApiPath};
use crate::records::{Customer, OAuthClient};
use crate::secret;
use crate::state::AppState;

/// Reltio's platform-wide hard cap on `maxActiveTokensAllowed`.
pub(crate) const MAX_ACTIVE_TOKENS_CAP: i64 = 200;
const DEFAULT_ACCESS_VALIDITY: u64 = 3600;
const DEFAULT_REFRESH_VALIDITY: u64 = 28 * 24 * 3600;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClientSpec {
    client_id: String,
    /// Absent for a public client.
    client_secret: Option<String>,
    access_token_validity: Option<u64>,
    refresh_token_validity: Option<u64>,
    authorized_grant_types: Option<Vec<String>>,
    scope: Option<Vec<String>>,
    rotate_refresh_tokens: Option<bool>,
    redirect_uris: Option<Vec<String>>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

/// What a public client (no secret) may use by default: the user sign-in grants.
const PUBLIC_GRANTS: [&str; 3] = [
    "authorization_code",
    "refresh_token",
    crate::records::DEVICE_CODE_GRANT,
];

impl ClientSpec {
    fn into_client(self) -> Result<OAuthClient, ApiError> {
        if self.client_id.trim().is_empty() || self.client_secret.as_deref() == Some("") {
            return Err(ApiError::invalid_request(
                "clientId must not be empty, and clientSecret must not be empty when given \
                 (leave it out for a public client)",
            ));
        }
        let public = self.client_secret.is_none();
        let access = self
            .access_token_validity
            .unwrap_or(DEFAULT_ACCESS_VALIDITY);
        let refresh = self
            .refresh_token_validity
            .unwrap_or(DEFAULT_REFRESH_VALIDITY);
        if access == 0 || refresh == 0 {
            return Err(ApiError::invalid_request(format!(
                "client '{}': accessTokenValidity and refreshTokenValidity must be at least 1 second",
                self.client_id
            )));
        }
        let grant_types = self.authorized_grant_types.unwrap_or_else(|| {
            if public {
                PUBLIC_GRANTS.map(str::to_owned).to_vec()
            } else {
                vec!["client_credentials".to_owned()]
            }
        });
        if grant_types.is_empty() {
            return Err(ApiError::invalid_request(format!(
                "client '{}': authorizedGrantTypes must name at least one grant type",
                self.client_id
            )));
        }
        if public
            && grant_types
                .iter()
                .any(|g| !PUBLIC_GRANTS.contains(&g.as_str()))
        {
            return Err(ApiError::invalid_request(format!(
                "client '{}' has no clientSecret, so it is public: it may only use {}",
                self.client_id,
                PUBLIC_GRANTS.join(", ")
            )));
        }
        Ok(OAuthClient {
            client_id: self.client_id,
            client_secret: self.client_secret,
            access_validity: Duration::from_secs(access),
            refresh_validity: Duration::from_secs(refresh),
            grant_types,
            scope: self.scope.unwrap_or_default(),
            rotate_refresh_tokens: self.rotate_refresh_tokens.unwrap_or(true),
            redirect_uris: self.redirect_uris.unwrap_or_default(),
            extra: self.extra,
        })
    }
}

/// A client as the admin API shows it: everything but the secret.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ClientView {
    client_id: String,
    access_token_validity: u64,
    refresh_token_validity: u64,
    authorized_grant_types: Vec<String>,
    scope: Vec<String>,
    rotate_refresh_tokens: bool,
    public: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    redirect_uris: Vec<String>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

impl From<&OAuthClient> for ClientView {
    fn from(c: &OAuthClient) -> Self {
        Self {
            client_id: c.client_id.clone(),
            access_token_validity: c.access_validity.as_secs(),
            refresh_token_validity: c.refresh_validity.as_secs(),
            authorized_grant_types: c.grant_types.clone(),
            scope: c.scope.clone(),
            rotate_refresh_tokens: c.rotate_refresh_tokens,
            public: c.is_public(),
            redirect_uris: c.redirect_uris.clone(),
            extra: c.extra.clone(),
        }
    }
}

fn parse_client(value: Value) -> Result<OAuthClient, ApiError> {
    serde_json::from_value::<ClientSpec>(value)
        .map_err(|e| ApiError::invalid_request(format!("malformed client: {e}")))?
        .into_client()
}

/// `POST /oauth/clients` with one client object or an array of them; creates
/// or replaces (by `clientId`). Answers with the same shape, secrets omitted.
pub(crate) async fn create_clients(
    State(app): State<AppState>,
    _admin: AdminAuth,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let (clients, many) = match body {
        Value::Array(items) if !items.is_empty() => (
            items
                .into_iter()
                .map(parse_client)
                .collect::<Result<Vec<_>, _>>()?,
            true,
        ),
        Value::Object(_) => (vec![parse_client(body)?], false),
        _ => {
            return Err(ApiError::invalid_request(
                "expected a client object or a non-empty array of client objects",
            ));
        }
    };
    let views: Vec<ClientView> = clients.iter().map(ClientView::from).collect();
    let mut store = app.store();
    for client in clients {
        store.oauth.clients.insert(client.client_id.clone(), client);
    }
    drop(store);
    let body = if many {
        Json(views).into_response()
    } else {
        Json(views.into_iter().next()).into_response()
    };
    Ok((StatusCode::CREATED, body).into_response())
}

/// `GET /oauth/clients`
pub(crate) async fn list_clients(
    State(app): State<AppState>,
    _admin: AdminAuth,
) -> Json<Vec<ClientView>> {
    Json(
        app.store()
            .oauth
            .clients
            .values()
            .map(ClientView::from)
            .collect(),
    )
}

/// `GET /oauth/clients/{clientId}`
pub(crate) async fn get_client(
    State(app): State<AppState>,
    _admin: AdminAuth,
    ApiPath(client_id): ApiPath<String>,
) -> Result<Json<ClientView>, ApiError> {
    app.store()
        .oauth
        .clients
        .get(&client_id)
        .map(|c| Json(ClientView::from(c)))
        .ok_or_else(|| client_not_found(&client_id))
}

fn client_not_found(client_id: &str) -> ApiError {
    ApiError::not_found(format!("no OAuth client '{client_id}'"))
}

fn customer_not_found(customer_id: &str) -> ApiError {
    ApiError::not_found(format!("no customer '{customer_id}'"))
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MultitokenConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    client_credentials_multi_token_config: Option<ClientCredentialsMultiTokenConfig>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ClientCredentialsMultiTokenConfig {
    max_active_tokens_allowed: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CustomerSpec {
    id: Option<String>,
    application_clients: Option<Vec<String>>,
    multitoken_config: Option<MultitokenConfig>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CustomerView {
    id: String,
    application_clients: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    multitoken_config: Option<MultitokenConfig>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

impl From<&Customer> for CustomerView {
    fn from(c: &Customer) -> Self {
        Self {
            id: c.id.clone(),
            application_clients: c.application_clients.clone(),
            multitoken_config: c.max_active_tokens.map(|max| MultitokenConfig {
                client_credentials_multi_token_config: Some(ClientCredentialsMultiTokenConfig {
                    max_active_tokens_allowed: Some(i64::from(max)),
                }),
            }),
            extra: c.extra.clone(),
        }
    }
}

/// `PUT` or `POST /oauth/customers/{id}`: creates (201) or replaces (200).
pub(crate) async fn put_customer(
    State(app): State<AppState>,
    _admin: AdminAuth,
    ApiPath(customer_id): ApiPath<String>,
    ApiJson(spec): ApiJson<CustomerSpec>,
) -> Result<Response, ApiError> {
    if let Some(id) = spec.id.as_deref()
        && id != customer_id
    {
        return Err(ApiError::invalid_request(format!(
            "body id '{id}' differs from the customer id '{customer_id}' in the URL"
        )));
    }
    let max = spec
        .multitoken_config
        .and_then(|m| m.client_credentials_multi_token_config)
        .and_then(|c| c.max_active_tokens_allowed);
    let max_active_tokens = match max {
        None => None,
        Some(n) if n > MAX_ACTIVE_TOKENS_CAP => {
            return Err(ApiError::invalid_request(format!(
                "maxActiveTokensAllowed {n} exceeds the platform hard limit of \
                 {MAX_ACTIVE_TOKENS_CAP} active tokens per client"
            )));
        }
        Some(n) if n < 1 => {
            return Err(ApiError::invalid_request(format!(
                "maxActiveTokensAllowed must be between 1 and {MAX_ACTIVE_TOKENS_CAP} (got {n})"
            )));
        }
        Some(n) => u32::try_from(n).ok(),
    };
    let customer = Customer {
        id: customer_id.clone(),
        application_clients: spec.application_clients.unwrap_or_default(),
        max_active_tokens,
        extra: spec.extra,
    };
    let view = CustomerView::from(&customer);
    let replaced = app.store().oauth.customers.insert(customer_id, customer);
    let status = if replaced.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(view)).into_response())
}

/// `GET /oauth/customers/{id}`
pub(crate) async fn get_customer(
    State(app): State<AppState>,
    _admin: AdminAuth,
    ApiPath(customer_id): ApiPath<String>,
) -> Result<Json<CustomerView>, ApiError> {
    app.store()
        .oauth
        .customers
        .get(&customer_id)
        .map(|c| Json(CustomerView::from(c)))
        .ok_or_else(|| customer_not_found(&customer_id))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MultiTokenView {
    token_id: String,
    token_prefix: String,
    issued_at: String,
    expires_at: String,
    expires_in: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MultiTokenList {
    customer_id: String,
    client_id: String,
    max_active_tokens_allowed: Option<u32>,
    active_token_count: usize,
    tokens: Vec<MultiTokenView>,
}

/// Checks that the customer exists and lists the client.
fn customer_client(app: &AppState, customer_id: &str, client_id: &str) -> Result<(), ApiError> {
    let store = app.store();
    let customer = store
        .oauth
        .customers
        .get(customer_id)
        .ok_or_else(|| customer_not_found(customer_id))?;
    if customer.application_clients.iter().any(|c| c == client_id) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "client '{client_id}' is not one of customer '{customer_id}' applicationClients"
        )))
    }
}

/// `GET /oauth/customers/{cid}/clients/{clientId}/multitokens`: active
/// `client_credentials` tokens (handles and prefixes, never full values).
pub(crate) async fn list_multitokens(
    State(app): State<AppState>,
    _admin: AdminAuth,
    ApiPath((customer_id, client_id)): ApiPath<(String, String)>,
) -> Result<Json<MultiTokenList>, ApiError> {
    customer_client(&app, &customer_id, &client_id)?;
    let now = clock::now();
    let store = app.store();
    let limit = store.oauth.multitoken_limit(&client_id);
    let values = store
        .oauth
        .by_client
        .get(&client_id)
        .cloned()
        .unwrap_or_default();
    let tokens: Vec<MultiTokenView> = values
        .iter()
        .filter_map(|v| store.oauth.access.get(v).map(|t| (v, t)))
        .filter(|(_, t)| t.grant == "client_credentials" && t.expires_at > now)
        .map(|(value, t)| MultiTokenView {
            token_id: t.handle.clone(),
            token_prefix: secret::masked(value),
            issued_at: clock::rfc3339(t.issued_at),
            expires_at: clock::rfc3339(t.expires_at),
            expires_in: clock::secs_until_floor(now, t.expires_at),
        })
        .collect();
    drop(store);
    Ok(Json(MultiTokenList {
        customer_id,
        client_id,
        max_active_tokens_allowed: limit,
        active_token_count: tokens.len(),
        tokens,
    }))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RevokedTokens {
    client_id: String,
    revoked_tokens: usize,
}

/// `PUT /oauth/customers/{cid}/clients/{clientId}/revoketokens`: revokes all
/// access and refresh tokens of the client.
pub(crate) async fn revoke_tokens(
    State(app): State<AppState>,
    _admin: AdminAuth,
    ApiPath((customer_id, client_id)): ApiPath<(String, String)>,
) -> Result<Json<RevokedTokens>, ApiError> {
    customer_client(&app, &customer_id, &client_id)?;
    let revoked_tokens = app.store().oauth.revoke_client(&client_id, clock::now());
    Ok(Json(RevokedTokens {
        client_id,
        revoked_tokens,
    }))
}
