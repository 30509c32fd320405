//! Who is on the other end of a connection, and what they may do.
//!
//! Every connection's peer credentials (uid, gid, pid) are read from the kernel
//! and checked against `allow_uids` / `allow_groups`; the agent's own uid and
//! root are always allowed. Enrollment and unenrollment need the agent's uid or
//! root (DESIGN §6).

use std::path::PathBuf;

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
    /// The policy for this process with the configured allow lists.
    pub fn new(allow_uids: Vec<u32>, allow_gids: Vec<u32>) -> Policy {
        Policy {
            own_uid: current_uid(),
            allow_uids,
            allow_gids,
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

    #[test]
    fn groups_resolve_by_number_and_name() {
        assert_eq!(resolve_groups(&["42".into()]).unwrap(), vec![42]);
        assert_eq!(resolve_groups(&["root".into()]).unwrap(), vec![0]);
        let e = resolve_groups(&["no-such-group-xyz".into()]).unwrap_err();
        assert!(e.contains("no-such-group-xyz"));
    }
}
