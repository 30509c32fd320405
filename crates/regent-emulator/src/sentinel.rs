//! Sentinel EMS–style client routes: IdP discovery and registration-token
//! redemption (registration token → auth token + first token pair), with
//! replay of a known identifier and exact count accounting.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::clock;
use crate::error::{ApiError, Outcome, token_response};
use crate::extract::{ApiJson, authorization};
use crate::oidc::RealmTokens;
use crate::records::AuthToken;
use crate::state::{AppState, Store, Subject};

/// Longest accepted identifier or device detail, in characters.
const MAX_FIELD_CHARS: usize = 1024;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IdpConfiguration {
    realm: String,
    token_endpoint: String,
    client_id: String,
}

/// `GET /token/api/v5/idpConfigurations`
pub(crate) async fn idp_configurations(State(app): State<AppState>) -> Json<IdpConfiguration> {
    Json(IdpConfiguration {
        realm: app.realm.clone(),
        token_endpoint: format!("{}/auth/", app.base_url),
        client_id: app.client_id.clone(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RedeemRequest {
    auth_token: DeviceDetails,
}

/// What a device says about itself when redeeming.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeviceDetails {
    identifier: Option<String>,
    fqdn: Option<String>,
    mac_address: Option<String>,
    system_user_name: Option<String>,
    ref_id1: Option<String>,
    ref_id2: Option<String>,
}

impl DeviceDetails {
    fn validate(&self) -> Result<&str, ApiError> {
        let identifier = self
            .identifier
            .as_deref()
            .map(str::trim)
            .unwrap_or_default();
        if identifier.is_empty() {
            return Err(ApiError::invalid_request(
                "authToken.identifier is required: a stable id for the device or slot",
            ));
        }
        let fields = [
            Some(identifier),
            self.fqdn.as_deref(),
            self.mac_address.as_deref(),
            self.system_user_name.as_deref(),
            self.ref_id1.as_deref(),
            self.ref_id2.as_deref(),
        ];
        if fields
            .iter()
            .flatten()
            .any(|f| f.chars().count() > MAX_FIELD_CHARS)
        {
            return Err(ApiError::invalid_request(format!(
                "authToken fields are limited to {MAX_FIELD_CHARS} characters"
            )));
        }
        Ok(identifier)
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RedeemResponse {
    auth_token: RedeemedAuthToken,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RedeemedAuthToken {
    id: String,
    identifier: String,
    token: RealmTokens,
}

/// The result of a successful redemption.
#[derive(Debug)]
pub(crate) enum Redemption {
    /// A new auth token; one count consumed.
    New(RedeemResponse),
    /// The identifier had already redeemed this registration token: same auth
    /// token, fresh session, no count consumed.
    Replay(RedeemResponse),
}

/// `POST /token/api/v5/authTokens`
pub(crate) async fn redeem(
    State(app): State<AppState>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<RedeemRequest>,
) -> Result<Response, ApiError> {
    let presented = presented_registration_token(&headers)?;
    let redemption = app
        .store()
        .redeem(&presented, request.auth_token, clock::now())?;
    Ok(match redemption {
        Redemption::New(body) => {
            app.counters().note_redemption();
            token_response(StatusCode::CREATED, body)
        }
        Redemption::Replay(body) => {
            let mut response = token_response(StatusCode::OK, body);
            response.extensions_mut().insert(Outcome("replay"));
            response
        }
    })
}

/// Candidate registration-token values from `Authorization: Basic …`: the raw
/// credentials, and for robustness their base64 decoding (with a trailing `:`
/// from a `token:` user-pass pair stripped).
fn presented_registration_token(headers: &HeaderMap) -> Result<Vec<String>, ApiError> {
    let raw = authorization(headers, "Basic").ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_registration_token",
            "missing registration token: send 'Authorization: Basic <registration token>'",
        )
    })?;
    let mut candidates = vec![raw.to_owned()];
    if let Ok(decoded) = STANDARD.decode(raw)
        && let Ok(text) = String::from_utf8(decoded)
    {
        candidates.push(text.strip_suffix(':').unwrap_or(&text).to_owned());
    }
    Ok(candidates)
}

fn refusal(status: StatusCode, code: &'static str, description: String) -> ApiError {
    ApiError::new(status, code, description)
}

impl Store {
    /// Redeems a registration token for `device`. Checks, in order: unknown
    /// token, disabled, expired, replay of a known identifier, exhausted.
    pub(crate) fn redeem(
        &mut self,
        presented: &[String],
        device: DeviceDetails,
        now: OffsetDateTime,
    ) -> Result<Redemption, ApiError> {
        let identifier = device.validate()?.to_owned();
        let token = presented
            .iter()
            .find_map(|value| self.registration_ids_by_value.get(value))
            .and_then(|id| self.registration_tokens.get(id))
            .ok_or_else(|| {
                refusal(
                    StatusCode::UNAUTHORIZED,
                    "invalid_registration_token",
                    "registration token not recognised: it was never issued or has been \
                     deleted; check the value or ask your administrator for a new one"
                        .to_owned(),
                )
            })?;
        let (token_id, count, used) = (token.id.clone(), token.count, token.used_count);
        if !token.is_enabled {
            return Err(refusal(
                StatusCode::FORBIDDEN,
                "registration_token_disabled",
                format!(
                    "registration token {token_id} is disabled; ask your administrator to \
                     enable it or to issue a new one"
                ),
            ));
        }
        if token.is_expired(now) {
            return Err(refusal(
                StatusCode::FORBIDDEN,
                "registration_token_expired",
                format!(
                    "registration token {token_id} expired on {} ({} of {count} counts \
                     unused); ask your administrator for a new registration token or a later \
                     expiryDate",
                    clock::rfc3339(token.expiry),
                    count.saturating_sub(used),
                ),
            ));
        }
        let key = (token_id.clone(), identifier.clone());
        if let Some(auth_id) = self.redemptions.get(&key).cloned()
            && self.auth_tokens.contains_key(&auth_id)
        {
            let token = self.restart_device_session(&auth_id, now);
            return Ok(Redemption::Replay(RedeemResponse {
                auth_token: RedeemedAuthToken {
                    id: auth_id,
                    identifier,
                    token,
                },
            }));
        }
        if used >= count {
            return Err(refusal(
                StatusCode::FORBIDDEN,
                "registration_token_exhausted",
                format!(
                    "registration token {token_id} has used all {count} of its counts; ask your \
                     administrator to raise its count or to issue a new registration token"
                ),
            ));
        }
        if let Some(token) = self.registration_tokens.get_mut(&token_id) {
            token.used_count = used.saturating_add(1);
        }
        let auth_id = crate::secret::uuid();
        let seq = self.next_seq();
        self.auth_tokens.insert(
            auth_id.clone(),
            AuthToken {
                id: auth_id.clone(),
                identifier: identifier.clone(),
                fqdn: device.fqdn,
                mac_address: device.mac_address,
                system_user_name: device.system_user_name,
                ref_id1: device.ref_id1,
                ref_id2: device.ref_id2,
                registration_token_id: token_id,
                created: now,
                last_refresh: None,
                session_id: String::new(),
                seq,
            },
        );
        self.redemptions.insert(key, auth_id.clone());
        let token = self.restart_device_session(&auth_id, now);
        Ok(Redemption::New(RedeemResponse {
            auth_token: RedeemedAuthToken {
                id: auth_id,
                identifier,
                token,
            },
        }))
    }

    /// Opens a fresh session for an auth token, killing its previous one (its
    /// refresh tokens die; access tokens already issued live until expiry).
    fn restart_device_session(&mut self, auth_id: &str, now: OffsetDateTime) -> RealmTokens {
        let subject = Subject::Device {
            auth_token_id: auth_id.to_owned(),
        };
        let (session_id, refresh_token) = self.open_session(subject.clone(), now);
        if let Some(auth) = self.auth_tokens.get_mut(auth_id) {
            let old = std::mem::replace(&mut auth.session_id, session_id);
            if let Some(session) = self.sessions.get_mut(&old) {
                session.active = false;
            }
        }
        let lifespan = self.realm.access_lifespan;
        let access_token = self.mint_bearer(subject, lifespan, now);
        RealmTokens::new(
            access_token,
            lifespan,
            refresh_token,
            self.realm.refresh_lifespan,
        )
    }
}
