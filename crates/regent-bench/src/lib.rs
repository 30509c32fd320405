//! `regent-bench`: regent measured against baselines taken in the same run,
//! and the fleet simulation (DESIGN §13 is the target table).
//!
//! Map of the modules:
//! - [`cli`]: the command line and the run loop (`all`, one scenario, the
//!   hidden child modes).
//! - [`scenario`]: latency, throughput, upstream efficiency, memory,
//!   start-up, fleet — each returns [`report::Row`]s.
//! - [`lab`]: fixtures: the emulator, agents and the echo baseline as child
//!   processes, enrolled homes.
//! - [`raw`]: the raw Unix-socket baseline (echo server and clients; Unix
//!   only).
//! - [`child`]: what runs in the child processes (agent, echo, load driver).
//! - [`ffi`]: the C library's handout, for the latency comparison.
//! - [`report`]: the table and the stable JSON lines.
//! - [`stats`], [`machine`]: percentiles, histograms; CPU, limits, RSS.
//!
//! Every load loop is bounded by a request count or a deadline, and every
//! target is a loopback address or a Unix socket in a temporary directory.
//!
//! The bench builds on every platform regent supports. Scenarios that talk
//! to the agent over a Unix socket run on Linux and macOS; on Windows only
//! `fleet` runs and the others say why
//! ([`scenario::table`]). The latency scenario's CPU-pinned half needs
//! Linux (`sched_setaffinity`); elsewhere it reports the unpinned spread.

pub mod child;
pub mod cli;
pub mod ffi;
pub mod lab;
pub mod machine;
#[cfg(unix)]
pub mod raw;
pub mod report;
pub mod scenario;
pub mod stats;
