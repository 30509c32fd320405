//! A slot's stored credential, and the renewer that keeps it current.
//!
//! The credential is one secret-store entry (one write per renewal), so a
//! rotated refresh token and the access token that came with it are stored
//! together before the engine hands the new token out.
//!
//! OAuth2 multi-token servers cap live tokens per client; the [`Ledger`] counts
//! the tokens every slot of this agent may still hold, so the agent never asks
//! for one more than `max_active_tokens`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use regent_proto::ErrorCode;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::crash::crash_point;
use crate::engine::{BoxFuture, Renewer};
use crate::error::{Error, Result};
use crate::grant::Grant;
use crate::secret::{ExposeSecret, SecretString, secret};
use crate::store::SecretStore;
use crate::upstream::Upstream;
use crate::upstream::oauth2::OAuth2;

/// A slot's secrets, stored as one entry so an update is one write.
#[derive(Default, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub(crate) struct StoredCredential {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_expires_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<StoredAccess>,
    /// OAuth2 multi-token servers: the tokens this slot may still hold
    /// (fingerprint, expiry), so restarts never exceed the cap.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issued: Vec<IssuedToken>,
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub(crate) struct StoredAccess {
    token: String,
    token_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    received_at_ms: u64,
    expires_at_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Zeroize)]
pub(crate) struct IssuedToken {
    pub fingerprint: u64,
    pub expires_at_ms: u64,
}

impl StoredCredential {
    pub fn parse(value: &SecretString) -> Result<StoredCredential> {
        serde_json::from_str(value.expose_secret()).map_err(|e| {
            Error::new(
                ErrorCode::StoreUnavailable,
                format!(
                    "the stored credential is unreadable ({e}); run `regent unenroll` and enroll again"
                ),
            )
        })
    }

    pub fn to_secret(&self) -> Result<SecretString> {
        serde_json::to_string(self).map(secret).map_err(|e| {
            Error::new(
                ErrorCode::Internal,
                format!("cannot encode the credential: {e}"),
            )
        })
    }

    pub fn set_grant(&mut self, grant: &Grant) {
        if let Some(rt) = &grant.refresh_token {
            self.refresh_token = Some(rt.expose_secret().to_owned());
        }
        if grant.refresh_expires_at.is_some() || grant.refresh_token.is_some() {
            self.refresh_expires_at_ms = grant.refresh_expires_at.map(to_ms);
        }
        self.access = Some(StoredAccess {
            token: grant.access_token.expose_secret().to_owned(),
            token_type: grant.token_type.clone(),
            scope: grant.scope.clone(),
            received_at_ms: to_ms(grant.received_at),
            expires_at_ms: to_ms(grant.expires_at),
        });
    }

    /// The cached access token, if it has not expired.
    pub fn cached_grant(&self, now: SystemTime) -> Option<Grant> {
        let access = self.access.as_ref()?;
        let expires_at = from_ms(access.expires_at_ms);
        (expires_at > now).then(|| Grant {
            access_token: secret(access.token.clone()),
            token_type: access.token_type.clone(),
            received_at: from_ms(access.received_at_ms),
            expires_at,
            refresh_token: None,
            refresh_expires_at: self.refresh_expires_at_ms.map(from_ms),
            scope: access.scope.clone(),
        })
    }
}

pub(crate) fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(crate) fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A non-reversible 64-bit fingerprint of a high-entropy token, to recognise a
/// re-issued token without storing it twice.
pub(crate) fn fingerprint(token: &SecretString) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    token.expose_secret().hash(&mut h);
    // 0 is reserved for "a request in flight".
    h.finish().max(1)
}

/// The live tokens every slot may hold, for `max_active_tokens`.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    per_slot: Mutex<BTreeMap<u32, Vec<IssuedToken>>>,
}

/// Fingerprint of a placeholder that reserves a place for a request in flight.
const IN_FLIGHT: u64 = 0;

impl Ledger {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Vec<IssuedToken>>> {
        self.per_slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records what a slot's stored credential says it holds (at start).
    pub fn load(&self, slot: u32, issued: &[IssuedToken]) {
        self.lock().insert(slot, issued.to_vec());
    }

    /// Reserves a place for one more token, or says when one frees up.
    fn reserve(&self, slot: u32, max: u32, request_timeout: Duration) -> Result<()> {
        let now_ms = to_ms(SystemTime::now());
        let mut all = self.lock();
        for tokens in all.values_mut() {
            tokens.retain(|t| t.expires_at_ms > now_ms);
        }
        let live: usize = all.values().map(Vec::len).sum();
        if live >= max as usize {
            let earliest = all
                .values()
                .flatten()
                .map(|t| t.expires_at_ms)
                .min()
                .unwrap_or(now_ms);
            let wait =
                Duration::from_millis(earliest.saturating_sub(now_ms)) + Duration::from_millis(250);
            return Err(Error::new(
                ErrorCode::TokenLimit,
                format!(
                    "this agent already holds {live} live tokens (max_active_tokens = {max}); the next one can be requested when one expires"
                ),
            )
            .with_retry_after(wait));
        }
        // Until the answer arrives the request counts as a live token, so two
        // slots renewing at once cannot both take the last place.
        all.entry(slot).or_default().push(IssuedToken {
            fingerprint: IN_FLIGHT,
            expires_at_ms: to_ms(SystemTime::now() + request_timeout),
        });
        Ok(())
    }

    /// Replaces the slot's reservation with the token received (if any);
    /// returns the slot's live tokens, to persist.
    fn settle(&self, slot: u32, received: Option<&Grant>) -> Vec<IssuedToken> {
        let mut all = self.lock();
        let tokens = all.entry(slot).or_default();
        if let Some(pos) = tokens.iter().position(|t| t.fingerprint == IN_FLIGHT) {
            tokens.remove(pos);
        }
        if let Some(grant) = received {
            let print = fingerprint(&grant.access_token);
            if !tokens.iter().any(|t| t.fingerprint == print) {
                tokens.push(IssuedToken {
                    fingerprint: print,
                    expires_at_ms: to_ms(grant.expires_at),
                });
            }
        }
        tokens.clone()
    }

    /// Forgets a slot (unenroll).
    pub fn forget(&self, slot: u32) {
        self.lock().remove(&slot);
    }
}

/// Renews one slot's credential and persists what rotated before returning.
pub(crate) struct SlotRenewer {
    pub slot: u32,
    pub upstream: Arc<Upstream>,
    pub store: SecretStore,
    pub entry: String,
    pub max_active_tokens: Option<u32>,
    pub request_timeout: Duration,
    pub ledger: Arc<Ledger>,
    pub credential: tokio::sync::Mutex<StoredCredential>,
}

impl Renewer for SlotRenewer {
    fn renew(&self) -> BoxFuture<'_, Result<Grant>> {
        Box::pin(async move {
            let mut credential = self.credential.lock().await;
            crash_point("before-refresh");
            let grant = match self.upstream.as_ref() {
                Upstream::Sentinel(sentinel) => {
                    let Some(refresh_token) = credential.refresh_token.clone().map(secret) else {
                        return Err(Error::new(
                            ErrorCode::Revoked,
                            "the stored credential has no refresh token; enroll again",
                        ));
                    };
                    sentinel.refresh(&refresh_token).await?
                }
                Upstream::OAuth2(oauth2) => self.oauth2_renew(oauth2, &mut credential).await?,
            };
            crash_point("after-refresh");
            // The rotated refresh token is durable before anyone uses the new
            // access token. If the store fails, the new credential stays in
            // memory (the session is not lost) and the engine retries.
            credential.set_grant(&grant);
            self.store.set(&self.entry, credential.to_secret()?).await?;
            Ok(grant)
        })
    }
}

impl SlotRenewer {
    async fn oauth2_renew(
        &self,
        oauth2: &OAuth2,
        credential: &mut StoredCredential,
    ) -> Result<Grant> {
        let Some(client_secret) = credential.client_secret.clone().map(secret) else {
            return Err(Error::new(
                ErrorCode::Revoked,
                "the stored credential has no client secret; enroll again",
            ));
        };
        if let Some(max) = self.max_active_tokens {
            self.ledger.reserve(self.slot, max, self.request_timeout)?;
        }
        let result = match credential.refresh_token.clone().map(secret) {
            Some(refresh_token) => match oauth2.refresh(&client_secret, &refresh_token).await {
                Err(e) if e.code == ErrorCode::Revoked => {
                    tracing::info!("refresh token refused; falling back to client credentials");
                    credential.refresh_token = None;
                    oauth2.client_credentials(&client_secret).await
                }
                other => other,
            },
            None => oauth2.client_credentials(&client_secret).await,
        };
        credential.issued = self.ledger.settle(self.slot, result.as_ref().ok());
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(token: &str, secs: u64) -> Grant {
        let now = SystemTime::now();
        Grant {
            access_token: secret(token.to_owned()),
            token_type: "Bearer".into(),
            received_at: now,
            expires_at: now + Duration::from_secs(secs),
            refresh_token: None,
            refresh_expires_at: None,
            scope: None,
        }
    }

    #[test]
    fn ledger_counts_every_slot_and_reservations() {
        let ledger = Ledger::default();
        let timeout = Duration::from_secs(5);
        ledger.reserve(0, 2, timeout).unwrap();
        ledger.reserve(1, 2, timeout).unwrap();
        // Two requests in flight fill a cap of two.
        let e = ledger.reserve(2, 2, timeout).unwrap_err();
        assert_eq!(e.code, ErrorCode::TokenLimit);
        assert!(e.retry_after.is_some());
        let held = ledger.settle(0, Some(&grant("a", 60)));
        assert_eq!(held.len(), 1);
        ledger.settle(1, None); // failed: the place is free again
        ledger.reserve(2, 2, timeout).unwrap();
        assert_eq!(ledger.settle(2, Some(&grant("b", 60))).len(), 1);
        assert!(ledger.reserve(1, 2, timeout).is_err());
        // A re-issued token is not counted twice.
        ledger.forget(2);
        ledger.reserve(0, 3, timeout).unwrap();
        assert_eq!(ledger.settle(0, Some(&grant("a", 60))).len(), 1);
    }
}
