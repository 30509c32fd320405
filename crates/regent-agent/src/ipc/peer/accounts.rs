//! The agent's own identity, and the names in the allow lists resolved to
//! uids, gids, SIDs and canonical paths.

use super::*;

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
    pub(super) static OWN: OnceLock<Option<PathBuf>> = OnceLock::new();
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
pub(super) fn normalize(path: &Path) -> PathBuf {
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
    pub(super) fn key(self) -> &'static str {
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
