//! Turning a token endpoint's JSON into a [`Grant`], trusting nothing in it.

use std::time::{Duration, SystemTime};

use regent_proto::ErrorCode;
use serde_json::{Map, Value};

use super::reply::kind;
use super::text::sanitize;
use crate::error::Error;
use crate::grant::Grant;
use crate::secret::{SecretString, secret};

/// The longest access-token lifetime believed. A bigger `expires_in` (a server
/// bug, a unit mix-up) is clamped and logged: at worst we renew early, never
/// hand out a token on the strength of a lifetime nobody meant.
pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest refresh-token lifetime recorded; it only schedules keep-alives.
pub const MAX_REFRESH_EXPIRES_IN: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// The largest token accepted: it must fit, with room to spare, in one 64 KiB
/// IPC frame and in a handful of keychain entries.
pub const MAX_TOKEN_BYTES: usize = 32 * 1024;

/// Parses `{"access_token","token_type","expires_in","refresh_token"?,
/// "refresh_expires_in"?,"scope"?}` received at `received_at` from `server`.
///
/// Only what a grant cannot do without is fatal (access token, lifetime): a
/// doubtful optional field is dropped with a warning, so that a rotated refresh
/// token is never thrown away over, say, a malformed `scope`.
pub(crate) fn parse_grant(
    obj: &mut Map<String, Value>,
    received_at: SystemTime,
    server: &str,
) -> Result<Grant, Error> {
    let bad = |problem: &str| {
        Error::new(
            ErrorCode::ServerError,
            format!("the license server at {server} sent a token answer {problem}"),
        )
    };

    let access_token = match take_token(obj, "access_token") {
        Ok(Some(token)) => token,
        Ok(None) => return Err(bad("without an access_token")),
        Err(problem) => return Err(bad(&format!("whose access_token {problem}"))),
    };

    let expires_in = match obj.get("expires_in") {
        None | Some(Value::Null) => return Err(bad("without expires_in")),
        Some(v) => seconds(v).map_err(|p| bad(&format!("whose expires_in {p}")))?,
    };
    let expires_in = if expires_in > MAX_EXPIRES_IN {
        tracing::warn!(
            server,
            expires_in = expires_in.as_secs(),
            clamped_to = MAX_EXPIRES_IN.as_secs(),
            "the license server granted an implausibly long access-token lifetime; clamping it"
        );
        MAX_EXPIRES_IN
    } else {
        expires_in
    };

    let token_type = match obj.get("token_type") {
        Some(Value::String(t)) if t.trim().eq_ignore_ascii_case("bearer") => "Bearer".to_owned(),
        // Another type (MAC, DPoP, a URI) is passed on: the app decides.
        Some(Value::String(t)) if is_token_type(t.trim()) => t.trim().to_owned(),
        Some(Value::String(t)) if !t.trim().is_empty() => {
            // Apps put it in an `Authorization` header: spaces, control or
            // non-ASCII characters (or a cut-off value) would corrupt it.
            tracing::warn!(
                server,
                bytes = t.len(),
                "ignoring an unusable token_type in the token answer; assuming Bearer"
            );
            "Bearer".to_owned()
        }
        // RFC 6749 makes it required, but every server we know means Bearer.
        _ => "Bearer".to_owned(),
    };

    let refresh_token = match take_token(obj, "refresh_token") {
        Ok(token) => token,
        Err(problem) => {
            tracing::warn!(
                server,
                problem,
                "ignoring an unusable refresh_token in the token answer"
            );
            None
        }
    };

    // Keycloak says 0 for offline tokens that have no fixed expiry.
    let refresh_expires_at = match obj.get("refresh_expires_in") {
        None | Some(Value::Null) => None,
        Some(v) => match seconds(v) {
            Ok(d) => Some(received_at + d.min(MAX_REFRESH_EXPIRES_IN)),
            Err(problem) => {
                if !matches!(v.as_f64(), Some(0.0)) && v.as_str() != Some("0") {
                    tracing::debug!(server, problem, "ignoring refresh_expires_in");
                }
                None
            }
        },
    };

    let scope = match obj.get("scope") {
        Some(Value::String(s)) => Some(sanitize(s, 2000)).filter(|s| !s.is_empty()),
        Some(Value::Array(items)) => {
            let words: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            Some(sanitize(&words.join(" "), 2000)).filter(|s| !s.is_empty())
        }
        _ => None,
    };

    Ok(Grant {
        access_token,
        token_type,
        received_at,
        expires_at: received_at + expires_in,
        refresh_token,
        refresh_expires_at,
        scope,
    })
}

/// Longest `token_type` accepted.
pub const MAX_TOKEN_TYPE: usize = 40;

/// An RFC 6749 token type: a type name (`-._`, letters, digits) or an
/// absolute URI, short, and safe to put in an `Authorization` header.
fn is_token_type(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= MAX_TOKEN_TYPE
        && t.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'/' | b'~' | b'+')
        })
}

/// Moves a token string out of the JSON (no copy left behind) after checking it
/// is usable in an `Authorization` header. `Ok(None)` when absent or empty.
fn take_token(obj: &mut Map<String, Value>, key: &str) -> Result<Option<SecretString>, String> {
    match obj.get_mut(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let token = std::mem::take(s);
            if token.is_empty() {
                return Ok(None);
            }
            let token = secret(token);
            let value = secrecy::ExposeSecret::expose_secret(&token);
            // Measured as apps receive it: JSON doubles `"` and `\`, and the
            // token must still fit in one IPC frame (found by fuzzing).
            let wire_len =
                value.len() + value.bytes().filter(|b| matches!(b, b'"' | b'\\')).count();
            if wire_len > MAX_TOKEN_BYTES {
                return Err(format!(
                    "is {wire_len} bytes long as JSON (the most accepted is {MAX_TOKEN_BYTES})"
                ));
            }
            // Visible ASCII only: apps put it in a header, and a newline there
            // would be header injection.
            if !value.bytes().all(|b| b.is_ascii_graphic()) {
                return Err("contains spaces, control or non-ASCII characters".to_owned());
            }
            Ok(Some(token))
        }
        Some(other) => Err(format!("is {} instead of a string", kind(other))),
    }
}

/// A positive number of seconds, given as a JSON number or a numeric string.
/// Fractions are cut; values too large for a `Duration` saturate (callers clamp).
pub(crate) fn seconds(v: &Value) -> Result<Duration, String> {
    let n = match v {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                return positive(u);
            }
            n.as_f64().ok_or_else(|| "is not a number".to_owned())?
        }
        Value::String(s) => {
            let s = s.trim();
            if let Ok(u) = s.parse::<u64>() {
                return positive(u);
            }
            match s.parse::<f64>() {
                Ok(f) if f.is_finite() => f,
                _ => return Err(format!("is {:?}, not a number of seconds", sanitize(s, 40))),
            }
        }
        other => return Err(format!("is {} instead of a number", kind(other))),
    };
    if n < 1.0 {
        return Err(format!("is {n}, not a positive number of seconds"));
    }
    // `as` saturates for floats: 1e300 becomes u64::MAX, clamped by the caller.
    positive(n as u64)
}

fn positive(secs: u64) -> Result<Duration, String> {
    if secs == 0 {
        return Err("is 0, not a positive number of seconds".to_owned());
    }
    // Keep far below SystemTime's range so `received_at + d` cannot overflow.
    Ok(Duration::from_secs(secs.min(100 * 365 * 24 * 60 * 60)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::secret::ExposeSecret;

    fn at() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn parse(v: Value) -> Result<Grant, Error> {
        let Value::Object(mut obj) = v else {
            panic!("test bodies are objects")
        };
        parse_grant(&mut obj, at(), "license.example")
    }

    #[test]
    fn parses_a_full_answer() {
        let g = parse(json!({
            "access_token": "eyJ.a.b", "token_type": "bearer", "expires_in": 300,
            "refresh_token": "r1", "refresh_expires_in": 1800, "scope": "read write"
        }))
        .unwrap();
        assert_eq!(g.access_token.expose_secret(), "eyJ.a.b");
        assert_eq!(g.token_type, "Bearer");
        assert_eq!(g.received_at, at());
        assert_eq!(g.lifetime(), Duration::from_secs(300));
        assert_eq!(g.refresh_token.as_ref().unwrap().expose_secret(), "r1");
        assert_eq!(g.refresh_expires_at, Some(at() + Duration::from_secs(1800)));
        assert_eq!(g.scope.as_deref(), Some("read write"));
    }

    #[test]
    fn accepts_numeric_strings_fractions_and_minimal_answers() {
        let g = parse(json!({"access_token": "a", "expires_in": " 3599 "})).unwrap();
        assert_eq!(g.lifetime(), Duration::from_secs(3599));
        assert_eq!(g.token_type, "Bearer");
        assert!(g.refresh_token.is_none() && g.scope.is_none() && g.refresh_expires_at.is_none());
        let g = parse(json!({"access_token": "a", "expires_in": 59.9})).unwrap();
        assert_eq!(g.lifetime(), Duration::from_secs(59));
        let g = parse(json!({"access_token": "a", "expires_in": "120.5"})).unwrap();
        assert_eq!(g.lifetime(), Duration::from_secs(120));
    }

    #[test]
    fn clamps_huge_lifetimes() {
        for huge in [
            json!(86_401),
            json!(u64::MAX),
            json!(1e300),
            json!("99999999999999999999"),
        ] {
            let g = parse(json!({"access_token": "a", "expires_in": huge})).unwrap();
            assert_eq!(g.lifetime(), MAX_EXPIRES_IN, "{huge}");
        }
        let g = parse(json!({"access_token": "a", "expires_in": 86_400})).unwrap();
        assert_eq!(g.lifetime(), MAX_EXPIRES_IN);
        let g =
            parse(json!({"access_token": "a", "expires_in": 1, "refresh_expires_in": u64::MAX}))
                .unwrap();
        assert_eq!(g.refresh_expires_at, Some(at() + MAX_REFRESH_EXPIRES_IN));
    }

    #[test]
    fn refuses_unusable_lifetimes() {
        for (expires_in, needle) in [
            (None, "without expires_in"),
            (Some(json!(null)), "without expires_in"),
            (Some(json!(0)), "is 0"),
            (Some(json!(-5)), "not a positive"),
            (Some(json!(0.5)), "not a positive"),
            (Some(json!("soon")), "not a number of seconds"),
            (Some(json!("NaN")), "not a number of seconds"),
            (Some(json!("inf")), "not a number of seconds"),
            (Some(json!("-1")), "not a positive"),
            (Some(json!(true)), "a boolean instead of a number"),
            (Some(json!([300])), "an array instead of a number"),
            (Some(json!({"s": 300})), "an object instead of a number"),
        ] {
            let mut body = json!({"access_token": "a"});
            if let Some(v) = expires_in.clone() {
                body["expires_in"] = v;
            }
            let e = parse(body).unwrap_err();
            assert_eq!(e.code, ErrorCode::ServerError);
            assert!(e.message.contains(needle), "{expires_in:?}: {}", e.message);
            assert!(e.message.contains("license.example"));
        }
    }

    #[test]
    fn refuses_unusable_access_tokens_without_showing_them() {
        for (token, needle) in [
            (None, "without an access_token"),
            (Some(json!("")), "without an access_token"),
            (Some(json!(null)), "without an access_token"),
            (Some(json!(12345)), "a number instead of a string"),
            (Some(json!(["a"])), "an array instead of a string"),
            (Some(json!("secret-line\nX-Injected: 1")), "control"),
            (Some(json!("secret with space")), "spaces"),
            (Some(json!("sécret")), "non-ASCII"),
            (Some(json!("s".repeat(MAX_TOKEN_BYTES + 1))), "bytes long"),
        ] {
            let mut body = json!({"expires_in": 60});
            if let Some(v) = token.clone() {
                body["access_token"] = v;
            }
            let e = parse(body).unwrap_err();
            assert_eq!(e.code, ErrorCode::ServerError);
            assert!(e.message.contains(needle), "{token:?}: {}", e.message);
            assert!(!e.message.contains("secret"), "{}", e.message);
        }
    }

    /// Regression (fuzzing, upstream_reply): 32 KiB of `"` passed the size
    /// check but took 64 KiB as JSON, so the token could not be handed to an
    /// app in one IPC frame.
    #[test]
    fn token_size_is_measured_as_sent_to_apps() {
        let quotes = "\"".repeat(MAX_TOKEN_BYTES / 2);
        let g = parse(json!({"access_token": quotes, "expires_in": 60})).unwrap();
        assert_eq!(g.access_token.expose_secret().len(), MAX_TOKEN_BYTES / 2);
        let e =
            parse(json!({"access_token": format!("{quotes}\\"), "expires_in": 60})).unwrap_err();
        assert!(e.message.contains("bytes long as JSON"), "{}", e.message);
        let e = parse(json!({"access_token": "\"".repeat(MAX_TOKEN_BYTES), "expires_in": 60}))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::ServerError);
    }

    #[test]
    fn doubtful_optional_fields_are_dropped_not_fatal() {
        let g = parse(json!({
            "access_token": "a", "expires_in": 60, "token_type": 7,
            "refresh_token": 42, "refresh_expires_in": "never", "scope": {"x": 1}
        }))
        .unwrap();
        assert_eq!(g.token_type, "Bearer");
        assert!(g.refresh_token.is_none());
        assert!(g.refresh_expires_at.is_none());
        assert!(g.scope.is_none());
        let g = parse(json!({
            "access_token": "a", "expires_in": 60, "refresh_token": "",
            "refresh_expires_in": 0, "scope": ["a", "b", 3], "token_type": "DPoP\n"
        }))
        .unwrap();
        assert!(g.refresh_token.is_none());
        assert!(g.refresh_expires_at.is_none());
        assert_eq!(g.scope.as_deref(), Some("a b"));
        assert_eq!(g.token_type, "DPoP");
    }

    /// Regression (network-fault suite): a hostile `token_type` used to be
    /// passed on sanitised but with spaces, non-ASCII characters and a `…`
    /// after a cut, all of which then went into apps' `Authorization` headers.
    #[test]
    fn token_types_are_header_safe_or_bearer() {
        for (given, expected) in [
            (json!("bearer"), "Bearer"),
            (json!(" BEARER "), "Bearer"),
            (json!("MAC"), "MAC"),
            (json!("DPoP"), "DPoP"),
            (
                json!("urn:ietf:params:oauth:token-type:jwt"),
                "urn:ietf:params:oauth:token-type:jwt",
            ),
            (json!("Bé arer"), "Bearer"),
            (json!("Bearer x"), "Bearer"),
            (json!("evil\r\nX-Injected: 1"), "Bearer"),
            (json!("\u{1b}[2J"), "Bearer"),
            (json!("T".repeat(MAX_TOKEN_TYPE + 1)), "Bearer"),
            (
                json!("T".repeat(MAX_TOKEN_TYPE)),
                "TTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTT",
            ),
            (json!(""), "Bearer"),
            (json!(7), "Bearer"),
            (json!(null), "Bearer"),
        ] {
            let g =
                parse(json!({"access_token": "a", "expires_in": 60, "token_type": given.clone()}))
                    .unwrap();
            assert_eq!(g.token_type, expected, "{given}");
            assert!(
                g.token_type.bytes().all(|b| b.is_ascii_graphic()),
                "{given}"
            );
        }
    }

    #[test]
    fn huge_strings_in_optional_fields_are_bounded() {
        let g = parse(json!({
            "access_token": "a", "expires_in": 60,
            "token_type": "T".repeat(100_000), "scope": "s ".repeat(100_000)
        }))
        .unwrap();
        assert!(g.token_type.chars().count() <= 41);
        assert!(g.scope.unwrap().chars().count() <= 2001);
    }
}
