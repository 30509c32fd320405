//! Shared by the `upstream_*` integration tests: a real emulator on 127.0.0.1
//! plus admin helpers that call it with reqwest directly.

#![allow(dead_code, clippy::expect_used)]

use std::time::Duration;

use regent_agent::upstream::{Http, HttpSettings};
use regent_emulator::{Emulator, EmulatorConfig};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use url::Url;

/// A running emulator and an admin bearer token for its admin API.
pub struct Server {
    pub emulator: Emulator,
    client: reqwest::Client,
    admin_bearer: String,
}

impl Server {
    pub async fn start() -> Server {
        Server::start_with(EmulatorConfig::default()).await
    }

    pub async fn start_with(config: EmulatorConfig) -> Server {
        let emulator = Emulator::start(config)
            .await
            .expect("emulator starts on 127.0.0.1");
        let client = reqwest::Client::new();
        let url = format!(
            "{}/auth/realms/regent/protocol/openid-connect/token",
            emulator.url()
        );
        let answer: Value = client
            .post(url)
            .form(&[
                ("grant_type", "password"),
                ("username", "admin"),
                ("password", "admin"),
                ("client_id", "regent-agent"),
            ])
            .send()
            .await
            .expect("admin login")
            .json()
            .await
            .expect("admin login answer");
        let admin_bearer = answer["access_token"]
            .as_str()
            .expect("admin bearer")
            .to_owned();
        Server {
            emulator,
            client,
            admin_bearer,
        }
    }

    /// The emulator's base URL, `http://127.0.0.1:PORT/`.
    pub fn url(&self) -> Url {
        Url::parse(&self.emulator.url()).expect("emulator URL")
    }

    pub fn url_for(&self, path: &str) -> Url {
        self.url().join(path).expect("joined URL")
    }

    /// An admin API call with the bearer token.
    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let request = self
            .client
            .request(method, self.url_for(path))
            .bearer_auth(&self.admin_bearer);
        send(request, body).await
    }

    /// An `/_emulator/*` call with the emulator key.
    pub async fn control(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let request = self
            .client
            .request(method, self.url_for(path))
            .header("X-Emulator-Key", self.emulator.admin_key());
        send(request, body).await
    }

    pub async fn faults(&self, spec: Value) {
        let (status, answer) = self
            .control(Method::PUT, "/_emulator/faults", Some(spec))
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }

    pub async fn counters(&self) -> Value {
        self.control(Method::GET, "/_emulator/counters", None)
            .await
            .1
    }

    /// Requests counted on `route` with `outcome` (0 when none).
    pub async fn requests(&self, route: &str, outcome: &str) -> u64 {
        self.counters().await["requests"][route][outcome]
            .as_u64()
            .unwrap_or(0)
    }

    /// Creates a registration token; returns (id, value).
    pub async fn registration_token(&self, fields: Value) -> (String, String) {
        let (status, answer) = self
            .admin(
                Method::POST,
                "/token/api/v5/registrationTokens",
                Some(json!({ "registrationToken": fields })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        let token = &answer["registrationToken"];
        (
            token["id"].as_str().expect("id").to_owned(),
            token["token"].as_str().expect("value").to_owned(),
        )
    }

    /// Registers an OAuth2 client.
    pub async fn oauth_client(&self, spec: Value) {
        let (status, answer) = self.admin(Method::POST, "/oauth/clients", Some(spec)).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
    }
}

async fn send(request: reqwest::RequestBuilder, body: Option<Value>) -> (StatusCode, Value) {
    let request = match body {
        Some(body) => request.json(&body),
        None => request,
    };
    let response = request.send().await.expect("admin request");
    let status = response.status();
    let text = response.text().await.expect("admin answer");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

pub fn http() -> Http {
    Http::new(HttpSettings::default()).expect("http client")
}

pub fn http_with_timeout(request_timeout: Duration) -> Http {
    Http::new(HttpSettings {
        request_timeout,
        ..HttpSettings::default()
    })
    .expect("http client")
}

/// A loopback URL nobody listens on.
pub async fn closed_port_url() -> Url {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    Url::parse(&format!("http://{addr}/")).expect("url")
}
