//! The C library's handout, for the latency comparison: `libregent`'s
//! exported functions (`regent_client_connect`, `regent_client_token`,
//! `regent_token_free`), called through the C ABI exactly as a C program
//! calls them — the crate's rlib exposes the same symbols the `.so`/`.a` do.
//!
//! Calling a C ABI is `unsafe` by nature, and measuring that call is the
//! point, so this module (and only this one in the bench) allows unsafe
//! code; every call states why its pointers are valid.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::path::Path;
use std::ptr;
use std::time::Duration;

use regent::{
    regent_client, regent_client_connect, regent_client_free, regent_client_options,
    regent_client_options_free, regent_client_options_new, regent_client_options_set_app,
    regent_client_options_set_socket, regent_client_token, regent_last_error_message,
    regent_result, regent_token, regent_token_free,
};

/// A failed C call: the function and the library's last error message.
#[derive(Debug, Clone)]
pub struct CallFailed(pub String);

impl std::fmt::Display for CallFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CallFailed {}

/// A path as the C library takes it: its bytes (Unix).
#[cfg(unix)]
fn c_path(path: &Path) -> Result<CString, String> {
    use std::os::unix::ffi::OsStrExt as _;
    CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())
}

/// A path as the C library takes it: UTF-8 (Windows).
#[cfg(not(unix))]
fn c_path(path: &Path) -> Result<CString, String> {
    let text = path
        .to_str()
        .ok_or_else(|| format!("{} is not valid UTF-8", path.display()))?;
    CString::new(text).map_err(|e| e.to_string())
}

/// A `regent_client *` from the C library, freed on drop.
#[derive(Debug)]
pub struct CClient {
    client: *mut regent_client,
}

fn check(what: &str, result: regent_result) -> Result<(), CallFailed> {
    if result == regent_result::REGENT_OK {
        return Ok(());
    }
    let message = regent_last_error_message();
    let text = if message.is_null() {
        String::new()
    } else {
        // SAFETY: the library returns NULL or a NUL-terminated string that
        // stays valid until the thread's next call into it.
        unsafe { std::ffi::CStr::from_ptr(message) }
            .to_string_lossy()
            .into_owned()
    };
    Err(CallFailed(format!("{what} failed ({result:?}): {text}")))
}

impl CClient {
    /// `regent_client_connect` with the socket and an app name set.
    ///
    /// # Errors
    /// The library's error, as text.
    pub fn connect(socket: &Path) -> Result<CClient, String> {
        let socket = c_path(socket)?;
        let mut options: *mut regent_client_options = ptr::null_mut();
        // SAFETY: `options` is a valid place for the out-parameter.
        check("regent_client_options_new", unsafe {
            regent_client_options_new(&mut options)
        })
        .map_err(|e| e.0)?;
        let configured = (|| {
            // SAFETY: `options` is the live handle made above; the strings are
            // NUL-terminated and outlive the calls (the library copies them).
            check("regent_client_options_set_socket", unsafe {
                regent_client_options_set_socket(options, socket.as_ptr())
            })?;
            // SAFETY: as above.
            check("regent_client_options_set_app", unsafe {
                regent_client_options_set_app(options, c"regent-bench-c".as_ptr())
            })?;
            let mut client: *mut regent_client = ptr::null_mut();
            // SAFETY: `options` is live; `client` is a valid out-parameter.
            check("regent_client_connect", unsafe {
                regent_client_connect(options, &mut client)
            })?;
            Ok::<_, CallFailed>(client)
        })();
        // SAFETY: `options` is live and not used after this (connect copied it).
        unsafe { regent_client_options_free(options) };
        configured.map(|client| CClient { client }).map_err(|e| e.0)
    }

    /// One `regent_client_token` call and the `regent_token_free` a C
    /// caller pairs with it.
    ///
    /// # Errors
    /// The library's error.
    pub fn token(&mut self, min_valid: Duration) -> Result<(), CallFailed> {
        let mut token: *mut regent_token = ptr::null_mut();
        let secs = u32::try_from(min_valid.as_secs()).unwrap_or(u32::MAX);
        // SAFETY: `self.client` is live until drop; `token` is a valid out-parameter.
        check("regent_client_token", unsafe {
            regent_client_token(self.client, secs, &mut token)
        })?;
        // SAFETY: the token was just handed to us, and is freed once.
        unsafe { regent_token_free(token) };
        Ok(())
    }
}

impl Drop for CClient {
    fn drop(&mut self) {
        // SAFETY: the client is live, freed once, and no call is in progress
        // (`token` takes `&mut self`).
        unsafe { regent_client_free(self.client) };
    }
}
