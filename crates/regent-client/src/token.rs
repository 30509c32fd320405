//! What calls return: tokens, enrollment results, subscription events.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use regent_proto::message::{Event, TokenReply};
use secrecy::{ExposeSecret, SecretString};

use crate::Error;

/// An access token from the agent.
///
/// The bearer value is zeroized on drop and redacted in `Debug`; read it with
/// [`Token::access_token`] only where it is sent.
#[derive(Clone)]
pub struct Token {
    access_token: SecretString,
    /// Usually `"Bearer"`.
    pub token_type: String,
    /// When the token stops being valid (wall clock).
    pub expires_at: SystemTime,
    /// The granted scope, when the license server said.
    pub scope: Option<String>,
}

impl Token {
    /// A token with this value and expiry (for tests and other transports).
    pub fn new(
        access_token: SecretString,
        token_type: impl Into<String>,
        expires_at: SystemTime,
        scope: Option<String>,
    ) -> Self {
        Token {
            access_token,
            token_type: token_type.into(),
            expires_at,
            scope,
        }
    }

    /// The bearer value (the wire's `access_token`), for the one place that
    /// sends it.
    pub fn access_token(&self) -> &str {
        self.access_token.expose_secret()
    }

    /// The 0.1 name of [`Token::access_token`]; kept so that existing code
    /// builds, and to be removed in 0.3.
    pub fn secret(&self) -> &str {
        self.access_token()
    }

    /// How long the token stays valid from now, by the wall clock; zero once expired.
    pub fn remaining(&self) -> Duration {
        self.expires_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }

    pub(crate) fn from_reply(reply: TokenReply) -> Self {
        Token {
            expires_at: from_unix_ms(reply.expires_at_ms),
            access_token: SecretString::from(reply.access_token.take()),
            token_type: reply.token_type,
            scope: reply.scope,
        }
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("access_token", &"[redacted]")
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .finish()
    }
}

/// A successful enrollment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolled {
    /// The slot identifier (sentinel profile) or client id (oauth2 profile).
    pub identifier: String,
    /// The license server's auth-token id, when it has one (sentinel profile).
    pub auth_token_id: Option<String>,
    /// When the first access token expires.
    pub expires_at: SystemTime,
}

/// Where a browser sign-in goes (`Client::login_browser`): the caller adds
/// `response_type=code`, its loopback `redirect_uri`, `state` and the PKCE
/// challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowserLogin {
    /// The provider's authorization endpoint.
    pub authorization_endpoint: String,
    /// The configured client id.
    pub client_id: String,
    /// The configured scope, if any.
    pub scope: Option<String>,
}

/// A device sign-in under way (`Client::login_device`, RFC 8628): show
/// `user_code` and `verification_uri` to the person, then poll with
/// [`Client::poll_device_login`](crate::Client::poll_device_login) every `interval`.
#[derive(Debug)]
pub struct DeviceLogin {
    /// What each poll hands back to the agent.
    pub device_code: SecretString,
    /// What the person types at the verification page.
    pub user_code: String,
    /// The verification page.
    pub verification_uri: String,
    /// The page with the code filled in, when the server gave one.
    pub verification_uri_complete: Option<String>,
    /// How long the code stays valid.
    pub expires_in: std::time::Duration,
    /// How long to wait between polls.
    pub interval: std::time::Duration,
}

/// A completed sign-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedIn {
    /// Who signed in, when the provider said.
    pub user: Option<regent_proto::status::SignedInUser>,
    /// The granted scope, when the server said.
    pub scope: Option<String>,
    /// When the first access token expires.
    pub expires_at: SystemTime,
}

/// What one device-sign-in poll came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginPoll {
    /// Signed in.
    LoggedIn(LoggedIn),
    /// Not approved yet: poll again after the interval, five seconds longer
    /// from now on when `slow_down` (RFC 8628 §3.5).
    Pending {
        /// The server asked for a longer interval.
        slow_down: bool,
    },
}

/// Who answered `hello`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    /// The negotiated protocol version (the `hello` reply's `version`).
    pub version: u32,
    /// The agent's software version, e.g. `"0.1.0"` (the `hello` reply's
    /// `agent`). Until 0.2 `version` held this and `protocol` the protocol
    /// version: the names now mean what they mean on the wire.
    pub agent: String,
}

/// Something a subscription reports.
#[derive(Debug, Clone)]
pub enum SubscriptionEvent {
    /// A token valid for at least the subscription's `min_valid`: the first
    /// one right after subscribing, then one each time the agent renews it.
    Token(Token),
    /// The agent's state changed (`active`, `degraded`, `revoked`,
    /// `unenrolled`, …), with the reason when it was a failure.
    State {
        /// The new state's name.
        state: String,
        /// Why, when the change was a failure.
        error: Option<Error>,
    },
}

impl SubscriptionEvent {
    pub(crate) fn from_event(event: Event) -> Self {
        match event {
            Event::Token(reply) => SubscriptionEvent::Token(Token::from_reply(reply)),
            Event::State { state, error } => SubscriptionEvent::State {
                state,
                error: error.map(Error::from),
            },
        }
    }
}

/// A wire expiry (unix milliseconds) as a wall-clock instant; an expiry past
/// the year 9999 ([`regent_proto::time::LATEST_UNIX_MS`]) reads as already
/// expired rather than eternal, on every platform.
pub(crate) fn from_unix_ms(ms: u64) -> SystemTime {
    regent_proto::time::from_unix_ms(ms).unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use regent_proto::message::WireSecret;

    use super::*;

    fn reply(expires_at_ms: u64) -> TokenReply {
        TokenReply {
            access_token: WireSecret::new("eyJ-very-secret".into()),
            token_type: "Bearer".into(),
            expires_at_ms,
            scope: Some("read".into()),
        }
    }

    #[test]
    fn tokens_carry_the_reply_and_hide_the_secret() {
        let token = Token::from_reply(reply(1_790_000_000_123));
        assert_eq!(token.secret(), "eyJ-very-secret");
        assert_eq!(token.token_type, "Bearer");
        assert_eq!(token.scope.as_deref(), Some("read"));
        assert_eq!(
            token.expires_at.duration_since(UNIX_EPOCH).ok(),
            Some(Duration::from_millis(1_790_000_000_123))
        );
        let debug = format!("{token:?}");
        assert!(!debug.contains("very-secret"), "{debug}");
        assert!(debug.contains("redacted"));
        let event = SubscriptionEvent::from_event(Event::Token(reply(5)));
        assert!(!format!("{event:?}").contains("very-secret"));
    }

    #[test]
    fn remaining_follows_the_wall_clock() {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let token = Token::from_reply(reply(now_ms + 60_000));
        let left = token.remaining();
        assert!(
            left <= Duration::from_secs(60) && left > Duration::from_secs(55),
            "{left:?}"
        );
        let expired = Token::from_reply(reply(now_ms.saturating_sub(1000)));
        assert_eq!(expired.remaining(), Duration::ZERO);
    }
}
