//! A grant: what a successful token call returns.
//!
//! Expiries are wall-clock instants computed at receipt (`received_at +
//! expires_in`), never ages measured by our own clock alone (DESIGN §3.2, §4).

use std::time::{Duration, SystemTime};

use crate::secret::{ExposeSecret, SecretString};

/// An access token with its expiry, plus whatever the server rotated alongside it.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The bearer token handed to apps.
    pub access_token: SecretString,
    /// Usually `"Bearer"`.
    pub token_type: String,
    /// When the response arrived (wall clock).
    pub received_at: SystemTime,
    /// `received_at + expires_in`.
    pub expires_at: SystemTime,
    /// A new (possibly rotated) refresh token, when the server sent one.
    pub refresh_token: Option<SecretString>,
    /// When the refresh token stops working, when the server said.
    pub refresh_expires_at: Option<SystemTime>,
    /// Granted scope, when the server said.
    pub scope: Option<String>,
}

impl Grant {
    /// How long the access token stays valid from `now`; zero once expired.
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.expires_at
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
    }

    /// The lifetime the server granted.
    pub fn lifetime(&self) -> Duration {
        self.expires_at
            .duration_since(self.received_at)
            .unwrap_or(Duration::ZERO)
    }

    /// True when this grant carries the same access token as `other`
    /// (a server without multi-token support re-issues the same token).
    pub fn same_token_as(&self, other: &Grant) -> bool {
        self.access_token.expose_secret() == other.access_token.expose_secret()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::secret;

    fn grant(at: u64, lifetime: u64, token: &str) -> Grant {
        let received_at = SystemTime::UNIX_EPOCH + Duration::from_secs(at);
        Grant {
            access_token: secret(token.to_owned()),
            token_type: "Bearer".into(),
            received_at,
            expires_at: received_at + Duration::from_secs(lifetime),
            refresh_token: None,
            refresh_expires_at: None,
            scope: None,
        }
    }

    #[test]
    fn remaining_saturates_at_zero() {
        let g = grant(1000, 60, "a");
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(g.remaining(t(1000)), Duration::from_secs(60));
        assert_eq!(g.remaining(t(1059)), Duration::from_secs(1));
        assert_eq!(g.remaining(t(5000)), Duration::ZERO);
        assert_eq!(g.lifetime(), Duration::from_secs(60));
    }

    #[test]
    fn same_token_compares_values() {
        assert!(grant(1, 2, "x").same_token_as(&grant(5, 9, "x")));
        assert!(!grant(1, 2, "x").same_token_as(&grant(1, 2, "y")));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let g = grant(1, 2, "super-secret-value");
        assert!(!format!("{g:?}").contains("super-secret-value"));
    }
}
