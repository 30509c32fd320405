//! `regent`: parses arguments and calls the library functions that do the work.
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
#[cfg(windows)]
mod service_windows;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use regent_proto::ErrorCode;

use regent_client::Error;

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
    /// The agent's socket [default: $REGENT_SOCKET, else
    /// $XDG_RUNTIME_DIR/regent/agent.sock, else /run/regent/agent.sock;
    /// Windows: \\.\pipe\regent-agent-SID (your account's SID) if it exists, else
    /// \\.\pipe\regent-agent]. Only a server running as your uid, root,
    /// $REGENT_AGENT_UID or the owner of a private socket directory is
    /// trusted (Windows: your account, LocalSystem, Administrators or
    /// $REGENT_AGENT_SID).
    #[arg(long, global = true, env = "REGENT_SOCKET")]
    socket: Option<PathBuf>,
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
    /// Print an access token valid for at least --min-valid seconds.
    Token(client::TokenArgs),
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

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let usage_error = e.use_stderr();
            let _ = e.print();
            return if usage_error {
                ExitCode::from(ErrorCode::BadRequest.number())
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // The service control manager owns the main thread: its dispatcher must
    // start before any runtime; the service builds its own.
    #[cfg(windows)]
    if let Command::Agent(args) = &cli.command
        && args.windows_service
    {
        return match service_windows::run(cli) {
            Ok(()) => ExitCode::SUCCESS,
            Err(failure) => {
                eprintln!("regent: {}", failure.report());
                ExitCode::from(failure.code.number())
            }
        };
    }
    // `regent token` is one request: the blocking client, `hello` and `token`
    // in one write, and no async runtime to start (issue 15, items 3 and 4).
    let cli = match cli {
        Cli {
            socket,
            command: Command::Token(args),
        } => return finish(client::token(&args, socket)),
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

/// The exit status of a command: 0, or its error's code after the message.
fn finish(result: Result<(), Error>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("regent: {}", failure.report());
            ExitCode::from(failure.code.number())
        }
    }
}

async fn run(cli: Cli) -> Result<(), Error> {
    let socket = cli.socket;
    match cli.command {
        Command::Agent(args) => agent::run(args, socket).await,
        Command::Enroll(args) => client::enroll(args, socket).await,
        Command::Token(args) => client::token(&args, socket),
        Command::Status(args) => client::status(args, socket).await,
        Command::Metrics => client::metrics(socket).await,
        Command::Unenroll => client::unenroll(socket).await,
        Command::Admin(args) => admin::run(args).await,
        Command::Emulator(args) => emulator::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "regent", &mut std::io::stdout());
            Ok(())
        }
    }
}
