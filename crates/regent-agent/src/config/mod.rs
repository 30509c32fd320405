//! The agent's configuration file (TOML).
//!
//! Every section has defaults except `[server]`, which must say where the license
//! server is. Unknown keys are errors that name the key and the file, so a typo
//! never silently falls back to a default. `regent.example.toml` at the root of
//! the repository documents every key.

mod file;
mod validate;

use std::path::{Path, PathBuf};
use std::time::Duration;

use regent_proto::ErrorCode;
use serde::Deserialize;
use url::Url;

use crate::error::{Error, Result};
use crate::store::StoreKind;

pub use self::file::read_checked;
pub use self::validate::DurationBound;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the license server is and how to talk to it.
    pub server: ServerConfig,
    /// Where secrets are kept.
    #[serde(default)]
    pub store: StoreConfig,
    /// Non-secret state (device id, slot identifiers, pending redemptions).
    #[serde(default)]
    pub state: StateConfig,
    /// When and how tokens are renewed.
    #[serde(default)]
    pub refresh: RefreshConfig,
    /// One auth token per device, or one per app instance.
    #[serde(default)]
    pub instances: InstancesConfig,
    /// The local socket apps connect to, and who may use it.
    #[serde(default)]
    pub ipc: IpcConfig,
    /// A directory watched for registration-token files (provisioning).
    #[serde(default)]
    pub provisioning: ProvisioningConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
}

/// Which upstream protocol the license server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Sentinel EMS style: registration token → auth token → refresh cycle.
    Sentinel,
    /// OAuth2 client credentials (Reltio style), optionally with refresh tokens.
    #[serde(rename = "oauth2")]
    OAuth2,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// `"sentinel"` or `"oauth2"`.
    pub profile: Profile,
    /// Sentinel: the server's base URL (`https://…`; `http://` only to loopback).
    pub url: Option<Url>,
    /// OAuth2: the token endpoint.
    pub token_url: Option<Url>,
    /// OAuth2: an issuer whose `/.well-known/openid-configuration` names the token endpoint.
    pub issuer: Option<Url>,
    /// OAuth2: the client id (the secret is enrolled, never written here).
    pub client_id: Option<String>,
    /// OAuth2: the scope to request.
    pub scope: Option<String>,
    /// OAuth2 multi-token servers: never hold more live tokens than this (the
    /// server's `maxActiveTokensAllowed`; at most 200).
    pub max_active_tokens: Option<u32>,
    /// Sentinel: free-form reference ids sent with a redemption (admins see them).
    pub ref_id1: Option<String>,
    /// Sentinel: second reference id.
    pub ref_id2: Option<String>,
    /// Seconds to wait for a TCP/TLS connection.
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: u64,
    /// Seconds to wait for a whole response.
    #[serde(default = "defaults::request_timeout")]
    pub request_timeout: u64,
    /// How `https://` requests reach the server: `"http://HOST:PORT"` (a
    /// CONNECT proxy), `"none"`, or unset for `HTTPS_PROXY`/`NO_PROXY` from
    /// the environment. Plain `http://` never goes through a proxy.
    pub proxy: Option<String>,
    /// A PEM file of extra CA certificates to trust (a private CA, a
    /// TLS-inspecting proxy), besides the system's.
    pub ca_file: Option<PathBuf>,
}

impl ServerConfig {
    /// The `proxy` key as a setting (unset: the environment's).
    pub fn proxy_setting(&self) -> crate::upstream::ProxySetting {
        self.proxy
            .as_deref()
            .and_then(|p| crate::upstream::ProxySetting::parse(p).ok())
            .unwrap_or_default()
    }
}

/// `[store]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `"keychain"` (default: the OS keychain) or `"file"` (explicit choice for
    /// headless system services; a `0600` file in the state directory).
    #[serde(default = "defaults::store_kind")]
    pub kind: StoreKind,
    /// Keychain service name under which entries are stored.
    #[serde(default = "defaults::service")]
    pub service: String,
    /// File store path; default `<state.dir>/secrets.json`.
    pub path: Option<PathBuf>,
    /// Seconds a keychain call may take before it counts as unavailable (a locked
    /// keychain can block forever).
    #[serde(default = "defaults::store_timeout")]
    pub timeout: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: defaults::store_kind(),
            service: defaults::service(),
            path: None,
            timeout: defaults::store_timeout(),
        }
    }
}

/// `[state]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// The state directory; default `$XDG_STATE_HOME/regent` (or `~/.local/state/regent`).
    pub dir: Option<PathBuf>,
}

/// `[refresh]`: the token cycle's timing (DESIGN §4).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshConfig {
    /// Renew at this fraction of a token's lifetime (default 2/3).
    #[serde(default = "defaults::ahead")]
    pub ahead: f64,
    /// ± this fraction of jitter around the renewal point (default 0.1).
    #[serde(default = "defaults::jitter")]
    pub jitter: f64,
    /// Seconds of safety added to the largest recent `min_valid` (capped at a
    /// tenth of the token's lifetime for very short tokens).
    #[serde(default = "defaults::margin")]
    pub margin: u64,
    /// Seconds a request keeps the engine renewing ahead; without requests or
    /// subscribers the engine idles and only keeps the credential alive.
    #[serde(default = "defaults::demand_window")]
    pub demand_window: u64,
    /// First retry delay after a transient failure, in seconds.
    #[serde(default = "defaults::backoff_min")]
    pub backoff_min: u64,
    /// Longest retry delay, in seconds.
    #[serde(default = "defaults::backoff_max")]
    pub backoff_max: u64,
    /// Renew an idle refresh token at least this often, in seconds (Keycloak's
    /// offline sessions die after 30 idle days; default 1 day).
    #[serde(default = "defaults::keepalive")]
    pub keepalive: u64,
    /// Fraction of a token's lifetime that must pass after a renewal before
    /// demand (requests, subscriptions) may cause another (default 0.2: at
    /// most five renewals per lifetime, whatever `min_valid` clients ask).
    #[serde(default = "defaults::min_spacing")]
    pub min_spacing: f64,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        RefreshConfig {
            ahead: defaults::ahead(),
            jitter: defaults::jitter(),
            margin: defaults::margin(),
            demand_window: defaults::demand_window(),
            backoff_min: defaults::backoff_min(),
            backoff_max: defaults::backoff_max(),
            keepalive: defaults::keepalive(),
            min_spacing: defaults::min_spacing(),
        }
    }
}

/// How slots map to app instances (DESIGN §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceMode {
    /// One auth token for the device, shared by every app instance.
    #[default]
    Shared,
    /// One auth token per running app instance, up to `instances.max`.
    PerInstance,
}

/// `[instances]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstancesConfig {
    /// `"shared"` (default) or `"per-instance"`.
    #[serde(default)]
    pub mode: InstanceMode,
    /// Most slots in `per-instance` mode.
    #[serde(default = "defaults::instances_max")]
    pub max: u32,
    /// Seconds a disconnected instance's slot stays reserved for it.
    #[serde(default = "defaults::lease_grace")]
    pub lease_grace: u64,
}

impl Default for InstancesConfig {
    fn default() -> Self {
        InstancesConfig {
            mode: InstanceMode::default(),
            max: defaults::instances_max(),
            lease_grace: defaults::lease_grace(),
        }
    }
}

/// `[ipc]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpcConfig {
    /// Socket path; default `$REGENT_SOCKET`, else `$XDG_RUNTIME_DIR/regent/agent.sock`.
    pub socket: Option<PathBuf>,
    /// Octal mode of the socket file, e.g. `"0600"` or `"0660"`. A mode that
    /// gives other users access (last digit not 0) is refused: who may fetch
    /// tokens is said with `allow_uids` / `allow_groups` and the socket's group.
    /// `mode`, its 0.1 name, is still read (`[instances] mode` is another
    /// thing: the slot mode).
    #[serde(default = "defaults::socket_mode", alias = "mode")]
    pub socket_mode: String,
    /// Uids allowed to fetch tokens, besides the agent's own uid and root
    /// (Unix; on Windows a `CONFIG` error: name accounts in `allow_users`).
    #[serde(default)]
    pub allow_uids: Vec<u32>,
    /// Users allowed to fetch tokens. Unix: user names or numeric uids,
    /// resolved to uids when the configuration is loaded and merged with
    /// `allow_uids`. Windows: account names (`alice`, `MACHINE\alice`,
    /// `DOMAIN\alice`) or SIDs (`S-1-5-21-…`), names resolved to SIDs with
    /// `LookupAccountNameW` when the configuration is loaded or reloaded.
    #[serde(default)]
    pub allow_users: Vec<String>,
    /// Groups allowed to fetch tokens. Unix: group names or gids, matched
    /// against a peer's primary group or any of its supplementary groups
    /// (Linux). Windows: group names (`Users`, `DOMAIN\licensed-apps`) or
    /// SIDs, matched against the groups enabled in the client's token.
    #[serde(default)]
    pub allow_groups: Vec<String>,
    /// Absolute paths of the programs that may use the agent (Linux, macOS,
    /// Windows). Empty
    /// (the default): any program of an allowed uid. When set, a peer is served
    /// only if its executable (`/proc/PID/exe`) is one of these paths, each
    /// resolved through symlinks when the configuration is loaded. Root is
    /// never restricted; the agent's own executable (the `regent` CLI) stays
    /// allowed for the agent's own uid. See [`crate::ipc::peer`].
    #[serde(default)]
    pub allow_executables: Vec<PathBuf>,
    /// Most simultaneous connections.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Seconds a connection may sit on a half-sent frame.
    #[serde(default = "defaults::read_timeout")]
    pub read_timeout: u64,
    /// Most subscriptions one connection may hold.
    #[serde(default = "defaults::max_subscriptions_per_connection")]
    pub max_subscriptions_per_connection: usize,
    /// Most subscriptions all connections together may hold.
    #[serde(default = "defaults::max_subscriptions")]
    pub max_subscriptions: usize,
}

impl Default for IpcConfig {
    fn default() -> Self {
        IpcConfig {
            socket: None,
            socket_mode: defaults::socket_mode(),
            allow_uids: Vec::new(),
            allow_users: Vec::new(),
            allow_groups: Vec::new(),
            allow_executables: Vec::new(),
            max_connections: defaults::max_connections(),
            read_timeout: defaults::read_timeout(),
            max_subscriptions_per_connection: defaults::max_subscriptions_per_connection(),
            max_subscriptions: defaults::max_subscriptions(),
        }
    }
}

/// `[provisioning]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningConfig {
    /// A directory where an administrator may drop a registration-token file:
    /// it is read once and deleted; a failed redemption leaves a
    /// `NAME.failed.reason` file. The directory must be owned by root or the
    /// agent's user with no group or other access (0700), else it is only
    /// logged and never touched; a file that group or others may read is
    /// refused, unread.
    pub dir: Option<PathBuf>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
    /// Structured records straight to the systemd journal (falls back to text
    /// on stderr when the journal socket is missing).
    Journald,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `"info"` or `"regent_agent=debug"`; `RUST_LOG` wins.
    #[serde(default = "defaults::log_level")]
    pub level: String,
    /// `"text"`, `"json"` or `"journald"`.
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: defaults::log_level(),
            format: LogFormat::default(),
        }
    }
}

mod defaults {
    use crate::store::StoreKind;

    pub fn connect_timeout() -> u64 {
        10
    }
    pub fn request_timeout() -> u64 {
        30
    }
    pub fn store_kind() -> StoreKind {
        StoreKind::Keychain
    }
    pub fn service() -> String {
        "regent".into()
    }
    pub fn store_timeout() -> u64 {
        5
    }
    pub fn ahead() -> f64 {
        2.0 / 3.0
    }
    pub fn jitter() -> f64 {
        0.1
    }
    pub fn margin() -> u64 {
        30
    }
    pub fn demand_window() -> u64 {
        600
    }
    pub fn backoff_min() -> u64 {
        1
    }
    pub fn backoff_max() -> u64 {
        300
    }
    pub fn keepalive() -> u64 {
        86_400
    }
    pub fn instances_max() -> u32 {
        1
    }
    pub fn lease_grace() -> u64 {
        10
    }
    pub fn socket_mode() -> String {
        "0600".into()
    }
    pub fn max_connections() -> usize {
        1024
    }
    pub fn read_timeout() -> u64 {
        30
    }
    pub fn max_subscriptions_per_connection() -> usize {
        256
    }
    pub fn max_subscriptions() -> usize {
        16_384
    }
    pub fn min_spacing() -> f64 {
        0.2
    }
    pub fn log_level() -> String {
        "info".into()
    }
}

impl Config {
    /// The state directory, explicit or the platform default.
    ///
    /// # Errors
    /// `CONFIG` when no default can be found (no `HOME` nor `XDG_STATE_HOME`).
    pub fn state_dir(&self) -> Result<PathBuf> {
        if let Some(dir) = &self.state.dir {
            return Ok(dir.clone());
        }
        if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(dir).join("regent"));
        }
        if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(home).join(".local/state/regent"));
        }
        Err(Error::new(
            ErrorCode::Config,
            "no state directory: set [state] dir in the config file, or HOME / XDG_STATE_HOME",
        ))
    }

    /// The file store's path, explicit or `<state dir>/secrets.json`.
    ///
    /// # Errors
    /// As [`Config::state_dir`].
    pub fn store_path(&self) -> Result<PathBuf> {
        match &self.store.path {
            Some(p) => Ok(p.clone()),
            None => Ok(self.state_dir()?.join("secrets.json")),
        }
    }
}

impl IpcConfig {
    /// The socket mode as a number, if the string is valid octal.
    pub fn socket_mode_bits(&self) -> Option<u32> {
        u32::from_str_radix(self.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
    }
}

impl RefreshConfig {
    /// `margin` as a duration.
    pub fn margin(&self) -> Duration {
        Duration::from_secs(self.margin)
    }
}

#[cfg(test)]
mod tests;
