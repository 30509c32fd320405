//! The agent-wide counters ([`Counters`]: connections, requests, reloads,
//! provisioning), the upstream latency [`Histogram`], and their Prometheus
//! text exposition (the `metrics` op). A leaf: [`render`] takes plain data,
//! so nothing here depends on the agent, its engines or the IPC server, and
//! every agent (hundreds in one test process) has its own histogram.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use regent_proto::status::SlotState;

/// Agent-wide counters, for metrics and tests: the IPC server, the
/// configuration reload and the provisioning drop-in count into them.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Connections refused (permission or limit).
    pub refused: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
    /// Requests answered.
    pub requests: AtomicU64,
    /// Malformed requests.
    pub bad_requests: AtomicU64,
    /// Configuration changes applied without a restart.
    pub config_reloads: AtomicU64,
    /// Configuration changes rejected (the previous settings stayed).
    pub config_rejected: AtomicU64,
    /// Provisioning drop-in files redeemed.
    pub provisioned: AtomicU64,
    /// Provisioning drop-in files whose redemption failed.
    pub provisioning_failed: AtomicU64,
    /// Provisioning drop-in files refused unread (permissions, type, size).
    pub provisioning_refused: AtomicU64,
}

/// One slot's figures, as the metrics need them.
#[derive(Debug, Clone, Copy)]
pub struct SlotSample {
    /// Its state.
    pub state: SlotState,
    /// Tokens handed out since start.
    pub handouts: u64,
    /// Successful upstream renewals since start.
    pub renewals_ok: u64,
    /// Failed upstream renewals since start.
    pub renewals_failed: u64,
    /// When its cached access token expires.
    pub expires_at: Option<SystemTime>,
}

const STATES: [SlotState; 5] = [
    SlotState::Unenrolled,
    SlotState::Enrolling,
    SlotState::Active,
    SlotState::Degraded,
    SlotState::Revoked,
];

/// Renders every metric as Prometheus text format 0.0.4.
pub fn render(slots: &[SlotSample], stats: &Counters, upstream_latency: &Histogram) -> String {
    // Per-instance agents have several slots: states are counted, counters
    // summed, and the expiry is the earliest among slots holding a token.
    let handouts: u64 = slots.iter().map(|s| s.handouts).sum();
    let renewals_ok: u64 = slots.iter().map(|s| s.renewals_ok).sum();
    let renewals_failed: u64 = slots.iter().map(|s| s.renewals_failed).sum();
    let mut out = String::with_capacity(1024);
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let state_samples: Vec<(String, u64)> = STATES
        .iter()
        .map(|st| {
            (
                format!("{{state=\"{}\"}}", st.as_str()),
                slots.iter().filter(|s| s.state == *st).count() as u64,
            )
        })
        .collect();
    let state_refs: Vec<(&str, u64)> = state_samples
        .iter()
        .map(|(l, v)| (l.as_str(), *v))
        .collect();
    metric(
        "regent_slot_state",
        "gauge",
        "Number of slots in each state (shared mode: 1 for the current state).",
        &state_refs,
    );
    metric(
        "regent_tokens_served_total",
        "counter",
        "Tokens handed out.",
        &[("", handouts)],
    );
    metric(
        "regent_renewals_total",
        "counter",
        "Upstream renewals by outcome.",
        &[
            ("{outcome=\"ok\"}", renewals_ok),
            ("{outcome=\"failed\"}", renewals_failed),
        ],
    );
    let expiry = slots
        .iter()
        .filter_map(|s| s.expires_at)
        .min()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    metric(
        "regent_token_expiry_timestamp_seconds",
        "gauge",
        "Unix time at which the earliest cached access token expires (0: none).",
        &[("", expiry)],
    );
    metric(
        "regent_connections_open",
        "gauge",
        "Connected clients.",
        &[("", stats.open.load(Ordering::Relaxed))],
    );
    metric(
        "regent_connections_total",
        "counter",
        "Connections by outcome.",
        &[
            (
                "{outcome=\"accepted\"}",
                stats.accepted.load(Ordering::Relaxed),
            ),
            (
                "{outcome=\"refused\"}",
                stats.refused.load(Ordering::Relaxed),
            ),
        ],
    );
    metric(
        "regent_requests_total",
        "counter",
        "Requests answered.",
        &[("", stats.requests.load(Ordering::Relaxed))],
    );
    metric(
        "regent_bad_requests_total",
        "counter",
        "Malformed or stalled requests.",
        &[("", stats.bad_requests.load(Ordering::Relaxed))],
    );
    metric(
        "regent_config_reloads_total",
        "counter",
        "Configuration file changes by outcome (rejected: the previous settings stayed).",
        &[
            (
                "{outcome=\"applied\"}",
                stats.config_reloads.load(Ordering::Relaxed),
            ),
            (
                "{outcome=\"rejected\"}",
                stats.config_rejected.load(Ordering::Relaxed),
            ),
        ],
    );
    metric(
        "regent_provisioning_files_total",
        "counter",
        "Registration-token files found in the provisioning directory, by outcome.",
        &[
            (
                "{outcome=\"redeemed\"}",
                stats.provisioned.load(Ordering::Relaxed),
            ),
            (
                "{outcome=\"failed\"}",
                stats.provisioning_failed.load(Ordering::Relaxed),
            ),
            (
                "{outcome=\"refused\"}",
                stats.provisioning_refused.load(Ordering::Relaxed),
            ),
        ],
    );
    upstream_latency.render(
        &mut out,
        "regent_upstream_request_duration_seconds",
        "Time from sending a request to the license server to reading its whole answer.",
    );
    out
}

/// Upper bounds of the latency buckets, in microseconds.
const BUCKETS_US: [u64; 12] = [
    5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000, 30_000_000,
];

/// A lock-free Prometheus histogram with fixed latency buckets.
#[derive(Debug)]
pub struct Histogram {
    /// Non-cumulative counts per bucket; the last slot is `+Inf`.
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// An empty histogram.
    pub const fn new() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BUCKETS_US.len() + 1],
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let slot = BUCKETS_US
            .iter()
            .position(|bound| us <= *bound)
            .unwrap_or(BUCKETS_US.len());
        if let Some(bucket) = self.buckets.get(slot) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0u64;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = BUCKETS_US
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |us| seconds(*us));
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_us.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_sum {}", seconds(sum));
        // The count is the +Inf bucket, read once, so the two always agree.
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

/// Microseconds as a decimal number of seconds, e.g. `0.025`.
fn seconds(us: u64) -> String {
    let text = format!("{}.{:06}", us / 1_000_000, us % 1_000_000);
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        let h = Histogram::new();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "help");
        assert!(out.contains("x_seconds_bucket{le=\"0.005\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"0.05\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"30\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_count 3\n"), "{out}");
        assert!(out.contains("x_seconds_sum 60.033\n"), "{out}");
        assert_eq!(seconds(0), "0");
        assert_eq!(seconds(2_500_000), "2.5");
    }
}
