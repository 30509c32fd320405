//! The records the emulator keeps: registration tokens, auth tokens, OAuth2
//! clients, customers and the tokens issued to them. A leaf below the state
//! and the route handlers, so that the handlers depend on the state and never
//! the other way round.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

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
    pub client_secret: String,
    pub access_validity: Duration,
    pub refresh_validity: Duration,
    pub grant_types: Vec<String>,
    pub scope: Vec<String>,
    /// Emulator extension: rotate refresh tokens on use (default true).
    pub rotate_refresh_tokens: bool,
    /// Other fields the admin sent (authorities, resourceIds, …), echoed back.
    pub extra: Map<String, Value>,
}

impl OAuthClient {
    pub(crate) fn allows(&self, grant: &str) -> bool {
        self.grant_types.iter().any(|g| g == grant)
    }
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
}

/// An issued OAuth2 refresh token.
#[derive(Clone, Debug)]
pub(crate) struct OAuthRefresh {
    pub client_id: String,
    pub scope: String,
    pub expires_at: OffsetDateTime,
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

    pub(crate) fn authenticate(
        &self,
        client_id: &str,
        client_secret: &str,
    ) -> Result<OAuthClient, ApiError> {
        self.clients
            .get(client_id)
            .filter(|c| secret::ct_eq(client_secret, &c.client_secret))
            .cloned()
            .ok_or_else(|| {
                ApiError::invalid_client(
                    "client authentication failed: unknown client_id or wrong client_secret",
                )
            })
    }

    pub(crate) fn mint_refresh(
        &mut self,
        client: &OAuthClient,
        scope: &str,
        now: OffsetDateTime,
    ) -> String {
        let value = secret::token();
        self.refresh.insert(
            value.clone(),
            OAuthRefresh {
                client_id: client.client_id.clone(),
                scope: scope.to_owned(),
                expires_at: clock::after(now, client.refresh_validity),
            },
        );
        value
    }
}
