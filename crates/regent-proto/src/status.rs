//! The agent's status document: what `regent status --json` prints, what the
//! `status` request answers, and what [`AgentStatus::health`] judges. One
//! typed shape for the agent (which fills it), the clients (which decode it)
//! and the CLI (which summarises it and exits with its health), so a renamed
//! field is a compile error rather than a health check that silently passes.
//!
//! Times are unix milliseconds in fields named `…_at_ms` (the convention on
//! every surface: docs/ARCHITECTURE.md). Until version 0.3 the document also
//! carries the older unix-seconds fields (`expires_at`, `next_renewal`,
//! `last_renewal`), deprecated, for scripts written against 0.1.
//!
//! Unknown fields are ignored and an unknown state or reason decodes as
//! `Unknown`, so an older client reads a newer agent's document.

use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::code::ErrorCode;
use crate::time;

/// A slot's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotState {
    /// No auth token.
    Unenrolled,
    /// A redemption is under way.
    Enrolling,
    /// Renewals succeed.
    Active,
    /// The last renewal failed transiently; cached tokens are served while valid.
    Degraded,
    /// The credential stopped working for good (revoked, session dead, secret wrong).
    Revoked,
    /// A state this version does not know (a newer agent).
    #[serde(other)]
    Unknown,
}

impl SlotState {
    /// Lowercase name, as in status output and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotState::Unenrolled => "unenrolled",
            SlotState::Enrolling => "enrolling",
            SlotState::Active => "active",
            SlotState::Degraded => "degraded",
            SlotState::Revoked => "revoked",
            SlotState::Unknown => "unknown",
        }
    }
}

/// Why the agent plans its next upstream call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RenewalReason {
    /// No token yet: the first one is due now.
    FirstToken,
    /// Clients asked for tokens recently (or hold subscriptions): renew so
    /// that what they ask for stays on hand.
    Demand,
    /// Nobody asked: a keep-alive renewal (`[refresh] keepalive`) so the
    /// credential does not lapse; tokens are renewed on demand.
    KeepAlive,
    /// Nobody asked, but the refresh token expires before the keep-alive.
    RefreshTokenExpiry,
    /// The last attempt failed: the retry after backoff or `Retry-After`.
    Retry,
    /// A reason this version does not know (a newer agent).
    #[serde(other)]
    Unknown,
}

/// Who leases a slot (per-instance mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The app name from `hello`.
    pub app: String,
    /// The instance id from `hello`, if any.
    #[serde(default)]
    pub instance: Option<String>,
    /// The peer's process id, when known.
    #[serde(default)]
    pub pid: Option<u32>,
}

/// `app/instance (pid N)`, as status lines and the all-slots-in-use message
/// name a lease holder (`?` for an unknown pid).
impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.app)?;
        if let Some(instance) = &self.instance {
            write!(f, "/{instance}")?;
        }
        match self.pid {
            Some(pid) => write!(f, " (pid {pid})"),
            None => f.write_str(" (pid ?)"),
        }
    }
}

/// The agent's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// `"sentinel"` or `"oauth2"`.
    pub profile: String,
    /// `"shared"` or `"per-instance"`.
    pub instance_mode: String,
    /// Most slots (`instances.max`).
    pub instances_max: u32,
    /// This state directory's device id (shown to the agent's account and
    /// root only: with the registration token it would let a user replay
    /// this device's redemption).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Where secrets are kept.
    pub store: String,
    /// One entry per slot that exists; slot 0 first.
    pub slots: Vec<SlotStatus>,
}

/// One slot's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotStatus {
    /// Slot number.
    pub slot: u32,
    /// Identifier sent to the server (shown to the agent's account and root only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identifier: Option<String>,
    /// Lifecycle state.
    pub state: SlotState,
    /// Who leases the slot (per-instance mode; shown to the agent's account and root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leased_by: Option<Holder>,
    /// A redemption was sent but its outcome is not stored yet.
    #[serde(default)]
    pub pending_redemption: bool,
    /// Access-token expiry, unix milliseconds.
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
    /// Next planned upstream call, unix milliseconds.
    #[serde(default)]
    pub next_renewal_at_ms: Option<u64>,
    /// Why it is planned.
    #[serde(default)]
    pub next_renewal_reason: Option<RenewalReason>,
    /// Last successful renewal, unix milliseconds.
    #[serde(default)]
    pub last_renewal_at_ms: Option<u64>,
    /// Deprecated (removed in 0.3): `expires_at_ms` in unix seconds.
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// Deprecated (removed in 0.3): `next_renewal_at_ms` in unix seconds.
    #[serde(default)]
    pub next_renewal: Option<u64>,
    /// Deprecated (removed in 0.3): `last_renewal_at_ms` in unix seconds.
    #[serde(default)]
    pub last_renewal: Option<u64>,
    /// Last failure: its code.
    #[serde(default)]
    pub last_error_code: Option<ErrorCode>,
    /// Last failure: its message.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Consecutive transient failures.
    #[serde(default)]
    pub failures: u32,
    /// Successful renewals since start.
    #[serde(default)]
    pub renewals_ok: u64,
    /// Failed renewals since start.
    #[serde(default)]
    pub renewals_failed: u64,
    /// Tokens handed out since start.
    #[serde(default)]
    pub handouts: u64,
    /// Who is signed in, when the slot holds a user's sign-in (`regent
    /// login`) rather than a device enrollment (shown to the agent's account
    /// and root only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<SignedInUser>,
    /// The scope the server granted, when it said (space-separated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// A signed-in user as the identity provider names them: the ID token's or
/// userinfo's `sub`, `preferred_username` and `email`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedInUser {
    /// The provider's stable subject id.
    pub sub: String,
    /// The user's login name, when the provider said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
    /// The user's e-mail address, when the provider said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// `alice <alice@example.com>`, `alice`, or the subject id: how status lines
/// name a user.
impl fmt::Display for SignedInUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.preferred_username, &self.email) {
            (Some(name), Some(email)) => write!(f, "{name} <{email}>"),
            (Some(name), None) => f.write_str(name),
            (None, Some(email)) => f.write_str(email),
            (None, None) => f.write_str(&self.sub),
        }
    }
}

impl SlotStatus {
    /// A slot in `state` with nothing else known yet; the agent fills the rest.
    pub fn new(slot: u32, state: SlotState) -> SlotStatus {
        SlotStatus {
            slot,
            identifier: None,
            state,
            leased_by: None,
            pending_redemption: false,
            expires_at_ms: None,
            next_renewal_at_ms: None,
            next_renewal_reason: None,
            last_renewal_at_ms: None,
            expires_at: None,
            next_renewal: None,
            last_renewal: None,
            last_error_code: None,
            last_error: None,
            failures: 0,
            renewals_ok: 0,
            renewals_failed: 0,
            handouts: 0,
            user: None,
            scope: None,
        }
    }

    /// Sets the three times, in both the `…_at_ms` fields and the deprecated
    /// seconds fields.
    pub fn with_times(
        mut self,
        expires_at: Option<SystemTime>,
        next_renewal: Option<SystemTime>,
        last_renewal: Option<SystemTime>,
    ) -> SlotStatus {
        let ms = |t: Option<SystemTime>| t.map(time::to_unix_ms);
        let secs = |t: Option<SystemTime>| t.map(|t| time::to_unix_ms(t) / 1000);
        self.expires_at_ms = ms(expires_at);
        self.next_renewal_at_ms = ms(next_renewal);
        self.last_renewal_at_ms = ms(last_renewal);
        self.expires_at = secs(expires_at);
        self.next_renewal = secs(next_renewal);
        self.last_renewal = secs(last_renewal);
        self
    }

    /// When the cached access token expires, from `expires_at_ms` (or the
    /// deprecated seconds field of an older agent); `None` when there is no
    /// token or the number is past any real date.
    pub fn expires(&self) -> Option<SystemTime> {
        match self.expires_at_ms {
            Some(ms) => time::from_unix_ms(ms),
            None => self.expires_at.and_then(time::from_unix_secs),
        }
    }
}

impl AgentStatus {
    /// Whether the agent's credential works, judged on slot 0: `Ok` when it
    /// is active, or degraded while its cached token is still valid at `now`;
    /// otherwise the code a health check exits with — `UNAVAILABLE` (degraded
    /// with no valid token), `NOT_ENROLLED` (unenrolled, enrolling, or no
    /// slot), or the code that revoked it (`REVOKED` when none is known).
    /// A state this version does not know is `UNSUPPORTED_VERSION`: never a
    /// pass that a renamed or new state would make silent.
    ///
    /// # Errors
    /// The code, as above.
    pub fn health(&self, now: SystemTime) -> Result<(), ErrorCode> {
        let Some(slot) = self.slots.first() else {
            return Err(ErrorCode::NotEnrolled);
        };
        match slot.state {
            SlotState::Active => Ok(()),
            SlotState::Unknown => Err(ErrorCode::UnsupportedVersion),
            SlotState::Degraded if slot.expires().is_some_and(|at| at > now) => Ok(()),
            SlotState::Degraded => Err(ErrorCode::Unavailable),
            SlotState::Unenrolled | SlotState::Enrolling => Err(ErrorCode::NotEnrolled),
            SlotState::Revoked => Err(slot.last_error_code.unwrap_or(ErrorCode::Revoked)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn status(slot: SlotStatus) -> AgentStatus {
        AgentStatus {
            profile: "sentinel".into(),
            instance_mode: "shared".into(),
            instances_max: 1,
            device_id: None,
            store: "file".into(),
            slots: vec![slot],
        }
    }

    #[test]
    fn health_follows_slot_zero() {
        let now = SystemTime::now();
        let later = now + Duration::from_secs(60);
        let earlier = now - Duration::from_secs(60);
        let slot = |state| SlotStatus::new(0, state);
        assert_eq!(status(slot(SlotState::Active)).health(now), Ok(()));
        let degraded = |expires| status(slot(SlotState::Degraded).with_times(expires, None, None));
        assert_eq!(degraded(Some(later)).health(now), Ok(()));
        assert_eq!(
            degraded(Some(earlier)).health(now),
            Err(ErrorCode::Unavailable)
        );
        assert_eq!(degraded(None).health(now), Err(ErrorCode::Unavailable));
        assert_eq!(
            status(slot(SlotState::Enrolling)).health(now),
            Err(ErrorCode::NotEnrolled)
        );
        let mut revoked = slot(SlotState::Revoked);
        assert_eq!(status(revoked.clone()).health(now), Err(ErrorCode::Revoked));
        revoked.last_error_code = Some(ErrorCode::ClientCredentialsInvalid);
        assert_eq!(
            status(revoked).health(now),
            Err(ErrorCode::ClientCredentialsInvalid)
        );
        let mut none = status(slot(SlotState::Active));
        none.slots.clear();
        assert_eq!(none.health(now), Err(ErrorCode::NotEnrolled));
    }

    #[test]
    fn a_holder_reads_app_instance_and_pid() {
        let mut h = Holder {
            app: "editor".into(),
            instance: Some("w1".into()),
            pid: Some(42),
        };
        assert_eq!(h.to_string(), "editor/w1 (pid 42)");
        (h.instance, h.pid) = (None, None);
        assert_eq!(h.to_string(), "editor (pid ?)");
    }

    #[test]
    fn times_carry_their_unit_and_the_deprecated_seconds_agree() {
        let t = time::from_unix_ms(1_700_000_000_123).unwrap();
        let slot = SlotStatus::new(0, SlotState::Active).with_times(Some(t), Some(t), None);
        let json = serde_json::to_value(&slot).unwrap();
        assert_eq!(json["expires_at_ms"], 1_700_000_000_123u64);
        assert_eq!(json["expires_at"], 1_700_000_000u64);
        assert_eq!(json["next_renewal_at_ms"], 1_700_000_000_123u64);
        assert!(json["last_renewal_at_ms"].is_null());
        assert_eq!(slot.expires(), Some(t));
    }

    #[test]
    fn a_newer_agents_document_still_decodes() {
        let json = r#"{"profile":"sentinel","instance_mode":"shared","instances_max":1,
            "store":"file","something_new":[1,2],
            "slots":[{"slot":0,"state":"hibernating","next_renewal_reason":"moon-phase",
                      "last_error_code":"SOMETHING_NEW","expires_at":1700000000}]}"#;
        let status: AgentStatus = serde_json::from_str(json).unwrap();
        let slot = &status.slots[0];
        assert_eq!(slot.state, SlotState::Unknown);
        assert_eq!(slot.next_renewal_reason, Some(RenewalReason::Unknown));
        assert_eq!(slot.last_error_code, Some(ErrorCode::Internal));
        // An older agent's seconds still give the expiry.
        assert_eq!(slot.expires(), time::from_unix_secs(1_700_000_000));
        assert_eq!(
            status.health(SystemTime::now()),
            Err(ErrorCode::UnsupportedVersion)
        );
    }
}
