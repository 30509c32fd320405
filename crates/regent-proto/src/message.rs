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

#[cfg(test)]
mod tests {
    use super::*;

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
