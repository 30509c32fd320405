//! Who answers on the socket: the client checks the server before it sends
//! a byte (DESIGN §6), so a process that took the socket's name while the
//! agent was down never sees a `hello`, a registration token or a request.
//!
//! On Unix the kernel reports the uid of the process that listens on the
//! socket (`SO_PEERCRED` / `getpeereid`). It is accepted when it is
//!
//! - this process's effective uid, or root;
//! - the agent uid the client was told about ([`ClientOptions::agent_uid`],
//!   else `$REGENT_AGENT_UID`), for an agent of a dedicated user;
//! - the owner of the socket's directory, when only that owner (and root)
//!   can create names in it: the directory is not group- or world-writable
//!   and every directory above it belongs to root (or that owner) and is not
//!   group- or world-writable either — the sticky bit does not count, since
//!   it does not stop anyone from creating a name that is still free. This
//!   admits the packaged system agent (`/run/regent`, owned by the `regent`
//!   user) without configuration, and never a squatter in `/tmp`.
//!
//! Anything else is refused with `AGENT_UNREACHABLE`: the agent is not what
//! answers there. On macOS the uid comes from `LOCAL_PEERCRED` (the call
//! `getpeereid` makes); that path is compiled for macOS in CI
//! (`scripts/test-macos.sh`) but has not run on a Mac.
//!
//! On Windows the server is accepted when the named pipe's owner (the
//! account whose process created it; only that account, or one that may take
//! ownership, can set it) or the user of the server process
//! (`GetNamedPipeServerProcessId`, then its token) is this process's user,
//! LocalSystem, the Administrators group (an elevated creator), or the
//! account `$REGENT_AGENT_SID` names. The owner is read from the connected
//! pipe itself, since a standard user may not read a LocalSystem service's
//! process token; the process's user counts too because Wine gives pipes no
//! owner or the creator's primary group. Under Wine (`scripts/test-windows.sh`)
//! this runs with one account on both ends; the refusal of another account's
//! pipe needs a real Windows and has not run.

use std::path::Path;

use regent_proto::ErrorCode;

use crate::ClientOptions;
use crate::error::{Error, Result};

#[cfg(windows)]
mod windows;

/// The environment variable naming the uid the agent runs as, when it is
/// neither the client's own uid nor root (a system agent's dedicated user).
pub const AGENT_UID_ENV: &str = "REGENT_AGENT_UID";

/// Windows: the environment variable naming the account (a SID such as
/// `S-1-5-19`) the agent runs as, when it is neither the client's own
/// account, LocalSystem nor an administrator.
pub const AGENT_SID_ENV: &str = "REGENT_AGENT_SID";

/// Who the platform says listens on the other end: the peer credentials
/// (Unix) or the named pipe's owner and server process's user (Windows).
#[cfg(unix)]
pub(crate) type ServerId = interprocess::local_socket::PeerCreds;
#[cfg(windows)]
pub(crate) type ServerId = windows::ServerAccounts;

/// A connected stream that can say who listens on its other end.
pub(crate) trait Server {
    fn server_id(&self) -> std::io::Result<ServerId>;
}

#[cfg(unix)]
impl Server for interprocess::local_socket::Stream {
    fn server_id(&self) -> std::io::Result<ServerId> {
        interprocess::local_socket::traits::StreamCommon::peer_creds(self)
    }
}

#[cfg(unix)]
impl Server for interprocess::local_socket::tokio::Stream {
    fn server_id(&self) -> std::io::Result<ServerId> {
        interprocess::local_socket::traits::StreamCommon::peer_creds(self)
    }
}

#[cfg(windows)]
impl Server for interprocess::local_socket::Stream {
    fn server_id(&self) -> std::io::Result<ServerId> {
        use std::os::windows::io::AsHandle;
        let Self::NamedPipe(pipe) = self;
        Ok(windows::server_accounts(pipe.inner().as_handle()))
    }
}

#[cfg(windows)]
impl Server for interprocess::local_socket::tokio::Stream {
    fn server_id(&self) -> std::io::Result<ServerId> {
        use std::os::windows::io::AsHandle;
        let Self::NamedPipe(pipe) = self;
        Ok(windows::server_accounts(pipe.inner().as_handle()))
    }
}

/// Checks the uid the kernel reports for the server on `socket`.
///
/// # Errors
/// `AGENT_UNREACHABLE` naming the socket, the uid found and the fix;
/// `CONFIG` when `$REGENT_AGENT_UID` is not a number.
#[cfg(unix)]
pub(crate) fn check_server(
    socket: &Path,
    creds: std::io::Result<ServerId>,
    opts: &ClientOptions,
) -> Result<()> {
    let own = rustix::process::geteuid().as_raw();
    let found = match creds.map(|c| c.euid()) {
        Ok(Some(uid)) => uid,
        Ok(None) => return Err(unknown_server(socket, &"the platform reported no uid")),
        Err(e) => return Err(unknown_server(socket, &e)),
    };
    if found == own || found == 0 {
        return Ok(());
    }
    let configured = agent_uid(opts)?;
    if configured == Some(found) || directory_belongs_to(socket, found) {
        return Ok(());
    }
    Err(refused(socket, found, own, configured))
}

/// Checks who runs the server of the named pipe on `socket` (Windows).
///
/// # Errors
/// `AGENT_UNREACHABLE` naming the pipe, the account found and the fix.
#[cfg(windows)]
pub(crate) fn check_server(
    socket: &Path,
    accounts: std::io::Result<ServerId>,
    _opts: &ClientOptions,
) -> Result<()> {
    /// LocalSystem and the Administrators group: the "root" of Windows.
    const TRUSTED: [&str; 2] = ["S-1-5-18", "S-1-5-32-544"];
    let accounts = accounts.map_err(|e| unknown_server(socket, &e))?;
    let known = accounts.known();
    if known.is_empty() {
        return Err(unknown_server(socket, &accounts.unknown_because()));
    }
    let own = windows::own_user().map_err(|e| unknown_server(socket, &e))?;
    let configured = std::env::var(AGENT_SID_ENV)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty());
    let trusted = |sid: &str| {
        sid.eq_ignore_ascii_case(&own)
            || TRUSTED.iter().any(|t| sid.eq_ignore_ascii_case(t))
            || configured
                .as_deref()
                .is_some_and(|c| sid.eq_ignore_ascii_case(c))
    };
    if known.iter().any(|sid| trusted(sid)) {
        return Ok(());
    }
    // The server process's account when it could be read, else the owner.
    let runs_as = known.last().copied().unwrap_or_default();
    let found = known.join(", its server process runs as ");
    Err(Error::new(
        ErrorCode::AgentUnreachable,
        format!(
            "refusing the server at {socket}: its pipe belongs to {found} — not this process's account ({own}), \
             not LocalSystem or the Administrators, and not the account {AGENT_SID_ENV} names — so another user may \
             have taken the pipe's name while the agent was down; nothing was sent to it. If the regent agent really \
             runs as {runs_as}, set {AGENT_SID_ENV}={runs_as}; otherwise stop that process and start the agent",
            socket = socket.display()
        ),
    ))
}

/// The configured agent uid: the option, else the environment.
#[cfg(unix)]
fn agent_uid(opts: &ClientOptions) -> Result<Option<u32>> {
    if opts.agent_uid.is_some() {
        return Ok(opts.agent_uid);
    }
    parse_agent_uid(std::env::var_os(AGENT_UID_ENV))
}

#[cfg(unix)]
fn parse_agent_uid(value: Option<std::ffi::OsString>) -> Result<Option<u32>> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    match value.to_str().and_then(|v| v.trim().parse::<u32>().ok()) {
        Some(uid) => Ok(Some(uid)),
        None => Err(Error::new(
            ErrorCode::Config,
            format!(
                "{AGENT_UID_ENV}={} is not a numeric uid; set it to the uid the regent agent runs as \
                 (for example `{AGENT_UID_ENV}=$(id -u regent)`) or unset it",
                value.to_string_lossy()
            ),
        )),
    }
}

/// Whether only `uid` (and root) can create names in the socket's directory.
#[cfg(unix)]
fn directory_belongs_to(socket: &Path, uid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return false;
    };
    let Ok(written) = std::path::absolute(dir) else {
        return false;
    };
    let Ok(canonical) = std::fs::canonicalize(&written) else {
        return false;
    };
    // Both chains: a symlink is judged by the directory holding it and by
    // the directory it points to.
    [written, canonical].iter().all(|chain| {
        chain.ancestors().enumerate().all(|(depth, ancestor)| {
            let Ok(meta) = std::fs::metadata(ancestor) else {
                return false;
            };
            let owner_ok = meta.uid() == uid || (depth > 0 && meta.uid() == 0);
            meta.is_dir() && owner_ok && meta.mode() & 0o022 == 0
        })
    })
}

fn unknown_server(socket: &Path, cause: &dyn std::fmt::Display) -> Error {
    Error::new(
        ErrorCode::AgentUnreachable,
        format!(
            "refusing the server at {}: cannot tell which user runs it ({cause}), so it may not be the regent agent",
            socket.display()
        ),
    )
}

#[cfg(unix)]
fn refused(socket: &Path, found: u32, own: u32, configured: Option<u32>) -> Error {
    let configured = match configured {
        Some(uid) => format!("the configured agent uid ({uid})"),
        None => format!("a configured agent uid ({AGENT_UID_ENV} is not set)"),
    };
    Error::new(
        ErrorCode::AgentUnreachable,
        format!(
            "refusing the server at {socket}: it runs as uid {found} — not this process's uid ({own}), not root, \
             not {configured}, and not the owner of a private socket directory — so another user may have taken the \
             socket's name while the agent was down; nothing was sent to it. If the regent agent really runs as \
             uid {found}, set {AGENT_UID_ENV}={found} (the client option `agent_uid`); otherwise stop that process, \
             remove {socket} and start the agent",
            socket = socket.display()
        ),
    )
}

#[cfg(all(test, unix))]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn the_agent_uid_comes_from_the_option_then_the_environment() {
        assert_eq!(parse_agent_uid(None).unwrap(), None);
        assert_eq!(parse_agent_uid(Some("".into())).unwrap(), None);
        assert_eq!(parse_agent_uid(Some("998".into())).unwrap(), Some(998));
        let e = parse_agent_uid(Some("regent".into())).unwrap_err();
        assert_eq!(e.code, ErrorCode::Config);
        assert!(e.message.contains("REGENT_AGENT_UID=regent"), "{e}");
        assert!(e.message.contains("id -u regent"), "{e}");
        let opts = ClientOptions::new("app").agent_uid(4242);
        assert_eq!(agent_uid(&opts).unwrap(), Some(4242));
    }

    #[test]
    fn the_refusal_names_socket_uid_and_fix() {
        let e = refused(Path::new("/tmp/agent.sock"), 65534, 1000, None);
        assert_eq!(e.code, ErrorCode::AgentUnreachable);
        for needle in [
            "/tmp/agent.sock",
            "uid 65534",
            "this process's uid (1000)",
            "REGENT_AGENT_UID=65534",
            "agent_uid",
            "REGENT_AGENT_UID is not set",
        ] {
            assert!(e.message.contains(needle), "{needle:?}: {e}");
        }
    }

    #[test]
    fn only_a_directory_nobody_else_can_write_vouches_for_its_owner() {
        let me = rustix::process::geteuid().as_raw();
        // Below the system temp dir (1777): never private, whatever its mode.
        let tmp = tempfile::tempdir().unwrap();
        chmod(tmp.path(), 0o700);
        let socket = tmp.path().join("agent.sock");
        assert!(
            !directory_belongs_to(&socket, me),
            "a sticky world-writable ancestor must not vouch"
        );
        assert!(!directory_belongs_to(Path::new("agent.sock"), me));

        // A directory of another user below root's 0755 directories (the
        // build's target dir here), like the system agent's /run/regent.
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
        let base = tempfile::tempdir_in(&target).unwrap();
        chmod(base.path(), 0o755);
        let safe_chain = base
            .path()
            .ancestors()
            .all(|a| std::fs::metadata(a).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0));
        if me != 0 || !safe_chain {
            eprintln!(
                "skipped the positive case: needs root and a root-owned 0755 chain to the target dir"
            );
            return;
        }
        let run = base.path().join("regent");
        std::fs::create_dir(&run).unwrap();
        std::os::unix::fs::chown(&run, Some(65534), Some(65534)).unwrap();
        let socket = run.join("agent.sock");
        chmod(&run, 0o750);
        assert!(directory_belongs_to(&socket, 65534));
        assert!(!directory_belongs_to(&socket, 65533), "only its owner");
        for writable in [0o770, 0o1777, 0o1757] {
            chmod(&run, writable);
            assert!(!directory_belongs_to(&socket, 65534), "{writable:o}");
        }
        chmod(&run, 0o750);
        chmod(base.path(), 0o1777);
        assert!(
            !directory_belongs_to(&socket, 65534),
            "a writable ancestor, sticky or not"
        );
    }
}
