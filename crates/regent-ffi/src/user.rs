//! `regent_user`: who is signed in to the agent (`regent login`), as the
//! identity provider named them, and the scope it granted.

use std::ffi::{CString, c_char};

use ::regent_client::{Error, ErrorCode, SignedInUser};

use crate::boundary::{self, arg_out, arg_ref, into_handle};
use crate::client::regent_client;
use crate::result::regent_result;

/// The user signed in to the agent (opaque): made by `regent_client_user`,
/// freed once with `regent_user_free`. Immutable; its accessors may be
/// called from any threads at once. Strings it returns are borrowed from it.
#[derive(Debug)]
pub struct regent_user {
    sub: CString,
    preferred_username: Option<CString>,
    email: Option<CString>,
    scope: Option<CString>,
}

impl regent_user {
    fn new(user: &SignedInUser, scope: Option<&str>) -> Result<Self, Error> {
        let text = |field: &str, name: &str| {
            CString::new(field).map_err(|_| {
                Error::new(
                    ErrorCode::ServerError,
                    format!("the agent reported a user whose {name} contains a NUL byte"),
                )
            })
        };
        let optional = |field: Option<&str>, name: &str| field.map(|f| text(f, name)).transpose();
        Ok(regent_user {
            sub: text(&user.sub, "sub")?,
            preferred_username: optional(user.preferred_username.as_deref(), "preferred_username")?,
            email: optional(user.email.as_deref(), "email")?,
            scope: optional(scope, "scope")?,
        })
    }
}

/// Who is signed in to the agent (`regent login`). Writes NULL to
/// `*user_out` (and returns `REGENT_OK`) when the agent holds a device
/// enrollment rather than a user's sign-in, or is not enrolled; the agent
/// tells only its own account (and root) who is signed in, so other callers
/// get NULL too. The caller owns a non-NULL `*user_out` and frees it with
/// `regent_user_free`.
///
/// Errors: `REGENT_AGENT_UNREACHABLE`, `REGENT_TIMEOUT`, `REGENT_BAD_REQUEST`
/// for NULL arguments. On error `*user_out` is untouched.
///
/// Thread-safe; one request to the agent.
///
/// # Safety
/// `client` is NULL or live; `user_out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn regent_client_user(
    client: *const regent_client,
    user_out: *mut *mut regent_user,
) -> regent_result {
    ffi_boundary!("regent_client_user", {
        // SAFETY: the caller's contract.
        let client = unsafe { arg_ref(client, "client") }?;
        // SAFETY: the caller's contract.
        let out = unsafe { arg_out(user_out, "user_out") }?;
        let status = client.inner.status()?;
        let user = match status.slots.first() {
            Some(slot) => match &slot.user {
                Some(user) => into_handle(regent_user::new(user, slot.scope.as_deref())?),
                None => std::ptr::null_mut(),
            },
            None => std::ptr::null_mut(),
        };
        out.write(user);
        Ok(())
    })
}

/// The provider's stable subject id (`sub`); never NULL for a live `user`
/// (NULL when `user` is NULL). Borrowed from `user`.
///
/// # Safety
/// `user` is NULL or a live user.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn regent_user_sub(user: *const regent_user) -> *const c_char {
    ffi_boundary!("regent_user_sub", {
        // SAFETY: the caller's contract.
        unsafe { arg_ref(user, "user") }.map_or(std::ptr::null(), |u| u.sub.as_ptr())
    })
}

/// The user's login name (`preferred_username`), or NULL when the provider
/// did not say. Borrowed from `user`.
///
/// # Safety
/// `user` is NULL or a live user.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn regent_user_preferred_username(user: *const regent_user) -> *const c_char {
    ffi_boundary!("regent_user_preferred_username", {
        // SAFETY: the caller's contract.
        unsafe { arg_ref(user, "user") }.map_or(std::ptr::null(), |u| {
            u.preferred_username
                .as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr())
        })
    })
}

/// The user's e-mail address (`email`), or NULL when the provider did not
/// say. Borrowed from `user`.
///
/// # Safety
/// `user` is NULL or a live user.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn regent_user_email(user: *const regent_user) -> *const c_char {
    ffi_boundary!("regent_user_email", {
        // SAFETY: the caller's contract.
        unsafe { arg_ref(user, "user") }.map_or(std::ptr::null(), |u| {
            u.email.as_ref().map_or(std::ptr::null(), |s| s.as_ptr())
        })
    })
}

/// The scope granted at sign-in (space-separated), or NULL when the server
/// did not say. Borrowed from `user`.
///
/// # Safety
/// `user` is NULL or a live user.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn regent_user_scope(user: *const regent_user) -> *const c_char {
    ffi_boundary!("regent_user_scope", {
        // SAFETY: the caller's contract.
        unsafe { arg_ref(user, "user") }.map_or(std::ptr::null(), |u| {
            u.scope.as_ref().map_or(std::ptr::null(), |s| s.as_ptr())
        })
    })
}

/// Frees a user. NULL does nothing. Once, and not while another call uses it.
///
/// # Safety
/// `user` is NULL or an owned, live user.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn regent_user_free(user: *mut regent_user) {
    ffi_boundary!("regent_user_free", {
        // SAFETY: the caller's contract.
        unsafe { boundary::free_handle(user) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_with_a_nul_byte_is_refused_not_cut() {
        let user = SignedInUser {
            sub: "u\0x".into(),
            preferred_username: None,
            email: None,
        };
        assert_eq!(
            regent_user::new(&user, None).unwrap_err().code,
            ErrorCode::ServerError
        );
        let user = SignedInUser {
            sub: "u-1".into(),
            preferred_username: Some("alice".into()),
            email: None,
        };
        let made = regent_user::new(&user, Some("openid")).unwrap();
        assert!(made.email.is_none());
        assert_eq!(made.scope.unwrap().to_str().unwrap(), "openid");
    }
}
