//! What the kernel says about a connected peer beyond uid/gid/pid (Linux):
//! its supplementary groups (`SO_PEERGROUPS`, Linux ≥ 4.13) and a pidfd that
//! pins its process (`SO_PEERPIDFD`, Linux ≥ 6.5).
//!
//! `interprocess` reports only the primary gid on Linux, so a user added to
//! an allowed group with `usermod -aG` would be refused. Both options read
//! the credentials the peer had when it connected, like `SO_PEERCRED`.
//!
//! The two `getsockopt` calls are the only unsafe code in the agent: the
//! `libc` call needs a raw buffer, and neither `nix` nor `rustix` wraps
//! `SO_PEERGROUPS`. Each is a single call on a borrowed descriptor with a
//! buffer whose length is passed alongside.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::libc;

/// The most groups a process can have (`NGROUPS_MAX` on Linux).
const MAX_GROUPS: usize = 65_536;

/// The peer's supplementary groups when it connected; `Ok(None)` when the
/// kernel does not support `SO_PEERGROUPS` (then use [`groups_of_user`]).
///
/// # Errors
/// The `getsockopt` failure.
pub fn peer_groups(fd: BorrowedFd<'_>) -> std::io::Result<Option<Vec<u32>>> {
    let size = std::mem::size_of::<libc::gid_t>();
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    // The kernel answers ERANGE with the size it needs; the peer's groups
    // cannot change after connect, so a second call with that size fits.
    for _ in 0..2 {
        let mut len =
            libc::socklen_t::try_from(groups.len() * size).unwrap_or(libc::socklen_t::MAX);
        // SAFETY: `groups` is valid for writes of `len` bytes, and `fd` is a
        // live descriptor for the duration of the borrow.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &raw mut len,
            )
        };
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if rc == 0 {
            groups.truncate(len / size);
            return Ok(Some(groups));
        }
        let error = std::io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::ERANGE) if len / size <= MAX_GROUPS && len / size > groups.len() => {
                groups.resize(len / size, 0);
            }
            Some(libc::ENOPROTOOPT) => return Ok(None),
            _ => return Err(error),
        }
    }
    Err(std::io::Error::other(
        "SO_PEERGROUPS kept asking for a larger buffer",
    ))
}

/// A pidfd for the peer's process, pinned when it connected; `None` when
/// the kernel does not support `SO_PEERPIDFD` or the peer has no process
/// (then only the pid is known, which a new process may reuse).
pub fn peer_pidfd(fd: BorrowedFd<'_>) -> Option<OwnedFd> {
    let mut pidfd: libc::c_int = -1;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).ok()?;
    // SAFETY: `pidfd` is valid for writes of `len` bytes, and `fd` is a live
    // descriptor for the duration of the borrow.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERPIDFD,
            (&raw mut pidfd).cast(),
            &raw mut len,
        )
    };
    if rc != 0 || pidfd < 0 {
        return None;
    }
    // SAFETY: the kernel just created this descriptor for us; nothing else
    // owns it.
    Some(unsafe { OwnedFd::from_raw_fd(pidfd) })
}

/// The pid a pidfd's process has now, in this process's pid namespace;
/// `None` once it has exited (the kernel shows `Pid: -1` or `0`).
pub fn pidfd_pid(pidfd: BorrowedFd<'_>) -> Option<u32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|pid| *pid > 0)
}

/// The groups `/etc/group` (NSS) gives `uid`: the fallback on kernels before
/// 4.13. It reflects the account, not the process, which may have dropped
/// groups since it started.
pub fn groups_of_user(uid: u32) -> Vec<u32> {
    let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) else {
        return Vec::new();
    };
    let Ok(name) = std::ffi::CString::new(user.name) else {
        return Vec::new();
    };
    nix::unistd::getgrouplist(&name, user.gid)
        .map(|groups| groups.into_iter().map(nix::unistd::Gid::as_raw).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_socket_pair_reports_this_process_groups_and_pidfd() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let groups = peer_groups(a.as_fd()).unwrap().expect("Linux ≥ 4.13");
        let mut ours: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(nix::unistd::Gid::as_raw)
            .collect();
        let mut theirs = groups;
        ours.sort_unstable();
        theirs.sort_unstable();
        assert_eq!(theirs, ours);
        if let Some(pidfd) = peer_pidfd(a.as_fd()) {
            assert_eq!(pidfd_pid(pidfd.as_fd()), Some(std::process::id()));
        }
    }
}
