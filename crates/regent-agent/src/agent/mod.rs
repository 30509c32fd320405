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

mod client_secret;
mod enroll;
mod factories;
mod leases;
mod login;
mod records;
mod redemption;
mod status;

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
use crate::upstream::{DeviceIdentity, EnrollKind, Upstream};

use self::factories::{backon_delays, checked_upstream, open_store};
pub(crate) use self::records::PersistentState;
use self::records::{SlotRecord, credential_entry, now_secs, random_id, registration_entry};
use self::redemption::INLINE_CALL_LIMIT;

/// The slot `shared` mode uses, and the first slot in `per-instance` mode.
const FIRST_SLOT: u32 = 0;
const STATE_VERSION: u32 = 1;
/// After a slot's redemption is refused, ask again no sooner than this.
const REFUSAL_HOLD: Duration = Duration::from_secs(30);
/// The enrollment secret kept for lazy per-instance slots.
const DEVICE_SECRET: &str = "device.secret";

/// Why a redemption begun before `unenroll` stored nothing.
fn unenrolled_meanwhile() -> Error {
    Error::new(
        ErrorCode::NotEnrolled,
        "this device is not enrolled: it was unenrolled while a redemption was under way, and that redemption's outcome was dropped; run `regent enroll` with a registration token",
    )
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

pub use self::login::{LoggedIn, LoginOutcome};
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

/// A configuration [`Agent::preflight`] has checked, with the upstream
/// client it built: what [`Agent::open_checked`] opens, so the daemon checks
/// before it binds its socket and builds nothing twice.
#[derive(Debug)]
pub struct Preflight {
    config: Config,
    upstream: Arc<Upstream>,
    upstream_latency: Arc<Histogram>,
}

impl Agent {
    /// Checks what [`Agent::open`] would refuse in `config` — the crash-point
    /// variable, the server settings (URL, profile keys, proxy, CA file), the
    /// state directory and the file store's path — without touching the
    /// filesystem, so that the daemon refuses a bad configuration before it
    /// binds its socket.
    ///
    /// # Errors
    /// `CONFIG` naming the key.
    pub fn preflight(config: Config) -> Result<Preflight> {
        crate::crash::check_env()?;
        let upstream_latency = Arc::new(Histogram::new());
        let upstream = checked_upstream(&config, Arc::clone(&upstream_latency))?;
        Ok(Preflight {
            config,
            upstream,
            upstream_latency,
        })
    }

    /// Opens the agent: loads state, every slot's stored credential and cached
    /// token, and resumes interrupted redemptions in the background. A slot
    /// whose credential cannot be read reports `STORE_UNAVAILABLE` (naming the
    /// slot, the entry and the fix) and is retried in the background; the
    /// other slots serve meanwhile.
    ///
    /// # Errors
    /// `CONFIG` for a bad server URL or state directory; `STORE_UNAVAILABLE`
    /// when `state.json` cannot be read or written.
    pub async fn open(config: Config) -> Result<Arc<Agent>> {
        Agent::open_checked(Agent::preflight(config)?).await
    }

    /// [`Agent::open`] for a configuration already checked: everything the
    /// configuration can get wrong was refused before a directory is made or
    /// a file written.
    ///
    /// # Errors
    /// As [`Agent::open`].
    pub async fn open_checked(checked: Preflight) -> Result<Arc<Agent>> {
        let Preflight {
            config,
            upstream,
            upstream_latency,
        } = checked;
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
        let result = match self.upstream.enroll_kind() {
            EnrollKind::Redemption => {
                self.begin_redemption(number, &secret, epoch).await?;
                // The instance is waiting on its call: a silent server is given
                // up on in time; the marker stays and its next request replays.
                let deadline = Instant::now() + INLINE_CALL_LIMIT;
                self.redeem(number, &secret, Some(deadline), epoch)
                    .await
                    .map(|_| ())
            }
            EnrollKind::ClientSecret => {
                let mut credential = StoredCredential::default();
                credential.client_secret = Some(secret.expose_secret().to_owned());
                // Nothing is stored once the device was unenrolled meanwhile.
                let current = self.epoch.lock().await;
                if *current != epoch {
                    return Err(unenrolled_meanwhile());
                }
                // Slot first, credential second: see `enroll_with_client_secret`.
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
        self.unenroll_locked().await
    }

    /// [`Agent::unenroll`], for a caller that holds `enroll_lock`.
    async fn unenroll_locked(&self) -> Result<()> {
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
                record.user = None;
                record.scope = None;
            }
            let snapshot = state.clone();
            self.state_file.save_async(&snapshot).await?;
        }
        self.leases.clear_reservations();
        drop(epoch);
        tracing::info!("unenrolled: stored secrets deleted");
        Ok(())
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
