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

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

#[cfg(target_os = "linux")]
use std::os::fd::BorrowedFd;

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
}

impl Peer {
    /// The peer's executable as `/proc/PID/exe` names it, for audit lines
    /// when `allow_executables` is not set (nothing is checked then).
    #[cfg(not(target_os = "macos"))]
    pub fn executable(&self) -> Option<PathBuf> {
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

/// A file's identity: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

/// The identity of the file at `path` (symlinks followed), now.
pub fn file_id(path: &Path) -> Option<FileId> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        Some(FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// A mount namespace link's text, e.g. `mnt:[4026531841]`.
#[cfg(not(target_os = "macos"))]
fn mount_namespace(link: &str) -> Option<String> {
    std::fs::read_link(link)
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// A peer's program: the path `/proc/PID/exe` names and the file's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executable {
    /// The path, as the kernel names it.
    pub path: PathBuf,
    /// The running file's device and inode.
    pub id: FileId,
}

/// What `/proc/PID/exe` says about a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExeLookup {
    /// The program.
    Found(Executable),
    /// The program's file was deleted or replaced after the process started;
    /// the path it had.
    Deleted(PathBuf),
    /// The process runs in another mount namespace, where paths name other
    /// files (a container, or `unshare -m` with a bind mount).
    ForeignNamespace {
        /// The path `/proc/PID/exe` shows (meaningful in that namespace only).
        path: PathBuf,
        /// Its mount namespace, e.g. `mnt:[4026532175]`.
        namespace: String,
    },
    /// Not known, and why.
    Unknown(String),
}

/// The kernel appends this to `/proc/PID/exe` when the file was unlinked.
const DELETED_SUFFIX: &str = " (deleted)";

/// Splits off the kernel's ` (deleted)` marker: the path, and whether the
/// file was deleted or replaced since the process started.
fn split_deleted(path: PathBuf) -> (PathBuf, bool) {
    let text = path.as_os_str().as_encoded_bytes();
    match text.strip_suffix(DELETED_SUFFIX.as_bytes()) {
        Some(before) => (
            PathBuf::from(String::from_utf8_lossy(before).into_owned()),
            true,
        ),
        None => (path, false),
    }
}

/// A path as logs and messages show it: control characters (a newline that
/// would forge a log line, an escape sequence for a terminal) escaped.
pub fn shown(path: &Path) -> String {
    path.to_string_lossy().escape_debug().to_string()
}

/// Why a peer is refused: an audit reason and the message it receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The audit line's text (fixed, greppable).
    pub reason: &'static str,
    /// The executable, when known, for the audit line.
    pub exe: Option<PathBuf>,
    /// What the client is told: what was refused and which key to change.
    pub message: String,
}

/// The access policy for connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The agent's own uid.
    pub own_uid: u32,
    /// Extra uids allowed to fetch tokens.
    pub allow_uids: Vec<u32>,
    /// Gids allowed to fetch tokens.
    pub allow_gids: Vec<u32>,
    /// Canonical paths of the programs that may connect; empty: any program.
    pub allow_executables: Vec<PathBuf>,
    /// The agent's own executable, allowed for the agent's uid when
    /// `allow_executables` is set (the `regent` CLI).
    pub own_exe: Option<PathBuf>,
}

/// What a peer may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Nothing: the connection is refused.
    Denied,
    /// Fetch tokens, subscribe, read status.
    Tokens,
    /// Administration without tokens: the agent's own CLI run by the agent's
    /// uid while `allow_executables` does not list it (status, metrics,
    /// enroll, unenroll).
    Manage,
    /// Everything, including enroll and unenroll.
    Admin,
}

impl Access {
    /// May enroll, unenroll, and see identifiers and lease holders.
    pub fn administers(self) -> bool {
        matches!(self, Access::Admin | Access::Manage)
    }

    /// May fetch tokens and subscribe.
    pub fn fetches_tokens(self) -> bool {
        matches!(self, Access::Admin | Access::Tokens)
    }
}

/// A peer let in: what it may do, and the program that was checked against
/// `allow_executables` (named in audit lines; `None` when nothing was checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// What the peer may do.
    pub access: Access,
    /// The program checked, as `/proc/PID/exe` named it then.
    pub exe: Option<PathBuf>,
}

impl Policy {
    /// The policy for this process with the configured allow lists;
    /// `allow_executables` must already be canonical ([`resolve_executables`]).
    pub fn new(
        allow_uids: Vec<u32>,
        allow_gids: Vec<u32>,
        allow_executables: Vec<PathBuf>,
    ) -> Policy {
        Policy {
            own_uid: current_uid(),
            allow_uids,
            allow_gids,
            allow_executables,
            own_exe: own_executable(),
        }
    }

    /// Decides whether `peer` is served and with what access: first by uid
    /// ([`Policy::access`]), then, when `allow_executables` is set, by the
    /// program `exe` looks up (called only then): its path must be listed
    /// and the file at that path now (as the agent sees it) must be the very
    /// file the process runs.
    ///
    /// # Errors
    /// The refusal to log and to send the peer.
    pub fn decide(
        &self,
        peer: &Peer,
        exe: impl FnOnce() -> ExeLookup,
    ) -> std::result::Result<Admitted, Refusal> {
        let access = self.access(peer);
        if access == Access::Denied {
            return Err(Refusal {
                reason: "connection refused: uid not allowed",
                exe: None,
                message: format!(
                    "uid {} may not use this agent; an administrator can add it to [ipc] allow_uids (or its group to allow_groups)",
                    peer.uid
                        .map_or_else(|| "unknown".to_owned(), |u| u.to_string())
                ),
            });
        }
        if self.allow_executables.is_empty() || peer.uid == Some(0) {
            return Ok(Admitted { access, exe: None });
        }
        let pid = peer
            .pid
            .map_or_else(|| "unknown".to_owned(), |p| p.to_string());
        match exe() {
            ExeLookup::Found(exe) => {
                let is = |listed: &Path| listed == exe.path && file_id(listed) == Some(exe.id);
                if self.allow_executables.iter().any(|p| is(p)) {
                    return Ok(Admitted {
                        access,
                        exe: Some(exe.path),
                    });
                }
                if access == Access::Admin && self.own_exe.as_deref().is_some_and(is) {
                    return Ok(Admitted {
                        access: Access::Manage,
                        exe: Some(exe.path),
                    });
                }
                let listed = self.allow_executables.contains(&exe.path)
                    || (access == Access::Admin && self.own_exe.as_ref() == Some(&exe.path));
                let message = if listed {
                    format!(
                        "{} (pid {pid}) is not the file at that path as the agent sees it (a bind mount, or the file was replaced after the process started), so [ipc] allow_executables cannot vouch for it; restart the program from the listed path",
                        shown(&exe.path)
                    )
                } else {
                    format!(
                        "{} (pid {pid}) is not in [ipc] allow_executables; an administrator can add its path there",
                        shown(&exe.path)
                    )
                };
                Err(Refusal {
                    reason: if listed {
                        "connection refused: executable is another file"
                    } else {
                        "connection refused: executable not allowed"
                    },
                    message,
                    exe: Some(exe.path),
                })
            }
            ExeLookup::Deleted(path) => Err(Refusal {
                reason: "connection refused: executable deleted or replaced",
                message: format!(
                    "the program of pid {pid}, {}, was deleted or replaced after it started, so [ipc] allow_executables cannot vouch for it; restart the program",
                    shown(&path)
                ),
                exe: Some(path),
            }),
            ExeLookup::ForeignNamespace { path, namespace } => Err(Refusal {
                reason: "connection refused: another mount namespace",
                message: format!(
                    "pid {pid} runs {} in another mount namespace ({namespace}) than the agent's, where a path may name another file, so [ipc] allow_executables cannot vouch for it; run the program in the agent's mount namespace",
                    shown(&path)
                ),
                exe: Some(path),
            }),
            ExeLookup::Unknown(why) => Err(Refusal {
                reason: "connection refused: executable unknown",
                exe: None,
                message: format!(
                    "cannot tell which program pid {pid} runs ({why}); [ipc] allow_executables is set, so the connection is refused"
                ),
            }),
        }
    }

    /// Decides what `peer` may do. A peer whose uid cannot be read is refused
    /// on platforms that report it (Unix); named pipes rely on their security
    /// descriptor instead.
    pub fn access(&self, peer: &Peer) -> Access {
        let Some(uid) = peer.uid else {
            return if cfg!(unix) {
                Access::Denied
            } else {
                Access::Admin
            };
        };
        if uid == self.own_uid || uid == 0 {
            return Access::Admin;
        }
        if self.allow_uids.contains(&uid) {
            return Access::Tokens;
        }
        let in_group = peer
            .gid
            .iter()
            .chain(peer.groups.iter())
            .any(|g| self.allow_gids.contains(g));
        if in_group {
            Access::Tokens
        } else {
            Access::Denied
        }
    }
}

/// This process's effective uid.
pub fn current_uid() -> u32 {
    #[cfg(unix)]
    {
        nix::unistd::geteuid().as_raw()
    }
    #[cfg(not(unix))]
    {
        0
    }
}

/// The agent's own executable, read once (before a package upgrade can
/// replace the file and `/proc/self/exe` starts saying `(deleted)`).
pub fn own_executable() -> Option<PathBuf> {
    static OWN: OnceLock<Option<PathBuf>> = OnceLock::new();
    OWN.get_or_init(|| {
        let path = std::env::current_exe().ok()?;
        let (path, _) = split_deleted(path);
        Some(std::fs::canonicalize(&path).unwrap_or(path))
    })
    .clone()
}

/// Resolves `allow_executables` entries to canonical paths (symlinks
/// resolved), as `/proc/PID/exe` reports programs. An entry that does not
/// exist (yet) is kept as written — it can only match a program at exactly
/// that path — and reported in the second list, for a warning.
pub fn resolve_executables(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<String>) {
    let mut resolved = Vec::with_capacity(paths.len());
    let mut warnings = Vec::new();
    for path in paths {
        match std::fs::canonicalize(path) {
            Ok(canonical) => {
                if !canonical.is_file() {
                    warnings.push(format!(
                        "[ipc] allow_executables: {} is not a regular file; no program can match it",
                        path.display()
                    ));
                }
                resolved.push(canonical);
            }
            Err(e) => {
                warnings.push(format!(
                    "[ipc] allow_executables: cannot resolve {} ({e}); it is matched as written until the configuration is reloaded",
                    path.display()
                ));
                resolved.push(normalize(path));
            }
        }
    }
    (resolved, warnings)
}

/// Removes `.` components and trailing slashes (no filesystem access).
fn normalize(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

/// Resolves `allow_groups` entries (names or numeric gids) to gids.
///
/// # Errors
/// A message naming the group that does not exist.
pub fn resolve_groups(groups: &[String]) -> Result<Vec<u32>, String> {
    groups
        .iter()
        .map(|g| {
            if let Ok(gid) = g.parse::<u32>() {
                return Ok(gid);
            }
            #[cfg(unix)]
            {
                match nix::unistd::Group::from_name(g) {
                    Ok(Some(group)) => Ok(group.gid.as_raw()),
                    Ok(None) => Err(format!(
                        "[ipc] allow_groups: no group named {g:?} on this system"
                    )),
                    Err(e) => Err(format!(
                        "[ipc] allow_groups: cannot look up group {g:?}: {e}"
                    )),
                }
            }
            #[cfg(not(unix))]
            {
                Err(format!(
                    "[ipc] allow_groups: group names are not supported on this platform ({g:?})"
                ))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid: Some(uid),
            gid: Some(gid),
            pid: Some(1),
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn own_uid_and_root_are_admins_others_need_a_list() {
        let policy = Policy {
            own_uid: 1000,
            allow_uids: vec![1001],
            allow_gids: vec![50],
            allow_executables: Vec::new(),
            own_exe: None,
        };
        assert_eq!(policy.access(&peer(1000, 1000, &[])), Access::Admin);
        assert_eq!(policy.access(&peer(0, 0, &[])), Access::Admin);
        assert_eq!(policy.access(&peer(1001, 1001, &[])), Access::Tokens);
        assert_eq!(policy.access(&peer(1002, 50, &[])), Access::Tokens);
        assert_eq!(policy.access(&peer(1003, 1003, &[50])), Access::Tokens);
        assert_eq!(policy.access(&peer(1004, 1004, &[51])), Access::Denied);
        let unknown = Peer::default();
        if cfg!(unix) {
            assert_eq!(policy.access(&unknown), Access::Denied);
        }
    }

    /// Real files, so that identities can be compared: `app`, `other`,
    /// `regent` (the agent's own executable) and a copy of `app` (same
    /// bytes, another file) in a temporary directory.
    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Files {
            let dir = tempfile::tempdir().unwrap();
            for name in ["app", "other", "regent", "app-copy"] {
                std::fs::write(dir.path().join(name), b"#!/bin/sh\n").unwrap();
            }
            Files { dir }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn listing(&self, exes: &[&str]) -> Policy {
            Policy {
                own_uid: 1000,
                allow_uids: vec![1001],
                allow_gids: Vec::new(),
                allow_executables: exes.iter().map(|e| self.path(e)).collect(),
                own_exe: Some(self.path("regent")),
            }
        }

        /// The process runs `name`, shown at the path of `shown_as`.
        fn runs(&self, name: &str, shown_as: &str) -> impl FnOnce() -> ExeLookup + use<> {
            let exe = Executable {
                path: self.path(shown_as),
                id: file_id(&self.path(name)).unwrap(),
            };
            move || ExeLookup::Found(exe)
        }

        fn found(&self, name: &str) -> impl FnOnce() -> ExeLookup + use<> {
            self.runs(name, name)
        }
    }

    fn admitted(access: Access) -> Result<Access, &'static str> {
        Ok(access)
    }

    fn outcome(decided: Result<Admitted, Refusal>) -> Result<Access, &'static str> {
        decided.map(|a| a.access).map_err(|r| r.reason)
    }

    #[test]
    fn without_a_list_the_executable_is_never_looked_up() {
        let files = Files::new();
        let policy = files.listing(&[]);
        let decided = policy.decide(&peer(1000, 1000, &[]), || unreachable!());
        assert_eq!(
            decided,
            Ok(Admitted {
                access: Access::Admin,
                exe: None
            })
        );
    }

    #[test]
    fn a_listed_executable_is_served_others_are_refused_by_name() {
        let files = Files::new();
        let policy = files.listing(&["app"]);
        let decided = policy.decide(&peer(1000, 1000, &[]), files.found("app"));
        assert_eq!(
            decided,
            Ok(Admitted {
                access: Access::Admin,
                exe: Some(files.path("app"))
            })
        );
        assert_eq!(
            outcome(policy.decide(&peer(1001, 1001, &[]), files.found("app"))),
            admitted(Access::Tokens)
        );
        let refusal = policy
            .decide(&peer(1000, 1000, &[]), files.found("other"))
            .unwrap_err();
        assert_eq!(refusal.reason, "connection refused: executable not allowed");
        let other = files.path("other").display().to_string();
        assert!(refusal.message.contains(&other), "{}", refusal.message);
        assert!(
            refusal.message.contains("[ipc] allow_executables"),
            "{}",
            refusal.message
        );
        assert!(refusal.message.contains("pid 1"), "{}", refusal.message);
    }

    #[test]
    fn a_listed_path_must_be_the_very_file_the_process_runs() {
        // A bind mount (or a replaced file) shows the listed path for
        // another file: same name, same bytes, another inode.
        let files = Files::new();
        let policy = files.listing(&["app"]);
        let refusal = policy
            .decide(&peer(1001, 1001, &[]), files.runs("app-copy", "app"))
            .unwrap_err();
        assert_eq!(
            refusal.reason,
            "connection refused: executable is another file"
        );
        assert!(
            refusal.message.contains("bind mount"),
            "{}",
            refusal.message
        );
        // The agent's own path, too.
        assert_eq!(
            outcome(policy.decide(&peer(1000, 1000, &[]), files.runs("app-copy", "regent"))),
            Err("connection refused: executable is another file")
        );
    }

    #[test]
    fn the_agents_own_executable_administers_but_fetches_no_tokens() {
        let files = Files::new();
        let policy = files.listing(&["app"]);
        let decided = outcome(policy.decide(&peer(1000, 1000, &[]), files.found("regent")));
        assert_eq!(decided, admitted(Access::Manage));
        assert!(Access::Manage.administers() && !Access::Manage.fetches_tokens());
        // Listed, the CLI is a program like any other: tokens too.
        let policy = files.listing(&["app", "regent"]);
        assert_eq!(
            outcome(policy.decide(&peer(1000, 1000, &[]), files.found("regent"))),
            admitted(Access::Admin)
        );
        // Another allowed uid running the CLI must be listed like any program.
        let policy = files.listing(&["app"]);
        assert!(
            policy
                .decide(&peer(1001, 1001, &[]), files.found("regent"))
                .is_err()
        );
        // A uid that is not allowed at all is refused before any lookup.
        let refusal = policy
            .decide(&peer(1002, 1002, &[]), || unreachable!())
            .unwrap_err();
        assert_eq!(refusal.reason, "connection refused: uid not allowed");
    }

    #[test]
    fn root_is_never_restricted_by_the_list() {
        let files = Files::new();
        let policy = files.listing(&["app"]);
        assert_eq!(
            outcome(policy.decide(&peer(0, 0, &[]), || unreachable!())),
            admitted(Access::Admin)
        );
    }

    #[test]
    fn deleted_unknown_or_foreign_executables_fail_closed() {
        let files = Files::new();
        let policy = files.listing(&["app"]);
        let app = files.path("app");
        let refusal = policy
            .decide(&peer(1000, 1000, &[]), || ExeLookup::Deleted(app.clone()))
            .unwrap_err();
        assert_eq!(
            refusal.reason,
            "connection refused: executable deleted or replaced"
        );
        assert!(
            refusal.message.contains(&app.display().to_string()),
            "{}",
            refusal.message
        );
        assert!(refusal.message.contains("restart"), "{}", refusal.message);
        let refusal = policy
            .decide(&peer(1000, 1000, &[]), || {
                ExeLookup::Unknown("this platform has no /proc/PID/exe".into())
            })
            .unwrap_err();
        assert_eq!(refusal.reason, "connection refused: executable unknown");
        assert!(
            refusal.message.contains("no /proc/PID/exe")
                && refusal.message.contains("allow_executables"),
            "{}",
            refusal.message
        );
        let refusal = policy
            .decide(&peer(1000, 1000, &[]), || ExeLookup::ForeignNamespace {
                path: app.clone(),
                namespace: "mnt:[1]".into(),
            })
            .unwrap_err();
        assert_eq!(
            refusal.reason,
            "connection refused: another mount namespace"
        );
        assert!(refusal.message.contains("mnt:[1]"), "{}", refusal.message);
    }

    #[test]
    fn paths_are_shown_with_control_characters_escaped() {
        let forged = Path::new("/tmp/x\n2026-01-01 INFO forged\u{1b}[2J");
        let text = shown(forged);
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert!(text.contains("\\n") && text.contains("\\u{1b}"), "{text}");
    }

    #[test]
    fn the_kernels_deleted_marker_is_recognised() {
        assert_eq!(
            split_deleted(PathBuf::from("/usr/bin/app (deleted)")),
            (PathBuf::from("/usr/bin/app"), true)
        );
        assert_eq!(
            split_deleted(PathBuf::from("/usr/bin/app")),
            (PathBuf::from("/usr/bin/app"), false)
        );
    }

    #[cfg(unix)]
    #[test]
    fn configured_paths_are_canonicalised_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real-app");
        std::fs::write(&real, b"#!/bin/sh\n").unwrap();
        let link = dir.path().join("app");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let missing = dir.path().join("./not-installed-yet");
        let (resolved, warnings) = resolve_executables(&[link, missing]);
        assert_eq!(resolved[0], std::fs::canonicalize(&real).unwrap());
        assert_eq!(resolved[1], dir.path().join("not-installed-yet"));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("not-installed-yet"), "{warnings:?}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_found_through_proc() {
        let me = Peer {
            uid: Some(current_uid()),
            gid: None,
            pid: Some(std::process::id()),
            groups: Vec::new(),
        };
        // Deleted too: another build may replace the test binary mid-run.
        match me.lookup_executable(None) {
            ExeLookup::Found(Executable { path, .. }) | ExeLookup::Deleted(path) => {
                assert_eq!(path, own_executable().unwrap());
            }
            other => panic!("{other:?}"),
        }
        let gone = Peer {
            pid: Some(u32::MAX / 2),
            ..me
        };
        assert!(matches!(
            gone.lookup_executable(None),
            ExeLookup::Unknown(_)
        ));
    }

    #[test]
    fn groups_resolve_by_number_and_name() {
        assert_eq!(resolve_groups(&["42".into()]).unwrap(), vec![42]);
        assert_eq!(resolve_groups(&["root".into()]).unwrap(), vec![0]);
        let e = resolve_groups(&["no-such-group-xyz".into()]).unwrap_err();
        assert!(e.contains("no-such-group-xyz"));
    }
}
