//! Request counters by route and outcome, plus redemption and refresh totals.

use std::collections::BTreeMap;

use crate::route::Route;

/// What `/_emulator/counters` reports, apart from the live token figures.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    requests: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    /// New redemptions (each consumed a count); replays are not included.
    redemptions: u64,
    /// Successful refreshes (realm `refresh_token` grant and OAuth2 refresh).
    refreshes: u64,
}

impl Counters {
    pub(crate) fn record(&mut self, route: Route, outcome: &'static str) {
        let count = self
            .requests
            .entry(route.name())
            .or_default()
            .entry(outcome)
            .or_default();
        *count = count.saturating_add(1);
    }

    pub(crate) fn note_redemption(&mut self) {
        self.redemptions = self.redemptions.saturating_add(1);
    }

    pub(crate) fn note_refresh(&mut self) {
        self.refreshes = self.refreshes.saturating_add(1);
    }

    pub(crate) fn requests(&self) -> &BTreeMap<&'static str, BTreeMap<&'static str, u64>> {
        &self.requests
    }

    pub(crate) fn redemptions(&self) -> u64 {
        self.redemptions
    }

    pub(crate) fn refreshes(&self) -> u64 {
        self.refreshes
    }

    pub(crate) fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_by_route_and_outcome_and_resets() {
        let mut c = Counters::default();
        c.record(Route::Redeem, "ok");
        c.record(Route::Redeem, "ok");
        c.record(Route::Redeem, "replay");
        c.note_redemption();
        assert_eq!(c.requests()["redeem"]["ok"], 2);
        assert_eq!(c.requests()["redeem"]["replay"], 1);
        assert_eq!(c.redemptions(), 1);
        c.reset();
        assert!(c.requests().is_empty());
        assert_eq!(c.redemptions(), 0);
    }
}
