//! The agent as a running daemon: bind the socket, open the agent, serve until
//! shutdown. `regent agent` calls [`run_with`]; tests call [`run`] with their
//! own shutdown future.
//!
//! Around the server: readiness for the service manager ([`sd_notify`]) once
//! the socket listens and the state is loaded, the config-file watch
//! ([`reload`]) and the provisioning drop-in ([`provision`]).
//!
//! [`sd_notify`]: crate::sd_notify
//! [`reload`]: crate::reload
//! [`provision`]: crate::provision

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use crate::agent::Agent;
use crate::config::Config;
use crate::error::Result;
use crate::ipc::{self, IpcSettings};
use crate::metrics::Counters;
use crate::reload::{self, LogLevelHook, ReloadTargets};
use crate::sd_notify::{self, Notifier};

/// What the daemon needs besides its configuration.
#[derive(Default)]
pub struct DaemonOptions {
    /// The configuration file to watch for live changes (`None`: no watch).
    pub config_path: Option<PathBuf>,
    /// Applies a new `[log] level` (the binary owns the tracing subscriber).
    pub log_level: Option<LogLevelHook>,
    /// Where readiness goes; default: `$NOTIFY_SOCKET`.
    pub notifier: Option<Notifier>,
    /// Called once when the agent is ready, next to the `READY=1` message
    /// (the Windows service reports `Running` here).
    pub on_ready: Option<Box<dyn FnOnce() + Send>>,
}

impl std::fmt::Debug for DaemonOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonOptions")
            .field("config_path", &self.config_path)
            .field("log_level", &self.log_level.is_some())
            .field("notifier", &self.notifier)
            .field("on_ready", &self.on_ready.is_some())
            .finish()
    }
}

/// Binds the socket, opens the agent and serves until `shutdown` resolves.
/// The socket is bound first, so a second agent on the same path stops
/// before touching any state.
///
/// # Errors
/// `CONFIG` (bad settings, a live agent on the socket), `STORE_UNAVAILABLE`
/// (state or secrets unreadable), or a persistent accept failure.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    run_with(config, DaemonOptions::default(), shutdown).await
}

/// [`run`], plus the config watch, the provisioning drop-in and readiness
/// notification (`READY=1` only once the socket listens and the agent is open).
///
/// # Errors
/// As [`run`]; also `CONFIG` when the config file's or the provisioning
/// directory cannot be watched.
pub async fn run_with(
    config: Config,
    options: DaemonOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let notifier = options.notifier.unwrap_or_else(Notifier::from_env);
    let settings = IpcSettings::from_config(&config)?;
    // The whole configuration is checked before the socket (and its
    // directory) or the state directory is made.
    let checked = Agent::preflight(config.clone())?;
    let listener = ipc::bind(&settings)?;
    // Held until the daemon returns: one agent per state directory.
    let _state_lock = crate::store::state_dir::lock_state_dir(&config.state_dir()?)?;
    let agent = Agent::open_checked(checked).await?;
    let stats = Arc::new(Counters::default());
    let _config_watch = match &options.config_path {
        Some(path) => Some(reload::watch(
            path,
            config.clone(),
            ReloadTargets {
                agent: Arc::clone(&agent),
                policy: settings.policy.clone(),
                stats: Arc::clone(&stats),
                log_level: options.log_level.clone(),
            },
        )?),
        None => None,
    };
    let _provisioning = match &config.provisioning.dir {
        Some(dir) => Some(crate::provision::watch(
            dir,
            Arc::clone(&agent),
            Arc::clone(&stats),
        )?),
        None => None,
    };
    let _watchdog = sd_notify::watchdog_interval()
        .filter(|_| notifier.is_active())
        .map(|every| {
            let notifier = notifier.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    notifier.watchdog();
                }
            })
        })
        .map(AbortOnDrop);
    notifier.ready(&format!("serving on {}", listener.path().display()));
    // Start-up is over: its code pages go back to the kernel, and so do
    // each renewal's once it is done (crate::trim).
    let _trim = AbortOnDrop(tokio::spawn(trim_after_events(agent.events())));
    if let Some(on_ready) = options.on_ready {
        on_ready();
    }
    let notify_stop = notifier.clone();
    let shutdown = async move {
        shutdown.await;
        notify_stop.stopping();
    };
    let result = ipc::serve(Arc::clone(&agent), listener, settings, stats, shutdown).await;
    // The daemon owns the agent: its engines stop once nothing is served,
    // whether the server stopped on request or gave up accepting.
    agent.shutdown();
    // Once more before exiting: a renewed credential the store refused is
    // still only in memory (DESIGN §5).
    agent.save_unsaved().await;
    result
}

/// Keeps the agent's memory — where tokens live — away from other processes
/// of its own uid and out of core dumps. Call first thing in the process that
/// runs the agent (`regent agent` does), before any secret is read.
///
/// - Linux: `prctl(PR_SET_DUMPABLE, 0)`. The kernel then makes `/proc/PID/`
///   files (`mem`, `environ`, `maps`, `fd`…) owned by root, refuses
///   `ptrace` attach by same-uid processes, and writes no core dump.
/// - Every Unix: `RLIMIT_CORE` = 0, so no core file is written even where
///   the system dumps non-dumpable processes (`fs.suid_dumpable = 2`).
///
/// The cost: no core dump to debug a crash, and no attaching a debugger to a
/// running agent except as root. A debugger that starts the agent
/// (`gdb --args regent agent …`) still works: the process stays traced. A
/// panic still prints its message (and a backtrace with `RUST_BACKTRACE=1`).
/// There is no opt-out.
///
/// Returns what was done, for the start-up log.
///
/// # Errors
/// `INTERNAL` when the kernel refuses (not expected on any supported system).
pub fn harden_process() -> Result<&'static str> {
    #[cfg(unix)]
    {
        use crate::error::Error;
        use regent_proto::ErrorCode;
        let zero = rustix::process::Rlimit {
            current: Some(0),
            maximum: Some(0),
        };
        rustix::process::setrlimit(rustix::process::Resource::Core, zero).map_err(|e| {
            Error::new(
                ErrorCode::Internal,
                format!("cannot turn off core dumps (RLIMIT_CORE): {e}"),
            )
        })?;
        #[cfg(target_os = "linux")]
        {
            nix::sys::prctl::set_dumpable(false).map_err(|e| {
                Error::new(
                    ErrorCode::Internal,
                    format!("cannot make the agent non-dumpable (PR_SET_DUMPABLE): {e}"),
                )
            })?;
            Ok("not dumpable (PR_SET_DUMPABLE 0), no core dumps (RLIMIT_CORE 0)")
        }
        #[cfg(not(target_os = "linux"))]
        Ok("no core dumps (RLIMIT_CORE 0)")
    }
    #[cfg(not(unix))]
    Ok("no process hardening on this platform")
}

/// Releases the executable's code pages a second after start-up (what runs
/// just after `READY` — the engine's first steps, the watchers — included),
/// then a second after each burst of engine events (a renewal and what
/// follows it): piggybacked on work the agent does anyway, so an idle agent
/// is never woken for it.
async fn trim_after_events(mut events: tokio::sync::broadcast::Receiver<crate::engine::Event>) {
    use tokio::sync::broadcast::error::RecvError;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    loop {
        let released = crate::trim::release_code_pages();
        tracing::debug!(
            kib = released / 1024,
            "released the program's pages it is not using"
        );
        match events.recv().await {
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        // Whatever else arrived meanwhile belongs to the same burst.
        while let Ok(_) | Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) =
            events.try_recv()
        {}
    }
}

/// Stops a background task when the daemon returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
