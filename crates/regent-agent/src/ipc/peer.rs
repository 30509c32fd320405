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

#[cfg(not(target_os = "macos"))]
impl Peer {
    /// Windows: the image path read at connect (`QueryFullProcessImageNameW`)
    /// and the identity of the file at that path now (volume serial number
    /// and file index).
    fn windows_executable(&self, pid: u32) -> ExeLookup {
        let Some(path) = self.image.clone() else {
            return ExeLookup::Unknown(format!(
                "the image path of process {pid} could not be read"
            ));
        };
        match file_id(&path) {
            Some(id) => ExeLookup::Found(Executable { path, id }),
            None => ExeLookup::Unknown(format!(
                "cannot open {}, the image of process {pid}, to identify it",
                shown(&path)
            )),
        }
    }
}

/// macOS: the program from `proc_pidpath` (`ipc/macos.rs`), the process
/// pinned by its stamp.
#[cfg(target_os = "macos")]
impl Peer {
    /// The peer's executable as `proc_pidpath` names it, for audit lines
    /// when `allow_executables` is not set (nothing is checked then).
    pub fn executable(&self) -> Option<PathBuf> {
        super::macos::program(self.pid?).ok()
    }

    /// The peer's executable, for the `allow_executables` check (macOS): the
    /// path `proc_pidpath` names and the identity of the file at that path.
    /// The process must carry the stamp read when the connection was
    /// accepted before and after the path is read; without a stamp the peer
    /// is refused.
    pub fn lookup_executable(&self, pinned: Option<PinnedProcess<'_>>) -> ExeLookup {
        let Some(pid) = self.pid else {
            return ExeLookup::Unknown("the kernel reported no process id (LOCAL_PEERPID)".into());
        };
        let Some(pinned) = pinned else {
            return ExeLookup::Unknown(format!(
                "process {pid} could not be pinned (proc_pidinfo refused, or the pid now belongs to another process)"
            ));
        };
        if !pinned.is_still(pid) {
            return ExeLookup::Unknown(format!(
                "process {pid} exited before its program could be checked"
            ));
        }
        let path = match super::macos::program(pid) {
            Ok(path) => path,
            Err(e) => return ExeLookup::Unknown(format!("proc_pidpath({pid}) failed: {e}")),
        };
        let meta = std::fs::metadata(&path);
        if !pinned.is_still(pid) {
            return ExeLookup::Unknown(format!(
                "process {pid} exited while its program was being checked"
            ));
        }
        match meta {
            Ok(meta) => {
                use std::os::unix::fs::MetadataExt;
                let id = FileId {
                    dev: meta.dev(),
                    ino: meta.ino(),
                };
                ExeLookup::Found(Executable { path, id })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ExeLookup::Deleted(path),
            Err(e) => ExeLookup::Unknown(format!("cannot stat {}: {e}", shown(&path))),
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

/// A file's identity: device and inode (Windows: the volume's serial number
/// and the file index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    /// Device number (Windows: volume serial number).
    pub dev: u64,
    /// Inode number (Windows: file index).
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
    #[cfg(windows)]
    {
        let (dev, ino) = regent_client::win32::file_identity(path).ok()?;
        Some(FileId { dev, ino })
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = path;
        None
    }
}

/// Whether two program paths name the same path: byte for byte on Unix; on
/// Windows as Windows compares them ([`windows_path_key`]).
fn same_path(a: &Path, b: &Path) -> bool {
    if cfg!(windows) {
        windows_path_key(&a.to_string_lossy()) == windows_path_key(&b.to_string_lossy())
    } else {
        a == b
    }
}

/// A Windows path in a form to compare: without the verbatim prefix
/// (`strip_verbatim`), `/` read as `\`, and each character upper-cased
/// when that gives one character, as Windows' case-insensitive comparison of
/// NTFS names does (its upcase table maps characters one to one).
pub fn windows_path_key(path: &str) -> String {
    strip_verbatim(&path.replace('/', "\\"))
        .chars()
        .map(|c| {
            let mut upper = c.to_uppercase();
            match (upper.next(), upper.next()) {
                (Some(u), None) => u,
                _ => c,
            }
        })
        .collect()
}

/// Removes the `\\?\` (verbatim) prefix that `canonicalize` adds on
/// Windows: `\\?\C:\x` → `C:\x`, `\\?\UNC\server\x` → `\\server\x`.
fn strip_verbatim(path: &str) -> String {
    if let Some(rest) = path.strip_prefix(r"\\?\UNC\") {
        format!(r"\\{rest}")
    } else if let Some(rest) = path.strip_prefix(r"\\?\") {
        rest.to_owned()
    } else {
        path.to_owned()
    }
}

/// `path` canonicalised (symlinks resolved); on Windows without the
/// verbatim prefix, so that it reads as programs' image paths do.
fn canonical(path: &Path) -> std::io::Result<PathBuf> {
    let path = std::fs::canonicalize(path)?;
    if cfg!(windows) {
        return Ok(PathBuf::from(strip_verbatim(&path.to_string_lossy())));
    }
    Ok(path)
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
    // As `escape_debug` (control and invisible characters), except that
    // backslashes and quotes stay as they are: a Windows path reads as one.
    path.to_string_lossy()
        .chars()
        .map(|c| match c {
            '\\' | '"' | '\'' => c.to_string(),
            _ => c.escape_debug().to_string(),
        })
        .collect()
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

/// LocalSystem, the account of services by default: Windows' root.
pub const LOCAL_SYSTEM_SID: &str = "S-1-5-18";
/// The builtin Administrators group; enabled in a token only when elevated.
pub const ADMINISTRATORS_SID: &str = "S-1-5-32-544";

/// The access policy for connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The agent's own uid.
    pub own_uid: u32,
    /// Extra uids allowed to fetch tokens (`allow_uids`, and on Unix the
    /// users `allow_users` names).
    pub allow_uids: Vec<u32>,
    /// Gids allowed to fetch tokens.
    pub allow_gids: Vec<u32>,
    /// Windows: the agent's own account's SID.
    pub own_sid: Option<String>,
    /// Windows: user SIDs allowed to fetch tokens (`allow_users`).
    pub allow_sids: Vec<String>,
    /// Windows: group SIDs allowed to fetch tokens (`allow_groups`), matched
    /// against a client's enabled groups.
    pub allow_group_sids: Vec<String>,
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
            own_sid: current_sid(),
            allow_sids: Vec::new(),
            allow_group_sids: Vec::new(),
            allow_executables,
            own_exe: own_executable(),
        }
    }

    /// Whether `peer` is the platform's superuser, whom `allow_executables`
    /// never restricts: root, or LocalSystem on Windows (both can read the
    /// agent's memory and its store anyway).
    fn unrestricted(peer: &Peer) -> bool {
        match &peer.sid {
            Some(sid) => sid.eq_ignore_ascii_case(LOCAL_SYSTEM_SID),
            None => peer.uid == Some(0),
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
            return Err(match &peer.sid {
                Some(sid) => Refusal {
                    reason: "connection refused: account not allowed",
                    exe: None,
                    message: format!(
                        "account {sid} may not use this agent; an administrator can add it to [ipc] allow_users (by name or SID), or one of its groups to allow_groups"
                    ),
                },
                None if peer.uid.is_none() && cfg!(windows) => Refusal {
                    reason: "connection refused: client unidentified",
                    exe: None,
                    message: format!(
                        "the agent could not read which account runs this client (pid {}), so it is refused; see the agent's log",
                        peer.pid
                            .map_or_else(|| "unknown".to_owned(), |p| p.to_string())
                    ),
                },
                None => Refusal {
                    reason: "connection refused: uid not allowed",
                    exe: None,
                    message: format!(
                        "uid {} may not use this agent; an administrator can add it to [ipc] allow_uids or allow_users (or its group to allow_groups)",
                        peer.uid
                            .map_or_else(|| "unknown".to_owned(), |u| u.to_string())
                    ),
                },
            });
        }
        if self.allow_executables.is_empty() || Policy::unrestricted(peer) {
            return Ok(Admitted { access, exe: None });
        }
        let pid = peer
            .pid
            .map_or_else(|| "unknown".to_owned(), |p| p.to_string());
        match exe() {
            ExeLookup::Found(exe) => {
                let is =
                    |listed: &Path| same_path(listed, &exe.path) && file_id(listed) == Some(exe.id);
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
                let listed = self
                    .allow_executables
                    .iter()
                    .any(|p| same_path(p, &exe.path))
                    || (access == Access::Admin
                        && self
                            .own_exe
                            .as_deref()
                            .is_some_and(|own| same_path(own, &exe.path)));
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

    /// Decides what `peer` may do: by its Windows account when it has one
    /// ([`Policy::account_access`]), else by uid. A peer whose identity
    /// cannot be read is refused.
    pub fn access(&self, peer: &Peer) -> Access {
        if let Some(sid) = &peer.sid {
            return self.account_access(sid, &peer.group_sids);
        }
        let Some(uid) = peer.uid else {
            return Access::Denied;
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

impl Policy {
    /// Windows: the agent's own account, LocalSystem and elevated
    /// administrators (Administrators enabled in the token) administer;
    /// `allow_users` and `allow_groups` (enabled groups only) fetch tokens;
    /// everyone else is refused. SIDs compare case-insensitively.
    pub fn account_access(&self, sid: &str, groups: &[String]) -> Access {
        let is = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
        if self.own_sid.as_deref().is_some_and(|own| is(own, sid))
            || is(sid, LOCAL_SYSTEM_SID)
            || groups.iter().any(|g| is(g, ADMINISTRATORS_SID))
        {
            return Access::Admin;
        }
        if self.allow_sids.iter().any(|a| is(a, sid)) {
            return Access::Tokens;
        }
        let in_group = groups
            .iter()
            .any(|g| self.allow_group_sids.iter().any(|a| is(a, g)));
        if in_group {
            Access::Tokens
        } else {
            Access::Denied
        }
    }
}

/// This process's account SID (Windows); `None` elsewhere, or when it
/// cannot be read (then no peer is the agent's own account).
pub fn current_sid() -> Option<String> {
    #[cfg(windows)]
    {
        static OWN: OnceLock<Option<String>> = OnceLock::new();
        OWN.get_or_init(|| regent_client::win32::own_user().ok())
            .clone()
    }
    #[cfg(not(windows))]
    {
        None
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
        Some(canonical(&path).unwrap_or(path))
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
        match canonical(path) {
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

/// Resolves `allow_users` entries (user names or numeric uids) to uids (Unix).
///
/// # Errors
/// A message naming the user that does not exist.
pub fn resolve_users(users: &[String]) -> Result<Vec<u32>, String> {
    users
        .iter()
        .map(|u| {
            if let Ok(uid) = u.parse::<u32>() {
                return Ok(uid);
            }
            #[cfg(unix)]
            {
                match nix::unistd::User::from_name(u) {
                    Ok(Some(user)) => Ok(user.uid.as_raw()),
                    Ok(None) => Err(format!(
                        "[ipc] allow_users: no user named {u:?} on this system; correct the name or remove it"
                    )),
                    Err(e) => Err(format!("[ipc] allow_users: cannot look up user {u:?}: {e}")),
                }
            }
            #[cfg(not(unix))]
            {
                Err(format!(
                    "[ipc] allow_users: user names are not supported on this platform ({u:?})"
                ))
            }
        })
        .collect()
}

/// Whether `text` is a string SID (`S-1-5-21-…`): `S-1-`, then numbers
/// separated by single dashes.
pub fn is_sid(text: &str) -> bool {
    let Some(rest) = text
        .strip_prefix("S-1-")
        .or_else(|| text.strip_prefix("s-1-"))
    else {
        return false;
    };
    !rest.is_empty()
        && rest.split('-').all(|part| {
            !part.is_empty() && part.len() <= 10 && part.bytes().all(|b| b.is_ascii_digit())
        })
}

/// Which `[ipc]` key a Windows account list is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountList {
    /// `allow_users`: user accounts.
    Users,
    /// `allow_groups`: groups (and aliases such as `Administrators`).
    Groups,
}

/// What an account name names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountKind {
    /// A user.
    User,
    /// A group, alias (`Administrators`) or well-known group (`Everyone`).
    Group,
    /// Anything else: a domain, a computer, a label.
    Other,
}

impl AccountList {
    fn key(self) -> &'static str {
        match self {
            AccountList::Users => "allow_users",
            AccountList::Groups => "allow_groups",
        }
    }
}

/// Resolves Windows account entries to SIDs: a string SID is taken as
/// written (upper-case `S`); a name (`alice`, `MACHINE\alice`,
/// `Administrators`) is looked up with `lookup` (`LookupAccountNameW` on
/// Windows), and must be a user for `allow_users`, a group for
/// `allow_groups`.
///
/// # Errors
/// `[ipc] <key>: …` naming the entry and the fix.
pub fn resolve_accounts(
    entries: &[String],
    list: AccountList,
    lookup: impl Fn(&str) -> Result<(String, AccountKind), String>,
) -> Result<Vec<String>, String> {
    let key = list.key();
    entries
        .iter()
        .map(|entry| {
            let entry = entry.trim();
            if is_sid(entry) {
                return Ok(format!("S{}", &entry[1..]));
            }
            if entry.starts_with("S-") || entry.starts_with("s-") {
                return Err(format!(
                    "[ipc] {key}: {entry:?} is not a valid SID (S-1-5-21-… : numbers separated by dashes); correct it or name the account instead"
                ));
            }
            let (sid, kind) = lookup(entry).map_err(|e| {
                format!(
                    "[ipc] {key}: no account named {entry:?} on this machine ({e}); correct the name (DOMAIN\\name for a domain account) or give its SID"
                )
            })?;
            match (list, kind) {
                (AccountList::Users, AccountKind::User)
                | (AccountList::Groups, AccountKind::Group) => Ok(sid),
                (AccountList::Users, AccountKind::Group) => Err(format!(
                    "[ipc] allow_users: {entry:?} is a group ({sid}); list it in allow_groups instead"
                )),
                (AccountList::Groups, AccountKind::User) => Err(format!(
                    "[ipc] allow_groups: {entry:?} is a user ({sid}); list it in allow_users instead"
                )),
                (_, AccountKind::Other) => Err(format!(
                    "[ipc] {key}: {entry:?} ({sid}) is neither a user nor a group; name a user in allow_users or a group in allow_groups"
                )),
            }
        })
        .collect()
}

/// `LookupAccountNameW`: a name's SID and what it names.
///
/// # Errors
/// The system's error, as text.
#[cfg(windows)]
pub fn lookup_account(name: &str) -> Result<(String, AccountKind), String> {
    use regent_client::win32::{AccountKind as Win32Kind, lookup_account};
    match lookup_account(name) {
        Ok((sid, Win32Kind::User)) => Ok((sid, AccountKind::User)),
        Ok((sid, Win32Kind::Group)) => Ok((sid, AccountKind::Group)),
        Ok((sid, Win32Kind::Other)) => Ok((sid, AccountKind::Other)),
        Err(e) => Err(e.to_string()),
    }
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
            ..Peer::default()
        }
    }

    #[test]
    fn own_uid_and_root_are_admins_others_need_a_list() {
        let policy = Policy {
            own_uid: 1000,
            allow_uids: vec![1001],
            allow_gids: vec![50],
            own_sid: None,
            allow_sids: Vec::new(),
            allow_group_sids: Vec::new(),
            allow_executables: Vec::new(),
            own_exe: None,
        };
        assert_eq!(policy.access(&peer(1000, 1000, &[])), Access::Admin);
        assert_eq!(policy.access(&peer(0, 0, &[])), Access::Admin);
        assert_eq!(policy.access(&peer(1001, 1001, &[])), Access::Tokens);
        assert_eq!(policy.access(&peer(1002, 50, &[])), Access::Tokens);
        assert_eq!(policy.access(&peer(1003, 1003, &[50])), Access::Tokens);
        assert_eq!(policy.access(&peer(1004, 1004, &[51])), Access::Denied);
        assert_eq!(policy.access(&Peer::default()), Access::Denied);
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
                own_sid: None,
                allow_sids: Vec::new(),
                allow_group_sids: Vec::new(),
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
        // Invisible reordering is escaped too; a Windows path stays readable.
        assert_eq!(shown(Path::new("a\u{202e}b")), "a\\u{202e}b");
        assert_eq!(
            shown(Path::new(r"C:\Program Files\app.exe")),
            r"C:\Program Files\app.exe"
        );
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
            ..Peer::default()
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

    // --- Windows accounts: pure logic with synthetic SIDs (runs everywhere) ---

    const AGENT: &str = "S-1-5-21-1-2-3-1000";
    const ALICE: &str = "S-1-5-21-1-2-3-1001";
    const BOB: &str = "S-1-5-21-1-2-3-1002";
    const APPS: &str = "S-1-5-21-1-2-3-2001";

    fn account(sid: &str, groups: &[&str]) -> Peer {
        Peer {
            pid: Some(7),
            sid: Some(sid.to_owned()),
            group_sids: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..Peer::default()
        }
    }

    fn windows_policy() -> Policy {
        Policy {
            own_uid: 0,
            allow_uids: Vec::new(),
            allow_gids: Vec::new(),
            own_sid: Some(AGENT.to_owned()),
            allow_sids: vec![ALICE.to_owned()],
            allow_group_sids: vec![APPS.to_owned()],
            allow_executables: Vec::new(),
            own_exe: None,
        }
    }

    #[test]
    fn windows_own_account_system_and_elevated_admins_administer() {
        let policy = windows_policy();
        assert_eq!(policy.access(&account(AGENT, &[])), Access::Admin);
        // SIDs compare case-insensitively (`s-1-…` is the same SID).
        assert_eq!(
            policy.access(&account(&AGENT.to_lowercase(), &[])),
            Access::Admin
        );
        assert_eq!(
            policy.access(&account(LOCAL_SYSTEM_SID, &[])),
            Access::Admin
        );
        assert_eq!(
            policy.access(&account(BOB, &["S-1-1-0", ADMINISTRATORS_SID])),
            Access::Admin
        );
        // The uid rules never apply to a Windows peer: no uid 0 shortcut.
        let mut with_uid = account(BOB, &[]);
        with_uid.uid = Some(0);
        assert_eq!(policy.access(&with_uid), Access::Denied);
    }

    #[test]
    fn windows_allow_users_and_enabled_groups_fetch_tokens_others_are_refused() {
        let policy = windows_policy();
        assert_eq!(policy.access(&account(ALICE, &[])), Access::Tokens);
        assert_eq!(
            policy.access(&account(BOB, &["S-1-1-0", APPS])),
            Access::Tokens
        );
        // Bob's token without the group enabled (a deny-only group is never
        // in `group_sids`): refused, named, with the keys to change.
        let refusal = policy
            .decide(&account(BOB, &["S-1-1-0", "S-1-5-11"]), || unreachable!())
            .unwrap_err();
        assert_eq!(refusal.reason, "connection refused: account not allowed");
        assert!(refusal.message.contains(BOB), "{}", refusal.message);
        assert!(
            refusal.message.contains("[ipc] allow_users")
                && refusal.message.contains("allow_groups"),
            "{}",
            refusal.message
        );
    }

    #[test]
    fn windows_a_client_whose_account_cannot_be_read_is_refused() {
        let policy = windows_policy();
        let unread = Peer {
            pid: Some(7),
            ..Peer::default()
        };
        assert_eq!(policy.access(&unread), Access::Denied);
        assert!(policy.decide(&unread, || unreachable!()).is_err());
    }

    #[test]
    fn windows_allow_executables_rules_match_unix() {
        let files = Files::new();
        let mut policy = windows_policy();
        policy.allow_executables = vec![files.path("app")];
        policy.own_exe = Some(files.path("regent"));
        let runs = |peer: &Peer, name: &str| outcome(policy.decide(peer, files.found(name)));
        // Listed: served with the account's access.
        assert_eq!(runs(&account(ALICE, &[]), "app"), admitted(Access::Tokens));
        assert_eq!(runs(&account(AGENT, &[]), "app"), admitted(Access::Admin));
        // The agent's own regent.exe administers for the agent's account only.
        assert_eq!(
            runs(&account(AGENT, &[]), "regent"),
            admitted(Access::Manage)
        );
        assert!(runs(&account(ALICE, &[]), "regent").is_err());
        // Anything else is refused by name.
        assert_eq!(
            runs(&account(AGENT, &[]), "other"),
            Err("connection refused: executable not allowed")
        );
        // LocalSystem is never restricted, like root.
        assert_eq!(
            outcome(policy.decide(&account(LOCAL_SYSTEM_SID, &[]), || unreachable!())),
            admitted(Access::Admin)
        );
        // An image that cannot be read fails closed.
        let refusal = policy
            .decide(&account(AGENT, &[]), || {
                ExeLookup::Unknown("the image path of process 7 could not be read".into())
            })
            .unwrap_err();
        assert_eq!(refusal.reason, "connection refused: executable unknown");
    }

    #[test]
    fn windows_paths_compare_as_windows_does() {
        let key = windows_path_key;
        assert_eq!(
            key(r"\\?\C:\Program Files\App\app.exe"),
            key(r"c:\program files\app\APP.EXE")
        );
        assert_eq!(key("C:/Tools/app.exe"), key(r"C:\Tools\app.exe"));
        assert_eq!(
            key(r"\\?\UNC\server\share\app.exe"),
            key(r"\\SERVER\share\app.exe")
        );
        assert_ne!(key(r"C:\Tools\app.exe"), key(r"C:\Tools\app2.exe"));
        // One character to one: `ß` is not widened to `SS`.
        assert_ne!(key(r"C:\straße.exe"), key(r"C:\STRASSE.EXE"));
    }

    #[test]
    fn sids_are_recognised_by_their_syntax() {
        for sid in [AGENT, "S-1-5-18", "s-1-5-32-544", "S-1-1-0"] {
            assert!(is_sid(sid), "{sid}");
        }
        for text in [
            "S-1-",
            "S-1-5-",
            "S-1-5--18",
            "S-1-5-x",
            "alice",
            "S-1-5-18)(A;;GA;;;WD",
        ] {
            assert!(!is_sid(text), "{text}");
        }
    }

    #[test]
    fn windows_account_names_resolve_to_sids_of_the_right_kind() {
        let lookup = |name: &str| match name {
            "alice" | r"HOST\alice" => Ok((ALICE.to_owned(), AccountKind::User)),
            "licensed-apps" => Ok((APPS.to_owned(), AccountKind::Group)),
            "HOST" => Ok(("S-1-5-21-1-2-3".to_owned(), AccountKind::Other)),
            _ => Err(
                "No mapping between account names and security IDs was done. (os error 1332)"
                    .to_owned(),
            ),
        };
        let users = [
            "alice".to_owned(),
            r"HOST\alice".to_owned(),
            "s-1-5-21-9-9-9-1500".to_owned(),
        ];
        assert_eq!(
            resolve_accounts(&users, AccountList::Users, lookup).unwrap(),
            vec![ALICE, ALICE, "S-1-5-21-9-9-9-1500"]
        );
        assert_eq!(
            resolve_accounts(&["licensed-apps".to_owned()], AccountList::Groups, lookup).unwrap(),
            vec![APPS]
        );
        let unknown =
            resolve_accounts(&["mallory".to_owned()], AccountList::Users, lookup).unwrap_err();
        assert!(
            unknown.contains("[ipc] allow_users")
                && unknown.contains("\"mallory\"")
                && unknown.contains("SID"),
            "{unknown}"
        );
        let group_as_user =
            resolve_accounts(&["licensed-apps".to_owned()], AccountList::Users, lookup)
                .unwrap_err();
        assert!(group_as_user.contains("allow_groups"), "{group_as_user}");
        let user_as_group =
            resolve_accounts(&["alice".to_owned()], AccountList::Groups, lookup).unwrap_err();
        assert!(user_as_group.contains("allow_users"), "{user_as_group}");
        assert!(resolve_accounts(&["HOST".to_owned()], AccountList::Users, lookup).is_err());
        let bad_sid =
            resolve_accounts(&["S-1-5-x".to_owned()], AccountList::Users, lookup).unwrap_err();
        assert!(bad_sid.contains("not a valid SID"), "{bad_sid}");
    }

    #[cfg(unix)]
    #[test]
    fn unix_users_resolve_by_name_and_number() {
        assert_eq!(
            resolve_users(&["root".into(), "4242".into()]).unwrap(),
            vec![0, 4242]
        );
        let e = resolve_users(&["no-such-user-xyz".into()]).unwrap_err();
        assert!(
            e.contains("[ipc] allow_users") && e.contains("no-such-user-xyz"),
            "{e}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn groups_resolve_by_number_and_name() {
        assert_eq!(resolve_groups(&["42".into()]).unwrap(), vec![42]);
        assert_eq!(resolve_groups(&["root".into()]).unwrap(), vec![0]);
        let e = resolve_groups(&["no-such-group-xyz".into()]).unwrap_err();
        assert!(e.contains("no-such-group-xyz"));
    }
}
