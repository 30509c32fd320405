//! `regent emulator`: run the license-server emulator, or inject faults into a
//! running one. Its admin API is driven by `regent admin`, as a real server's is.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Subcommand};
use regent_proto::ErrorCode;
use serde_json::json;

use crate::failure::internal;
use regent_client::Error;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct EmulatorArgs {
    #[command(subcommand)]
    pub action: Option<Action>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Loopback only: the emulator is not a server to
    /// expose on a network. Port 0 picks a free port (printed).
    #[arg(long, default_value = "127.0.0.1:8600")]
    pub listen: SocketAddr,
    /// Lifetime of access tokens from the realm's refresh endpoint, in seconds.
    #[arg(long, default_value_t = 300)]
    pub access_token_lifespan: u64,
    /// Lifetime of refresh tokens, in seconds (Keycloak's offline idle: 30 days).
    #[arg(long, default_value_t = 30 * 86_400)]
    pub refresh_token_lifespan: u64,
    /// Keep the same refresh token on refresh (default: rotate, with reuse detection).
    #[arg(long)]
    pub no_rotation: bool,
    /// Admin user for the password grant that authorises the admin API; its
    /// password comes from $REGENT_EMULATOR_ADMIN_PASSWORD (default "admin").
    #[arg(long, default_value = "admin")]
    pub admin_user: String,
    /// People who can sign in (`regent login`): a file of `name:password[:email]`
    /// lines (`#` starts a comment). Passwords never come from arguments.
    #[arg(long, value_name = "PATH")]
    pub users_file: Option<std::path::PathBuf>,
    /// Register a public OAuth2 client (no secret, PKCE) for user sign-in:
    /// the authorization code, device code and refresh grants. Repeatable.
    #[arg(long, value_name = "CLIENT_ID")]
    pub public_client: Vec<String>,
    /// Polling interval device sign-ins announce, in seconds (RFC 8628: 5).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub device_interval: u64,
}

/// Reads `--users-file`: `name:password[:email]` per line.
fn read_users(path: &std::path::Path) -> Result<Vec<regent_emulator::UserSpec>, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| internal(&format!("cannot read the users file {}", path.display()), e))?;
    text.lines()
        .enumerate()
        .map(|(n, line)| (n, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .map(|(n, line)| {
            regent_emulator::UserSpec::parse_line(line).map_err(|problem| {
                Error::new(
                    ErrorCode::Config,
                    format!(
                        "{} line {}: {problem}; fix the line and start the emulator again",
                        path.display(),
                        n + 1
                    ),
                )
            })
        })
        .collect()
}

#[derive(Debug, Args)]
pub struct Target {
    /// The emulator's URL (http:// to a loopback IP, as it prints when it starts).
    #[arg(
        long,
        env = "REGENT_EMULATOR_URL",
        default_value = "http://127.0.0.1:8600"
    )]
    pub url: String,
}

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Inject faults into the token routes (key from $REGENT_EMULATOR_ADMIN_KEY).
    Faults {
        #[command(flatten)]
        target: Target,
        /// Added latency per request, in milliseconds.
        #[arg(long)]
        latency_ms: Option<u64>,
        /// Fraction of requests answered 500 (0 to 1).
        #[arg(long)]
        failure_rate: Option<f64>,
        /// Answer this status to the next --count requests.
        #[arg(long, requires = "count")]
        next_status: Option<u16>,
        /// How many requests get --next-status.
        #[arg(long)]
        count: Option<u32>,
        /// Drop the connection of the next N requests.
        #[arg(long)]
        drop_connections: Option<u32>,
        /// Remove every fault.
        #[arg(long, conflicts_with_all = ["latency_ms", "failure_rate", "next_status", "drop_connections"])]
        clear: bool,
    },
    /// Removed in 0.2: `regent admin registration-token create`.
    #[command(hide = true)]
    Mint(Removed),
    /// Removed in 0.2: `regent admin auth-token list`.
    #[command(hide = true)]
    AuthTokens(Removed),
    /// Removed in 0.2: `regent admin auth-token revoke`.
    #[command(hide = true)]
    Revoke(Removed),
}

/// The arguments of a removed command, whatever they were.
#[derive(Debug, Args)]
pub struct Removed {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub args: Vec<String>,
}

/// What replaced `regent emulator mint|auth-tokens|revoke`: the admin API
/// commands, which work against the emulator and a real server alike.
fn removed(command: &str, replacement: &str) -> Error {
    Error::new(
        ErrorCode::BadRequest,
        format!(
            "`regent emulator {command}` was removed: use `regent admin {replacement}` (it works against the emulator and a real server alike); for the emulator, set REGENT_ADMIN_URL=http://127.0.0.1:8600 REGENT_ADMIN_USER=admin REGENT_ADMIN_PASSWORD=admin"
        ),
    )
}

pub async fn run(args: EmulatorArgs) -> Result<(), Error> {
    match args.action {
        None => serve(args.serve).await,
        Some(Action::Mint(_)) => Err(removed(
            "mint",
            "registration-token create --count N --expires 30d",
        )),
        Some(Action::AuthTokens(_)) => Err(removed("auth-tokens", "auth-token list --json")),
        Some(Action::Revoke(_)) => Err(removed("revoke", "auth-token revoke ID")),
        Some(Action::Faults {
            target,
            latency_ms,
            failure_rate,
            next_status,
            count,
            drop_connections,
            clear,
        }) => {
            let key = std::env::var("REGENT_EMULATOR_ADMIN_KEY").map_err(|_| {
                Error::new(ErrorCode::Config, "set REGENT_EMULATOR_ADMIN_KEY to the emulator's control key (printed when it starts)")
            })?;
            // The control key goes only where an admin password would: https://,
            // or http:// to a loopback IP; never through a proxy from the
            // environment (issue 18), never after a redirect.
            let base = regent_agent::upstream::admin_url(&target.url)
                .map_err(|e| Error::new(e.code, format!("--url: {}", e.message)))?;
            let (builder, _) = regent_agent::upstream::with_https_proxy(
                reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()),
                &regent_agent::upstream::ProxySetting::Environment,
            )?;
            let http = builder
                .build()
                .map_err(|e| internal("cannot build the HTTP client", e))?;
            let url = format!("{}/_emulator/faults", base.as_str().trim_end_matches('/'));
            let request = if clear {
                http.delete(&url)
            } else {
                let mut body = json!({});
                if let Some(ms) = latency_ms {
                    body["latencyMs"] = json!(ms);
                }
                if let Some(rate) = failure_rate {
                    body["failureRate"] = json!(rate);
                }
                if let (Some(status), Some(count)) = (next_status, count) {
                    body["nextStatus"] = json!({"status": status, "count": count});
                }
                if let Some(n) = drop_connections {
                    body["dropConnections"] = json!(n);
                }
                http.put(&url).json(&body)
            };
            let resp = request
                .header("X-Emulator-Key", key)
                .send()
                .await
                .map_err(|e| unreachable_emulator(&target.url, e))?;
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            if !status.is_success() {
                return Err(Error::new(
                    ErrorCode::ServerError,
                    format!("emulator answered {status}: {text}"),
                ));
            }
            println!("{text}");
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), Error> {
    if !args.listen.ip().is_loopback() {
        return Err(Error::new(
            ErrorCode::Config,
            format!(
                "refusing to listen on {}: the emulator is for loopback use only (127.0.0.1 or ::1)",
                args.listen
            ),
        ));
    }
    let config = regent_emulator::EmulatorConfig {
        access_token_lifespan: Duration::from_secs(args.access_token_lifespan),
        refresh_token_lifespan: Duration::from_secs(args.refresh_token_lifespan),
        rotate_refresh_tokens: !args.no_rotation,
        users: match &args.users_file {
            Some(path) => read_users(path)?,
            None => Vec::new(),
        },
        public_clients: args.public_client.clone(),
        device_interval: Duration::from_secs(args.device_interval),
        admin_username: args.admin_user,
        // Secrets never come from arguments.
        admin_password: admin_password(),
        admin_key: std::env::var("REGENT_EMULATOR_ADMIN_KEY")
            .unwrap_or_else(|_| regent_emulator::EmulatorConfig::default().admin_key),
        ..regent_emulator::EmulatorConfig::default()
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| internal(&format!("cannot listen on {}", args.listen), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| internal("cannot read the listening address", e))?;
    let url = format!("http://{addr}");
    println!("regent emulator listening on {url}");
    println!(
        "  realm {:?}, access tokens {}s, refresh rotation {}",
        config.realm,
        args.access_token_lifespan,
        if config.rotate_refresh_tokens {
            "on"
        } else {
            "off"
        }
    );
    println!("  control key (X-Emulator-Key): {}", config.admin_key);
    if !config.public_clients.is_empty() || !config.users.is_empty() {
        println!(
            "  sign-in: public clients [{}], users [{}]",
            config.public_clients.join(", "),
            config
                .users
                .iter()
                .map(|u| u.username.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "  for `regent login`: [server] profile = \"oauth2\", issuer = \"{url}\", client_id = \"{}\"",
            config
                .public_clients
                .first()
                .map_or("<a public client>", String::as_str)
        );
    }
    println!();
    println!(
        "Its admin API (user {:?}) answers `regent admin`:",
        config.admin_username
    );
    println!(
        "  export REGENT_ADMIN_URL={url} REGENT_ADMIN_USER={}",
        config.admin_username
    );
    println!(
        "  export REGENT_ADMIN_PASSWORD=…   # $REGENT_EMULATOR_ADMIN_PASSWORD, default \"admin\""
    );
    println!("Create a registration token for 3 devices:");
    println!("  regent admin registration-token create --count 3");
    println!(
        "Then point an agent at it ([server] profile = \"sentinel\", url = \"{url}\") and run:"
    );
    println!("  regent admin registration-token create --count 1 | regent enroll");
    println!("Press Ctrl-C to stop.");
    regent_emulator::run(listener, config, crate::agent::shutdown_signal())
        .await
        .map_err(|e| internal("the emulator stopped with an error", e))
}

/// The emulator's admin password: `$REGENT_EMULATOR_ADMIN_PASSWORD`, default "admin".
pub fn admin_password() -> String {
    std::env::var("REGENT_EMULATOR_ADMIN_PASSWORD").unwrap_or_else(|_| "admin".to_owned())
}

fn unreachable_emulator(url: &str, e: reqwest::Error) -> Error {
    Error::new(
        ErrorCode::Unavailable,
        format!("cannot reach the emulator at {url}: {e}"),
    )
}
