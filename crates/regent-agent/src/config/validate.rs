//! What a parsed configuration must satisfy beyond its types: required keys
//! per profile (with an example), ranges of every duration.

use super::*;

pub(super) const SENTINEL_EXAMPLE: &str =
    "[server]\nprofile = \"sentinel\"\nurl = \"https://your-tenant.example.com\"";

pub(super) const OAUTH2_EXAMPLE: &str = "[server]\nprofile = \"oauth2\"\ntoken_url = \"https://auth.example.com/oauth/token\"\nclient_id = \"my-client\"";

impl Config {
    pub(super) fn validate(&self) -> std::result::Result<(), String> {
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
        if self.ipc.socket_mode_bits().is_none() {
            return Err(format!(
                "[ipc] socket_mode = {:?} is not an octal file mode such as \"0600\" or \"0660\"",
                self.ipc.socket_mode
            ));
        }
        if let Some(mode) = self.ipc.socket_mode_bits()
            && mode & 0o007 != 0
        {
            return Err(format!(
                "[ipc] socket_mode = {:?} gives every user on this machine access to the socket (the last digit is not 0); use \"0600\" (the agent's user only) or \"0660\" with the socket's group, and name who may fetch tokens in [ipc] allow_uids / allow_groups",
                self.ipc.socket_mode
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
    pub(super) fn duration_bounds(&self) -> [DurationBound; 10] {
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
    pub(super) const fn new(key: &'static str, value: u64, min: u64, max: u64) -> DurationBound {
        DurationBound {
            key,
            value,
            min,
            max,
        }
    }

    pub(super) fn check(&self) -> std::result::Result<(), String> {
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
pub(super) fn human_seconds(secs: u64) -> String {
    let plural = |n: u64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    match secs {
        s if s >= 86_400 && s % 86_400 == 0 => plural(s / 86_400, "day"),
        s if s >= 3_600 && s % 3_600 == 0 => plural(s / 3_600, "hour"),
        s if s >= 60 && s % 60 == 0 => plural(s / 60, "minute"),
        s => plural(s, "second"),
    }
}
