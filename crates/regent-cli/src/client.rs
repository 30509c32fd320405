//! Commands that talk to a running agent over its socket.

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::Args;
use regent_client::{AgentStatus, Client, ClientOptions, RenewalReason, SlotStatus};
use regent_proto::ErrorCode;
use secrecy::SecretString;

use crate::failure::internal;
use regent_client::Error;

#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// Read the registration token (or client secret) from this file.
    #[arg(long, value_name = "PATH", conflicts_with = "from_env")]
    pub token_file: Option<PathBuf>,
    /// Read it from this environment variable.
    #[arg(long, value_name = "VAR")]
    pub from_env: Option<String>,
    /// Read it from stdin even when stdin is a terminal (type or paste it,
    /// then Ctrl-D). Piped stdin is read without this flag.
    #[arg(long, alias = "client-secret-stdin", conflicts_with_all = ["token_file", "from_env"])]
    pub stdin: bool,
    /// Replace a working credential (a new redemption consumes another count).
    #[arg(long)]
    pub force: bool,
    /// The secret is a user's refresh token to adopt (oauth2 profile): the
    /// agent proves it with one refresh and keeps it fresh, as after
    /// `regent login`. For automation and migration.
    #[arg(long)]
    pub refresh_token: bool,
    /// Read a refresh token to adopt from stdin (--refresh-token --stdin).
    #[arg(long, conflicts_with_all = ["token_file", "from_env", "stdin"])]
    pub refresh_token_stdin: bool,
    #[command(flatten)]
    pub client_secret: crate::login::ClientSecretArgs,
    /// Refused: a secret on the command line is visible to every local user.
    #[arg(hide = true)]
    pub secret: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the stable JSON document instead of a summary.
    #[arg(long)]
    pub json: bool,
}

async fn connect(socket: Option<PathBuf>) -> Result<Client, Error> {
    let mut options = ClientOptions::new("regent-cli");
    if let Some(socket) = socket {
        options = options.socket(socket);
    }
    Client::connect(options).await
}

fn read_secret(args: &EnrollArgs) -> Result<SecretString, Error> {
    if args.secret.is_some() {
        return Err(Error::new(
            ErrorCode::BadRequest,
            "refusing a secret passed as an argument: every local user can read it with `ps`. \
             Pipe it on stdin (`regent enroll < token.txt`), or use --token-file PATH or --from-env VAR",
        ));
    }
    let mut value = if let Some(path) = &args.token_file {
        std::fs::read_to_string(path)
            .map_err(|e| internal(&format!("cannot read {}", path.display()), e))?
    } else if let Some(var) = &args.from_env {
        std::env::var(var).map_err(|_| {
            Error::new(
                ErrorCode::BadRequest,
                format!("environment variable {var} is not set"),
            )
        })?
    } else {
        use std::io::IsTerminal;
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            // Waiting silently on a terminal looks like a hang.
            if !args.stdin && !args.refresh_token_stdin {
                return Err(Error::new(
                    ErrorCode::BadRequest,
                    "no secret given: pipe the registration token (or client secret) on stdin                      (`regent enroll < token.txt`), use --token-file PATH or --from-env VAR,                      or --stdin to type it here",
                ));
            }
            eprintln!("regent: paste the registration token (or client secret), then Ctrl-D");
        }
        let mut s = String::new();
        stdin
            .lock()
            .read_to_string(&mut s)
            .map_err(|e| internal("cannot read the secret from stdin", e))?;
        s
    };
    let trimmed = value.trim().to_owned();
    // Wipe the untrimmed copy.
    secrecy::zeroize::Zeroize::zeroize(&mut value);
    if trimmed.is_empty() {
        return Err(Error::new(
            ErrorCode::BadRequest,
            "no secret given: pipe the registration token (or client secret) on stdin, or use --token-file / --from-env",
        ));
    }
    Ok(SecretString::from(trimmed))
}

pub async fn enroll(args: EnrollArgs, socket: Option<PathBuf>) -> Result<(), Error> {
    let secret = read_secret(&args)?;
    if args.refresh_token || args.refresh_token_stdin {
        let client_secret = crate::login::read_client_secret(&args.client_secret, false)?;
        let client = connect(socket).await?;
        let done = client
            .adopt_refresh_token(&secret, client_secret.as_ref(), args.force)
            .await?;
        let valid = remaining(done.expires_at);
        match &done.user {
            Some(user) => println!(
                "adopted the refresh token of {user}; access token valid for {}s",
                valid.as_secs()
            ),
            None => println!(
                "adopted the refresh token; access token valid for {}s",
                valid.as_secs()
            ),
        }
        return Ok(());
    }
    if args.client_secret.client_secret_file.is_some()
        || args.client_secret.client_secret_env.is_some()
    {
        return Err(Error::new(
            ErrorCode::BadRequest,
            "--client-secret-file/--client-secret-env go with --refresh-token; a client secret to enroll with is the secret itself (stdin, --token-file or --from-env)",
        ));
    }
    let client = connect(socket).await?;
    let enrolled = client.enroll(secret, args.force).await?;
    let valid = remaining(enrolled.expires_at);
    match &enrolled.auth_token_id {
        Some(id) => println!(
            "enrolled as {} (auth token {id}); access token valid for {}s",
            enrolled.identifier,
            valid.as_secs()
        ),
        None => println!(
            "enrolled client {}; access token valid for {}s",
            enrolled.identifier,
            valid.as_secs()
        ),
    }
    Ok(())
}

pub async fn status(args: StatusArgs, socket: Option<PathBuf>) -> Result<(), Error> {
    let client = connect(socket).await?;
    let status = client.status().await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).unwrap_or_default()
        );
    } else {
        print!("{}", summarize(&status));
    }
    // The exit status says whether the credential is usable, not just whether
    // the agent runs: scripts can use `regent status` as a health check.
    status
        .health(SystemTime::now())
        .map_err(|code| Error::new(code, unhealthy(&status, code)))
}

/// What an unhealthy status means, for the health check's message.
fn unhealthy(status: &AgentStatus, code: ErrorCode) -> String {
    let last_error = status
        .slots
        .first()
        .and_then(|s| s.last_error.as_deref())
        .unwrap_or("unknown error");
    match code {
        ErrorCode::Unavailable => format!(
            "no valid token: the last renewal failed ({last_error}) and the cached token has expired"
        ),
        ErrorCode::NotEnrolled => "not enrolled".to_owned(),
        ErrorCode::UnsupportedVersion => format!(
            "the agent reports a state this regent does not know ({}); update regent",
            status.slots.first().map_or("no slot", |s| s.state.as_str())
        ),
        _ if status.slots.first().is_some_and(|s| s.user.is_some()) => {
            "the sign-in no longer works; sign in again with `regent login`".to_owned()
        }
        _ => "the credential no longer works; enroll again".to_owned(),
    }
}

/// A duration as people read it: `17s`, `4m 10s`, `23h 59m`, `3d 4h`.
fn span(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m {}s", s / 60, s % 60),
        7200..172_800 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// The human summary of a status document.
pub fn summarize(status: &AgentStatus) -> String {
    let mut out = String::new();
    let now = SystemTime::now();
    let when = |ms: Option<u64>| -> String {
        ms.map_or_else(
            || "-".to_owned(),
            |ms| match regent_proto::time::from_unix_ms(ms) {
                // Past the year 9999: not a date the agent could mean.
                None => format!("at an impossible time ({ms} ms after 1970)"),
                Some(t) => match t.duration_since(now) {
                    Ok(d) => format!("in {}", span(d)),
                    Err(e) => format!("{} ago", span(e.duration())),
                },
            },
        )
    };
    // What the agent will do next: an agent nobody asked for a token only
    // keeps its credential alive, and renews when a client asks.
    let next = |slot: &SlotStatus| -> String {
        let at = when(slot.next_renewal_at_ms);
        match slot.next_renewal_reason {
            Some(RenewalReason::KeepAlive) => format!("renews on demand; keep-alive {at}"),
            Some(RenewalReason::RefreshTokenExpiry) => {
                format!("renews on demand; before the refresh token expires, {at}")
            }
            Some(RenewalReason::Demand) => format!("next renewal {at} (clients ask for tokens)"),
            Some(RenewalReason::Retry) => format!("next attempt {at} (retrying after a failure)"),
            Some(RenewalReason::FirstToken) => format!("first token {at}"),
            Some(RenewalReason::Unknown) | None => format!("next renewal {at}"),
        }
    };
    out.push_str(&format!(
        "profile {}, {} instances (max {}), store {}\n",
        status.profile, status.instance_mode, status.instances_max, status.store
    ));
    for slot in &status.slots {
        let leased = slot
            .leased_by
            .as_ref()
            .map(|h| format!(", leased by {h}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "slot {}: {}{}{leased}\n",
            slot.slot,
            slot.state.as_str(),
            slot.identifier
                .as_deref()
                .map(|i| format!(" ({i})"))
                .unwrap_or_default()
        ));
        if let Some(user) = &slot.user {
            out.push_str(&format!("  signed in as {user} (sub {})\n", user.sub));
        }
        if let Some(scope) = &slot.scope {
            out.push_str(&format!("  scope {scope}\n"));
        }
        out.push_str(&format!(
            "  token expires {}, {}, last renewal {}\n",
            when(slot.expires_at_ms),
            next(slot),
            when(slot.last_renewal_at_ms)
        ));
        out.push_str(&format!(
            "  renewals ok {}, failed {}, tokens served {}\n",
            slot.renewals_ok, slot.renewals_failed, slot.handouts
        ));
        if let Some(err) = &slot.last_error {
            out.push_str(&format!(
                "  last error: {} {err}\n",
                slot.last_error_code.map_or("", ErrorCode::name)
            ));
        }
        if slot.pending_redemption {
            out.push_str("  a redemption is pending and will be retried\n");
        }
    }
    out
}

pub async fn metrics(socket: Option<PathBuf>) -> Result<(), Error> {
    let client = connect(socket).await?;
    print!("{}", client.metrics().await?);
    Ok(())
}

pub async fn unenroll(socket: Option<PathBuf>) -> Result<(), Error> {
    let client = connect(socket).await?;
    client.unenroll().await?;
    println!("unenrolled: this device's stored secrets are deleted");
    Ok(())
}

fn remaining(at: SystemTime) -> Duration {
    at.duration_since(SystemTime::now()).unwrap_or_default()
}
