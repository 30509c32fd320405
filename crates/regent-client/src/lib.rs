//! The Rust client of the local regent agent: licensed applications get
//! access tokens from it over the agent's socket (DESIGN §6).
//!
//! - [`Client`]: async (tokio). Clones share one connection; calls from many
//!   tasks are pipelined and matched to their answers by id.
//! - [`blocking`]: the same calls for code without an async runtime
//!   (standard library only); the C library is built on it.
//! - [`TokenSource`] / [`blocking::TokenSource`]: a cache to call on every
//!   request — a round trip only when the cached token would drop below `min_valid`.
//! - [`Subscription`] / [`blocking::Subscription`]: tokens pushed before the
//!   old one runs low, and state changes such as revocation.
//! - [`Error`]: every failure, with a code from the one table in
//!   `regent_proto` (the numbers of the C library and the CLI's exit status).
//! - [`ClientOptions`], [`default_socket_path`]: where the agent listens
//!   (`$REGENT_SOCKET` overrides) and how long to wait.
//!
//! Connecting first checks who listens on the socket: the server's uid must
//! be this process's, root's, the configured agent uid
//! ([`ClientOptions::agent_uid`], `$REGENT_AGENT_UID`) or that of the owner of
//! a private socket directory; any other server is refused with
//! `AGENT_UNREACHABLE` before a byte is sent. Then it says `hello` (version
//! negotiation). When the agent restarts,
//! the next call reconnects and resends reads (`token`, `status`, `metrics`)
//! once; `enroll` and `unenroll` are never resent when the agent may have
//! received them. Secrets (access tokens, enrollment secrets) are zeroized
//! after use and never appear in `Debug` output or error messages.
//!
//! ```no_run
//! use std::time::Duration;
//! use regent_client::{Client, ClientOptions, TokenSource};
//!
//! # async fn run() -> regent_client::Result<()> {
//! let client = Client::connect(ClientOptions::new("editor")).await?;
//! let tokens = TokenSource::new(client, Duration::from_secs(60));
//! let token = tokens.token().await?;
//! let header = format!("{} {}", token.token_type, token.secret());
//! # let _ = header;
//! # Ok(())
//! # }
//! ```
//!
//! Errors carry what to do next:
//!
//! ```no_run
//! use std::time::Duration;
//! use regent_client::{ClientOptions, ErrorCode, blocking::Client};
//!
//! match Client::connect(ClientOptions::default()).and_then(|c| c.token(Duration::from_secs(30))) {
//!     Ok(token) => println!("valid for {:?}", token.remaining()),
//!     Err(e) if e.code == ErrorCode::AgentUnreachable => eprintln!("{e}"),
//!     Err(e) if e.is_retryable() => eprintln!("try again in {:?}: {e}", e.retry_after),
//!     Err(e) => std::process::exit(i32::from(e.number())),
//! }
//! ```

#![warn(missing_docs)]

pub mod blocking;
mod client;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod options;
mod server;
mod source;
mod token;
#[cfg(windows)]
#[doc(hidden)]
pub mod win32;
mod wire;

pub use client::{Client, Subscription};
pub use error::{Error, Result};
pub use options::{ClientOptions, SOCKET_ENV, SYSTEM_PIPE, default_socket_path, user_pipe};
pub use regent_proto::ErrorCode;
pub use regent_proto::status::{
    AgentStatus, Holder, RenewalReason, SignedInUser, SlotState, SlotStatus,
};
pub use secrecy::{ExposeSecret, SecretString};
pub use server::{AGENT_SID_ENV, AGENT_UID_ENV};
pub use source::TokenSource;
pub use token::{
    AgentInfo, BrowserLogin, DeviceLogin, Enrolled, LoggedIn, LoginPoll, SubscriptionEvent, Token,
};
