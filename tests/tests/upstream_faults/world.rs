//! The world of one case: emulator, proxy, agent, clients.

use super::*;

/// Everything the agent logs, for the secret scan.
#[derive(Clone, Default)]
pub(crate) struct Capture(pub(crate) Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(crate) fn log_capture() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = Capture::default();
        let writer = capture.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("regent_agent=debug")
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .try_init();
        capture
    })
}

pub(crate) struct World {
    pub(crate) profile: Profile,
    pub(crate) server: Server,
    pub(crate) proxy: Proxy,
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) socket: PathBuf,
    pub(crate) stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub(crate) task: Option<tokio::task::JoinHandle<regent_agent::Result<()>>>,
    pub(crate) client: Client,
    /// The registration token or client secret.
    pub(crate) secret: String,
    pub(crate) registration_id: Option<String>,
    /// Messages the client saw, for the secret scan.
    pub(crate) seen: Vec<String>,
}

impl World {
    pub(crate) async fn start(profile: Profile, rotate: bool) -> World {
        World::start_with(profile, rotate, REQUEST_TIMEOUT).await
    }

    pub(crate) async fn start_with(profile: Profile, rotate: bool, request_timeout: u64) -> World {
        let server = Server::start(EmulatorConfig {
            access_token_lifespan: Duration::from_secs(LIFETIME),
            rotate_refresh_tokens: rotate,
            ..EmulatorConfig::default()
        })
        .await;
        let proxy = Proxy::start(server.emulator.addr()).await.unwrap();
        let (secret, registration_id, server_section) = match profile {
            Profile::Sentinel => {
                let (id, token) = server.mint(json!({"count": 3})).await;
                let section = format!(
                    "[server]\nprofile = \"sentinel\"\nurl = \"{}\"\n",
                    proxy.url()
                );
                (token, Some(id), section)
            }
            Profile::OAuth2 => {
                oauth_client(&server).await;
                let section = format!(
                    "[server]\nprofile = \"oauth2\"\ntoken_url = \"{}/oauth/token\"\nclient_id = \"{CLIENT_ID}\"\n",
                    proxy.url()
                );
                (CLIENT_SECRET.to_owned(), None, section)
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let socket = regent_tests::endpoint(dir.path());
        let text = format!(
            "{server_section}connect_timeout = {CONNECT_TIMEOUT}\nrequest_timeout = {request_timeout}\n\
             [store]\nkind = \"file\"\n[state]\ndir = {}\n\
             [refresh]\nbackoff_min = 1\nbackoff_max = 2\n[ipc]\nsocket = {}\n",
            regent_tests::toml_path(&dir.path().join("state")),
            regent_tests::toml_path(&socket)
        );
        let config = Config::parse(&text, std::path::Path::new("agent.toml")).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(regent_agent::daemon::run(config, async {
            let _ = stopped.await;
        }));
        let client = connect(&socket).await;
        World {
            profile,
            server,
            proxy,
            _dir: dir,
            socket,
            stop: Some(stop),
            task: Some(task),
            client,
            secret,
            registration_id,
            seen: Vec::new(),
        }
    }

    /// The path the proxy faults for this profile and phase.
    pub(crate) fn route_path(&self, phase: Phase) -> &'static str {
        match (self.profile, phase) {
            (Profile::Sentinel, Phase::Enroll) => "/token/api/v5/authTokens",
            (Profile::Sentinel, Phase::Renew) => "/openid-connect/token",
            (Profile::OAuth2, _) => "/oauth/token",
        }
    }

    pub(crate) fn route_name(&self, phase: Phase) -> &'static str {
        match (self.profile, phase) {
            (Profile::Sentinel, Phase::Enroll) => "redeem",
            (Profile::Sentinel, Phase::Renew) => "realm_token",
            (Profile::OAuth2, _) => "oauth_token",
        }
    }

    pub(crate) async fn inject(&self, inject: &Inject, phase: Phase) {
        match inject {
            Inject::Proxy(fault) => self.proxy.set_for(self.route_path(phase), fault.clone()),
            Inject::Emulator(spec) => {
                let mut spec = spec.clone();
                spec["routes"] = json!([self.route_name(phase)]);
                self.server
                    .control(Method::PUT, "/_emulator/faults", Some(spec))
                    .await;
            }
        }
    }

    pub(crate) async fn clear(&self) {
        self.proxy.clear();
        self.server
            .control(Method::DELETE, "/_emulator/faults", None)
            .await;
    }

    pub(crate) async fn enroll(&mut self) -> Result<(), regent_client::Error> {
        let result = self.client.enroll(self.secret.clone(), false).await;
        if let Err(e) = &result {
            self.seen.push(e.message.clone());
        }
        result.map(|_| ())
    }

    pub(crate) async fn token(
        &mut self,
        min_valid: Duration,
    ) -> Result<Token, regent_client::Error> {
        let result = self.client.token(min_valid).await;
        if let Err(e) = &result {
            self.seen.push(e.message.clone());
        }
        result
    }

    /// `status` over a second connection, bounded: the agent must answer it
    /// whatever its upstream is doing.
    pub(crate) async fn status(&mut self) -> Result<Value, String> {
        let started = Instant::now();
        let status = bounded("status over IPC", IPC_BOUND, async {
            connect(&self.socket).await.status().await
        })
        .await?
        .map_err(|e| format!("status failed: {} {}", e.code, e.message))?;
        // Kept as the JSON document, which `seen` records for the report.
        let status = serde_json::to_value(&status).map_err(|e| e.to_string())?;
        if started.elapsed() > IPC_BOUND / 2 {
            return Err(format!("status took {:?}", started.elapsed()));
        }
        self.seen.push(status.to_string());
        Ok(status)
    }

    pub(crate) async fn last_error_code(&mut self) -> Result<Option<ErrorCode>, String> {
        let status = self.status().await?;
        Ok(status["slots"][0]["last_error_code"]
            .as_str()
            .and_then(ErrorCode::from_name))
    }

    pub(crate) async fn used_count(&self) -> u64 {
        match &self.registration_id {
            Some(id) => self.server.registration(id).await["usedCount"]
                .as_u64()
                .unwrap_or(0),
            None => 0,
        }
    }

    /// Every secret of this world: what we enrolled with, and every token that
    /// crossed the proxy (in either direction).
    pub(crate) fn secrets(&self) -> Vec<String> {
        let mut out = vec![self.secret.clone(), PLANTED.to_owned()];
        if self.profile == Profile::OAuth2 {
            out.push(
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{CLIENT_ID}:{CLIENT_SECRET}")),
            );
        }
        for ex in self.proxy.exchanges() {
            for bytes in [&ex.request, &ex.answer] {
                let text = String::from_utf8_lossy(bytes);
                collect_token_values(&text, &mut out);
            }
        }
        out.retain(|s| s.len() >= 12);
        out.sort();
        out.dedup();
        out
    }

    /// Stops the agent; it must shut down cleanly and promptly.
    pub(crate) async fn stop(mut self) -> Result<(), String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            bounded("agent shutdown", Duration::from_secs(20), task)
                .await?
                .map_err(|e| format!("agent task panicked: {e}"))?
                .map_err(|e| format!("agent stopped with an error: {e}"))?;
        }
        Ok(())
    }
}

/// Values of `access_token` / `refresh_token` in JSON answers and form bodies.
pub(crate) fn collect_token_values(text: &str, out: &mut Vec<String>) {
    for key in ["access_token", "refresh_token"] {
        for (i, _) in text.match_indices(key) {
            let rest = &text[i + key.len()..];
            let rest = rest.trim_start_matches(['"', ':', '=', ' ']);
            let value: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'))
                .collect();
            if value.len() >= 12 {
                out.push(value);
            }
        }
    }
}

pub(crate) async fn oauth_client(server: &Server) {
    server
        .admin(
            Method::POST,
            "/oauth/clients",
            json!({"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET,
                   "accessTokenValidity": LIFETIME,
                   "authorizedGrantTypes": ["client_credentials", "refresh_token"]}),
        )
        .await;
    // Multi-token mode: every request mints a fresh token.
    server
        .admin(
            Method::PUT,
            "/oauth/customers/faults",
            json!({"id": "faults", "applicationClients": [CLIENT_ID],
                   "multitokenConfig": {"clientCredentialsMultiTokenConfig": {"maxActiveTokensAllowed": 200}}}),
        )
        .await;
}

pub(crate) async fn connect(socket: &std::path::Path) -> Client {
    let started = Instant::now();
    loop {
        let options = ClientOptions::new("network-faults")
            .socket(socket)
            .request_timeout(Duration::from_secs(120));
        match Client::connect(options).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "agent socket not ready: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// A hang detector: `what` must complete within `limit`.
pub(crate) async fn bounded<T>(
    what: &str,
    limit: Duration,
    f: impl Future<Output = T>,
) -> Result<T, String> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| format!("HANG: {what} did not complete within {limit:?}"))
}
