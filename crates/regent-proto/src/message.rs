//! Requests, responses and pushed events (DESIGN §6).
//!
//! Every request carries an `id`; its response echoes it, so a client may
//! pipeline. Events pushed for a subscription carry the `id` of the `subscribe`
//! request. Unknown fields are ignored both ways; an unknown `op` is a
//! `BAD_REQUEST` that still echoes the `id` when one could be read.
//!
//! ```text
//! → {"id":1,"op":"hello","versions":[1],"app":"editor"}
//! ← {"id":1,"ok":{"kind":"hello","version":1,"agent":"0.1.0"}}
//! → {"id":2,"op":"token","min_valid":60}
//! ← {"id":2,"ok":{"kind":"token","access_token":"…","token_type":"Bearer","expires_at_ms":1790000000000}}
//! ← {"id":3,"error":{"code":"REVOKED","number":6,"message":"…"}}
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::code::ErrorCode;
use crate::exact;
use crate::frame;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Every version this crate can speak, oldest first.
pub const SUPPORTED_VERSIONS: &[u32] = &[1];

/// The longest `app` or `instance` name a `hello` may carry, in characters.
pub const MAX_NAME_CHARS: usize = 128;

/// Whether `c` may appear in a `hello` name. These names reach logs and
/// `regent status`, where a newline would forge a log line and an escape
/// sequence would drive an administrator's terminal: control characters
/// and the invisible ones that reorder or hide text are refused.
pub fn is_name_char(c: char) -> bool {
    !(c.is_control()
        || matches!(
            c,
            '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}'
        ))
}

/// Picks the highest version both sides speak.
pub fn negotiate(offered: &[u32]) -> Option<u32> {
    SUPPORTED_VERSIONS
        .iter()
        .rev()
        .find(|v| offered.contains(v))
        .copied()
}

/// A secret on the wire: serialised as a plain string, but redacted in `Debug`
/// and zeroized on drop.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize)]
#[serde(transparent)]
#[zeroize(drop)]
pub struct WireSecret(String);

impl WireSecret {
    /// Wraps a value.
    pub fn new(value: String) -> Self {
        WireSecret(value)
    }
    /// The value, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The value, moved out, with no spare capacity (so that making a boxed
    /// secret of it does not reallocate and leave a copy behind; a value
    /// with spare capacity is copied and the original wiped).
    pub fn take(mut self) -> String {
        let mut value = std::mem::take(&mut self.0);
        if value.capacity() != value.len() {
            let exact = value.as_str().to_owned();
            value.zeroize();
            value = exact;
        }
        value
    }
}

impl fmt::Debug for WireSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WireSecret([redacted])")
    }
}

/// A request from a client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// Echoed in the response.
    pub id: u64,
    /// What is asked.
    #[serde(flatten)]
    pub op: Op,
}

/// The operations.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// First message on a connection: version negotiation and who is asking.
    Hello {
        /// Versions the client speaks.
        versions: Vec<u32>,
        /// The application's name (for audit and status).
        #[serde(default)]
        app: String,
        /// A stable instance id, for per-instance slots.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        instance: Option<String>,
    },
    /// A token valid for at least `min_valid` seconds.
    Token {
        /// Seconds the token must stay valid.
        #[serde(default)]
        min_valid: u64,
        /// Requested scope (reserved; the slot's scope is used).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
    },
    /// Push a token now and a fresh one before it drops below `min_valid`,
    /// plus state changes; events carry this request's id.
    Subscribe {
        /// Seconds each pushed token must stay valid.
        #[serde(default)]
        min_valid: u64,
    },
    /// Ends the subscription made by request `subscription`.
    Unsubscribe {
        /// The id of the `subscribe` request.
        subscription: u64,
    },
    /// The agent's status.
    Status {},
    /// Prometheus-style metrics text.
    Metrics {},
    /// Enroll with a registration token or client secret (agent's uid or root only).
    Enroll {
        /// The registration token or client secret.
        secret: WireSecret,
        /// Replace a working credential.
        #[serde(default)]
        force: bool,
    },
    /// Forget the credential (agent's uid or root only).
    Unenroll {},
    /// Begin a user sign-in (agent's uid or root only): with `device`, the
    /// agent asks the server for a device authorization; without, it says
    /// where the browser goes (the CLI adds `state` and the PKCE challenge).
    LoginStart {
        /// The device flow (RFC 8628) instead of the browser.
        #[serde(default)]
        device: bool,
        /// A confidential client's secret; absent for a public client.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_secret: Option<WireSecret>,
    },
    /// Finish a user sign-in: the agent exchanges the grant, stores the
    /// refresh token and serves tokens (agent's uid or root only).
    Login {
        /// What the agent exchanges.
        grant: LoginGrant,
        /// A confidential client's secret; absent for a public client.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_secret: Option<WireSecret>,
        /// Replace a working device enrollment.
        #[serde(default)]
        force: bool,
    },
    /// Sign out: revoke the refresh token at the server (when it offers
    /// revocation) and forget it (agent's uid or root only).
    Logout {},
}

/// What a `login` request hands the agent to exchange.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LoginGrant {
    /// The code from the browser's redirect, with the PKCE verifier and the
    /// redirect URI it was sent to.
    AuthorizationCode {
        /// The authorization code.
        code: WireSecret,
        /// The PKCE verifier whose S256 challenge the request carried.
        code_verifier: WireSecret,
        /// The loopback redirect URI of the request.
        redirect_uri: String,
    },
    /// The device code of a `login_start` with `device`: one poll.
    DeviceCode {
        /// The device code.
        device_code: WireSecret,
    },
    /// An existing refresh token to adopt (`regent enroll --refresh-token`).
    RefreshToken {
        /// The refresh token.
        refresh_token: WireSecret,
    },
}

impl Op {
    /// The op's wire name, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Hello { .. } => "hello",
            Op::Token { .. } => "token",
            Op::Subscribe { .. } => "subscribe",
            Op::Unsubscribe { .. } => "unsubscribe",
            Op::Status {} => "status",
            Op::Metrics {} => "metrics",
            Op::Enroll { .. } => "enroll",
            Op::Unenroll {} => "unenroll",
            Op::LoginStart { .. } => "login_start",
            Op::Login { .. } => "login",
            Op::Logout {} => "logout",
        }
    }
}

/// A response or pushed event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    /// The request's id (or the subscription's, for events).
    pub id: u64,
    /// Success, failure or event.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// What a response carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The request succeeded.
    Ok(Reply),
    /// The request failed.
    Error(WireError),
    /// Something a subscription asked to hear about.
    Event(Event),
}

/// A successful answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
    /// Version agreed.
    Hello {
        /// The negotiated protocol version.
        version: u32,
        /// The agent's software version.
        agent: String,
    },
    /// A token.
    Token(TokenReply),
    /// The subscription is live; events follow.
    Subscribed {},
    /// The subscription has ended.
    Unsubscribed {},
    /// Status document (the agent's `--json` status shape).
    Status {
        /// The status.
        status: crate::status::AgentStatus,
    },
    /// Metrics in Prometheus text format.
    Metrics {
        /// The exposition text.
        text: String,
    },
    /// Enrollment succeeded.
    Enrolled {
        /// Slot identifier or client id.
        identifier: String,
        /// The server's auth-token id (Sentinel).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        auth_token_id: Option<String>,
        /// First token's expiry, unix milliseconds.
        expires_at_ms: u64,
    },
    /// The credential is gone.
    Unenrolled {},
    /// Where the browser sign-in goes (`login_start` without `device`).
    LoginBrowser {
        /// The provider's authorization endpoint.
        authorization_endpoint: String,
        /// The configured client id.
        client_id: String,
        /// The configured scope, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
    },
    /// A device authorization (`login_start` with `device`, RFC 8628 §3.2).
    LoginDevice {
        /// What the `login` request hands back, one poll at a time.
        device_code: WireSecret,
        /// What the person types at the verification page.
        user_code: String,
        /// The verification page.
        verification_uri: String,
        /// The page with the code filled in, when the server gave one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        verification_uri_complete: Option<String>,
        /// Seconds until the device code expires.
        expires_in: u64,
        /// Seconds between polls.
        interval: u64,
    },
    /// The device sign-in is not approved yet: poll again after the
    /// interval, five seconds longer from now on when `slow_down`.
    LoginPending {
        /// The server asked for a longer interval (RFC 8628 §3.5).
        #[serde(default)]
        slow_down: bool,
    },
    /// Signed in: tokens are served from now on.
    LoggedIn {
        /// Who signed in, when the provider said.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<crate::status::SignedInUser>,
        /// The granted scope, when the server said.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
        /// First token's expiry, unix milliseconds.
        expires_at_ms: u64,
    },
    /// Signed out.
    LoggedOut {
        /// Whether the server revoked the refresh token (false when it
        /// offers no revocation endpoint or could not be reached).
        revoked: bool,
    },
}

/// An access token handed to an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenReply {
    /// The bearer token.
    pub access_token: WireSecret,
    /// Usually `"Bearer"`.
    pub token_type: String,
    /// Expiry, unix milliseconds (wall clock).
    pub expires_at_ms: u64,
    /// Granted scope, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// A pushed event.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A fresh token for the subscription.
    Token(TokenReply),
    /// The slot's state changed (e.g. `revoked`), with the reason.
    State {
        /// New state name (`active`, `degraded`, `revoked`, `unenrolled`, …).
        state: String,
        /// Why, when it was a failure.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<WireError>,
    },
}

/// An error on the wire: the code by name and number, a message, and when to retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// The stable code.
    pub code: ErrorCode,
    /// The code's number (the same as `code`; for readers without the table).
    #[serde(default)]
    pub number: u8,
    /// What happened and what to do.
    pub message: String,
    /// Milliseconds after which retrying may help.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl WireError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError {
            code,
            number: code.number(),
            message: message.into(),
            retry_after_ms: None,
        }
    }
}

/// A request that could not be understood: the id when it could be read, and
/// a `BAD_REQUEST` saying what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest {
    /// The request's id, when readable (0 otherwise).
    pub id: u64,
    /// What was wrong.
    pub error: WireError,
}

/// The fields of a `token` request; unknown fields are ignored, as in [`Op`].
#[derive(Deserialize)]
struct TokenRequest<'a> {
    id: u64,
    #[serde(borrow)]
    op: std::borrow::Cow<'a, str>,
    #[serde(default)]
    min_valid: u64,
    #[serde(default)]
    scope: Option<String>,
}

/// Parses one frame's payload as a request.
///
/// # Errors
/// [`BadRequest`] naming the problem (not UTF-8 JSON, not an object, unknown
/// op, a field of the wrong type).
pub fn decode_request(payload: &[u8]) -> Result<Request, BadRequest> {
    // Hotter still: the exact bytes regent's clients send (`exact`).
    if let Some((id, min_valid)) = exact::read_token_request(payload) {
        return Ok(Request {
            id,
            op: Op::Token {
                min_valid,
                scope: None,
            },
        });
    }
    // The hot path: a `token` request read straight into a flat struct. The
    // general `Request` (a flattened, internally tagged `Op`) first buffers
    // every field, which made decoding a quarter of a handout's cost. Any
    // other op, and anything unusual, takes the general path, which also
    // words the errors.
    // serde's derived structs also read arrays (`[7,"token"]`): only an
    // object is a request, so only an object takes the fast path or has an id.
    // And the fast path skips unknown fields without checking their bytes, so
    // it only takes valid UTF-8 (both found by fuzzing).
    let object = payload.trim_ascii_start().starts_with(b"{");
    if object
        && let Ok(text) = std::str::from_utf8(payload)
        && let Ok(token) = serde_json::from_str::<TokenRequest<'_>>(text)
        && token.op == "token"
    {
        return Ok(Request {
            id: token.id,
            op: Op::Token {
                min_valid: token.min_valid,
                scope: token.scope,
            },
        });
    }
    match serde_json::from_slice::<Request>(payload) {
        Ok(request) => Ok(request),
        Err(e) => {
            #[derive(Deserialize)]
            struct IdOnly {
                #[serde(default)]
                id: u64,
            }
            let id = object
                .then(|| serde_json::from_slice::<IdOnly>(payload).ok())
                .flatten()
                .map_or(0, |r| r.id);
            Err(BadRequest {
                id,
                error: WireError::new(
                    ErrorCode::BadRequest,
                    format!(
                        "malformed request: {e}; a request is a JSON object with \"id\" and \"op\""
                    ),
                ),
            })
        }
    }
}

/// Appends the frame of a `token` request without a scope: byte for byte
/// what [`frame::encode`] makes of it, without serde.
pub fn encode_token_request(id: u64, min_valid: u64, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; frame::HEADER]);
    exact::write_token_request(id, min_valid, out);
    // At most 73 bytes: two u64s and the fixed text.
    let len = (out.len() - start - frame::HEADER) as u32;
    out[start..start + frame::HEADER].copy_from_slice(&len.to_be_bytes());
}

/// Parses one frame's payload as a response (or pushed event).
///
/// # Errors
/// serde_json's error for a payload that is not a response; it names a
/// position, never the payload's bytes (which may hold a token).
pub fn decode_response(payload: &[u8]) -> Result<Response, serde_json::Error> {
    // The client's hot path, as `decode_request` is the agent's: a token
    // reply in the exact bytes regent's agent sends (`exact`). The general
    // `Response` (a flattened `Outcome`, an internally tagged `Reply`)
    // buffers every field first — 42 % of a blocking client's instructions
    // per handout. Anything else takes the general path.
    if let Some(view) = exact::read_token_reply(payload) {
        return Ok(Response {
            id: view.id,
            outcome: Outcome::Ok(Reply::Token(TokenReply {
                access_token: WireSecret::new(view.access_token.to_owned()),
                token_type: view.token_type.to_owned(),
                expires_at_ms: view.expires_at_ms,
                scope: view.scope.map(str::to_owned),
            })),
        });
    }
    serde_json::from_slice::<Response>(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both paths of `decode_response`, compared field by field through
    /// their `Debug` (the token itself is redacted there, so it is compared
    /// apart).
    fn same_as_general(payload: &[u8]) {
        let fast = decode_response(payload);
        let general = serde_json::from_slice::<Response>(payload);
        match (fast, general) {
            (Ok(fast), Ok(general)) => {
                assert_eq!(format!("{fast:?}"), format!("{general:?}"), "{payload:?}");
                let token = |r: &Response| match &r.outcome {
                    Outcome::Ok(Reply::Token(t)) => Some(t.access_token.expose().to_owned()),
                    _ => None,
                };
                assert_eq!(token(&fast), token(&general));
            }
            (Err(_), Err(_)) => {}
            (fast, general) => panic!("{payload:?}: fast {fast:?}, general {general:?}"),
        }
    }

    #[test]
    fn token_replies_decode_the_same_on_the_fast_and_the_general_path() {
        for payload in [
            &br#"{"id":7,"ok":{"kind":"token","access_token":"abc","token_type":"Bearer","expires_at_ms":1700000000000}}"#[..],
            br#"{"id":7,"ok":{"kind":"token","access_token":"a\"b\u00e9","token_type":"Bearer","expires_at_ms":1,"scope":"s t"}}"#,
            br#"{"ok":{"expires_at_ms":1,"kind":"token","token_type":"Bearer","access_token":"x","future":[1,{"a":2}]},"id":3}"#,
            br#" {"id":7,"ok":{"kind":"token","access_token":"abc","token_type":"Bearer","expires_at_ms":1,"scope":null}}"#,
            // Not token replies: the general path answers.
            br#"{"id":7,"ok":{"kind":"hello","version":1,"agent":"0.1.0"}}"#,
            br#"{"id":7,"error":{"code":"NOT_ENROLLED","message":"m"}}"#,
            br#"{"id":7,"ok":{"kind":"token","access_token":"abc","token_type":"Bearer","expires_at_ms":1},"error":{"code":"INTERNAL","message":"m"}}"#,
            br#"{"id":7,"ok":{"kind":"token","access_token":"abc","token_type":"Bearer","expires_at_ms":-1}}"#,
            br#"{"id":7,"ok":{"kind":"token","access_token":"abc","expires_at_ms":1}}"#,
            br#"{"id":7,"id":8,"ok":{"kind":"token","access_token":"abc","token_type":"Bearer","expires_at_ms":1}}"#,
            br#"[7,{"kind":"token"}]"#,
            b"{\"id\":7,\"ok\":{\"kind\":\"token\",\"access_token\":\"abc\",\"token_type\":\"Bearer\",\"expires_at_ms\":1,\"x\":\"\xff\"}}",
            b"",
        ] {
            same_as_general(payload);
        }
        let decoded = decode_response(
            br#"{"id":9,"ok":{"kind":"token","access_token":"abc","token_type":"Bearer","expires_at_ms":5,"scope":"read"}}"#,
        )
        .unwrap();
        assert_eq!(decoded.id, 9);
        let Outcome::Ok(Reply::Token(token)) = decoded.outcome else {
            panic!("not a token reply");
        };
        assert_eq!(
            (
                token.access_token.expose(),
                token.token_type.as_str(),
                token.expires_at_ms,
                token.scope.as_deref()
            ),
            ("abc", "Bearer", 5, Some("read"))
        );
    }

    #[test]
    fn requests_round_trip_and_ignore_unknown_fields() {
        let r =
            decode_request(br#"{"id":7,"op":"token","min_valid":30,"future":"field"}"#).unwrap();
        assert_eq!(r.id, 7);
        assert!(matches!(
            r.op,
            Op::Token {
                min_valid: 30,
                scope: None
            }
        ));
        let r = decode_request(br#"{"id":1,"op":"hello","versions":[1,2],"app":"x"}"#).unwrap();
        assert!(matches!(r.op, Op::Hello { ref versions, .. } if versions == &[1, 2]));
        let r = decode_request(br#"{"id":2,"op":"status"}"#).unwrap();
        assert!(matches!(r.op, Op::Status {}));
    }

    #[test]
    fn the_token_fast_path_agrees_with_the_general_decoder() {
        let cases: &[&[u8]] = &[
            br#"{"id":7,"op":"token","min_valid":30}"#,
            br#"{"op":"token","id":8}"#,
            br#"{"id":9,"op":"token","min_valid":5,"scope":"read write","extra":[1,{"a":2}]}"#,
            br#"{"id":10,"op":"token","min_valid":1}"#,
            br#"{"id":11,"op":"token","scope":null}"#,
        ];
        for payload in cases {
            let fast = decode_request(payload).unwrap();
            let general = serde_json::from_slice::<Request>(payload).unwrap();
            assert_eq!(
                serde_json::to_value(&fast).unwrap(),
                serde_json::to_value(&general).unwrap(),
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
        // Malformed token requests still get the general path's errors.
        for payload in [
            &br#"{"id":3,"op":"token","min_valid":"soon"}"#[..],
            br#"{"id":4,"op":"token","min_valid":-1}"#,
            br#"{"op":"token"}"#,
        ] {
            let e = decode_request(payload).unwrap_err();
            assert_eq!(e.error.code, ErrorCode::BadRequest);
            assert!(e.error.message.contains("malformed request"));
        }
        assert_eq!(
            decode_request(br#"{"id":4,"op":"token","min_valid":-1}"#)
                .unwrap_err()
                .id,
            4
        );
    }

    #[test]
    fn the_exact_token_request_agrees_with_serde_and_near_misses_fall_back() {
        // Exact form: what regent's clients write (`encode_token_request`).
        for (id, min_valid) in [(0, 0), (1, 30), (u64::MAX, u64::MAX), (1_000_000, 86_400)] {
            let mut framed = Vec::new();
            encode_token_request(id, min_valid, &mut framed);
            let mut by_serde = Vec::new();
            let op = Op::Token {
                min_valid,
                scope: None,
            };
            frame::encode(&Request { id, op }, &mut by_serde).unwrap();
            assert_eq!(framed, by_serde, "the bytes serde writes");
            let payload = &framed[frame::HEADER..];
            assert_eq!(exact::read_token_request(payload), Some((id, min_valid)));
        }
        // Near misses: not the exact form; the general path decides, and
        // decides as before (serde's verdict, whatever it is).
        for payload in [
            &br#"{"id":07,"op":"token","min_valid":1}"#[..],
            br#"{"id":18446744073709551616,"op":"token","min_valid":1}"#,
            br#"{"id":1,"op":"token","min_valid":-1}"#,
            br#"{"id":1,"op":"token","min_valid":1.0}"#,
            br#"{"id":1,"op":"token","min_valid":1e3}"#,
            br#"{"id":1,"op":"token","min_valid":1} "#,
            br#"{"id":1,"op":"token","min_valid":1"#,
            br#"{"id":1,"op":"token","min_valid":}"#,
            br#"{"id":,"op":"token","min_valid":1}"#,
            br#"{"id":1,"op":"token","min_valid":1,"scope":"x"}"#,
            br#"{"id":1, "op":"token","min_valid":1}"#,
        ] {
            assert_eq!(
                exact::read_token_request(payload),
                None,
                "{}",
                String::from_utf8_lossy(payload)
            );
            let general = serde_json::from_slice::<Request>(payload);
            let decoded = decode_request(payload);
            assert_eq!(
                decoded.is_ok(),
                general.is_ok(),
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    #[test]
    fn the_exact_token_reply_agrees_with_serde_and_anything_else_falls_back() {
        let reply = |access: &str, scope: Option<&str>| Response {
            id: 42,
            outcome: Outcome::Ok(Reply::Token(TokenReply {
                access_token: WireSecret::new(access.to_owned()),
                token_type: "Bearer".into(),
                expires_at_ms: 1_790_000_000_123,
                scope: scope.map(str::to_owned),
            })),
        };
        for (access, scope, exact_form) in [
            ("eyJhbGciOi.J9-_x", None, true),
            ("abc", Some("read write"), true),
            ("", Some(""), true),
            ("quote\"inside", None, false),
            ("back\\slash", None, false),
            ("caf\u{e9}", None, false),
            ("tab\tin", None, false),
        ] {
            let json = serde_json::to_vec(&reply(access, scope)).unwrap();
            assert_eq!(
                exact::read_token_reply(&json).is_some(),
                exact_form,
                "{access:?}"
            );
            same_as_general(&json);
            let Outcome::Ok(Reply::Token(got)) = decode_response(&json).unwrap().outcome else {
                panic!("a token reply");
            };
            assert_eq!(
                (got.access_token.expose(), got.scope.as_deref()),
                (access, scope)
            );
        }
    }

    #[test]
    fn arrays_are_not_requests() {
        // Found by fuzzing (ipc_frame): serde reads structs from arrays too, so
        // `[3]` echoed id 3 and `[5,"token"]` was served as a token request.
        for payload in [
            &b"[3]"[..],
            b"\n[\n 2\n]",
            br#"[5,"token",0,null]"#,
            br#"[5,"token"]"#,
        ] {
            let e = decode_request(payload).unwrap_err();
            assert_eq!(e.id, 0, "{}", String::from_utf8_lossy(payload));
            assert_eq!(e.error.code, ErrorCode::BadRequest);
        }
    }

    #[test]
    fn token_requests_must_be_utf8_throughout() {
        // Found by fuzzing (ipc_frame): invalid UTF-8 in an ignored field was
        // served by the fast path and refused by the general decoder.
        let payload = b"{\"id\":3,\"op\":\"token\",\"min_v\":\"@fl\xb1\"}";
        let e = decode_request(payload).unwrap_err();
        assert_eq!(e.error.code, ErrorCode::BadRequest);
        assert_eq!(e.id, 3, "the id is still echoed");
        assert!(serde_json::from_slice::<Request>(payload).is_err());
    }

    #[test]
    fn bad_requests_echo_the_id_when_they_can() {
        let e = decode_request(br#"{"id":9,"op":"fly"}"#).unwrap_err();
        assert_eq!(e.id, 9);
        assert_eq!(e.error.code, ErrorCode::BadRequest);
        let e = decode_request(b"not json").unwrap_err();
        assert_eq!(e.id, 0);
        let e = decode_request(br#"{"id":3,"op":"token","min_valid":"soon"}"#).unwrap_err();
        assert_eq!(e.id, 3);
        assert!(e.error.message.contains("malformed request"));
    }

    #[test]
    fn responses_have_the_documented_shape() {
        let ok = Response {
            id: 2,
            outcome: Outcome::Ok(Reply::Token(TokenReply {
                access_token: WireSecret::new("abc".into()),
                token_type: "Bearer".into(),
                expires_at_ms: 5,
                scope: None,
            })),
        };
        let json = serde_json::to_value(&ok).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id":2,"ok":{"kind":"token","access_token":"abc","token_type":"Bearer","expires_at_ms":5}})
        );
        let err = Response {
            id: 3,
            outcome: Outcome::Error(WireError::new(ErrorCode::Revoked, "gone")),
        };
        let json = serde_json::to_string(&err).unwrap();
        assert_eq!(
            json,
            r#"{"id":3,"error":{"code":"REVOKED","number":6,"message":"gone"}}"#
        );
        let back: Response = serde_json::from_str(&json).unwrap();
        assert!(matches!(
            back.outcome,
            Outcome::Error(WireError {
                code: ErrorCode::Revoked,
                ..
            })
        ));
        let event: Response = serde_json::from_str(
            r#"{"id":4,"event":{"kind":"state","state":"revoked","error":{"code":"REVOKED","message":"x"}},"extra":1}"#,
        )
        .unwrap();
        assert!(matches!(event.outcome, Outcome::Event(Event::State { .. })));
    }

    #[test]
    fn a_taken_secret_has_no_spare_capacity() {
        let mut value = String::with_capacity(64);
        value.push_str("abc");
        let taken = WireSecret::new(value).take();
        assert_eq!((taken.as_str(), taken.capacity()), ("abc", 3));
        let taken = WireSecret::new("exact".to_owned()).take();
        assert_eq!((taken.as_str(), taken.capacity()), ("exact", 5));
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let r = decode_request(br#"{"id":1,"op":"enroll","secret":"hunter2-secret"}"#).unwrap();
        assert!(!format!("{r:?}").contains("hunter2"));
    }

    #[test]
    fn negotiation_picks_the_highest_common_version() {
        assert_eq!(negotiate(&[1]), Some(1));
        assert_eq!(negotiate(&[0, 1, 99]), Some(1));
        assert_eq!(negotiate(&[2, 3]), None);
        assert_eq!(negotiate(&[]), None);
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use proptest::test_runner::TestCaseError;

    use super::*;

    /// Whatever the exact readers accept, serde accepts and reads the same.
    fn agrees_with_serde(request: &[u8], reply: &[u8]) -> Result<(), TestCaseError> {
        let refused = |what: &[u8]| {
            format!(
                "exact accepted what serde refuses: {:?}",
                String::from_utf8_lossy(what)
            )
        };
        if let Some((id, min_valid)) = exact::read_token_request(request) {
            let general = serde_json::from_slice::<Request>(request)
                .map_err(|_| TestCaseError::fail(refused(request)))?;
            prop_assert_eq!(general.id, id);
            let is_same =
                matches!(general.op, Op::Token { min_valid: m, scope: None } if m == min_valid);
            prop_assert!(is_same);
        }
        if let Some(view) = exact::read_token_reply(reply) {
            let general = serde_json::from_slice::<Response>(reply)
                .map_err(|_| TestCaseError::fail(refused(reply)))?;
            prop_assert_eq!(general.id, view.id);
            let Outcome::Ok(Reply::Token(t)) = general.outcome else {
                return Err(TestCaseError::fail("serde read another reply"));
            };
            prop_assert_eq!(t.access_token.expose(), view.access_token);
            prop_assert_eq!(t.token_type.as_str(), view.token_type);
            prop_assert_eq!(t.expires_at_ms, view.expires_at_ms);
            prop_assert_eq!(t.scope.as_deref(), view.scope);
        }
        Ok(())
    }

    proptest! {
        /// A token reply with any strings decodes to what was sent, on
        /// whichever path takes it.
        #[test]
        fn any_token_reply_decodes_to_what_was_sent(
            id in any::<u64>(),
            access in ".{0,40}",
            token_type in "[ -~]{0,12}",
            expires_at_ms in any::<u64>(),
            scope in proptest::option::of("[ -~]{0,20}"),
        ) {
            let sent = TokenReply {
                access_token: WireSecret::new(access.clone()),
                token_type: token_type.clone(),
                expires_at_ms,
                scope: scope.clone(),
            };
            let json = serde_json::to_vec(&Response { id, outcome: Outcome::Ok(Reply::Token(sent)) }).unwrap();
            let got = decode_response(&json).unwrap();
            prop_assert_eq!(got.id, id);
            let Outcome::Ok(Reply::Token(got)) = got.outcome else { panic!("a token reply") };
            prop_assert_eq!(got.access_token.expose(), access.as_str());
            prop_assert_eq!(got.token_type, token_type);
            prop_assert_eq!(got.expires_at_ms, expires_at_ms);
            prop_assert_eq!(got.scope, scope);
        }

        /// Any bytes: the exact readers accept only what serde accepts, and
        /// read it as serde does.
        #[test]
        fn the_exact_readers_never_disagree_with_serde(bytes in proptest::collection::vec(any::<u8>(), 0..160)) {
            agrees_with_serde(&bytes, &bytes)?;
        }

        /// The exact forms with their slots filled by anything — numbers
        /// with signs, fractions, exponents and too many digits, strings
        /// with control characters, DEL, escapes, quotes and non-ASCII —
        /// and cut or extended at the end: whenever the exact readers
        /// accept, serde accepts and reads the same.
        #[test]
        fn the_exact_forms_with_any_slots_never_disagree_with_serde(
            id in prop_oneof![3 => "[0-9]{1,22}", 1 => "[-+0-9.eE]{0,25}"],
            min_valid in prop_oneof![3 => "[0-9]{1,22}", 1 => "[-+0-9.eE]{0,25}"],
            access in prop_oneof![
                2 => "[ -~]{0,12}".prop_map(String::into_bytes),
                1 => proptest::collection::vec(any::<u8>(), 0..12),
            ],
            token_type in proptest::collection::vec(prop_oneof![Just(b'B'), Just(b'"'), Just(b'\\'), Just(0x7f), Just(0x1f), any::<u8>()], 0..8),
            scope in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
            (cut, tail) in prop_oneof![
                2 => Just((0usize, Vec::new())),
                1 => (0usize..4, proptest::collection::vec(any::<u8>(), 0..3)),
            ],
        ) {
            let mut request = format!("{{\"id\":{id},\"op\":\"token\",\"min_valid\":{min_valid}}}").into_bytes();
            let mut reply = format!("{{\"id\":{id},\"ok\":{{\"kind\":\"token\",\"access_token\":\"").into_bytes();
            reply.extend(&access);
            reply.extend(br#"","token_type":""#);
            reply.extend(&token_type);
            reply.extend(format!("\",\"expires_at_ms\":{min_valid}").as_bytes());
            if let Some(scope) = &scope {
                reply.extend(br#","scope":""#);
                reply.extend(scope);
                reply.push(b'"');
            }
            reply.extend(b"}}");
            for payload in [&mut request, &mut reply] {
                payload.truncate(payload.len().saturating_sub(cut));
                payload.extend(&tail);
            }
            agrees_with_serde(&request, &reply)?;
        }

        /// Mutations of the exact forms (one byte changed): still never a
        /// disagreement with serde.
        #[test]
        fn one_byte_off_the_exact_forms_never_disagrees(at in 0usize..120, byte in any::<u8>()) {
            let mut request = Vec::new();
            encode_token_request(12, 30, &mut request);
            let mut request = request.split_off(frame::HEADER);
            let reply = br#"{"id":12,"ok":{"kind":"token","access_token":"abc.def","token_type":"Bearer","expires_at_ms":99,"scope":"s"}}"#;
            let mut reply = reply.to_vec();
            for payload in [&mut request, &mut reply] {
                let at = at % payload.len();
                payload[at] = byte;
            }
            agrees_with_serde(&request, &reply)?;
        }
    }
}
