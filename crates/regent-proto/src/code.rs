//! The one error-code table.
//!
//! A number, once released, never changes meaning. New codes are appended at the
//! end; removed codes leave a hole. `0` is success (`REGENT_OK` in C) and is not a
//! variant here: Rust surfaces use `Result`.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident = $num:literal, $name:literal, $retryable:literal, $meaning:literal; )*) => {
        /// A stable error code. See the module docs for the rules.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant = $num, )*
        }

        impl ErrorCode {
            /// Every code, in number order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The stable number (C `regent_result`, CLI exit status).
            pub const fn number(self) -> u8 {
                self as u8
            }

            /// The stable upper-snake-case name, e.g. `"REVOKED"`.
            pub const fn name(self) -> &'static str {
                match self { $(ErrorCode::$variant => $name,)* }
            }

            /// One line saying what the code means.
            pub const fn meaning(self) -> &'static str {
                match self { $(ErrorCode::$variant => $meaning,)* }
            }

            /// Whether trying the same call again later can succeed without anyone
            /// changing anything.
            pub const fn is_retryable(self) -> bool {
                match self { $(ErrorCode::$variant => $retryable,)* }
            }

            /// The code with this number, if there is one.
            pub const fn from_number(n: u8) -> Option<ErrorCode> {
                match n { $($num => Some(ErrorCode::$variant),)* _ => None }
            }

            /// The code with this name, if there is one.
            pub fn from_name(s: &str) -> Option<ErrorCode> {
                match s { $($name => Some(ErrorCode::$variant),)* _ => None }
            }
        }
    };
}

error_codes! {
    /// No auth token is held: run `regent enroll`.
    NotEnrolled = 1, "NOT_ENROLLED", false,
        "the agent holds no auth token; enroll it with a registration token or client secret";
    /// The server does not know the registration token.
    RegistrationTokenInvalid = 2, "REGISTRATION_TOKEN_INVALID", false,
        "the license server does not recognise this registration token";
    /// The registration token's expiry date has passed (even with counts left).
    RegistrationTokenExpired = 3, "REGISTRATION_TOKEN_EXPIRED", false,
        "the registration token has expired; ask the administrator for a new one";
    /// Every count of the registration token has been used.
    RegistrationTokenExhausted = 4, "REGISTRATION_TOKEN_EXHAUSTED", false,
        "the registration token has no counts left; ask the administrator to raise its count or issue a new one";
    /// The administrator disabled the registration token.
    RegistrationTokenDisabled = 5, "REGISTRATION_TOKEN_DISABLED", false,
        "the registration token is disabled; ask the administrator to enable it or issue a new one";
    /// The auth token was deleted or its session died: enroll again.
    Revoked = 6, "REVOKED", false,
        "the auth token was revoked or its session ended; enroll again with a new registration token";
    /// No token with enough validity can be had now; `retry_after` says when.
    Unavailable = 7, "UNAVAILABLE", true,
        "no token with the requested validity is available now; retry later";
    /// The server is rate-limiting this device.
    RateLimited = 8, "RATE_LIMITED", true,
        "the license server is rate-limiting requests; retry after the indicated delay";
    /// The server's cap on active tokens for this client is reached.
    TokenLimit = 9, "TOKEN_LIMIT", true,
        "the client's limit of active tokens is reached; a token becomes available when one expires";
    /// Every instance slot is leased.
    NoFreeInstance = 10, "NO_FREE_INSTANCE", true,
        "every instance slot is in use; retry when another instance exits";
    /// The caller is not allowed to do this.
    PermissionDenied = 11, "PERMISSION_DENIED", false,
        "the caller is not allowed to perform this operation";
    /// The request was malformed.
    BadRequest = 12, "BAD_REQUEST", false,
        "the request was malformed";
    /// The two sides share no protocol version.
    UnsupportedVersion = 13, "UNSUPPORTED_VERSION", false,
        "the client and agent share no protocol version; upgrade the older one";
    /// No agent answered on the socket.
    AgentUnreachable = 14, "AGENT_UNREACHABLE", true,
        "no agent is listening on the socket; start the agent or check REGENT_SOCKET";
    /// The operation did not finish in time.
    Timeout = 15, "TIMEOUT", true,
        "the operation did not complete in time";
    /// The secret store (keychain or file) could not be used.
    StoreUnavailable = 16, "STORE_UNAVAILABLE", true,
        "the secret store is unavailable (locked keychain, no Secret Service, unwritable state directory)";
    /// The configuration is wrong.
    Config = 17, "CONFIG", false,
        "the configuration is invalid";
    /// The license server answered with an error; its message is passed through.
    ServerError = 18, "SERVER_ERROR", true,
        "the license server answered with an error or a response that could not be understood";
    /// A bug in regent.
    Internal = 19, "INTERNAL", false,
        "an internal error occurred; please report it";
    /// The server rejected the client id or secret (oauth2 `invalid_client`).
    ClientCredentialsInvalid = 20, "CLIENT_CREDENTIALS_INVALID", false,
        "the license server rejected the client id or secret; enroll again with the right secret";
    /// The slot already holds a working credential; unenroll first (or force).
    AlreadyEnrolled = 21, "ALREADY_ENROLLED", false,
        "this device is already enrolled; run `regent unenroll` first, or enroll with --force";
    /// A user sign-in did not complete: denied, expired, or its code refused.
    SignInFailed = 22, "SIGN_IN_FAILED", false,
        "the sign-in did not complete (denied, expired, or its code was refused); run `regent login` again";
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// On the wire a code is its name (readable in captures and logs); numbers are
/// for ABIs and exit statuses.
impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        // An unknown name from a newer agent degrades to INTERNAL rather than
        // failing the whole frame: unknown values are tolerated like unknown fields.
        Ok(ErrorCode::from_name(&s).unwrap_or(ErrorCode::Internal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_stable_and_dense() {
        // Released numbers must never change: this list is the compatibility record.
        let expected = [
            (1, "NOT_ENROLLED"),
            (2, "REGISTRATION_TOKEN_INVALID"),
            (3, "REGISTRATION_TOKEN_EXPIRED"),
            (4, "REGISTRATION_TOKEN_EXHAUSTED"),
            (5, "REGISTRATION_TOKEN_DISABLED"),
            (6, "REVOKED"),
            (7, "UNAVAILABLE"),
            (8, "RATE_LIMITED"),
            (9, "TOKEN_LIMIT"),
            (10, "NO_FREE_INSTANCE"),
            (11, "PERMISSION_DENIED"),
            (12, "BAD_REQUEST"),
            (13, "UNSUPPORTED_VERSION"),
            (14, "AGENT_UNREACHABLE"),
            (15, "TIMEOUT"),
            (16, "STORE_UNAVAILABLE"),
            (17, "CONFIG"),
            (18, "SERVER_ERROR"),
            (19, "INTERNAL"),
            (20, "CLIENT_CREDENTIALS_INVALID"),
            (21, "ALREADY_ENROLLED"),
            (22, "SIGN_IN_FAILED"),
        ];
        assert_eq!(ErrorCode::ALL.len(), expected.len());
        for (code, (num, name)) in ErrorCode::ALL.iter().zip(expected) {
            assert_eq!(code.number(), num);
            assert_eq!(code.name(), name);
            assert_eq!(ErrorCode::from_number(num), Some(*code));
            assert_eq!(ErrorCode::from_name(name), Some(*code));
            assert!(!code.meaning().is_empty());
        }
        assert_eq!(ErrorCode::from_number(0), None);
        assert_eq!(ErrorCode::from_number(200), None);
    }

    #[test]
    fn serde_uses_names_and_tolerates_unknown() {
        let json = serde_json::to_string(&ErrorCode::Revoked).unwrap();
        assert_eq!(json, "\"REVOKED\"");
        let back: ErrorCode = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ErrorCode::Revoked);
        let unknown: ErrorCode = serde_json::from_str("\"SOMETHING_NEW\"").unwrap();
        assert_eq!(unknown, ErrorCode::Internal);
    }

    #[test]
    fn retryability_matches_intent() {
        assert!(ErrorCode::Unavailable.is_retryable());
        assert!(ErrorCode::RateLimited.is_retryable());
        assert!(!ErrorCode::Revoked.is_retryable());
        assert!(!ErrorCode::RegistrationTokenExhausted.is_retryable());
    }
}
