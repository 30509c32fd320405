//! `regent token` (what both binaries share: the small `regent` compiles
//! this file as its own module, `regentd` through the library), the options
//! every command takes, and how a command's outcome becomes an exit status.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, ValueEnum};
use regent_client::{ClientOptions, Error};
use regent_proto::ErrorCode;
use serde_json::json;

/// The options every command takes (shared with the small binary's parser,
/// so that `regent token --help` reads the same from either binary).
#[derive(Debug, Args)]
pub struct Globals {
    /// The agent's socket [default: $REGENT_SOCKET, else
    /// $XDG_RUNTIME_DIR/regent/agent.sock, else /run/regent/agent.sock;
    /// Windows: \\.\pipe\regent-agent-SID (your account's SID) if it exists, else
    /// \\.\pipe\regent-agent]. Only a server running as your uid, root,
    /// $REGENT_AGENT_UID or the owner of a private socket directory is
    /// trusted (Windows: your account, LocalSystem, Administrators or
    /// $REGENT_AGENT_SID).
    #[arg(long, global = true, env = "REGENT_SOCKET")]
    pub socket: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TokenFormat {
    /// The token alone.
    Raw,
    /// A JSON object with the token, its type and expiry.
    Json,
    /// An HTTP header line: `Authorization: Bearer …`.
    Header,
    /// A Kubernetes `ExecCredential` (client.authentication.k8s.io/v1).
    ExecCredential,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Seconds the token must stay valid.
    #[arg(long, default_value_t = 60)]
    pub min_valid: u64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = TokenFormat::Raw)]
    pub format: TokenFormat,
}

/// `regent token`: one request on a connection of its own (`hello` and
/// `token` pipelined), through the blocking client.
pub fn token(args: &TokenArgs, socket: Option<PathBuf>) -> Result<(), Error> {
    let mut options = ClientOptions::new("regent-cli");
    if let Some(socket) = socket {
        options = options.socket(socket);
    }
    let token =
        regent_client::blocking::Client::token_once(options, Duration::from_secs(args.min_valid))?;
    let expires = rfc3339(token.expires_at);
    match args.format {
        TokenFormat::Raw => println!("{}", token.secret()),
        TokenFormat::Header => println!(
            "Authorization: {} {}",
            bearer(&token.token_type),
            token.secret()
        ),
        TokenFormat::Json => println!(
            "{}",
            json!({
                "access_token": token.secret(),
                "token_type": token.token_type,
                "expires_at": expires,
                "expires_in": token.remaining().as_secs(),
                "scope": token.scope,
            })
        ),
        TokenFormat::ExecCredential => println!(
            "{}",
            json!({
                "apiVersion": "client.authentication.k8s.io/v1",
                "kind": "ExecCredential",
                "status": { "token": token.secret(), "expirationTimestamp": expires },
            })
        ),
    }
    Ok(())
}

fn bearer(token_type: &str) -> &str {
    if token_type.eq_ignore_ascii_case("bearer") {
        "Bearer"
    } else {
        token_type
    }
}

/// RFC 3339 in UTC, e.g. `2026-11-22T15:20:00Z`.
pub fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Prints clap's answer (`--help`, `--version`, or a usage error) and
/// returns its exit status: 0, or BAD_REQUEST's number for a usage error.
pub fn usage(e: &clap::Error) -> ExitCode {
    let usage_error = e.use_stderr();
    let _ = e.print();
    if usage_error {
        ExitCode::from(ErrorCode::BadRequest.number())
    } else {
        ExitCode::SUCCESS
    }
}

/// The exit status of a command: 0, or its error's code after the message.
pub fn finish(result: Result<(), Error>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("regent: {}", failure.report());
            ExitCode::from(failure.code.number())
        }
    }
}
