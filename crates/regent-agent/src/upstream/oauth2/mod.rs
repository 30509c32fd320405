//! The `oauth2` profile (DESIGN §3.2): client credentials (Reltio style), and
//! a refresh token when the server hands one out; and users who sign in
//! (`signin`: authorization code with PKCE, device authorization, refresh,
//! revocation).

mod signin;

pub use self::signin::Discovery;

use regent_proto::ErrorCode;
use reqwest::StatusCode;
use reqwest::header::ACCEPT;
use serde_json::Value;
use tokio::sync::Mutex;
use url::Url;

use super::http::{Http, Reply};
use super::identity::DeviceIdentity;
use super::join_path;
use super::network::check_url;
use super::profile::{BoxFuture, EnrollKind, Enrollment, Held, UpstreamProfile, UserSignIn};
use super::reply::{
    Redact, ServerSays, json_object, json_object_redacted, kind, unexpected_status,
    with_retry_after,
};
use super::text::{sanitize, server_name};
use super::token::parse_grant;
use crate::error::Error;
use crate::grant::Grant;
use crate::secret::{ExposeSecret, SecretString, secret};

const DISCOVERY: &str = "the OpenID configuration request";

/// Where tokens are requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OAuth2Endpoint {
    /// The token endpoint itself.
    TokenUrl(Url),
    /// An issuer: the token endpoint is read from
    /// `{issuer}/.well-known/openid-configuration` (and cached).
    Issuer(Url),
}

/// An OAuth2 token endpoint used with one client id.
#[derive(Debug)]
pub struct OAuth2 {
    http: Http,
    endpoint: OAuth2Endpoint,
    client_id: String,
    scope: Option<String>,
    /// The discovered endpoints (issuer mode); emptied after a failure.
    discovered: Mutex<Option<Discovery>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GrantType {
    ClientCredentials,
    RefreshToken,
    /// A signed-in user's refresh: a refusal means "sign in again", never
    /// a fall-back to client credentials.
    UserRefresh,
    AuthorizationCode,
    DeviceCode,
}

impl GrantType {
    fn as_str(self) -> &'static str {
        match self {
            GrantType::ClientCredentials => "client_credentials",
            GrantType::RefreshToken | GrantType::UserRefresh => "refresh_token",
            GrantType::AuthorizationCode => "authorization_code",
            GrantType::DeviceCode => "urn:ietf:params:oauth:grant-type:device_code",
        }
    }

    fn what(self) -> &'static str {
        match self {
            GrantType::ClientCredentials => "the client-credentials token request",
            GrantType::RefreshToken => "the token refresh",
            GrantType::UserRefresh => "the signed-in user's token refresh",
            GrantType::AuthorizationCode => "the sign-in code exchange",
            GrantType::DeviceCode => "the device sign-in poll",
        }
    }
}

impl OAuth2 {
    /// A profile for `client_id` at `endpoint`, asking for `scope` when given.
    ///
    /// # Errors
    /// `CONFIG` when the URL is refused by [`check_url`] or the
    /// client id is empty or cannot be sent (a `:` or control character).
    pub fn new(
        http: Http,
        endpoint: OAuth2Endpoint,
        client_id: String,
        scope: Option<String>,
    ) -> Result<OAuth2, Error> {
        match &endpoint {
            OAuth2Endpoint::TokenUrl(url) | OAuth2Endpoint::Issuer(url) => check_url(url)?,
        }
        let client_id = client_id.trim().to_owned();
        if client_id.is_empty() {
            return Err(Error::new(
                ErrorCode::Config,
                "the oauth2 client id is empty",
            ));
        }
        if client_id.contains(':') || client_id.chars().any(char::is_control) {
            return Err(Error::new(
                ErrorCode::Config,
                format!(
                    "the oauth2 client id {:?} contains ':' or a control character, which HTTP Basic authentication cannot carry",
                    sanitize(&client_id, 100)
                ),
            ));
        }
        let scope = scope
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|s| !s.is_empty());
        Ok(OAuth2 {
            http,
            endpoint,
            client_id,
            scope,
            discovered: Mutex::new(None),
        })
    }

    /// The configured endpoint.
    pub fn endpoint(&self) -> &OAuth2Endpoint {
        &self.endpoint
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Requests a new access token with the client secret
    /// (`grant_type=client_credentials`, HTTP Basic client authentication).
    ///
    /// # Errors
    /// `CLIENT_CREDENTIALS_INVALID` for a wrong id or secret; `TOKEN_LIMIT` when
    /// the client's cap of active tokens is reached; `CONFIG` when the client may
    /// not use this grant or scope; `RATE_LIMITED`, `SERVER_ERROR`, `UNAVAILABLE`,
    /// `TIMEOUT` for failures worth retrying.
    pub async fn client_credentials(&self, client_secret: &SecretString) -> Result<Grant, Error> {
        let mut form = vec![("grant_type", GrantType::ClientCredentials.as_str())];
        if let Some(scope) = &self.scope {
            form.push(("scope", scope));
        }
        self.token_request(
            GrantType::ClientCredentials,
            Some(client_secret),
            &form,
            &[client_secret],
        )
        .await
    }

    /// Renews with a refresh token (`grant_type=refresh_token`, HTTP Basic
    /// client authentication).
    ///
    /// # Errors
    /// `REVOKED` when the refresh token is no longer accepted (fall back to
    /// [`client_credentials`](Self::client_credentials)); otherwise as there.
    pub async fn refresh(
        &self,
        client_secret: &SecretString,
        refresh_token: &SecretString,
    ) -> Result<Grant, Error> {
        let form = [
            ("grant_type", GrantType::RefreshToken.as_str()),
            ("refresh_token", refresh_token.expose_secret()),
        ];
        self.token_request(
            GrantType::RefreshToken,
            Some(client_secret),
            &form,
            &[client_secret, refresh_token],
        )
        .await
    }

    async fn token_request(
        &self,
        grant_type: GrantType,
        client_secret: Option<&SecretString>,
        form: &[(&str, &str)],
        sent: &[&SecretString],
    ) -> Result<Grant, Error> {
        let reply = self
            .token_reply(grant_type, client_secret, form, sent)
            .await?;
        let result = self.token_outcome(&reply, grant_type, client_secret, sent);
        self.forget_discovery_after(&result).await;
        result
    }

    /// Sends a token request: HTTP Basic for a confidential client, or
    /// `client_id` in the form for a public one (RFC 6749 §2.3.1, §3.2.1).
    pub(crate) async fn token_reply(
        &self,
        grant_type: GrantType,
        client_secret: Option<&SecretString>,
        form: &[(&str, &str)],
        sent: &[&SecretString],
    ) -> Result<Reply, Error> {
        let url = self.token_url().await?;
        let result = self
            .post_form(&url, client_secret, form, sent, grant_type.as_str())
            .await;
        if let Err(e) = &result {
            self.forget_discovery_if(e).await;
        }
        result
    }

    /// A form `POST` to one of the server's endpoints, with this client's
    /// authentication, every secret of it redacted from a failure.
    pub(crate) async fn post_form(
        &self,
        url: &Url,
        client_secret: Option<&SecretString>,
        form: &[(&str, &str)],
        sent: &[&SecretString],
        what: &str,
    ) -> Result<Reply, Error> {
        let mut request = self.http.post(url).header(ACCEPT, "application/json");
        let mut fields = form.to_vec();
        match client_secret {
            // Surrounding whitespace is a copy-paste accident, never part of a secret.
            Some(s) => {
                request = request.basic_auth(&self.client_id, Some(s.expose_secret().trim()))
            }
            None => fields.push(("client_id", &self.client_id)),
        }
        let request = request.form(&fields);
        tracing::debug!(server = %server_name(url), client_id = %self.client_id, request = what, "calling the license server");
        self.http.send(request, url).await.map_err(|e| {
            let credentials = self.basic_credentials(client_secret);
            let mut all_sent = sent.to_vec();
            all_sent.extend(credentials.as_ref());
            Redact::new(&all_sent).error(e)
        })
    }

    /// A failure that may mean the discovered endpoints moved: discover again next time.
    async fn forget_discovery_if(&self, e: &Error) {
        if matches!(
            e.code,
            ErrorCode::Unavailable | ErrorCode::ServerError | ErrorCode::Timeout
        ) {
            *self.discovered.lock().await = None;
        }
    }

    async fn forget_discovery_after<T>(&self, result: &Result<T, Error>) {
        if let Err(e) = result {
            self.forget_discovery_if(e).await;
        }
    }

    /// What the Basic header carries, `client_id:secret` (base64 of this is
    /// redacted too): a server reflecting the request must not put the secret
    /// in a message.
    fn basic_credentials(&self, client_secret: Option<&SecretString>) -> Option<SecretString> {
        client_secret.map(|s| secret(format!("{}:{}", self.client_id, s.expose_secret().trim())))
    }

    /// The outcome of a token answer (sync, so that the fuzz target runs this
    /// very code): the grant, or the refusal, with nothing of `client_secret`
    /// or `sent` shown.
    pub(crate) fn token_outcome(
        &self,
        reply: &Reply,
        grant_type: GrantType,
        client_secret: Option<&SecretString>,
        sent: &[&SecretString],
    ) -> Result<Grant, Error> {
        let credentials = self.basic_credentials(client_secret);
        let mut all_sent = sent.to_vec();
        all_sent.extend(credentials.as_ref());
        let redact = Redact::new(&all_sent);
        if reply.status.is_success() {
            json_object_redacted(reply, grant_type.what(), &redact)
                .and_then(|mut obj| parse_grant(&mut obj, reply.received_at, &reply.server))
        } else {
            Err(self.refused(reply, grant_type, &all_sent))
        }
        .map_err(|e| redact.error(e))
    }

    pub(crate) fn refused(
        &self,
        reply: &Reply,
        grant_type: GrantType,
        sent: &[&SecretString],
    ) -> Error {
        let says = ServerSays::from_reply(reply, sent);
        let server = &reply.server;
        let client = &self.client_id;
        let (code, message) = if says.is("active_token_limit_exceeded") {
            (
                ErrorCode::TokenLimit,
                format!(
                    "the license server at {server} holds the most active tokens it allows for client {client:?} ({says}); a new one can be had when one of them expires, or when the administrator raises maxActiveTokensAllowed"
                ),
            )
        } else if says.is("invalid_client")
            || (reply.status == StatusCode::UNAUTHORIZED && says.error.is_none())
        {
            (
                ErrorCode::ClientCredentialsInvalid,
                format!(
                    "the license server at {server} rejected client id {client:?} or its secret ({says}); enroll again with the right client secret"
                ),
            )
        } else if grant_type == GrantType::UserRefresh && says.is("invalid_grant") {
            (
                ErrorCode::Revoked,
                format!(
                    "the license server at {server} no longer accepts the signed-in user's refresh token ({says}); sign in again with `regent login`"
                ),
            )
        } else if grant_type == GrantType::AuthorizationCode && says.is("invalid_grant") {
            (
                ErrorCode::SignInFailed,
                format!(
                    "the license server at {server} refused the sign-in code ({says}); run `regent login` again"
                ),
            )
        } else if grant_type == GrantType::DeviceCode && says.is("access_denied") {
            (
                ErrorCode::SignInFailed,
                format!(
                    "the sign-in was denied at the verification page ({says}); run `regent login --device` again to retry"
                ),
            )
        } else if grant_type == GrantType::DeviceCode
            && (says.is("expired_token") || says.is("invalid_grant"))
        {
            (
                ErrorCode::SignInFailed,
                format!(
                    "the device code expired or was refused before the sign-in was approved ({says}); run `regent login --device` again"
                ),
            )
        } else if grant_type == GrantType::RefreshToken && says.is("invalid_grant") {
            (
                ErrorCode::Revoked,
                format!(
                    "the license server at {server} no longer accepts this client's refresh token ({says}); a new token must be requested with the client secret"
                ),
            )
        } else if says.is("unauthorized_client") || says.is("unsupported_grant_type") {
            (
                ErrorCode::Config,
                format!(
                    "the license server at {server} does not allow client {client:?} the {} grant ({says}); ask the administrator to enable it for the client",
                    grant_type.as_str()
                ),
            )
        } else if says.is("invalid_scope") {
            (
                ErrorCode::Config,
                format!(
                    "the license server at {server} refused the scope {:?} for client {client:?} ({says}); fix the configured scope",
                    self.scope.as_deref().unwrap_or("")
                ),
            )
        } else {
            return unexpected_status(reply, &says, grant_type.what());
        };
        tracing::debug!(server = %server, status = reply.status.as_u16(), code = %code, client_id = %client, "token request refused");
        with_retry_after(Error::new(code, message), reply)
    }

    async fn token_url(&self) -> Result<Url, Error> {
        Ok(self.discovery().await?.token)
    }

    /// The server's endpoints: discovered from the issuer (and cached), or
    /// just the configured token endpoint.
    pub async fn discovery(&self) -> Result<Discovery, Error> {
        let issuer = match &self.endpoint {
            OAuth2Endpoint::TokenUrl(url) => return Ok(Discovery::token_only(url.clone())),
            OAuth2Endpoint::Issuer(issuer) => issuer,
        };
        let mut cached = self.discovered.lock().await;
        if let Some(discovery) = cached.as_ref() {
            return Ok(discovery.clone());
        }
        let discovery = self.discover(issuer).await?;
        *cached = Some(discovery.clone());
        Ok(discovery)
    }

    async fn discover(&self, issuer: &Url) -> Result<Discovery, Error> {
        let mut base = issuer.clone();
        base.set_query(None);
        base.set_fragment(None);
        let url = join_path(&base, &[".well-known", "openid-configuration"]);
        let request = self.http.get(&url).header(ACCEPT, "application/json");
        let reply = self.http.send(request, &url).await?;
        discovery_outcome(&reply)
    }
}

/// Longest `token_endpoint` accepted from a discovery document.
const MAX_ENDPOINT: usize = 2048;

/// The outcome of an OpenID configuration answer: the endpoints (sync, so
/// that the fuzz target runs this very code).
pub(crate) fn discovery_outcome(reply: &Reply) -> Result<Discovery, Error> {
    if !reply.status.is_success() {
        let says = ServerSays::from_reply(reply, &[]);
        return Err(unexpected_status(reply, &says, DISCOVERY));
    }
    let obj = json_object(reply, DISCOVERY)?;
    let server = &reply.server;
    let endpoint = match obj.get("token_endpoint") {
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= MAX_ENDPOINT => s.trim(),
        other => {
            return Err(Error::new(
                ErrorCode::ServerError,
                format!(
                    "the license server at {server} answered {DISCOVERY} without a usable token_endpoint (found {}); check the issuer URL",
                    match other {
                        Some(Value::String(_)) => "an empty or overlong string",
                        other => other.map_or("nothing", kind),
                    }
                ),
            ));
        }
    };
    let token_url = Url::parse(endpoint).map_err(|e| {
        Error::new(
            ErrorCode::ServerError,
            format!(
                "the license server at {server} named a token_endpoint that is not a URL ({e}): {}",
                sanitize(endpoint, 200)
            ),
        )
    })?;
    check_url(&token_url).map_err(|e| {
        Error::new(
            e.code,
            format!(
                "the issuer at {server} names a token endpoint regent refuses: {}",
                e.message
            ),
        )
    })?;
    tracing::debug!(issuer = %server, token_server = %server_name(&token_url), "discovered the token endpoint");
    Ok(Discovery::read(token_url, &obj, server))
}

impl UpstreamProfile for OAuth2 {
    fn profile(&self) -> &'static str {
        "oauth2"
    }

    fn server(&self) -> String {
        match self.endpoint() {
            OAuth2Endpoint::TokenUrl(url) | OAuth2Endpoint::Issuer(url) => server_name(url),
        }
    }

    fn enroll_kind(&self) -> EnrollKind {
        EnrollKind::ClientSecret
    }

    fn counts_tokens(&self) -> bool {
        true
    }

    fn user_sign_in(&self) -> Option<&dyn UserSignIn> {
        Some(self)
    }

    /// Proves the client secret: the first client-credentials token.
    fn enroll<'a>(
        &'a self,
        client_secret: &'a SecretString,
        _identity: Option<&'a DeviceIdentity>,
    ) -> BoxFuture<'a, Result<Enrollment, Error>> {
        Box::pin(async move {
            let grant = self.client_credentials(client_secret).await?;
            Ok(Enrollment {
                auth_token_id: None,
                grant,
            })
        })
    }

    /// The held refresh token if there is one, falling back to client
    /// credentials (and dropping it) when the server refuses it.
    fn renew<'a>(&'a self, held: &'a mut Held) -> BoxFuture<'a, Result<Grant, Error>> {
        Box::pin(async move {
            if held.signed_in {
                return self.refresh_user(held).await;
            }
            let Some(client_secret) = held.client_secret.clone() else {
                return Err(Error::new(
                    ErrorCode::Revoked,
                    "the stored credential has no client secret; enroll again",
                ));
            };
            match held.refresh_token.clone() {
                Some(refresh_token) => match self.refresh(&client_secret, &refresh_token).await {
                    Err(e) if e.code == ErrorCode::Revoked => {
                        tracing::info!("refresh token refused; falling back to client credentials");
                        held.refresh_token = None;
                        self.client_credentials(&client_secret).await
                    }
                    other => other,
                },
                None => self.client_credentials(&client_secret).await,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use reqwest::header::{HeaderValue, RETRY_AFTER};

    use super::*;
    use crate::secret::secret;
    use crate::upstream::HttpSettings;
    use crate::upstream::reply::tests::json_reply;

    fn oauth2(scope: Option<&str>) -> OAuth2 {
        OAuth2::new(
            Http::new(HttpSettings::default()).unwrap(),
            OAuth2Endpoint::TokenUrl(Url::parse("https://auth.example/oauth/token").unwrap()),
            "mtclient".into(),
            scope.map(str::to_owned),
        )
        .unwrap()
    }

    #[test]
    fn new_checks_url_and_client_id() {
        let http = Http::new(HttpSettings::default()).unwrap();
        let plain = OAuth2Endpoint::Issuer(Url::parse("http://auth.example/").unwrap());
        let e = OAuth2::new(http.clone(), plain, "c".into(), None).unwrap_err();
        assert_eq!(e.code, ErrorCode::Config);
        let ok = OAuth2Endpoint::TokenUrl(Url::parse("https://auth.example/t").unwrap());
        for bad in ["", "  ", "a:b", "a\nb"] {
            let e = OAuth2::new(http.clone(), ok.clone(), bad.into(), None).unwrap_err();
            assert_eq!(e.code, ErrorCode::Config, "{bad:?}");
        }
        let o = OAuth2::new(http, ok, " c ".into(), Some("  a   b ".into())).unwrap();
        assert_eq!(o.client_id(), "c");
        assert_eq!(o.scope.as_deref(), Some("a b"));
        assert!(oauth2(Some("  ")).scope.is_none());
    }

    #[test]
    fn refusals_map_to_their_codes() {
        let o = oauth2(Some("api"));
        let secret_value = secret("client-secret-xyz".into());
        let cc = GrantType::ClientCredentials;
        let rt = GrantType::RefreshToken;
        for (grant, status, body, code) in [
            (
                cc,
                401,
                r#"{"error":"invalid_client","error_description":"Bad client credentials"}"#,
                ErrorCode::ClientCredentialsInvalid,
            ),
            (cc, 401, "", ErrorCode::ClientCredentialsInvalid),
            (
                rt,
                401,
                r#"{"error":"invalid_client"}"#,
                ErrorCode::ClientCredentialsInvalid,
            ),
            (
                rt,
                400,
                r#"{"error":"invalid_grant","error_description":"Invalid refresh token"}"#,
                ErrorCode::Revoked,
            ),
            (
                cc,
                400,
                r#"{"error":"invalid_grant"}"#,
                ErrorCode::ServerError,
            ),
            (
                cc,
                400,
                r#"{"error":"unauthorized_client"}"#,
                ErrorCode::Config,
            ),
            (
                rt,
                400,
                r#"{"error":"unsupported_grant_type"}"#,
                ErrorCode::Config,
            ),
            (cc, 400, r#"{"error":"invalid_scope"}"#, ErrorCode::Config),
            (
                cc,
                429,
                r#"{"error":"active_token_limit_exceeded","error_description":"5 active"}"#,
                ErrorCode::TokenLimit,
            ),
            (
                cc,
                429,
                r#"{"error":"rate_limited"}"#,
                ErrorCode::RateLimited,
            ),
            (cc, 429, "", ErrorCode::RateLimited),
            (
                cc,
                500,
                r#"{"error":"server_error"}"#,
                ErrorCode::ServerError,
            ),
            (cc, 404, "<html>", ErrorCode::ServerError),
        ] {
            let e = o.refused(&json_reply(status, body), grant, &[&secret_value]);
            assert_eq!(e.code, code, "{status} {body}");
            assert!(!e.message.contains("client-secret-xyz"));
        }
        let mut r = json_reply(429, r#"{"error":"active_token_limit_exceeded"}"#);
        r.headers
            .insert(RETRY_AFTER, HeaderValue::from_static("42"));
        let e = o.refused(&r, cc, &[]);
        assert_eq!(e.code, ErrorCode::TokenLimit);
        assert_eq!(e.retry_after, Some(Duration::from_secs(42)));
        assert!(e.message.contains("\"mtclient\""), "{}", e.message);
        let mut r = json_reply(429, "{}");
        r.headers.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(
            o.refused(&r, cc, &[]).retry_after,
            Some(Duration::from_secs(3))
        );
    }
}
