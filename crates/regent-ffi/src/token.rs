//! `regent_token`: an access token handed to C. Its bearer value lives in a
//! buffer zeroized when the token is freed.

use std::ffi::{CString, c_char};
use std::time::SystemTime;

use regent_proto::time::to_unix_ms as unix_ms;

use ::regent_client::{Error, ErrorCode, Token};
use zeroize::Zeroizing;

use crate::boundary::{self, arg_out, arg_ref, into_handle};

/// An access token from the agent (opaque).
///
/// Made by `regent_client_token`, `regent_token_clone`, or borrowed from a
/// subscription event. Immutable: its accessors may be called from any
/// threads at once. Free it once with `regent_token_free`, which zeroizes the
/// bearer value; strings it returned are invalid afterwards.
pub struct regent_token {
    /// The bearer value and a trailing NUL, allocated once at its exact size
    /// (no reallocation leaves a copy behind) and zeroized on drop.
    value: Zeroizing<Vec<u8>>,
    token_type: CString,
    scope: Option<CString>,
    expires_at_ms: u64,
}

impl std::fmt::Debug for regent_token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("regent_token")
            .field("value", &"[redacted]")
            .field("token_type", &self.token_type)
            .field("scope", &self.scope)
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

impl regent_token {
    /// Copies a client token; its own copy of the secret is zeroized when
    /// `token` drops.
    ///
    /// # Errors
    /// `SERVER_ERROR` when a field holds a NUL byte, which a C string cannot carry.
    pub(crate) fn new(token: &Token) -> Result<Self, Error> {
        let secret = token.secret().as_bytes();
        if secret.contains(&0) {
            return Err(Error::new(
                ErrorCode::ServerError,
                "the agent handed out an access token containing a NUL byte, \
                 which a C string cannot carry; report this to the license server's operator",
            ));
        }
        let mut value = Zeroizing::new(Vec::with_capacity(secret.len() + 1));
        value.extend_from_slice(secret);
        value.push(0);
        let text = |field: &str, name: &str| {
            CString::new(field).map_err(|_| {
                Error::new(
                    ErrorCode::ServerError,
                    format!("the agent handed out a token whose {name} contains a NUL byte"),
                )
            })
        };
        Ok(regent_token {
            value,
            token_type: text(&token.token_type, "type")?,
            scope: token
                .scope
                .as_deref()
                .map(|s| text(s, "scope"))
                .transpose()?,
            expires_at_ms: unix_ms(token.expires_at),
        })
    }

    fn remaining_ms(&self) -> u64 {
        self.expires_at_ms
            .saturating_sub(unix_ms(SystemTime::now()))
    }
}

/// The bearer value (NUL-terminated; for an `Authorization: Bearer …` header).
///
/// Borrowed from `token`: valid until `regent_token_free(token)`, which wipes
/// it. Do not log it. Returns NULL when `token` is NULL.
///
/// # Safety
/// `token` is NULL or a live token.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn regent_token_access_token(token: *const regent_token) -> *const c_char {
    ffi_boundary!("regent_token_access_token", {
        // SAFETY: the caller's contract.
        match unsafe { arg_ref(token, "token") } {
            Ok(token) => token.value.as_ptr().cast(),
            Err(_) => std::ptr::null(),
        }
    })
}

/// The 0.1 name of `regent_token_access_token`, kept so that existing
/// programs build; to be removed in 0.3.
///
/// # Safety
/// `token` is NULL or a live token.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn regent_token_value(token: *const regent_token) -> *const c_char {
    ffi_boundary!("regent_token_value", {
        // SAFETY: the caller's contract, passed on unchanged.
        unsafe { regent_token_access_token(token) }
    })
}

/// The token type, usually `"Bearer"`. Borrowed from `token` (valid until it
/// is freed); NULL when `token` is NULL.
///
/// # Safety
/// `token` is NULL or a live token.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn regent_token_type(token: *const regent_token) -> *const c_char {
    ffi_boundary!("regent_token_type", {
        // SAFETY: the caller's contract.
        match unsafe { arg_ref(token, "token") } {
            Ok(token) => token.token_type.as_ptr(),
            Err(_) => std::ptr::null(),
        }
    })
}

/// The granted scope, or NULL when the license server named none (or `token`
/// is NULL). Borrowed from `token`: valid until it is freed.
///
/// # Safety
/// `token` is NULL or a live token.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn regent_token_scope(token: *const regent_token) -> *const c_char {
    ffi_boundary!("regent_token_scope", {
        // SAFETY: the caller's contract.
        match unsafe { arg_ref(token, "token") } {
            Ok(token) => token
                .scope
                .as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr()),
            Err(_) => std::ptr::null(),
        }
    })
}

/// When the token expires: milliseconds since the Unix epoch (wall clock).
/// 0 when `token` is NULL.
///
/// # Safety
/// `token` is NULL or a live token.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn regent_token_expires_at_ms(token: *const regent_token) -> u64 {
    ffi_boundary!("regent_token_expires_at_ms", {
        // SAFETY: the caller's contract.
        unsafe { arg_ref(token, "token") }.map_or(0, |token| token.expires_at_ms)
    })
}

/// How long the token stays valid from now, in milliseconds, by the wall
/// clock; 0 once expired or when `token` is NULL.
///
/// # Safety
/// `token` is NULL or a live token.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn regent_token_remaining_ms(token: *const regent_token) -> u64 {
    ffi_boundary!("regent_token_remaining_ms", {
        // SAFETY: the caller's contract.
        unsafe { arg_ref(token, "token") }.map_or(0, regent_token::remaining_ms)
    })
}

/// Copies `token` (for example one borrowed from a subscription event, to
/// keep it after the callback returns). The caller owns `*token_out` and
/// frees it with `regent_token_free`.
///
/// Errors: `REGENT_BAD_REQUEST` when an argument is NULL.
///
/// # Safety
/// `token` is NULL or a live token; `token_out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn regent_token_clone(
    token: *const regent_token,
    token_out: *mut *mut regent_token,
) -> regent_result {
    ffi_boundary!("regent_token_clone", {
        // SAFETY: the caller's contract.
        let token = unsafe { arg_ref(token, "token") }?;
        // SAFETY: the caller's contract.
        let out = unsafe { arg_out(token_out, "token_out") }?;
        let copy = regent_token {
            value: token.value.clone(),
            token_type: token.token_type.clone(),
            scope: token.scope.clone(),
            expires_at_ms: token.expires_at_ms,
        };
        out.write(into_handle(copy));
        Ok(())
    })
}

/// Frees a token and zeroizes its bearer value. NULL does nothing.
///
/// Ownership: only tokens the caller owns (from `regent_client_token` or
/// `regent_token_clone`), once; never a token borrowed from an event.
/// Must not run concurrently with other calls on the same token.
///
/// # Safety
/// `token` is NULL or an owned, live token.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn regent_token_free(token: *mut regent_token) {
    ffi_boundary!("regent_token_free", {
        // SAFETY: the caller's contract.
        unsafe { boundary::free_handle(token) }
    })
}

use crate::result::regent_result;

#[cfg(test)]
pub(crate) fn test_token(secret: &str, lifetime_secs: u64) -> Token {
    Token::new(
        secret.to_owned().into(),
        "Bearer",
        SystemTime::now() + std::time::Duration::from_secs(lifetime_secs),
        Some("licensed".into()),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::ffi::CStr;
    use std::ptr;

    use super::*;
    use crate::regent_last_error_message;

    fn text(p: *const c_char) -> String {
        unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_owned()
    }

    #[test]
    fn accessors_read_the_token_and_null_reads_as_nothing() {
        let token = into_handle(regent_token::new(&test_token("eyJ-secret", 600)).unwrap());
        unsafe {
            assert_eq!(text(regent_token_access_token(token)), "eyJ-secret");
            assert_eq!(text(regent_token_value(token)), "eyJ-secret");
            assert_eq!(text(regent_token_type(token)), "Bearer");
            assert_eq!(text(regent_token_scope(token)), "licensed");
            let now = unix_ms(SystemTime::now());
            let expires = regent_token_expires_at_ms(token);
            assert!(expires > now + 590_000 && expires <= now + 600_000);
            let left = regent_token_remaining_ms(token);
            assert!(left > 590_000 && left <= 600_000, "{left}");

            assert!(regent_token_access_token(ptr::null()).is_null());
            assert!(regent_token_value(ptr::null()).is_null());
            assert!(regent_token_type(ptr::null()).is_null());
            assert!(regent_token_scope(ptr::null()).is_null());
            assert_eq!(regent_token_expires_at_ms(ptr::null()), 0);
            assert_eq!(regent_token_remaining_ms(ptr::null()), 0);
            regent_token_free(token);
            regent_token_free(ptr::null_mut());
        }
    }

    #[test]
    fn clone_copies_and_checks_its_arguments() {
        let token = into_handle(regent_token::new(&test_token("abc", 60)).unwrap());
        unsafe {
            let mut copy = ptr::null_mut();
            assert_eq!(
                regent_token_clone(token, &mut copy),
                regent_result::REGENT_OK
            );
            regent_token_free(token);
            assert_eq!(text(regent_token_value(copy)), "abc");
            assert_eq!(text(regent_last_error_message()), "");

            let mut untouched = ptr::dangling_mut::<regent_token>();
            assert_eq!(
                regent_token_clone(ptr::null(), &mut untouched),
                regent_result::REGENT_BAD_REQUEST
            );
            assert_eq!(untouched, ptr::dangling_mut(), "written on failure");
            assert!(text(regent_last_error_message()).contains("`token` is NULL"));
            assert_eq!(
                regent_token_clone(copy, ptr::null_mut()),
                regent_result::REGENT_BAD_REQUEST
            );
            assert!(text(regent_last_error_message()).contains("`token_out` is NULL"));
            regent_token_free(copy);
        }
    }

    #[test]
    fn expired_tokens_have_nothing_left_and_scope_may_be_absent() {
        let mut t = test_token("x", 0);
        t.expires_at = SystemTime::now() - std::time::Duration::from_secs(5);
        t.scope = None;
        let token = into_handle(regent_token::new(&t).unwrap());
        unsafe {
            assert_eq!(regent_token_remaining_ms(token), 0);
            assert!(regent_token_scope(token).is_null());
            regent_token_free(token);
        }
    }

    /// The test binary's allocator: while armed on a thread, it notes any
    /// block freed with the canary still in it.
    struct CanaryWatch;

    const CANARY: &[u8] = b"zeroize-canary-7f3a9c";

    thread_local! {
        static ARMED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        static SEEN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    // SAFETY: forwards every call to the system allocator unchanged.
    unsafe impl std::alloc::GlobalAlloc for CanaryWatch {
        unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
            unsafe { std::alloc::System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
            if ARMED.try_with(|a| a.get()).unwrap_or(false) {
                // SAFETY: the block is live until the System call below.
                let block = unsafe { std::slice::from_raw_parts(ptr, layout.size()) };
                if block.windows(CANARY.len()).any(|w| w == CANARY) {
                    let _ = SEEN.try_with(|s| s.set(true));
                }
            }
            unsafe { std::alloc::System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static WATCH: CanaryWatch = CanaryWatch;

    /// Runs `free` with the watch armed; true when a block still holding the
    /// canary was freed.
    fn canary_freed(free: impl FnOnce()) -> bool {
        SEEN.set(false);
        ARMED.set(true);
        free();
        ARMED.set(false);
        SEEN.get()
    }

    #[test]
    fn freeing_a_token_wipes_its_value() {
        let secret = std::str::from_utf8(CANARY).unwrap();
        let token = into_handle(regent_token::new(&test_token(secret, 60)).unwrap());
        let mut copy = ptr::null_mut();
        unsafe {
            assert_eq!(
                regent_token_clone(token, &mut copy),
                regent_result::REGENT_OK
            );
            assert_eq!(CStr::from_ptr(regent_token_value(copy)).to_bytes(), CANARY);
            assert!(!canary_freed(|| regent_token_free(token)));
            assert!(!canary_freed(|| regent_token_free(copy)));
        }
        // The control: memory freed without wiping is caught.
        assert!(canary_freed(|| drop(CANARY.to_vec())));
    }

    #[test]
    fn a_nul_in_the_secret_is_refused_without_echoing_it() {
        let e = regent_token::new(&test_token("top\0secret", 60)).unwrap_err();
        assert_eq!(e.code, ErrorCode::ServerError);
        assert!(!e.message.contains("secret\""), "{e}");
        assert!(!e.message.contains("top"), "{e}");
        let debug = format!(
            "{:?}",
            regent_token::new(&test_token("hidden-value", 60)).unwrap()
        );
        assert!(!debug.contains("hidden-value"), "{debug}");
    }
}
