//! Windows: pipe clients are accounts (SIDs) and image paths rather than uids
//! and `/proc`. Compiled everywhere (the decisions are plain data and
//! tested on every platform); the Win32 calls sit in `regent_client::win32`.

use super::*;

#[cfg(not(target_os = "macos"))]
impl Peer {
    /// Windows: the image path read at connect (`QueryFullProcessImageNameW`)
    /// and the identity of the file at that path now (volume serial number
    /// and file index).
    pub(super) fn windows_executable(&self, pid: u32) -> ExeLookup {
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
