//! Shared by the `upstream_*` integration tests: a real emulator on 127.0.0.1
//! plus admin helpers on the one admin client ([`AdminClient`]).

#![allow(dead_code, clippy::expect_used)]

use std::time::Duration;

use regent_agent::secret::ExposeSecret;
use regent_agent::upstream::{AdminClient, Http, HttpSettings};
use regent_emulator::{Emulator, EmulatorConfig};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use url::Url;

/// A running emulator and an admin session on its admin API.
pub struct Server {
    pub emulator: Emulator,
    client: reqwest::Client,
    admin: AdminClient,
}

impl Server {
    pub async fn start() -> Server {
        Server::start_with(EmulatorConfig::default()).await
    }

    pub async fn start_with(config: EmulatorConfig) -> Server {
        let emulator = Emulator::start(config.clone())
            .await
            .expect("emulator starts on 127.0.0.1");
        let admin = AdminClient::login_to(
            &emulator.url(),
            &config.admin_username,
            &config.admin_password,
        )
        .await
        .expect("admin login");
        let server = Server {
            emulator,
            client: reqwest::Client::new(),
            admin,
        };
        // Each test counts its own requests, not the login's.
        let (status, answer) = server
            .control(Method::POST, "/_emulator/counters/reset", None)
            .await;
        assert!(status.is_success(), "{answer}");
        server
    }

    /// The emulator's base URL, `http://127.0.0.1:PORT/`.
    pub fn url(&self) -> Url {
        Url::parse(&self.emulator.url()).expect("emulator URL")
    }

    pub fn url_for(&self, path: &str) -> Url {
        self.url().join(path).expect("joined URL")
    }

    /// An admin API call, whatever its status.
    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let reply = self
            .admin
            .send(method, path, body.as_ref())
            .await
            .expect("admin request");
        (
            StatusCode::from_u16(reply.status).expect("HTTP status"),
            reply.body,
        )
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
        let created = self
            .admin
            .create_registration_token(fields)
            .await
            .expect("registration token created");
        (
            created.record["id"].as_str().expect("id").to_owned(),
            created.value.expose_secret().to_owned(),
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
