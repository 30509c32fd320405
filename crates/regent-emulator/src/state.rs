//! Shared server state: one [`Store`] behind one mutex (never held across an
//! `.await`), plus separately locked counters, faults and rate-limit windows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use time::OffsetDateTime;

use crate::EmulatorConfig;
use crate::clock;
use crate::counters::Counters;
use crate::error::ApiError;
use crate::faults::Faults;
use crate::ratelimit::RateLimiter;
use crate::records::{AuthToken, OAuthClient, OAuthStore, RegistrationToken};
use crate::secret;

/// Lifetime of admin bearer tokens from the `password` grant: long enough that
/// a test or script never has to log in twice.
pub(crate) const ADMIN_TOKEN_LIFESPAN: Duration = Duration::from_secs(3600);

/// Sweep expired records after this many tokens have been minted.
const SWEEP_EVERY: u64 = 256;

/// Handle shared by every request.
pub(crate) type AppState = Arc<App>;

/// Everything a request handler can reach.
#[derive(Debug)]
pub(crate) struct App {
    /// `http://HOST:PORT`, no trailing slash; absolute URLs are built from it.
    pub base_url: String,
    /// The realm name (fixed for the life of the server).
    pub realm: String,
    /// The public OIDC client id (fixed for the life of the server).
    pub client_id: String,
    /// The polling interval device authorizations announce.
    pub device_interval: Duration,
    admin_key: String,
    store: Mutex<Store>,
    counters: Mutex<Counters>,
    faults: Mutex<Faults>,
    limiter: Mutex<RateLimiter>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock cannot leave these maps half-updated in a
    // way later requests could not cope with, so poisoning is ignored.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl App {
    pub(crate) fn new(base_url: String, config: &EmulatorConfig) -> Self {
        Self {
            base_url,
            realm: config.realm.clone(),
            client_id: config.client_id.clone(),
            device_interval: config.device_interval,
            admin_key: config.admin_key.clone(),
            store: Mutex::new(Store::new(config)),
            counters: Mutex::new(Counters::default()),
            faults: Mutex::new(Faults::default()),
            limiter: Mutex::new(RateLimiter::new(config.rate_limit)),
        }
    }

    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    pub(crate) fn counters(&self) -> MutexGuard<'_, Counters> {
        lock(&self.counters)
    }

    pub(crate) fn faults(&self) -> MutexGuard<'_, Faults> {
        lock(&self.faults)
    }

    pub(crate) fn limiter(&self) -> MutexGuard<'_, RateLimiter> {
        lock(&self.limiter)
    }

    /// Whether `presented` is the emulator admin key.
    pub(crate) fn is_admin_key(&self, presented: &str) -> bool {
        secret::ct_eq(presented, &self.admin_key)
    }
}

/// Realm settings that `/_emulator/realm` may change at run time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RealmSettings {
    pub access_lifespan: Duration,
    pub refresh_lifespan: Duration,
    pub rotate: bool,
}

/// Who a realm session or bearer token belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Subject {
    /// A device's auth token (by id).
    Device { auth_token_id: String },
    /// The configured admin user.
    Admin,
}

/// A realm (Keycloak-style) session. Its refresh token is
/// `"{session id}.{refresh_secret}"`: the id finds the session, and a secret
/// that is not the current one is a reused, already-rotated token.
#[derive(Debug)]
pub(crate) struct Session {
    pub subject: Subject,
    pub active: bool,
    pub refresh_secret: String,
    pub refresh_expires_at: OffsetDateTime,
}

/// A realm access token (device or admin).
#[derive(Debug)]
pub(crate) struct BearerToken {
    pub subject: Subject,
    pub expires_at: OffsetDateTime,
}

/// All mutable server data.
#[derive(Debug)]
pub(crate) struct Store {
    pub realm: RealmSettings,
    pub admin_username: String,
    pub admin_password: String,
    /// Registration tokens by id.
    pub registration_tokens: HashMap<String, RegistrationToken>,
    /// Registration token id by secret value.
    pub registration_ids_by_value: HashMap<String, String>,
    /// Auth tokens by id.
    pub auth_tokens: HashMap<String, AuthToken>,
    /// Auth token id by (registration token id, identifier), for replays.
    pub redemptions: HashMap<(String, String), String>,
    /// Realm sessions by session id.
    pub sessions: HashMap<String, Session>,
    /// Realm access tokens by value.
    pub bearer_tokens: HashMap<String, BearerToken>,
    /// Reltio-style clients, customers and tokens.
    pub oauth: OAuthStore,
    next_seq: u64,
    mints: u64,
}

impl Store {
    fn new(config: &EmulatorConfig) -> Self {
        let mut store = Self {
            realm: RealmSettings {
                access_lifespan: config.access_token_lifespan,
                refresh_lifespan: config.refresh_token_lifespan,
                rotate: config.rotate_refresh_tokens,
            },
            admin_username: config.admin_username.clone(),
            admin_password: config.admin_password.clone(),
            registration_tokens: HashMap::new(),
            registration_ids_by_value: HashMap::new(),
            auth_tokens: HashMap::new(),
            redemptions: HashMap::new(),
            sessions: HashMap::new(),
            bearer_tokens: HashMap::new(),
            oauth: OAuthStore::default(),
            next_seq: 0,
            mints: 0,
        };
        for client_id in &config.public_clients {
            store.oauth.clients.insert(
                client_id.clone(),
                OAuthClient {
                    client_id: client_id.clone(),
                    client_secret: None,
                    access_validity: config.access_token_lifespan,
                    refresh_validity: config.refresh_token_lifespan,
                    grant_types: vec![
                        "authorization_code".to_owned(),
                        "refresh_token".to_owned(),
                        crate::records::DEVICE_CODE_GRANT.to_owned(),
                    ],
                    scope: Vec::new(),
                    rotate_refresh_tokens: config.rotate_refresh_tokens,
                    redirect_uris: Vec::new(),
                    extra: serde_json::Map::new(),
                },
            );
        }
        for spec in &config.users {
            if let Ok(user) = spec.clone().into_user() {
                store.oauth.users.insert(user.username.clone(), user);
            }
        }
        store
    }

    /// A creation sequence number, for stable listing order.
    pub(crate) fn next_seq(&mut self) -> u64 {
        self.next_seq = self.next_seq.wrapping_add(1);
        self.next_seq
    }

    /// Counts a minted token and, every [`SWEEP_EVERY`] mints, drops expired
    /// records so a long benchmark run keeps a bounded footprint.
    pub(crate) fn note_mint(&mut self, now: OffsetDateTime) {
        self.mints = self.mints.wrapping_add(1);
        if self.mints.is_multiple_of(SWEEP_EVERY) {
            self.sweep(now);
        }
    }

    fn sweep(&mut self, now: OffsetDateTime) {
        self.bearer_tokens.retain(|_, t| t.expires_at > now);
        self.sessions.retain(|_, s| s.refresh_expires_at > now);
        self.oauth.sweep(now);
    }

    /// Mints a realm access token for `subject`.
    pub(crate) fn mint_bearer(
        &mut self,
        subject: Subject,
        lifespan: Duration,
        now: OffsetDateTime,
    ) -> String {
        self.note_mint(now);
        let value = secret::token();
        let expires_at = clock::after(now, lifespan);
        self.bearer_tokens.insert(
            value.clone(),
            BearerToken {
                subject,
                expires_at,
            },
        );
        value
    }

    /// Opens a realm session and returns `(session id, refresh token)`.
    pub(crate) fn open_session(
        &mut self,
        subject: Subject,
        now: OffsetDateTime,
    ) -> (String, String) {
        let id = secret::session_id();
        let refresh_secret = secret::token();
        let refresh_token = format!("{id}.{refresh_secret}");
        let session = Session {
            subject,
            active: true,
            refresh_secret,
            refresh_expires_at: clock::after(now, self.realm.refresh_lifespan),
        };
        self.sessions.insert(id.clone(), session);
        (id, refresh_token)
    }

    /// The realm access token `value` if it is unexpired and its auth token
    /// (for a device) still exists.
    pub(crate) fn active_bearer(&self, value: &str, now: OffsetDateTime) -> Option<&BearerToken> {
        let token = self.bearer_tokens.get(value)?;
        let alive = token.expires_at > now
            && match &token.subject {
                Subject::Device { auth_token_id } => self.auth_tokens.contains_key(auth_token_id),
                Subject::Admin => true,
            };
        alive.then_some(token)
    }

    /// Accepts an active admin bearer token; 401 `invalid_token` for anything
    /// unknown or expired, 403 `insufficient_scope` for a device token.
    pub(crate) fn check_admin(&self, value: &str, now: OffsetDateTime) -> Result<(), ApiError> {
        match self.active_bearer(value, now).map(|t| &t.subject) {
            Some(Subject::Admin) => Ok(()),
            Some(Subject::Device { .. }) => Err(ApiError::insufficient_scope(
                "this is a device access token; admin routes need an admin token from the \
                 password grant",
            )),
            None => Err(ApiError::invalid_token(
                "the bearer token is not active (unknown, expired or revoked); log in again \
                 with grant_type=password",
            )),
        }
    }
}
