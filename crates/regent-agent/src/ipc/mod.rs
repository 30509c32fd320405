//! The local IPC server (DESIGN §6): apps connect over a Unix socket (a named
//! pipe on Windows) and ask for tokens.
//!
//! - [`IpcSettings`] comes from `[ipc]`; [`bind`] refuses an unsafe socket
//!   directory ([`socket_dir`]: writable by others without the sticky bit, or
//!   owned by another user — the directory and every parent), creates the
//!   socket with its mode set before `bind()` (no umask race), reclaims a
//!   stale socket left by a killed agent, refuses to steal a live agent's
//!   socket, and verifies the socket file's owner and mode afterwards.
//! - [`serve`] is the mini-redis shape: accept until `shutdown` resolves, a
//!   semaphore bounds connections, then a broadcast tells every connection to
//!   finish its in-flight request, and the socket file is removed.
//! - [`connection`] handles one client; [`peer`] decides what it may do.

pub mod connection;
#[cfg(target_os = "linux")]
pub mod creds;
pub mod fd_limit;
#[cfg(target_os = "macos")]
pub mod macos;
pub mod peer;
#[cfg(unix)]
pub mod socket_dir;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use interprocess::local_socket::tokio::Listener as TokioListener;
use interprocess::local_socket::traits::tokio::Listener as _;
use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
use regent_proto::ErrorCode;
use tokio::sync::{Semaphore, broadcast, mpsc};

use crate::agent::Agent;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::metrics::Counters;
use peer::Policy;

/// How long shutdown waits for connections to finish their in-flight request.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Most refused connections kept open at once while their refusal is read
/// (half of [`fd_limit::RESERVED_FDS`]); past it a refusal is written and the
/// connection closed at once.
const REFUSALS_DRAINING: usize = 32;

/// Settings for the socket and its clients.
#[derive(Debug, Clone)]
pub struct IpcSettings {
    /// Socket path.
    pub socket: PathBuf,
    /// Socket file mode.
    pub mode: u32,
    /// Who may connect; shared with the config reloader, which replaces it live.
    pub policy: SharedPolicy,
    /// Most simultaneous connections.
    pub max_connections: usize,
    /// How long a half-sent frame (or a missing hello) may stall.
    pub read_timeout: Duration,
    /// Most subscriptions one connection may hold.
    pub max_subscriptions_per_connection: usize,
    /// Most subscriptions all connections together may hold.
    pub max_subscriptions: usize,
}

impl IpcSettings {
    /// Settings from `[ipc]`.
    ///
    /// # Errors
    /// `CONFIG` for a bad mode or an unknown group.
    pub fn from_config(config: &Config) -> Result<IpcSettings> {
        let ipc = &config.ipc;
        let mode = ipc.socket_mode_bits().ok_or_else(|| {
            Error::new(
                ErrorCode::Config,
                format!(
                    "[ipc] socket_mode = {:?} is not an octal mode",
                    ipc.socket_mode
                ),
            )
        })?;
        let policy = policy_from_config(config)?;
        Ok(IpcSettings {
            socket: ipc.socket.clone().unwrap_or_else(default_socket_path),
            mode,
            policy: SharedPolicy::new(policy),
            max_connections: ipc.max_connections.max(1),
            read_timeout: Duration::from_secs(ipc.read_timeout.max(1)),
            max_subscriptions_per_connection: ipc.max_subscriptions_per_connection.max(1),
            // A semaphore holds at most `Semaphore::MAX_PERMITS`.
            max_subscriptions: ipc.max_subscriptions.clamp(1, Semaphore::MAX_PERMITS),
        })
    }
}

/// The access policy, replaceable while the agent runs (`[ipc] allow_uids`,
/// `allow_groups` and `allow_executables` reload live). Clones share one
/// policy. Every replacement bumps a generation number; open connections
/// compare it on every request and pushed event and decide again when it
/// moved, so a reload that removes a peer closes its connection.
#[derive(Debug, Clone)]
pub struct SharedPolicy(Arc<PolicyCell>);

#[derive(Debug)]
struct PolicyCell {
    policy: RwLock<Policy>,
    generation: AtomicU64,
}

impl SharedPolicy {
    /// Shares `policy`.
    pub fn new(policy: Policy) -> SharedPolicy {
        SharedPolicy(Arc::new(PolicyCell {
            policy: RwLock::new(policy),
            generation: AtomicU64::new(0),
        }))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Policy> {
        // A poisoned lock only means a writer panicked mid-assignment of a
        // plain value; the policy inside is still whole.
        self.0
            .policy
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the current policy checks programs (`allow_executables`), so
    /// that a connection's process must be pinned to be checked again.
    pub fn checks_executables(&self) -> bool {
        !self.read().allow_executables.is_empty()
    }

    /// What `peer` may do under the current policy (uid rules only).
    pub fn access(&self, peer: &peer::Peer) -> peer::Access {
        self.read().access(peer)
    }

    /// Whether `peer` is served, under the current policy: [`Policy::decide`],
    /// with the generation it was decided under.
    ///
    /// # Errors
    /// The refusal to log and to send the peer.
    pub fn decide(
        &self,
        peer: &peer::Peer,
        exe: impl FnOnce() -> peer::ExeLookup,
    ) -> (u64, std::result::Result<peer::Admitted, peer::Refusal>) {
        let policy = self.read();
        // Read under the lock: a replacement waits for the write lock, so
        // this generation is the one of the policy decided with.
        let generation = self.generation();
        (generation, policy.decide(peer, exe))
    }

    /// The number of replacements so far.
    pub fn generation(&self) -> u64 {
        self.0.generation.load(Ordering::Acquire)
    }

    /// The current policy.
    pub fn current(&self) -> Policy {
        self.read().clone()
    }

    /// Replaces the policy: new connections are decided by it, and open
    /// ones at their next request or pushed event.
    pub fn replace(&self, policy: Policy) {
        let mut current = self
            .0
            .policy
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *current = policy;
        self.0.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// Resolves `[ipc] allow_uids` / `allow_groups` / `allow_executables` into a
/// policy, logging the warnings of [`policy_with_warnings`].
///
/// # Errors
/// `CONFIG` naming a group that does not exist.
pub fn policy_from_config(config: &Config) -> Result<Policy> {
    let (policy, warnings) = policy_with_warnings(config)?;
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    Ok(policy)
}

/// Resolves the allow lists into a policy. Executables are canonicalised now
/// (symlinks resolved); an entry that does not exist is matched as written and
/// reported in the warnings, as is a list on a platform that cannot check it.
/// Unix: `allow_users` (names or uids) is merged into `allow_uids`, group
/// names become gids. Windows: `allow_users` / `allow_groups` (names or
/// SIDs) become SIDs, names looked up now; `allow_uids` is refused.
///
/// # Errors
/// `CONFIG` naming a user or group that does not exist (with the fix), or
/// `allow_uids` on Windows.
pub fn policy_with_warnings(config: &Config) -> Result<(Policy, Vec<String>)> {
    let ipc = &config.ipc;
    let config_error = |m: String| Error::new(ErrorCode::Config, m);
    let (exes, mut warnings) = peer::resolve_executables(&ipc.allow_executables);
    if !exes.is_empty() && !cfg!(any(target_os = "linux", target_os = "macos", windows)) {
        warnings.push(
            "[ipc] allow_executables is set, but this platform cannot tell which program a peer runs: every connection except root's is refused".to_owned(),
        );
    }
    #[cfg(windows)]
    let policy = {
        if !ipc.allow_uids.is_empty() {
            return Err(config_error(format!(
                "[ipc] allow_uids = {:?}: Windows has no uids; name the accounts in allow_users instead (account names or SIDs, e.g. allow_users = [\"alice\", \"S-1-5-21-…\"])",
                ipc.allow_uids
            )));
        }
        let users = peer::resolve_accounts(
            &ipc.allow_users,
            peer::AccountList::Users,
            peer::lookup_account,
        )
        .map_err(config_error)?;
        let groups = peer::resolve_accounts(
            &ipc.allow_groups,
            peer::AccountList::Groups,
            peer::lookup_account,
        )
        .map_err(config_error)?;
        let mut policy = Policy::new(Vec::new(), Vec::new(), exes);
        policy.allow_sids = users;
        policy.allow_group_sids = groups;
        policy
    };
    #[cfg(not(windows))]
    let policy = {
        let gids = peer::resolve_groups(&ipc.allow_groups).map_err(config_error)?;
        let mut uids = ipc.allow_uids.clone();
        for uid in peer::resolve_users(&ipc.allow_users).map_err(config_error)? {
            if !uids.contains(&uid) {
                uids.push(uid);
            }
        }
        Policy::new(uids, gids, exes)
    };
    Ok((policy, warnings))
}

/// The system agent's named pipe on Windows: the same name as the client's
/// `regent_client::SYSTEM_PIPE` (a test checks they agree).
pub const SYSTEM_PIPE: &str = r"\\.\pipe\regent-agent";

/// Windows: the pipe an agent running as `sid` listens on by default. A
/// service account — LocalSystem (`S-1-5-18`), LocalService (`S-1-5-19`),
/// NetworkService (`S-1-5-20`) or a virtual service account
/// (`S-1-5-80-…`) — is the system agent: [`SYSTEM_PIPE`]. Any other
/// account runs a per-user agent: `\\.\pipe\regent-agent-<its SID>`, so
/// that two users' agents never contend for one name.
pub fn pipe_for_account(sid: &str) -> PathBuf {
    let service = ["S-1-5-18", "S-1-5-19", "S-1-5-20"]
        .iter()
        .any(|s| sid.eq_ignore_ascii_case(s))
        || sid.to_ascii_uppercase().starts_with("S-1-5-80-");
    if service {
        PathBuf::from(SYSTEM_PIPE)
    } else {
        PathBuf::from(format!("{SYSTEM_PIPE}-{sid}"))
    }
}

/// `$REGENT_SOCKET`, else `$XDG_RUNTIME_DIR/regent/agent.sock` (user agent),
/// else `/run/regent/agent.sock` (system agent). Windows: the pipe of the
/// agent's own account ([`pipe_for_account`]).
pub fn default_socket_path() -> PathBuf {
    if let Some(p) = std::env::var_os("REGENT_SOCKET").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if cfg!(windows) {
        return match peer::current_sid() {
            Some(sid) => pipe_for_account(&sid),
            None => {
                tracing::warn!(
                    "cannot read the agent's own account; listening on the system pipe {SYSTEM_PIPE}"
                );
                PathBuf::from(SYSTEM_PIPE)
            }
        };
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("regent/agent.sock"),
        None => PathBuf::from("/run/regent/agent.sock"),
    }
}

/// A bound socket, ready to [`serve`].
#[derive(Debug)]
pub struct IpcListener {
    listener: TokioListener,
    path: PathBuf,
}

impl IpcListener {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Creates the socket.
///
/// # Errors
/// `CONFIG` when the socket directory (or a parent) is writable by others
/// without the sticky bit or owned by another user, when another agent answers
/// on the path (its socket is never stolen), when the path holds something
/// that is not a socket, or when the new socket's owner or mode is not as
/// configured;
/// `STORE_UNAVAILABLE`-free I/O failures are `INTERNAL` naming the path.
pub fn bind(settings: &IpcSettings) -> Result<IpcListener> {
    let path = &settings.socket;
    #[cfg(unix)]
    prepare_socket_path(path, settings.mode)?;
    let name = path
        .as_path()
        .to_fs_name::<GenericFilePath>()
        .map_err(|e| {
            Error::new(
                ErrorCode::Config,
                format!("invalid socket path {}: {e}", path.display()),
            )
        })?;
    let options = ListenerOptions::new().name(name);
    #[cfg(unix)]
    let options = {
        use interprocess::os::unix::local_socket::ListenerOptionsExt;
        options.mode(settings.mode as _)
    };
    #[cfg(windows)]
    let options = {
        use interprocess::os::windows::local_socket::ListenerOptionsExt;
        options.security_descriptor(pipe_security_descriptor(&settings.policy.current())?)
    };
    let listener = options.create_tokio().map_err(|e| {
        // interprocess creates the first instance with
        // FILE_FLAG_FIRST_PIPE_INSTANCE: a pipe of that name that exists
        // already (another agent, or a squatter) is refused with
        // ERROR_ACCESS_DENIED.
        if cfg!(windows) && e.raw_os_error() == Some(5) {
            return Error::new(
                ErrorCode::Config,
                format!(
                    "another server already holds the named pipe {} (access denied to a first instance): another regent agent, or a program that took the name; stop it or set another [ipc] socket",
                    path.display()
                ),
            );
        }
        Error::new(
            ErrorCode::Internal,
            format!("cannot listen on {}: {e}", path.display()),
        )
    })?;
    // bind() applies the umask to the socket file; set the exact mode now.
    // Until here the file's mode was the requested one minus the umask, never
    // looser than asked.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(settings.mode)).map_err(
            |e| {
                Error::new(
                    ErrorCode::Internal,
                    format!(
                        "cannot set mode {:o} on {}: {e}",
                        settings.mode,
                        path.display()
                    ),
                )
            },
        )?;
        socket_dir::verify_socket_file(path, settings.mode, peer::current_uid())?;
    }
    tracing::info!(socket = %path.display(), mode = format!("{:o}", settings.mode), "listening");
    Ok(IpcListener {
        listener,
        path: path.clone(),
    })
}

/// The named pipe's base access list (SDDL): full access for LocalSystem,
/// the Administrators group and the pipe's owner (the account the agent runs
/// as); `P` (protected) stops inherited entries widening it. [`pipe_sddl`]
/// adds the accounts of `allow_users` / `allow_groups`.
pub const PIPE_SDDL: &str = "D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GA;;;OW)";

/// Read and write on a pipe without `FILE_CREATE_PIPE_INSTANCE` (0x4):
/// `FILE_GENERIC_READ | FILE_GENERIC_WRITE` less that bit, so an allowed
/// account can be a client and never a second server of the name.
const PIPE_CLIENT_RIGHTS: &str = "0x12019b";

/// The pipe's access list: [`PIPE_SDDL`], plus client rights
/// (`PIPE_CLIENT_RIGHTS`) for each SID of `allow_users` and `allow_groups`
/// so that those accounts can open the pipe at all. This is the first gate
/// only: each client is then identified by its process token and image
/// ([`peer`]) and checked against the allow lists in force, at connect and
/// after every reload. The list is set when the pipe is created: an account
/// added to the lists by a reload can open the pipe after a restart; one
/// removed is refused at once by the per-peer check.
pub fn pipe_sddl(user_sids: &[String], group_sids: &[String]) -> String {
    let mut sddl = PIPE_SDDL.to_owned();
    for sid in user_sids.iter().chain(group_sids) {
        // Resolved SIDs only (`S-1-…`), never text that could close the ACE.
        if peer::is_sid(sid) {
            sddl.push_str(&format!("(A;;{PIPE_CLIENT_RIGHTS};;;{sid})"));
        }
    }
    sddl
}

#[cfg(windows)]
fn pipe_security_descriptor(
    policy: &Policy,
) -> Result<interprocess::os::windows::security_descriptor::SecurityDescriptor> {
    let text = pipe_sddl(&policy.allow_sids, &policy.allow_group_sids);
    let sddl = widestring::U16CString::from_str(&text)
        .map_err(|e| Error::new(ErrorCode::Internal, format!("bad pipe SDDL: {e}")))?;
    interprocess::os::windows::security_descriptor::SecurityDescriptor::deserialize(&sddl).map_err(
        |e| {
            Error::new(
                ErrorCode::Internal,
                format!("cannot build the named pipe's security descriptor: {e}"),
            )
        },
    )
}

/// Makes the socket's directory, refuses it when it is unsafe, and removes a
/// stale socket file after checking that no agent answers on it.
#[cfg(unix)]
fn prepare_socket_path(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        // Group-accessible sockets need a group-searchable directory.
        let dir_mode = if mode & 0o070 != 0 { 0o750 } else { 0o700 };
        crate::store::atomic::create_dir_with_mode(dir, dir_mode).map_err(|e| {
            Error::new(
                ErrorCode::Config,
                format!("cannot create the socket directory {}: {e}", dir.display()),
            )
        })?;
    }
    socket_dir::check_socket_dir(&socket_dir::socket_dir(path), peer::current_uid())?;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(Error::new(
            ErrorCode::Config,
            format!(
                "{} exists and is not a socket; remove it or choose another [ipc] socket path",
                path.display()
            ),
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(Error::new(
            ErrorCode::Config,
            format!(
                "another regent agent is already listening on {}; stop it first or set another [ipc] socket path",
                path.display()
            ),
        )),
        Err(_) => {
            std::fs::remove_file(path).map_err(|e| {
                Error::new(
                    ErrorCode::Config,
                    format!("cannot remove the stale socket {}: {e}", path.display()),
                )
            })?;
            tracing::info!(socket = %path.display(), "reclaimed a stale socket left by a previous agent");
            Ok(())
        }
    }
}

/// What every connection task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub agent: Arc<Agent>,
    pub settings: IpcSettings,
    pub stats: Arc<Counters>,
    /// One permit per live subscription, across all connections.
    pub subscriptions: Arc<Semaphore>,
}

/// Serves connections until `shutdown` resolves, then lets in-flight requests
/// finish (up to 5 s) and removes the socket. The agent's own shutdown is
/// the caller's (the daemon's).
///
/// The accept loop runs as a task on the runtime's workers, not on the
/// thread awaiting this function (`block_on`'s, for `regent agent`): a
/// connection is then spawned by the worker that accepted it and starts
/// there, instead of waking a parked worker through the runtime's queue for
/// every connection (issue 15: one wake-up per connect + token).
///
/// # Errors
/// Only when accepting fails persistently.
pub async fn serve(
    agent: Arc<Agent>,
    listener: IpcListener,
    settings: IpcSettings,
    stats: Arc<Counters>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let subscriptions = Arc::new(Semaphore::new(settings.max_subscriptions));
    let shared = Arc::new(Shared {
        agent,
        settings,
        stats,
        subscriptions,
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut accepting = tokio::spawn(accept_until(listener, shared, async move {
        // A dropped sender (the caller gone) stops it as well.
        let _ = stopped.await;
    }));
    tokio::pin!(shutdown);
    let joined = tokio::select! {
        () = &mut shutdown => {
            let _ = stop.send(());
            (&mut accepting).await
        }
        joined = &mut accepting => joined,
    };
    joined.unwrap_or_else(|e| {
        Err(Error::new(
            ErrorCode::Internal,
            format!("the connection server stopped unexpectedly: {e}"),
        ))
    })
}

async fn accept_until(
    listener: IpcListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let limit = Arc::new(Semaphore::new(fd_limit::connection_limit(
        shared.settings.max_connections,
        fd_limit::fds_per_connection(shared.settings.policy.checks_executables()),
    )));
    let refusals = Arc::new(Semaphore::new(REFUSALS_DRAINING));
    let (notify_shutdown, _) = broadcast::channel::<()>(1);
    // Every connection holds a sender; when all are dropped, draining is done.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    // Consecutive accept failures: all of them (for the log), and those that
    // are not a passing shortage of descriptors (those end the server).
    let (mut failing, mut accept_errors) = (0u64, 0u32);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.listener.accept() => accepted,
        };
        let stream = match stream {
            Ok(s) => {
                if failing > 0 {
                    tracing::info!(failures = failing, "accepting connections again");
                }
                (failing, accept_errors) = (0, 0);
                s
            }
            Err(e) => {
                // Out of descriptors (EMFILE) and friends: back off briefly
                // instead of spinning, and wait for connections to close —
                // never give up on it, or one client holding too many
                // connections would stop the agent for everyone.
                failing += 1;
                if !fd_limit::is_exhaustion(&e) {
                    accept_errors += 1;
                }
                if failing == 1 || failing.is_multiple_of(200) {
                    tracing::warn!(error = %e, failures = failing, "accept failed");
                }
                if accept_errors > 1000 {
                    return Err(Error::new(
                        ErrorCode::Internal,
                        format!("accept keeps failing: {e}"),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
        // Who the peer is decides before it may take a connection slot: a
        // refused peer holds no slot, and refusals draining at once are
        // bounded apart, so neither can crowd out allowed clients.
        let admission = connection::admit(&stream, &shared);
        let permit = match &admission {
            Ok(_) => Arc::clone(&limit).try_acquire_owned().ok(),
            Err(_) => None,
        };
        let drain = permit
            .is_none()
            .then(|| Arc::clone(&refusals).try_acquire_owned().ok())
            .flatten();
        let shared = Arc::clone(&shared);
        let shutdown_rx = notify_shutdown.subscribe();
        let done = done_tx.clone();
        tokio::spawn(async move {
            match (admission, permit) {
                (Ok(admission), Some(permit)) => {
                    shared.stats.open.fetch_add(1, Ordering::Relaxed);
                    connection::handle(stream, admission, &shared, shutdown_rx).await;
                    shared.stats.open.fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                }
                (Ok(_), None) => {
                    shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                    connection::refuse(
                        stream,
                        ErrorCode::Unavailable,
                        "the agent is at its connection limit ([ipc] max_connections); retry shortly",
                        drain,
                    )
                    .await;
                }
                (Err(refusal), _) => {
                    connection::refuse(
                        stream,
                        ErrorCode::PermissionDenied,
                        &refusal.message,
                        drain,
                    )
                    .await;
                }
            }
            drop(done);
        });
    }
    tracing::info!("shutting down: finishing in-flight requests");
    drop(notify_shutdown);
    drop(done_tx);
    if tokio::time::timeout(DRAIN_TIMEOUT, done_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish within {DRAIN_TIMEOUT:?}");
    }
    let path = listener.path.clone();
    // Dropping the listener unlinks the socket (interprocess name reclamation);
    // make sure even if that was disabled.
    drop(listener);
    #[cfg(unix)]
    if std::fs::symlink_metadata(&path).is_ok() {
        let _ = std::fs::remove_file(&path);
    }
    tracing::info!(socket = %path.display(), "stopped");
    Ok(())
}

#[cfg(test)]
mod tests;
