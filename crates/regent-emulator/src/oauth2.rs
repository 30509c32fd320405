//! Reltio-style OAuth2: issuer discovery and `POST /oauth/token`
//! (`client_credentials`, `refresh_token`, `password` for the admin user, and
//! the user sign-in grants `authorization_code` and `device_code` from
//! [`crate::signin`]), with single-token re-issue, multi-token mode and its
//! active-token cap, and refresh-token reuse detection for user sign-ins.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::clock;
use crate::error::{ApiError, token_response};
use crate::extract::{FormParams, authorization};
use crate::records::{DEVICE_CODE_GRANT, OAuthAccess, OAuthClient, Owner};
use crate::secret;
use crate::state::{ADMIN_TOKEN_LIFESPAN, AppState, Store, Subject};

/// Grant types `/oauth/token` understands.
const SUPPORTED_GRANTS: &str = "client_credentials, refresh_token, password, authorization_code, \
     urn:ietf:params:oauth:grant-type:device_code";

/// `/oauth/token` success body.
#[derive(Debug, Serialize)]
pub(crate) struct OAuthTokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    /// OpenID Connect: who signed in, when the scope includes `openid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) id_token: Option<String>,
}

/// `GET /.well-known/openid-configuration`
pub(crate) async fn openid_configuration(State(app): State<AppState>) -> Json<Value> {
    let base = &app.base_url;
    Json(json!({
        "issuer": base,
        "token_endpoint": format!("{base}/oauth/token"),
        "authorization_endpoint": format!("{base}/oauth/authorize"),
        "device_authorization_endpoint": format!("{base}/oauth/device_authorization"),
        "revocation_endpoint": format!("{base}/oauth/revoke"),
        "userinfo_endpoint": format!("{base}/oauth/userinfo"),
        "grant_types_supported": [
            "client_credentials", "refresh_token", "password", "authorization_code",
            DEVICE_CODE_GRANT,
        ],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "response_types_supported": ["code", "token"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "id_token_signing_alg_values_supported": ["none"],
        "subject_types_supported": ["public"],
    }))
}

/// `POST /oauth/token`
pub(crate) async fn token(
    State(app): State<AppState>,
    headers: HeaderMap,
    form: FormParams,
) -> Result<Response, ApiError> {
    let grant = form.require("grant_type")?;
    let client = client_authentication(&headers, &form)?;
    let response = app
        .store()
        .oauth_token(grant, client, &form, &app.base_url, clock::now())?;
    if grant == "refresh_token" {
        app.counters().note_refresh();
    }
    Ok(token_response(StatusCode::OK, response))
}

/// A client's id and, for a confidential client, its secret.
pub(crate) type ClientAuth = Option<(String, Option<String>)>;

/// Client credentials from `Authorization: Basic base64(id:secret)` or from
/// `client_id`/`client_secret` form parameters (not both); a public client
/// sends `client_id` alone.
pub(crate) fn client_authentication(
    headers: &HeaderMap,
    form: &FormParams,
) -> Result<ClientAuth, ApiError> {
    let form_id = form.get("client_id")?;
    let form_secret = form.get("client_secret")?;
    if let Some(basic) = authorization(headers, "Basic") {
        let decoded = STANDARD
            .decode(basic)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok());
        let Some((id, secret)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
            return Err(ApiError::invalid_client(
                "malformed Authorization header: expected Basic base64(client_id:client_secret)",
            ));
        };
        if form_secret.is_some() {
            return Err(ApiError::invalid_request(
                "use one client authentication method: the Authorization header or \
                 client_secret in the form, not both",
            ));
        }
        if form_id.is_some_and(|f| f != id) {
            return Err(ApiError::invalid_request(
                "client_id in the form differs from the one in the Authorization header",
            ));
        }
        return Ok(Some((id.to_owned(), Some(secret.to_owned()))));
    }
    match (form_id, form_secret) {
        (Some(id), secret) => Ok(Some((id.to_owned(), secret.map(str::to_owned)))),
        (None, None) => Ok(None),
        (None, Some(_)) => Err(ApiError::invalid_client(
            "incomplete client authentication: client_secret without client_id",
        )),
    }
}

/// The scope to grant: the request's (each word must be one of the client's
/// scopes, when it has any) or else all of the client's.
pub(crate) fn granted_scope(
    client: &OAuthClient,
    requested: Option<&str>,
) -> Result<String, ApiError> {
    let Some(requested) = requested else {
        return Ok(client.scope.join(" "));
    };
    let words: Vec<&str> = requested.split_whitespace().collect();
    let unknown: Vec<&str> = words
        .iter()
        .copied()
        .filter(|w| !client.scope.iter().any(|s| s == w))
        .collect();
    if !client.scope.is_empty() && !unknown.is_empty() {
        return Err(ApiError::invalid_scope(format!(
            "client '{}' may not request scope {}; its scopes are: {}",
            client.client_id,
            unknown.join(" "),
            client.scope.join(" ")
        )));
    }
    Ok(words.join(" "))
}

impl OAuthTokenResponse {
    pub(crate) fn scope(&self) -> &str {
        &self.scope
    }
}

impl Store {
    fn oauth_token(
        &mut self,
        grant: &str,
        client: ClientAuth,
        form: &FormParams,
        issuer: &str,
        now: OffsetDateTime,
    ) -> Result<OAuthTokenResponse, ApiError> {
        if !matches!(
            grant,
            "client_credentials"
                | "refresh_token"
                | "password"
                | "authorization_code"
                | DEVICE_CODE_GRANT
        ) {
            return Err(ApiError::unsupported_grant_type(grant, SUPPORTED_GRANTS));
        }
        if grant == "password" && client.is_none() {
            return self.admin_password_grant(form, now);
        }
        let client = self.authenticate_client(client)?;
        let client_id = client.client_id.clone();
        if !client.allows(grant) {
            return Err(ApiError::unauthorized_client(format!(
                "client '{client_id}' may not use grant_type {grant}; its authorizedGrantTypes \
                 are [{}]",
                client.grant_types.join(", ")
            )));
        }
        match grant {
            "client_credentials" => {
                let scope = granted_scope(&client, form.get("scope")?)?;
                self.client_credentials(&client, scope, now)
            }
            "refresh_token" => {
                self.oauth_refresh(&client, form.require("refresh_token")?, issuer, now)
            }
            "authorization_code" => self.code_grant(&client, form, issuer, now),
            DEVICE_CODE_GRANT => self.device_grant(&client, form, issuer, now),
            _ => self.admin_password_grant(form, now),
        }
    }

    /// The client a request authenticated as (see [`client_authentication`]).
    pub(crate) fn authenticate_client(&self, client: ClientAuth) -> Result<OAuthClient, ApiError> {
        let (client_id, client_secret) = client.ok_or_else(|| {
            ApiError::invalid_client(
                "missing client authentication: send Authorization: Basic \
                 base64(client_id:client_secret), or client_id alone for a public client",
            )
        })?;
        self.oauth
            .authenticate(&client_id, client_secret.as_deref())
    }

    fn admin_password_grant(
        &mut self,
        form: &FormParams,
        now: OffsetDateTime,
    ) -> Result<OAuthTokenResponse, ApiError> {
        self.check_admin_password(form.require("username")?, form.require("password")?)?;
        let access_token = self.mint_bearer(Subject::Admin, ADMIN_TOKEN_LIFESPAN, now);
        Ok(OAuthTokenResponse {
            access_token,
            token_type: "bearer",
            expires_in: ADMIN_TOKEN_LIFESPAN.as_secs(),
            scope: "admin".to_owned(),
            refresh_token: None,
            id_token: None,
        })
    }

    /// Single-token mode re-issues the live token with its remaining lifetime;
    /// multi-token mode mints a new one unless the client is at its cap (429
    /// with `Retry-After` = seconds until its earliest token expires).
    fn client_credentials(
        &mut self,
        client: &OAuthClient,
        scope: String,
        now: OffsetDateTime,
    ) -> Result<OAuthTokenResponse, ApiError> {
        let id = &client.client_id;
        self.oauth.prune_client(id, now);
        match self.oauth.multitoken_limit(id) {
            None => {
                let live = self
                    .oauth
                    .by_client
                    .get(id)
                    .into_iter()
                    .flatten()
                    .filter_map(|v| self.oauth.access.get(v).map(|t| (v, t)))
                    .filter(|(_, t)| t.grant == "client_credentials" && t.scope == scope)
                    .max_by_key(|(_, t)| t.expires_at)
                    .map(|(v, t)| (v.clone(), t.expires_at, t.refresh_token.clone()));
                if let Some((value, expires_at, refresh)) = live {
                    let expires_in = clock::secs_until_floor(now, expires_at);
                    if expires_in >= 1 {
                        return Ok(self.reissue(client, value, expires_in, scope, refresh, now));
                    }
                }
            }
            Some(max) => {
                let active = self.oauth.active_multitokens(id, now);
                if active.len() >= usize::try_from(max).unwrap_or(usize::MAX) {
                    let retry_after = active
                        .iter()
                        .map(|t| clock::secs_until_ceil(now, t.expires_at))
                        .min()
                        .unwrap_or(1);
                    return Err(ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "active_token_limit_exceeded",
                        format!(
                            "client {id} already holds {} active tokens (limit {max}); wait for \
                             one to expire or raise maxActiveTokensAllowed",
                            active.len()
                        ),
                    )
                    .with_retry_after(retry_after));
                }
            }
        }
        let refresh_token = client
            .allows("refresh_token")
            .then(|| self.oauth.mint_refresh(client, &scope, None, now));
        Ok(self.mint_oauth_access(
            client,
            "client_credentials",
            scope,
            refresh_token,
            None,
            now,
        ))
    }

    /// Answers with an already-issued access token; its refresh token is
    /// replaced if it has since been used up.
    fn reissue(
        &mut self,
        client: &OAuthClient,
        value: String,
        expires_in: u64,
        scope: String,
        refresh: Option<String>,
        now: OffsetDateTime,
    ) -> OAuthTokenResponse {
        let refresh_token = match refresh {
            Some(r) if self.oauth.refresh.contains_key(&r) => Some(r),
            _ if client.allows("refresh_token") => {
                let fresh = self.oauth.mint_refresh(client, &scope, None, now);
                if let Some(t) = self.oauth.access.get_mut(&value) {
                    t.refresh_token = Some(fresh.clone());
                }
                Some(fresh)
            }
            _ => None,
        };
        OAuthTokenResponse {
            access_token: value,
            token_type: "bearer",
            expires_in,
            scope,
            refresh_token,
            id_token: None,
        }
    }

    fn oauth_refresh(
        &mut self,
        client: &OAuthClient,
        presented: &str,
        issuer: &str,
        now: OffsetDateTime,
    ) -> Result<OAuthTokenResponse, ApiError> {
        let Some(record) = self.oauth.refresh.get(presented).cloned() else {
            // A user's refresh token that was already rotated away: someone
            // holds a copy. Every token of that sign-in ends (OAuth 2.1 §4.3.1).
            if let Some(family) = self.oauth.rotated.get(presented).cloned() {
                self.oauth.revoke_family(&family);
                return Err(ApiError::invalid_grant(
                    "Invalid refresh token: it was already used (reuse detected); every token \
                     of this sign-in is revoked, sign in again",
                ));
            }
            return Err(ApiError::invalid_grant(
                "Invalid refresh token: unknown, expired, revoked or already used",
            ));
        };
        if record.client_id != client.client_id {
            return Err(ApiError::invalid_grant(
                "Invalid refresh token: it was issued to another client",
            ));
        }
        if record.expires_at <= now {
            self.oauth.refresh.remove(presented);
            return Err(ApiError::invalid_grant("Invalid refresh token: expired"));
        }
        if let Some(owner) = &record.owner
            && !self.oauth.users.contains_key(&owner.user)
        {
            self.oauth.revoke_user(&owner.user);
            return Err(ApiError::invalid_grant(
                "Invalid refresh token: the user no longer exists",
            ));
        }
        self.oauth.prune_client(&client.client_id, now);
        let refresh_token = if client.rotate_refresh_tokens {
            self.oauth.refresh.remove(presented);
            if let Some(owner) = &record.owner {
                self.oauth
                    .rotated
                    .insert(presented.to_owned(), owner.family.clone());
            }
            self.oauth
                .mint_refresh(client, &record.scope, record.owner.clone(), now)
        } else {
            presented.to_owned()
        };
        let mut response = self.mint_oauth_access(
            client,
            "refresh_token",
            record.scope,
            Some(refresh_token),
            record.owner.clone(),
            now,
        );
        if let Some(owner) = &record.owner {
            response.id_token = self.id_token(client, owner, &response.scope, None, issuer, now);
        }
        Ok(response)
    }

    pub(crate) fn mint_oauth_access(
        &mut self,
        client: &OAuthClient,
        grant: &'static str,
        scope: String,
        refresh_token: Option<String>,
        owner: Option<Owner>,
        now: OffsetDateTime,
    ) -> OAuthTokenResponse {
        self.note_mint(now);
        let value = secret::token();
        self.oauth.access.insert(
            value.clone(),
            OAuthAccess {
                handle: secret::handle(),
                client_id: client.client_id.clone(),
                grant,
                scope: scope.clone(),
                issued_at: now,
                expires_at: clock::after(now, client.access_validity),
                refresh_token: refresh_token.clone(),
                owner,
            },
        );
        self.oauth
            .by_client
            .entry(client.client_id.clone())
            .or_default()
            .push(value.clone());
        OAuthTokenResponse {
            access_token: value,
            token_type: "bearer",
            expires_in: client.access_validity.as_secs(),
            scope,
            refresh_token,
            id_token: None,
        }
    }
}
