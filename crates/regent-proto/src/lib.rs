//! regent's wire contract, shared by the agent, the clients, the C library and the CLI.
//!
//! - [`code`]: the one table of stable error codes (DESIGN §7). The same numbers
//!   appear in IPC responses, the Rust client's errors, `regent_result` in the C
//!   header, the Python binding and the CLI's exit status.
//! - [`error`]: the one error type (code, message, retry time) of every Rust
//!   surface.
//! - `exact` (private): the cached handout's two frames read and written
//!   without serde, in the exact form regent sends them; the general path
//!   takes anything else.
//! - [`frame`]: the framing (4-byte big-endian length + one JSON object, 64 KiB cap).
//! - [`message`]: requests, responses and pushed events, version negotiation.
//! - [`status`]: the agent's status document and its health.
//! - [`time`]: unix milliseconds ↔ `SystemTime`, checked against one bound on
//!   every platform (a stored or received time never panics a conversion).

pub mod code;
pub mod error;
mod exact;
pub mod frame;
pub mod message;
pub mod status;
pub mod time;

pub use code::ErrorCode;
pub use error::{Error, Result};
pub use exact::push_decimal;
