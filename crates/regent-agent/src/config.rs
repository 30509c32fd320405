//! The agent's configuration file (TOML).
//!
//! Every section has defaults except `[server]`, which must say where the license
//! server is. Unknown keys are errors that name the key and the file, so a typo
//! never silently falls back to a default. `regent.example.toml` at the root of
//! the repository documents every key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use regent_proto::ErrorCode;
use serde::Deserialize;
use url::Url;

use crate::error::{Error, Result};
use crate::store::StoreKind;

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
    #[serde(default = "defaults::socket_mode")]
    pub mode: String,
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
            mode: defaults::socket_mode(),
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

const SENTINEL_EXAMPLE: &str =
    "[server]\nprofile = \"sentinel\"\nurl = \"https://your-tenant.example.com\"";
const OAUTH2_EXAMPLE: &str = "[server]\nprofile = \"oauth2\"\ntoken_url = \"https://auth.example.com/oauth/token\"\nclient_id = \"my-client\"";

impl Config {
    /// Reads (see [`read_checked`]: owner and mode first) and validates a
    /// configuration file.
    ///
    /// # Errors
    /// `CONFIG` naming the file, the line and the problem (unknown key, wrong
    /// type, missing required key with an example, a value out of range), or
    /// a file that others than root and the agent's uid may write.
    pub fn load(path: &Path) -> Result<Config> {
        let text = read_checked(path)?;
        Config::parse(&text, path)
    }

    /// Parses and validates configuration text; `origin` names it in errors.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn parse(text: &str, origin: &Path) -> Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| {
            Error::new(
                ErrorCode::Config,
                format!(
                    "config file {}: {}",
                    origin.display(),
                    describe_toml_error(text, &e)
                ),
            )
        })?;
        config.validate().map_err(|problem| {
            Error::new(
                ErrorCode::Config,
                format!("config file {}: {problem}", origin.display()),
            )
        })?;
        Ok(config)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let s = &self.server;
        match s.profile {
            Profile::Sentinel => {
                if s.url.is_none() {
                    return Err(format!(
                        "[server] url is required for profile \"sentinel\"; for example:\n{SENTINEL_EXAMPLE}"
                    ));
                }
            }
            Profile::OAuth2 => {
                if s.token_url.is_none() && s.issuer.is_none() {
                    return Err(format!(
                        "[server] token_url (or issuer) is required for profile \"oauth2\"; for example:\n{OAUTH2_EXAMPLE}"
                    ));
                }
                if s.token_url.is_some() && s.issuer.is_some() {
                    return Err("[server] set token_url or issuer, not both".into());
                }
                if s.client_id.as_deref().is_none_or(str::is_empty) {
                    return Err(format!(
                        "[server] client_id is required for profile \"oauth2\"; for example:\n{OAUTH2_EXAMPLE}"
                    ));
                }
            }
        }
        for (key, url) in [
            ("url", &s.url),
            ("token_url", &s.token_url),
            ("issuer", &s.issuer),
        ] {
            if let Some(url) = url {
                crate::upstream::check_url(url)
                    .map_err(|e| format!("[server] {key}: {}", e.message))?;
            }
        }
        if let Some(proxy) = &s.proxy {
            crate::upstream::ProxySetting::parse(proxy)
                .map_err(|problem| format!("[server] proxy: {problem}"))?;
        }
        if s.ca_file.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(
                "[server] ca_file is empty; name a PEM file of CA certificates, or remove the key"
                    .into(),
            );
        }
        if let Some(max) = s.max_active_tokens
            && !(1..=200).contains(&max)
        {
            return Err(format!(
                "[server] max_active_tokens = {max} is out of range: it must be 1 to 200 (the platform's hard cap)"
            ));
        }
        let r = &self.refresh;
        if !(0.1..=0.95).contains(&r.ahead) {
            return Err(format!(
                "[refresh] ahead = {} must be between 0.1 and 0.95 (the fraction of a token's lifetime at which it is renewed)",
                r.ahead
            ));
        }
        if !(0.0..=0.5).contains(&r.jitter) {
            return Err(format!(
                "[refresh] jitter = {} must be between 0 and 0.5",
                r.jitter
            ));
        }
        for bound in self.duration_bounds() {
            bound.check()?;
        }
        if !(0.05..=0.9).contains(&r.min_spacing) {
            return Err(format!(
                "[refresh] min_spacing = {} must be between 0.05 and 0.9 (the fraction of a token's lifetime that must pass before demand may cause another renewal)",
                r.min_spacing
            ));
        }
        if r.backoff_min == 0 || r.backoff_max < r.backoff_min {
            return Err(
                "[refresh] backoff_min must be at least 1 and backoff_max at least backoff_min"
                    .into(),
            );
        }
        if self.instances.max == 0 {
            return Err("[instances] max must be at least 1".into());
        }
        if self.instances.mode == InstanceMode::Shared && self.instances.max != 1 {
            return Err("[instances] max only applies to mode = \"per-instance\"; remove it or set mode = \"per-instance\"".into());
        }
        if self.ipc.max_subscriptions_per_connection == 0 || self.ipc.max_subscriptions == 0 {
            return Err(
                "[ipc] max_subscriptions_per_connection and max_subscriptions must be at least 1"
                    .into(),
            );
        }
        if self.ipc.socket_mode().is_none() {
            return Err(format!(
                "[ipc] mode = {:?} is not an octal file mode such as \"0600\" or \"0660\"",
                self.ipc.mode
            ));
        }
        if let Some(mode) = self.ipc.socket_mode()
            && mode & 0o007 != 0
        {
            return Err(format!(
                "[ipc] mode = {:?} gives every user on this machine access to the socket (the last digit is not 0); use \"0600\" (the agent's user only) or \"0660\" with the socket's group, and name who may fetch tokens in [ipc] allow_uids / allow_groups",
                self.ipc.mode
            ));
        }
        for exe in &self.ipc.allow_executables {
            if !exe.is_absolute() {
                return Err(format!(
                    "[ipc] allow_executables: {:?} is not an absolute path; list programs by their full path, e.g. {}",
                    exe.display().to_string(),
                    if cfg!(windows) {
                        r#"'C:\Program Files\MyApp\my-app.exe'"#
                    } else {
                        r#""/usr/bin/my-app""#
                    }
                ));
            }
        }
        Ok(())
    }

    /// Every duration key with the range it must lie in. Beyond these a value
    /// is a mistake (a timeout of 584 billion years, a keep-alive of zero), and
    /// the arithmetic on it would only saturate silently.
    fn duration_bounds(&self) -> [DurationBound; 10] {
        let (s, r) = (&self.server, &self.refresh);
        [
            DurationBound::new("[server] connect_timeout", s.connect_timeout, 1, 300),
            DurationBound::new("[server] request_timeout", s.request_timeout, 1, 600),
            DurationBound::new("[store] timeout", self.store.timeout, 1, 300),
            DurationBound::new("[refresh] margin", r.margin, 0, 3_600),
            DurationBound::new("[refresh] demand_window", r.demand_window, 1, 86_400),
            DurationBound::new("[refresh] backoff_min", r.backoff_min, 1, 3_600),
            DurationBound::new("[refresh] backoff_max", r.backoff_max, 1, 86_400),
            DurationBound::new("[refresh] keepalive", r.keepalive, 60, 31_536_000),
            DurationBound::new(
                "[instances] lease_grace",
                self.instances.lease_grace,
                0,
                86_400,
            ),
            DurationBound::new("[ipc] read_timeout", self.ipc.read_timeout, 1, 3_600),
        ]
    }

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
    pub fn socket_mode(&self) -> Option<u32> {
        u32::from_str_radix(self.mode.trim_start_matches("0o"), 8)
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

/// A duration key's value and the range (in seconds) it must lie in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationBound {
    /// `[section] key`.
    pub key: &'static str,
    /// The configured value, in seconds.
    pub value: u64,
    /// Smallest allowed value.
    pub min: u64,
    /// Largest allowed value.
    pub max: u64,
}

impl DurationBound {
    const fn new(key: &'static str, value: u64, min: u64, max: u64) -> DurationBound {
        DurationBound {
            key,
            value,
            min,
            max,
        }
    }

    fn check(&self) -> std::result::Result<(), String> {
        if (self.min..=self.max).contains(&self.value) {
            return Ok(());
        }
        Err(format!(
            "{} = {} is out of range: it must be {} to {} seconds ({}); set a value in that range or remove the key for its default",
            self.key,
            self.value,
            self.min,
            self.max,
            human_seconds(self.max)
        ))
    }
}

impl Config {
    /// The duration keys and their allowed ranges, for the fuzz target's
    /// property and the documentation.
    pub fn duration_keys(&self) -> Vec<DurationBound> {
        self.duration_bounds().to_vec()
    }
}

/// `300` → `5 minutes`, `86400` → `1 day`, for range messages.
fn human_seconds(secs: u64) -> String {
    let plural = |n: u64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    match secs {
        s if s >= 86_400 && s % 86_400 == 0 => plural(s / 86_400, "day"),
        s if s >= 3_600 && s % 3_600 == 0 => plural(s / 3_600, "hour"),
        s if s >= 60 && s % 60 == 0 => plural(s / 60, "minute"),
        s => plural(s, "second"),
    }
}

/// Reads the configuration file after checking who may have written it: it
/// holds the allow lists, so a file that others can change hands them the
/// agent. On Unix the file (after symlinks) must belong to root or the
/// agent's uid and be writable by neither group nor others; the checks and
/// the read use one open file, so a swap in between changes nothing.
///
/// # Errors
/// `CONFIG` naming the file, what is wrong and the `chmod`/`chown` that fixes it.
pub fn read_checked(path: &Path) -> Result<String> {
    use std::io::Read as _;
    let cannot = |e: std::io::Error| {
        Error::new(
            ErrorCode::Config,
            format!("cannot read config file {}: {e}", path.display()),
        )
    };
    let mut file = std::fs::File::open(path).map_err(cannot)?;
    #[cfg(unix)]
    {
        let meta = file.metadata().map_err(cannot)?;
        check_file_owner_and_mode(path, &meta, crate::ipc::peer::current_uid())?;
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(cannot)?;
    Ok(text)
}

#[cfg(unix)]
fn check_file_owner_and_mode(path: &Path, meta: &std::fs::Metadata, own_uid: u32) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let shown = path.display();
    let owner = meta.uid();
    if owner != 0 && owner != own_uid {
        return Err(Error::new(
            ErrorCode::Config,
            format!(
                "config file {shown} belongs to uid {owner}, not to root or the agent's uid {own_uid}: that user could change the allow lists; \
                 fix: `chown root {shown}` (or `chown {own_uid}`)"
            ),
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
            (true, true) => "group- and world-writable",
            (true, false) => "group-writable",
            _ => "world-writable",
        };
        return Err(Error::new(
            ErrorCode::Config,
            format!(
                "config file {shown} is {who} (mode {mode:04o}): others could change the allow lists; fix: `chmod go-w {shown}`"
            ),
        ));
    }
    Ok(())
}

/// toml's messages already carry line, column and the offending key; prefix the
/// line number so the first thing a user reads is where to look.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let detail = e.message().trim();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {detail}")
        }
        None => detail.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("/etc/regent/regent.toml"))
    }

    #[test]
    fn minimal_sentinel_config_gets_defaults() {
        let c =
            parse("[server]\nprofile = \"sentinel\"\nurl = \"https://ems.example.com\"\n").unwrap();
        assert_eq!(c.server.profile, Profile::Sentinel);
        assert_eq!(c.store.kind, StoreKind::Keychain);
        assert_eq!(c.refresh, RefreshConfig::default());
        assert_eq!(c.instances.mode, InstanceMode::Shared);
        assert_eq!(c.ipc.socket_mode(), Some(0o600));
    }

    /// Regression (issue 18, item 1): `http://localhost` was accepted as
    /// loopback and resolved through the system resolver.
    #[test]
    fn server_urls_proxy_and_ca_file_are_checked_by_key() {
        let with = |line: &str| {
            parse(&format!(
                "[server]\nprofile = \"oauth2\"\nclient_id = \"c\"\n{line}\n"
            ))
        };
        let e = parse("[server]\nprofile = \"sentinel\"\nurl = \"http://localhost:8600/\"\n")
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Config);
        assert!(
            e.message
                .contains("[server] url: refusing plain http:// to localhost")
                && e.message.contains("use http://127.0.0.1:8600/"),
            "{}",
            e.message
        );
        let e = with("token_url = \"http://localhost./t\"").unwrap_err();
        assert!(e.message.contains("[server] token_url: "), "{}", e.message);
        let e = with("issuer = \"http://auth.example\"").unwrap_err();
        assert!(e.message.contains("[server] issuer: "), "{}", e.message);
        assert!(with("token_url = \"http://127.0.0.1:9/t\"").is_ok());

        let ok = "token_url = \"https://a.example/t\"";
        let c = with(&format!("{ok}\nproxy = \"http://proxy.corp:3128\"")).unwrap();
        assert!(matches!(
            c.server.proxy_setting(),
            crate::upstream::ProxySetting::Url(_)
        ));
        let c = with(&format!("{ok}\nproxy = \"none\"")).unwrap();
        assert_eq!(
            c.server.proxy_setting(),
            crate::upstream::ProxySetting::Direct
        );
        let c = with(ok).unwrap();
        assert_eq!(
            c.server.proxy_setting(),
            crate::upstream::ProxySetting::Environment
        );
        let e = with(&format!("{ok}\nproxy = \"socks5://127.0.0.1:1\"")).unwrap_err();
        assert!(e.message.contains("[server] proxy: "), "{}", e.message);
        let e = with(&format!("{ok}\nproxy = \"http://u:pw-secret@p:1\"")).unwrap_err();
        assert!(!e.message.contains("pw-secret"), "{}", e.message);
        let e = with(&format!("{ok}\nca_file = \"\"")).unwrap_err();
        assert!(e.message.contains("[server] ca_file"), "{}", e.message);
        let c = with(&format!("{ok}\nca_file = \"/etc/regent/ca.pem\"")).unwrap();
        assert_eq!(
            c.server.ca_file.as_deref(),
            Some(Path::new("/etc/regent/ca.pem"))
        );
    }

    #[test]
    fn unknown_key_names_key_line_and_file() {
        let e = parse("[server]\nprofile = \"sentinel\"\nurl = \"https://x.example\"\nurll = 1\n")
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Config);
        assert!(
            e.message.contains("/etc/regent/regent.toml"),
            "{}",
            e.message
        );
        assert!(e.message.contains("urll"), "{}", e.message);
        assert!(e.message.contains("line 4"), "{}", e.message);
    }

    #[test]
    fn missing_required_key_gives_example() {
        let e = parse("[server]\nprofile = \"sentinel\"\n").unwrap_err();
        assert!(e.message.contains("url is required"), "{}", e.message);
        assert!(
            e.message.contains("profile = \"sentinel\""),
            "{}",
            e.message
        );
        let e = parse("[server]\nprofile = \"oauth2\"\ntoken_url = \"https://a.example/t\"\n")
            .unwrap_err();
        assert!(e.message.contains("client_id is required"), "{}", e.message);
        let e = parse("[store]\nkind = \"file\"\n").unwrap_err();
        assert!(e.message.contains("server"), "{}", e.message);
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let base = "[server]\nprofile = \"oauth2\"\ntoken_url = \"https://a.example/t\"\nclient_id = \"c\"\n";
        assert!(parse(&format!("{base}max_active_tokens = 201\n")).is_err());
        assert!(parse(&format!("{base}max_active_tokens = 200\n")).is_ok());
        assert!(parse(&format!("{base}[refresh]\nahead = 1.5\n")).is_err());
        assert!(parse(&format!("{base}[ipc]\nmode = \"999\"\n")).is_err());
        for open in ["0666", "0606", "0601", "0o664"] {
            let e = parse(&format!("{base}[ipc]\nmode = \"{open}\"\n")).unwrap_err();
            assert!(
                e.message.contains("[ipc] mode") && e.message.contains("every user"),
                "{open}: {}",
                e.message
            );
        }
        assert!(parse(&format!("{base}[ipc]\nmode = \"0660\"\n")).is_ok());
        assert!(parse(&format!("{base}[instances]\nmax = 3\n")).is_err());
        assert!(
            parse(&format!(
                "{base}[instances]\nmode = \"per-instance\"\nmax = 3\n"
            ))
            .is_ok()
        );
    }

    #[test]
    fn absurd_durations_are_refused_by_key_value_and_range() {
        let base = "[server]\nprofile = \"sentinel\"\nurl = \"https://x.example\"\n";
        let cases = [
            (
                "[server]\nconnect_timeout = 0\n",
                "[server] connect_timeout = 0",
                "1 to 300 seconds",
            ),
            (
                "[server]\nrequest_timeout = 18446744073709551615\n",
                "[server] request_timeout = 18446744073709551615",
                "1 to 600 seconds",
            ),
            (
                "[store]\ntimeout = 0\n",
                "[store] timeout = 0",
                "1 to 300 seconds",
            ),
            (
                "[refresh]\nmargin = 3601\n",
                "[refresh] margin = 3601",
                "0 to 3600 seconds (1 hour)",
            ),
            (
                "[refresh]\ndemand_window = 0\n",
                "[refresh] demand_window = 0",
                "1 to 86400 seconds (1 day)",
            ),
            (
                "[refresh]\nbackoff_max = 18446744073709551615\n",
                "[refresh] backoff_max = 18446744073709551615",
                "1 to 86400",
            ),
            (
                "[refresh]\nbackoff_min = 0\n",
                "[refresh] backoff_min = 0",
                "1 to 3600",
            ),
            (
                "[refresh]\nkeepalive = 59\n",
                "[refresh] keepalive = 59",
                "60 to 31536000 seconds (365 days)",
            ),
            (
                "[instances]\nlease_grace = 86401\n",
                "[instances] lease_grace = 86401",
                "0 to 86400",
            ),
            (
                "[ipc]\nread_timeout = 0\n",
                "[ipc] read_timeout = 0",
                "1 to 3600",
            ),
        ];
        for (section, key_value, range) in cases {
            let text = if section.starts_with("[server]") {
                format!("{base}{}", section.trim_start_matches("[server]\n"))
            } else {
                format!("{base}{section}")
            };
            let e = parse(&text).unwrap_err();
            assert_eq!(e.code, ErrorCode::Config);
            assert!(e.message.contains(key_value), "{key_value}: {}", e.message);
            assert!(e.message.contains(range), "{range}: {}", e.message);
            assert!(e.message.contains("out of range"), "{}", e.message);
        }
        // The edges are accepted, and the defaults lie inside every range.
        let edges = format!(
            "{base}connect_timeout = 300\nrequest_timeout = 1\n[refresh]\nmargin = 0\nkeepalive = 60\nbackoff_min = 1\nbackoff_max = 86400\n[instances]\nlease_grace = 0\n"
        );
        let c = parse(&edges).unwrap();
        assert!(
            c.duration_keys()
                .iter()
                .all(|b| b.min <= b.value && b.value <= b.max)
        );
        let d = parse(base).unwrap();
        assert!(
            d.duration_keys()
                .iter()
                .all(|b| b.min <= b.value && b.value <= b.max)
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_config_file_must_not_be_writable_by_others() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("regent.toml");
        std::fs::write(
            &path,
            "[server]\nprofile = \"sentinel\"\nurl = \"https://x.example\"\n",
        )
        .unwrap();
        for mode in [0o600, 0o644, 0o640, 0o444] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            Config::load(&path).unwrap_or_else(|e| panic!("{mode:o}: {e}"));
        }
        for (mode, who) in [
            (0o666, "group- and world-writable"),
            (0o664, "group-writable"),
            (0o646, "world-writable"),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = Config::load(&path).unwrap_err();
            assert_eq!(e.code, ErrorCode::Config);
            assert!(e.message.contains(&path.display().to_string()), "{e}");
            assert!(e.message.contains(who), "{e}");
            assert!(
                e.message
                    .contains(&format!("chmod go-w {}", path.display())),
                "{e}"
            );
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let me = crate::ipc::peer::current_uid();
        if me == 0 {
            // Root's agent and a file of another user's.
            nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            let e = Config::load(&path).unwrap_err();
            assert!(e.message.contains("belongs to uid 65534"), "{e}");
            assert!(e.message.contains("chown root"), "{e}");
        } else {
            // An agent under another uid and a file of ours.
            let meta = std::fs::metadata(&path).unwrap();
            let e = check_file_owner_and_mode(&path, &meta, me + 1).unwrap_err();
            assert!(e.message.contains(&format!("belongs to uid {me}")), "{e}");
        }
    }

    #[test]
    fn allow_executables_must_be_absolute_paths() {
        // Absolute on this platform (a drive letter on Windows).
        let (app, other) = if cfg!(windows) {
            ("C:/usr/bin/app", "C:/opt/x/bin/y")
        } else {
            ("/usr/bin/app", "/opt/x/bin/y")
        };
        let base = "[server]\nprofile = \"sentinel\"\nurl = \"https://x.example\"\n[ipc]\n";
        let c = parse(&format!(
            "{base}allow_executables = [\"{app}\", \"{other}\"]\n"
        ))
        .unwrap();
        assert_eq!(
            c.ipc.allow_executables,
            vec![PathBuf::from(app), PathBuf::from(other)]
        );
        assert!(parse(base).unwrap().ipc.allow_executables.is_empty());
        let e = parse(&format!("{base}allow_executables = [\"bin/app\"]\n")).unwrap_err();
        assert_eq!(e.code, ErrorCode::Config);
        assert!(e.message.contains("allow_executables"), "{}", e.message);
        assert!(e.message.contains("not an absolute path"), "{}", e.message);
        assert!(e.message.contains("bin/app"), "{}", e.message);
    }

    #[test]
    fn log_formats_include_journald() {
        let base = "[server]\nprofile = \"sentinel\"\nurl = \"https://x.example\"\n";
        let c = parse(&format!("{base}[log]\nformat = \"journald\"\n")).unwrap();
        assert_eq!(c.log.format, LogFormat::Journald);
        let e = parse(&format!("{base}[log]\nformat = \"syslog\"\n")).unwrap_err();
        assert!(e.message.contains("line 5"), "{}", e.message);
    }

    #[test]
    fn the_example_file_parses() {
        let text = include_str!("../../../regent.example.toml");
        let c = parse(text).unwrap();
        assert_eq!(c.server.profile, Profile::Sentinel);
    }
}
