//! `libregent`: the C ABI of the regent client (DESIGN §11), over
//! `regent_client::blocking`. C users read `bindings/c/include/regent.h`,
//! generated from this crate by a pinned cbindgen; the header's comments are
//! these doc comments.
//!
//! - `boundary`: the panic boundary every exported function sits behind
//!   (`ffi_boundary!`), the one NULL-checking helper, and the thread's last
//!   error message.
//! - `result`: `regent_result`, the one error table (same numbers as
//!   `regent_proto::ErrorCode`), and its names and meanings.
//! - `client`: `regent_client_options` and `regent_client` (connect, token).
//! - `token`: `regent_token`, an access token whose memory is zeroized on free.
//! - `subscription`: `regent_subscription`, tokens pushed to a callback on a
//!   library thread.
//! - `user`: `regent_user`, who is signed in to the agent (`regent login`).
//!
//! Conventions (rustls-ffi): opaque handles; `regent_<type>_<verb>` names;
//! fallible calls return `regent_result` and write their out-parameters
//! (always last) only on success; `*_free(NULL)` does nothing.

// This crate is the C ABI: it must take and hand out raw pointers, so unsafe
// code is allowed here (and only here), each block with its safety argument.
#![allow(unsafe_code)]
// The C names (`regent_client`, `REGENT_OK`) are the ABI.
#![allow(non_camel_case_types)]
#![warn(missing_docs)]

#[macro_use]
mod boundary;
mod client;
mod result;
mod subscription;
mod token;
mod user;

#[cfg(test)]
mod fake_agent;

// The Rust view of the C API (for tests and Rust hosts linking the rlib).
pub use boundary::{regent_last_error_message, regent_last_error_retry_after_ms};
pub use client::*;
pub use result::*;
pub use subscription::*;
pub use token::*;
pub use user::*;

use std::ffi::c_char;

/// The version of the library actually loaded, e.g. `"0.1.0"` — compare it
/// with the header's `REGENT_VERSION` to detect a mismatched library.
///
/// Returns a static NUL-terminated string; never NULL. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn regent_version() -> *const c_char {
    ffi_boundary!("regent_version", {
        const VERSION: &std::ffi::CStr = match std::ffi::CStr::from_bytes_with_nul(
            concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes(),
        ) {
            Ok(version) => version,
            Err(_) => c"unknown",
        };
        VERSION.as_ptr()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::ffi::{CStr, c_void};
    use std::ptr;

    use super::*;
    use crate::boundary::inject;
    use crate::fake_agent::FakeAgent;
    use crate::regent_result::*;

    #[test]
    fn the_version_is_cargo_toml_s() {
        // The header's REGENT_VERSION macros are checked in tests/header.rs.
        let loaded = unsafe { CStr::from_ptr(regent_version()) };
        assert_eq!(loaded.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }

    /// Every exported function, as named in the source.
    fn exported_in_source() -> Vec<String> {
        let sources = [
            include_str!("lib.rs"),
            include_str!("boundary.rs"),
            include_str!("client.rs"),
            include_str!("result.rs"),
            include_str!("subscription.rs"),
            include_str!("token.rs"),
        ];
        let mut names = Vec::new();
        for source in sources {
            for (at, _) in source.match_indices("#[unsafe(no_mangle)]\n") {
                let rest = &source[at..];
                let rest = &rest[rest.find(" fn ").unwrap() + 4..];
                names.push(rest[..rest.find('(').unwrap()].to_owned());
            }
        }
        names.sort();
        names
    }

    fn last_error() -> String {
        unsafe { CStr::from_ptr(regent_last_error_message()) }
            .to_str()
            .unwrap()
            .to_owned()
    }

    unsafe extern "C" fn ignore(_: *mut c_void, _: *const regent_event) {}

    /// A panic injected inside the boundary of each exported function in
    /// turn comes out as REGENT_INTERNAL (or NULL / 0 / nothing), never as an
    /// unwind into C or an abort; out-parameters stay untouched, and the
    /// handles keep working afterwards.
    #[test]
    fn a_panic_inside_any_entry_point_becomes_internal() {
        let agent = FakeAgent::start();
        let socket = agent.c_path();
        let mut options = ptr::null_mut();
        let mut client = ptr::null_mut();
        let mut token = ptr::null_mut();
        unsafe {
            assert_eq!(regent_client_options_new(&mut options), REGENT_OK);
            assert_eq!(
                regent_client_options_set_socket(options, socket.as_ptr()),
                REGENT_OK
            );
            assert_eq!(regent_client_connect(options, &mut client), REGENT_OK);
            assert_eq!(regent_client_token(client, 1, &mut token), REGENT_OK);
        }

        let mut covered = Vec::new();
        let mut check = |name: &'static str, call: &mut dyn FnMut() -> Option<regent_result>| {
            let outcome = {
                let _armed = inject::panic_in(name);
                call()
            };
            if let Some(rc) = outcome {
                assert_eq!(rc, REGENT_INTERNAL, "{name}");
                let message = last_error();
                assert!(
                    message.contains(&format!("internal error in {name}")),
                    "{name}: {message}"
                );
            }
            covered.push(name.to_owned());
        };
        let sentinel = ptr::dangling_mut();
        unsafe {
            check("regent_version", &mut || {
                assert!(regent_version().is_null());
                None
            });
            check("regent_last_error_message", &mut || {
                assert!(regent_last_error_message().is_null());
                None
            });
            check("regent_last_error_retry_after_ms", &mut || {
                assert_eq!(regent_last_error_retry_after_ms(), 0);
                None
            });
            check("regent_result_name", &mut || {
                assert!(regent_result_name(1).is_null());
                None
            });
            check("regent_result_message", &mut || {
                assert!(regent_result_message(1).is_null());
                None
            });
            check("regent_result_is_retryable", &mut || {
                assert!(!regent_result_is_retryable(REGENT_UNAVAILABLE as u32));
                None
            });
            check("regent_client_options_new", &mut || {
                let mut out = sentinel;
                let rc = regent_client_options_new(&mut out);
                assert_eq!(out, sentinel);
                Some(rc)
            });
            check("regent_client_options_set_app", &mut || {
                Some(regent_client_options_set_app(options, c"x".as_ptr()))
            });
            check("regent_client_options_set_socket", &mut || {
                Some(regent_client_options_set_socket(options, c"/x".as_ptr()))
            });
            check("regent_client_options_set_instance", &mut || {
                Some(regent_client_options_set_instance(options, c"x".as_ptr()))
            });
            check(
                "regent_client_options_set_wait_for_instance_ms",
                &mut || Some(regent_client_options_set_wait_for_instance_ms(options, 9)),
            );
            check("regent_client_options_set_connect_timeout_ms", &mut || {
                Some(regent_client_options_set_connect_timeout_ms(options, 9))
            });
            check("regent_client_options_set_request_timeout_ms", &mut || {
                Some(regent_client_options_set_request_timeout_ms(options, 9))
            });
            check("regent_client_options_set_agent_uid", &mut || {
                Some(regent_client_options_set_agent_uid(options, 9))
            });
            check("regent_client_options_free", &mut || {
                regent_client_options_free(ptr::null_mut());
                None
            });
            check("regent_client_connect", &mut || {
                let mut out = sentinel.cast();
                let rc = regent_client_connect(options, &mut out);
                assert_eq!(out, sentinel.cast());
                Some(rc)
            });
            check("regent_client_token", &mut || {
                let mut out = sentinel.cast();
                let rc = regent_client_token(client, 1, &mut out);
                assert_eq!(out, sentinel.cast());
                Some(rc)
            });
            check("regent_token_once", &mut || {
                let mut out = sentinel.cast();
                let rc = regent_token_once(options, 1, &mut out);
                assert_eq!(out, sentinel.cast());
                Some(rc)
            });
            check("regent_client_subscribe", &mut || {
                let mut out = sentinel.cast();
                let rc =
                    regent_client_subscribe(client, 1, Some(ignore), ptr::null_mut(), &mut out);
                assert_eq!(out, sentinel.cast());
                Some(rc)
            });
            check("regent_client_free", &mut || {
                regent_client_free(ptr::null_mut());
                None
            });
            check("regent_token_access_token", &mut || {
                assert!(regent_token_access_token(token).is_null());
                None
            });
            check("regent_token_value", &mut || {
                assert!(regent_token_value(token).is_null());
                None
            });
            check("regent_token_type", &mut || {
                assert!(regent_token_type(token).is_null());
                None
            });
            check("regent_token_scope", &mut || {
                assert!(regent_token_scope(token).is_null());
                None
            });
            check("regent_token_expires_at_ms", &mut || {
                assert_eq!(regent_token_expires_at_ms(token), 0);
                None
            });
            check("regent_token_remaining_ms", &mut || {
                assert_eq!(regent_token_remaining_ms(token), 0);
                None
            });
            check("regent_token_clone", &mut || {
                let mut out = sentinel.cast();
                let rc = regent_token_clone(token, &mut out);
                assert_eq!(out, sentinel.cast());
                Some(rc)
            });
            check("regent_token_free", &mut || {
                regent_token_free(ptr::null_mut());
                None
            });
            check("regent_subscription_free", &mut || {
                regent_subscription_free(ptr::null_mut());
                None
            });
        }
        covered.sort();
        assert_eq!(
            covered,
            exported_in_source(),
            "every exported function is covered"
        );

        // The handles survived the panics: the options kept their values and
        // the client still answers.
        unsafe {
            let mut again = ptr::null_mut();
            assert_eq!(regent_client_connect(options, &mut again), REGENT_OK);
            let mut fresh = ptr::null_mut();
            assert_eq!(regent_client_token(client, 2, &mut fresh), REGENT_OK);
            assert_eq!(CStr::from_ptr(regent_token_value(fresh)), c"token-2");
            for t in [token, fresh] {
                regent_token_free(t);
            }
            regent_client_free(again);
            regent_client_free(client);
            regent_client_options_free(options);
        }
    }
}
