//! Who is on the other end of a connection, and what they may do.
//!
//! Every connection's peer credentials (uid, gid, pid, and on Linux the
//! supplementary groups: [`super::creds`]) are read from the kernel and
//! checked against `allow_uids` / `allow_groups`; the agent's own uid and
//! root are always allowed. Enrollment and unenrollment need the agent's uid or
//! root (DESIGN §6). The decision is taken again whenever the policy changes
//! (a reload), at the connection's next request or pushed event.
//!
//! `allow_executables` (optional) narrows this to named programs. When it is
//! set, a peer is served only if the program it runs — `/proc/PID/exe`, the
//! path the kernel resolved when the program was started — is one of the
//! listed paths (each canonicalised, symlinks resolved, when the configuration
//! is loaded or reloaded). The rules:
//!
//! - **root is never restricted**: root can read the agent's memory and its
//!   store anyway; refusing root's programs would only break administration.
//! - **the agent's own executable** (the `regent` binary the agent runs from)
//!   stays allowed for the agent's own uid for administration only
//!   ([`Access::Manage`]: `regent status`, `metrics`, `enroll`, `unenroll`),
//!   never for tokens: otherwise any program of that uid could run
//!   `regent token` and pass the list. To fetch tokens with the CLI, list it.
//!   Other uids admitted by `allow_uids` / `allow_groups` must run a listed
//!   program, the `regent` CLI included.
//! - **identity, not a name**: a listed path matches only when the peer's
//!   program is the very file at that path as the agent sees it (same device
//!   and inode, `stat` of `/proc/PID/exe` against `stat` of the path now), and
//!   the peer runs in the agent's mount namespace. A bind mount in a private
//!   mount namespace (`unshare -Urm`) can show any path in `/proc/PID/exe`.
//! - **one process**: where the kernel hands out a pidfd for the peer
//!   (`SO_PEERPIDFD`, Linux ≥ 6.5), the process must still be alive after
//!   `/proc/PID` was read, so a reused pid cannot stand in for it. The path
//!   checked is the one audit lines name; it is never read again.
//! - **fail closed**: a peer whose executable cannot be established is
//!   refused: its binary was deleted or replaced since it started (`/proc`
//!   shows `… (deleted)`), `/proc/PID/exe` is unreadable (a non-root agent can
//!   read it only for processes of its own uid; the kernel denies it for other
//!   uids and for non-dumpable processes), or the platform cannot name a
//!   peer's program (Windows: the list then refuses every peer but root).
//!
//! **macOS** has no `/proc`: the pid comes from `LOCAL_PEERPID`, the program
//! from `proc_pidpath`, and the process is pinned by its start time and uid
//! read when the connection is accepted (`ipc/macos.rs`). There is no
//! mount namespace to compare, and the file identity is that of the file at
//! the path `proc_pidpath` names *now*, so a program whose file was replaced
//! after it started is not told apart. This code is compiled and linted for
//! macOS in CI but has never run on a Mac.
//!
//! This identifies programs, not scripts: listing an interpreter admits every
//! script it runs. It is a guard against the wrong program of an allowed user
//! asking for tokens, not a boundary against a determined same-uid attacker,
//! who can ptrace an allowed program, or connect and then `exec` an allowed
//! program while a child keeps the socket (the check reads `/proc` when the
//! connection is accepted).

mod accounts;
mod exe;
#[cfg(target_os = "macos")]
mod macos;
mod policy;
// Its `impl Peer` is the non-macOS one (macOS has its own in `macos.rs`).
#[cfg(not(target_os = "macos"))]
mod windows;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

#[cfg(target_os = "linux")]
use std::os::fd::BorrowedFd;

pub use self::accounts::*;
pub use self::exe::*;
pub use self::policy::*;

/// A connected peer's identity, as the kernel reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// Effective uid, when the platform reports it.
    pub uid: Option<u32>,
    /// Effective gid, when the platform reports it.
    pub gid: Option<u32>,
    /// Process id, when the platform reports it.
    pub pid: Option<u32>,
    /// Supplementary groups, when the platform reports them.
    pub groups: Vec<u32>,
    /// Windows: the user SID of the client process's token (`S-1-5-21-…`).
    pub sid: Option<String>,
    /// Windows: the token's enabled groups (not the deny-only ones, such as
    /// a non-elevated administrator's Administrators).
    pub group_sids: Vec<String>,
    /// Windows: the client process's image path, read with its account while
    /// the process was held open.
    pub image: Option<PathBuf>,
}

impl Peer {
    /// The peer's executable as `/proc/PID/exe` names it (Windows: its image
    /// path read at connect), for audit lines when `allow_executables` is not
    /// set (nothing is checked then).
    #[cfg(not(target_os = "macos"))]
    pub fn executable(&self) -> Option<PathBuf> {
        if cfg!(windows) {
            return self.image.clone();
        }
        let pid = self.pid?;
        std::fs::read_link(format!("/proc/{pid}/exe")).ok()
    }

    /// The peer's executable, for the `allow_executables` check: its path,
    /// its file's identity, and whether it shares the agent's mount
    /// namespace. With a `pidfd` (Linux ≥ 6.5) the process must be the same
    /// one before and after `/proc/PID` is read.
    #[cfg(not(target_os = "macos"))]
    pub fn lookup_executable(&self, pidfd: Option<PinnedProcess<'_>>) -> ExeLookup {
        let Some(pid) = self.pid else {
            return ExeLookup::Unknown("the kernel reported no process id".into());
        };
        if cfg!(windows) {
            let _ = pidfd;
            return self.windows_executable(pid);
        }
        if !cfg!(target_os = "linux") {
            return ExeLookup::Unknown(
                "this platform cannot name a peer's program; allow_executables works on Linux and macOS only".into(),
            );
        }
        let alive = || pidfd.is_none_or(|p| p.is_still(pid));
        if !alive() {
            return ExeLookup::Unknown(format!(
                "process {pid} exited before its program could be checked"
            ));
        }
        let exe = format!("/proc/{pid}/exe");
        let link = match std::fs::read_link(&exe) {
            Ok(path) => path,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return ExeLookup::Unknown(format!(
                    "/proc/{pid}/exe is not readable by the agent (uid {}): an agent that is not root can only see the programs of its own uid's processes",
                    current_uid()
                ));
            }
            Err(e) => return ExeLookup::Unknown(format!("cannot read /proc/{pid}/exe: {e}")),
        };
        let id = file_id(Path::new(&exe));
        let namespace = mount_namespace(&format!("/proc/{pid}/ns/mnt"));
        let ours = mount_namespace("/proc/self/ns/mnt");
        if !alive() {
            return ExeLookup::Unknown(format!(
                "process {pid} exited while its program was being checked"
            ));
        }
        let (path, deleted) = split_deleted(link);
        match (namespace, ours) {
            (Some(theirs), Some(ours)) if theirs == ours => {}
            (theirs, _) => {
                return ExeLookup::ForeignNamespace {
                    path,
                    namespace: theirs.unwrap_or_else(|| "unknown".to_owned()),
                };
            }
        }
        if deleted {
            return ExeLookup::Deleted(path);
        }
        match id {
            Some(id) => ExeLookup::Found(Executable { path, id }),
            None => ExeLookup::Unknown(format!("cannot stat /proc/{pid}/exe")),
        }
    }
}

/// A peer's process pinned by a pidfd (Linux ≥ 6.5), or by the stamp read
/// when its connection was accepted (macOS).
#[derive(Debug, Clone, Copy)]
pub struct PinnedProcess<'a> {
    #[cfg(target_os = "linux")]
    fd: BorrowedFd<'a>,
    #[cfg(not(target_os = "linux"))]
    fd: std::marker::PhantomData<&'a ()>,
    #[cfg(target_os = "macos")]
    stamp: super::macos::Stamp,
}

impl<'a> PinnedProcess<'a> {
    /// The process a pidfd refers to.
    #[cfg(target_os = "linux")]
    pub fn new(fd: BorrowedFd<'a>) -> PinnedProcess<'a> {
        PinnedProcess { fd }
    }

    /// The process that had `stamp` when its connection was accepted (macOS).
    #[cfg(target_os = "macos")]
    pub fn stamped(stamp: super::macos::Stamp) -> PinnedProcess<'static> {
        PinnedProcess {
            fd: std::marker::PhantomData,
            stamp,
        }
    }

    /// Whether the pinned process is alive and still has `pid`.
    pub(crate) fn is_still(self, pid: u32) -> bool {
        #[cfg(target_os = "linux")]
        {
            super::creds::pidfd_pid(self.fd) == Some(pid)
        }
        #[cfg(target_os = "macos")]
        {
            super::macos::stamp(pid) == Some(self.stamp)
        }
        #[cfg(not(any(target_os = "linux", target_os = "macos")))]
        {
            let _ = (self, pid);
            true
        }
    }
}

#[cfg(test)]
mod tests;
