//! An authenticated admin session: the server's base URL, the `password`
//! grant at its realm token endpoint, and JSON requests and replies.

use super::credentials::{Credentials, credentials};
use super::*;

pub(super) fn base_url(server: &ServerArgs) -> Result<reqwest::Url, Error> {
    let Some(text) = server.url.as_deref().filter(|u| !u.is_empty()) else {
        return Err(Error::new(
            ErrorCode::Config,
            "which license server? pass --url or set REGENT_ADMIN_URL",
        ));
    };
    let url = reqwest::Url::parse(text.trim_end_matches('/')).map_err(|e| {
        Error::new(
            ErrorCode::Config,
            format!("--url {text:?} is not a URL: {e}"),
        )
    })?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        // A name (`localhost` too) goes through the resolver: IP literals only.
        Some(url::Host::Domain(_)) | None => false,
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        "http" => Err(Error::new(
            ErrorCode::Config,
            format!(
                "refusing to send admin credentials over plain http:// to {}; use https:// (http:// is only for loopback IP addresses such as http://127.0.0.1:PORT)",
                url.host_str().unwrap_or("?")
            ),
        )),
        other => Err(Error::new(
            ErrorCode::Config,
            format!("--url: unsupported scheme {other:?}; use https://"),
        )),
    }
}

/// An authorised session against the admin API.
pub struct Session {
    http: reqwest::Client,
    base: reqwest::Url,
    bearer: SecretString,
}

impl Session {
    pub(super) async fn open(server: &ServerArgs) -> Result<Session, Error> {
        let base = base_url(server)?;
        let credentials = credentials(server, &base).await?;
        Session::login(&base, &credentials).await
    }

    /// Logs in to `url` as `user` (the emulator's admin actions and the demo).
    pub(crate) async fn with_password(
        url: &str,
        user: &str,
        password: SecretString,
    ) -> Result<Session, Error> {
        let base = reqwest::Url::parse(url).map_err(|e| {
            Error::new(
                ErrorCode::Config,
                format!("invalid server URL {url:?}: {e}"),
            )
        })?;
        let credentials = Credentials {
            user: user.to_owned(),
            password,
        };
        Session::login(&base, &credentials).await
    }

    /// Discovers the realm token endpoint and logs in with the password grant.
    pub(super) async fn login(
        base: &reqwest::Url,
        credentials: &Credentials,
    ) -> Result<Session, Error> {
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            // A 307 would resend the password form to wherever it points.
            .redirect(reqwest::redirect::Policy::none());
        // Plain http:// (loopback only) never goes through a proxy: the admin
        // password would reach it in clear (issue 18, item 1).
        let (builder, _) = with_https_proxy(builder, &ProxySetting::Environment)?;
        let http = builder
            .build()
            .map_err(|e| internal("cannot build the HTTP client", e))?;
        let base_text = base.as_str().trim_end_matches('/').to_owned();
        let idp = http
            .get(format!("{base_text}/token/api/v5/idpConfigurations"))
            .send()
            .await
            .map_err(|e| unreachable(base, &e))?;
        let idp = read_reply(idp, "idpConfigurations").await?;
        let (Some(endpoint), Some(realm), Some(client_id)) = (
            idp["tokenEndpoint"].as_str(),
            idp["realm"].as_str(),
            idp["clientId"].as_str(),
        ) else {
            return Err(Error::new(
                ErrorCode::ServerError,
                format!(
                    "{base}: idpConfigurations names no tokenEndpoint, realm and clientId; is this a Sentinel-style server?"
                ),
            ));
        };
        let token_url = format!(
            "{}/realms/{}/protocol/openid-connect/token",
            endpoint.trim_end_matches('/'),
            url_component(realm)
        );
        // The password goes there: the same URL rule as the agent's (https://,
        // or http:// to a loopback IP literal).
        reqwest::Url::parse(&token_url)
            .map_err(|e| e.to_string())
            .and_then(|u| {
                regent_agent::upstream::check_url(&u).map_err(|e| e.message)
            })
            .map_err(|problem| {
                Error::new(
                    ErrorCode::ServerError,
                    format!("{base}: idpConfigurations names a token endpoint the admin password will not be sent to: {problem}"),
                )
            })?;
        let reply = http
            .post(&token_url)
            .form(&[
                ("grant_type", "password"),
                ("username", credentials.user.as_str()),
                ("password", credentials.password.expose_secret()),
                ("client_id", client_id),
            ])
            .send()
            .await
            .map_err(|e| unreachable(base, &e))?;
        let status = reply.status();
        let body: Value = reply.json().await.unwrap_or(Value::Null);
        let Some(bearer) = body["access_token"].as_str() else {
            return Err(Error::new(
                ErrorCode::PermissionDenied,
                format!(
                    "admin login as {} refused ({status}: {}); check the user and password",
                    credentials.user,
                    body["error_description"]
                        .as_str()
                        .unwrap_or("no description")
                ),
            ));
        };
        Ok(Session {
            http,
            base: base.clone(),
            bearer: SecretString::from(bearer.to_owned()),
        })
    }

    /// One admin call; a non-2xx answer is a failure carrying the server's message.
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Error> {
        let url = format!("{}{path}", self.base.as_str().trim_end_matches('/'));
        let mut request = self
            .http
            .request(method, url)
            .bearer_auth(self.bearer.expose_secret());
        if let Some(body) = body {
            request = request.json(&body);
        }
        let reply = request
            .send()
            .await
            .map_err(|e| unreachable(&self.base, &e))?;
        read_reply(reply, path).await
    }
}

pub(super) async fn read_reply(reply: reqwest::Response, what: &str) -> Result<Value, Error> {
    let status = reply.status();
    let text = reply.text().await.unwrap_or_default();
    let body: Value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::Null)
    };
    if status.is_success() {
        return Ok(body);
    }
    let code = match status.as_u16() {
        400 | 404 | 409 | 422 => ErrorCode::BadRequest,
        401 | 403 => ErrorCode::PermissionDenied,
        429 => ErrorCode::RateLimited,
        500..=599 => ErrorCode::Unavailable,
        _ => ErrorCode::ServerError,
    };
    let detail = body["error_description"]
        .as_str()
        .or_else(|| body["message"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| text.chars().take(200).collect());
    Err(Error::new(
        code,
        format!(
            "{what}: the server answered {status}{}{}",
            body["error"]
                .as_str()
                .map(|e| format!(" {e}"))
                .unwrap_or_default(),
            if detail.is_empty() {
                String::new()
            } else {
                format!(": {detail}")
            }
        ),
    ))
}

pub(super) fn unreachable(base: &reqwest::Url, e: &reqwest::Error) -> Error {
    let code = if e.is_timeout() {
        ErrorCode::Timeout
    } else {
        ErrorCode::Unavailable
    };
    Error::new(
        code,
        format!("cannot reach the license server at {base}: {e}"),
    )
}

/// Percent-encodes an id for a path segment or query value.
pub(super) fn url_component(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
