//! The policy: which peers are admitted and for what ([`Access`]), from
//! `allow_uids`, `allow_groups` and `allow_executables`.

use super::*;

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
    pub(super) fn unrestricted(peer: &Peer) -> bool {
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
