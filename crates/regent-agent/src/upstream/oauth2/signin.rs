//! Users who sign in with the provider (`regent login`): the endpoints
//! discovery names, the authorization code exchange (PKCE, RFC 7636), the
//! device authorization grant (RFC 8628), the signed-in user's refresh,
//! revocation (RFC 7009), and who signed in (ID token claims or userinfo).
//!
//! The ID token is read, not verified: it comes straight from the token
//! endpoint over TLS (or loopback), which OpenID Connect Core §3.1.3.7
//! accepts in place of its signature, and regent uses it only to show who
//! signed in; the access token is what apps present.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use regent_proto::ErrorCode;
use regent_proto::status::SignedInUser;
use reqwest::header::ACCEPT;
use serde_json::{Map, Value};
use url::Url;

use super::{GrantType, OAuth2};
use crate::error::Error;
use crate::grant::Grant;
use crate::secret::{ExposeSecret, SecretString, secret};
use crate::upstream::network::check_url;
use crate::upstream::profile::{
    BoxFuture, BrowserSignIn, DeviceSignIn, Held, SignIn, SignInGrant, SignInOutcome,
    UpstreamProfile, UserSignIn,
};
use crate::upstream::reply::{
    Redact, ServerSays, json_object_redacted, unexpected_status, with_retry_after,
};
use crate::upstream::text::{sanitize, server_name};

/// Longest claim (name, e-mail, subject) kept from an ID token or userinfo.
const MAX_CLAIM: usize = 256;
/// Longest device-flow value (user code, URIs) shown to the person.
const MAX_SHOWN: usize = 2048;
/// Polling interval bounds: RFC 8628's default when absent, and a ceiling
/// so that a hostile value cannot park the CLI for hours.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
const MAX_INTERVAL: Duration = Duration::from_secs(60);
/// Device-code lifetime ceiling.
const MAX_DEVICE_LIFETIME: Duration = Duration::from_secs(3600);

/// The endpoints an issuer's OpenID configuration names. Only the token
/// endpoint is required; the others enable the sign-in features.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    pub token: Url,
    pub authorization: Option<Url>,
    pub device_authorization: Option<Url>,
    pub revocation: Option<Url>,
    pub userinfo: Option<Url>,
}

impl Discovery {
    /// A configured token endpoint and nothing else.
    pub(crate) fn token_only(token: Url) -> Discovery {
        Discovery {
            token,
            authorization: None,
            device_authorization: None,
            revocation: None,
            userinfo: None,
        }
    }

    /// The optional endpoints of a discovery document: one that is not a
    /// URL regent accepts (a plain-HTTP remote host, say) is left out with a
    /// warning, so the feature it enables says it is missing.
    pub(crate) fn read(token: Url, doc: &Map<String, Value>, server: &str) -> Discovery {
        let endpoint = |key: &str| -> Option<Url> {
            let text = doc.get(key)?.as_str()?.trim();
            let url = Url::parse(text).ok().filter(|_| text.len() <= 2048);
            match url.map(|u| check_url(&u).map(|()| u)) {
                Some(Ok(url)) => Some(url),
                _ => {
                    tracing::warn!(
                        issuer = server,
                        key,
                        "ignoring an unusable endpoint in the OpenID configuration"
                    );
                    None
                }
            }
        };
        Discovery {
            authorization: endpoint("authorization_endpoint"),
            device_authorization: endpoint("device_authorization_endpoint"),
            revocation: endpoint("revocation_endpoint"),
            userinfo: endpoint("userinfo_endpoint"),
            token,
        }
    }
}

/// A printable claim, cut to [`MAX_CLAIM`].
fn claim(obj: &Map<String, Value>, key: &str) -> Option<String> {
    let text = obj.get(key)?.as_str()?;
    let clean = sanitize(text, MAX_CLAIM);
    (!clean.is_empty()).then_some(clean)
}

/// Who signed in, from claims (ID token payload or userinfo answer).
fn user_from_claims(claims: &Map<String, Value>) -> Option<SignedInUser> {
    Some(SignedInUser {
        sub: claim(claims, "sub")?,
        preferred_username: claim(claims, "preferred_username"),
        email: claim(claims, "email"),
    })
}

/// The claims of an ID token (`header.payload.signature`), unverified (see
/// the module documentation); `None` for anything that is not one.
fn id_token_claims(id_token: &str) -> Option<Map<String, Value>> {
    let payload = id_token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(obj) => Some(obj),
        _ => None,
    }
}

/// A number of seconds from a device authorization answer, within bounds.
fn seconds(obj: &Map<String, Value>, key: &str, default: Duration, max: Duration) -> Duration {
    obj.get(key)
        .and_then(Value::as_u64)
        .map_or(default, Duration::from_secs)
        .clamp(Duration::from_secs(1), max)
}

impl OAuth2 {
    fn sign_in_unavailable(&self, what: &str, key: &str) -> Error {
        Error::new(
            ErrorCode::Config,
            format!(
                "the license server at {} offers no {what} (its OpenID configuration has no {key}); \
                 {}",
                UpstreamProfile::server(self),
                match key {
                    "authorization_endpoint" =>
                        "try `regent login --device`, or ask the administrator",
                    _ => "sign in with the browser (`regent login`), or ask the administrator",
                }
            ),
        )
    }

    /// The signed-in user's refresh: the refresh token alone (and the client
    /// secret of a confidential client); a refusal is `REVOKED`, "sign in
    /// again", never a fall-back to client credentials.
    pub(crate) async fn refresh_user(&self, held: &mut Held) -> Result<Grant, Error> {
        let Some(refresh_token) = held.refresh_token.clone() else {
            return Err(Error::new(
                ErrorCode::Revoked,
                "the signed-in user's refresh token is gone; sign in again with `regent login`",
            ));
        };
        let client_secret = held.client_secret.clone();
        let form = [
            ("grant_type", GrantType::UserRefresh.as_str()),
            ("refresh_token", refresh_token.expose_secret()),
        ];
        let mut sent = vec![&refresh_token];
        sent.extend(client_secret.as_ref());
        let result = self
            .token_request(GrantType::UserRefresh, client_secret.as_ref(), &form, &sent)
            .await;
        if result.as_ref().is_err_and(|e| e.code == ErrorCode::Revoked) {
            held.refresh_token = None;
        }
        result
    }

    /// A token answer for a user grant: the grant and who signed in.
    async fn user_tokens(
        &self,
        grant_type: GrantType,
        client_secret: Option<&SecretString>,
        form: &[(&str, &str)],
        sent: &[&SecretString],
    ) -> Result<SignInOutcome, Error> {
        let reply = self
            .token_reply(grant_type, client_secret, form, sent)
            .await?;
        if grant_type == GrantType::DeviceCode && !reply.status.is_success() {
            let says = ServerSays::from_reply(&reply, sent);
            if says.is("authorization_pending") {
                return Ok(SignInOutcome::Pending { slow_down: false });
            }
            if says.is("slow_down") {
                return Ok(SignInOutcome::Pending { slow_down: true });
            }
        }
        let result = self.token_outcome(&reply, grant_type, client_secret, sent);
        self.forget_discovery_after(&result).await;
        let grant = result?;
        let claims = serde_json::from_slice::<Value>(&reply.body)
            .ok()
            .and_then(|v| v.get("id_token")?.as_str().and_then(id_token_claims));
        let user = match claims.as_ref().and_then(user_from_claims) {
            Some(user) => Some(user),
            None => self.userinfo(&grant).await,
        };
        Ok(SignInOutcome::SignedIn(SignIn { grant, user }))
    }

    /// Who the access token belongs to, from the userinfo endpoint when the
    /// server has one; `None` (with a warning) when it cannot say.
    async fn userinfo(&self, grant: &Grant) -> Option<SignedInUser> {
        let url = self.discovery().await.ok()?.userinfo?;
        let request = self
            .http
            .get(&url)
            .bearer_auth(grant.access_token.expose_secret())
            .header(ACCEPT, "application/json");
        let sent = [&grant.access_token];
        let user = match self.http.send(request, &url).await {
            Ok(reply) if reply.status.is_success() => {
                json_object_redacted(&reply, "the userinfo request", &Redact::new(&sent))
                    .ok()
                    .and_then(|obj| user_from_claims(&obj))
            }
            _ => None,
        };
        if user.is_none() {
            tracing::warn!(server = %server_name(&url), "the userinfo endpoint did not say who signed in; status will not name the user");
        }
        user
    }
}

impl UserSignIn for OAuth2 {
    fn browser(&self) -> BoxFuture<'_, Result<BrowserSignIn, Error>> {
        Box::pin(async move {
            let discovery = self.discovery().await?;
            let authorization_endpoint = discovery.authorization.ok_or_else(|| {
                self.sign_in_unavailable("browser sign-in", "authorization_endpoint")
            })?;
            Ok(BrowserSignIn {
                authorization_endpoint,
                client_id: self.client_id.clone(),
                scope: self.scope.clone(),
            })
        })
    }

    fn device<'a>(
        &'a self,
        client_secret: Option<&'a SecretString>,
    ) -> BoxFuture<'a, Result<DeviceSignIn, Error>> {
        Box::pin(async move {
            let discovery = self.discovery().await?;
            let url = discovery.device_authorization.ok_or_else(|| {
                self.sign_in_unavailable("device sign-in", "device_authorization_endpoint")
            })?;
            let mut form = Vec::new();
            if let Some(scope) = &self.scope {
                form.push(("scope", scope.as_str()));
            }
            let sent: Vec<&SecretString> = client_secret.into_iter().collect();
            let what = "the device authorization request";
            let reply = self
                .post_form(&url, client_secret, &form, &sent, what)
                .await?;
            let credentials = self.basic_credentials(client_secret);
            let mut all_sent = sent.clone();
            all_sent.extend(credentials.as_ref());
            if !reply.status.is_success() {
                let says = ServerSays::from_reply(&reply, &all_sent);
                if says.is("invalid_client") || says.is("unauthorized_client") {
                    return Err(Error::new(
                        ErrorCode::ClientCredentialsInvalid,
                        format!(
                            "the license server at {} refused client {:?} the device sign-in ({says}); check [server] client_id, and give the client secret if the client is confidential",
                            reply.server, self.client_id
                        ),
                    ));
                }
                return Err(with_retry_after(
                    unexpected_status(&reply, &says, what),
                    &reply,
                ));
            }
            let redact = Redact::new(&all_sent);
            let mut obj = json_object_redacted(&reply, what, &redact)?;
            let text = |obj: &Map<String, Value>, key: &str| -> Option<String> {
                obj.get(key)
                    .and_then(Value::as_str)
                    .map(|s| sanitize(s, MAX_SHOWN))
                    .filter(|s| !s.is_empty())
            };
            let missing = |key: &str| {
                Error::new(
                    ErrorCode::ServerError,
                    format!(
                        "the license server at {} answered {what} without a usable {key}",
                        reply.server
                    ),
                )
            };
            let device_code = match obj.remove("device_code") {
                Some(Value::String(code)) if !code.is_empty() && code.len() <= MAX_SHOWN => {
                    secret(code)
                }
                _ => return Err(missing("device_code")),
            };
            let user_code = text(&obj, "user_code").ok_or_else(|| missing("user_code"))?;
            let verification_uri = text(&obj, "verification_uri")
                .or_else(|| text(&obj, "verification_url"))
                .ok_or_else(|| missing("verification_uri"))?;
            Ok(DeviceSignIn {
                device_code,
                user_code,
                verification_uri,
                verification_uri_complete: text(&obj, "verification_uri_complete"),
                expires_in: seconds(
                    &obj,
                    "expires_in",
                    Duration::from_secs(600),
                    MAX_DEVICE_LIFETIME,
                ),
                interval: seconds(&obj, "interval", DEFAULT_INTERVAL, MAX_INTERVAL),
            })
        })
    }

    fn exchange<'a>(
        &'a self,
        grant: &'a SignInGrant,
        client_secret: Option<&'a SecretString>,
    ) -> BoxFuture<'a, Result<SignInOutcome, Error>> {
        Box::pin(async move {
            let mut sent: Vec<&SecretString> = client_secret.into_iter().collect();
            match grant {
                SignInGrant::AuthorizationCode {
                    code,
                    code_verifier,
                    redirect_uri,
                } => {
                    sent.extend([code, code_verifier]);
                    let form = [
                        ("grant_type", GrantType::AuthorizationCode.as_str()),
                        ("code", code.expose_secret()),
                        ("redirect_uri", redirect_uri.as_str()),
                        ("code_verifier", code_verifier.expose_secret()),
                    ];
                    self.user_tokens(GrantType::AuthorizationCode, client_secret, &form, &sent)
                        .await
                }
                SignInGrant::DeviceCode { device_code } => {
                    sent.push(device_code);
                    let form = [
                        ("grant_type", GrantType::DeviceCode.as_str()),
                        ("device_code", device_code.expose_secret()),
                    ];
                    self.user_tokens(GrantType::DeviceCode, client_secret, &form, &sent)
                        .await
                }
                SignInGrant::RefreshToken { refresh_token } => {
                    sent.push(refresh_token);
                    let form = [
                        ("grant_type", GrantType::UserRefresh.as_str()),
                        ("refresh_token", refresh_token.expose_secret()),
                    ];
                    self.user_tokens(GrantType::UserRefresh, client_secret, &form, &sent)
                        .await
                }
            }
        })
    }

    fn revoke<'a>(
        &'a self,
        refresh_token: &'a SecretString,
        client_secret: Option<&'a SecretString>,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let Some(url) = self.discovery().await?.revocation else {
                return Ok(false);
            };
            let form = [
                ("token", refresh_token.expose_secret()),
                ("token_type_hint", "refresh_token"),
            ];
            let mut sent = vec![refresh_token];
            sent.extend(client_secret);
            let what = "the revocation request";
            let reply = self
                .post_form(&url, client_secret, &form, &sent, what)
                .await?;
            if reply.status.is_success() {
                return Ok(true);
            }
            let credentials = self.basic_credentials(client_secret);
            sent.extend(credentials.as_ref());
            let says = ServerSays::from_reply(&reply, &sent);
            Err(with_retry_after(
                unexpected_status(&reply, &says, what),
                &reply,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_token_claims_name_the_user() {
        let payload = URL_SAFE_NO_PAD.encode(
            br#"{"sub":"u-1","preferred_username":"alice\u001b[2J","email":"a@example.com"}"#,
        );
        let claims = id_token_claims(&format!("e30.{payload}.sig")).unwrap();
        let user = user_from_claims(&claims).unwrap();
        assert_eq!(user.sub, "u-1");
        assert!(
            !user.preferred_username.unwrap().contains('\u{1b}'),
            "control characters never reach a terminal"
        );
        assert_eq!(user.email.as_deref(), Some("a@example.com"));
        for bad in ["", "x", "a.!!!.c", "a.bnVsbA.c"] {
            assert!(
                id_token_claims(bad)
                    .and_then(|c| user_from_claims(&c))
                    .is_none(),
                "{bad}"
            );
        }
    }

    #[test]
    fn device_intervals_are_bounded() {
        let obj: Map<String, Value> =
            serde_json::from_str(r#"{"interval":0,"expires_in":99999999}"#).unwrap();
        assert_eq!(
            seconds(&obj, "interval", DEFAULT_INTERVAL, MAX_INTERVAL),
            Duration::from_secs(1)
        );
        assert_eq!(
            seconds(
                &obj,
                "expires_in",
                Duration::from_secs(600),
                MAX_DEVICE_LIFETIME
            ),
            MAX_DEVICE_LIFETIME
        );
        let empty = Map::new();
        assert_eq!(
            seconds(&empty, "interval", DEFAULT_INTERVAL, MAX_INTERVAL),
            DEFAULT_INTERVAL
        );
    }
}
