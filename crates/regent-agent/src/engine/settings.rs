//! The engine's tunables, from `[refresh]`.

use super::*;

/// The engine's timing settings (from `[refresh]`).
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSettings {
    /// Fraction of the lifetime at which to renew.
    pub ahead: f64,
    /// ± fraction of jitter around that point.
    pub jitter: f64,
    /// Safety added to the largest recent `min_valid`.
    pub margin: Duration,
    /// How long a request keeps the engine renewing ahead.
    pub demand_window: Duration,
    /// First backoff delay.
    pub backoff_min: Duration,
    /// Longest backoff delay.
    pub backoff_max: Duration,
    /// Idle keep-alive interval.
    pub keepalive: Duration,
    /// Fraction of a token's lifetime that must pass after a renewal before
    /// demand (a request or a subscription) may cause the next one.
    pub min_spacing: f64,
}

impl From<&RefreshConfig> for EngineSettings {
    fn from(c: &RefreshConfig) -> Self {
        EngineSettings {
            ahead: c.ahead,
            jitter: c.jitter,
            margin: Duration::from_secs(c.margin),
            demand_window: Duration::from_secs(c.demand_window),
            backoff_min: Duration::from_secs(c.backoff_min),
            backoff_max: Duration::from_secs(c.backoff_max),
            keepalive: Duration::from_secs(c.keepalive),
            min_spacing: c.min_spacing,
        }
    }
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings::from(&RefreshConfig::default())
    }
}
