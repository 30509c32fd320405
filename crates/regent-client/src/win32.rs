//! Windows accounts and processes, as string SIDs (`S-1-5-…`) and paths:
//! this process's user, a process's user, enabled groups and image path,
//! account names resolved to SIDs, a file's identity, and whether a named
//! pipe exists. The client checks the pipe server's account with it
//! (`server/windows.rs`); the agent identifies its pipe clients with it
//! (`regent-agent`'s `ipc::peer`). Shared here so that the Win32 calls are
//! written once; not a stable API. Runs under Wine in
//! `scripts/test-windows.sh` (one account only).
// The Win32 security calls have no safe wrapper among the dependencies; each
// call below says what it relies on, and nothing here outlives its function
// except the process handle that [`Process`] owns and closes on drop.
#![allow(unsafe_code)]

use std::io;
use std::os::windows::ffi::{OsStrExt, OsStringExt};
use std::os::windows::fs::OpenOptionsExt;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
use std::path::{Path, PathBuf};
use std::ptr::null_mut;

use windows_sys::Win32::Foundation::FILETIME;
use windows_sys::Win32::Foundation::{
    CloseHandle, ERROR_INSUFFICIENT_BUFFER, ERROR_SEM_TIMEOUT, HANDLE, LocalFree,
};
use windows_sys::Win32::Security::Authorization::ConvertSidToStringSidW;
use windows_sys::Win32::Security::{
    GetTokenInformation, LookupAccountNameW, PSID, SID_NAME_USE, TOKEN_GROUPS,
    TOKEN_INFORMATION_CLASS, TOKEN_QUERY, TOKEN_USER, TokenGroups, TokenUser,
};
use windows_sys::Win32::Storage::FileSystem::{
    BY_HANDLE_FILE_INFORMATION, FILE_FLAG_BACKUP_SEMANTICS, FILE_SHARE_DELETE, FILE_SHARE_READ,
    FILE_SHARE_WRITE, GetFileInformationByHandle,
};
use windows_sys::Win32::System::Pipes::WaitNamedPipeW;
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, GetProcessTimes, OpenProcess, OpenProcessToken, PROCESS_NAME_WIN32,
    PROCESS_QUERY_LIMITED_INFORMATION, QueryFullProcessImageNameW,
};

/// `winnt.h`: the group counts for access checks.
const SE_GROUP_ENABLED: u32 = 0x4;
/// `winnt.h`: the group only denies (a filtered, non-elevated token's
/// Administrators).
const SE_GROUP_USE_FOR_DENY_ONLY: u32 = 0x10;

/// LocalSystem, the account of services by default.
pub const LOCAL_SYSTEM: &str = "S-1-5-18";
/// The builtin Administrators group.
pub const ADMINISTRATORS: &str = "S-1-5-32-544";

/// A process opened for query (`PROCESS_QUERY_LIMITED_INFORMATION`). While
/// this handle is open the process object stays, so its pid cannot be given
/// to another process: what is read through it is that process's.
#[derive(Debug)]
pub struct Process {
    handle: OwnedHandle,
    pid: u32,
}

impl Process {
    /// Opens process `pid`.
    ///
    /// # Errors
    /// The system's error: no such process, or access denied (a standard
    /// user may not open a protected or elevated process).
    pub fn open(pid: u32) -> io::Result<Process> {
        // SAFETY: plain call; a non-NULL result is a handle we now own.
        let raw = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
        if raw.is_null() {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` was just opened and is owned by nobody else.
        let handle = unsafe { OwnedHandle::from_raw_handle(raw) };
        Ok(Process { handle, pid })
    }

    /// The process id it was opened with.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The process's user and its enabled groups (not deny-only), from its
    /// primary token.
    ///
    /// # Errors
    /// The system's error opening or reading the token.
    pub fn account(&self) -> io::Result<(String, Vec<String>)> {
        let token = Token::of(self.handle.as_raw_handle() as HANDLE)?;
        Ok((token.user()?, token.enabled_groups()?))
    }

    /// When the process was created, as a `FILETIME` count (100 ns units
    /// since 1601-01-01 UTC), comparable with [`filetime_now`].
    ///
    /// # Errors
    /// The system's error.
    pub fn created(&self) -> io::Result<u64> {
        let zero = FILETIME {
            dwLowDateTime: 0,
            dwHighDateTime: 0,
        };
        let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
        // SAFETY: the handle is open; the four out-pointers are valid locals.
        let ok = unsafe {
            GetProcessTimes(
                self.handle.as_raw_handle() as HANDLE,
                &mut created,
                &mut exited,
                &mut kernel,
                &mut user,
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((u64::from(created.dwHighDateTime) << 32) | u64::from(created.dwLowDateTime))
    }

    /// The process's user, from its primary token.
    ///
    /// # Errors
    /// The system's error opening or reading the token (a standard user may
    /// not read a LocalSystem service's).
    pub fn user(&self) -> io::Result<String> {
        Token::of(self.handle.as_raw_handle() as HANDLE)?.user()
    }

    /// The process's image path as Win32 names it (`C:\…\app.exe`).
    ///
    /// # Errors
    /// The system's error.
    pub fn image_path(&self) -> io::Result<PathBuf> {
        // Long paths: up to 32,767 UTF-16 units.
        let mut buffer = vec![0u16; 32_768];
        let mut len = u32::try_from(buffer.len()).unwrap_or(u32::MAX);
        // SAFETY: the handle is open; `buffer` holds `len` writable units;
        // on success `len` is the count written, without the NUL.
        let ok = unsafe {
            QueryFullProcessImageNameW(
                self.handle.as_raw_handle() as HANDLE,
                PROCESS_NAME_WIN32,
                buffer.as_mut_ptr(),
                &mut len,
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        let len = usize::try_from(len).unwrap_or(usize::MAX).min(buffer.len());
        Ok(PathBuf::from(std::ffi::OsString::from_wide(&buffer[..len])))
    }
}

/// An open access token, closed on drop.
struct Token(HANDLE);

impl Drop for Token {
    fn drop(&mut self) {
        // SAFETY: opened by `Token::of`, closed once here.
        unsafe { CloseHandle(self.0) };
    }
}

impl Token {
    fn of(process: HANDLE) -> io::Result<Token> {
        let mut token: HANDLE = null_mut();
        // SAFETY: `process` is open for the call (or the current-process
        // pseudo-handle); `token` is a valid out-pointer.
        if unsafe { OpenProcessToken(process, TOKEN_QUERY, &mut token) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Token(token))
    }

    /// `GetTokenInformation` into a buffer of u64 words (aligned for the
    /// structures it returns).
    fn information(&self, class: TOKEN_INFORMATION_CLASS) -> io::Result<Vec<u64>> {
        let mut needed = 0u32;
        // SAFETY: a size query: no buffer, `needed` receives the size.
        unsafe { GetTokenInformation(self.0, class, null_mut(), 0, &mut needed) };
        if needed == 0 || needed > 1024 * 1024 {
            return Err(io::Error::other(format!(
                "the token's information {class} has no usable size ({needed} bytes)"
            )));
        }
        let words = usize::try_from(needed)
            .unwrap_or(usize::MAX)
            .div_ceil(std::mem::size_of::<u64>());
        let mut buffer = vec![0u64; words];
        // SAFETY: `buffer` holds at least `needed` writable bytes.
        let ok = unsafe {
            GetTokenInformation(
                self.0,
                class,
                buffer.as_mut_ptr().cast(),
                needed,
                &mut needed,
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(buffer)
    }

    fn user(&self) -> io::Result<String> {
        let buffer = self.information(TokenUser)?;
        // SAFETY: on success the buffer starts with a TOKEN_USER whose SID
        // points into the same buffer, alive until the end of this function.
        let user = unsafe { &*buffer.as_ptr().cast::<TOKEN_USER>() };
        sid_string(user.User.Sid)
    }

    fn enabled_groups(&self) -> io::Result<Vec<String>> {
        let buffer = self.information(TokenGroups)?;
        let bytes = buffer.len().saturating_mul(std::mem::size_of::<u64>());
        // SAFETY: on success the buffer starts with a TOKEN_GROUPS.
        let groups = unsafe { &*buffer.as_ptr().cast::<TOKEN_GROUPS>() };
        let count = usize::try_from(groups.GroupCount).unwrap_or(usize::MAX);
        // The array runs past the struct's declared length of one; check it
        // fits in the buffer before reading it.
        let array_offset = std::mem::offset_of!(TOKEN_GROUPS, Groups);
        let fits = count
            .checked_mul(std::mem::size_of_val(&groups.Groups[0]))
            .and_then(|n| n.checked_add(array_offset))
            .is_some_and(|end| end <= bytes);
        if !fits {
            return Err(io::Error::other(format!(
                "the token reports {count} groups, more than its buffer holds"
            )));
        }
        // SAFETY: `count` entries fit in `buffer` (checked above); each SID
        // points into the same buffer, alive until the end of this function.
        let entries = unsafe { std::slice::from_raw_parts(groups.Groups.as_ptr(), count) };
        entries
            .iter()
            .filter(|g| {
                g.Attributes & SE_GROUP_ENABLED != 0
                    && g.Attributes & SE_GROUP_USE_FOR_DENY_ONLY == 0
            })
            .map(|g| sid_string(g.Sid))
            .collect()
    }
}

/// Now, as a `FILETIME` count (100 ns units since 1601-01-01 UTC); 0 if
/// the clock is before 1970.
pub fn filetime_now() -> u64 {
    /// 1601-01-01 to 1970-01-01 in 100 ns units.
    const UNIX_EPOCH_AS_FILETIME: u64 = 116_444_736_000_000_000;
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_nanos() / 100).ok())
        .and_then(|ticks| ticks.checked_add(UNIX_EPOCH_AS_FILETIME))
        .unwrap_or(0)
}

/// The user this process runs as.
///
/// # Errors
/// The system's error.
pub fn own_user() -> io::Result<String> {
    // SAFETY: the pseudo-handle of the current process needs no closing.
    Token::of(unsafe { GetCurrentProcess() })?.user()
}

/// `sid` as a string (`S-1-5-…`).
pub(crate) fn sid_string(sid: PSID) -> io::Result<String> {
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

/// What kind of account a name resolved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountKind {
    /// A user account.
    User,
    /// A group or alias (builtin groups such as Administrators are aliases).
    Group,
    /// Something else (a domain, a computer, a label…).
    Other,
}

/// Resolves an account name (`alice`, `MACHINE\alice`, `Administrators`)
/// to its SID string and kind with `LookupAccountNameW`.
///
/// # Errors
/// The system's error (`ERROR_NONE_MAPPED`, 1332, for an unknown name).
pub fn lookup_account(name: &str) -> io::Result<(String, AccountKind)> {
    let wide: Vec<u16> = name.encode_utf16().chain(Some(0)).collect();
    // A SID is at most 68 bytes; domain names are short. One retry with the
    // sizes the system asks for.
    let mut sid_len = 68u32;
    let mut domain_len = 256u32;
    for _ in 0..2 {
        let mut sid = vec![0u64; usize::try_from(sid_len).unwrap_or(68).div_ceil(8)];
        let mut domain = vec![0u16; usize::try_from(domain_len).unwrap_or(256)];
        let mut kind: SID_NAME_USE = 0;
        // SAFETY: `wide` is NUL-terminated; `sid` holds `sid_len` bytes and
        // `domain` `domain_len` units; the lengths are in-out.
        let ok = unsafe {
            LookupAccountNameW(
                std::ptr::null(),
                wide.as_ptr(),
                sid.as_mut_ptr().cast(),
                &mut sid_len,
                domain.as_mut_ptr(),
                &mut domain_len,
                &mut kind,
            )
        };
        if ok != 0 {
            let text = sid_string(sid.as_mut_ptr().cast())?;
            // SidTypeUser 1, SidTypeGroup 2, SidTypeAlias 4, SidTypeWellKnownGroup 5.
            let kind = match kind {
                1 => AccountKind::User,
                2 | 4 | 5 => AccountKind::Group,
                _ => AccountKind::Other,
            };
            return Ok((text, kind));
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(ERROR_INSUFFICIENT_BUFFER as i32)
            || sid_len > 1024
            || domain_len > 4096
        {
            return Err(error);
        }
    }
    Err(io::Error::other(format!(
        "LookupAccountNameW kept asking for a larger buffer for {name:?}"
    )))
}

/// A file's identity: its volume's serial number and its file index
/// (`GetFileInformationByHandle`), for the file at `path` now.
///
/// # Errors
/// The system's error opening the file or reading its information.
pub fn file_identity(path: &Path) -> io::Result<(u64, u64)> {
    // No access rights needed for the information; share everything so that
    // a running program's image (or a file being replaced) can be opened.
    let file = std::fs::OpenOptions::new()
        .access_mode(0)
        .share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE)
        .custom_flags(FILE_FLAG_BACKUP_SEMANTICS)
        .open(path)?;
    // SAFETY: all-zero is a valid BY_HANDLE_FILE_INFORMATION (plain integers).
    let mut info: BY_HANDLE_FILE_INFORMATION = unsafe { std::mem::zeroed() };
    // SAFETY: `file` is open for the call; `info` is a valid out-pointer.
    if unsafe { GetFileInformationByHandle(file.as_raw_handle() as HANDLE, &mut info) } == 0 {
        return Err(io::Error::last_os_error());
    }
    let index = (u64::from(info.nFileIndexHigh) << 32) | u64::from(info.nFileIndexLow);
    Ok((u64::from(info.dwVolumeSerialNumber), index))
}

/// Whether a named pipe `name` (`\\.\pipe\…`) exists now: it has an instance
/// waiting for a client, or all its instances are busy. Connects to nothing.
pub fn pipe_exists(name: &Path) -> bool {
    let wide: Vec<u16> = name.as_os_str().encode_wide().chain(Some(0)).collect();
    // SAFETY: `wide` is NUL-terminated; a 1 ms wait returns at once when
    // an instance is free, and fails with ERROR_SEM_TIMEOUT when all are busy
    // or ERROR_FILE_NOT_FOUND when there is no such pipe.
    if unsafe { WaitNamedPipeW(wide.as_ptr(), 1) } != 0 {
        return true;
    }
    io::Error::last_os_error().raw_os_error() == Some(ERROR_SEM_TIMEOUT as i32)
}
