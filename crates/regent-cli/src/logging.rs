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
        Some(spec) => new_filter(spec).unwrap_or_else(|e| {
            eprintln!("regent: RUST_LOG={spec:?} is not a valid filter ({e}); using \"info\"");
            EnvFilter::new("info")
        }),
        None => new_filter(&config.level).unwrap_or_else(|e| {
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
        let filter = new_filter(level).map_err(|e| format!("not a valid filter: {e}"))?;
        handle
            .reload(filter)
            .map_err(|e| format!("cannot change the log level: {e}"))
    })
}

/// The file-watch crate logs every event in the config file's directory at
/// `trace`. A log file in that directory (`regent agent --config ./regent.toml
/// 2> ./agent.log`) would then feed itself: each line written is an event,
/// which is logged, which is an event… So when the filter turns `trace` on
/// for every crate, it is capped at `debug`, unless the filter names it.
const WATCH_CAP: &str = "notify=debug";

/// `spec` as a filter, with the watch crates capped (see [`WATCH_CAP`]).
fn new_filter(spec: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    let global_trace = spec
        .split(',')
        .any(|d| d.trim().eq_ignore_ascii_case("trace"));
    if !global_trace || spec.contains("notify") {
        EnvFilter::try_new(spec)
    } else {
        // Validate the user's part alone, so errors point at it.
        EnvFilter::try_new(spec)?;
        EnvFilter::try_new(format!("{spec},{WATCH_CAP}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_crates_are_capped_unless_named() {
        let capped = new_filter("trace").unwrap().to_string();
        assert!(capped.contains("notify=debug"), "{capped}");
        let named = new_filter("trace,notify=trace").unwrap().to_string();
        assert!(!named.contains("notify=debug"), "{named}");
        // Never raised: below a global trace nothing is added.
        for spec in ["info", "regent_agent=trace", "debug,regent=trace"] {
            let f = new_filter(spec).unwrap().to_string();
            assert!(!f.contains("notify"), "{spec}: {f}");
        }
        assert!(new_filter("info,=bogus[").is_err());
    }
}
