//! The [`Ledger`]: the live tokens every slot of this agent may hold, so an
//! OAuth2 multi-token server's cap (`max_active_tokens`) is never exceeded.

use super::*;

/// The live tokens every slot may hold, for `max_active_tokens`.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    per_slot: Mutex<BTreeMap<u32, Vec<IssuedToken>>>,
}

/// Fingerprint of a placeholder that reserves a place for a request in flight.
pub(super) const IN_FLIGHT: u64 = 0;

impl Ledger {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Vec<IssuedToken>>> {
        self.per_slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records what a slot's stored credential says it holds (at start).
    pub fn load(&self, slot: u32, issued: &[IssuedToken]) {
        self.lock().insert(slot, issued.to_vec());
    }

    /// Reserves a place for one more token, or says when one frees up.
    pub(super) fn reserve(&self, slot: u32, max: u32, request_timeout: Duration) -> Result<()> {
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
    pub(super) fn settle(&self, slot: u32, received: Option<&Grant>) -> Vec<IssuedToken> {
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
