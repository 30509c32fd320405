//! The agent: its slots' credentials, crash-safe enrollment, instance leases,
//! and the handout API that the IPC layer serves.
//!
//! Crash safety (DESIGN §5): before a redemption the slot's identifier and a
//! pending marker are in `state.json` and the registration token is in the
//! secret store; after it, the auth token is in the store before success is
//! reported. On start, a pending marker without a credential resumes the
//! redemption with the same identifier, which the server answers as a replay —
//! no second count.
//!
//! Slots (DESIGN §8): `shared` mode has slot 0 only, used by every connection.
//! `per-instance` mode leases a slot to each connected app instance and
//! activates it lazily on its first token request: the enrollment secret is
//! kept as `device.secret`, and each slot redeems it once with its own
//! identifier (Sentinel) or holds its own token from the same client
//! credentials (OAuth2). At most `instances.max` slots ever exist.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex as SyncMutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use regent_proto::ErrorCode;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::config::{Config, InstanceMode, Profile};
use crate::crash::{CrashPoint, crash_point};
use crate::credential::{IssuedToken, Ledger, SlotRenewer, StoredCredential, to_ms};
use crate::engine::{DemandGuard, Engine, EngineSettings, EngineStatus, Event, Renewer, SlotState};
use crate::error::{Error, Result};
use crate::grant::Grant;
use crate::lease::{Holder, Lease, LeaseTable};
use crate::metrics::{self, Counters, Histogram, SlotSample};
use crate::secret::{ExposeSecret, SecretString};
use crate::store::{SecretStore, StateFile, StoreKind};
use crate::upstream::http::{Http, HttpSettings};
use crate::upstream::oauth2::{OAuth2, OAuth2Endpoint};
use crate::upstream::sentinel::Sentinel;
use crate::upstream::{DeviceIdentity, Upstream};

/// The slot `shared` mode uses, and the first slot in `per-instance` mode.
const FIRST_SLOT: u32 = 0;
const STATE_VERSION: u32 = 1;
/// An enroll call retries a failed redemption inline only after waits this
/// short, and only while it has run less than the budget; longer waits (a
/// server's `Retry-After`) happen in the background resumption, so the call
/// returns within the client's timeout.
const INLINE_RETRY_LIMIT: Duration = Duration::from_secs(10);
const INLINE_RETRY_BUDGET: Duration = Duration::from_secs(20);
/// An enroll call waits at most this long for the server in all, below the
/// clients' default 30 s call timeout: a server that never answers must not
/// turn into a client-side `TIMEOUT` while the agent carries on unseen.
const INLINE_CALL_LIMIT: Duration = Duration::from_secs(25);
/// After a slot's redemption is refused, ask again no sooner than this.
const REFUSAL_HOLD: Duration = Duration::from_secs(30);
/// The enrollment secret kept for lazy per-instance slots.
const DEVICE_SECRET: &str = "device.secret";

/// Non-secret state, persisted atomically in `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PersistentState {
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

fn now_secs() -> u64 {
    to_ms(SystemTime::now()) / 1000
}

/// Why a redemption begun before `unenroll` stored nothing.
fn unenrolled_meanwhile() -> Error {
    Error::new(
        ErrorCode::NotEnrolled,
        "this device is not enrolled: it was unenrolled while a redemption was under way, and that redemption's outcome was dropped; run `regent enroll` with a registration token",
    )
}

fn credential_entry(slot: u32) -> String {
    format!("slot-{slot}.credential")
}

fn registration_entry(slot: u32) -> String {
    format!("slot-{slot}.registration")
}

/// What `enroll` does when the device already holds a working credential.
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

pub use regent_proto::status::{AgentStatus, SlotStatus};

/// One slot: its engine, and the locks that keep its activation single.
#[derive(Debug)]
struct Slot {
    engine: Engine,
    /// One lazy activation (redemption) at a time.
    activating: Mutex<()>,
    /// The last refused redemption, so a refused slot does not ask again on
    /// every request.
    refused: SyncMutex<Option<(Instant, Error)>>,
    /// Why the slot's stored credential could not be loaded; while set, the
    /// slot is never activated afresh (that would overwrite or re-redeem it),
    /// and loading is retried in the background.
    unreadable: SyncMutex<Option<Error>>,
}

/// The agent as a library.
#[derive(Debug)]
pub struct Agent {
    config: Config,
    store: SecretStore,
    state_file: StateFile,
    state: Mutex<PersistentState>,
    upstream: Arc<Upstream>,
    /// Latency of this agent's answered upstream requests (its HTTP client
    /// records into it; the metrics render it).
    upstream_latency: Arc<Histogram>,
    slots: SyncMutex<BTreeMap<u32, Arc<Slot>>>,
    settings: SyncMutex<EngineSettings>,
    leases: Arc<LeaseTable>,
    instances_max: AtomicU32,
    ledger: Arc<Ledger>,
    /// One enrollment (or unenrollment) at a time.
    enroll_lock: Mutex<()>,
    /// The enrollment epoch: `unenroll` advances it, and a redemption begun in
    /// an earlier epoch stores nothing. Held while a redemption's outcome is
    /// stored and while `unenroll` forgets, so the two never interleave.
    epoch: Mutex<u64>,
}

impl Agent {
    /// Opens the agent: loads state, every slot's stored credential and cached
    /// token, and resumes interrupted redemptions in the background. A slot
    /// whose credential cannot be read reports `STORE_UNAVAILABLE` (naming the
    /// slot, the entry and the fix) and is retried in the background; the
    /// other slots serve meanwhile.
    ///
    /// # Errors
    /// `CONFIG` for a bad server URL or state directory; `STORE_UNAVAILABLE`
    /// when `state.json` cannot be read or written.
    /// Checks what [`Agent::open`] would refuse in `config` — the server
    /// settings (URL, profile keys, proxy, CA file), the state directory and
    /// the file store's path — without touching the filesystem, so that the
    /// daemon refuses a bad configuration before it binds its socket.
    ///
    /// # Errors
    /// `CONFIG` naming the key.
    pub fn preflight(config: &Config) -> Result<()> {
        crate::crash::check_env()?;
        checked_upstream(config, Arc::default()).map(drop)
    }

    pub async fn open(config: Config) -> Result<Arc<Agent>> {
        // Everything the configuration can get wrong is refused before a
        // directory is made or a file written.
        crate::crash::check_env()?;
        let upstream_latency = Arc::new(Histogram::new());
        let upstream = Arc::new(checked_upstream(&config, Arc::clone(&upstream_latency))?);
        let state_dir = config.state_dir()?;
        crate::store::state_dir::create_state_dir(&state_dir)?;
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
                state_file.save_async(&state).await?;
                state
            }
        };
        let known: Vec<u32> = state.slots.keys().copied().collect();
        let agent = Arc::new(Agent {
            store,
            state_file,
            state: Mutex::new(state),
            upstream,
            upstream_latency,
            slots: SyncMutex::new(BTreeMap::new()),
            settings: SyncMutex::new(EngineSettings::from(&config.refresh)),
            leases: LeaseTable::new(Duration::from_secs(config.instances.lease_grace)),
            instances_max: AtomicU32::new(config.instances.max),
            ledger: Arc::new(Ledger::default()),
            enroll_lock: Mutex::new(()),
            epoch: Mutex::new(0),
            config,
        });
        agent.slot(FIRST_SLOT);
        for slot in known {
            if let Err(e) = agent.load_slot(slot).await {
                agent.slot_unreadable(slot, &e);
                tokio::spawn(retry_unreadable(Arc::downgrade(&agent), slot));
            }
        }
        Ok(agent)
    }

    /// What `load_slot` reports when `entry` of `slot` cannot be read: the
    /// slot, the entry, the store and the store's own fix.
    fn unreadable_entry(&self, slot: u32, entry: &str, cause: Error) -> Error {
        Error::new(
            ErrorCode::StoreUnavailable,
            format!(
                "slot {slot} cannot load its entry {entry} from the {store}, so this slot \
                 serves no token; the other slots are not affected, and the agent retries \
                 loading it. {cause}",
                store = self.store.describe(),
                cause = cause.message,
            ),
        )
    }

    /// Marks `slot` as holding a credential that cannot be read: its requests
    /// and its status get `error` (from [`Agent::unreadable_entry`]).
    fn slot_unreadable(&self, slot: u32, error: &Error) {
        let error = error.clone();
        tracing::error!(slot, error = %error.message, "a slot's stored secrets cannot be loaded");
        let slot_ref = self.slot(slot);
        *slot_ref
            .unreadable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(error.clone());
        slot_ref.engine.set_unreadable(Some(error));
    }

    /// Stores every renewed credential that is still held in memory because
    /// the store refused it (called once at shutdown, after the schedulers
    /// stopped); logs what could not be saved.
    pub async fn save_unsaved(&self) {
        for (slot, slot_ref) in self.existing_slots() {
            if let Err(e) = slot_ref.engine.save_unsaved().await {
                tracing::error!(
                    slot,
                    error = %e.message,
                    "stopping with a renewed credential that could not be stored: the stored \
                     refresh token is one rotation behind and the license server will refuse \
                     it; fix the store and enroll this device again"
                );
            }
        }
    }

    /// The slot's engine, created on first use.
    fn slot(&self, number: u32) -> Arc<Slot> {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Every handout comes through here: the settings are only read (and
        // cloned) when a slot is created.
        Arc::clone(slots.entry(number).or_insert_with(|| {
            let settings = self
                .settings
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            Arc::new(Slot {
                engine: Engine::start(settings),
                activating: Mutex::new(()),
                refused: SyncMutex::new(None),
                unreadable: SyncMutex::new(None),
            })
        }))
    }

    fn existing_slots(&self) -> Vec<(u32, Arc<Slot>)> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(n, s)| (*n, Arc::clone(s)))
            .collect()
    }

    fn per_instance(&self) -> bool {
        self.config.instances.mode == InstanceMode::PerInstance
    }

    async fn is_pending(&self, slot: u32) -> bool {
        let state = self.state.lock().await;
        state
            .slots
            .get(&slot)
            .and_then(|r| r.pending_since)
            .is_some()
    }

    /// Loads a slot's stored credential into its engine, or resumes its
    /// interrupted redemption.
    async fn load_slot(self: &Arc<Self>, slot: u32) -> Result<()> {
        let entry = credential_entry(slot);
        let unreadable = |e| self.unreadable_entry(slot, &entry, e);
        if let Some(value) = self.store.get(&entry).await.map_err(unreadable)? {
            let credential = StoredCredential::parse(&value).map_err(unreadable)?;
            let grant = credential.cached_grant(SystemTime::now());
            self.ledger.load(slot, &credential.issued);
            if credential.renewal_intent_ms.is_some() {
                tracing::info!(
                    slot,
                    "the last renewal attempt of this slot has no stored outcome (it failed, or \
                     the agent stopped while it was in flight); if the license server rotated \
                     the refresh token then, the next renewal is refused (REVOKED)"
                );
            }
            tracing::info!(
                slot,
                cached_token = grant.is_some(),
                store = %self.store.describe(),
                "loaded stored credential"
            );
            let renewer = self.renewer(slot, credential);
            self.slot(slot).engine.activate(renewer, grant).await;
            if self.is_pending(slot).await {
                // A crash after the credential was stored but before the
                // marker was cleared: the stored credential wins.
                self.clear_pending(slot, true).await;
            } else {
                // A crash after the marker was cleared but before the used
                // registration token was deleted.
                self.remove_used_registration(slot).await;
            }
            return Ok(());
        }
        if !self.is_pending(slot).await {
            self.remove_used_registration(slot).await;
            return Ok(());
        }
        let registration = registration_entry(slot);
        match self
            .store
            .get(&registration)
            .await
            .map_err(|e| self.unreadable_entry(slot, &registration, e))?
        {
            Some(registration) => {
                tracing::info!(
                    slot,
                    "resuming an interrupted redemption with the same identifier"
                );
                let agent = Arc::clone(self);
                let epoch = *self.epoch.lock().await;
                tokio::spawn(
                    async move { agent.resume_redemption(slot, registration, epoch).await },
                );
            }
            None => {
                // A crash between storing the marker and the registration
                // token: nothing was sent, so there is nothing to resume.
                tracing::info!(
                    slot,
                    "an enrollment was interrupted before anything was sent; enroll again"
                );
                self.clear_pending(slot, false).await;
            }
        }
        Ok(())
    }

    /// Deletes a registration token that no redemption needs any more (best
    /// effort): it must not outlive its enrollment in the store.
    async fn remove_used_registration(&self, slot: u32) {
        if let Err(e) = self.store.delete(&registration_entry(slot)).await {
            tracing::warn!(slot, error = %e, "could not delete a used registration token from the store");
        }
    }

    /// Retries an interrupted redemption until it succeeds, is refused for
    /// good, or the device is unenrolled (the `epoch` it was begun in ends).
    async fn resume_redemption(self: Arc<Self>, slot: u32, registration: SecretString, epoch: u64) {
        let slot_ref = self.slot(slot);
        let mut delays = backon_delays(&self.config);
        loop {
            let attempt = {
                // Held per attempt, not across the sleep: an enroll may come in between.
                let _activating = slot_ref.activating.lock().await;
                if *self.epoch.lock().await != epoch || !self.is_pending(slot).await {
                    return; // someone enrolled or unenrolled meanwhile
                }
                // Shown as enrolling while it runs, never as unenrolled with
                // no redemption pending while one completes.
                slot_ref.engine.begin_enrolling();
                self.redeem(slot, &registration, None, epoch).await
            };
            match attempt {
                Ok(_) => return,
                Err(e) if !e.is_retryable() => return,
                Err(e) => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(60));
                    let delay = delay.max(e.retry_after.unwrap_or_default());
                    tracing::warn!(slot, code = %e.code, error = %e.message, retry_in_s = delay.as_secs(), "redemption not finished; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Enrolls with a registration token (Sentinel) or a client secret (OAuth2).
    /// In `per-instance` mode the secret is kept so that further slots can be
    /// activated as instances need them; slot 0 is activated now.
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
        let first = self.slot(FIRST_SLOT);
        if !options.force
            && matches!(
                first.engine.status().state,
                SlotState::Active | SlotState::Degraded
            )
        {
            return Err(Error::new(
                ErrorCode::AlreadyEnrolled,
                "this device is already enrolled and its credential works; run `regent unenroll` first, or pass --force (a new registration consumes another count)",
            ));
        }
        if self.per_instance() {
            self.store.set(DEVICE_SECRET, secret_value.clone()).await?;
            for (_, slot) in self.existing_slots() {
                clear_refusal(&slot);
            }
        }
        let _activating = first.activating.lock().await;
        let result = match self.config.server.profile {
            Profile::Sentinel => self.enroll_sentinel(FIRST_SLOT, secret_value).await,
            Profile::OAuth2 => self.enroll_oauth2(FIRST_SLOT, secret_value).await,
        };
        if let Err(e) = &result
            && !e.is_retryable()
            && self.per_instance()
        {
            // A refused secret must not be kept for later slots.
            let _ = self.store.delete(DEVICE_SECRET).await;
        }
        result
    }

    async fn enroll_sentinel(
        self: &Arc<Self>,
        slot: u32,
        registration: SecretString,
    ) -> Result<Enrolled> {
        // The caller holds `enroll_lock`, which `unenroll` needs: the epoch
        // cannot end before the background resumption (if any) starts.
        let epoch = *self.epoch.lock().await;
        self.begin_redemption(slot, &registration, epoch).await?;
        // Redeem, retrying transient failures a few times (Sentinel: an HTTP
        // 500 while creating an auth token should be retried). The caller is
        // waiting: a long wait asked by the server (`Retry-After`), or retries
        // past the inline budget, are left to the background resumption.
        let started = Instant::now();
        let deadline = started + INLINE_CALL_LIMIT;
        let mut delays = backon_delays(&self.config).take(3);
        loop {
            match self
                .redeem(slot, &registration, Some(deadline), epoch)
                .await
            {
                Ok(enrolled) => return Ok(enrolled),
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) => match delays
                    .next()
                    .map(|d| d.max(e.retry_after.unwrap_or_default()))
                {
                    Some(delay)
                        if delay <= INLINE_RETRY_LIMIT
                            && started.elapsed() + delay < INLINE_RETRY_BUDGET =>
                    {
                        tracing::warn!(slot, code = %e.code, error = %e.message, retry_in_ms = delay.as_millis() as u64, "redemption failed; retrying");
                        tokio::time::sleep(delay).await;
                    }
                    _ => {
                        // The pending marker stays: the next start (or enroll)
                        // replays the same identifier without a second count.
                        let agent = Arc::clone(self);
                        tokio::spawn(async move {
                            agent.resume_redemption(slot, registration, epoch).await;
                        });
                        return Err(e);
                    }
                },
            }
        }
    }

    /// Makes the identifier, pending marker and registration token durable
    /// before anything is sent. The marker goes first, so a stored registration
    /// token always belongs to a slot that `state.json` knows and the next start
    /// can resume or remove it; a marker without a registration token means
    /// nothing was sent. Nothing is written once `epoch` has ended (unenrolled).
    async fn begin_redemption(
        &self,
        slot: u32,
        registration: &SecretString,
        epoch: u64,
    ) -> Result<()> {
        let current = self.epoch.lock().await;
        if *current != epoch {
            return Err(unenrolled_meanwhile());
        }
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
            if let Err(e) = self.state_file.save_async(&snapshot).await {
                // Not durable: do not show a redemption as pending.
                if let Some(record) = state.slots.get_mut(&slot) {
                    record.pending_since = None;
                }
                return Err(e);
            }
        }
        if let Err(e) = self
            .store
            .set(&registration_entry(slot), registration.clone())
            .await
        {
            // Nothing was sent: the marker must not stay behind.
            self.clear_pending(slot, false).await;
            return Err(e);
        }
        drop(current);
        crash_point(CrashPoint::BeforeRedeem);
        self.slot(slot).engine.begin_enrolling();
        Ok(())
    }

    /// One redemption attempt with the slot's stored identifier. With a
    /// `deadline`, a server that has not answered by then is given up on
    /// (`TIMEOUT`); that is safe at any moment, like a dropped connection: the
    /// pending marker stays and a replay costs no second count. An answer
    /// that arrives after `epoch` ended (the device was unenrolled meanwhile)
    /// is dropped, never stored.
    async fn redeem(
        self: &Arc<Self>,
        slot: u32,
        registration: &SecretString,
        deadline: Option<Instant>,
        epoch: u64,
    ) -> Result<Enrolled> {
        let Upstream::Sentinel(sentinel) = self.upstream.as_ref() else {
            return Err(Error::new(
                ErrorCode::Internal,
                "redemption needs the sentinel profile",
            ));
        };
        let engine = &self.slot(slot).engine;
        let identifier = {
            let state = self.state.lock().await;
            match state.slots.get(&slot) {
                Some(record) => record.identifier.clone(),
                None => return Err(Error::new(ErrorCode::Internal, "slot has no identifier")),
            }
        };
        if *self.epoch.lock().await != epoch {
            tracing::info!(
                slot,
                "redemption not sent: the device was unenrolled meanwhile"
            );
            let e = unenrolled_meanwhile();
            engine.enrolling_failed(e.clone());
            return Err(e);
        }
        let mut identity = DeviceIdentity::detect(identifier.clone());
        identity.ref_id1 = self.config.server.ref_id1.clone();
        identity.ref_id2 = self.config.server.ref_id2.clone();
        let answer = match deadline {
            None => sentinel.redeem(registration, &identity).await,
            Some(deadline) => {
                match tokio::time::timeout_at(
                    deadline.into(),
                    sentinel.redeem(registration, &identity),
                )
                .await
                {
                    Ok(answer) => answer,
                    Err(_) => Err(Error::new(
                        ErrorCode::Timeout,
                        format!(
                            "the license server has not answered within {} s; the redemption goes on in the background with the same identifier (no second count): `regent status` shows when it completes",
                            INLINE_CALL_LIMIT.as_secs()
                        ),
                    )),
                }
            }
        };
        let redemption = match answer {
            Ok(r) => r,
            Err(e) => {
                if !e.is_retryable() {
                    // Refused: leave nothing half-written behind.
                    self.clear_pending(slot, false).await;
                }
                engine.enrolling_failed(e.clone());
                return Err(e);
            }
        };
        crash_point(CrashPoint::AfterRedeem);
        // Held until the credential is stored and active: `unenroll` either
        // comes before (and the answer is dropped) or after (and deletes it).
        let current = self.epoch.lock().await;
        if *current != epoch {
            drop(current);
            drop(redemption);
            tracing::warn!(
                slot,
                "a redemption answered after `regent unenroll`: the auth token it created was dropped, not stored (it used a registration count; an administrator can delete it at the server, e.g. `regent admin auth-tokens`)"
            );
            let e = unenrolled_meanwhile();
            engine.enrolling_failed(e.clone());
            return Err(e);
        }
        // The auth token is in the store before success is reported.
        let mut credential = StoredCredential::default();
        credential.auth_token_id = Some(redemption.auth_token_id.clone());
        credential.set_grant(&redemption.grant);
        if let Err(e) = self
            .store
            .set(&credential_entry(slot), credential.to_secret()?)
            .await
        {
            engine.enrolling_failed(e.clone());
            return Err(e);
        }
        crash_point(CrashPoint::AfterStore);
        self.clear_pending(slot, true).await;
        let expires_at = redemption.grant.expires_at;
        let renewer = self.renewer(slot, credential);
        engine.activate(renewer, Some(redemption.grant)).await;
        drop(current);
        tracing::info!(slot, identifier = %crate::secret::short_hash(&identifier), "enrolled: registration token redeemed for an auth token");
        Ok(Enrolled {
            identifier,
            auth_token_id: Some(redemption.auth_token_id),
            expires_at: time::OffsetDateTime::from(expires_at),
        })
    }

    /// Drops the pending marker and the slot's stored registration token.
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
            if let Err(e) = self.state_file.save_async(&snapshot).await {
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
        let engine = &self.slot(slot).engine;
        engine.begin_enrolling();
        // Proving the secret works is the enrollment: nothing is stored until
        // the server accepts it.
        let grant = match oauth2.client_credentials(&client_secret).await {
            Ok(g) => g,
            Err(e) => {
                engine.enrolling_failed(e.clone());
                return Err(e);
            }
        };
        let mut credential = StoredCredential::default();
        credential.client_secret = Some(client_secret.expose_secret().to_owned());
        credential.set_grant(&grant);
        credential.issued.push(IssuedToken {
            fingerprint: crate::credential::fingerprint(&grant.access_token),
            expires_at_ms: to_ms(grant.expires_at),
        });
        self.ledger.load(slot, &credential.issued);
        // The slot is in state.json before its credential is stored, so a
        // stored credential is always one the next start loads.
        let identifier = match self.record_oauth2_slot(slot).await {
            Ok(identifier) => identifier,
            Err(e) => {
                engine.enrolling_failed(e.clone());
                return Err(e);
            }
        };
        if let Err(e) = self
            .store
            .set(&credential_entry(slot), credential.to_secret()?)
            .await
        {
            engine.enrolling_failed(e.clone());
            return Err(e);
        }
        let expires_at = grant.expires_at;
        let renewer = self.renewer(slot, credential);
        engine.activate(renewer, Some(grant)).await;
        Ok(Enrolled {
            identifier,
            auth_token_id: None,
            expires_at: time::OffsetDateTime::from(expires_at),
        })
    }

    async fn record_oauth2_slot(&self, slot: u32) -> Result<String> {
        let client_id = self.config.server.client_id.clone().unwrap_or_default();
        let identifier = if slot == FIRST_SLOT {
            client_id
        } else {
            format!("{client_id}#{slot}")
        };
        let mut state = self.state.lock().await;
        state.slots.insert(
            slot,
            SlotRecord {
                identifier: identifier.clone(),
                pending_since: None,
                enrolled_at: Some(now_secs()),
            },
        );
        let snapshot = state.clone();
        self.state_file.save_async(&snapshot).await?;
        Ok(identifier)
    }

    /// Activates a per-instance slot on its first use: a redemption of the
    /// kept registration token with the slot's own identifier (Sentinel), or
    /// a credential from the same client secret (OAuth2).
    async fn activate_slot(self: &Arc<Self>, number: u32) -> Result<()> {
        let slot = self.slot(number);
        let _activating = slot.activating.lock().await;
        if slot.engine.status().state != SlotState::Unenrolled {
            return Ok(());
        }
        let epoch = *self.epoch.lock().await;
        if let Some((at, e)) = slot
            .refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            && at.elapsed() < REFUSAL_HOLD
        {
            return Err(e.with_retry_after(REFUSAL_HOLD.saturating_sub(at.elapsed())));
        }
        if let Some(e) = slot
            .unreadable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
        {
            // Activating afresh would overwrite (or redeem again for) a
            // credential that may still be good once the store answers.
            return Err(e);
        }
        let Some(secret) = self.store.get(DEVICE_SECRET).await? else {
            return Err(Error::new(
                ErrorCode::NotEnrolled,
                "this device is not enrolled: run `regent enroll` with a registration token",
            ));
        };
        let result = match self.config.server.profile {
            Profile::Sentinel => {
                self.begin_redemption(number, &secret, epoch).await?;
                // The instance is waiting on its call: a silent server is given
                // up on in time; the marker stays and its next request replays.
                let deadline = Instant::now() + INLINE_CALL_LIMIT;
                self.redeem(number, &secret, Some(deadline), epoch)
                    .await
                    .map(|_| ())
            }
            Profile::OAuth2 => {
                let mut credential = StoredCredential::default();
                credential.client_secret = Some(secret.expose_secret().to_owned());
                // Nothing is stored once the device was unenrolled meanwhile.
                let current = self.epoch.lock().await;
                if *current != epoch {
                    return Err(unenrolled_meanwhile());
                }
                // Slot first, credential second: see `enroll_oauth2`.
                self.record_oauth2_slot(number).await?;
                self.store
                    .set(&credential_entry(number), credential.to_secret()?)
                    .await?;
                let renewer = self.renewer(number, credential);
                slot.engine.activate(renewer, None).await;
                drop(current);
                Ok(())
            }
        };
        if let Err(e) = &result
            && !e.is_retryable()
        {
            *slot
                .refused
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some((Instant::now(), e.clone()));
        }
        result
    }

    /// Forgets every credential: secrets are deleted from the store and every
    /// slot answers `NOT_ENROLLED`. The server-side auth tokens are left for
    /// the administrator to delete (the agent has no right to).
    ///
    /// # Errors
    /// `STORE_UNAVAILABLE` when a secret could not be deleted.
    pub async fn unenroll(&self) -> Result<()> {
        let _enrolling = self.enroll_lock.lock().await;
        // A new epoch: redemptions still in flight store nothing from now on
        // (their answers are dropped), and the lock keeps one that is storing
        // right now from finishing after this returns.
        let mut epoch = self.epoch.lock().await;
        *epoch = epoch.wrapping_add(1);
        // Engines first: each waits for a renewal in flight, which would
        // otherwise store its rotated credential after the entry is deleted.
        let slots = self.existing_slots();
        for (_, slot) in &slots {
            slot.engine.deactivate().await;
        }
        self.store.delete(DEVICE_SECRET).await?;
        for (number, slot) in slots {
            self.store.delete(&credential_entry(number)).await?;
            self.store.delete(&registration_entry(number)).await?;
            self.ledger.forget(number);
            clear_refusal(&slot);
        }
        {
            let mut state = self.state.lock().await;
            for record in state.slots.values_mut() {
                record.pending_since = None;
                record.enrolled_at = None;
            }
            let snapshot = state.clone();
            self.state_file.save_async(&snapshot).await?;
        }
        self.leases.clear_reservations();
        drop(epoch);
        tracing::info!("unenrolled: stored secrets deleted");
        Ok(())
    }

    /// Leases a slot to an app instance (`per-instance` mode); `None` in
    /// `shared` mode, where every connection uses slot 0.
    ///
    /// # Errors
    /// `NO_FREE_INSTANCE` when every slot is leased; who holds them is named
    /// only when `show_holders` (the caller is the agent's uid or root).
    pub fn lease(&self, holder: Holder, show_holders: bool) -> Result<Option<Lease>> {
        if !self.per_instance() {
            return Ok(None);
        }
        let max = self.instances_max.load(Ordering::Relaxed);
        let slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let enrolled = |n: u32| {
            slots.get(&n).is_some_and(|s| {
                matches!(
                    s.engine.status().state,
                    SlotState::Active | SlotState::Degraded
                )
            })
        };
        match self.leases.acquire(holder, max, enrolled) {
            Ok(lease) => Ok(Some(lease)),
            Err(all) => {
                let mut message = format!("all {} instance slots are in use", all.slots);
                if show_holders && !all.holders.is_empty() {
                    let who: Vec<String> = all
                        .holders
                        .iter()
                        .map(|(slot, h)| {
                            format!(
                                "slot {slot}: {}{} (pid {})",
                                h.app,
                                h.instance
                                    .as_deref()
                                    .map(|i| format!("/{i}"))
                                    .unwrap_or_default(),
                                h.pid.map_or_else(|| "?".to_owned(), |p| p.to_string())
                            )
                        })
                        .collect();
                    message.push_str(&format!(" — {}", who.join(", ")));
                }
                message.push_str("; retry when an instance exits, or ask the administrator to raise instances.max");
                Err(Error::new(ErrorCode::NoFreeInstance, message)
                    .with_retry_after(Duration::from_secs(1)))
            }
        }
    }

    /// Lowers or raises `instances.max` (live reload). Leased slots above the
    /// new maximum keep working; they are not leased again once released.
    pub fn set_instances_max(&self, max: u32) {
        self.instances_max.store(max.max(1), Ordering::Relaxed);
    }

    /// A token from `slot` valid for at least `min_valid`, activating a
    /// per-instance slot on first use.
    ///
    /// # Errors
    /// See [`Engine::token`]; plus the slot's redemption refusal.
    pub async fn token_for(self: &Arc<Self>, slot: u32, min_valid: Duration) -> Result<Arc<Grant>> {
        let slot_ref = self.slot(slot);
        if self.per_instance() && slot_ref.engine.status().state == SlotState::Unenrolled {
            self.activate_slot(slot).await?;
        }
        slot_ref.engine.token(min_valid).await
    }

    /// A token from the first slot (the device's, in `shared` mode).
    ///
    /// # Errors
    /// See [`Engine::token`].
    pub async fn token(self: &Arc<Self>, min_valid: Duration) -> Result<Arc<Grant>> {
        self.token_for(FIRST_SLOT, min_valid).await
    }

    /// Keeps a standing demand (a subscription) on `slot` until dropped.
    pub fn hold_demand_for(&self, slot: u32, min_valid: Duration) -> DemandGuard {
        self.slot(slot).engine.hold_demand(min_valid)
    }

    /// Keeps a standing demand on the first slot until dropped.
    pub fn hold_demand(&self, min_valid: Duration) -> DemandGuard {
        self.hold_demand_for(FIRST_SLOT, min_valid)
    }

    /// State changes and renewals of `slot`.
    pub fn events_for(&self, slot: u32) -> tokio::sync::broadcast::Receiver<Event> {
        self.slot(slot).engine.events()
    }

    /// State changes and renewals of the first slot.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.events_for(FIRST_SLOT)
    }

    /// The raw engine status of `slot`.
    pub fn engine_status_for(&self, slot: u32) -> EngineStatus {
        self.slot(slot).engine.status()
    }

    /// Every existing slot's raw engine status, by slot number.
    pub fn engine_statuses(&self) -> Vec<(u32, EngineStatus)> {
        self.existing_slots()
            .into_iter()
            .map(|(n, slot)| (n, slot.engine.status()))
            .collect()
    }

    /// The raw engine status of the first slot.
    pub fn engine_status(&self) -> EngineStatus {
        self.engine_status_for(FIRST_SLOT)
    }

    /// Status for people and scripts; identifiers, the device id and lease
    /// holders only for an administrator (`admin`: the agent's uid or root).
    pub async fn status_with(&self, admin: bool) -> AgentStatus {
        let state = self.state.lock().await;
        let holders = self.leases.holders();
        let slots = self
            .existing_slots()
            .into_iter()
            .map(|(number, slot)| {
                let s = slot.engine.status();
                let record = state.slots.get(&number);
                SlotStatus {
                    identifier: record.filter(|_| admin).map(|r| r.identifier.clone()),
                    leased_by: admin
                        .then(|| {
                            holders
                                .iter()
                                .find(|(n, _)| *n == number)
                                .map(|(_, h)| h.clone())
                        })
                        .flatten(),
                    pending_redemption: record.is_some_and(|r| r.pending_since.is_some()),
                    next_renewal_reason: s.next_renewal_reason,
                    last_error_code: s.last_error.as_ref().map(|e| e.code),
                    last_error: s.last_error.as_ref().map(|e| e.message.clone()),
                    failures: s.failures,
                    renewals_ok: s.renewals_ok,
                    renewals_failed: s.renewals_failed,
                    handouts: s.handouts,
                    ..SlotStatus::new(number, s.state).with_times(
                        s.expires_at,
                        s.next_renewal,
                        s.last_renewal,
                    )
                }
            })
            .collect();
        AgentStatus {
            profile: match self.config.server.profile {
                Profile::Sentinel => "sentinel",
                Profile::OAuth2 => "oauth2",
            }
            .to_owned(),
            instance_mode: if self.per_instance() {
                "per-instance"
            } else {
                "shared"
            }
            .to_owned(),
            instances_max: self.instances_max.load(Ordering::Relaxed),
            device_id: admin.then(|| state.device_id.clone()),
            store: self.store.describe(),
            slots,
        }
    }

    /// Status with everything (for code in this process, which is trusted).
    pub async fn status(&self) -> AgentStatus {
        self.status_with(true).await
    }

    /// Applies new refresh settings to every slot (live reload).
    pub fn set_refresh_settings(&self, settings: EngineSettings) {
        for (_, slot) in self.existing_slots() {
            slot.engine.set_settings(settings.clone());
        }
        *self
            .settings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = settings;
    }

    /// The configuration the agent was opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Every metric, as Prometheus text: the slots' figures, the agent-wide
    /// `counters`, and this agent's upstream latency.
    pub fn render_metrics(&self, counters: &Counters) -> String {
        let slots: Vec<SlotSample> = self
            .engine_statuses()
            .into_iter()
            .map(|(_, s)| SlotSample {
                state: s.state,
                handouts: s.handouts,
                renewals_ok: s.renewals_ok,
                renewals_failed: s.renewals_failed,
                expires_at: s.expires_at,
            })
            .collect();
        metrics::render(&slots, counters, &self.upstream_latency)
    }

    /// Stops background work.
    pub fn shutdown(&self) {
        for (_, slot) in self.existing_slots() {
            slot.engine.shutdown();
        }
    }

    fn renewer(&self, slot: u32, credential: StoredCredential) -> Arc<dyn Renewer> {
        Arc::new(SlotRenewer {
            slot,
            upstream: Arc::clone(&self.upstream),
            store: self.store.clone(),
            entry: credential_entry(slot),
            max_active_tokens: self.config.server.max_active_tokens,
            request_timeout: Duration::from_secs(self.config.server.request_timeout),
            ledger: Arc::clone(&self.ledger),
            credential: Mutex::new(credential),
            unsaved: AtomicBool::new(false),
        })
    }
}

/// Retries loading a slot whose stored credential could not be read, with
/// backoff, until it loads, the entry is gone, or an enroll or unenroll
/// settled the slot meanwhile.
async fn retry_unreadable(agent: Weak<Agent>, slot: u32) {
    let Some(config) = agent.upgrade().map(|a| a.config.clone()) else {
        return;
    };
    let mut delays = backon_delays(&config);
    loop {
        let delay = delays.next().unwrap_or(Duration::from_secs(60));
        tokio::time::sleep(delay).await;
        let Some(agent) = agent.upgrade() else {
            return;
        };
        let slot_ref = agent.slot(slot);
        let _activating = slot_ref.activating.lock().await;
        let still = slot_ref
            .unreadable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some();
        if !still {
            return;
        }
        if slot_ref.engine.status().state != SlotState::Unenrolled {
            // Enrolled again meanwhile: the new credential is the slot's.
            clear_refusal(&slot_ref);
            return;
        }
        match agent.load_slot(slot).await {
            Ok(()) => {
                clear_refusal(&slot_ref);
                slot_ref.engine.set_unreadable(None);
                tracing::info!(slot, "the slot's stored credential could be loaded now");
                return;
            }
            Err(e) => agent.slot_unreadable(slot, &e),
        }
    }
}

/// Forgets a slot's refused redemption and unreadable credential: an enroll
/// or unenroll settles both.
fn clear_refusal(slot: &Slot) {
    *slot
        .refused
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    *slot
        .unreadable
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
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

/// The upstream client, once the paths the agent will write are known to
/// be valid too ([`Agent::preflight`]).
fn checked_upstream(config: &Config, latency: Arc<Histogram>) -> Result<Upstream> {
    let upstream = open_upstream(config, latency)?;
    config.state_dir()?;
    if config.store.kind == StoreKind::File {
        config.store_path()?;
    }
    Ok(upstream)
}

fn open_upstream(config: &Config, latency: Arc<Histogram>) -> Result<Upstream> {
    let s = &config.server;
    let http = Http::new(HttpSettings {
        connect_timeout: Duration::from_secs(s.connect_timeout),
        request_timeout: Duration::from_secs(s.request_timeout),
        proxy: s.proxy_setting(),
        ca_file: s.ca_file.clone(),
        latency,
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
