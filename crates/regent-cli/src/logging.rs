//! The agent's log output: text, JSON or the systemd journal, with a level
//! that the config-file watch can change while the agent runs.
//!
//! `RUST_LOG`, when set, wins over `[log] level`, at start and on reload (a
//! reload then says so instead of silently doing nothing).

use std::io::IsTerminal as _;
use std::path::Path;
use std::sync::Arc;

use regent_agent::config::{LogConfig, LogFormat};
use regent_agent::reload::LogLevelHook;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Installs the global subscriber and returns the hook that changes its level.
pub fn init(config: &LogConfig, path: &Path) -> LogLevelHook {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let filter = match &from_env {
        Some(spec) => EnvFilter::try_new(spec).unwrap_or_else(|e| {
            eprintln!("regent: RUST_LOG={spec:?} is not a valid filter ({e}); using \"info\"");
            EnvFilter::new("info")
        }),
        None => EnvFilter::try_new(&config.level).unwrap_or_else(|e| {
            eprintln!(
                "regent: config file {}: [log] level {:?} is not a valid filter ({e}); using \"info\"",
                path.display(),
                config.level
            );
            EnvFilter::new("info")
        }),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let text = || {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
    };
    let installed = match config.format {
        LogFormat::Text => registry.with(text()).try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        #[cfg(unix)]
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(layer) => registry
                .with(layer.with_syslog_identifier("regent".to_owned()))
                .try_init(),
            Err(e) => {
                eprintln!(
                    "regent: config file {}: [log] format = \"journald\", but the journal is unreachable ({e}); logging text to stderr",
                    path.display()
                );
                registry.with(text()).try_init()
            }
        },
        #[cfg(not(unix))]
        LogFormat::Journald => {
            eprintln!(
                "regent: config file {}: [log] format = \"journald\" exists only on Linux; logging text to stderr",
                path.display()
            );
            registry.with(text()).try_init()
        }
    };
    if let Err(e) = installed {
        eprintln!("regent: cannot install the log subscriber: {e}");
    }
    let env_wins = from_env.is_some();
    Arc::new(move |level: &str| {
        if env_wins {
            tracing::warn!(
                level,
                "RUST_LOG is set and wins over [log] level; unset it in the service's environment to let the config file decide"
            );
            return Ok(());
        }
        let filter = EnvFilter::try_new(level).map_err(|e| format!("not a valid filter: {e}"))?;
        handle
            .reload(filter)
            .map_err(|e| format!("cannot change the log level: {e}"))
    })
}
