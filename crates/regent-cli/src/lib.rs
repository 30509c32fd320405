//! The `regent` command line: parses arguments and calls the library
//! functions that do the work. Two binaries share it (issue 15, item 4):
//!
//! - `regentd` ([`main`]): every command — the agent, the admin client, the
//!   emulator, the demo, and the client commands;
//! - `regent`: on Unix a small binary (`src/main.rs`, `src/lean.rs`, and
//!   `src/token.rs`, which it compiles on its own rather than linking this
//!   library, so that nothing else comes along) that answers `regent token`
//!   itself — no async runtime, TLS or server — and runs `regentd`,
//!   installed beside it, for every other command (`exec`: same process,
//!   same arguments, same environment); on Windows the same as `regentd` (a
//!   service's process must be the one the service manager started).
//!
//! Exit status follows the error table (`regent-proto`): 0 on success, the
//! error's number otherwise (e.g. 6 = REVOKED, 14 = AGENT_UNREACHABLE); usage
//! errors exit 12 (BAD_REQUEST).

mod admin;
mod agent;
mod client;
mod demo;
mod emulator;
mod failure;
mod logging;
mod login;
#[cfg(windows)]
mod service_windows;
mod token;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use regent_proto::ErrorCode;

use regent_client::Error;

use self::token::{Globals, finish, usage};

/// regent — a client-side licensing agent.
///
/// One agent per device redeems a registration token once for an auth token,
/// keeps its secrets in the OS keychain, keeps an access token fresh and hands
/// it to licensed applications over a local socket.
///
/// Quick start, all on this machine: `regent demo`.
#[derive(Debug, Parser)]
#[command(name = "regent", version, about, long_about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    globals: Globals,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent in the foreground (what the service units run).
    Agent(agent::AgentArgs),
    /// Enroll this device: redeem a registration token (or store an OAuth2
    /// client secret). The secret is read from stdin, a file or an
    /// environment variable — never from an argument, where every user could
    /// see it with `ps`.
    Enroll(client::EnrollArgs),
    /// Sign a user in with the license server's identity provider (oauth2
    /// profile): a browser on this machine, or --device for another one.
    /// The agent then keeps that user's tokens fresh.
    Login(login::LoginArgs),
    /// Sign the user out: revoke the sign-in at the server and forget it.
    Logout,
    /// Print an access token valid for at least --min-valid seconds.
    Token(token::TokenArgs),
    /// Show the agent's state, token expiry, next renewal and last error.
    /// Exits non-zero (with the error's code) when the credential is not usable.
    Status(client::StatusArgs),
    /// Print the agent's metrics (Prometheus text format).
    Metrics,
    /// Forget the credential: delete this device's stored secrets.
    Unenroll,
    /// Administer registration tokens and auth tokens on the license server
    /// (a Sentinel-EMS-shaped admin API). Credentials come from the keychain,
    /// a file or the environment — never from an argument.
    Admin(admin::AdminArgs),
    /// Run the license-server emulator, or inject faults into a running one
    /// (its admin API answers `regent admin`).
    Emulator(emulator::EmulatorArgs),
    /// Everything on one machine in under a minute: emulator, agent, enrollment,
    /// apps fetching and subscribing, renewals, then revocation.
    Demo(demo::DemoArgs),
    /// Print shell completions (bash, zsh, fish, powershell, elvish).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `regentd` (and `regent` on Windows): parses the arguments, runs the
/// command, and returns its exit status.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage(&e),
    };
    // The service control manager owns the main thread: its dispatcher must
    // start before any runtime; the service builds its own.
    #[cfg(windows)]
    if let Command::Agent(args) = &cli.command
        && args.windows_service
    {
        return finish(service_windows::run(cli));
    }
    // `regent token` is one request: the blocking client, `hello` and `token`
    // in one write, and no async runtime to start (issue 15, items 3 and 4).
    let cli = match cli {
        Cli {
            globals: Globals { socket },
            command: Command::Token(args),
        } => return finish(token::token(&args, socket)),
        other => other,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("regent: cannot start the async runtime: {e}");
            return ExitCode::from(ErrorCode::Internal.number());
        }
    };
    finish(runtime.block_on(run(cli)))
}

async fn run(cli: Cli) -> Result<(), Error> {
    let socket = cli.globals.socket;
    match cli.command {
        Command::Agent(args) => agent::run(args, socket).await,
        Command::Enroll(args) => client::enroll(args, socket).await,
        Command::Token(args) => token::token(&args, socket),
        Command::Status(args) => client::status(args, socket).await,
        Command::Metrics => client::metrics(socket).await,
        Command::Unenroll => client::unenroll(socket).await,
        Command::Login(args) => login::login(args, socket).await,
        Command::Logout => login::logout(socket).await,
        Command::Admin(args) => admin::run(args).await,
        Command::Emulator(args) => emulator::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "regent", &mut std::io::stdout());
            Ok(())
        }
    }
}
