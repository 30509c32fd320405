//! Start-up configuration of an emulator instance.

use std::fmt;
use std::io;
use std::time::Duration;

use crate::records::UserSpec;
use crate::secret;

/// How an emulator instance is set up. `Default` gives Keycloak-like realm
/// settings and a fresh random admin key; most tests change one or two fields:
///
/// ```
/// use std::time::Duration;
/// use regent_emulator::EmulatorConfig;
///
/// let config = EmulatorConfig {
///     access_token_lifespan: Duration::from_secs(2),
///     ..EmulatorConfig::default()
/// };
/// assert_eq!(config.realm, "regent");
/// ```
#[derive(Clone)]
pub struct EmulatorConfig {
    /// Name of the OIDC realm; appears in `idpConfigurations` and the realm token URL.
    pub realm: String,
    /// The public OIDC client the agent names when refreshing (`client_id`).
    pub client_id: String,
    /// User name accepted by the `password` grant for admin bearer tokens.
    pub admin_username: String,
    /// Password accepted by the `password` grant for admin bearer tokens.
    pub admin_password: String,
    /// Secret guarding the emulator-only `/_emulator/*` routes
    /// (header `X-Emulator-Key`). Random by default; must not be empty.
    pub admin_key: String,
    /// Lifetime of realm access tokens handed to devices (Keycloak default: 300 s).
    pub access_token_lifespan: Duration,
    /// Idle lifetime of realm refresh tokens (Keycloak offline idle default: 30 days).
    pub refresh_token_lifespan: Duration,
    /// Whether each refresh rotates the refresh token. When on, presenting an
    /// already-rotated refresh token kills the session (Keycloak reuse detection).
    pub rotate_refresh_tokens: bool,
    /// Per-source-IP limit on the token-issuing routes; off when `None`.
    pub rate_limit: Option<RateLimit>,
    /// People who can sign in (authorization code and device flows).
    pub users: Vec<UserSpec>,
    /// Public OAuth2 clients (no secret, PKCE) registered at start, allowed
    /// the authorization code, device code and refresh grants, with the
    /// realm's token lifespans and rotation setting.
    pub public_clients: Vec<String>,
    /// The polling interval device authorizations announce (RFC 8628 default: 5 s).
    pub device_interval: Duration,
}

/// A request budget: at most `requests` per source IP in each window of `per`
/// (a fixed window, started by the first request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests allowed per window.
    pub requests: u32,
    /// Length of the window.
    pub per: Duration,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            realm: "regent".to_owned(),
            client_id: "regent-agent".to_owned(),
            admin_username: "admin".to_owned(),
            admin_password: "admin".to_owned(),
            admin_key: secret::token(),
            access_token_lifespan: Duration::from_secs(300),
            refresh_token_lifespan: Duration::from_secs(30 * 24 * 3600),
            rotate_refresh_tokens: true,
            rate_limit: None,
            users: Vec::new(),
            public_clients: Vec::new(),
            device_interval: Duration::from_secs(5),
        }
    }
}

impl fmt::Debug for EmulatorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmulatorConfig")
            .field("realm", &self.realm)
            .field("client_id", &self.client_id)
            .field("admin_username", &self.admin_username)
            .field("admin_password", &"<redacted>")
            .field("admin_key", &"<redacted>")
            .field("access_token_lifespan", &self.access_token_lifespan)
            .field("refresh_token_lifespan", &self.refresh_token_lifespan)
            .field("rotate_refresh_tokens", &self.rotate_refresh_tokens)
            .field("rate_limit", &self.rate_limit)
            .field(
                "users",
                &self.users.iter().map(|u| &u.username).collect::<Vec<_>>(),
            )
            .field("public_clients", &self.public_clients)
            .field("device_interval", &self.device_interval)
            .finish()
    }
}

impl EmulatorConfig {
    /// Refuses settings that would make the server unusable or unguarded.
    pub(crate) fn validate(&self) -> io::Result<()> {
        let invalid =
            |what: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, what.to_owned()));
        if self.realm.is_empty() || self.realm.contains('/') {
            return invalid("emulator realm must be a non-empty name without '/'");
        }
        if self.client_id.is_empty() {
            return invalid("emulator client_id must not be empty");
        }
        if self.admin_username.is_empty() || self.admin_password.is_empty() {
            return invalid("emulator admin username and password must not be empty");
        }
        if self.admin_key.is_empty() {
            return invalid("emulator admin_key must not be empty: it guards /_emulator/*");
        }
        if self.access_token_lifespan.is_zero() || self.refresh_token_lifespan.is_zero() {
            return invalid("emulator token lifespans must be longer than zero");
        }
        if self.users.iter().any(|u| u.clone().into_user().is_err()) {
            return invalid("each emulator user needs a printable name and a password");
        }
        if self.device_interval.is_zero() {
            return invalid("emulator device interval must be at least one second");
        }
        if self.public_clients.iter().any(|c| c.trim().is_empty()) {
            return invalid("emulator public client ids must not be empty");
        }
        if let Some(limit) = self.rate_limit
            && (limit.requests == 0 || limit.per.is_zero())
        {
            return invalid("emulator rate limit needs requests >= 1 and a non-zero window");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_secrets_but_shows_the_admin_user() {
        let config = EmulatorConfig {
            admin_password: "hunter2".into(),
            ..EmulatorConfig::default()
        };
        let text = format!("{config:?}");
        assert!(text.contains("admin_username: \"admin\""), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains(&config.admin_key), "{text}");
    }

    #[test]
    fn defaults_are_valid_and_keys_differ() {
        let a = EmulatorConfig::default();
        assert!(a.validate().is_ok());
        assert_ne!(a.admin_key, EmulatorConfig::default().admin_key);
    }

    #[test]
    fn unusable_settings_are_refused() {
        let empty_key = EmulatorConfig {
            admin_key: String::new(),
            ..EmulatorConfig::default()
        };
        assert!(empty_key.validate().is_err());
        let zero_rate = EmulatorConfig {
            rate_limit: Some(RateLimit {
                requests: 0,
                per: Duration::from_secs(1),
            }),
            ..EmulatorConfig::default()
        };
        assert!(zero_rate.validate().is_err());
    }
}
