//! `regent demo`: the whole product on one machine in under a minute — the
//! embedded emulator, an agent with a temporary state directory, enrollment,
//! app instances fetching and subscribing, renewals, then revocation.
//! `regent demo --user` signs a user in instead (the browser flow, with a
//! headless browser stand-in filling in the emulator's login form).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use regent_client::{Client, ClientOptions, SubscriptionEvent};
use regent_proto::ErrorCode;
use tokio::sync::{mpsc, oneshot};

use crate::emulator;
use crate::failure::internal;
use regent_client::Error;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep secrets in the OS keychain instead of a temporary file store
    /// (needs a running Secret Service / Keychain).
    #[arg(long)]
    pub keychain: bool,
    /// Access-token lifetime at the embedded emulator, in seconds.
    #[arg(long, default_value_t = 6)]
    pub token_lifetime: u64,
    /// Renewals to show before revoking the auth token.
    #[arg(long, default_value_t = 3)]
    pub renewals: u32,
    /// Sign a user in (oauth2 profile, browser flow with PKCE; a headless
    /// browser stand-in signs in as "alice") instead of enrolling the device
    /// with a registration token.
    #[arg(long)]
    pub user: bool,
}

/// The demo's user and public client (`regent demo --user`).
const DEMO_USER: &str = "alice";
const DEMO_PASSWORD: &str = "wonderland";
const DEMO_CLIENT: &str = "regent-demo";

/// Prints one progress line, stamped with the seconds since the demo began.
#[derive(Clone)]
struct Progress(Instant);

impl Progress {
    fn say(&self, who: &str, what: impl AsRef<str>) {
        println!(
            "[{:>5.1}s] {who:<10} {}",
            self.0.elapsed().as_secs_f64(),
            what.as_ref()
        );
    }
}

/// A short, non-reversible tag for a token, so renewals are visible without
/// printing the secret.
fn tag(secret: &str) -> String {
    format!(
        "#{:04x}",
        regent_agent::secret::fingerprint(secret) & 0xffff
    )
}

pub async fn run(args: DemoArgs) -> Result<(), Error> {
    let progress = Progress(Instant::now());
    tokio::select! {
        result = demo(&args, &progress) => result,
        _ = tokio::signal::ctrl_c() => {
            progress.say("demo", "interrupted; cleaning up");
            Ok(())
        }
    }
}

async fn demo(args: &DemoArgs, progress: &Progress) -> Result<(), Error> {
    let lifetime = args.token_lifetime.max(3);
    let (users, public_clients) = if args.user {
        (
            vec![regent_emulator::UserSpec {
                username: DEMO_USER.to_owned(),
                password: DEMO_PASSWORD.to_owned(),
                email: Some(format!("{DEMO_USER}@example.com")),
            }],
            vec![DEMO_CLIENT.to_owned()],
        )
    } else {
        (Vec::new(), Vec::new())
    };
    let emulator = regent_emulator::Emulator::start(regent_emulator::EmulatorConfig {
        access_token_lifespan: Duration::from_secs(lifetime),
        users,
        public_clients,
        ..regent_emulator::EmulatorConfig::default()
    })
    .await
    .map_err(|e| internal("cannot start the emulator", e))?;
    let url = emulator.url();
    progress.say(
        "emulator",
        format!("license server listening on {url} ({lifetime}s access tokens)"),
    );

    let base = regent_agent::upstream::admin_url(&url)?;
    let admin = crate::admin::session_login(
        &base,
        &regent_agent::upstream::AdminCredentials::new("admin", emulator::admin_password()),
    )
    .await?;
    let expiry = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let expiry = expiry
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| internal("cannot format the expiry", e))?;
    let registration = if args.user {
        None
    } else {
        let value = admin
            .create_registration_token(serde_json::json!({"count": 3, "expiryDate": expiry}))
            .await?
            .value;
        progress.say(
            "admin",
            "minted a registration token: count 3, expires in 1 hour",
        );
        Some(value)
    };

    let dir = tempfile::Builder::new()
        .prefix("regent-demo-")
        .tempdir()
        .map_err(|e| internal("cannot create a temporary directory", e))?;
    let socket = demo_socket(dir.path());
    let config = demo_config(&url, dir.path(), &socket, args.keychain, args.user)?;
    let (stop_agent, agent_stopped) = oneshot::channel::<()>();
    let secrets = if args.keychain {
        "secrets in the OS keychain".to_owned()
    } else {
        let store = config.store_path().map_or_else(
            |_| dir.path().display().to_string(),
            |p| p.display().to_string(),
        );
        if cfg!(windows) {
            format!("secrets in {store} (readable by this account only)")
        } else {
            format!("secrets in {store} (mode 0600)")
        }
    };
    let agent = tokio::spawn(regent_agent::daemon::run(config, async {
        let _ = agent_stopped.await;
    }));
    let client = connect_when_ready(&socket).await?;
    progress.say(
        "agent",
        format!("listening on {}, {secrets}", socket.display()),
    );

    let auth_token_id = if let Some(registration) = registration {
        let enrolled = client.enroll(registration, false).await?;
        progress.say(
            "agent",
            format!(
                "enrolled: registration token redeemed once for auth token {} (identifier {})",
                enrolled.auth_token_id.as_deref().unwrap_or("?"),
                enrolled.identifier
            ),
        );
        Some(enrolled.auth_token_id.unwrap_or_default())
    } else {
        sign_in(&client, progress).await?;
        None
    };

    // App instances: two subscribe, one asks on every "request".
    let (renewed_tx, mut renewed_rx) = mpsc::unbounded_channel::<()>();
    let (revoked_tx, mut revoked_rx) = mpsc::unbounded_channel::<String>();
    let mut apps = Vec::new();
    for name in ["editor#1", "editor#2"] {
        let client = app_client(&socket, name).await?;
        let mut subscription = client.subscribe(Duration::from_secs(2)).await?;
        let (p, renewed, revoked) = (progress.clone(), renewed_tx.clone(), revoked_tx.clone());
        let name = name.to_owned();
        apps.push(tokio::spawn(async move {
            let _client = client;
            while let Ok(event) = subscription.next().await {
                match event {
                    SubscriptionEvent::Token(token) => {
                        p.say(
                            &name,
                            format!(
                                "got token {} valid {}s",
                                tag(token.secret()),
                                token.remaining().as_secs()
                            ),
                        );
                        let _ = renewed.send(());
                    }
                    SubscriptionEvent::State { state, error } => {
                        let why = error
                            .map(|e| format!(": {} ({})", e.message, e.code))
                            .unwrap_or_default();
                        p.say(&name, format!("told: agent is {state}{why}"));
                        if state == "revoked" {
                            let _ = revoked.send(name.clone());
                            return;
                        }
                    }
                }
            }
        }));
    }
    let worker = app_client(&socket, "render").await?;
    let p = progress.clone();
    apps.push(tokio::spawn(async move {
        let mut last = String::new();
        loop {
            match worker.token(Duration::from_secs(1)).await {
                Ok(token) => {
                    let t = tag(token.secret());
                    if t != last {
                        p.say("render", format!("requests now use token {t}"));
                        last = t;
                    }
                }
                Err(e) => {
                    p.say(
                        "render",
                        format!("cannot get a token: {} ({})", e.message, e.code),
                    );
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }));

    // Each subscriber reports each renewal: wait for N renewals seen by both.
    let wanted = 2 * (args.renewals as usize + 1);
    let deadline = Duration::from_secs(lifetime * u64::from(args.renewals + 2) + 10);
    let mut seen = 0;
    let started = Instant::now();
    while seen < wanted {
        let left = deadline.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, renewed_rx.recv()).await {
            Ok(Some(())) => seen += 1,
            _ => {
                return Err(Error::new(
                    ErrorCode::Timeout,
                    "renewals did not arrive in time",
                ));
            }
        }
    }

    match &auth_token_id {
        Some(auth_id) => {
            progress.say(
                "admin",
                format!("deleting auth token {auth_id} on the license server (revocation)"),
            );
            admin.revoke_auth_token(auth_id).await?;
        }
        None => {
            progress.say(
                "admin",
                format!("deleting user {DEMO_USER} at the identity provider (revocation)"),
            );
            delete_demo_user(&url, emulator.admin_key()).await?;
        }
    }
    let mut told = 0;
    while told < 2 {
        match tokio::time::timeout(Duration::from_secs(lifetime * 2 + 5), revoked_rx.recv()).await {
            Ok(Some(_)) => told += 1,
            _ => {
                return Err(Error::new(
                    ErrorCode::Timeout,
                    "apps were not told about the revocation in time",
                ));
            }
        }
    }
    let status = client.status().await?;
    progress.say(
        "agent",
        format!(
            "state {}; {} without a restart",
            status.slots.first().map_or("?", |s| s.state.as_str()),
            if args.user {
                "signing in again (`regent login`) would serve tokens again"
            } else {
                "a new registration token (`regent enroll`) would re-enroll"
            }
        ),
    );

    for app in apps {
        app.abort();
    }
    let _ = stop_agent.send(());
    match tokio::time::timeout(Duration::from_secs(10), agent).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(e),
        _ => {
            return Err(Error::new(
                ErrorCode::Timeout,
                "the agent did not stop in time",
            ));
        }
    }
    emulator.shutdown().await;
    progress.say(
        "demo",
        "done: agent stopped, socket removed, temporary state deleted",
    );
    Ok(())
}

/// The browser sign-in, with a headless stand-in for the person's browser.
async fn sign_in(client: &Client, progress: &Progress) -> Result<(), Error> {
    let p = progress.clone();
    let done = crate::login::browser_login(client, None, false, Duration::from_secs(30), |url| {
        p.say(
            "agent",
            "sign-in started: PKCE (S256) and state from the CSPRNG, redirect to 127.0.0.1",
        );
        tokio::spawn(headless_browser(url.to_owned(), p.clone()));
    })
    .await?;
    progress.say(
        "agent",
        format!(
            "signed in as {}; scope {}; the agent holds the refresh token and renews it",
            done.user
                .as_ref()
                .map_or_else(|| "?".to_owned(), ToString::to_string),
            done.scope.as_deref().unwrap_or("-")
        ),
    );
    Ok(())
}

/// What a person's browser does: opens the page, fills in the login form,
/// follows the redirect to regent's loopback listener.
async fn headless_browser(url: String, progress: Progress) {
    let step = async {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let page = http
            .get(&url)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        progress.say(
            "browser",
            format!("opened the sign-in page; signing in as {DEMO_USER}"),
        );
        let mut form = regent_emulator::login_form_fields(&page);
        form.extend([
            ("username".to_owned(), DEMO_USER.to_owned()),
            ("password".to_owned(), DEMO_PASSWORD.to_owned()),
            ("action".to_owned(), "allow".to_owned()),
        ]);
        let submit = reqwest::Url::parse(&url)?.join("/oauth/authorize")?;
        let answer = http.post(submit).form(&form).send().await?;
        let location = answer
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_default();
        progress.say("browser", "redirected to regent's listener on 127.0.0.1");
        http.get(location).send().await?;
        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    };
    if let Err(e) = step.await {
        progress.say("browser", format!("the sign-in page failed: {e}"));
    }
}

/// Deletes the demo user at the emulator (its control API), which ends the
/// user's sign-in there.
async fn delete_demo_user(url: &str, key: &str) -> Result<(), Error> {
    let response = reqwest::Client::new()
        .delete(format!("{url}/_emulator/users/{DEMO_USER}"))
        .header("x-emulator-key", key)
        .send()
        .await
        .map_err(|e| internal("cannot reach the emulator", e))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(internal(
            "the emulator refused to delete the demo user",
            response.status(),
        ))
    }
}

/// Where the demo's agent listens: a socket in the demo's directory, or on
/// Windows a named pipe of this process's own (a path is not a pipe name).
fn demo_socket(dir: &Path) -> PathBuf {
    if cfg!(windows) {
        PathBuf::from(format!(r"\\.\pipe\regent-demo-{}", std::process::id()))
    } else {
        dir.join("agent.sock")
    }
}

/// The agent's configuration, serialized by `toml` so that any path (a
/// Windows one, with its `\u…` and `\U…`, quotes, non-ASCII) reaches the
/// agent as it is.
fn demo_config(
    url: &str,
    dir: &Path,
    socket: &Path,
    keychain: bool,
    user: bool,
) -> Result<regent_agent::config::Config, Error> {
    let text = demo_config_text(url, dir, socket, keychain, user)?;
    regent_agent::config::Config::parse(&text, Path::new("<demo>"))
}

fn demo_config_text(
    url: &str,
    dir: &Path,
    socket: &Path,
    keychain: bool,
    user: bool,
) -> Result<String, Error> {
    use toml::{Table, Value};
    let path = |p: &Path| {
        p.to_str().map(|s| Value::String(s.to_owned())).ok_or_else(|| {
            Error::new(
                ErrorCode::Config,
                format!(
                    "the demo's path {} is not valid Unicode, so it cannot go into a configuration; \
                     set TMPDIR (TEMP on Windows) to a plain directory",
                    p.display()
                ),
            )
        })
    };
    let table = |entries: Vec<(&str, Value)>| {
        Value::Table(
            entries
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect::<Table>(),
        )
    };
    let text = |s: &str| Value::String(s.to_owned());
    let store = if keychain {
        vec![("kind", text("keychain")), ("service", text("regent-demo"))]
    } else {
        vec![("kind", text("file"))]
    };
    let config: Table = [
        (
            "server",
            if user {
                table(vec![
                    ("profile", text("oauth2")),
                    ("issuer", text(url)),
                    ("client_id", text(DEMO_CLIENT)),
                    ("scope", text("openid profile")),
                ])
            } else {
                table(vec![("profile", text("sentinel")), ("url", text(url))])
            },
        ),
        ("store", table(store)),
        ("state", table(vec![("dir", path(dir)?)])),
        ("ipc", table(vec![("socket", path(socket)?)])),
        ("refresh", table(vec![("backoff_max", Value::Integer(5))])),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    toml::to_string(&config).map_err(|e| internal("cannot write the demo agent's configuration", e))
}

async fn connect_when_ready(socket: &Path) -> Result<Client, Error> {
    let started = Instant::now();
    loop {
        match Client::connect(ClientOptions::new("regent-demo").socket(socket)).await {
            Ok(c) => return Ok(c),
            Err(e) if started.elapsed() > Duration::from_secs(10) => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn app_client(socket: &Path, name: &str) -> Result<Arc<Client>, Error> {
    Ok(Arc::new(
        Client::connect(ClientOptions::new(name).socket(socket)).await?,
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Issue 13, bug 2: Windows paths pasted into TOML strings (`\u` in
    /// `C:\users` is an escape) made `regent demo` fail on Windows.
    #[test]
    fn windows_paths_and_pipe_names_reach_the_agent_unchanged() {
        let dir = Path::new(r#"C:\users\Ünal\AppData\Local\Temp\regent-demo-\x\"q\"#);
        let pipe = Path::new(r"\\.\pipe\regent-demo-4242");
        for keychain in [false, true] {
            let config =
                demo_config("http://127.0.0.1:8080", dir, pipe, keychain, keychain).unwrap();
            assert_eq!(config.state.dir.as_deref(), Some(dir));
            assert_eq!(config.ipc.socket.as_deref(), Some(pipe));
        }
    }

    #[test]
    fn the_demo_listens_on_a_pipe_of_its_own_on_windows() {
        let socket = demo_socket(Path::new("/tmp/regent-demo-x"));
        if cfg!(windows) {
            let name = socket.to_string_lossy().into_owned();
            assert!(name.starts_with(r"\\.\pipe\regent-demo-"), "{name}");
            assert!(name.ends_with(&std::process::id().to_string()), "{name}");
        } else {
            assert_eq!(socket, Path::new("/tmp/regent-demo-x/agent.sock"));
        }
    }
}
