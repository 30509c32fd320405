//! Who runs the server of a connected named pipe, as string SIDs
//! (`S-1-5-…`); the token and SID calls are in [`crate::win32`]. Runs under Wine in `scripts/test-windows.sh`
//! (same account on both ends); the other accounts need a real Windows.
// The Win32 security calls have no safe wrapper among the dependencies; each
// call below says what it relies on, and nothing here outlives its function.
#![allow(unsafe_code)]

use std::io;
use std::os::windows::io::{AsRawHandle, BorrowedHandle};
use std::ptr::null_mut;

use windows_sys::Win32::Foundation::{ERROR_SUCCESS, HANDLE, LocalFree};
use windows_sys::Win32::Security::Authorization::{GetSecurityInfo, SE_KERNEL_OBJECT};
use windows_sys::Win32::Security::{
    IsValidSid, OWNER_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, PSID,
};
use windows_sys::Win32::System::Pipes::GetNamedPipeServerProcessId;

pub(super) use crate::win32::own_user;
use crate::win32::sid_string;

/// Who runs the server end of a pipe, as far as this process may read it.
#[derive(Debug)]
pub(crate) struct ServerAccounts {
    /// The pipe's owner SID (only the account whose process created the
    /// pipe, or one that may take ownership, can set it), read from the pipe
    /// itself; `None` when the pipe names no owner.
    pub owner: io::Result<Option<String>>,
    /// The user of the server process (`GetNamedPipeServerProcessId`, then
    /// its token); a standard user may not read a LocalSystem service's.
    pub process_user: io::Result<String>,
}

impl ServerAccounts {
    /// The SIDs read, owner first.
    pub(crate) fn known(&self) -> Vec<&str> {
        let owner = self.owner.as_ref().ok().and_then(Option::as_deref);
        let user = self.process_user.as_ref().ok().map(String::as_str);
        let mut known: Vec<&str> = owner.into_iter().chain(user).collect();
        known.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
        known
    }

    /// Why neither could be read.
    pub(crate) fn unknown_because(&self) -> String {
        let owner = match &self.owner {
            Ok(_) => "the pipe names no owner".to_owned(),
            Err(e) => format!("the pipe's owner: {e}"),
        };
        let user = match &self.process_user {
            Ok(_) => String::new(),
            Err(e) => format!("; its server process: {e}"),
        };
        format!("{owner}{user}")
    }
}

/// The accounts behind the server end of the pipe `handle`. Both are read:
/// under Wine a pipe created with a descriptor that names no owner gets the
/// creator's primary group as owner (S-1-5-21-…-513), and one created
/// without a descriptor none at all, while the server process's user is
/// right there.
pub(super) fn server_accounts(handle: BorrowedHandle<'_>) -> ServerAccounts {
    ServerAccounts {
        owner: descriptor_owner(handle),
        process_user: server_process_user(handle),
    }
}

/// The owner SID in the pipe's security descriptor; `None` when it has none.
fn descriptor_owner(handle: BorrowedHandle<'_>) -> io::Result<Option<String>> {
    let mut owner: PSID = null_mut();
    let mut descriptor: PSECURITY_DESCRIPTOR = null_mut();
    // SAFETY: `handle` is open for the call (borrowed); the out-pointers are
    // valid locals; on success `descriptor` is allocated by the system and
    // `owner` points into it.
    let status = unsafe {
        GetSecurityInfo(
            handle.as_raw_handle() as HANDLE,
            SE_KERNEL_OBJECT,
            OWNER_SECURITY_INFORMATION,
            &mut owner,
            null_mut(),
            null_mut(),
            null_mut(),
            &mut descriptor,
        )
    };
    if status != ERROR_SUCCESS {
        return Err(io::Error::from_raw_os_error(status as i32));
    }
    // SAFETY: `owner` is NULL or points into `descriptor`, alive here.
    let sid = if owner.is_null() || unsafe { IsValidSid(owner) } == 0 {
        Ok(None)
    } else {
        sid_string(owner).map(Some)
    };
    // SAFETY: `descriptor` came from GetSecurityInfo, which says to free it
    // with LocalFree; `owner` is not used after this.
    unsafe { LocalFree(descriptor) };
    sid
}

/// The user of the process serving the pipe `handle`.
fn server_process_user(handle: BorrowedHandle<'_>) -> io::Result<String> {
    let mut pid = 0u32;
    // SAFETY: `handle` is a connected client pipe; `pid` is a valid out-pointer.
    if unsafe { GetNamedPipeServerProcessId(handle.as_raw_handle() as HANDLE, &mut pid) } == 0 {
        return Err(io::Error::last_os_error());
    }
    crate::win32::Process::open(pid)?.user()
}
