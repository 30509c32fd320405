//! The regent agent as a library.
//!
//! Map of the modules:
//! - [`config`]: the TOML configuration file, validated with errors that name the key.
//! - [`error`]: the agent's error type, carrying a code from the one table (`regent-proto`).
//! - [`grant`]: what a successful token call returns, with wall-clock expiries.
//! - [`secret`]: redacted secret strings (never in `Debug`, zeroized on drop).
//! - [`store`]: the secret store (OS keychain or an explicit `0600` file) and `state.json`.
//! - [`upstream`]: the only code that speaks HTTP: the `sentinel` and `oauth2` profiles.
//! - [`crash`]: named crash points that tests use to kill the agent at an exact step.
//! - `credential`: a slot's stored secrets, its renewer, the multi-token ledger.
//! - [`lease`]: per-instance slot leases with a grace period.
//! - [`engine`]: one token engine per slot: refresh ahead, single-flight, backoff.
//! - [`agent`]: slots, enrollment with crash safety, and the handout API the IPC layer uses.
//! - [`ipc`]: the local socket server: peer checks, framing, requests, subscriptions.
//! - [`metrics`]: Prometheus text for the `metrics` op.
//! - [`daemon`]: bind, open, serve until shutdown — what `regent agent` runs.
//! - [`sd_notify`]: readiness, stopping and watchdog messages to systemd.
//! - [`watch`]: a debounced directory watch (`notify`) as a tokio channel.
//! - [`reload`]: live configuration: log level, allow lists, refresh settings.
//! - [`provision`]: the registration-token drop-in directory.
//! - `fuzzing` (hidden, the `fuzzing` feature): the parsers of hostile input
//!   with their properties, for the fuzz targets in `fuzz/` and the corpus
//!   replay test.

pub mod agent;
pub mod config;
pub mod crash;
pub(crate) mod credential;
pub mod daemon;
pub mod engine;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod grant;
pub mod ipc;
pub mod lease;
pub mod metrics;
pub mod provision;
pub mod reload;
pub mod sd_notify;
pub mod secret;
pub mod store;
pub mod trim;
pub mod upstream;
pub mod watch;

pub use error::{Error, Result};
pub use regent_proto::ErrorCode;
