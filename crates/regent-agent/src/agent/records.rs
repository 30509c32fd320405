//! What `state.json` holds (the device id, each slot's identifier and
//! pending-redemption marker) and the secret-store entry names.

use super::*;

/// Non-secret state, persisted atomically in `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PersistentState {
    pub(super) version: u32,
    /// Random, generated once per state directory.
    pub(super) device_id: String,
    pub(super) slots: BTreeMap<u32, SlotRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct SlotRecord {
    /// Stable identifier sent with redemptions: a retry replays it.
    pub(super) identifier: String,
    /// Set before a redemption is sent; cleared once its outcome is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) pending_since: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) enrolled_at: Option<u64>,
    /// Who signed in, when the slot holds a user's sign-in (`regent login`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) user: Option<regent_proto::status::SignedInUser>,
    /// The scope granted at sign-in or enrollment, when the server said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) scope: Option<String>,
}

pub(super) fn now_secs() -> u64 {
    to_ms(SystemTime::now()) / 1000
}

pub(super) fn credential_entry(slot: u32) -> String {
    format!("slot-{slot}.credential")
}

pub(super) fn registration_entry(slot: u32) -> String {
    format!("slot-{slot}.registration")
}

pub(super) fn random_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
