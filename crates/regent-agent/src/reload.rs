//! Live configuration (DESIGN §12): the config file's directory is watched and
//! every change is re-read, validated whole, and applied without a restart.
//!
//! - Applied live: `[log] level` (through a hook the binary owning the
//!   subscriber provides), `[ipc] allow_uids` / `allow_users` / `allow_groups` /
//!   `allow_executables` (new connections at once, open ones at their next
//!   request or pushed event, closed if no longer admitted; listed symlinks are resolved again
//!   on every event in the file's directory, even a `touch`), `[refresh]` (the engine's timing) and `[instances] max`
//!   (per-instance mode; leased slots above a lowered maximum keep working).
//! - A broken file is rejected with one `error` line naming the file, the line
//!   and the problem; nothing is applied and the previous settings stay.
//! - Every other section needs a restart; a change there is logged as such and
//!   otherwise ignored, so the running agent stays self-consistent.
//! - All or nothing: every reloadable part is validated before any is applied.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::agent::Agent;
use crate::config::{Config, read_checked};
use crate::engine::EngineSettings;
use crate::error::Result;
use crate::ipc::{SharedPolicy, policy_from_config, policy_with_warnings};
use crate::metrics::Counters;
use crate::watch::{DirWatch, watch_dir};

/// How long a burst of file events must stay quiet before the file is read.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Applies a new `[log] level` filter; the binary that installed the tracing
/// subscriber provides it. `Err` carries why the filter is unusable.
pub type LogLevelHook = Arc<dyn Fn(&str) -> std::result::Result<(), String> + Send + Sync>;

/// What a reload acts on.
#[derive(Clone)]
pub struct ReloadTargets {
    /// The agent (refresh settings).
    pub agent: Arc<Agent>,
    /// The IPC access policy shared with the server.
    pub policy: SharedPolicy,
    /// Counters for the `metrics` op.
    pub stats: Arc<Counters>,
    /// Applies `[log] level`; `None` when nobody can (tests, embedded use).
    pub log_level: Option<LogLevelHook>,
}

impl std::fmt::Debug for ReloadTargets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadTargets")
            .field("policy", &self.policy)
            .field("log_level", &self.log_level.is_some())
            .finish_non_exhaustive()
    }
}

/// A running config watch; dropping it stops watching.
#[derive(Debug)]
pub struct ConfigWatcher {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ConfigWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts watching `path`; `running` is the configuration the agent started with.
///
/// # Errors
/// `CONFIG` when the file's directory cannot be watched.
pub fn watch(path: &Path, running: Config, targets: ReloadTargets) -> Result<ConfigWatcher> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut watch: DirWatch = watch_dir(&dir, DEBOUNCE)?;
    let mut reloader = Reloader {
        path: path.to_path_buf(),
        // Not read here: a change saved between loading the config and this
        // point would then count as seen. The first event compares the file
        // with the configuration in force instead.
        last_text: None,
        last_unreadable: None,
        running,
        targets,
    };
    tracing::info!(config = %path.display(), "watching the configuration file for changes");
    let task = tokio::spawn(async move {
        while watch.changed().await {
            reloader.on_change().await;
        }
    });
    Ok(ConfigWatcher { task })
}

struct Reloader {
    path: PathBuf,
    /// The text last seen, so a touch or an unrelated file in the directory
    /// does not count as a change.
    last_text: Option<String>,
    /// Why the file could not be read last time (owner, mode, I/O), so that
    /// the same refusal is logged once.
    last_unreadable: Option<String>,
    /// What is in force: the start-up config with reloaded parts replaced.
    running: Config,
    targets: ReloadTargets,
}

impl Reloader {
    async fn on_change(&mut self) {
        let shown = self.path.display().to_string();
        if let Err(e) = std::fs::metadata(&self.path)
            && e.kind() == std::io::ErrorKind::NotFound
        {
            if self.last_text.take().is_some() {
                tracing::warn!(config = %shown, "the configuration file was removed; the settings in force stay");
            }
            return;
        }
        let text = match read_settled(&self.path).await {
            Ok(Some(text)) => text,
            Ok(None) => {
                tracing::debug!(config = %shown, "configuration file still changing; waiting for the writer to finish");
                return;
            }
            Err(e) => {
                // Once per problem: the agent's own log may live in this
                // directory, and each line would bring the same refusal back.
                if self.last_unreadable.as_deref() != Some(e.message.as_str()) {
                    self.reject(&e.message);
                    self.last_unreadable = Some(e.message);
                }
                return;
            }
        };
        self.last_unreadable = None;
        if self.last_text.as_deref() == Some(text.as_str()) {
            // Unchanged text (a touch): only a listed symlink may have moved.
            self.resolve_executables_again();
            return;
        }
        self.last_text = Some(text.clone());
        let new = match Config::parse(&text, &self.path) {
            Ok(config) => config,
            Err(e) => {
                self.reject(&e.message);
                return;
            }
        };
        if let Some(problem) = dropped_security_key(&self.running, &text) {
            self.reject(&format!("config file {shown}: {problem}"));
            return;
        }
        self.apply(&new);
    }

    /// Resolves `[ipc] allow_executables` again for the configuration in
    /// force, and applies the result if a listed symlink now points elsewhere.
    /// Silent unless something changed: any event in the directory lands here,
    /// including the agent's own log file if it is written there.
    fn resolve_executables_again(&self) {
        if self.running.ipc.allow_executables.is_empty() {
            return;
        }
        let Ok((policy, warnings)) = policy_with_warnings(&self.running) else {
            return;
        };
        if policy == self.targets.policy.current() {
            return;
        }
        for warning in warnings {
            tracing::warn!("{warning}");
        }
        let exes = policy.allow_executables.clone();
        self.targets.policy.replace(policy);
        self.targets
            .stats
            .config_reloads
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            config = %self.path.display(),
            applied = %format!("[ipc] allow_executables = {exes:?}"),
            "configuration reloaded"
        );
    }

    fn reject(&self, problem: &str) {
        self.targets
            .stats
            .config_rejected
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            config = %self.path.display(),
            "configuration change rejected, the previous settings stay in force: {problem}"
        );
    }

    fn apply(&mut self, new: &Config) {
        let old = &self.running;
        // Validate everything first: a half-applied change is worse than none.
        // allow_executables is re-resolved on every change of the file, even
        // an unrelated one: a listed symlink may point elsewhere by now.
        let allow_changed = new.ipc.allow_uids != old.ipc.allow_uids
            || new.ipc.allow_users != old.ipc.allow_users
            || new.ipc.allow_groups != old.ipc.allow_groups
            || new.ipc.allow_executables != old.ipc.allow_executables
            || !new.ipc.allow_executables.is_empty();
        let policy = if allow_changed {
            match policy_from_config(new) {
                Ok(policy) if policy == self.targets.policy.current() => None,
                Ok(policy) => Some(policy),
                Err(e) => {
                    let message = format!("config file {}: {}", self.path.display(), e.message);
                    self.reject(&message);
                    return;
                }
            }
        } else {
            None
        };
        let level_changed = new.log.level != old.log.level;
        if level_changed
            && let Some(hook) = &self.targets.log_level
            && let Err(problem) = hook(&new.log.level)
        {
            let message = format!(
                "config file {}: [log] level = {:?}: {problem}",
                self.path.display(),
                new.log.level
            );
            self.reject(&message);
            return;
        }
        let mut applied = Vec::new();
        if level_changed {
            applied.push(format!("[log] level = {:?}", new.log.level));
            self.running.log.level = new.log.level.clone();
        }
        if let Some(policy) = policy {
            let before = self.targets.policy.current();
            let added: Vec<&String> = policy
                .allow_sids
                .iter()
                .chain(&policy.allow_group_sids)
                .filter(|sid| {
                    !before
                        .allow_sids
                        .iter()
                        .chain(&before.allow_group_sids)
                        .any(|b| b.eq_ignore_ascii_case(sid))
                })
                .collect();
            if !added.is_empty() {
                // The pipe's access list is set when the pipe is created.
                tracing::warn!(
                    accounts = ?added,
                    "accounts added to [ipc] allow_users / allow_groups can open the agent's named pipe only after the agent restarts"
                );
            }
            self.targets.policy.replace(policy);
            let exes = self.targets.policy.current().allow_executables;
            applied.push(format!(
                "[ipc] allow_uids = {:?}, allow_users = {:?}, allow_groups = {:?}, allow_executables = {:?}",
                new.ipc.allow_uids, new.ipc.allow_users, new.ipc.allow_groups, exes
            ));
            self.running.ipc.allow_uids = new.ipc.allow_uids.clone();
            self.running.ipc.allow_users = new.ipc.allow_users.clone();
            self.running.ipc.allow_groups = new.ipc.allow_groups.clone();
            self.running.ipc.allow_executables = new.ipc.allow_executables.clone();
        }
        if new.refresh != self.running.refresh {
            self.targets
                .agent
                .set_refresh_settings(EngineSettings::from(&new.refresh));
            applied.push("[refresh]".to_owned());
            self.running.refresh = new.refresh.clone();
        }
        if new.instances.mode == self.running.instances.mode
            && new.instances.max != self.running.instances.max
        {
            self.targets.agent.set_instances_max(new.instances.max);
            applied.push(format!("[instances] max = {}", new.instances.max));
            self.running.instances.max = new.instances.max;
        }
        let restart = restart_needed(&self.running, new);
        if !restart.is_empty() {
            tracing::warn!(
                config = %self.path.display(),
                "changes to {} take effect only after a restart; the agent keeps running with the settings it started with",
                restart.join(", ")
            );
        }
        if applied.is_empty() {
            tracing::debug!(config = %self.path.display(), "configuration file changed; nothing to apply live");
            return;
        }
        self.targets
            .stats
            .config_reloads
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            config = %self.path.display(),
            applied = %applied.join("; "),
            "configuration reloaded"
        );
    }
}

/// A second read this long after the first must agree before a change is
/// applied: a writer still at work shows as two different texts.
const SETTLE: Duration = Duration::from_millis(100);

/// Reads the file (owner and mode checked, see [`read_checked`]) until two
/// reads [`SETTLE`] apart agree. `Ok(None)`: it kept changing; the writer's
/// next change brings another event, and so another read.
async fn read_settled(path: &Path) -> Result<Option<String>> {
    let mut text = read_checked(path)?;
    for _ in 0..3 {
        tokio::time::sleep(SETTLE).await;
        let again = read_checked(path)?;
        if again == text {
            return Ok(Some(text));
        }
        text = again;
    }
    Ok(None)
}

/// Why `text` must not replace `running` although it parses: a file cut short
/// while being written is still valid TOML, and losing the last lines must
/// not lift a restriction. `[ipc] allow_executables` only ever loosens access
/// by going away, so its absence is refused while one is in force; an
/// explicit `allow_executables = []` lifts it.
fn dropped_security_key(running: &Config, text: &str) -> Option<String> {
    if running.ipc.allow_executables.is_empty() {
        return None;
    }
    let table: toml::Table = toml::from_str(text).ok()?;
    let present = table
        .get("ipc")
        .and_then(toml::Value::as_table)
        .is_some_and(|ipc| ipc.contains_key("allow_executables"));
    (!present).then(|| {
        format!(
            "[ipc] allow_executables is missing, but {} program(s) are allowed now; a file read while half-written looks like this, so nothing was applied. \
             To lift the restriction write `allow_executables = []` under [ipc]; otherwise restore the key",
            running.ipc.allow_executables.len()
        )
    })
}

/// The sections (or keys) that differ and cannot change while running.
fn restart_needed(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if new.server != running.server {
        out.push("[server]");
    }
    if new.store != running.store {
        out.push("[store]");
    }
    if new.state != running.state {
        out.push("[state]");
    }
    if new.instances.mode != running.instances.mode
        || new.instances.lease_grace != running.instances.lease_grace
    {
        out.push("[instances] mode, lease_grace");
    }
    let (a, b) = (&running.ipc, &new.ipc);
    if a.socket != b.socket
        || a.socket_mode != b.socket_mode
        || a.max_connections != b.max_connections
        || a.read_timeout != b.read_timeout
        || a.max_subscriptions_per_connection != b.max_subscriptions_per_connection
        || a.max_subscriptions != b.max_subscriptions
    {
        out.push("[ipc] socket, socket_mode, max_connections, read_timeout, max_subscriptions_per_connection, max_subscriptions");
    }
    if new.provisioning != running.provisioning {
        out.push("[provisioning]");
    }
    if new.log.format != running.log.format {
        out.push("[log] format");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new("regent.toml")).unwrap()
    }

    /// An absolute program path on this platform (a drive letter on Windows).
    const APP: &str = if cfg!(windows) {
        "C:/usr/bin/app"
    } else {
        "/usr/bin/app"
    };

    #[test]
    fn a_file_cut_before_allow_executables_is_refused() {
        let base = "[server]\nprofile = \"sentinel\"\nurl = \"https://a.example\"\n[ipc]\nallow_uids = [5]\n";
        let restricted = parse(&format!("{base}allow_executables = [\"{APP}\"]\n"));
        let problem = dropped_security_key(&restricted, base).unwrap();
        assert!(
            problem.contains("allow_executables is missing"),
            "{problem}"
        );
        assert!(problem.contains("allow_executables = []"), "{problem}");
        // Lifted on purpose, or never set: nothing to refuse.
        assert!(
            dropped_security_key(&restricted, &format!("{base}allow_executables = []\n")).is_none()
        );
        assert!(dropped_security_key(&parse(base), base).is_none());
        // The whole [ipc] section cut off counts as missing too.
        let cut = "[server]\nprofile = \"sentinel\"\nurl = \"https://a.example\"\n";
        assert!(dropped_security_key(&restricted, cut).is_some());
    }

    #[test]
    fn restart_sections_are_named() {
        let base = "[server]\nprofile = \"sentinel\"\nurl = \"https://a.example\"\n";
        let a = parse(base);
        assert!(restart_needed(&a, &a).is_empty());
        let b = parse(&format!(
            "{base}[log]\nlevel = \"debug\"\n[ipc]\nallow_uids = [5]\nallow_executables = [\"{APP}\"]\n[refresh]\nmargin = 5\n"
        ));
        // Reloadable changes need no restart.
        assert!(restart_needed(&a, &b).is_empty());
        let c = parse(
            "[server]\nprofile = \"sentinel\"\nurl = \"https://b.example\"\n[ipc]\nmode = \"0660\"\n[log]\nformat = \"json\"\n",
        );
        assert_eq!(
            restart_needed(&a, &c),
            vec![
                "[server]",
                "[ipc] socket, socket_mode, max_connections, read_timeout, max_subscriptions_per_connection, max_subscriptions",
                "[log] format"
            ]
        );
    }
}
