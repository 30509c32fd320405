//! The `sentinel` profile (DESIGN §3.1): a registration token is redeemed once
//! for an auth token; its refresh token then renews access tokens at the
//! server's OpenID Connect token endpoint.

mod outcome;

use std::sync::Arc;

use regent_proto::ErrorCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Mutex;
use url::Url;
use zeroize::Zeroizing;

use super::http::{Http, Reply};
use super::identity::DeviceIdentity;
use super::network::check_url;
use super::profile::{BoxFuture, EnrollKind, Enrollment, Held, UpstreamProfile};
use super::reply::{
    Redact, ServerSays, json_object, json_object_redacted, kind, unexpected_status,
    with_retry_after,
};
use super::text::{is_format_char, sanitize, server_name};
use super::token::parse_grant;
use super::{Redemption, join_path};
use crate::error::Error;
use crate::grant::Grant;
use crate::secret::{ExposeSecret, SecretString};

use self::outcome::registration_authorization;
pub(crate) use self::outcome::{discovery_outcome, redemption_outcome, refresh_outcome};

const REDEMPTION: &str = "the registration token redemption";
const REFRESH: &str = "the token refresh";
const DISCOVERY: &str = "the idpConfigurations request";

/// Longest auth-token id accepted from the server.
const MAX_AUTH_TOKEN_ID: usize = 256;
/// Longest `realm` and `clientId` accepted from `idpConfigurations` (both go
/// into every refresh and into messages).
const MAX_IDP_NAME: usize = 256;
/// Longest `tokenEndpoint` accepted.
const MAX_IDP_URL: usize = 2048;

/// A Sentinel-style license server.
#[derive(Debug)]
pub struct Sentinel {
    http: Http,
    base_url: Url,
    /// The idpConfigurations answer; emptied after a failure so the next call
    /// discovers again (the token endpoint may have moved).
    idp: Mutex<Option<Arc<IdpConfig>>>,
}

/// Where and as whom refresh tokens are redeemed, from `idpConfigurations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdpConfig {
    /// The OpenID Connect realm.
    pub realm: String,
    /// The public client id sent with each refresh.
    pub client_id: String,
    /// `{tokenEndpoint}realms/{realm}/protocol/openid-connect/token`.
    pub token_url: Url,
}

impl Sentinel {
    /// A profile for the server at `base_url` (the part before `/token/api/v5/…`).
    ///
    /// # Errors
    /// `CONFIG` when the URL is refused by [`check_url`].
    pub fn new(http: Http, base_url: Url) -> Result<Sentinel, Error> {
        check_url(&base_url)?;
        Ok(Sentinel {
            http,
            base_url,
            idp: Mutex::new(None),
        })
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &Url {
        &self.base_url
    }

    /// Redeems `registration_token` for an auth token, sending `identity`. A
    /// replay with the same `identity.identifier` returns the same auth token
    /// without consuming another count.
    ///
    /// # Errors
    /// `REGISTRATION_TOKEN_INVALID` / `_EXPIRED` / `_EXHAUSTED` / `_DISABLED` when
    /// the server refuses the token; `RATE_LIMITED`, `SERVER_ERROR`, `UNAVAILABLE`,
    /// `TIMEOUT` for failures worth retrying with the same identifier.
    pub async fn redeem(
        &self,
        registration_token: &SecretString,
        identity: &DeviceIdentity,
    ) -> Result<Redemption, Error> {
        let url = join_path(&self.base_url, &["token", "api", "v5", "authTokens"]);
        let authorization = registration_authorization(registration_token)?;
        let body = RedemptionRequest {
            auth_token: WireIdentity::from(identity),
        };
        tracing::debug!(server = %server_name(&url), identifier = %crate::secret::short_hash(&identity.identifier), "redeeming a registration token");
        let request = self
            .http
            .post(&url)
            .header(AUTHORIZATION, authorization)
            .header(ACCEPT, "application/json")
            .json(&body);
        let reply = self.http.send(request, &url).await?;
        redemption_outcome(&reply, identity, registration_token)
    }

    /// Renews the access token with `refresh_token`. The answer may carry a
    /// rotated refresh token, which replaces the old one.
    ///
    /// # Errors
    /// `REVOKED` when the auth token was deleted or its session ended; `CONFIG`
    /// when the server refuses its own client id; `RATE_LIMITED`, `SERVER_ERROR`,
    /// `UNAVAILABLE`, `TIMEOUT` for failures worth retrying.
    pub async fn refresh(&self, refresh_token: &SecretString) -> Result<Grant, Error> {
        let idp = self.idp_config().await?;
        let result = self.refresh_at(&idp, refresh_token).await;
        if let Err(e) = &result
            && matches!(
                e.code,
                ErrorCode::Unavailable | ErrorCode::ServerError | ErrorCode::Timeout
            )
        {
            *self.idp.lock().await = None;
        }
        result
    }

    /// The `idpConfigurations` answer, fetched once and cached until a failure.
    ///
    /// # Errors
    /// As for [`refresh`](Self::refresh); `CONFIG` when the server names a token
    /// endpoint over plain HTTP.
    pub async fn idp_config(&self) -> Result<Arc<IdpConfig>, Error> {
        let mut cached = self.idp.lock().await;
        if let Some(idp) = cached.as_ref() {
            return Ok(Arc::clone(idp));
        }
        let idp = Arc::new(self.discover().await?);
        *cached = Some(Arc::clone(&idp));
        Ok(idp)
    }

    async fn discover(&self) -> Result<IdpConfig, Error> {
        let url = join_path(&self.base_url, &["token", "api", "v5", "idpConfigurations"]);
        let request = self.http.get(&url).header(ACCEPT, "application/json");
        let reply = self.http.send(request, &url).await?;
        discovery_outcome(&reply)
    }

    async fn refresh_at(
        &self,
        idp: &IdpConfig,
        refresh_token: &SecretString,
    ) -> Result<Grant, Error> {
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose_secret()),
            ("client_id", idp.client_id.as_str()),
        ];
        let request = self
            .http
            .post(&idp.token_url)
            .header(ACCEPT, "application/json")
            .form(&form);
        let reply = self.http.send(request, &idp.token_url).await?;
        refresh_outcome(&reply, idp, refresh_token)
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RedemptionRequest<'a> {
    auth_token: WireIdentity<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireIdentity<'a> {
    identifier: &'a str,
    fqdn: &'a str,
    mac_address: &'a str,
    system_user_name: &'a str,
    #[serde(rename = "refId1", skip_serializing_if = "Option::is_none")]
    ref_id1: Option<&'a str>,
    #[serde(rename = "refId2", skip_serializing_if = "Option::is_none")]
    ref_id2: Option<&'a str>,
}

impl<'a> From<&'a DeviceIdentity> for WireIdentity<'a> {
    fn from(id: &'a DeviceIdentity) -> Self {
        WireIdentity {
            identifier: &id.identifier,
            fqdn: &id.fqdn,
            mac_address: &id.mac_address,
            system_user_name: &id.system_user_name,
            ref_id1: id.ref_id1.as_deref(),
            ref_id2: id.ref_id2.as_deref(),
        }
    }
}

impl UpstreamProfile for Sentinel {
    fn profile(&self) -> &'static str {
        "sentinel"
    }

    fn server(&self) -> String {
        server_name(self.base_url())
    }

    fn enroll_kind(&self) -> EnrollKind {
        EnrollKind::Redemption
    }

    /// Redeems the registration token, sending the device's identity.
    fn enroll<'a>(
        &'a self,
        registration_token: &'a SecretString,
        identity: Option<&'a DeviceIdentity>,
    ) -> BoxFuture<'a, Result<Enrollment, Error>> {
        Box::pin(async move {
            let Some(identity) = identity else {
                return Err(Error::new(
                    ErrorCode::Internal,
                    "a Sentinel redemption needs the device's identity",
                ));
            };
            let redemption = self.redeem(registration_token, identity).await?;
            Ok(Enrollment {
                auth_token_id: Some(redemption.auth_token_id),
                grant: redemption.grant,
            })
        })
    }

    /// Refreshes with the held refresh token (which the answer may rotate).
    fn renew<'a>(&'a self, held: &'a mut Held) -> BoxFuture<'a, Result<Grant, Error>> {
        Box::pin(async move {
            let Some(refresh_token) = held.refresh_token.as_ref() else {
                return Err(Error::new(
                    ErrorCode::Revoked,
                    "the stored credential has no refresh token; enroll again",
                ));
            };
            self.refresh(refresh_token).await
        })
    }
}

#[cfg(test)]
mod tests;
