//! Encoding requests, buffering and decoding responses, and turning replies
//! into typed results — shared by the async and blocking clients.
//!
//! Buffers that held a frame are zeroized once it is consumed: responses carry
//! access tokens and `enroll` requests carry the registration secret.

use std::io::{self, Read};
use std::path::Path;
use std::time::Duration;

use regent_proto::frame::{self, FrameError, Framed, HEADER, MAX_FRAME};
use regent_proto::message::{self, Op, Outcome, Reply, Request, Response, SUPPORTED_VERSIONS};
use regent_proto::status::AgentStatus;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{self, Error, Result};
use crate::{
    AgentInfo, BrowserLogin, ClientOptions, DeviceLogin, Enrolled, LoggedIn, LoginPoll, Token,
    token::from_unix_ms,
};
use secrecy::SecretString;

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 8 * 1024;

/// An encoded request frame; zeroized on drop.
pub(crate) type Frame = Zeroizing<Vec<u8>>;

/// `min_valid` in whole seconds, rounded up: asking for less than the caller
/// needs would let the agent hand out a token that dies early.
pub(crate) fn min_valid_secs(min_valid: Duration) -> u64 {
    min_valid
        .as_secs()
        .saturating_add(u64::from(min_valid.subsec_nanos() > 0))
}

/// The `hello` this client opens each connection with.
pub(crate) fn hello(opts: &ClientOptions) -> Op {
    Op::Hello {
        versions: SUPPORTED_VERSIONS.to_vec(),
        app: opts.app.clone(),
        instance: opts.instance.clone(),
    }
}

/// Encodes one request frame.
///
/// # Errors
/// `BAD_REQUEST` when the request exceeds the frame limit (a huge secret).
pub(crate) fn encode_request(id: u64, op: Op) -> Result<Frame> {
    let mut out = Zeroizing::new(Vec::with_capacity(128));
    encode_request_into(id, op, &mut out)?;
    Ok(out)
}

/// Appends one request frame to `out` (which the caller wipes: a request
/// may carry a secret). A `token` request, the one sent per handout, is
/// written without serde (the same bytes).
///
/// # Errors
/// As for [`encode_request`]; `out` is then as it was.
pub(crate) fn encode_request_into(id: u64, op: Op, out: &mut Vec<u8>) -> Result<()> {
    if let Op::Token {
        min_valid,
        scope: None,
    } = op
    {
        message::encode_token_request(id, min_valid, out);
        return Ok(());
    }
    let name = op.name();
    let request = Request { id, op };
    frame::encode(&request, out).map_err(|e| {
        Error::new(
            regent_proto::ErrorCode::BadRequest,
            format!("the `{name}` request cannot be sent: {e}"),
        )
    })
}

/// Bytes read from the agent, cut into responses.
///
/// `buf` is initialised once (zeros) and reused: reads go straight into
/// `buf[end..]`. (Growing a `Vec` to read into it zero-fills the chunk on
/// every read — 8 KiB per handout, 41 % of the client's instructions.)
/// Outside `start..end` every byte is zero: consumed frames, which may hold
/// tokens, are wiped as they go.
#[derive(Default)]
pub(crate) struct FrameBuffer {
    buf: Vec<u8>,
    /// Start of the unconsumed bytes.
    start: usize,
    /// End of the bytes read.
    end: usize,
}

impl FrameBuffer {
    pub(crate) fn new() -> Self {
        FrameBuffer {
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
        }
    }

    /// The next whole response, or `None` until more bytes arrive.
    ///
    /// # Errors
    /// A description (never the payload: it may hold a token) when the bytes
    /// are not a protocol frame; the stream cannot be resynchronised after it.
    pub(crate) fn next_response(&mut self) -> Result<Option<Response>, String> {
        let pending = &self.buf[self.start..self.end];
        let len = match frame::frame_len(pending) {
            Ok(Framed::Incomplete) => return Ok(None),
            Ok(Framed::Frame { len }) => len,
            Err(FrameError::TooLarge(n)) => {
                return Err(format!(
                    "a frame of {n} bytes, above the {MAX_FRAME}-byte limit"
                ));
            }
            Err(FrameError::Empty) => return Err("an empty frame".to_owned()),
        };
        let parsed = message::decode_response(&pending[HEADER..HEADER + len]);
        self.consume(HEADER + len);
        parsed.map(Some).map_err(|e| {
            format!(
                "{:?} error in the JSON at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            )
        })
    }

    /// Reads once from a blocking stream; `Ok(0)` is end of stream.
    pub(crate) fn read_from(&mut self, mut source: impl Read) -> io::Result<usize> {
        self.make_room();
        let read = source.read(&mut self.buf[self.end..]);
        self.filled(read)
    }

    /// Reads once from an async stream; `Ok(0)` is end of stream. Cancel-safe.
    pub(crate) async fn read_from_async<R>(&mut self, source: &mut R) -> io::Result<usize>
    where
        R: tokio::io::AsyncRead + Unpin,
    {
        use tokio::io::AsyncReadExt;
        self.make_room();
        let read = source.read(&mut self.buf[self.end..]).await;
        self.filled(read)
    }

    fn filled(&mut self, read: io::Result<usize>) -> io::Result<usize> {
        if let Ok(n) = read {
            // A reader claiming more than it was given is not trusted.
            self.end = self.end.saturating_add(n).min(self.buf.len());
        }
        read
    }

    fn consume(&mut self, n: usize) {
        let end = (self.start + n).min(self.end);
        self.buf[self.start..end].zeroize();
        self.start = end;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Moves unconsumed bytes to the front and guarantees `READ_CHUNK` bytes
    /// to read into, leaving no stale copy of a frame behind.
    fn make_room(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            let kept = self.end - self.start;
            self.buf[kept..self.end].zeroize();
            self.start = 0;
            self.end = kept;
        }
        if self.buf.len() - self.end < READ_CHUNK {
            let wanted = (self.end + READ_CHUNK).max(self.buf.len() * 2);
            let mut bigger = vec![0; wanted];
            bigger[..self.end].copy_from_slice(&self.buf[..self.end]);
            // Zeroizes the old allocation, which a plain resize would free as is.
            self.buf.zeroize();
            self.buf = bigger;
        }
    }
}

impl Drop for FrameBuffer {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

/// The reply of a response, or the agent's error.
pub(crate) fn into_reply(socket: &Path, op: &str, response: Response) -> Result<Reply> {
    match response.outcome {
        Outcome::Ok(reply) => Ok(reply),
        Outcome::Error(wire) => Err(wire.into()),
        Outcome::Event(_) => Err(error::unexpected(socket, op, "event")),
    }
}

fn reply_kind(reply: &Reply) -> &'static str {
    match reply {
        Reply::Hello { .. } => "hello",
        Reply::Token(_) => "token",
        Reply::Subscribed {} => "subscribed",
        Reply::Unsubscribed {} => "unsubscribed",
        Reply::Status { .. } => "status",
        Reply::Metrics { .. } => "metrics",
        Reply::Enrolled { .. } => "enrolled",
        Reply::Unenrolled {} => "unenrolled",
        Reply::LoginBrowser { .. } => "login_browser",
        Reply::LoginDevice { .. } => "login_device",
        Reply::LoginPending { .. } => "login_pending",
        Reply::LoggedIn { .. } => "logged_in",
        Reply::LoggedOut { .. } => "logged_out",
    }
}

/// Checks the `hello` answer.
///
/// # Errors
/// The agent's error (e.g. `UNSUPPORTED_VERSION`), or `UNSUPPORTED_VERSION`
/// when it picked a version this client does not speak.
pub(crate) fn agent_info(socket: &Path, response: Response) -> Result<AgentInfo> {
    match into_reply(socket, "hello", response)? {
        Reply::Hello { version, agent } if SUPPORTED_VERSIONS.contains(&version) => {
            Ok(AgentInfo { version, agent })
        }
        Reply::Hello { version, agent } => Err(Error::new(
            regent_proto::ErrorCode::UnsupportedVersion,
            format!(
                "the regent agent {agent} at {} chose protocol version {version}, \
                 which this client (versions {SUPPORTED_VERSIONS:?}) does not speak; \
                 upgrade the older of the two",
                socket.display()
            ),
        )),
        other => Err(error::unexpected(socket, "hello", reply_kind(&other))),
    }
}

pub(crate) fn token(socket: &Path, response: Response) -> Result<Token> {
    match into_reply(socket, "token", response)? {
        Reply::Token(reply) => Ok(Token::from_reply(reply)),
        other => Err(error::unexpected(socket, "token", reply_kind(&other))),
    }
}

pub(crate) fn status(socket: &Path, response: Response) -> Result<AgentStatus> {
    match into_reply(socket, "status", response)? {
        Reply::Status { status } => Ok(status),
        other => Err(error::unexpected(socket, "status", reply_kind(&other))),
    }
}

pub(crate) fn metrics(socket: &Path, response: Response) -> Result<String> {
    match into_reply(socket, "metrics", response)? {
        Reply::Metrics { text } => Ok(text),
        other => Err(error::unexpected(socket, "metrics", reply_kind(&other))),
    }
}

pub(crate) fn enrolled(socket: &Path, response: Response) -> Result<Enrolled> {
    match into_reply(socket, "enroll", response)? {
        Reply::Enrolled {
            identifier,
            auth_token_id,
            expires_at_ms,
        } => Ok(Enrolled {
            identifier,
            auth_token_id,
            expires_at: from_unix_ms(expires_at_ms),
        }),
        other => Err(error::unexpected(socket, "enroll", reply_kind(&other))),
    }
}

pub(crate) fn unenrolled(socket: &Path, response: Response) -> Result<()> {
    match into_reply(socket, "unenroll", response)? {
        Reply::Unenrolled {} => Ok(()),
        other => Err(error::unexpected(socket, "unenroll", reply_kind(&other))),
    }
}

/// The answer to `login_start`.
pub(crate) fn login_started(
    socket: &Path,
    response: Response,
) -> Result<std::result::Result<BrowserLogin, DeviceLogin>> {
    match into_reply(socket, "login_start", response)? {
        Reply::LoginBrowser {
            authorization_endpoint,
            client_id,
            scope,
        } => Ok(Ok(BrowserLogin {
            authorization_endpoint,
            client_id,
            scope,
        })),
        Reply::LoginDevice {
            device_code,
            user_code,
            verification_uri,
            verification_uri_complete,
            expires_in,
            interval,
        } => Ok(Err(DeviceLogin {
            device_code: SecretString::from(device_code.expose().to_owned()),
            user_code,
            verification_uri,
            verification_uri_complete,
            // Bounded as the agent bounds what the server says: whatever
            // answers on the socket cannot park a caller for days.
            expires_in: std::time::Duration::from_secs(expires_in.min(3600)),
            interval: std::time::Duration::from_secs(interval.clamp(1, 60)),
        })),
        other => Err(error::unexpected(socket, "login_start", reply_kind(&other))),
    }
}

/// The answer to `login`.
pub(crate) fn logged_in(socket: &Path, response: Response) -> Result<LoginPoll> {
    match into_reply(socket, "login", response)? {
        Reply::LoggedIn {
            user,
            scope,
            expires_at_ms,
        } => Ok(LoginPoll::LoggedIn(LoggedIn {
            user,
            scope,
            expires_at: from_unix_ms(expires_at_ms),
        })),
        Reply::LoginPending { slow_down } => Ok(LoginPoll::Pending { slow_down }),
        other => Err(error::unexpected(socket, "login", reply_kind(&other))),
    }
}

/// The answer to `logout`: whether the server revoked the refresh token.
pub(crate) fn logged_out(socket: &Path, response: Response) -> Result<bool> {
    match into_reply(socket, "logout", response)? {
        Reply::LoggedOut { revoked } => Ok(revoked),
        other => Err(error::unexpected(socket, "logout", reply_kind(&other))),
    }
}

/// The answer to `subscribe`.
pub(crate) fn subscribed(socket: &Path, response: Response) -> Result<()> {
    match into_reply(socket, "subscribe", response)? {
        Reply::Subscribed {} => Ok(()),
        other => Err(error::unexpected(socket, "subscribe", reply_kind(&other))),
    }
}

#[cfg(test)]
mod tests {
    use regent_proto::ErrorCode;
    use regent_proto::message::{Event, TokenReply, WireError, WireSecret};

    use super::*;

    fn framed(response: &Response) -> Vec<u8> {
        let mut out = Vec::new();
        frame::encode(response, &mut out).unwrap();
        out
    }

    fn token_response(id: u64, secret: &str) -> Response {
        Response {
            id,
            outcome: Outcome::Ok(Reply::Token(TokenReply {
                access_token: WireSecret::new(secret.into()),
                token_type: "Bearer".into(),
                expires_at_ms: 1_790_000_000_000,
                scope: None,
            })),
        }
    }

    #[test]
    fn min_valid_rounds_up_to_whole_seconds() {
        assert_eq!(min_valid_secs(Duration::ZERO), 0);
        assert_eq!(min_valid_secs(Duration::from_secs(60)), 60);
        assert_eq!(min_valid_secs(Duration::from_millis(1)), 1);
        assert_eq!(min_valid_secs(Duration::from_millis(59_001)), 60);
        assert_eq!(min_valid_secs(Duration::MAX), u64::MAX);
    }

    #[test]
    fn requests_are_length_prefixed_json() {
        let frame = encode_request(
            7,
            Op::Token {
                min_valid: 30,
                scope: None,
            },
        )
        .unwrap();
        let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        assert_eq!(len, frame.len() - HEADER);
        let json: serde_json::Value = serde_json::from_slice(&frame[HEADER..]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id": 7, "op": "token", "min_valid": 30})
        );
        let hello = encode_request(1, hello(&ClientOptions::new("editor").instance("e1"))).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&hello[HEADER..]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id": 1, "op": "hello", "versions": SUPPORTED_VERSIONS, "app": "editor", "instance": "e1"})
        );
    }

    #[test]
    fn oversized_requests_are_refused_before_sending() {
        let op = Op::Enroll {
            secret: WireSecret::new("x".repeat(MAX_FRAME)),
            force: false,
        };
        let e = encode_request(1, op).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(!e.message.contains("xxxx"));
    }

    #[test]
    fn responses_split_anywhere_are_reassembled_in_order() {
        let mut bytes = framed(&token_response(1, "first"));
        bytes.extend(framed(&token_response(2, "second")));
        for cut in 0..bytes.len() {
            let mut frames = FrameBuffer::new();
            let mut ids = Vec::new();
            for part in [&bytes[..cut], &bytes[cut..]] {
                frames.read_from(part).unwrap();
                while let Some(r) = frames.next_response().unwrap() {
                    ids.push(r.id);
                }
            }
            assert_eq!(ids, vec![1, 2], "cut at {cut}");
        }
    }

    #[test]
    fn frames_larger_than_a_read_grow_the_buffer_and_leave_no_copy() {
        let big = "t".repeat(3 * READ_CHUNK);
        let mut bytes = framed(&token_response(1, &big));
        bytes.extend(framed(&token_response(2, "small")));
        let mut frames = FrameBuffer::new();
        let mut got = Vec::new();
        for chunk in bytes.chunks(1000) {
            frames.read_from(chunk).unwrap();
            while let Some(r) = frames.next_response().unwrap() {
                got.push(r.id);
            }
        }
        assert_eq!(got, vec![1, 2]);
        assert!(frames.buf.len() >= 3 * READ_CHUNK);
        assert!(
            frames.buf.iter().all(|&b| b == 0),
            "every consumed byte is wiped"
        );
    }

    #[test]
    fn consumed_frames_are_zeroized() {
        let mut frames = FrameBuffer::new();
        let mut bytes = framed(&token_response(1, "s3cr3t-one"));
        bytes.extend(&framed(&token_response(2, "s3cr3t-two"))[..10]);
        frames.read_from(&bytes[..]).unwrap();
        assert!(frames.next_response().unwrap().is_some());
        let visible = String::from_utf8_lossy(&frames.buf).into_owned();
        assert!(
            !visible.contains("s3cr3t-one"),
            "consumed bytes must be zeroed"
        );
        frames.make_room();
        assert_eq!((frames.start, frames.end), (0, 10));
        assert_eq!(
            frames.buf[..10],
            bytes[bytes.len() - 10..],
            "the partial frame moved to the front"
        );
        assert!(
            frames.buf[10..].iter().all(|&b| b == 0),
            "no copy left behind it"
        );
    }

    #[test]
    fn garbage_from_the_agent_is_described_without_its_content() {
        let mut frames = FrameBuffer::new();
        let mut bytes = Vec::new();
        frame::encode_raw(
            br#"{"id":1,"ok":{"kind":"token","access_token":42}} "#,
            &mut bytes,
        )
        .unwrap();
        frames.read_from(&bytes[..]).unwrap();
        let detail = frames.next_response().unwrap_err();
        assert!(detail.contains("line 1"), "{detail}");
        let mut frames = FrameBuffer::new();
        frames.read_from(&u32::MAX.to_be_bytes()[..]).unwrap();
        assert!(frames.next_response().unwrap_err().contains("limit"));
    }

    #[test]
    fn replies_map_to_results() {
        let socket = Path::new("/tmp/agent.sock");
        let t = token(socket, token_response(1, "abc")).unwrap();
        assert_eq!(t.secret(), "abc");
        let mut wire = WireError::new(ErrorCode::Revoked, "auth token deleted");
        wire.retry_after_ms = Some(2500);
        let e = token(
            socket,
            Response {
                id: 1,
                outcome: Outcome::Error(wire),
            },
        )
        .unwrap_err();
        assert_eq!((e.code, e.number()), (ErrorCode::Revoked, 6));
        assert_eq!(e.retry_after, Some(Duration::from_millis(2500)));
        let e = status(socket, token_response(1, "abc")).unwrap_err();
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(!e.message.contains("abc"));
        let e = token(
            socket,
            Response {
                id: 1,
                outcome: Outcome::Event(Event::State {
                    state: "active".into(),
                    error: None,
                }),
            },
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::Internal);
    }

    #[test]
    fn hello_checks_the_negotiated_version() {
        let socket = Path::new("/tmp/agent.sock");
        let ok = Response {
            id: 1,
            outcome: Outcome::Ok(Reply::Hello {
                version: 1,
                agent: "0.1.0".into(),
            }),
        };
        assert_eq!(agent_info(socket, ok).unwrap().agent, "0.1.0");
        let future = Response {
            id: 1,
            outcome: Outcome::Ok(Reply::Hello {
                version: 99,
                agent: "9.0.0".into(),
            }),
        };
        assert_eq!(
            agent_info(socket, future).unwrap_err().code,
            ErrorCode::UnsupportedVersion
        );
    }
}
