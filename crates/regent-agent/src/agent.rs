//! The agent: one slot's credential, its crash-safe enrollment, and the handout
//! API that the IPC layer serves.
//!
//! Crash safety (DESIGN §5): before a redemption the slot's identifier and a
//! pending marker are in `state.json` and the registration token is in the
//! secret store; after it, the auth token is in the store before success is
//! reported. On start, a pending marker without a credential resumes the
//! redemption with the same identifier, which the server answers as a replay —
//! no second count.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use regent_proto::ErrorCode;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::config::{Config, Profile};
use crate::crash::crash_point;
use crate::engine::{BoxFuture, Engine, EngineSettings, EngineStatus, Event, Renewer, SlotState};
use crate::error::{Error, Result};
use crate::grant::Grant;
use crate::secret::{ExposeSecret, SecretString, secret};
use crate::store::{SecretStore, StateFile, StoreKind};
use crate::upstream::http::{Http, HttpSettings};
use crate::upstream::oauth2::{OAuth2, OAuth2Endpoint};
use crate::upstream::sentinel::Sentinel;
use crate::upstream::{DeviceIdentity, Upstream};

/// The only slot until per-instance mode (DESIGN §8) adds more.
const SHARED_SLOT: u32 = 0;
const STATE_VERSION: u32 = 1;

/// Non-secret state, persisted atomically in `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PersistentState {
    version: u32,
    /// Random, generated once per state directory.
    device_id: String,
    slots: BTreeMap<u32, SlotRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SlotRecord {
    /// Stable identifier sent with redemptions: a retry replays it.
    identifier: String,
    /// Set before a redemption is sent; cleared once its outcome is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending_since: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    enrolled_at: Option<u64>,
}

/// A slot's secrets, stored as one entry so an update is one write.
#[derive(Default, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct StoredCredential {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth_token_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_expires_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    access: Option<StoredAccess>,
    /// OAuth2 multi-token servers: the tokens this slot holds that may still be
    /// alive (fingerprint, expiry), so restarts never exceed the cap.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    issued: Vec<IssuedToken>,
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct StoredAccess {
    token: String,
    token_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    received_at_ms: u64,
    expires_at_ms: u64,
}

#[derive(Clone, Copy, Serialize, Deserialize, Zeroize)]
struct IssuedToken {
    fingerprint: u64,
    expires_at_ms: u64,
}

impl StoredCredential {
    fn parse(value: &SecretString) -> Result<StoredCredential> {
        serde_json::from_str(value.expose_secret()).map_err(|e| {
            Error::new(
                ErrorCode::StoreUnavailable,
                format!(
                    "the stored credential is unreadable ({e}); run `regent unenroll` and enroll again"
                ),
            )
        })
    }

    fn to_secret(&self) -> Result<SecretString> {
        serde_json::to_string(self).map(secret).map_err(|e| {
            Error::new(
                ErrorCode::Internal,
                format!("cannot encode the credential: {e}"),
            )
        })
    }

    fn set_grant(&mut self, grant: &Grant) {
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
    fn cached_grant(&self, now: SystemTime) -> Option<Grant> {
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

fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn now_secs() -> u64 {
    to_ms(SystemTime::now()) / 1000
}

fn credential_entry(slot: u32) -> String {
    format!("slot-{slot}.credential")
}

fn registration_entry(slot: u32) -> String {
    format!("slot-{slot}.registration")
}

/// What `enroll` does when the slot already holds a working credential.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnrollOptions {
    /// Replace a working credential (consumes another registration count).
    pub force: bool,
}

/// The outcome of a successful enrollment.
#[derive(Debug, Clone, Serialize)]
pub struct Enrolled {
    /// The slot's identifier (Sentinel) or client id (OAuth2).
    pub identifier: String,
    /// The server's auth-token id (Sentinel).
    pub auth_token_id: Option<String>,
    /// When the first access token expires.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: time::OffsetDateTime,
}

/// The agent's status, for `regent status`.
#[derive(Debug, Clone, Serialize)]
pub struct AgentStatus {
    /// `"sentinel"` or `"oauth2"`.
    pub profile: &'static str,
    /// This state directory's device id.
    pub device_id: String,
    /// Where secrets are kept.
    pub store: String,
    /// One entry per slot.
    pub slots: Vec<SlotStatus>,
}

/// One slot's status.
#[derive(Debug, Clone, Serialize)]
pub struct SlotStatus {
    /// Slot number.
    pub slot: u32,
    /// Identifier sent to the server.
    pub identifier: Option<String>,
    /// Lifecycle state.
    pub state: SlotState,
    /// A redemption was sent but its outcome is not stored yet.
    pub pending_redemption: bool,
    /// Access-token expiry (unix seconds).
    pub expires_at: Option<u64>,
    /// Next planned upstream call (unix seconds).
    pub next_renewal: Option<u64>,
    /// Last successful renewal (unix seconds).
    pub last_renewal: Option<u64>,
    /// Last failure: code name.
    pub last_error_code: Option<String>,
    /// Last failure: message.
    pub last_error: Option<String>,
    /// Consecutive transient failures.
    pub failures: u32,
    /// Successful renewals since start.
    pub renewals_ok: u64,
    /// Failed renewals since start.
    pub renewals_failed: u64,
    /// Tokens handed out since start.
    pub handouts: u64,
}

/// The agent as a library.
#[derive(Debug)]
pub struct Agent {
    config: Config,
    store: SecretStore,
    state_file: StateFile,
    state: Mutex<PersistentState>,
    upstream: Arc<Upstream>,
    engine: Engine,
    /// One enrollment (or unenrollment) at a time.
    enroll_lock: Mutex<()>,
}

impl Agent {
    /// Opens the agent: loads state, the stored credential and the cached
    /// token, and resumes an interrupted redemption in the background.
    ///
    /// # Errors
    /// `CONFIG` for a bad server URL or state directory; `STORE_UNAVAILABLE`
    /// when `state.json` or the secret store cannot be read.
    pub async fn open(config: Config) -> Result<Arc<Agent>> {
        let state_dir = config.state_dir()?;
        std::fs::create_dir_all(&state_dir).map_err(|e| {
            Error::new(
                ErrorCode::StoreUnavailable,
                format!(
                    "cannot create the state directory {}: {e}",
                    state_dir.display()
                ),
            )
        })?;
        let store = open_store(&config)?;
        let state_file = StateFile::new(state_dir.join("state.json"));
        let state = match state_file.load::<PersistentState>()? {
            Some(state) => state,
            None => {
                let state = PersistentState {
                    version: STATE_VERSION,
                    device_id: random_id(),
                    slots: BTreeMap::new(),
                };
                state_file.save(&state)?;
                state
            }
        };
        let upstream = Arc::new(open_upstream(&config)?);
        let engine = Engine::start(EngineSettings::from(&config.refresh));
        let agent = Arc::new(Agent {
            config,
            store,
            state_file,
            state: Mutex::new(state),
            upstream,
            engine,
            enroll_lock: Mutex::new(()),
        });
        agent.load_slot(SHARED_SLOT).await?;
        Ok(agent)
    }

    /// Loads a slot's stored credential into its engine, or resumes its
    /// interrupted redemption.
    async fn load_slot(self: &Arc<Self>, slot: u32) -> Result<()> {
        if let Some(value) = self.store.get(&credential_entry(slot)).await? {
            let credential = StoredCredential::parse(&value)?;
            let grant = credential.cached_grant(SystemTime::now());
            tracing::info!(
                slot,
                cached_token = grant.is_some(),
                store = %self.store.describe(),
                "loaded stored credential"
            );
            let renewer = self.renewer(slot, credential);
            self.engine.activate(renewer, grant).await;
            let pending = {
                let state = self.state.lock().await;
                state
                    .slots
                    .get(&slot)
                    .and_then(|r| r.pending_since)
                    .is_some()
            };
            if pending {
                // A crash after the credential was stored but before the
                // marker was cleared: the stored credential wins.
                self.clear_pending(slot, true).await;
            }
            return Ok(());
        }
        let pending = {
            let state = self.state.lock().await;
            state
                .slots
                .get(&slot)
                .and_then(|r| r.pending_since)
                .is_some()
        };
        if pending && let Some(registration) = self.store.get(&registration_entry(slot)).await? {
            tracing::info!(
                slot,
                "resuming an interrupted redemption with the same identifier"
            );
            let agent = Arc::clone(self);
            tokio::spawn(async move {
                agent.resume_redemption(slot, registration).await;
            });
        }
        Ok(())
    }

    /// Retries an interrupted redemption until it succeeds or is refused for good.
    async fn resume_redemption(self: Arc<Self>, slot: u32, registration: SecretString) {
        let _enrolling = self.enroll_lock.lock().await;
        let mut delays = backon_delays(&self.config);
        loop {
            match self.redeem(slot, &registration).await {
                Ok(_) => return,
                Err(e) if e.is_permanent() => return,
                Err(e) => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(60));
                    let delay = delay.max(e.retry_after.unwrap_or_default());
                    tracing::warn!(code = %e.code, error = %e.message, retry_in_s = delay.as_secs(), "redemption not finished; retrying");
                    tokio::time::sleep(delay).await;
                    // Someone may have enrolled or unenrolled meanwhile.
                    let still_pending = {
                        let state = self.state.lock().await;
                        state
                            .slots
                            .get(&slot)
                            .and_then(|r| r.pending_since)
                            .is_some()
                    };
                    if !still_pending {
                        return;
                    }
                }
            }
        }
    }

    /// Enrolls with a registration token (Sentinel) or a client secret (OAuth2).
    ///
    /// # Errors
    /// `ALREADY_ENROLLED` unless forced; the registration token's refusal code
    /// (`REGISTRATION_TOKEN_INVALID`/`_EXPIRED`/`_EXHAUSTED`/`_DISABLED`);
    /// `CLIENT_CREDENTIALS_INVALID`; `STORE_UNAVAILABLE`; transient upstream
    /// errors after a few retries (the redemption then resumes on its own).
    pub async fn enroll(
        self: &Arc<Self>,
        secret_value: SecretString,
        options: EnrollOptions,
    ) -> Result<Enrolled> {
        let _enrolling = self.enroll_lock.lock().await;
        let slot = SHARED_SLOT;
        let status = self.engine.status();
        if !options.force && matches!(status.state, SlotState::Active | SlotState::Degraded) {
            return Err(Error::new(
                ErrorCode::AlreadyEnrolled,
                "this device is already enrolled and its credential works; run `regent unenroll` first, or pass --force (a new registration consumes another count)",
            ));
        }
        match self.config.server.profile {
            Profile::Sentinel => self.enroll_sentinel(slot, secret_value).await,
            Profile::OAuth2 => self.enroll_oauth2(slot, secret_value).await,
        }
    }

    async fn enroll_sentinel(
        self: &Arc<Self>,
        slot: u32,
        registration: SecretString,
    ) -> Result<Enrolled> {
        // 1. Identifier, registration token and pending marker are durable
        //    before anything is sent.
        self.store
            .set(&registration_entry(slot), registration.clone())
            .await?;
        {
            let mut state = self.state.lock().await;
            let device_id = state.device_id.clone();
            let record = state.slots.entry(slot).or_insert_with(|| SlotRecord {
                identifier: format!("{device_id}-{slot}"),
                pending_since: None,
                enrolled_at: None,
            });
            record.pending_since = Some(now_secs());
            let snapshot = state.clone();
            self.state_file.save(&snapshot)?;
        }
        crash_point("before-redeem");
        self.engine.begin_enrolling();
        // 2. Redeem, retrying transient failures a few times (Sentinel: an HTTP
        //    500 while creating an auth token should be retried).
        let mut delays = backon_delays(&self.config).take(3);
        loop {
            match self.redeem(slot, &registration).await {
                Ok(enrolled) => return Ok(enrolled),
                Err(e) if e.is_permanent() => return Err(e),
                Err(e) => match delays.next() {
                    Some(delay) => {
                        let delay = delay.max(e.retry_after.unwrap_or_default());
                        tracing::warn!(code = %e.code, error = %e.message, retry_in_ms = delay.as_millis() as u64, "redemption failed; retrying");
                        tokio::time::sleep(delay).await;
                    }
                    None => {
                        // The pending marker stays: the next start (or enroll)
                        // replays the same identifier without a second count.
                        let agent = Arc::clone(self);
                        tokio::spawn(
                            async move { agent.resume_redemption(slot, registration).await },
                        );
                        return Err(e);
                    }
                },
            }
        }
    }

    /// One redemption attempt with the slot's stored identifier.
    async fn redeem(self: &Arc<Self>, slot: u32, registration: &SecretString) -> Result<Enrolled> {
        let Upstream::Sentinel(sentinel) = self.upstream.as_ref() else {
            return Err(Error::new(
                ErrorCode::Internal,
                "redemption needs the sentinel profile",
            ));
        };
        let identifier = {
            let state = self.state.lock().await;
            match state.slots.get(&slot) {
                Some(record) => record.identifier.clone(),
                None => return Err(Error::new(ErrorCode::Internal, "slot has no identifier")),
            }
        };
        let mut identity = DeviceIdentity::detect(identifier.clone());
        identity.ref_id1 = self.config.server.ref_id1.clone();
        identity.ref_id2 = self.config.server.ref_id2.clone();
        let outcome = sentinel.redeem(registration, &identity).await;
        let redemption = match outcome {
            Ok(r) => r,
            Err(e) => {
                if e.is_permanent() {
                    // Refused: leave nothing half-written behind.
                    self.clear_pending(slot, false).await;
                    self.engine.enrolling_failed(e.clone());
                } else {
                    self.engine.enrolling_failed(e.clone());
                }
                return Err(e);
            }
        };
        crash_point("after-redeem");
        // 3. The auth token is in the store before success is reported.
        let mut credential = StoredCredential::default();
        credential.auth_token_id = Some(redemption.auth_token_id.clone());
        credential.set_grant(&redemption.grant);
        if let Err(e) = self
            .store
            .set(&credential_entry(slot), credential.to_secret()?)
            .await
        {
            self.engine.enrolling_failed(e.clone());
            return Err(e);
        }
        crash_point("after-store");
        self.clear_pending(slot, true).await;
        let expires_at = redemption.grant.expires_at;
        let renewer = self.renewer(slot, credential);
        self.engine.activate(renewer, Some(redemption.grant)).await;
        tracing::info!(slot, identifier = %identifier, "enrolled: registration token redeemed for an auth token");
        Ok(Enrolled {
            identifier,
            auth_token_id: Some(redemption.auth_token_id),
            expires_at: time::OffsetDateTime::from(expires_at),
        })
    }

    /// Drops the pending marker and the stored registration token.
    async fn clear_pending(&self, slot: u32, enrolled: bool) {
        {
            let mut state = self.state.lock().await;
            if let Some(record) = state.slots.get_mut(&slot) {
                record.pending_since = None;
                if enrolled {
                    record.enrolled_at = Some(now_secs());
                }
            }
            let snapshot = state.clone();
            if let Err(e) = self.state_file.save(&snapshot) {
                tracing::warn!(error = %e, "could not clear the pending-redemption marker");
            }
        }
        if let Err(e) = self.store.delete(&registration_entry(slot)).await {
            tracing::warn!(error = %e, "could not delete the used registration token from the store");
        }
    }

    async fn enroll_oauth2(
        self: &Arc<Self>,
        slot: u32,
        client_secret: SecretString,
    ) -> Result<Enrolled> {
        let Upstream::OAuth2(oauth2) = self.upstream.as_ref() else {
            return Err(Error::new(
                ErrorCode::Internal,
                "client secrets need the oauth2 profile",
            ));
        };
        self.engine.begin_enrolling();
        // Proving the secret works is the enrollment: nothing is stored until
        // the server accepts it.
        let grant = match oauth2.client_credentials(&client_secret).await {
            Ok(g) => g,
            Err(e) => {
                self.engine.enrolling_failed(e.clone());
                return Err(e);
            }
        };
        let mut credential = StoredCredential::default();
        credential.client_secret = Some(client_secret.expose_secret().to_owned());
        credential.set_grant(&grant);
        credential.issued.push(IssuedToken {
            fingerprint: fingerprint(&grant.access_token),
            expires_at_ms: to_ms(grant.expires_at),
        });
        if let Err(e) = self
            .store
            .set(&credential_entry(slot), credential.to_secret()?)
            .await
        {
            self.engine.enrolling_failed(e.clone());
            return Err(e);
        }
        {
            let mut state = self.state.lock().await;
            let identifier = self.config.server.client_id.clone().unwrap_or_default();
            state.slots.insert(
                slot,
                SlotRecord {
                    identifier,
                    pending_since: None,
                    enrolled_at: Some(now_secs()),
                },
            );
            let snapshot = state.clone();
            self.state_file.save(&snapshot)?;
        }
        let expires_at = grant.expires_at;
        let renewer = self.renewer(slot, credential);
        self.engine.activate(renewer, Some(grant)).await;
        Ok(Enrolled {
            identifier: self.config.server.client_id.clone().unwrap_or_default(),
            auth_token_id: None,
            expires_at: time::OffsetDateTime::from(expires_at),
        })
    }

    /// Forgets the credential: secrets are deleted from the store and the slot
    /// answers `NOT_ENROLLED`. The server-side auth token is left for the
    /// administrator to delete (the agent has no right to).
    ///
    /// # Errors
    /// `STORE_UNAVAILABLE` when a secret could not be deleted.
    pub async fn unenroll(&self) -> Result<()> {
        let _enrolling = self.enroll_lock.lock().await;
        let slot = SHARED_SLOT;
        self.store.delete(&credential_entry(slot)).await?;
        self.store.delete(&registration_entry(slot)).await?;
        {
            let mut state = self.state.lock().await;
            if let Some(record) = state.slots.get_mut(&slot) {
                record.pending_since = None;
                record.enrolled_at = None;
            }
            let snapshot = state.clone();
            self.state_file.save(&snapshot)?;
        }
        self.engine.deactivate().await;
        tracing::info!(slot, "unenrolled: stored secrets deleted");
        Ok(())
    }

    /// A token valid for at least `min_valid`.
    ///
    /// # Errors
    /// See [`Engine::token`].
    pub async fn token(&self, min_valid: Duration) -> Result<Arc<Grant>> {
        self.engine.token(min_valid).await
    }

    /// Keeps a standing demand (a subscription) registered until dropped.
    pub fn hold_demand(&self, min_valid: Duration) -> crate::engine::DemandGuard {
        self.engine.hold_demand(min_valid)
    }

    /// State changes and renewals.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.engine.events()
    }

    /// The engine's raw status.
    pub fn engine_status(&self) -> EngineStatus {
        self.engine.status()
    }

    /// Status for people and scripts.
    pub async fn status(&self) -> AgentStatus {
        let state = self.state.lock().await;
        let s = self.engine.status();
        let record = state.slots.get(&SHARED_SLOT);
        let secs = |t: Option<SystemTime>| t.map(|t| to_ms(t) / 1000);
        AgentStatus {
            profile: match self.config.server.profile {
                Profile::Sentinel => "sentinel",
                Profile::OAuth2 => "oauth2",
            },
            device_id: state.device_id.clone(),
            store: self.store.describe(),
            slots: vec![SlotStatus {
                slot: SHARED_SLOT,
                identifier: record.map(|r| r.identifier.clone()),
                state: s.state,
                pending_redemption: record.is_some_and(|r| r.pending_since.is_some()),
                expires_at: secs(s.expires_at),
                next_renewal: secs(s.next_renewal),
                last_renewal: secs(s.last_renewal),
                last_error_code: s.last_error.as_ref().map(|e| e.code.name().to_owned()),
                last_error: s.last_error.as_ref().map(|e| e.message.clone()),
                failures: s.failures,
                renewals_ok: s.renewals_ok,
                renewals_failed: s.renewals_failed,
                handouts: s.handouts,
            }],
        }
    }

    /// Applies new refresh settings (live reload).
    pub fn set_refresh_settings(&self, settings: EngineSettings) {
        self.engine.set_settings(settings);
    }

    /// The configuration the agent runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Stops background work.
    pub fn shutdown(&self) {
        self.engine.shutdown();
    }

    fn renewer(&self, slot: u32, credential: StoredCredential) -> Arc<dyn Renewer> {
        Arc::new(SlotRenewer {
            upstream: Arc::clone(&self.upstream),
            store: self.store.clone(),
            entry: credential_entry(slot),
            max_active_tokens: self.config.server.max_active_tokens,
            credential: Mutex::new(credential),
        })
    }
}

/// Renews one slot's credential and persists what rotated before returning.
struct SlotRenewer {
    upstream: Arc<Upstream>,
    store: SecretStore,
    entry: String,
    max_active_tokens: Option<u32>,
    credential: Mutex<StoredCredential>,
}

impl Renewer for SlotRenewer {
    fn renew(&self) -> BoxFuture<'_, Result<Grant>> {
        Box::pin(async move {
            let mut credential = self.credential.lock().await;
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
        let now = SystemTime::now();
        let now_ms = to_ms(now);
        credential.issued.retain(|t| t.expires_at_ms > now_ms);
        if let Some(max) = self.max_active_tokens
            && credential.issued.len() >= max as usize
        {
            // Our own live tokens fill the server's cap: asking now would
            // only earn a 429. Wait for the earliest to expire.
            let earliest = credential
                .issued
                .iter()
                .map(|t| t.expires_at_ms)
                .min()
                .unwrap_or(now_ms);
            let wait =
                Duration::from_millis(earliest.saturating_sub(now_ms)) + Duration::from_millis(250);
            return Err(Error::new(
                    ErrorCode::TokenLimit,
                    format!(
                        "this slot already holds {} live tokens (max_active_tokens = {max}); the next one can be requested when one expires",
                        credential.issued.len()
                    ),
                )
                .with_retry_after(wait));
        }
        let grant = match credential.refresh_token.clone().map(secret) {
            Some(refresh_token) => match oauth2.refresh(&client_secret, &refresh_token).await {
                Ok(grant) => grant,
                Err(e) if e.code == ErrorCode::Revoked => {
                    tracing::info!("refresh token refused; falling back to client credentials");
                    credential.refresh_token = None;
                    oauth2.client_credentials(&client_secret).await?
                }
                Err(e) => return Err(e),
            },
            None => oauth2.client_credentials(&client_secret).await?,
        };
        let print = fingerprint(&grant.access_token);
        if !credential.issued.iter().any(|t| t.fingerprint == print) {
            credential.issued.push(IssuedToken {
                fingerprint: print,
                expires_at_ms: to_ms(grant.expires_at),
            });
        }
        Ok(grant)
    }
}

/// A non-reversible 64-bit fingerprint of a high-entropy token, to recognise a
/// re-issued token without storing it twice.
fn fingerprint(token: &SecretString) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    token.expose_secret().hash(&mut h);
    h.finish()
}

fn random_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn backon_delays(config: &Config) -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(config.refresh.backoff_min))
        .with_max_delay(Duration::from_secs(config.refresh.backoff_max))
        .with_jitter()
        .without_max_times()
        .build()
}

fn open_store(config: &Config) -> Result<SecretStore> {
    let timeout = Duration::from_secs(config.store.timeout);
    match config.store.kind {
        StoreKind::Keychain => SecretStore::keychain(&config.store.service, timeout),
        StoreKind::File => SecretStore::file(config.store_path()?, timeout),
    }
}

fn open_upstream(config: &Config) -> Result<Upstream> {
    let s = &config.server;
    let http = Http::new(HttpSettings {
        connect_timeout: Duration::from_secs(s.connect_timeout),
        request_timeout: Duration::from_secs(s.request_timeout),
        ..HttpSettings::default()
    })?;
    let missing = |key: &str| {
        Error::new(
            ErrorCode::Config,
            format!("[server] {key} is required for this profile"),
        )
    };
    Ok(match s.profile {
        Profile::Sentinel => {
            let url = s.url.clone().ok_or_else(|| missing("url"))?;
            Upstream::Sentinel(Sentinel::new(http, url)?)
        }
        Profile::OAuth2 => {
            let endpoint = match (&s.token_url, &s.issuer) {
                (Some(url), _) => OAuth2Endpoint::TokenUrl(url.clone()),
                (None, Some(issuer)) => OAuth2Endpoint::Issuer(issuer.clone()),
                (None, None) => return Err(missing("token_url")),
            };
            let client_id = s.client_id.clone().ok_or_else(|| missing("client_id"))?;
            Upstream::OAuth2(OAuth2::new(http, endpoint, client_id, s.scope.clone())?)
        }
    })
}
