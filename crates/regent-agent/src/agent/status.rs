//! What the agent reports: engine states, the status document, metrics.

use super::*;

impl Agent {
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
                    user: record.filter(|_| admin).and_then(|r| r.user.clone()),
                    scope: record.and_then(|r| r.scope.clone()),
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
            profile: self.upstream.profile().to_owned(),
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
}
