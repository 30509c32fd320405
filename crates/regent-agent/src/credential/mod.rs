//! A slot's stored credential, and the renewer that keeps it current.
//!
//! The credential is one secret-store entry, so a rotated refresh token and the
//! access token that came with it are stored together before the engine hands
//! the new token out.
//!
//! Never rotate what cannot be saved (DESIGN §5): before every renewal the
//! renewer writes the credential, with a renewal-intent time, to the very entry
//! the renewed one will go to. When that write fails nothing is sent, and the
//! engine keeps serving the cached token and retries with backoff. When the
//! write after the renewal fails (the store broke meanwhile), the renewed
//! credential is held in memory: every later attempt first retries that write
//! and sends nothing until it succeeds, and the agent tries once more at
//! shutdown ([`Renewer::save_unsaved`]).
//!
//! OAuth2 multi-token servers cap live tokens per client; the [`Ledger`] counts
//! the tokens every slot of this agent may still hold, so the agent never asks
//! for one more than `max_active_tokens`.

mod ledger;
mod renewer;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use regent_proto::ErrorCode;
use regent_proto::time::from_unix_ms;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::crash::{CrashPoint, crash_point};
use crate::engine::{BoxFuture, Renewer};
use crate::error::{Error, Result};
use crate::grant::Grant;
use crate::secret::{ExposeSecret, SecretString, secret};
use crate::store::SecretStore;
use crate::upstream::{Held, Upstream};

pub(crate) use self::ledger::Ledger;
pub(crate) use self::renewer::SlotRenewer;

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
    /// Set (unix ms) by the write-ahead before a renewal is sent, cleared when
    /// its outcome is stored: a credential loaded with it set was stored by an
    /// agent that stopped while a renewal was in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_intent_ms: Option<u64>,
    /// A user's sign-in (`regent login`), renewed with the refresh token
    /// alone; a device enrollment otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub signed_in: bool,
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
    /// Reads a credential stored as JSON.
    ///
    /// # Errors
    /// `STORE_UNAVAILABLE` naming what is wrong (position and kind only:
    /// serde_json's messages can quote the value, which may be a secret).
    ///
    /// An `issued` entry an older agent fingerprinted with `DefaultHasher`
    /// for the cached access token gets its stable fingerprint, so a re-issue
    /// of that token is still recognised and not counted twice against
    /// `max_active_tokens`. Entries of other tokens (no longer stored, so
    /// not recomputable) keep counting until they expire, as before.
    pub fn parse(value: &SecretString) -> Result<StoredCredential> {
        let mut credential = Self::decode(value)?;
        credential.migrate_fingerprints();
        Ok(credential)
    }

    fn migrate_fingerprints(&mut self) {
        let Some(access) = &self.access else {
            return;
        };
        let (legacy, stable) = (
            legacy_fingerprint(&access.token),
            crate::secret::fingerprint(&access.token).max(1),
        );
        for issued in &mut self.issued {
            if issued.fingerprint == legacy {
                issued.fingerprint = stable;
            }
        }
    }

    fn decode(value: &SecretString) -> Result<StoredCredential> {
        serde_json::from_str(value.expose_secret()).map_err(|e| {
            let kind = match e.classify() {
                serde_json::error::Category::Eof => "unexpected end",
                serde_json::error::Category::Syntax => "syntax error",
                serde_json::error::Category::Data => "unexpected value",
                serde_json::error::Category::Io => "read error",
            };
            Error::new(
                ErrorCode::StoreUnavailable,
                format!(
                    "the stored credential is unreadable ({kind} at line {}, column {}); \
                     run `regent unenroll` and enroll again",
                    e.line(),
                    e.column()
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
    ///
    /// Stored times past [`regent_proto::time::LATEST_UNIX_MS`] (year 9999) are damage, never
    /// dates: the access token then counts as expired, so the next renewal
    /// replaces it, and a refresh-token expiry as unknown. Either is logged.
    pub fn cached_grant(&self, now: SystemTime) -> Option<Grant> {
        let access = self.access.as_ref()?;
        let (Some(received_at), Some(expires_at)) = (
            from_unix_ms(access.received_at_ms),
            from_unix_ms(access.expires_at_ms),
        ) else {
            tracing::warn!(
                received_at_ms = access.received_at_ms,
                expires_at_ms = access.expires_at_ms,
                "the stored access token's times lie past the year 9999, so the stored \
                 credential is damaged; the token is treated as expired and renewed"
            );
            return None;
        };
        let refresh_expires_at = self.refresh_expires_at_ms.and_then(|ms| {
            let at = from_unix_ms(ms);
            if at.is_none() {
                tracing::warn!(
                    refresh_expires_at_ms = ms,
                    "the stored refresh-token expiry lies past the year 9999, so the stored \
                     credential is damaged; the expiry is treated as unknown"
                );
            }
            at
        });
        (expires_at > now).then(|| Grant {
            access_token: secret(access.token.clone()),
            token_type: access.token_type.clone(),
            received_at,
            expires_at,
            refresh_token: None,
            refresh_expires_at,
            scope: access.scope.clone(),
        })
    }
}

pub(crate) use regent_proto::time::to_unix_ms as to_ms;

/// A non-reversible 64-bit fingerprint of a high-entropy token, to recognise a
/// re-issued token without storing it twice. Stable across builds (SHA-256,
/// [`crate::secret::fingerprint`]): it is persisted in `issued`.
pub(crate) fn fingerprint(token: &SecretString) -> u64 {
    // 0 is reserved for "a request in flight".
    crate::secret::fingerprint(token.expose_secret()).max(1)
}

/// The fingerprint agents before issue 14 stored: `std`'s `DefaultHasher`
/// (SipHash-1-3, zero keys), whose output Rust does not promise to keep. Only
/// read, to migrate a stored entry (see [`StoredCredential::parse`]).
fn legacy_fingerprint(token: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    token.hash(&mut h);
    h.finish().max(1)
}

#[cfg(test)]
mod tests;
