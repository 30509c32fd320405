//! Shared helpers for the agent's integration tests: a real emulator on
//! loopback, its admin API, and agent configs in temporary directories.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod platform;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use regent_agent::agent::Agent;
use regent_agent::config::Config;
use regent_agent::engine::{Event, SlotState};
use regent_agent::secret::ExposeSecret;
use regent_agent::upstream::AdminClient;
use regent_emulator::{Emulator, EmulatorConfig};
use serde_json::Value;

/// A running emulator, an HTTP client for its control API and an admin
/// session on its admin API.
pub struct Server {
    pub emulator: Emulator,
    pub http: reqwest::Client,
    pub admin: AdminClient,
}

impl Server {
    pub async fn start(config: EmulatorConfig) -> Server {
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
            http: reqwest::Client::new(),
            admin,
        }
    }

    pub fn url(&self) -> String {
        self.emulator.url()
    }

    pub async fn admin_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let reply = self
            .admin
            .send(method, path, body.as_ref())
            .await
            .expect("admin request");
        (reply.status, reply.body)
    }

    pub async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url()))
            .header("X-Emulator-Key", self.emulator.admin_key());
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        assert!(
            resp.status().is_success(),
            "control call {path}: {}",
            resp.status()
        );
        resp.json().await.unwrap_or(Value::Null)
    }

    /// Mints a registration token; returns (id, secret value).
    pub async fn mint(&self, fields: Value) -> (String, String) {
        let created = self
            .admin
            .create_registration_token(fields)
            .await
            .expect("mint");
        (
            created.record["id"].as_str().unwrap().to_owned(),
            created.value.expose_secret().to_owned(),
        )
    }

    pub async fn registration(&self, id: &str) -> Value {
        self.admin
            .registration_token(id)
            .await
            .expect("registration token")
    }

    pub async fn auth_tokens(&self) -> Vec<Value> {
        self.admin.auth_tokens(None).await.expect("auth tokens")
    }

    pub async fn counters(&self) -> Value {
        self.control(reqwest::Method::GET, "/_emulator/counters", None)
            .await
    }

    /// Number of requests to a route with an outcome (0 when absent).
    pub async fn count(&self, route: &str, outcome: &str) -> u64 {
        self.counters().await["requests"][route][outcome]
            .as_u64()
            .unwrap_or(0)
    }

    /// Total requests to a route, whatever the outcome.
    pub async fn total(&self, route: &str) -> u64 {
        self.counters().await["requests"][route]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0)
    }

    /// Whether the emulator considers an access token active.
    pub async fn introspect(&self, token: &str) -> Value {
        self.http
            .get(format!("{}/_emulator/introspect", self.url()))
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

/// An emulator config with short tokens for fast renewal tests.
pub fn short_tokens(seconds: u64) -> EmulatorConfig {
    EmulatorConfig {
        access_token_lifespan: Duration::from_secs(seconds),
        ..EmulatorConfig::default()
    }
}

/// Agent config text for the sentinel profile with a file store in `dir`.
pub fn sentinel_config(url: &str, dir: &Path, refresh: &str) -> Config {
    let text = format!(
        "[server]\nprofile = \"sentinel\"\nurl = \"{url}\"\nrequest_timeout = 5\nconnect_timeout = 2\n\
         [store]\nkind = \"file\"\n[state]\ndir = {}\n[refresh]\n{refresh}\n",
        platform::toml_path(dir)
    );
    Config::parse(&text, Path::new("test.toml")).unwrap()
}

/// Agent config for the oauth2 profile with a file store in `dir`.
pub fn oauth2_config(
    url: &str,
    client_id: &str,
    dir: &Path,
    extra_server: &str,
    refresh: &str,
) -> Config {
    let text = format!(
        "[server]\nprofile = \"oauth2\"\ntoken_url = \"{url}/oauth/token\"\nclient_id = \"{client_id}\"\nrequest_timeout = 5\nconnect_timeout = 2\n{extra_server}\n\
         [store]\nkind = \"file\"\n[state]\ndir = {}\n[refresh]\n{refresh}\n",
        platform::toml_path(dir)
    );
    Config::parse(&text, Path::new("test.toml")).unwrap()
}

/// Waits (with a timeout) until the agent reaches `state`.
pub async fn wait_for_state(agent: &Arc<Agent>, state: SlotState, timeout: Duration) {
    let mut events = agent.events();
    let deadline = Instant::now() + timeout;
    loop {
        if agent.engine_status().state == state {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Ok(Event::State { to, .. })) if to == state => return,
            Ok(_) => {}
            Err(_) => panic!(
                "agent did not reach {state:?} within {timeout:?}; status: {:?}",
                agent.engine_status()
            ),
        }
    }
}

/// Waits until `n` renewals have been announced.
pub async fn wait_for_renewals(agent: &Arc<Agent>, n: usize, timeout: Duration) {
    let mut events = agent.events();
    let deadline = Instant::now() + timeout;
    let mut seen = 0;
    while seen < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Ok(Event::Renewed { .. })) => seen += 1,
            Ok(_) => {}
            Err(_) => panic!("only {seen} of {n} renewals within {timeout:?}"),
        }
    }
}

pub fn secret(s: &str) -> regent_agent::secret::SecretString {
    regent_agent::secret::secret(s.to_owned())
}

/// An agent serving a real socket in this process (`daemon::run`), stopped on
/// demand. `extra` is appended to a config whose `[ipc] socket` is set.
pub struct RunningAgent {
    pub socket: std::path::PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<regent_agent::Result<()>>>,
}

impl RunningAgent {
    /// Starts an agent with a file store in `dir`; `server` is the `[server]`
    /// section, `extra` more sections (the `[ipc]` section gets the socket).
    pub async fn start(dir: &Path, server: &str, extra: &str) -> RunningAgent {
        let socket = platform::endpoint(dir);
        let ipc = format!("[ipc]\nsocket = {}", platform::toml_path(&socket));
        let extra = if extra.contains("[ipc]") {
            extra.replace("[ipc]", &ipc)
        } else {
            format!("{extra}\n{ipc}\n")
        };
        let text = format!(
            "{server}\nrequest_timeout = 5\n[store]\nkind = \"file\"\n[state]\ndir = {}\n{extra}\n",
            platform::toml_path(&dir.join("state"))
        );
        let config = Config::parse(&text, Path::new("agent.toml")).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(regent_agent::daemon::run(config, async {
            let _ = stopped.await;
        }));
        let started = Instant::now();
        while platform::connect_raw(&socket).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "agent socket not ready"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        RunningAgent {
            socket,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the agent and checks it shut down cleanly.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// Client options for this agent's socket.
    pub fn options(&self, app: &str, instance: Option<&str>) -> regent_client::ClientOptions {
        let mut o = regent_client::ClientOptions::new(app).socket(&self.socket);
        if let Some(i) = instance {
            o = o.instance(i);
        }
        o
    }
}

/// The `[server]` section of a sentinel-profile agent.
pub fn sentinel_server(url: &str) -> String {
    format!("[server]\nprofile = \"sentinel\"\nurl = \"{url}\"")
}
