//! The license server of one case: an in-process emulator and an admin
//! session on it (the one admin client, `regent_agent::upstream::AdminClient`).

use regent_agent::secret::ExposeSecret;
use regent_agent::upstream::AdminClient;
use regent_emulator::Emulator;

use super::*;

pub(crate) struct Server {
    pub(crate) emulator: Emulator,
    admin: AdminClient,
    http: reqwest::Client,
}

impl Server {
    pub(crate) async fn start(config: EmulatorConfig) -> Server {
        let emulator = Emulator::start(config.clone())
            .await
            .expect("emulator starts");
        let admin = AdminClient::login_to(
            &emulator.url(),
            &config.admin_username,
            &config.admin_password,
        )
        .await
        .expect("admin login");
        Server {
            emulator,
            admin,
            http: reqwest::Client::new(),
        }
    }

    /// Creates a registration token; returns (id, value).
    pub(crate) async fn mint(&self, fields: Value) -> (String, String) {
        let created = self
            .admin
            .create_registration_token(fields)
            .await
            .expect("registration token");
        let id = created.record["id"].as_str().unwrap().to_owned();
        (id, created.value.expose_secret().to_owned())
    }

    /// A registration token's record.
    pub(crate) async fn registration(&self, id: &str) -> Value {
        self.admin.registration_token(id).await.expect("record")
    }

    /// An admin call that must succeed (OAuth2 clients and customers).
    pub(crate) async fn admin(&self, method: Method, path: &str, body: Value) -> Value {
        self.admin
            .call(method, path, Some(&body))
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// An `/_emulator/*` call with the control key; it must succeed.
    pub(crate) async fn control(&self, method: Method, path: &str, body: Option<Value>) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.emulator.url()))
            .header("X-Emulator-Key", self.emulator.admin_key());
        if let Some(body) = body {
            request = request.json(&body);
        }
        let status = request.send().await.unwrap().status();
        assert!(status.is_success(), "control call {path}: {status}");
    }

    /// Whether the emulator considers an access token active.
    pub(crate) async fn introspect(&self, token: &str) -> Value {
        self.http
            .get(format!("{}/_emulator/introspect", self.emulator.url()))
            .header("X-Emulator-Key", self.emulator.admin_key())
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}
