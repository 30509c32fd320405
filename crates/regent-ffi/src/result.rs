//! `regent_result`: the one error table (DESIGN §7) as a C enum, and its
//! names and meanings.
//!
//! The enum is written out here because cbindgen reads source, not macro
//! expansions; a test checks it against `regent_proto::ErrorCode::ALL`
//! (numbers and names), so the two cannot drift.

use std::ffi::{CStr, CString, c_char};
use std::sync::OnceLock;

use ::regent_client::ErrorCode;

/// What a fallible call did: `REGENT_OK` (0), or an error code from regent's
/// one table. The numbers are the same everywhere (agent answers, the Rust
/// client, the Python binding, the CLI's exit status) and never change
/// meaning; new codes are only ever appended, so treat unknown numbers as
/// errors. `regent_result_name` and `regent_result_message` turn a code into
/// text; `regent_last_error_message` explains the last failure in detail.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum regent_result {
    /// Success.
    REGENT_OK = 0,
    /// The agent holds no auth token: enroll it (`regent enroll`).
    REGENT_NOT_ENROLLED = 1,
    /// The license server does not know the registration token.
    REGENT_REGISTRATION_TOKEN_INVALID = 2,
    /// The registration token has expired.
    REGENT_REGISTRATION_TOKEN_EXPIRED = 3,
    /// The registration token has no counts left.
    REGENT_REGISTRATION_TOKEN_EXHAUSTED = 4,
    /// The registration token is disabled.
    REGENT_REGISTRATION_TOKEN_DISABLED = 5,
    /// The auth token was revoked or its session ended: enroll again.
    REGENT_REVOKED = 6,
    /// No token with the requested validity now; retry (see
    /// `regent_last_error_retry_after_ms`).
    REGENT_UNAVAILABLE = 7,
    /// The license server is rate-limiting this device; retry later.
    REGENT_RATE_LIMITED = 8,
    /// The client's cap on active tokens is reached; retry when one expires.
    REGENT_TOKEN_LIMIT = 9,
    /// Every instance slot is in use; retry when another instance exits.
    REGENT_NO_FREE_INSTANCE = 10,
    /// The caller may not do this (e.g. someone else's agent socket).
    REGENT_PERMISSION_DENIED = 11,
    /// A malformed request — in this library, also a NULL or invalid argument.
    REGENT_BAD_REQUEST = 12,
    /// The library and the agent share no protocol version.
    REGENT_UNSUPPORTED_VERSION = 13,
    /// No agent listens on the socket: start it or check `REGENT_SOCKET`.
    REGENT_AGENT_UNREACHABLE = 14,
    /// The agent did not answer within the timeout.
    REGENT_TIMEOUT = 15,
    /// The agent's secret store is unavailable.
    REGENT_STORE_UNAVAILABLE = 16,
    /// The agent's configuration is invalid.
    REGENT_CONFIG = 17,
    /// The license server answered with an error (its message is passed through).
    REGENT_SERVER_ERROR = 18,
    /// A bug in regent (including a panic stopped at this library's boundary).
    REGENT_INTERNAL = 19,
    /// The license server rejected the client id or secret.
    REGENT_CLIENT_CREDENTIALS_INVALID = 20,
    /// The device is already enrolled.
    REGENT_ALREADY_ENROLLED = 21,
    /// A user's sign-in did not complete (denied, expired, code refused).
    REGENT_SIGN_IN_FAILED = 22,
}

use regent_result::*;

impl regent_result {
    /// Every value, in number order.
    ///
    /// cbindgen:ignore
    pub const ALL: [regent_result; 23] = [
        REGENT_OK,
        REGENT_NOT_ENROLLED,
        REGENT_REGISTRATION_TOKEN_INVALID,
        REGENT_REGISTRATION_TOKEN_EXPIRED,
        REGENT_REGISTRATION_TOKEN_EXHAUSTED,
        REGENT_REGISTRATION_TOKEN_DISABLED,
        REGENT_REVOKED,
        REGENT_UNAVAILABLE,
        REGENT_RATE_LIMITED,
        REGENT_TOKEN_LIMIT,
        REGENT_NO_FREE_INSTANCE,
        REGENT_PERMISSION_DENIED,
        REGENT_BAD_REQUEST,
        REGENT_UNSUPPORTED_VERSION,
        REGENT_AGENT_UNREACHABLE,
        REGENT_TIMEOUT,
        REGENT_STORE_UNAVAILABLE,
        REGENT_CONFIG,
        REGENT_SERVER_ERROR,
        REGENT_INTERNAL,
        REGENT_CLIENT_CREDENTIALS_INVALID,
        REGENT_ALREADY_ENROLLED,
        REGENT_SIGN_IN_FAILED,
    ];

    /// The value with this number, if there is one.
    pub fn from_number(number: u32) -> Option<regent_result> {
        Self::ALL.into_iter().find(|r| *r as u32 == number)
    }

    /// The table's code; `None` for `REGENT_OK`.
    pub fn code(self) -> Option<ErrorCode> {
        u8::try_from(self as u32)
            .ok()
            .and_then(ErrorCode::from_number)
    }

    /// The stable name: the table's (`"NOT_ENROLLED"`), or `"OK"`.
    pub fn name(self) -> &'static CStr {
        match self {
            REGENT_OK => c"OK",
            REGENT_NOT_ENROLLED => c"NOT_ENROLLED",
            REGENT_REGISTRATION_TOKEN_INVALID => c"REGISTRATION_TOKEN_INVALID",
            REGENT_REGISTRATION_TOKEN_EXPIRED => c"REGISTRATION_TOKEN_EXPIRED",
            REGENT_REGISTRATION_TOKEN_EXHAUSTED => c"REGISTRATION_TOKEN_EXHAUSTED",
            REGENT_REGISTRATION_TOKEN_DISABLED => c"REGISTRATION_TOKEN_DISABLED",
            REGENT_REVOKED => c"REVOKED",
            REGENT_UNAVAILABLE => c"UNAVAILABLE",
            REGENT_RATE_LIMITED => c"RATE_LIMITED",
            REGENT_TOKEN_LIMIT => c"TOKEN_LIMIT",
            REGENT_NO_FREE_INSTANCE => c"NO_FREE_INSTANCE",
            REGENT_PERMISSION_DENIED => c"PERMISSION_DENIED",
            REGENT_BAD_REQUEST => c"BAD_REQUEST",
            REGENT_UNSUPPORTED_VERSION => c"UNSUPPORTED_VERSION",
            REGENT_AGENT_UNREACHABLE => c"AGENT_UNREACHABLE",
            REGENT_TIMEOUT => c"TIMEOUT",
            REGENT_STORE_UNAVAILABLE => c"STORE_UNAVAILABLE",
            REGENT_CONFIG => c"CONFIG",
            REGENT_SERVER_ERROR => c"SERVER_ERROR",
            REGENT_INTERNAL => c"INTERNAL",
            REGENT_CLIENT_CREDENTIALS_INVALID => c"CLIENT_CREDENTIALS_INVALID",
            REGENT_ALREADY_ENROLLED => c"ALREADY_ENROLLED",
            REGENT_SIGN_IN_FAILED => c"SIGN_IN_FAILED",
        }
    }

    /// One line saying what the value means (the table's meaning).
    pub fn meaning(self) -> &'static CStr {
        static MEANINGS: OnceLock<Vec<CString>> = OnceLock::new();
        let meanings = MEANINGS.get_or_init(|| {
            regent_result::ALL
                .iter()
                .map(|r| match r.code() {
                    Some(code) => c_string(code.meaning()),
                    None => c"success".to_owned(),
                })
                .collect()
        });
        meanings
            .get(self as usize)
            .map(CString::as_c_str)
            .unwrap_or(c"unknown result code")
    }
}

impl From<ErrorCode> for regent_result {
    fn from(code: ErrorCode) -> Self {
        // Codes added to the table before this enum learns them read as INTERNAL
        // (the unit tests keep that from happening).
        regent_result::from_number(u32::from(code.number())).unwrap_or(REGENT_INTERNAL)
    }
}

/// The stable name of a `regent_result` (pass any number): the error table's
/// name such as `"NOT_ENROLLED"` (the C constant without `REGENT_`), `"OK"`
/// for 0, `"UNKNOWN"` for a number the library does not know.
///
/// Returns a static string; never NULL. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn regent_result_name(result: u32) -> *const c_char {
    ffi_boundary!("regent_result_name", {
        regent_result::from_number(result)
            .map(regent_result::name)
            .unwrap_or(c"UNKNOWN")
            .as_ptr()
    })
}

/// One line saying what a `regent_result` means in general, e.g. "the agent
/// holds no auth token; enroll it …". For what happened in a particular
/// call, use `regent_last_error_message`.
///
/// Returns a static string; never NULL. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn regent_result_message(result: u32) -> *const c_char {
    ffi_boundary!("regent_result_message", {
        regent_result::from_number(result)
            .map(regent_result::meaning)
            .unwrap_or(c"unknown result code (from a newer libregent?)")
            .as_ptr()
    })
}

/// Whether trying the same call again later can succeed without anyone
/// changing anything (`REGENT_UNAVAILABLE`, `REGENT_TIMEOUT`,
/// `REGENT_AGENT_UNREACHABLE`, …). False for `REGENT_OK` and unknown numbers.
/// Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn regent_result_is_retryable(result: u32) -> bool {
    ffi_boundary!("regent_result_is_retryable", {
        regent_result::from_number(result)
            .and_then(regent_result::code)
            .is_some_and(ErrorCode::is_retryable)
    })
}

/// A C copy of `text` (interior NULs, which C cannot carry, become spaces).
pub(crate) fn c_string(text: &str) -> CString {
    CString::new(text.replace('\0', " ")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::ffi::CStr;

    use super::*;

    fn text(ptr: *const c_char) -> String {
        assert!(!ptr.is_null());
        unsafe { CStr::from_ptr(ptr) }.to_str().unwrap().to_owned()
    }

    #[test]
    fn the_c_enum_is_the_error_table() {
        assert_eq!(regent_result::ALL.len(), ErrorCode::ALL.len() + 1);
        assert_eq!(regent_result::ALL[0] as u32, 0);
        for (n, r) in regent_result::ALL.iter().enumerate() {
            assert_eq!(*r as usize, n, "{r:?} is out of order");
        }
        for code in ErrorCode::ALL {
            let r = regent_result::from(*code);
            assert_eq!(r as u32, u32::from(code.number()), "{code}");
            assert_eq!(format!("{r:?}"), format!("REGENT_{}", code.name()));
            assert_eq!(r.name().to_str().unwrap(), code.name());
            assert_eq!(r.code(), Some(*code));
            assert_eq!(r.meaning().to_str().unwrap(), code.meaning());
        }
        assert_eq!(REGENT_OK.code(), None);
    }

    #[test]
    fn names_messages_and_retryability_for_every_number() {
        assert_eq!(text(regent_result_name(0)), "OK");
        assert_eq!(text(regent_result_message(0)), "success");
        assert!(!regent_result_is_retryable(0));
        for code in ErrorCode::ALL {
            let n = u32::from(code.number());
            assert_eq!(text(regent_result_name(n)), code.name());
            assert_eq!(text(regent_result_message(n)), code.meaning());
            assert_eq!(regent_result_is_retryable(n), code.is_retryable());
        }
        // Invalid numbers: text, never NULL, never retryable.
        for n in [23, 255, 1000, u32::MAX] {
            assert_eq!(text(regent_result_name(n)), "UNKNOWN");
            assert!(text(regent_result_message(n)).contains("unknown"));
            assert!(!regent_result_is_retryable(n));
        }
        assert!(regent_result_is_retryable(REGENT_UNAVAILABLE as u32));
        assert!(!regent_result_is_retryable(REGENT_REVOKED as u32));
    }
}
