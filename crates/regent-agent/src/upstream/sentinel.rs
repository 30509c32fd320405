//! The `sentinel` profile (DESIGN §3.1): a registration token is redeemed once
//! for an auth token; its refresh token then renews access tokens at the
//! server's OpenID Connect token endpoint.

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

// What an answer means, once it is read: sync, so that the fuzz target
// (`crate::fuzzing::upstream`) runs exactly the code the agent runs.

/// The outcome of a redemption answer: the auth token, or the refusal. Nothing
/// the server echoes of `registration_token` shows in an error.
pub(crate) fn redemption_outcome(
    reply: &Reply,
    identity: &DeviceIdentity,
    registration_token: &SecretString,
) -> Result<Redemption, Error> {
    let redact = Redact::new(&[registration_token]);
    if !reply.status.is_success() {
        return Err(redact.error(redemption_refused(reply, registration_token)));
    }
    parse_redemption_redacted(reply, identity, &redact).map_err(|e| redact.error(e))
}

/// The outcome of a refresh answer: the grant, or the refusal (`REVOKED`…).
pub(crate) fn refresh_outcome(
    reply: &Reply,
    idp: &IdpConfig,
    refresh_token: &SecretString,
) -> Result<Grant, Error> {
    let redact = Redact::new(&[refresh_token]);
    if !reply.status.is_success() {
        return Err(redact.error(refresh_refused(reply, idp, refresh_token)));
    }
    json_object_redacted(reply, REFRESH, &redact)
        .and_then(|mut obj| parse_grant(&mut obj, reply.received_at, &reply.server))
        .map_err(|e| redact.error(e))
}

/// The outcome of an `idpConfigurations` answer: where refresh tokens are
/// redeemed and as whom.
pub(crate) fn discovery_outcome(reply: &Reply) -> Result<IdpConfig, Error> {
    if !reply.status.is_success() {
        let says = ServerSays::from_reply(reply, &[]);
        return Err(unexpected_status(reply, &says, DISCOVERY));
    }
    let obj = json_object(reply, DISCOVERY)?;
    let server = &reply.server;
    let text = |key: &str, max: usize| -> Result<String, Error> {
        match obj.get(key) {
            // Sent with every refresh and shown in messages: short, and no
            // control or bidi characters.
            Some(Value::String(s))
                if !s.trim().is_empty()
                    && s.len() <= max
                    && !s.chars().any(|c| c.is_control() || is_format_char(c)) =>
            {
                Ok(s.trim().to_owned())
            }
            Some(Value::String(_)) => Err(Error::new(
                ErrorCode::ServerError,
                format!(
                    "the license server at {server} answered {DISCOVERY} with an unusable {key} (empty, longer than {max} bytes, or with control characters); is the URL pointing at a Sentinel-style server?"
                ),
            )),
            other => Err(Error::new(
                ErrorCode::ServerError,
                format!(
                    "the license server at {server} answered {DISCOVERY} without a usable {key} (found {}); is the URL pointing at a Sentinel-style server?",
                    other.map_or("nothing", kind)
                ),
            )),
        }
    };
    let realm = text("realm", MAX_IDP_NAME)?;
    let client_id = text("clientId", MAX_IDP_NAME)?;
    let endpoint = text("tokenEndpoint", MAX_IDP_URL)?;
    let mut endpoint = Url::parse(&endpoint).map_err(|e| {
        Error::new(
            ErrorCode::ServerError,
            format!(
                "the license server at {server} named a tokenEndpoint that is not a URL ({e}): {}",
                sanitize(&endpoint, 200)
            ),
        )
    })?;
    check_url(&endpoint).map_err(|e| {
        Error::new(
            e.code,
            format!(
                "the license server at {server} names a token endpoint regent refuses: {}",
                e.message
            ),
        )
    })?;
    endpoint.set_query(None);
    endpoint.set_fragment(None);
    let token_url = join_path(
        &endpoint,
        &["realms", &realm, "protocol", "openid-connect", "token"],
    );
    tracing::debug!(server = %server, realm, token_server = %server_name(&token_url), "discovered the token endpoint");
    Ok(IdpConfig {
        realm,
        client_id,
        token_url,
    })
}

/// `Basic <registration token>`: Sentinel sends the raw value, not base64(user:pass).
fn registration_authorization(token: &SecretString) -> Result<HeaderValue, Error> {
    let value = token.expose_secret().trim();
    if value.is_empty() {
        return Err(Error::new(
            ErrorCode::RegistrationTokenInvalid,
            "the registration token is empty; paste the token your administrator issued",
        ));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::new(
            ErrorCode::RegistrationTokenInvalid,
            "the registration token contains spaces, control or non-ASCII characters, so it cannot be what the administrator issued; copy it again",
        ));
    }
    let header = Zeroizing::new(format!("Basic {value}"));
    let mut header = HeaderValue::from_str(&header).map_err(|_| {
        Error::new(
            ErrorCode::RegistrationTokenInvalid,
            "the registration token cannot be sent in an HTTP header; copy it again",
        )
    })?;
    header.set_sensitive(true);
    Ok(header)
}

fn redemption_refused(reply: &Reply, token: &SecretString) -> Error {
    let says = ServerSays::from_reply(reply, &[token]);
    let server = &reply.server;
    let (code, message) = if says.is("registration_token_expired") {
        (
            ErrorCode::RegistrationTokenExpired,
            format!(
                "registration token refused: it has expired (server: {says}); ask your administrator for a new one"
            ),
        )
    } else if says.is("registration_token_exhausted") {
        (
            ErrorCode::RegistrationTokenExhausted,
            format!(
                "registration token refused: it has no counts left (server: {says}); ask your administrator to raise its count or issue a new one"
            ),
        )
    } else if says.is("registration_token_disabled") {
        (
            ErrorCode::RegistrationTokenDisabled,
            format!(
                "registration token refused: it is disabled (server: {says}); ask your administrator to enable it or issue a new one"
            ),
        )
    } else if says.is("invalid_registration_token")
        || reply.status == reqwest::StatusCode::UNAUTHORIZED
    {
        (
            ErrorCode::RegistrationTokenInvalid,
            format!(
                "registration token refused: the license server at {server} does not recognise it (server: {says}); check that it was copied whole, or ask your administrator for a new one"
            ),
        )
    } else {
        return unexpected_status(reply, &says, REDEMPTION);
    };
    tracing::debug!(server = %server, status = reply.status.as_u16(), code = %code, "registration token refused");
    with_retry_after(Error::new(code, message), reply)
}

fn refresh_refused(reply: &Reply, idp: &IdpConfig, refresh_token: &SecretString) -> Error {
    let says = ServerSays::from_reply(reply, &[refresh_token]);
    let server = &reply.server;
    if says.is("invalid_grant") {
        return with_retry_after(
            Error::new(
                ErrorCode::Revoked,
                format!(
                    "the license server ended this device's session ({says}); enroll again with a registration token"
                ),
            ),
            reply,
        );
    }
    if says.is("invalid_client") || says.is("unauthorized_client") {
        return Error::new(
            ErrorCode::Config,
            format!(
                "the token endpoint at {server} refuses client id {:?}, which the server's own idpConfigurations named ({says}); check the license server URL or ask the vendor",
                idp.client_id
            ),
        );
    }
    unexpected_status(reply, &says, REFRESH)
}

#[cfg(test)]
fn parse_redemption(reply: &Reply, identity: &DeviceIdentity) -> Result<Redemption, Error> {
    parse_redemption_redacted(reply, identity, &Redact::default())
}

/// [`parse_redemption`], showing nothing of the answer without `redact` (the
/// registration token must not come back through an echoed field).
fn parse_redemption_redacted(
    reply: &Reply,
    identity: &DeviceIdentity,
    redact: &Redact,
) -> Result<Redemption, Error> {
    let server = &reply.server;
    let bad = |problem: String| {
        Error::new(
            ErrorCode::ServerError,
            format!("the license server at {server} answered {REDEMPTION} {problem}"),
        )
    };
    let mut obj = json_object_redacted(reply, REDEMPTION, redact)?;
    let mut auth = match obj.remove("authToken") {
        Some(Value::Object(auth)) => auth,
        Some(other) => {
            return Err(bad(format!(
                "with authToken {} instead of an object",
                kind(&other)
            )));
        }
        None => return Err(bad("without an authToken".to_owned())),
    };
    let auth_token_id = match auth.get("id") {
        Some(Value::String(s))
            if !s.trim().is_empty()
                && s.len() <= MAX_AUTH_TOKEN_ID
                // Shown in status output and terminals: no control or bidi
                // characters (found by fuzzing: U+202E passed `is_control`).
                && !s.chars().any(|c| c.is_control() || is_format_char(c)) =>
        {
            s.trim().to_owned()
        }
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(_)) => {
            return Err(bad(
                "with an unusable authToken.id (empty, too long or with control characters)"
                    .to_owned(),
            ));
        }
        Some(other) => {
            return Err(bad(format!(
                "with authToken.id {} instead of a string",
                kind(other)
            )));
        }
        None => return Err(bad("without authToken.id".to_owned())),
    };
    match auth.get("identifier").and_then(Value::as_str) {
        Some(echoed) if echoed != identity.identifier => tracing::warn!(
            server = %server,
            sent = %crate::secret::short_hash(&identity.identifier),
            echoed = %crate::secret::short_hash(echoed),
            "the license server echoed another identifier for this redemption"
        ),
        _ => {}
    }
    let mut token = match auth.remove("token") {
        Some(Value::Object(token)) => token,
        Some(other) => {
            return Err(bad(format!(
                "with authToken.token {} instead of an object",
                kind(&other)
            )));
        }
        None => return Err(bad("without authToken.token".to_owned())),
    };
    let grant = parse_grant(&mut token, reply.received_at, server)?;
    if grant.refresh_token.is_none() {
        return Err(bad(
            "without a refresh_token, so the device could not renew its access token".to_owned(),
        ));
    }
    tracing::debug!(server = %server, identifier = %crate::secret::short_hash(&identity.identifier), status = reply.status.as_u16(), "registration token redeemed");
    Ok(Redemption {
        auth_token_id,
        grant,
    })
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use reqwest::header::RETRY_AFTER;

    use super::*;
    use crate::secret::secret;
    use crate::upstream::reply::tests::json_reply;

    fn identity() -> DeviceIdentity {
        DeviceIdentity {
            identifier: "dev-1/0".into(),
            fqdn: "host.example".into(),
            mac_address: "aa:bb:cc:dd:ee:ff".into(),
            system_user_name: "alice".into(),
            ref_id1: Some("r1".into()),
            ref_id2: None,
        }
    }

    fn idp() -> IdpConfig {
        IdpConfig {
            realm: "regent".into(),
            client_id: "regent-agent".into(),
            token_url: Url::parse("http://127.0.0.1/realms/regent/protocol/openid-connect/token")
                .unwrap(),
        }
    }

    #[test]
    fn wire_identity_uses_sentinel_field_names() {
        let id = identity();
        let body = serde_json::to_value(RedemptionRequest {
            auth_token: WireIdentity::from(&id),
        })
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"authToken": {
                "identifier": "dev-1/0", "fqdn": "host.example", "macAddress": "aa:bb:cc:dd:ee:ff",
                "systemUserName": "alice", "refId1": "r1"
            }})
        );
    }

    #[test]
    fn registration_token_goes_raw_and_sensitive() {
        let h = registration_authorization(&secret(" abc.DEF-123 \n".into())).unwrap();
        assert_eq!(h.to_str().unwrap(), "Basic abc.DEF-123");
        assert!(h.is_sensitive());
        for bad in ["", "  ", "two words", "line\nbreak", "nön-ascii"] {
            let e = registration_authorization(&secret(bad.into())).unwrap_err();
            assert_eq!(e.code, ErrorCode::RegistrationTokenInvalid, "{bad:?}");
            assert!(bad.trim().is_empty() || !e.message.contains(bad.trim()));
        }
    }

    #[test]
    fn redemption_refusals_map_to_their_codes() {
        let token = secret("reg-token-value".into());
        for (status, error, code, needle) in [
            (
                401,
                "invalid_registration_token",
                ErrorCode::RegistrationTokenInvalid,
                "does not recognise it",
            ),
            (
                403,
                "registration_token_expired",
                ErrorCode::RegistrationTokenExpired,
                "it has expired",
            ),
            (
                403,
                "registration_token_exhausted",
                ErrorCode::RegistrationTokenExhausted,
                "no counts left",
            ),
            (
                403,
                "registration_token_disabled",
                ErrorCode::RegistrationTokenDisabled,
                "it is disabled",
            ),
            (
                401,
                "",
                ErrorCode::RegistrationTokenInvalid,
                "does not recognise it",
            ),
            (429, "too_many", ErrorCode::RateLimited, "rate-limiting"),
            (500, "server_error", ErrorCode::ServerError, "temporary"),
            (403, "forbidden", ErrorCode::ServerError, "refused"),
        ] {
            let body = if error.is_empty() {
                String::new()
            } else {
                format!(r#"{{"error":"{error}","error_description":"desc for reg-token-value"}}"#)
            };
            let e = redemption_refused(&json_reply(status, &body), &token);
            assert_eq!(e.code, code, "{status} {error}");
            assert!(e.message.contains(needle), "{}", e.message);
            assert!(!e.message.contains("reg-token-value"), "{}", e.message);
            if !error.is_empty() {
                assert!(e.message.contains("desc for [redacted]"), "{}", e.message);
            }
        }
        let e = redemption_refused(
            &json_reply(
                403,
                r#"{"error":"registration_token_exhausted","error_description":"count 5 used 5"}"#,
            ),
            &token,
        );
        assert_eq!(
            e.message,
            "registration token refused: it has no counts left (server: registration_token_exhausted: count 5 used 5); ask your administrator to raise its count or issue a new one"
        );
        assert!(!e.is_retryable());
    }

    #[test]
    fn refresh_refusals_map_to_their_codes() {
        let rt = secret("refresh-secret".into());
        let e = refresh_refused(
            &json_reply(
                400,
                r#"{"error":"invalid_grant","error_description":"Session not active"}"#,
            ),
            &idp(),
            &rt,
        );
        assert_eq!(e.code, ErrorCode::Revoked);
        assert!(
            e.message
                .contains("ended this device's session (invalid_grant: Session not active)")
        );
        let e = refresh_refused(
            &json_reply(401, r#"{"error":"invalid_client"}"#),
            &idp(),
            &rt,
        );
        assert_eq!(e.code, ErrorCode::Config);
        assert!(e.message.contains("\"regent-agent\""));
        let mut r = json_reply(503, "{}");
        r.headers
            .insert(RETRY_AFTER, HeaderValue::from_static("12"));
        let e = refresh_refused(&r, &idp(), &rt);
        assert_eq!(e.code, ErrorCode::ServerError);
        assert_eq!(e.retry_after, Some(Duration::from_secs(12)));
    }

    #[test]
    fn parses_redemptions_and_refuses_broken_ones() {
        let good = r#"{"authToken":{"id":"at-1","identifier":"dev-1/0","token":{
            "access_token":"A","refresh_token":"R","expires_in":300,"refresh_expires_in":0,"token_type":"Bearer"}}}"#;
        let r = parse_redemption(&json_reply(201, good), &identity()).unwrap();
        assert_eq!(r.auth_token_id, "at-1");
        assert_eq!(r.grant.access_token.expose_secret(), "A");
        assert_eq!(r.grant.refresh_token.as_ref().unwrap().expose_secret(), "R");
        assert_eq!(r.grant.lifetime(), Duration::from_secs(300));

        let numeric = r#"{"authToken":{"id":77,"token":{"access_token":"A","refresh_token":"R","expires_in":"60"}}}"#;
        assert_eq!(
            parse_redemption(&json_reply(200, numeric), &identity())
                .unwrap()
                .auth_token_id,
            "77"
        );

        for (body, needle) in [
            (r#"{}"#, "without an authToken"),
            (r#"{"authToken":[]}"#, "authToken an array"),
            (r#"{"authToken":{"token":{}}}"#, "without authToken.id"),
            (
                r#"{"authToken":{"id":"","token":{}}}"#,
                "unusable authToken.id",
            ),
            (
                r#"{"authToken":{"id":true,"token":{}}}"#,
                "authToken.id a boolean",
            ),
            (r#"{"authToken":{"id":"x"}}"#, "without authToken.token"),
            (
                r#"{"authToken":{"id":"x","token":"A"}}"#,
                "authToken.token a string",
            ),
            (
                r#"{"authToken":{"id":"x","token":{"access_token":"A","expires_in":60}}}"#,
                "without a refresh_token",
            ),
            (
                r#"{"authToken":{"id":"x","token":{"refresh_token":"R","expires_in":60}}}"#,
                "without an access_token",
            ),
            (
                r#"{"authToken":{"id":"x","token":{"access_token":"A","refresh_token":"R","expires_in":-1}}}"#,
                "expires_in",
            ),
            ("not json", "not valid JSON"),
        ] {
            let e = parse_redemption(&json_reply(201, body), &identity()).unwrap_err();
            assert_eq!(e.code, ErrorCode::ServerError, "{body}");
            assert!(e.message.contains(needle), "{body}: {}", e.message);
        }
    }

    /// Regression (fuzzing, upstream_reply): an auth-token id with a bidi
    /// override (U+202E) passed the control-character check and reached
    /// status output and terminals, where it can reorder text.
    #[test]
    fn auth_token_ids_with_bidi_controls_are_refused() {
        for id in ["at\u{202e}1", "at\u{200b}1", "at\u{2066}1", "at\u{feff}"] {
            let body = serde_json::json!({"authToken": {"id": id, "token": {
                "access_token": "A", "refresh_token": "R", "expires_in": 60}}})
            .to_string();
            let e = parse_redemption(&json_reply(201, &body), &identity()).unwrap_err();
            assert_eq!(e.code, ErrorCode::ServerError, "{id:?}");
            assert!(e.message.contains("unusable authToken.id"), "{}", e.message);
        }
    }
}
