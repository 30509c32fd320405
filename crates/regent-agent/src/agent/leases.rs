//! Per-instance slot leases as the agent hands them out.

use super::*;

impl Agent {
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
                        .map(|(slot, h)| format!("slot {slot}: {h}"))
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
}
