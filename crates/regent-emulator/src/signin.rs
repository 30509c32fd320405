//! Users who sign in: the authorization endpoint with its login form and
//! PKCE (RFC 6749 §4.1, RFC 7636, RFC 8252), the device authorization grant
//! and its verification page (RFC 8628), the `authorization_code` and
//! `device_code` grants of `/oauth/token`, revocation (RFC 7009), userinfo,
//! and the user list (`--users-file`, `/_emulator/users`).
//!
//! The pages are plain HTML forms with no script, so that a test (or a
//! person with `curl`) can act as the browser: fetch the page, post the form,
//! follow the redirect.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use url::Url;

use crate::clock;
use crate::error::{ApiError, token_response};
use crate::extract::{ApiJson, ApiPath, ApiQuery, FormParams, authorization};
use crate::oauth2::{OAuthTokenResponse, client_authentication, granted_scope};
use crate::records::{
    AuthCode, DEVICE_CODE_GRANT, DeviceDecision, DeviceGrant, OAuthClient, Owner, User, UserSpec,
};
use crate::secret;
use crate::state::{AppState, Store};

/// How long an authorization code may wait for its exchange.
const CODE_LIFETIME: Duration = Duration::from_secs(60);
/// How long a device authorization waits for its user (RFC 8628 suggests minutes).
const DEVICE_LIFETIME: Duration = Duration::from_secs(600);
/// What `slow_down` adds to a device's polling interval (RFC 8628 §3.5).
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// User-code alphabet: no vowels (no words) and no look-alikes (RFC 8628 §6.1).
const USER_CODE_ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";

#[derive(Debug, Serialize)]
struct UserView<'a> {
    username: &'a str,
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
}

fn user_view(user: &User) -> Value {
    json!(UserView {
        username: &user.username,
        sub: &user.sub,
        email: user.email.as_deref(),
    })
}

/// `POST /_emulator/users`: adds (or replaces) a user.
pub(crate) async fn add_user(
    State(app): State<AppState>,
    ApiJson(spec): ApiJson<UserSpec>,
) -> Result<Response, ApiError> {
    let user = spec.into_user()?;
    let view = user_view(&user);
    app.store().oauth.users.insert(user.username.clone(), user);
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// `GET /_emulator/users`: the users (never their passwords).
pub(crate) async fn list_users(State(app): State<AppState>) -> Json<Value> {
    let store = app.store();
    Json(Value::Array(
        store.oauth.users.values().map(user_view).collect(),
    ))
}

/// `DELETE /_emulator/users/{username}`: the user and every token of theirs.
pub(crate) async fn delete_user(
    State(app): State<AppState>,
    ApiPath(username): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let mut store = app.store();
    if store.oauth.users.remove(&username).is_none() {
        return Err(ApiError::not_found(format!("no user '{username}'")));
    }
    store.oauth.revoke_user(&username);
    Ok(StatusCode::NO_CONTENT)
}

// ----- pages -----

/// Escapes text for HTML element content and double-quoted attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An HTML page that no one may frame or cache.
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
         <body>\n<h1>{title}</h1>\n{body}\n</body></html>\n",
        title = escape(title)
    );
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    response
}

/// Reverses [`escape`].
fn unescape(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The hidden fields of one of the emulator's sign-in pages, as a browser
/// would submit them: what a stand-in browser (`regent demo --user`, the
/// tests) posts back along with the user name, password and `action`.
pub fn login_form_fields(html: &str) -> Vec<(String, String)> {
    html.split("<input type=\"hidden\" ")
        .skip(1)
        .filter_map(|tail| {
            let attr = |name: &str| {
                let start = tail.find(&format!("{name}=\""))? + name.len() + 2;
                let end = tail[start..].find('"')? + start;
                Some(unescape(&tail[start..end]))
            };
            Some((attr("name")?, attr("value")?))
        })
        .collect()
}

fn hidden(name: &str, value: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"{}\" value=\"{}\">\n",
        escape(name),
        escape(value)
    )
}

fn credentials_fields() -> &'static str {
    "<p><label>User name <input type=\"text\" name=\"username\" autocomplete=\"username\"></label></p>\n\
     <p><label>Password <input type=\"password\" name=\"password\" autocomplete=\"current-password\"></label></p>\n"
}

fn notice(message: Option<&str>) -> String {
    message
        .map(|m| format!("<p role=\"alert\">{}</p>\n", escape(m)))
        .unwrap_or_default()
}

// ----- authorization endpoint -----

/// The authorization request's parameters (query of `GET`, form of `POST`).
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct AuthorizeParams {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    nonce: Option<String>,
}

impl AuthorizeParams {
    fn from_form(form: &FormParams) -> Result<Self, ApiError> {
        let get = |name| form.get(name).map(|v| v.map(str::to_owned));
        Ok(Self {
            response_type: get("response_type")?,
            client_id: get("client_id")?,
            redirect_uri: get("redirect_uri")?,
            scope: get("scope")?,
            state: get("state")?,
            code_challenge: get("code_challenge")?,
            code_challenge_method: get("code_challenge_method")?,
            nonce: get("nonce")?,
        })
    }

    fn hidden_fields(&self) -> String {
        [
            ("response_type", &self.response_type),
            ("client_id", &self.client_id),
            ("redirect_uri", &self.redirect_uri),
            ("scope", &self.scope),
            ("state", &self.state),
            ("code_challenge", &self.code_challenge),
            ("code_challenge_method", &self.code_challenge_method),
            ("nonce", &self.nonce),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.as_deref().map(|v| hidden(name, v)))
        .collect()
    }
}

/// A checked authorization request.
#[derive(Debug)]
struct Authorization {
    client: OAuthClient,
    redirect: Url,
    scope: String,
}

/// Why an authorization request cannot go on: shown on a page when the
/// redirect URI itself cannot be trusted, otherwise sent back to it.
enum Refusal {
    Page(String),
    Redirect(Box<Url>, &'static str, String),
}

impl Refusal {
    fn into_response(self, state: Option<&str>) -> Response {
        match self {
            Refusal::Page(message) => page(
                StatusCode::BAD_REQUEST,
                "Sign-in request refused",
                &notice(Some(&message)),
            ),
            Refusal::Redirect(uri, error, description) => redirect_with(
                *uri,
                &[("error", error), ("error_description", &description)],
                state,
            ),
        }
    }
}

fn redirect_with(mut uri: Url, pairs: &[(&str, &str)], state: Option<&str>) -> Response {
    {
        let mut query = uri.query_pairs_mut();
        for (k, v) in pairs {
            query.append_pair(k, v);
        }
        if let Some(state) = state {
            query.append_pair("state", state);
        }
    }
    let mut response = StatusCode::FOUND.into_response();
    if let Ok(location) = HeaderValue::from_str(uri.as_str()) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Loopback redirect URIs may use any port (RFC 8252 §7.3); others must be
/// registered exactly.
fn redirect_allowed(client: &OAuthClient, uri: &Url) -> bool {
    let loopback = uri.scheme() == "http"
        && match uri.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        };
    uri.fragment().is_none() && (loopback || client.redirect_uris.iter().any(|r| r == uri.as_str()))
}

impl Store {
    fn check_authorization(&self, p: &AuthorizeParams) -> Result<Authorization, Refusal> {
        let Some(client_id) = p.client_id.as_deref() else {
            return Err(Refusal::Page("the request names no client_id".into()));
        };
        let Some(client) = self.oauth.clients.get(client_id).cloned() else {
            return Err(Refusal::Page(format!("there is no client '{client_id}'")));
        };
        let Some(redirect) = p.redirect_uri.as_deref().and_then(|r| Url::parse(r).ok()) else {
            return Err(Refusal::Page(
                "the request has no usable redirect_uri".to_owned(),
            ));
        };
        if !redirect_allowed(&client, &redirect) {
            return Err(Refusal::Page(format!(
                "redirect_uri {redirect} is not loopback and not registered for client '{client_id}'"
            )));
        }
        let refusal = |error, description: &str| {
            Refusal::Redirect(Box::new(redirect.clone()), error, description.to_owned())
        };
        let refuse = |error, description: &str| Err(refusal(error, description));
        if p.response_type.as_deref() != Some("code") {
            return refuse(
                "unsupported_response_type",
                "only response_type=code is supported",
            );
        }
        if !client.allows("authorization_code") {
            return refuse(
                "unauthorized_client",
                "this client may not use the authorization code grant",
            );
        }
        match (
            p.code_challenge.as_deref(),
            p.code_challenge_method.as_deref(),
        ) {
            (Some(challenge), Some("S256")) if is_pkce_value(challenge) => {}
            (Some(_), Some("S256")) => {
                return refuse("invalid_request", "code_challenge is malformed");
            }
            (Some(_), _) => {
                return refuse("invalid_request", "code_challenge_method must be S256");
            }
            (None, _) if client.is_public() => {
                return refuse(
                    "invalid_request",
                    "a public client must send a PKCE code_challenge (S256)",
                );
            }
            (None, _) => {}
        }
        let scope = granted_scope(&client, p.scope.as_deref())
            .map_err(|e| refusal("invalid_scope", &e.description))?;
        Ok(Authorization {
            client,
            redirect,
            scope,
        })
    }

    fn check_password(&self, username: &str, password: &str) -> Option<User> {
        let user = self.oauth.users.get(username.trim())?;
        secret::ct_eq(password, &user.password).then(|| user.clone())
    }
}

/// RFC 7636 §4.1: 43–128 unreserved characters.
fn is_pkce_value(value: &str) -> bool {
    (43..=128).contains(&value.len())
        && value
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~'))
}

fn login_form(p: &AuthorizeParams, client_id: &str, message: Option<&str>) -> String {
    format!(
        "<p>Client <b>{client}</b> asks you to sign in.</p>\n{notice}\
         <form method=\"post\" action=\"/oauth/authorize\">\n{hidden}{fields}\
         <p><button type=\"submit\" name=\"action\" value=\"allow\">Sign in</button>\n\
         <button type=\"submit\" name=\"action\" value=\"deny\">Cancel</button></p>\n</form>",
        client = escape(client_id),
        notice = notice(message),
        hidden = p.hidden_fields(),
        fields = credentials_fields(),
    )
}

/// `GET /oauth/authorize`: the login form.
pub(crate) async fn authorize_page(
    State(app): State<AppState>,
    ApiQuery(params): ApiQuery<AuthorizeParams>,
) -> Response {
    match app.store().check_authorization(&params) {
        Ok(auth) => page(
            StatusCode::OK,
            "Sign in",
            &login_form(&params, &auth.client.client_id, None),
        ),
        Err(refusal) => refusal.into_response(params.state.as_deref()),
    }
}

/// `POST /oauth/authorize`: the submitted form; redirects with a code, or
/// with `access_denied` after Cancel, or shows the form again.
pub(crate) async fn authorize_submit(State(app): State<AppState>, form: FormParams) -> Response {
    let params = match AuthorizeParams::from_form(&form) {
        Ok(params) => params,
        Err(e) => {
            return page(
                StatusCode::BAD_REQUEST,
                "Sign-in request refused",
                &notice(Some(&e.description)),
            );
        }
    };
    let state = params.state.clone();
    let mut store = app.store();
    let auth = match store.check_authorization(&params) {
        Ok(auth) => auth,
        Err(refusal) => return refusal.into_response(state.as_deref()),
    };
    if form.get("action").ok().flatten() == Some("deny") {
        return redirect_with(
            auth.redirect,
            &[
                ("error", "access_denied"),
                ("error_description", "the user cancelled the sign-in"),
            ],
            state.as_deref(),
        );
    }
    let username = form.get("username").ok().flatten().unwrap_or_default();
    let password = form.get("password").ok().flatten().unwrap_or_default();
    let Some(user) = store.check_password(username, password) else {
        return page(
            StatusCode::UNAUTHORIZED,
            "Sign in",
            &login_form(
                &params,
                &auth.client.client_id,
                Some("Wrong user name or password."),
            ),
        );
    };
    let now = clock::now();
    let code = secret::token();
    store.note_mint(now);
    store.oauth.codes.insert(
        code.clone(),
        AuthCode {
            client_id: auth.client.client_id.clone(),
            redirect_uri: params.redirect_uri.clone().unwrap_or_default(),
            code_challenge: params.code_challenge.clone(),
            user: user.username,
            scope: auth.scope,
            nonce: params.nonce.clone(),
            expires_at: clock::after(now, CODE_LIFETIME),
        },
    );
    drop(store);
    redirect_with(auth.redirect, &[("code", &code)], state.as_deref())
}

// ----- device authorization -----

fn user_code() -> String {
    let mut rng = rand::rng();
    let mut code = String::with_capacity(9);
    for i in 0..8 {
        if i == 4 {
            code.push('-');
        }
        let pick = rng.random_range(0..USER_CODE_ALPHABET.len());
        code.push(char::from(USER_CODE_ALPHABET[pick]));
    }
    code
}

/// What a person may type: case and dashes or spaces do not matter.
fn normalize_user_code(typed: &str) -> String {
    let letters: String = typed
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect();
    match letters.len() {
        8 => format!("{}-{}", &letters[..4], &letters[4..]),
        _ => letters,
    }
}

/// `POST /oauth/device_authorization` (RFC 8628 §3.1–3.2).
pub(crate) async fn device_authorization(
    State(app): State<AppState>,
    headers: HeaderMap,
    form: FormParams,
) -> Result<Response, ApiError> {
    let client = client_authentication(&headers, &form)?;
    let now = clock::now();
    let mut store = app.store();
    let client = store.authenticate_client(client)?;
    if !client.allows(DEVICE_CODE_GRANT) {
        return Err(ApiError::unauthorized_client(format!(
            "client '{}' may not use the device authorization grant; its authorizedGrantTypes are [{}]",
            client.client_id,
            client.grant_types.join(", ")
        )));
    }
    let scope = granted_scope(&client, form.get("scope")?)?;
    let device_code = secret::token();
    let code = loop {
        let candidate = user_code();
        if !store.oauth.user_codes.contains_key(&candidate) {
            break candidate;
        }
    };
    let interval = app.device_interval;
    store.note_mint(now);
    store.oauth.devices.insert(
        device_code.clone(),
        DeviceGrant {
            client_id: client.client_id.clone(),
            user_code: code.clone(),
            scope,
            expires_at: clock::after(now, DEVICE_LIFETIME),
            interval,
            last_poll: None,
            decision: DeviceDecision::Pending,
        },
    );
    store
        .oauth
        .user_codes
        .insert(code.clone(), device_code.clone());
    drop(store);
    let verification_uri = format!("{}/oauth/device", app.base_url);
    Ok(token_response(
        StatusCode::OK,
        json!({
            "device_code": device_code,
            "user_code": code,
            "verification_uri": verification_uri,
            "verification_uri_complete": format!("{verification_uri}?user_code={code}"),
            "expires_in": DEVICE_LIFETIME.as_secs(),
            "interval": interval.as_secs().max(1),
        }),
    ))
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct DeviceQuery {
    user_code: Option<String>,
}

fn device_form(user_code: Option<&str>, message: Option<&str>) -> String {
    format!(
        "<p>Enter the code your device shows, and sign in to let it use your license.</p>\n\
         {notice}<form method=\"post\" action=\"/oauth/device\">\n\
         <p><label>Code <input type=\"text\" name=\"user_code\" value=\"{code}\"></label></p>\n\
         {fields}<p><button type=\"submit\" name=\"action\" value=\"allow\">Allow</button>\n\
         <button type=\"submit\" name=\"action\" value=\"deny\">Deny</button></p>\n</form>",
        notice = notice(message),
        code = escape(user_code.unwrap_or_default()),
        fields = credentials_fields(),
    )
}

/// `GET /oauth/device`: the verification page.
pub(crate) async fn device_page(ApiQuery(query): ApiQuery<DeviceQuery>) -> Response {
    page(
        StatusCode::OK,
        "Sign in a device",
        &device_form(query.user_code.as_deref(), None),
    )
}

/// `POST /oauth/device`: the person allows or denies the device.
pub(crate) async fn device_submit(State(app): State<AppState>, form: FormParams) -> Response {
    let field = |name| form.get(name).ok().flatten().unwrap_or_default();
    let typed = field("user_code");
    let code = normalize_user_code(typed);
    let now = clock::now();
    let mut store = app.store();
    let device_code = store.oauth.user_codes.get(&code).cloned();
    let live = device_code.as_ref().and_then(|d| {
        store
            .oauth
            .devices
            .get(d)
            .filter(|g| g.expires_at > now && g.decision == DeviceDecision::Pending)
            .map(|_| d.clone())
    });
    let Some(device_code) = live else {
        return page(
            StatusCode::BAD_REQUEST,
            "Sign in a device",
            &device_form(
                Some(typed),
                Some(
                    "That code is unknown, expired or already used; check the code your device shows.",
                ),
            ),
        );
    };
    if field("action") == "deny" {
        if let Some(grant) = store.oauth.devices.get_mut(&device_code) {
            grant.decision = DeviceDecision::Denied;
        }
        return page(
            StatusCode::OK,
            "Device denied",
            "<p>The device was denied. You may close this window.</p>",
        );
    }
    let Some(user) = store.check_password(field("username"), field("password")) else {
        return page(
            StatusCode::UNAUTHORIZED,
            "Sign in a device",
            &device_form(Some(&code), Some("Wrong user name or password.")),
        );
    };
    if let Some(grant) = store.oauth.devices.get_mut(&device_code) {
        grant.decision = DeviceDecision::Approved {
            user: user.username.clone(),
        };
    }
    page(
        StatusCode::OK,
        "Device signed in",
        &format!(
            "<p>The device is signed in as <b>{}</b>. You may close this window and return to your device.</p>",
            escape(&user.username)
        ),
    )
}

// ----- the token endpoint's user grants -----

fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    let digest = Sha256::digest(verifier.as_bytes());
    secret::ct_eq(&URL_SAFE_NO_PAD.encode(digest), challenge)
}

fn device_error(code: &'static str, description: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, description)
}

impl Store {
    /// `grant_type=authorization_code`: the code (once), the same
    /// `redirect_uri`, and the PKCE verifier.
    pub(crate) fn code_grant(
        &mut self,
        client: &OAuthClient,
        form: &FormParams,
        issuer: &str,
        now: OffsetDateTime,
    ) -> Result<OAuthTokenResponse, ApiError> {
        let presented = form.require("code")?;
        let code = self
            .oauth
            .codes
            .remove(presented)
            .filter(|c| c.expires_at > now)
            .ok_or_else(|| {
                ApiError::invalid_grant(
                    "the authorization code is unknown, expired or already used; sign in again",
                )
            })?;
        if code.client_id != client.client_id {
            return Err(ApiError::invalid_grant(
                "the authorization code was issued to another client",
            ));
        }
        if form.get("redirect_uri")? != Some(code.redirect_uri.as_str()) {
            return Err(ApiError::invalid_grant(
                "redirect_uri differs from the one in the authorization request",
            ));
        }
        match (&code.code_challenge, form.get("code_verifier")?) {
            (Some(challenge), Some(verifier)) => {
                if !is_pkce_value(verifier) || !pkce_matches(verifier, challenge) {
                    return Err(ApiError::invalid_grant(
                        "PKCE verification failed: code_verifier does not match the code_challenge",
                    ));
                }
            }
            (Some(_), None) => {
                return Err(ApiError::invalid_request(
                    "missing form parameter: code_verifier (the request used PKCE)",
                ));
            }
            // A verifier for a code issued without a challenge: a client
            // that believes it used PKCE when it did not (RFC 9700 §2.1.1).
            (None, Some(_)) => {
                return Err(ApiError::invalid_grant(
                    "code_verifier sent, but the authorization request had no code_challenge",
                ));
            }
            (None, None) => {}
        }
        self.issue_user_tokens(
            client,
            &code.user,
            code.scope,
            code.nonce.as_deref(),
            "authorization_code",
            issuer,
            now,
        )
    }

    /// `grant_type=urn:ietf:params:oauth:grant-type:device_code` (RFC 8628 §3.4–3.5).
    pub(crate) fn device_grant(
        &mut self,
        client: &OAuthClient,
        form: &FormParams,
        issuer: &str,
        now: OffsetDateTime,
    ) -> Result<OAuthTokenResponse, ApiError> {
        let device_code = form.require("device_code")?.to_owned();
        let Some(grant) = self.oauth.devices.get_mut(&device_code) else {
            return Err(ApiError::invalid_grant(
                "the device code is unknown or was already used",
            ));
        };
        if grant.client_id != client.client_id {
            return Err(ApiError::invalid_grant(
                "the device code was issued to another client",
            ));
        }
        if grant.expires_at <= now {
            return Err(device_error(
                "expired_token",
                "the device code expired before anyone approved it; start again",
            ));
        }
        let too_soon = grant
            .last_poll
            .is_some_and(|last| now < clock::after(last, grant.interval));
        grant.last_poll = Some(now);
        match grant.decision.clone() {
            DeviceDecision::Pending if too_soon => {
                grant.interval = grant.interval.saturating_add(SLOW_DOWN_STEP);
                Err(device_error(
                    "slow_down",
                    "polling too fast; add 5 seconds to the interval",
                ))
            }
            DeviceDecision::Pending => Err(device_error(
                "authorization_pending",
                "the user has not finished at the verification page yet",
            )),
            DeviceDecision::Denied => {
                self.forget_device(&device_code);
                Err(device_error("access_denied", "the user denied the device"))
            }
            DeviceDecision::Approved { user } => {
                let scope = grant.scope.clone();
                self.forget_device(&device_code);
                self.issue_user_tokens(client, &user, scope, None, "device_code", issuer, now)
            }
        }
    }

    fn forget_device(&mut self, device_code: &str) {
        if let Some(grant) = self.oauth.devices.remove(device_code) {
            self.oauth.user_codes.remove(&grant.user_code);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn issue_user_tokens(
        &mut self,
        client: &OAuthClient,
        user: &str,
        scope: String,
        nonce: Option<&str>,
        grant: &'static str,
        issuer: &str,
        now: OffsetDateTime,
    ) -> Result<OAuthTokenResponse, ApiError> {
        if !self.oauth.users.contains_key(user) {
            return Err(ApiError::invalid_grant("the user no longer exists"));
        }
        let owner = Owner {
            user: user.to_owned(),
            family: secret::session_id(),
        };
        let refresh = client.allows("refresh_token").then(|| {
            self.oauth
                .mint_refresh(client, &scope, Some(owner.clone()), now)
        });
        let mut response =
            self.mint_oauth_access(client, grant, scope, refresh, Some(owner.clone()), now);
        response.id_token = self.id_token(client, &owner, response.scope(), nonce, issuer, now);
        Ok(response)
    }

    /// An OpenID Connect ID token when the scope asks for `openid`. It is
    /// unsigned (`alg` `none`): the emulator has no keys, and a client that
    /// receives it straight from the token endpoint over TLS may rely on TLS
    /// instead (OIDC Core §3.1.3.7).
    pub(crate) fn id_token(
        &self,
        client: &OAuthClient,
        owner: &Owner,
        scope: &str,
        nonce: Option<&str>,
        issuer: &str,
        now: OffsetDateTime,
    ) -> Option<String> {
        if !scope.split_whitespace().any(|w| w == "openid") {
            return None;
        }
        let user = self.oauth.users.get(&owner.user)?;
        let iat = now.unix_timestamp();
        let exp = clock::after(now, client.access_validity).unix_timestamp();
        let mut claims = json!({
            "iss": issuer,
            "sub": user.sub,
            "aud": client.client_id,
            "iat": iat,
            "exp": exp,
            "preferred_username": user.username,
        });
        if let Some(email) = &user.email {
            claims["email"] = json!(email);
        }
        if let Some(nonce) = nonce {
            claims["nonce"] = json!(nonce);
        }
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        Some(format!("{header}.{payload}."))
    }
}

// ----- revocation and userinfo -----

/// `POST /oauth/revoke` (RFC 7009): a refresh token ends its whole sign-in,
/// an access token just itself. Unknown tokens are not an error.
pub(crate) async fn revoke(
    State(app): State<AppState>,
    headers: HeaderMap,
    form: FormParams,
) -> Result<Response, ApiError> {
    let client = client_authentication(&headers, &form)?;
    let token = form.require("token")?.to_owned();
    let mut store = app.store();
    let client = store.authenticate_client(client)?;
    if let Some(record) = store.oauth.refresh.get(&token).cloned() {
        if record.client_id != client.client_id {
            return Err(ApiError::invalid_request(
                "the token was issued to another client",
            ));
        }
        match &record.owner {
            Some(owner) => {
                store.oauth.revoke_family(&owner.family);
            }
            None => {
                store.oauth.refresh.remove(&token);
            }
        }
    } else if let Some(access) = store.oauth.access.get(&token) {
        if access.client_id != client.client_id {
            return Err(ApiError::invalid_request(
                "the token was issued to another client",
            ));
        }
        store.oauth.access.remove(&token);
    }
    drop(store);
    Ok(token_response(StatusCode::OK, json!({})))
}

/// `GET /oauth/userinfo`: the signed-in user behind a bearer token.
pub(crate) async fn userinfo(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let bearer = authorization(&headers, "Bearer").ok_or_else(|| {
        ApiError::invalid_token("send the user's access token: Authorization: Bearer <token>")
    })?;
    let now = clock::now();
    let store = app.store();
    let user = store
        .oauth
        .access
        .get(bearer)
        .filter(|t| t.expires_at > now)
        .and_then(|t| t.owner.as_ref())
        .and_then(|o| store.oauth.users.get(&o.user))
        .ok_or_else(|| {
            ApiError::invalid_token(
                "the bearer token is not an active user token (unknown, expired, revoked, or a client token)",
            )
        })?;
    let mut info = json!({ "sub": user.sub, "preferred_username": user.username });
    if let Some(email) = &user.email {
        info["email"] = json!(email);
    }
    Ok(Json(info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_matches_the_rfc_example() {
        // RFC 7636 Appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert!(pkce_matches(
            verifier,
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        ));
        assert!(!pkce_matches(
            verifier,
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cN"
        ));
        assert!(is_pkce_value(verifier));
        assert!(!is_pkce_value("short"));
        assert!(!is_pkce_value(&"a b".repeat(20)));
    }

    #[test]
    fn user_codes_are_readable_and_typing_is_forgiving() {
        let code = user_code();
        assert_eq!(code.len(), 9);
        assert_eq!(&code[4..5], "-");
        assert!(
            code.bytes()
                .filter(|&b| b != b'-')
                .all(|b| USER_CODE_ALPHABET.contains(&b))
        );
        assert_eq!(normalize_user_code("bcdf ghjk"), "BCDF-GHJK");
        assert_eq!(normalize_user_code(&code.to_lowercase()), code);
    }

    #[test]
    fn pages_escape_what_they_echo() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        let p = AuthorizeParams {
            state: Some("\"><script>".into()),
            ..AuthorizeParams::default()
        };
        assert!(!p.hidden_fields().contains("<script>"));
        let p = AuthorizeParams {
            state: Some("a&b\"c".into()),
            client_id: Some("desktop".into()),
            ..AuthorizeParams::default()
        };
        assert_eq!(
            login_form_fields(&p.hidden_fields()),
            [
                ("client_id".to_owned(), "desktop".to_owned()),
                ("state".to_owned(), "a&b\"c".to_owned())
            ]
        );
    }
}
