//! The license server's admin API (DESIGN §9), for the people and scripts that
//! issue registration tokens and revoke auth tokens: the one client that
//! `regent admin`, `regent demo`, the bench and every test use.
//!
//! - Discovery is the agent's own ([`Sentinel::idp_config`]): the
//!   `idpConfigurations` answer names the realm token endpoint, checked by
//!   the same URL rule.
//! - The admin logs in there with the OAuth2 `password` grant and sends the
//!   bearer token it gets on every call.
//! - Every request goes through the agent's [`Http`]: no redirects (a 307
//!   would resend the password elsewhere), `https://` except to loopback IP
//!   literals, plain `http://` never through a proxy, bounded bodies.
//! - Errors carry the code table's codes; nothing the server echoes of the
//!   password or a registration-token value reaches a message.

use std::fmt;

use regent_proto::ErrorCode;
use reqwest::Method;
use reqwest::header::ACCEPT;
use serde_json::{Value, json};
use url::Url;

use super::http::{Http, HttpSettings, Reply};
use super::network::check_url;
use super::reply::ServerSays;
use super::sentinel::Sentinel;
use super::text::sanitize;
use crate::error::Error;
use crate::secret::{ExposeSecret, SecretString};

const REGISTRATION_TOKENS: &str = "/token/api/v5/registrationTokens";
const AUTH_TOKENS: &str = "/token/api/v5/authTokens";

/// Who logs in to the admin API. `Debug` never shows the password.
#[derive(Clone)]
pub struct AdminCredentials {
    /// The admin user.
    pub user: String,
    /// Its password.
    pub password: SecretString,
}

impl AdminCredentials {
    /// Credentials for `user` with `password`.
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> AdminCredentials {
        AdminCredentials {
            user: user.into(),
            password: SecretString::from(password.into()),
        }
    }
}

impl fmt::Debug for AdminCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminCredentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// An answer of the admin API, whatever its status.
#[derive(Debug, Clone)]
pub struct AdminReply {
    /// The HTTP status.
    pub status: u16,
    /// The JSON body (`Null` when empty or not JSON).
    pub body: Value,
}

/// A registration token just created: its record (without the value) and its value.
pub struct CreatedRegistrationToken {
    /// The server's record: `id`, `count`, `expiryDate`, … (`token` removed).
    pub record: Value,
    /// The value a device redeems: a secret.
    pub value: SecretString,
}

impl fmt::Debug for CreatedRegistrationToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreatedRegistrationToken")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

/// A logged-in admin session (cheap to clone).
#[derive(Clone)]
pub struct AdminClient {
    http: Http,
    base: Url,
    bearer: SecretString,
}

impl fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminClient")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

/// Parses and checks an admin API base URL given by a person (`--url`).
///
/// # Errors
/// `CONFIG` naming the problem: not a URL, or refused by [`check_url`].
pub fn admin_url(text: &str) -> Result<Url, Error> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(Error::new(
            ErrorCode::Config,
            "which license server? pass --url or set REGENT_ADMIN_URL",
        ));
    }
    let url = Url::parse(trimmed).map_err(|e| {
        Error::new(
            ErrorCode::Config,
            format!(
                "{:?} is not a URL ({e}); use https://HOST/…",
                sanitize(trimmed, 200)
            ),
        )
    })?;
    check_url(&url)?;
    Ok(url)
}

impl AdminClient {
    /// Discovers the realm token endpoint of the server at `base` and logs in
    /// as `credentials` with the `password` grant.
    ///
    /// # Errors
    /// `CONFIG` for a URL [`check_url`] refuses; `PERMISSION_DENIED` when the
    /// server refuses the user or password; `UNAVAILABLE`, `TIMEOUT`,
    /// `SERVER_ERROR` when it cannot be reached or answers nonsense.
    pub async fn login(
        base: &Url,
        credentials: &AdminCredentials,
        settings: HttpSettings,
    ) -> Result<AdminClient, Error> {
        let http = Http::new(settings)?;
        let idp = Sentinel::new(http.clone(), base.clone())?
            .idp_config()
            .await?;
        let form = [
            ("grant_type", "password"),
            ("username", credentials.user.as_str()),
            ("password", credentials.password.expose_secret()),
            ("client_id", idp.client_id.as_str()),
        ];
        let request = http
            .post(&idp.token_url)
            .header(ACCEPT, "application/json")
            .form(&form);
        let reply = http.send(request, &idp.token_url).await?;
        let bearer = match (reply.status.is_success(), body_of(&reply)) {
            (true, Value::Object(mut obj)) => match obj.remove("access_token") {
                Some(Value::String(bearer)) if !bearer.is_empty() => bearer,
                _ => {
                    return Err(Error::new(
                        ErrorCode::ServerError,
                        format!(
                            "the license server at {} accepted the admin login but sent no access_token",
                            reply.server
                        ),
                    ));
                }
            },
            (true, _) => {
                return Err(Error::new(
                    ErrorCode::ServerError,
                    format!(
                        "the license server at {} answered the admin login with something other than a JSON object",
                        reply.server
                    ),
                ));
            }
            (false, _) => {
                let says = ServerSays::from_reply(&reply, &[&credentials.password]);
                let code = match reply.status.as_u16() {
                    400 | 401 | 403 => ErrorCode::PermissionDenied,
                    status => status_code(status),
                };
                return Err(Error::new(
                    code,
                    format!(
                        "admin login as {} refused by the license server at {} ({says}); check the user and password",
                        sanitize(&credentials.user, 100),
                        reply.server
                    ),
                ));
            }
        };
        Ok(AdminClient {
            http,
            base: base.clone(),
            bearer: SecretString::from(bearer),
        })
    }

    /// [`login`](Self::login) with default HTTP settings, for a URL given
    /// as text: what a script or a test harness wants.
    ///
    /// # Errors
    /// As for [`admin_url`] and [`login`](Self::login).
    pub async fn login_to(url: &str, user: &str, password: &str) -> Result<AdminClient, Error> {
        let base = admin_url(url)?;
        let credentials = AdminCredentials::new(user, password);
        AdminClient::login(&base, &credentials, HttpSettings::default()).await
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// The admin bearer token, for a test that crafts its own requests.
    pub fn bearer(&self) -> &SecretString {
        &self.bearer
    }

    /// One admin request to `path` (with its query, if any) below the base
    /// URL; any HTTP status is an answer.
    ///
    /// # Errors
    /// Transport failures only (`UNAVAILABLE`, `TIMEOUT`, …).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<AdminReply, Error> {
        let reply = self.exchange(method, path, body).await?;
        Ok(AdminReply {
            status: reply.status.as_u16(),
            body: body_of(&reply),
        })
    }

    /// One admin request that must succeed; returns its JSON body.
    ///
    /// # Errors
    /// A non-2xx answer, mapped onto the code table with the server's message:
    /// 400/404/409/422 `BAD_REQUEST`, 401/403 `PERMISSION_DENIED`, 429
    /// `RATE_LIMITED`, 5xx `UNAVAILABLE`, others `SERVER_ERROR`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Error> {
        let reply = self.exchange(method, path, body).await?;
        if reply.status.is_success() {
            return Ok(body_of(&reply));
        }
        let says = ServerSays::from_reply(&reply, &[]);
        let what = path.split('?').next().unwrap_or(path);
        Err(Error::new(
            status_code(reply.status.as_u16()),
            format!(
                "{what}: the license server at {} answered {says}",
                reply.server
            ),
        ))
    }

    /// Creates a registration token from `fields` (`count`, `expiryDate`,
    /// `isEnabled`, `refId1`, `refId2`).
    ///
    /// # Errors
    /// As for [`call`](Self::call); `SERVER_ERROR` when the answer holds no value.
    pub async fn create_registration_token(
        &self,
        fields: Value,
    ) -> Result<CreatedRegistrationToken, Error> {
        let body = json!({ "registrationToken": fields });
        let mut reply = self
            .call(Method::POST, REGISTRATION_TOKENS, Some(&body))
            .await?;
        let mut record = reply["registrationToken"].take();
        let value = match record.as_object_mut().and_then(|r| r.remove("token")) {
            Some(Value::String(value)) if !value.is_empty() => SecretString::from(value),
            _ => {
                return Err(Error::new(
                    ErrorCode::ServerError,
                    "the server created a registration token but returned no value",
                ));
            }
        };
        Ok(CreatedRegistrationToken { record, value })
    }

    /// Every registration token's record (values removed).
    ///
    /// # Errors
    /// As for [`call`](Self::call).
    pub async fn registration_tokens(&self) -> Result<Vec<Value>, Error> {
        let reply = self.call(Method::GET, REGISTRATION_TOKENS, None).await?;
        Ok(records(reply, "registrationTokens"))
    }

    /// One registration token's record (value removed).
    ///
    /// # Errors
    /// As for [`call`](Self::call): `BAD_REQUEST` for an unknown id.
    pub async fn registration_token(&self, id: &str) -> Result<Value, Error> {
        let reply = self.call(Method::GET, &registration_path(id), None).await?;
        Ok(record(reply))
    }

    /// Changes a registration token (`count`, `expiryDate`, `isEnabled`);
    /// returns its new record (value removed).
    ///
    /// # Errors
    /// As for [`call`](Self::call).
    pub async fn update_registration_token(&self, id: &str, patch: Value) -> Result<Value, Error> {
        let body = json!({ "registrationToken": patch });
        let reply = self
            .call(Method::PATCH, &registration_path(id), Some(&body))
            .await?;
        Ok(record(reply))
    }

    /// Deletes a registration token; auth tokens created from it stay valid.
    ///
    /// # Errors
    /// As for [`call`](Self::call).
    pub async fn delete_registration_token(&self, id: &str) -> Result<(), Error> {
        self.call(Method::DELETE, &registration_path(id), None)
            .await
            .map(drop)
    }

    /// The auth tokens (one per redemption), all or those created from
    /// `registration_token`.
    ///
    /// # Errors
    /// As for [`call`](Self::call).
    pub async fn auth_tokens(&self, registration_token: Option<&str>) -> Result<Vec<Value>, Error> {
        let path = match registration_token {
            Some(id) => format!(
                "{AUTH_TOKENS}?registrationTokenId={}",
                url::form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>()
            ),
            None => AUTH_TOKENS.to_owned(),
        };
        let reply = self.call(Method::GET, &path, None).await?;
        Ok(records(reply, "authTokens"))
    }

    /// Deletes (revokes) an auth token: the device's next refresh fails with `REVOKED`.
    ///
    /// # Errors
    /// As for [`call`](Self::call).
    pub async fn revoke_auth_token(&self, id: &str) -> Result<(), Error> {
        let path = format!("{AUTH_TOKENS}/{}", segment(id));
        self.call(Method::DELETE, &path, None).await.map(drop)
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, Error> {
        let url = self.url(path)?;
        let mut request = self
            .http
            .request(method, &url)
            .bearer_auth(self.bearer.expose_secret())
            .header(ACCEPT, "application/json");
        if let Some(body) = body {
            request = request.json(body);
        }
        self.http.send(request, &url).await
    }

    /// `path` (which may carry a query) below the base URL.
    fn url(&self, path: &str) -> Result<Url, Error> {
        let text = format!("{}{path}", self.base.as_str().trim_end_matches('/'));
        Url::parse(&text).map_err(|e| {
            Error::new(
                ErrorCode::Internal,
                format!("cannot build the admin URL for {path}: {e}"),
            )
        })
    }
}

/// The HTTP status of an admin answer as a code.
fn status_code(status: u16) -> ErrorCode {
    match status {
        400 | 404 | 409 | 422 => ErrorCode::BadRequest,
        401 | 403 => ErrorCode::PermissionDenied,
        429 => ErrorCode::RateLimited,
        500..=599 => ErrorCode::Unavailable,
        _ => ErrorCode::ServerError,
    }
}

fn body_of(reply: &Reply) -> Value {
    serde_json::from_slice(&reply.body).unwrap_or(Value::Null)
}

fn registration_path(id: &str) -> String {
    format!("{REGISTRATION_TOKENS}/{}", segment(id))
}

/// Percent-encodes an id for one path segment.
fn segment(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

/// `reply[key]` as records, registration-token values removed.
fn records(mut reply: Value, key: &str) -> Vec<Value> {
    let mut list = match reply[key].take() {
        Value::Array(list) => list,
        _ => Vec::new(),
    };
    list.iter_mut().for_each(strip_value);
    list
}

fn record(mut reply: Value) -> Value {
    let mut record = reply["registrationToken"].take();
    strip_value(&mut record);
    record
}

/// Registration-token values are secrets: only `create` hands one out.
fn strip_value(record: &mut Value) {
    if let Some(map) = record.as_object_mut() {
        map.remove("token");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_urls_follow_the_agents_rule() {
        assert!(admin_url("https://ems.example.com/").is_ok());
        assert!(admin_url("http://127.0.0.1:8600").is_ok());
        assert!(admin_url("http://[::1]:8600").is_ok());
        for refused in [
            "http://ems.example.com",
            "http://localhost:8600",
            "ftp://h/",
            "",
            "not a url",
        ] {
            let e = admin_url(refused).unwrap_err();
            assert_eq!(e.code, ErrorCode::Config, "{refused}: {e}");
        }
    }

    #[test]
    fn statuses_map_onto_the_code_table() {
        assert_eq!(status_code(404), ErrorCode::BadRequest);
        assert_eq!(status_code(409), ErrorCode::BadRequest);
        assert_eq!(status_code(403), ErrorCode::PermissionDenied);
        assert_eq!(status_code(429), ErrorCode::RateLimited);
        assert_eq!(status_code(503), ErrorCode::Unavailable);
        assert_eq!(status_code(302), ErrorCode::ServerError);
    }

    #[test]
    fn debug_hides_the_password_and_values() {
        let credentials = AdminCredentials::new("root", "hunter2-secret");
        assert!(!format!("{credentials:?}").contains("hunter2"));
        let created = CreatedRegistrationToken {
            record: json!({"id": "r1"}),
            value: SecretString::from("rt-value-secret".to_owned()),
        };
        assert!(!format!("{created:?}").contains("rt-value"));
    }

    #[test]
    fn records_never_carry_values() {
        let listed = records(
            json!({"registrationTokens": [{"id": "a", "token": "v"}, {"id": "b"}]}),
            "registrationTokens",
        );
        assert_eq!(listed, vec![json!({"id": "a"}), json!({"id": "b"})]);
        assert_eq!(
            record(json!({"registrationToken": {"id": "a", "token": "v"}})),
            json!({"id": "a"})
        );
    }
}
