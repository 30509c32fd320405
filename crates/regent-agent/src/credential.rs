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
    /// Set (unix ms) by the write-ahead before a renewal is sent, cleared when
    /// its outcome is stored: a credential loaded with it set was stored by an
    /// agent that stopped while a renewal was in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_intent_ms: Option<u64>,
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
            expires_at_ms: to_ms(SystemTime::now())
                .saturating_add(u64::try_from(request_timeout.as_millis()).unwrap_or(u64::MAX)),
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
    /// The credential in memory was renewed but could not be stored: nothing
    /// is sent upstream until it is. Changed only under `credential`'s lock.
    pub unsaved: AtomicBool,
}

impl Renewer for SlotRenewer {
    fn renew(&self) -> BoxFuture<'_, Result<Grant>> {
        Box::pin(async move {
            let mut credential = self.credential.lock().await;
            if self.unsaved.load(Ordering::Acquire) {
                // The store refused the last renewed credential: save it first;
                // the stored refresh token is stale until then, so sending
                // anything would only rotate further away from it.
                self.save_held(&credential).await?;
                if let Some(grant) = credential.cached_grant(SystemTime::now()) {
                    return Ok(grant);
                }
            }
            // Write-ahead: the entry the renewed credential will go to takes a
            // write now, or nothing is sent (DESIGN §5).
            credential.renewal_intent_ms = Some(to_ms(SystemTime::now()));
            if let Err(e) = self.store.set(&self.entry, credential.to_secret()?).await {
                credential.renewal_intent_ms = None;
                return Err(Error::new(
                    ErrorCode::StoreUnavailable,
                    format!(
                        "the renewal of slot {} was not sent, because the store could not \
                         take a write first and a rotated refresh token must never be \
                         lost; the cached token is served until it expires. {}",
                        self.slot, e.message
                    ),
                ));
            }
            crash_point(CrashPoint::BeforeRefresh);
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
            crash_point(CrashPoint::AfterRefresh);
            // The rotated refresh token is durable before anyone uses the new
            // access token. If the store fails, the new credential stays in
            // memory (the session is not lost) and is saved before anything
            // else is sent.
            credential.set_grant(&grant);
            credential.renewal_intent_ms = None;
            if let Err(e) = self.store.set(&self.entry, credential.to_secret()?).await {
                self.unsaved.store(true, Ordering::Release);
                return Err(self.held_error(&e));
            }
            Ok(grant)
        })
    }

    fn save_unsaved(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let credential = self.credential.lock().await;
            if self.unsaved.load(Ordering::Acquire) {
                self.save_held(&credential).await?;
            }
            Ok(())
        })
    }
}

impl SlotRenewer {
    /// Stores the renewed credential held in memory; the caller holds the
    /// credential lock.
    async fn save_held(&self, credential: &StoredCredential) -> Result<()> {
        match self.store.set(&self.entry, credential.to_secret()?).await {
            Ok(()) => {
                self.unsaved.store(false, Ordering::Release);
                tracing::info!(
                    slot = self.slot,
                    "the renewed credential held in memory is now stored"
                );
                Ok(())
            }
            Err(e) => Err(self.held_error(&e)),
        }
    }

    fn held_error(&self, e: &Error) -> Error {
        Error::new(
            ErrorCode::StoreUnavailable,
            format!(
                "the renewed credential of slot {} could not be stored, so it is held in \
                 memory and nothing more is sent to the license server until it is (retried \
                 with backoff, and once more when the agent stops). {}",
                self.slot, e.message
            ),
        )
    }

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

    /// A secret store in memory whose writes fail from a chosen one on.
    #[derive(Default)]
    struct FlakyStore {
        entries: Mutex<BTreeMap<String, String>>,
        writes: std::sync::atomic::AtomicU64,
        /// Writes numbered from this one on fail (0: none fail).
        fail_from: std::sync::atomic::AtomicU64,
    }

    impl FlakyStore {
        fn writes(&self) -> u64 {
            self.writes.load(Ordering::SeqCst)
        }
        /// The next `ok` writes succeed, every later one fails.
        fn fail_after(&self, ok: u64) {
            self.fail_from
                .store(self.writes() + ok + 1, Ordering::SeqCst);
        }
        fn heal(&self) {
            self.fail_from.store(0, Ordering::SeqCst);
        }
        fn stored(&self, name: &str) -> StoredCredential {
            let value = self.entries.lock().unwrap()[name].clone();
            StoredCredential::parse(&secret(value)).unwrap()
        }
    }

    impl crate::store::SecretBackend for FlakyStore {
        fn get(&self, name: &str) -> Result<Option<SecretString>> {
            Ok(self.entries.lock().unwrap().get(name).cloned().map(secret))
        }
        fn set(&self, name: &str, value: &SecretString) -> Result<()> {
            let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
            let from = self.fail_from.load(Ordering::SeqCst);
            if from != 0 && n >= from {
                return Err(Error::new(
                    ErrorCode::StoreUnavailable,
                    "cannot save test store: Read-only file system",
                ));
            }
            self.entries
                .lock()
                .unwrap()
                .insert(name.to_owned(), value.expose_secret().to_owned());
            Ok(())
        }
        fn delete(&self, name: &str) -> Result<()> {
            self.entries.lock().unwrap().remove(name);
            Ok(())
        }
        fn describe(&self) -> String {
            "test store".into()
        }
    }

    /// A real emulator (rotating refresh tokens), a slot redeemed there, and
    /// its renewer writing to `store`.
    async fn redeemed_renewer(
        store: &Arc<FlakyStore>,
    ) -> (regent_emulator::Emulator, reqwest::Client, SlotRenewer) {
        use crate::upstream::DeviceIdentity;
        use crate::upstream::http::{Http, HttpSettings};
        use crate::upstream::sentinel::Sentinel;
        let config = regent_emulator::EmulatorConfig::default();
        let emulator = regent_emulator::Emulator::start(config.clone())
            .await
            .unwrap();
        let http = reqwest::Client::new();
        let login: serde_json::Value = http
            .post(format!(
                "{}/auth/realms/{}/protocol/openid-connect/token",
                emulator.url(),
                config.realm
            ))
            .form(&[
                ("grant_type", "password"),
                ("username", config.admin_username.as_str()),
                ("password", config.admin_password.as_str()),
                ("client_id", config.client_id.as_str()),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let minted: serde_json::Value = http
            .post(format!(
                "{}/token/api/v5/registrationTokens",
                emulator.url()
            ))
            .bearer_auth(login["access_token"].as_str().unwrap())
            .json(&serde_json::json!({"registrationToken": {"count": 1}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = minted["registrationToken"]["token"].as_str().unwrap();
        let sentinel = Sentinel::new(
            Http::new(HttpSettings::default()).unwrap(),
            emulator.url().parse().unwrap(),
        )
        .unwrap();
        let redemption = sentinel
            .redeem(
                &secret(token.to_owned()),
                &DeviceIdentity::detect("unit-slot-0".into()),
            )
            .await
            .unwrap();
        let mut credential = StoredCredential::default();
        credential.auth_token_id = Some(redemption.auth_token_id.clone());
        credential.set_grant(&redemption.grant);
        let renewer = SlotRenewer {
            slot: 0,
            upstream: Arc::new(Upstream::Sentinel(sentinel)),
            store: SecretStore::from_backend(
                Arc::clone(store) as Arc<dyn crate::store::SecretBackend>,
                Duration::from_secs(5),
            ),
            entry: "slot-0.credential".into(),
            max_active_tokens: None,
            request_timeout: Duration::from_secs(5),
            ledger: Arc::new(Ledger::default()),
            credential: tokio::sync::Mutex::new(credential),
            unsaved: AtomicBool::new(false),
        };
        (emulator, http, renewer)
    }

    /// Refresh requests the emulator received, whatever their outcome.
    async fn refresh_requests(emulator: &regent_emulator::Emulator, http: &reqwest::Client) -> u64 {
        let counters: serde_json::Value = http
            .get(format!("{}/_emulator/counters", emulator.url()))
            .header("X-Emulator-Key", emulator.admin_key())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        counters["requests"]["realm_token"]
            .as_object()
            .map(|o| o.values().filter_map(serde_json::Value::as_u64).sum())
            .unwrap_or(0)
    }

    /// Regression (issue 18, item 2): a renewal the store cannot take was sent
    /// anyway, rotating the refresh token at the server while the stored one
    /// went stale; the engine's retries rotated it again and again. Now the
    /// write-ahead fails first and nothing is sent; a credential renewed just
    /// before the store broke is held, saved before anything else is sent,
    /// and offered once more at shutdown.
    #[tokio::test]
    async fn nothing_is_sent_while_the_store_cannot_take_the_answer() {
        let store = Arc::new(FlakyStore::default());
        let (emulator, http, renewer) = redeemed_renewer(&store).await;
        // The redemption's own token request is counted too.
        let base = refresh_requests(&emulator, &http).await;

        // Healthy: write-ahead, refresh, save.
        renewer.renew().await.unwrap();
        assert_eq!(refresh_requests(&emulator, &http).await, base + 1);
        assert_eq!(
            store.writes(),
            2,
            "a write ahead and the renewed credential"
        );
        assert!(
            store
                .stored("slot-0.credential")
                .renewal_intent_ms
                .is_none()
        );

        // The store refuses writes: nothing is sent, however often retried.
        store.fail_after(0);
        for _ in 0..3 {
            let e = renewer.renew().await.unwrap_err();
            assert_eq!(e.code, ErrorCode::StoreUnavailable);
            assert!(e.message.contains("was not sent"), "{}", e.message);
            assert!(e.message.contains("Read-only file system"), "{}", e.message);
        }
        assert_eq!(refresh_requests(&emulator, &http).await, base + 1);

        // The store breaks between the write-ahead and the save: the renewed
        // credential is held, and nothing more is sent until it is stored.
        store.heal();
        store.fail_after(1);
        let e = renewer.renew().await.unwrap_err();
        assert!(e.message.contains("held in memory"), "{}", e.message);
        assert_eq!(refresh_requests(&emulator, &http).await, base + 2);
        let stale = store.stored("slot-0.credential");
        assert!(
            stale.renewal_intent_ms.is_some(),
            "the intent record is stored"
        );
        for _ in 0..3 {
            let e = renewer.renew().await.unwrap_err();
            assert!(e.message.contains("held in memory"), "{}", e.message);
        }
        assert!(renewer.save_unsaved().await.is_err());
        assert_eq!(refresh_requests(&emulator, &http).await, base + 2);

        // The store answers again: the held credential is saved (at shutdown
        // here) and is the live one; the next renewal works with it.
        store.heal();
        renewer.save_unsaved().await.unwrap();
        assert_eq!(refresh_requests(&emulator, &http).await, base + 2);
        let saved = store.stored("slot-0.credential");
        assert_eq!(
            saved.refresh_token,
            renewer.credential.lock().await.refresh_token
        );
        assert_ne!(saved.refresh_token, stale.refresh_token);
        renewer.renew().await.unwrap();
        assert_eq!(refresh_requests(&emulator, &http).await, base + 3);
    }

    /// The held credential is saved by the next renewal attempt too, which
    /// then hands out its (still valid) token without calling the server.
    #[tokio::test]
    async fn a_held_credential_is_saved_before_anything_is_sent() {
        let store = Arc::new(FlakyStore::default());
        let (emulator, http, renewer) = redeemed_renewer(&store).await;
        // The redemption's own token request is counted too.
        let base = refresh_requests(&emulator, &http).await;
        store.fail_after(1);
        assert!(renewer.renew().await.is_err());
        assert_eq!(refresh_requests(&emulator, &http).await, base + 1);
        store.heal();
        let grant = renewer.renew().await.unwrap();
        assert_eq!(
            refresh_requests(&emulator, &http).await,
            base + 1,
            "no call"
        );
        let saved = store.stored("slot-0.credential");
        let access = saved.cached_grant(SystemTime::now()).unwrap();
        assert!(grant.same_token_as(&access));
    }

    /// Issue 13, bug 3: `UNIX_EPOCH + ms` panicked the Windows agent on such
    /// a store (and on Linux read it as a token valid for millennia).
    #[test]
    fn a_stored_expiry_past_the_year_9999_counts_as_expired() {
        let stored = |received: u64, expires: u64, refresh: u64| {
            StoredCredential::parse(&secret(format!(
                r#"{{"refresh_token": "r", "refresh_expires_at_ms": {refresh},
                    "access": {{"token": "a", "token_type": "Bearer",
                    "received_at_ms": {received}, "expires_at_ms": {expires}}}}}"#
            )))
            .unwrap()
        };
        let now = SystemTime::now();
        let now_ms = to_ms(now);
        for expires in [u64::MAX, 1 << 62, regent_proto::time::LATEST_UNIX_MS + 1] {
            assert!(
                stored(now_ms, expires, now_ms).cached_grant(now).is_none(),
                "{expires}"
            );
            assert!(
                stored(u64::MAX, expires, now_ms)
                    .cached_grant(now)
                    .is_none()
            );
        }
        assert!(
            stored(u64::MAX, now_ms + 60_000, now_ms)
                .cached_grant(now)
                .is_none()
        );
        let grant = stored(now_ms, now_ms + 60_000, u64::MAX)
            .cached_grant(now)
            .unwrap();
        assert_eq!(
            grant.refresh_expires_at, None,
            "an impossible expiry is unknown"
        );
        assert!(grant.remaining(now) <= Duration::from_secs(60));
    }

    #[test]
    fn an_unreadable_credential_is_reported_without_its_content() {
        let e = StoredCredential::parse(&secret(
            r#"{"refresh_token": 987654, "x": "hunter2"}"#.into(),
        ))
        .err()
        .unwrap();
        assert_eq!(e.code, ErrorCode::StoreUnavailable);
        assert!(e.message.contains("line 1"), "{}", e.message);
        assert!(!e.message.contains("987654"), "{}", e.message);
        let e = StoredCredential::parse(&secret("hunter2-not-json".into()))
            .err()
            .unwrap();
        assert!(!e.message.contains("hunter2"), "{}", e.message);
    }

    /// A credential stored before issue 14 fingerprinted its tokens with
    /// `DefaultHasher`: after an upgrade, a re-issue of its cached token is
    /// still one token, not two, against `max_active_tokens`.
    #[test]
    fn a_legacy_fingerprint_is_migrated_on_load() {
        let expires = to_ms(SystemTime::now()) + 60_000;
        let stored = StoredCredential::parse(&secret(format!(
            r#"{{"client_secret": "s",
                "access": {{"token": "tok-a", "token_type": "Bearer",
                "received_at_ms": 1, "expires_at_ms": {expires}}},
                "issued": [{{"fingerprint": {}, "expires_at_ms": {expires}}},
                           {{"fingerprint": 77, "expires_at_ms": {expires}}}]}}"#,
            legacy_fingerprint("tok-a")
        )))
        .unwrap();
        let prints: Vec<u64> = stored.issued.iter().map(|t| t.fingerprint).collect();
        assert_eq!(prints, [fingerprint(&secret("tok-a".into())), 77]);
        let ledger = Ledger::default();
        ledger.load(0, &stored.issued);
        ledger.reserve(0, 3, Duration::from_secs(5)).unwrap();
        assert_eq!(ledger.settle(0, Some(&grant("tok-a", 60))).len(), 2);
        // The stable fingerprint is what `std` cannot change under us.
        assert_eq!(fingerprint(&secret("abc".into())), 0xba78_16bf_8f01_cfea);
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
