//! Who is on the other end of a connection, and what they may do.
//!
//! Every connection's peer credentials (uid, gid, pid) are read from the kernel
//! and checked against `allow_uids` / `allow_groups`; the agent's own uid and
//! root are always allowed. Enrollment and unenrollment need the agent's uid or
//! root (DESIGN §6).
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
//!   stays allowed for the agent's own uid, so `regent status`, `enroll`,
//!   `token` and `unenroll` keep working for the agent's administrator. Other
//!   uids admitted by `allow_uids` / `allow_groups` must run a listed program,
//!   the `regent` CLI included.
//! - **fail closed**: a peer whose executable cannot be established is
//!   refused: its binary was deleted or replaced since it started (`/proc`
//!   shows `… (deleted)`), `/proc/PID/exe` is unreadable (a non-root agent can
//!   read it only for processes of its own uid; the kernel denies it for other
//!   uids and for non-dumpable processes), or the platform has no `/proc`
//!   (macOS, Windows: the list then refuses every peer but root).
//!
//! This identifies programs, not scripts: listing an interpreter admits every
//! script it runs. It is a guard against the wrong program of an allowed user
//! asking for tokens, not a boundary against a determined same-uid attacker,
//! who can ptrace an allowed program, or connect and then `exec` an allowed
//! program while a child keeps the socket (the check reads `/proc` when the
//! connection is accepted).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

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
    /// The peer's executable, resolved through `/proc` (Linux), for audit lines.
    pub fn executable(&self) -> Option<PathBuf> {
        let pid = self.pid?;
        std::fs::read_link(format!("/proc/{pid}/exe")).ok()
    }

    /// The peer's executable, for the `allow_executables` check.
    pub fn lookup_executable(&self) -> ExeLookup {
        let Some(pid) = self.pid else {
            return ExeLookup::Unknown("the kernel reported no process id".into());
        };
        if !cfg!(target_os = "linux") {
            return ExeLookup::Unknown(
                "this platform has no /proc/PID/exe; allow_executables works on Linux only".into(),
            );
        }
        match std::fs::read_link(format!("/proc/{pid}/exe")) {
            Ok(path) => classify_exe_link(path),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                ExeLookup::Unknown(format!(
                    "/proc/{pid}/exe is not readable by the agent (uid {}): an agent that is not root can only see the programs of its own uid's processes",
                    current_uid()
                ))
            }
            Err(e) => ExeLookup::Unknown(format!("cannot read /proc/{pid}/exe: {e}")),
        }
    }
}

/// What `/proc/PID/exe` says about a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExeLookup {
    /// The program's path.
    Found(PathBuf),
    /// The program's file was deleted or replaced after the process started;
    /// the path it had.
    Deleted(PathBuf),
    /// Not known, and why.
    Unknown(String),
}

/// The kernel appends this to `/proc/PID/exe` when the file was unlinked.
const DELETED_SUFFIX: &str = " (deleted)";

/// Splits off the kernel's ` (deleted)` marker.
fn classify_exe_link(path: PathBuf) -> ExeLookup {
    let text = path.as_os_str().as_encoded_bytes();
    match text.strip_suffix(DELETED_SUFFIX.as_bytes()) {
        Some(before) => {
            ExeLookup::Deleted(PathBuf::from(String::from_utf8_lossy(before).into_owned()))
        }
        None => ExeLookup::Found(path),
    }
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
    /// Everything, including enroll and unenroll.
    Admin,
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
    /// program `exe` looks up (called only then).
    ///
    /// # Errors
    /// The refusal to log and to send the peer.
    pub fn decide(
        &self,
        peer: &Peer,
        exe: impl FnOnce() -> ExeLookup,
    ) -> std::result::Result<Access, Refusal> {
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
            return Ok(access);
        }
        let pid = peer
            .pid
            .map_or_else(|| "unknown".to_owned(), |p| p.to_string());
        match exe() {
            ExeLookup::Found(path) => {
                let own =
                    access == Access::Admin && self.own_exe.as_deref() == Some(path.as_path());
                if own || self.allow_executables.contains(&path) {
                    Ok(access)
                } else {
                    Err(Refusal {
                        reason: "connection refused: executable not allowed",
                        message: format!(
                            "{} (pid {pid}) is not in [ipc] allow_executables; an administrator can add its path there",
                            path.display()
                        ),
                        exe: Some(path),
                    })
                }
            }
            ExeLookup::Deleted(path) => Err(Refusal {
                reason: "connection refused: executable deleted or replaced",
                message: format!(
                    "the program of pid {pid}, {}, was deleted or replaced after it started, so [ipc] allow_executables cannot vouch for it; restart the program",
                    path.display()
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
        let path = match classify_exe_link(path) {
            ExeLookup::Found(p) | ExeLookup::Deleted(p) => p,
            ExeLookup::Unknown(_) => return None,
        };
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

    fn listing(exes: &[&str]) -> Policy {
        Policy {
            own_uid: 1000,
            allow_uids: vec![1001],
            allow_gids: Vec::new(),
            allow_executables: exes.iter().map(PathBuf::from).collect(),
            own_exe: Some(PathBuf::from("/usr/bin/regent")),
        }
    }

    fn found(path: &str) -> impl FnOnce() -> ExeLookup {
        let path = PathBuf::from(path);
        move || ExeLookup::Found(path)
    }

    #[test]
    fn without_a_list_the_executable_is_never_looked_up() {
        let policy = listing(&[]);
        let decided = policy.decide(&peer(1000, 1000, &[]), || unreachable!());
        assert_eq!(decided, Ok(Access::Admin));
    }

    #[test]
    fn a_listed_executable_is_served_others_are_refused_by_name() {
        let policy = listing(&["/opt/app/bin/app"]);
        assert_eq!(
            policy.decide(&peer(1000, 1000, &[]), found("/opt/app/bin/app")),
            Ok(Access::Admin)
        );
        assert_eq!(
            policy.decide(&peer(1001, 1001, &[]), found("/opt/app/bin/app")),
            Ok(Access::Tokens)
        );
        let refusal = policy
            .decide(&peer(1000, 1000, &[]), found("/usr/bin/python3.12"))
            .unwrap_err();
        assert_eq!(refusal.reason, "connection refused: executable not allowed");
        assert!(
            refusal.message.contains("/usr/bin/python3.12"),
            "{}",
            refusal.message
        );
        assert!(
            refusal.message.contains("[ipc] allow_executables"),
            "{}",
            refusal.message
        );
        assert!(refusal.message.contains("pid 1"), "{}", refusal.message);
    }

    #[test]
    fn the_agents_own_executable_is_allowed_only_for_its_own_uid() {
        let policy = listing(&["/opt/app/bin/app"]);
        assert_eq!(
            policy.decide(&peer(1000, 1000, &[]), found("/usr/bin/regent")),
            Ok(Access::Admin)
        );
        // Another allowed uid running the CLI must be listed like any program.
        assert!(
            policy
                .decide(&peer(1001, 1001, &[]), found("/usr/bin/regent"))
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
        let policy = listing(&["/opt/app/bin/app"]);
        assert_eq!(
            policy.decide(&peer(0, 0, &[]), || unreachable!()),
            Ok(Access::Admin)
        );
    }

    #[test]
    fn deleted_or_unknown_executables_fail_closed() {
        let policy = listing(&["/opt/app/bin/app"]);
        let refusal = policy
            .decide(&peer(1000, 1000, &[]), || {
                ExeLookup::Deleted(PathBuf::from("/opt/app/bin/app"))
            })
            .unwrap_err();
        assert_eq!(
            refusal.reason,
            "connection refused: executable deleted or replaced"
        );
        assert!(
            refusal.message.contains("/opt/app/bin/app"),
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
    }

    #[test]
    fn the_kernels_deleted_marker_is_recognised() {
        assert_eq!(
            classify_exe_link(PathBuf::from("/usr/bin/app (deleted)")),
            ExeLookup::Deleted(PathBuf::from("/usr/bin/app"))
        );
        assert_eq!(
            classify_exe_link(PathBuf::from("/usr/bin/app")),
            ExeLookup::Found(PathBuf::from("/usr/bin/app"))
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
        match me.lookup_executable() {
            ExeLookup::Found(p) | ExeLookup::Deleted(p) => {
                assert_eq!(p, own_executable().unwrap());
            }
            ExeLookup::Unknown(why) => panic!("{why}"),
        }
        let gone = Peer {
            pid: Some(u32::MAX / 2),
            ..me
        };
        assert!(matches!(gone.lookup_executable(), ExeLookup::Unknown(_)));
    }

    #[test]
    fn groups_resolve_by_number_and_name() {
        assert_eq!(resolve_groups(&["42".into()]).unwrap(), vec![42]);
        assert_eq!(resolve_groups(&["root".into()]).unwrap(), vec![0]);
        let e = resolve_groups(&["no-such-group-xyz".into()]).unwrap_err();
        assert!(e.contains("no-such-group-xyz"));
    }
}
