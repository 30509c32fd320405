//! The records the emulator keeps: registration tokens, auth tokens, OAuth2
//! clients, customers and the tokens issued to them. A leaf below the state
//! and the route handlers, so that the handlers depend on the state and never
//! the other way round.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::clock;
use crate::error::ApiError;
use crate::secret;

/// An admin-issued registration token.
#[derive(Clone, Debug)]
pub(crate) struct RegistrationToken {
    pub id: String,
    /// The secret value presented in `Authorization: Basic …`.
    pub value: String,
    pub identifier: Option<String>,
    pub count: u32,
    pub used_count: u32,
    pub ref_id1: Option<String>,
    pub ref_id2: Option<String>,
    pub is_enabled: bool,
    pub expiry: OffsetDateTime,
    pub created: OffsetDateTime,
    pub seq: u64,
}

impl RegistrationToken {
    /// Expired once the expiry instant has passed, whatever counts remain.
    pub(crate) fn is_expired(&self, now: OffsetDateTime) -> bool {
        now > self.expiry
    }

    /// `DISABLED` wins over `EXPIRED`, matching the order refusals are checked.
    pub(crate) fn state(&self, now: OffsetDateTime) -> &'static str {
        if !self.is_enabled {
            "DISABLED"
        } else if self.is_expired(now) {
            "EXPIRED"
        } else {
            "ENABLED"
        }
    }
}

/// A device's auth token record (what admins list to see who redeemed).
#[derive(Clone, Debug)]
pub(crate) struct AuthToken {
    pub id: String,
    pub identifier: String,
    pub fqdn: Option<String>,
    pub mac_address: Option<String>,
    pub system_user_name: Option<String>,
    pub ref_id1: Option<String>,
    pub ref_id2: Option<String>,
    pub registration_token_id: String,
    pub created: OffsetDateTime,
    pub last_refresh: Option<OffsetDateTime>,
    /// The one live realm session; replaced (and the old one killed) on replay.
    pub session_id: String,
    pub seq: u64,
}

/// A registered OAuth2 client.
#[derive(Clone, Debug)]
pub(crate) struct OAuthClient {
    pub client_id: String,
    /// `None` for a public client (RFC 8252 desktop apps): it names itself
    /// with `client_id` alone and must use PKCE.
    pub client_secret: Option<String>,
    pub access_validity: Duration,
    pub refresh_validity: Duration,
    pub grant_types: Vec<String>,
    pub scope: Vec<String>,
    /// Emulator extension: rotate refresh tokens on use (default true).
    pub rotate_refresh_tokens: bool,
    /// Redirect URIs besides loopback ones (which any port may use, RFC 8252 §7.3).
    pub redirect_uris: Vec<String>,
    /// Other fields the admin sent (authorities, resourceIds, …), echoed back.
    pub extra: Map<String, Value>,
}

impl OAuthClient {
    pub(crate) fn allows(&self, grant: &str) -> bool {
        self.grant_types.iter().any(|g| g == grant)
    }

    pub(crate) fn is_public(&self) -> bool {
        self.client_secret.is_none()
    }
}

/// Who a user token belongs to: the user, and the sign-in ("family") every
/// token rotated from the same authorization shares, so that a reused
/// refresh token or a revocation ends all of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Owner {
    pub user: String,
    pub family: String,
}

/// A user as the command line or the admin API gives it.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    /// Sign-in name (also `preferred_username`).
    pub username: String,
    /// Password typed into the login form.
    pub password: String,
    /// Optional e-mail address (`email` claim).
    #[serde(default)]
    pub email: Option<String>,
}

impl UserSpec {
    /// Parses one `--users-file` line: `name:password[:email]`.
    ///
    /// # Errors
    /// A message naming what is missing.
    pub fn parse_line(line: &str) -> Result<UserSpec, String> {
        let mut parts = line.splitn(3, ':');
        let username = parts.next().unwrap_or_default().trim();
        let password = parts.next().unwrap_or_default();
        let email = parts.next().map(str::trim).filter(|e| !e.is_empty());
        if username.is_empty() || password.is_empty() {
            return Err("expected name:password[:email]".to_owned());
        }
        Ok(UserSpec {
            username: username.to_owned(),
            password: password.to_owned(),
            email: email.map(str::to_owned),
        })
    }

    pub(crate) fn into_user(self) -> Result<User, ApiError> {
        if self.username.trim().is_empty()
            || self.password.is_empty()
            || self.username.chars().any(char::is_control)
        {
            return Err(ApiError::invalid_request(
                "a user needs a non-empty username (printable) and password",
            ));
        }
        Ok(User {
            username: self.username.trim().to_owned(),
            password: self.password,
            email: self.email,
            sub: secret::uuid(),
        })
    }
}

/// The password never shows.
impl std::fmt::Debug for UserSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserSpec")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("email", &self.email)
            .finish()
    }
}

/// A person who can sign in (authorization code or device flow).
#[derive(Clone)]
pub(crate) struct User {
    pub username: String,
    pub password: String,
    pub email: Option<String>,
    /// Stable subject id (a UUID), what `sub` says.
    pub sub: String,
}

/// The password never shows.
impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("email", &self.email)
            .field("sub", &self.sub)
            .finish()
    }
}

/// The device authorization grant's `grant_type` (RFC 8628 §3.4).
pub(crate) const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// An issued authorization code (single use, 60 s).
#[derive(Clone, Debug)]
pub(crate) struct AuthCode {
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: Option<String>,
    pub user: String,
    pub scope: String,
    pub nonce: Option<String>,
    pub expires_at: OffsetDateTime,
}

/// What the person at the verification page decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DeviceDecision {
    Pending,
    Approved { user: String },
    Denied,
}

/// A device authorization (RFC 8628) awaiting its user.
#[derive(Clone, Debug)]
pub(crate) struct DeviceGrant {
    pub client_id: String,
    pub user_code: String,
    pub scope: String,
    pub expires_at: OffsetDateTime,
    pub interval: Duration,
    pub last_poll: Option<OffsetDateTime>,
    pub decision: DeviceDecision,
}

/// A customer: groups clients and carries the multi-token setting.
#[derive(Clone, Debug)]
pub(crate) struct Customer {
    pub id: String,
    pub application_clients: Vec<String>,
    /// `multitokenConfig.clientCredentialsMultiTokenConfig.maxActiveTokensAllowed`.
    pub max_active_tokens: Option<u32>,
    pub extra: Map<String, Value>,
}

/// An issued OAuth2 access token.
#[derive(Clone, Debug)]
pub(crate) struct OAuthAccess {
    /// Public handle for listings (never the token value).
    pub handle: String,
    pub client_id: String,
    pub grant: &'static str,
    pub scope: String,
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub refresh_token: Option<String>,
    /// A signed-in user's token; `None` for client credentials.
    pub owner: Option<Owner>,
}

/// An issued OAuth2 refresh token.
#[derive(Clone, Debug)]
pub(crate) struct OAuthRefresh {
    pub client_id: String,
    pub scope: String,
    pub expires_at: OffsetDateTime,
    pub owner: Option<Owner>,
}

/// Clients, customers and the tokens issued to them.
#[derive(Debug, Default)]
pub(crate) struct OAuthStore {
    pub clients: BTreeMap<String, OAuthClient>,
    pub customers: BTreeMap<String, Customer>,
    /// Access tokens by value.
    pub access: HashMap<String, OAuthAccess>,
    /// Access token values per client, oldest first.
    pub by_client: HashMap<String, Vec<String>>,
    /// Refresh tokens by value.
    pub refresh: HashMap<String, OAuthRefresh>,
    /// Users who can sign in, by user name.
    pub users: BTreeMap<String, User>,
    /// Authorization codes by value.
    pub codes: HashMap<String, AuthCode>,
    /// Device authorizations by device code.
    pub devices: HashMap<String, DeviceGrant>,
    /// Device code by user code.
    pub user_codes: HashMap<String, String>,
    /// Rotated-away user refresh tokens → their family (reuse detection).
    pub rotated: HashMap<String, String>,
}

impl OAuthStore {
    pub(crate) fn sweep(&mut self, now: OffsetDateTime) {
        self.access.retain(|_, t| t.expires_at > now);
        let access = &self.access;
        self.by_client.retain(|_, values| {
            values.retain(|v| access.contains_key(v));
            !values.is_empty()
        });
        self.refresh.retain(|_, r| r.expires_at > now);
        self.codes.retain(|_, c| c.expires_at > now);
        self.devices.retain(|_, d| d.expires_at > now);
        let devices = &self.devices;
        self.user_codes.retain(|_, d| devices.contains_key(d));
        let live: std::collections::HashSet<&str> = self
            .refresh
            .values()
            .filter_map(|r| r.owner.as_ref().map(|o| o.family.as_str()))
            .collect();
        self.rotated
            .retain(|_, family| live.contains(family.as_str()));
    }

    /// Revokes every access and refresh token of one sign-in; returns how
    /// many refresh tokens it had.
    pub(crate) fn revoke_family(&mut self, family: &str) -> usize {
        let of_family = |owner: &Option<Owner>| owner.as_ref().is_some_and(|o| o.family == family);
        let before = self.refresh.len();
        self.refresh.retain(|_, r| !of_family(&r.owner));
        self.access.retain(|_, t| !of_family(&t.owner));
        self.rotated.retain(|_, f| f != family);
        before - self.refresh.len()
    }

    /// Revokes every token of a user (the user was deleted).
    pub(crate) fn revoke_user(&mut self, user: &str) {
        let of_user = |owner: &Option<Owner>| owner.as_ref().is_some_and(|o| o.user == user);
        self.refresh.retain(|_, r| !of_user(&r.owner));
        self.access.retain(|_, t| !of_user(&t.owner));
    }

    /// Drops the client's expired access tokens.
    pub(crate) fn prune_client(&mut self, client_id: &str, now: OffsetDateTime) {
        if let Some(values) = self.by_client.get_mut(client_id) {
            let access = &mut self.access;
            values.retain(|v| match access.get(v) {
                Some(t) if t.expires_at > now => true,
                Some(_) => {
                    access.remove(v);
                    false
                }
                None => false,
            });
        }
    }

    /// The client's unexpired, unrevoked access tokens, oldest first.
    pub(crate) fn active_tokens(&self, client_id: &str, now: OffsetDateTime) -> Vec<&OAuthAccess> {
        self.by_client
            .get(client_id)
            .into_iter()
            .flatten()
            .filter_map(|v| self.access.get(v))
            .filter(|t| t.expires_at > now)
            .collect()
    }

    /// Active `client_credentials` tokens: the ones the multi-token cap counts.
    pub(crate) fn active_multitokens(
        &self,
        client_id: &str,
        now: OffsetDateTime,
    ) -> Vec<&OAuthAccess> {
        let mut tokens = self.active_tokens(client_id, now);
        tokens.retain(|t| t.grant == "client_credentials");
        tokens
    }

    /// The client's multi-token cap: the smallest `maxActiveTokensAllowed` of
    /// the customers listing it; `None` = single-token (re-issue) mode.
    pub(crate) fn multitoken_limit(&self, client_id: &str) -> Option<u32> {
        self.customers
            .values()
            .filter(|c| c.application_clients.iter().any(|id| id == client_id))
            .filter_map(|c| c.max_active_tokens)
            .min()
    }

    /// Revokes every access and refresh token of a client; returns how many
    /// access tokens were active.
    pub(crate) fn revoke_client(&mut self, client_id: &str, now: OffsetDateTime) -> usize {
        let active = self.active_tokens(client_id, now).len();
        for value in self.by_client.remove(client_id).unwrap_or_default() {
            self.access.remove(&value);
        }
        self.refresh.retain(|_, r| r.client_id != client_id);
        active
    }

    /// Active access tokens per client id.
    pub(crate) fn active_counts(&self, now: OffsetDateTime) -> BTreeMap<String, usize> {
        self.by_client
            .keys()
            .map(|id| (id.clone(), self.active_tokens(id, now).len()))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// A confidential client proves its secret; a public one names itself
    /// (`client_secret` `None`) and may not send one.
    pub(crate) fn authenticate(
        &self,
        client_id: &str,
        client_secret: Option<&str>,
    ) -> Result<OAuthClient, ApiError> {
        let failed = || {
            ApiError::invalid_client(
                "client authentication failed: unknown client_id or wrong client_secret",
            )
        };
        let client = self.clients.get(client_id).ok_or_else(failed)?;
        match (&client.client_secret, client_secret) {
            (Some(expected), Some(given)) if secret::ct_eq(given, expected) => Ok(client.clone()),
            (None, None) => Ok(client.clone()),
            (None, Some(_)) => Err(ApiError::invalid_client(format!(
                "client '{client_id}' is a public client: send client_id alone, without a secret"
            ))),
            (Some(_), None) => Err(ApiError::invalid_client(format!(
                "client '{client_id}' is confidential: authenticate with its client_secret \
                 (Authorization: Basic base64(client_id:client_secret))"
            ))),
            (Some(_), Some(_)) => Err(failed()),
        }
    }

    pub(crate) fn mint_refresh(
        &mut self,
        client: &OAuthClient,
        scope: &str,
        owner: Option<Owner>,
        now: OffsetDateTime,
    ) -> String {
        let value = secret::token();
        self.refresh.insert(
            value.clone(),
            OAuthRefresh {
                client_id: client.client_id.clone(),
                scope: scope.to_owned(),
                expires_at: clock::after(now, client.refresh_validity),
                owner,
            },
        );
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_file_lines() {
        let u = UserSpec::parse_line("alice:wonderland:alice@example.com").unwrap();
        assert_eq!(
            (u.username.as_str(), u.password.as_str()),
            ("alice", "wonderland")
        );
        assert_eq!(u.email.as_deref(), Some("alice@example.com"));
        let u = UserSpec::parse_line("bob:pw").unwrap();
        assert!(u.email.is_none());
        assert!(UserSpec::parse_line("carol").is_err());
        assert!(UserSpec::parse_line(":pw").is_err());
    }

    #[test]
    fn debug_never_shows_a_password() {
        let spec = UserSpec::parse_line("alice:hunter2").unwrap();
        assert!(!format!("{spec:?}").contains("hunter2"));
        let user = spec.into_user().unwrap();
        assert!(!format!("{user:?}").contains("hunter2"));
    }
}
