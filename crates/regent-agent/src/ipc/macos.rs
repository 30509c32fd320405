//! What the kernel says about a connected peer on macOS, which has no
//! `/proc`: its pid (`getsockopt(SOL_LOCAL, LOCAL_PEERPID)`), the program
//! it runs (`proc_pidpath`), and a stamp of its process — start time and
//! effective uid (`proc_pidinfo(PROC_PIDTBSDINFO)`) — that tells a reused
//! pid apart from the process that connected.
//!
//! The peer's uid, gid and first 16 groups come from `interprocess`
//! (`LOCAL_PEERCRED`, the call `getpeereid` makes).
//!
//! **Compiled, never run.** CI builds and lints this module for
//! `aarch64-apple-darwin` and `x86_64-apple-darwin` from Linux
//! (`scripts/test-macos.sh`); no macOS machine has executed it, so the calls
//! below are checked against the `libc` crate's declarations only. Where a
//! call fails, the caller fails closed (docs/operations.md, macOS).
//!
//! The calls need a raw buffer, which is why this module allows unsafe code;
//! each is a single call on a borrowed descriptor or a pid, with a buffer
//! whose length is passed alongside.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use nix::libc;

/// The pid of the process at the other end of a Unix socket, as it was
/// when it connected (`LOCAL_PEERPID`).
///
/// # Errors
/// The `getsockopt` failure, or a pid that is not positive.
pub fn peer_pid(fd: BorrowedFd<'_>) -> std::io::Result<u32> {
    let mut pid: libc::pid_t = 0;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::pid_t>())
        .map_err(std::io::Error::other)?;
    // SAFETY: `pid` is valid for writes of `len` bytes, and `fd` is a live
    // descriptor for the duration of the borrow.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_LOCAL,
            libc::LOCAL_PEERPID,
            (&raw mut pid).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    u32::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| std::io::Error::other(format!("LOCAL_PEERPID reported pid {pid}")))
}

/// What identifies one process among those that ever had its pid: when it
/// started, and its effective uid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Start time, seconds since the epoch.
    pub start_sec: u64,
    /// Start time, microseconds within the second.
    pub start_usec: u64,
    /// Effective uid.
    pub uid: u32,
}

/// The stamp of process `pid` now; `None` when it has exited or the kernel
/// does not describe it to this process.
pub fn stamp(pid: u32) -> Option<Stamp> {
    let pid = libc::c_int::try_from(pid).ok()?;
    let size = libc::c_int::try_from(std::mem::size_of::<libc::proc_bsdinfo>()).ok()?;
    // SAFETY: `proc_bsdinfo` is plain data (integers and byte arrays), for
    // which all-zero is a valid value.
    let mut info: libc::proc_bsdinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is valid for writes of `size` bytes.
    let written =
        unsafe { libc::proc_pidinfo(pid, libc::PROC_PIDTBSDINFO, 0, (&raw mut info).cast(), size) };
    (written == size).then_some(Stamp {
        start_sec: info.pbi_start_tvsec,
        start_usec: info.pbi_start_tvusec,
        uid: info.pbi_uid,
    })
}

/// The path of the program process `pid` runs, as the kernel names it.
///
/// # Errors
/// The `proc_pidpath` failure (the process exited, or the kernel refuses
/// to describe it to this process).
pub fn program(pid: u32) -> std::io::Result<PathBuf> {
    let pid = libc::c_int::try_from(pid).map_err(std::io::Error::other)?;
    let mut buf = vec![0u8; usize::try_from(libc::PROC_PIDPATHINFO_MAXSIZE).unwrap_or(4096)];
    let size = u32::try_from(buf.len()).map_err(std::io::Error::other)?;
    // SAFETY: `buf` is valid for writes of `size` bytes.
    let written = unsafe { libc::proc_pidpath(pid, buf.as_mut_ptr().cast(), size) };
    let Some(len) = usize::try_from(written).ok().filter(|n| *n > 0) else {
        return Err(std::io::Error::last_os_error());
    };
    buf.truncate(len.min(buf.len()));
    Ok(PathBuf::from(OsString::from_vec(buf)))
}

/// The peer's pid and its process's stamp, read right after the connection
/// was accepted. The pid is kept only when a process with the peer's uid
/// holds it; otherwise (the peer already exited and the pid was reused, or
/// it cannot be read) it stays unknown and `allow_executables` refuses the
/// peer.
pub fn identify(fd: BorrowedFd<'_>, uid: Option<u32>) -> (Option<u32>, Option<Stamp>) {
    let pid = match peer_pid(fd) {
        Ok(pid) => pid,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the peer's pid (LOCAL_PEERPID); [ipc] allow_executables will refuse it");
            return (None, None);
        }
    };
    match stamp(pid) {
        Some(s) if Some(s.uid) == uid => (Some(pid), Some(s)),
        Some(s) => {
            tracing::warn!(
                pid,
                uid,
                process_uid = s.uid,
                "the peer's pid belongs to a process of another uid (it exited and the pid was reused); [ipc] allow_executables will refuse it"
            );
            (Some(pid), None)
        }
        None => (Some(pid), None),
    }
}
