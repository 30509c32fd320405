//! `regent agent`: the agent in the foreground.

use std::path::{Path, PathBuf};

use clap::Args;
use regent_agent::config::{Config, LogFormat};

use crate::failure::Failure;

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Configuration file [default: $REGENT_CONFIG, else
    /// $XDG_CONFIG_HOME/regent/regent.toml (~/.config/regent/regent.toml),
    /// else /etc/regent/regent.toml].
    #[arg(long, short, env = "REGENT_CONFIG")]
    pub config: Option<PathBuf>,
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

pub async fn run(args: AgentArgs, socket: Option<PathBuf>) -> Result<(), Failure> {
    let path = args.config.unwrap_or_else(default_config_path);
    let mut config = Config::load(&path)?;
    if let Some(socket) = socket {
        config.ipc.socket = Some(socket);
    }
    init_logging(&config, &path);
    tracing::info!(config = %path.display(), version = env!("CARGO_PKG_VERSION"), "regent agent starting");
    regent_agent::daemon::run(config, shutdown_signal()).await?;
    Ok(())
}

fn init_logging(config: &Config, path: &Path) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level));
    let filter = match filter {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "regent: config file {}: [log] level {:?} is not a valid filter ({e}); using \"info\"",
                path.display(),
                config.log.level
            );
            tracing_subscriber::EnvFilter::new("info")
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves on SIGINT or SIGTERM (Ctrl-C on Windows).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
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
    }
    #[cfg(not(unix))]
    {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
