//! The agent as a running daemon: bind the socket, open the agent, serve until
//! shutdown. `regent agent` calls [`run`]; tests call it with their own
//! shutdown future.

use std::future::Future;
use std::sync::Arc;

use crate::agent::Agent;
use crate::config::Config;
use crate::error::Result;
use crate::ipc::{self, IpcSettings, ServerStats};

/// Binds the socket, opens the agent and serves until `shutdown` resolves.
/// The socket is bound first, so a second agent on the same path stops
/// before touching any state.
///
/// # Errors
/// `CONFIG` (bad settings, a live agent on the socket), `STORE_UNAVAILABLE`
/// (state or secrets unreadable), or a persistent accept failure.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let settings = IpcSettings::from_config(&config)?;
    let listener = ipc::bind(&settings)?;
    let agent = Agent::open(config).await?;
    ipc::serve(
        agent,
        listener,
        settings,
        Arc::new(ServerStats::default()),
        shutdown,
    )
    .await
}
