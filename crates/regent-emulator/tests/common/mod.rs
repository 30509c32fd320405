//! Shared helpers: start an emulator on an ephemeral loopback port and talk to
//! it with reqwest. Each test binary uses a subset.
#![allow(dead_code, reason = "each test binary uses a subset of the helpers")]
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed request or unexpected body must fail the test"
)]

use std::time::Duration;

use regent_agent::secret::ExposeSecret;
use regent_agent::upstream::AdminClient;
use regent_emulator::{Emulator, EmulatorConfig};
use reqwest::header::HeaderMap;
use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{Value, json};

/// A running emulator, an HTTP client and an admin bearer token.
pub struct Harness {
    pub emu: Emulator,
    pub http: Client,
    pub admin: String,
}

/// A refusal as the client sees it.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub error: String,
    pub description: String,
}

impl Harness {
    pub async fn start() -> Self {
        Self::with(EmulatorConfig::default()).await
    }

    pub async fn with(config: EmulatorConfig) -> Self {
        let emu = Emulator::start(config).await.unwrap();
        let http = Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let mut harness = Self {
            emu,
            http,
            admin: String::new(),
        };
        harness.admin = harness.admin_login().await;
        harness
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.emu.url())
    }

    pub fn realm_token_url(&self) -> String {
        self.url("/auth/realms/regent/protocol/openid-connect/token")
    }

    /// The admin bearer token, from the one admin client's login (discovery,
    /// then the password grant at the realm token endpoint).
    async fn admin_login(&self) -> String {
        let admin = AdminClient::login_to(&self.emu.url(), "admin", "admin")
            .await
            .unwrap();
        admin.bearer().expose_secret().to_owned()
    }

    /// An admin request with the bearer token; returns the response.
    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Response {
        let mut req = self
            .http
            .request(method, self.url(path))
            .bearer_auth(&self.admin);
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send().await.unwrap()
    }

    /// An admin request that must succeed with `status`; returns its JSON.
    pub async fn admin_ok(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        status: StatusCode,
    ) -> Value {
        let resp = self.admin(method, path, body).await;
        assert_eq!(resp.status(), status, "{}", resp.text().await.unwrap());
        if status == StatusCode::NO_CONTENT {
            Value::Null
        } else {
            resp.json().await.unwrap()
        }
    }

    /// Creates a registration token; returns the `registrationToken` object.
    pub async fn registration_token(&self, fields: Value) -> Value {
        let body = json!({ "registrationToken": fields });
        let created = self
            .admin_ok(
                Method::POST,
                "/token/api/v5/registrationTokens",
                Some(body),
                StatusCode::CREATED,
            )
            .await;
        created["registrationToken"].clone()
    }

    /// A registration token's current record.
    pub async fn registration_token_record(&self, id: &str) -> Value {
        let path = format!("/token/api/v5/registrationTokens/{id}");
        self.admin_ok(Method::GET, &path, None, StatusCode::OK)
            .await["registrationToken"]
            .clone()
    }

    /// Redeems `token` for `identifier` with extra device details.
    pub async fn redeem_with(&self, token: &str, details: Value) -> Response {
        self.http
            .post(self.url("/token/api/v5/authTokens"))
            .header("Authorization", format!("Basic {token}"))
            .json(&json!({ "authToken": details }))
            .send()
            .await
            .unwrap()
    }

    pub async fn redeem(&self, token: &str, identifier: &str) -> Response {
        self.redeem_with(token, json!({ "identifier": identifier }))
            .await
    }

    /// Redeems and expects success (201 or 200); returns the `authToken` object.
    pub async fn redeem_ok(&self, token: &str, identifier: &str) -> Value {
        let resp = self.redeem(token, identifier).await;
        assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
        resp.json::<Value>().await.unwrap()["authToken"].clone()
    }

    /// Issues a one-count registration token and redeems it for `identifier`;
    /// returns the `authToken` object.
    pub async fn enroll(&self, identifier: &str) -> Value {
        let token = self.registration_token(json!({ "count": 1 })).await;
        self.redeem_ok(token["token"].as_str().unwrap(), identifier)
            .await
    }

    pub async fn refresh(&self, refresh_token: &str) -> Response {
        self.http
            .post(self.realm_token_url())
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
                ("client_id", "regent-agent"),
            ])
            .send()
            .await
            .unwrap()
    }

    /// Refreshes and expects success; returns the token response.
    pub async fn refresh_ok(&self, refresh_token: &str) -> Value {
        let resp = self.refresh(refresh_token).await;
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json().await.unwrap()
    }

    /// A request to `/_emulator/*` with the admin key.
    pub async fn control(&self, method: Method, path: &str, body: Option<Value>) -> Response {
        let mut req = self
            .http
            .request(method, self.url(path))
            .header("X-Emulator-Key", self.emu.admin_key());
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send().await.unwrap()
    }

    pub async fn control_ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let resp = self.control(method, path, body).await;
        assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
        if resp.status() == StatusCode::NO_CONTENT {
            Value::Null
        } else {
            resp.json().await.unwrap()
        }
    }

    pub async fn counters(&self) -> Value {
        self.control_ok(Method::GET, "/_emulator/counters", None)
            .await
    }

    pub async fn introspect(&self, token: &str) -> Value {
        self.http
            .get(self.url("/_emulator/introspect"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Registers OAuth2 clients (one object or an array).
    pub async fn oauth_clients(&self, clients: Value) -> Value {
        self.admin_ok(
            Method::POST,
            "/oauth/clients",
            Some(clients),
            StatusCode::CREATED,
        )
        .await
    }

    /// `client_credentials` with HTTP Basic client authentication.
    pub async fn client_credentials(&self, client_id: &str, secret: &str) -> Response {
        self.http
            .post(self.url("/oauth/token"))
            .basic_auth(client_id, Some(secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap()
    }

    pub async fn idp_status(&self) -> StatusCode {
        self.http
            .get(self.url("/token/api/v5/idpConfigurations"))
            .send()
            .await
            .unwrap()
            .status()
    }
}

/// Reads an RFC 6749 error response, checking its shape.
pub async fn refusal(resp: Response) -> Refusal {
    let status = resp.status();
    let headers = resp.headers().clone();
    assert!(
        headers
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap().starts_with("application/json")),
        "error responses are JSON: {headers:?}"
    );
    let body: Value = resp.json().await.unwrap();
    Refusal {
        status,
        headers,
        error: body["error"].as_str().unwrap().to_owned(),
        description: body["error_description"].as_str().unwrap().to_owned(),
    }
}

/// The `Retry-After` header in seconds.
pub fn retry_after(headers: &HeaderMap) -> u64 {
    headers["retry-after"].to_str().unwrap().parse().unwrap()
}

/// Reads a successful token response, checking the RFC 6749 §5.1 cache header.
pub async fn token_of(resp: Response) -> Value {
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    resp.json().await.unwrap()
}
