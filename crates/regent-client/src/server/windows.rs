//! Who runs the server of a connected named pipe, and this process's user,
//! as string SIDs (`S-1-5-…`). Runs under Wine in `scripts/test-windows.sh`
//! (same account on both ends); the other accounts need a real Windows.
// The Win32 security calls have no safe wrapper among the dependencies; each
// call below says what it relies on, and nothing here outlives its function.
#![allow(unsafe_code)]

use std::io;
use std::os::windows::io::{AsRawHandle, BorrowedHandle};
use std::ptr::null_mut;

use windows_sys::Win32::Foundation::{CloseHandle, ERROR_SUCCESS, HANDLE, LocalFree};
use windows_sys::Win32::Security::Authorization::{
    ConvertSidToStringSidW, GetSecurityInfo, SE_KERNEL_OBJECT,
};
use windows_sys::Win32::Security::{
    GetTokenInformation, IsValidSid, OWNER_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, PSID,
    TOKEN_QUERY, TOKEN_USER, TokenUser,
};
use windows_sys::Win32::System::Pipes::GetNamedPipeServerProcessId;
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, OpenProcess, OpenProcessToken, PROCESS_QUERY_LIMITED_INFORMATION,
};

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
    // SAFETY: plain call; the handle returned is closed below.
    let process = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
    if process.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut token: HANDLE = null_mut();
    // SAFETY: `process` is open; `token` is a valid out-pointer.
    let opened = unsafe { OpenProcessToken(process, TOKEN_QUERY, &mut token) };
    let error = io::Error::last_os_error();
    // SAFETY: opened above, closed once.
    unsafe { CloseHandle(process) };
    if opened == 0 {
        return Err(error);
    }
    let user = token_user(token);
    // SAFETY: opened above, closed once.
    unsafe { CloseHandle(token) };
    user
}

/// The user this process runs as.
pub(super) fn own_user() -> io::Result<String> {
    let mut token: HANDLE = null_mut();
    // SAFETY: the pseudo-handle of the current process needs no closing;
    // `token` is a valid out-pointer.
    if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
        return Err(io::Error::last_os_error());
    }
    let user = token_user(token);
    // SAFETY: `token` was opened above and is closed once.
    unsafe { CloseHandle(token) };
    user
}

fn token_user(token: HANDLE) -> io::Result<String> {
    let mut needed = 0u32;
    // SAFETY: a size query: no buffer, `needed` receives the size.
    unsafe { GetTokenInformation(token, TokenUser, null_mut(), 0, &mut needed) };
    let words = usize::try_from(needed)
        .unwrap_or(usize::MAX)
        .div_ceil(std::mem::size_of::<u64>());
    if words == 0 || needed > 64 * 1024 {
        return Err(io::Error::other("the process token's user has no size"));
    }
    // u64 words: aligned for TOKEN_USER.
    let mut buffer = vec![0u64; words];
    // SAFETY: `buffer` holds `needed` writable bytes.
    let ok = unsafe {
        GetTokenInformation(
            token,
            TokenUser,
            buffer.as_mut_ptr().cast(),
            needed,
            &mut needed,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: on success the buffer starts with a TOKEN_USER whose SID
    // points into the same buffer, alive until the end of this function.
    let user = unsafe { &*buffer.as_ptr().cast::<TOKEN_USER>() };
    sid_string(user.User.Sid)
}

fn sid_string(sid: PSID) -> io::Result<String> {
    let mut text = null_mut();
    // SAFETY: `sid` is a valid SID for the call; `text` receives a
    // LocalAlloc'd NUL-terminated string.
    if unsafe { ConvertSidToStringSidW(sid, &mut text) } == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: NUL-terminated (above), read up to the NUL only, bounded.
    let len = (0..256)
        .take_while(|&i| unsafe { *text.add(i) } != 0)
        .count();
    // SAFETY: `len` units were just read from `text`.
    let sid = String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(text, len) });
    // SAFETY: allocated by ConvertSidToStringSidW, to be freed with LocalFree.
    unsafe { LocalFree(text.cast()) };
    Ok(sid)
}
