//! Prometheus text exposition of the agent's counters (the `metrics` op).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

use crate::agent::Agent;
use crate::engine::SlotState;
use crate::ipc::ServerStats;

const STATES: [SlotState; 5] = [
    SlotState::Unenrolled,
    SlotState::Enrolling,
    SlotState::Active,
    SlotState::Degraded,
    SlotState::Revoked,
];

/// Renders every metric as Prometheus text format 0.0.4.
pub fn render(agent: &Agent, stats: &ServerStats) -> String {
    let s = agent.engine_status();
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
                u64::from(*st == s.state),
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
        "1 for the slot's current state.",
        &state_refs,
    );
    metric(
        "regent_tokens_served_total",
        "counter",
        "Tokens handed out.",
        &[("", s.handouts)],
    );
    metric(
        "regent_renewals_total",
        "counter",
        "Upstream renewals by outcome.",
        &[
            ("{outcome=\"ok\"}", s.renewals_ok),
            ("{outcome=\"failed\"}", s.renewals_failed),
        ],
    );
    let expiry = s
        .expires_at
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    metric(
        "regent_token_expiry_timestamp_seconds",
        "gauge",
        "Unix time at which the cached access token expires (0: none).",
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
    out
}
