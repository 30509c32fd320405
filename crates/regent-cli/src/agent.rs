//! `regent agent`: the agent in the foreground.

use std::future::Future;
use std::path::PathBuf;

use clap::Args;
use regent_agent::config::Config;
use regent_agent::daemon::DaemonOptions;

use regent_client::Error;

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Configuration file [default: $REGENT_CONFIG, else
    /// $XDG_CONFIG_HOME/regent/regent.toml (~/.config/regent/regent.toml),
    /// else /etc/regent/regent.toml].
    #[arg(long, short, env = "REGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Check the configuration file and exit: 0 when it is valid, else the
    /// CONFIG exit status with the line and the problem.
    #[arg(long)]
    pub check: bool,
    /// Do not watch the configuration file for live changes.
    #[arg(long)]
    pub no_watch: bool,
    /// Run under the Windows service control manager (the service's own
    /// command line; `packaging/windows/install.ps1` registers it).
    #[cfg(windows)]
    #[arg(long)]
    pub windows_service: bool,
}

/// The configuration file to use when none is named.
pub fn default_config_path() -> PathBuf {
    let user = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|d| d.join("regent/regent.toml"));
    match user {
        Some(p) if p.exists() => p,
        _ => PathBuf::from("/etc/regent/regent.toml"),
    }
}

pub async fn run(args: AgentArgs, socket: Option<PathBuf>) -> Result<(), Error> {
    run_until(args, socket, shutdown_signal(), None).await
}

/// Runs the agent until `shutdown` resolves (a signal, or the Windows
/// service's Stop control: one shutdown path). `on_ready` runs once the
/// socket listens.
pub async fn run_until(
    args: AgentArgs,
    socket: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
    on_ready: Option<Box<dyn FnOnce() + Send>>,
) -> Result<(), Error> {
    let path = args.config.unwrap_or_else(default_config_path);
    let mut config = Config::load(&path)?;
    if args.check {
        println!("{}: valid", path.display());
        return Ok(());
    }
    // Before any secret is read: no core dumps, no same-uid ptrace or
    // /proc/PID/mem reads.
    let hardened = regent_agent::daemon::harden_process()?;
    if let Some(socket) = socket {
        config.ipc.socket = Some(socket);
    }
    let log_level = crate::logging::init(&config.log, &path);
    tracing::info!(config = %path.display(), version = env!("CARGO_PKG_VERSION"), process = hardened, "regent agent starting");
    let options = DaemonOptions {
        config_path: (!args.no_watch).then_some(path),
        log_level: Some(log_level),
        notifier: None,
        on_ready,
    };
    regent_agent::daemon::run_with(config, options, shutdown).await?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM (Ctrl-C on Windows). The handlers are
/// installed when this is called, not when the future is first polled: a
/// service manager may send SIGTERM right after readiness, and a signal that
/// arrives before its handler exists would kill the agent uncleanly.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    let handlers = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        )
    };
    #[cfg(not(unix))]
    let handlers = tokio::signal::windows::ctrl_c();
    async move {
        #[cfg(unix)]
        match handlers {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                }
            }
            _ => {
                tracing::warn!("cannot install signal handlers; stop the agent with SIGKILL");
                std::future::pending::<()>().await;
            }
        }
        #[cfg(not(unix))]
        match handlers {
            Ok(mut ctrl_c) => {
                ctrl_c.recv().await;
                tracing::info!("Ctrl-C received");
            }
            Err(_) => std::future::pending::<()>().await,
        }
    }
}
