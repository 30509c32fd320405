//! Fault injection for the client-facing token routes: added latency, dropped
//! connections, a fixed status for the next N requests, a random failure rate.

use std::time::Duration;

use axum::http::StatusCode;
use rand::Rng as _;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::route::Route;

/// Longest latency a fault may add.
const MAX_LATENCY_MS: u64 = 600_000;

/// The active faults. Counts decrease as requests consume them.
#[derive(Debug)]
pub(crate) struct Faults {
    latency: Duration,
    failure_rate: f64,
    next_status: Option<(StatusCode, u32, Option<&'static str>)>,
    drop_connections: u32,
    routes: Vec<Route>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            failure_rate: 0.0,
            next_status: None,
            drop_connections: 0,
            routes: Route::DEFAULT_FAULT_ROUTES.to_vec(),
        }
    }
}

/// What to do to one request, decided when it arrives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FaultAction {
    /// Serve it normally (after the latency).
    Pass,
    /// Close the connection without a complete response.
    Drop,
    /// Answer this status (from `nextStatus`), with this OAuth error code
    /// when one was given.
    Status(StatusCode, Option<&'static str>),
    /// Answer 500 `server_error` (from `failureRate`).
    Fail,
}

/// Latency to add, then an action.
#[derive(Debug)]
pub(crate) struct FaultPlan {
    pub latency: Duration,
    pub action: FaultAction,
}

impl Faults {
    /// Decides the fate of one request on `route`, consuming counts. Order:
    /// latency always; then a pending drop, then a pending status, then the
    /// failure rate.
    pub(crate) fn plan(&mut self, route: Route) -> FaultPlan {
        if !self.routes.contains(&route) {
            return FaultPlan {
                latency: Duration::ZERO,
                action: FaultAction::Pass,
            };
        }
        let action = if self.drop_connections > 0 {
            self.drop_connections -= 1;
            FaultAction::Drop
        } else if let Some((status, left, error)) = self.next_status {
            self.next_status = (left > 1).then(|| (status, left - 1, error));
            FaultAction::Status(status, error)
        } else if self.failure_rate > 0.0 && rand::rng().random::<f64>() < self.failure_rate {
            FaultAction::Fail
        } else {
            FaultAction::Pass
        };
        FaultPlan {
            latency: self.latency,
            action,
        }
    }

    /// Replaces all faults with `spec` (validated first; nothing changes on error).
    pub(crate) fn replace(&mut self, spec: FaultSpec) -> Result<(), ApiError> {
        let latency_ms = spec.latency_ms.unwrap_or(0);
        if latency_ms > MAX_LATENCY_MS {
            return Err(ApiError::invalid_request(format!(
                "latencyMs must be at most {MAX_LATENCY_MS}"
            )));
        }
        let failure_rate = spec.failure_rate.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&failure_rate) {
            return Err(ApiError::invalid_request(
                "failureRate must be between 0 and 1",
            ));
        }
        let next_status = match spec.next_status {
            None => None,
            Some(NextStatus { count: 0, .. }) => None,
            Some(NextStatus {
                status,
                count,
                error,
            }) => {
                let error = match error {
                    None => None,
                    Some(code) => Some(
                        INJECTABLE_ERRORS
                            .iter()
                            .copied()
                            .find(|e| *e == code)
                            .ok_or_else(|| {
                                ApiError::invalid_request(format!(
                                    "nextStatus.error must be one of: {}",
                                    INJECTABLE_ERRORS.join(", ")
                                ))
                            })?,
                    ),
                };
                let status = StatusCode::from_u16(status)
                    .ok()
                    .filter(|s| s.is_client_error() || s.is_server_error())
                    .ok_or_else(|| {
                        ApiError::invalid_request("nextStatus.status must be between 400 and 599")
                    })?;
                Some((status, count, error))
            }
        };
        let routes = match spec.routes {
            None => Route::DEFAULT_FAULT_ROUTES.to_vec(),
            Some(names) => names
                .iter()
                .map(|name| {
                    Route::from_name(name)
                        .filter(|r| r.faultable())
                        .ok_or_else(|| {
                            ApiError::invalid_request(format!(
                                "route '{name}' cannot have faults; choose from: {}",
                                Route::faultable_names().join(", ")
                            ))
                        })
                })
                .collect::<Result<_, _>>()?,
        };
        *self = Self {
            latency: Duration::from_millis(latency_ms),
            failure_rate,
            next_status,
            drop_connections: spec.drop_connections.unwrap_or(0),
            routes,
        };
        Ok(())
    }

    /// The current faults, in the shape `PUT` accepts.
    pub(crate) fn view(&self) -> FaultSpec {
        FaultSpec {
            latency_ms: Some(u64::try_from(self.latency.as_millis()).unwrap_or(u64::MAX)),
            failure_rate: Some(self.failure_rate),
            next_status: self.next_status.map(|(status, count, error)| NextStatus {
                status: status.as_u16(),
                count,
                error: error.map(str::to_owned),
            }),
            drop_connections: Some(self.drop_connections),
            routes: Some(self.routes.iter().map(|r| r.name().to_owned()).collect()),
        }
    }
}

/// Body of `PUT /_emulator/faults` and of `GET`'s answer.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct FaultSpec {
    latency_ms: Option<u64>,
    failure_rate: Option<f64>,
    next_status: Option<NextStatus>,
    drop_connections: Option<u32>,
    routes: Option<Vec<String>>,
}

/// Answer `status` to the next `count` requests, with the OAuth `error`
/// code when given (e.g. `slow_down` for a device poll).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NextStatus {
    status: u16,
    count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The OAuth error codes `nextStatus.error` may inject.
const INJECTABLE_ERRORS: [&str; 12] = [
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "access_denied",
    "authorization_pending",
    "slow_down",
    "expired_token",
    "server_error",
    "temporarily_unavailable",
];

/// The JSON error for an injected status.
pub(crate) fn injected(status: StatusCode, error: Option<&'static str>) -> ApiError {
    let description = format!("injected fault: HTTP {status}");
    if let Some(code) = error {
        return ApiError::new(status, code, description).with_outcome("fault");
    }
    let error = match status.as_u16() {
        429 => ApiError::new(status, "rate_limited", description).with_retry_after(1),
        503 => ApiError::new(status, "temporarily_unavailable", description).with_retry_after(1),
        s if s >= 500 => ApiError::new(status, "server_error", description),
        _ => ApiError::new(status, "invalid_request", description),
    };
    error.with_outcome("fault")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> FaultSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn next_status_is_consumed_exactly() {
        let mut f = Faults::default();
        f.replace(spec(r#"{"nextStatus":{"status":503,"count":2}}"#))
            .unwrap();
        let actions: Vec<_> = (0..3).map(|_| f.plan(Route::OauthToken).action).collect();
        let unavailable = FaultAction::Status(StatusCode::SERVICE_UNAVAILABLE, None);
        assert_eq!(
            actions,
            [unavailable.clone(), unavailable, FaultAction::Pass]
        );
    }

    #[test]
    fn an_injected_status_can_carry_an_oauth_error() {
        let mut f = Faults::default();
        f.replace(spec(
            r#"{"nextStatus":{"status":400,"count":1,"error":"slow_down"}}"#,
        ))
        .unwrap();
        assert_eq!(
            f.plan(Route::OauthToken).action,
            FaultAction::Status(StatusCode::BAD_REQUEST, Some("slow_down"))
        );
        assert_eq!(
            injected(StatusCode::BAD_REQUEST, Some("slow_down")).code,
            "slow_down"
        );
    }

    #[test]
    fn faults_skip_routes_not_listed() {
        let mut f = Faults::default();
        f.replace(spec(r#"{"failureRate":1.0,"routes":["redeem"]}"#))
            .unwrap();
        assert_eq!(f.plan(Route::Redeem).action, FaultAction::Fail);
        assert_eq!(f.plan(Route::RealmToken).action, FaultAction::Pass);
        assert_eq!(
            f.plan(Route::RegistrationTokensAdmin).action,
            FaultAction::Pass
        );
    }

    #[test]
    fn invalid_specs_are_refused_and_change_nothing() {
        let mut f = Faults::default();
        assert!(f.replace(spec(r#"{"failureRate":1.5}"#)).is_err());
        assert!(
            f.replace(spec(r#"{"nextStatus":{"status":200,"count":1}}"#))
                .is_err()
        );
        assert!(
            f.replace(spec(
                r#"{"nextStatus":{"status":400,"count":1,"error":"made_up"}}"#
            ))
            .is_err()
        );
        assert!(
            f.replace(spec(r#"{"routes":["registration_tokens_admin"]}"#))
                .is_err()
        );
        assert!(serde_json::from_str::<FaultSpec>(r#"{"latency":5}"#).is_err());
        assert_eq!(f.plan(Route::Redeem).action, FaultAction::Pass);
    }
}
