//! Entry point for the `client_frame` fuzz target in `fuzz/` and the test that
//! replays its corpus. Not part of the API.
//!
//! The client reads the agent's answers through its own buffer (`wire::FrameBuffer`)
//! and turns each into a typed result; an agent (or whatever listens on the
//! socket in its place) is as untrusted as any peer. A broken property panics.

// Panicking on a broken property is the point of this module. Nothing in the
// agent, the client or the C library calls it: only the fuzz targets and the
// corpus tests do, so none of these panics is reachable from a user or a server.
#![allow(clippy::panic, clippy::unwrap_used)]

use std::path::Path;

use regent_proto::frame::{self, FrameError, MAX_FRAME};
use regent_proto::message::{Outcome, Reply, Response, WireSecret};

use crate::token::SubscriptionEvent;
use crate::wire::{self, FrameBuffer};

/// Reads `data` as bytes from the agent and checks every response in it.
///
/// Input: `stream\n` and then the raw bytes (length prefixes included), or
/// one response's JSON payload, which is framed first.
pub fn client_frame(data: &[u8]) {
    let stream = match data.strip_prefix(b"stream\n") {
        Some(raw) => raw.to_vec(),
        None => {
            let mut framed = Vec::new();
            match frame::encode_raw(data, &mut framed) {
                Ok(()) => framed,
                Err(FrameError::Empty) => return,
                Err(FrameError::TooLarge(n)) => {
                    assert!(n > MAX_FRAME);
                    return;
                }
            }
        }
    };
    let whole = read_all(&stream, &[usize::MAX]);
    // However the bytes arrive, the same responses come out.
    let split = read_all(&stream, &[1, 7, 2, 4096, 3, 5]);
    assert_eq!(
        whole, split,
        "the responses depend on how the bytes arrived"
    );
}

/// Feeds `stream` in pieces of the `sizes` (cycled) and collects what comes
/// out: each response as JSON, or the error that ends the stream.
fn read_all(stream: &[u8], sizes: &[usize]) -> Vec<Result<serde_json::Value, String>> {
    let mut frames = FrameBuffer::new();
    let mut out = Vec::new();
    let mut rest = stream;
    for size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let piece = &rest[..rest.len().min(*size)];
        let mut source = piece;
        while !source.is_empty() {
            let n = frames.read_from(&mut source).unwrap();
            assert!(n > 0);
        }
        rest = &rest[piece.len()..];
        loop {
            match frames.next_response() {
                Ok(None) => break,
                Ok(Some(response)) => out.push(Ok(response_checked(response))),
                Err(e) => {
                    describes_without_content(&e);
                    out.push(Err(e));
                    // The stream cannot be resynchronised: the client closes.
                    return out;
                }
            }
        }
    }
    out
}

/// An error about the agent's bytes names a size or a position, never content.
fn describes_without_content(e: &str) {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let ok = e == "an empty frame"
        || e.strip_prefix("a frame of ")
            .and_then(|r| r.strip_suffix(&format!(" bytes, above the {MAX_FRAME}-byte limit")))
            .is_some_and(digits)
        || e.split_once(" error in the JSON at line ")
            .is_some_and(|(kind, at)| {
                ["Io", "Syntax", "Data", "Eof"].contains(&kind)
                    && at
                        .split_once(" column ")
                        .is_some_and(|(l, c)| digits(l) && digits(c))
            });
    assert!(ok, "unexpected wording: {e:?}");
}

/// Turns one response into every typed result the client could want from it,
/// and returns it as JSON.
fn response_checked(response: Response) -> serde_json::Value {
    let json = serde_json::to_value(&response).unwrap();
    // Re-read, the response is the same.
    let again: Response = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(serde_json::to_value(&again).unwrap(), json);
    secrets_are_redacted(&response);

    let socket = Path::new("/run/regent/agent.sock");
    let is_ok = matches!(response.outcome, Outcome::Ok(_));
    let expected_token = match &response.outcome {
        Outcome::Ok(Reply::Token(t)) => Some(t.access_token.expose().to_owned()),
        _ => None,
    };
    match wire::token(socket, response.clone()) {
        Ok(token) => assert_eq!(Some(token.secret()), expected_token.as_deref()),
        Err(e) => {
            assert!(expected_token.is_none());
            if is_ok {
                // Another reply kind: said without showing the reply.
                assert_eq!(e.code, regent_proto::ErrorCode::Internal);
            }
        }
    }
    let _ = wire::agent_info(socket, response.clone());
    let _ = wire::status(socket, response.clone());
    let _ = wire::metrics(socket, response.clone());
    let _ = wire::enrolled(socket, response.clone());
    let _ = wire::unenrolled(socket, response.clone());
    let _ = wire::subscribed(socket, response.clone());
    if let Outcome::Event(event) = response.outcome {
        let _ = format!("{:?}", SubscriptionEvent::from_event(event));
    }
    json
}

/// `Debug` of a response, and of what the client makes of it, never shows the
/// access token: it is the same with the token changed.
fn secrets_are_redacted(response: &Response) {
    let mut other = response.clone();
    let token = match &mut other.outcome {
        Outcome::Ok(Reply::Token(t)) => t,
        Outcome::Event(regent_proto::message::Event::Token(t)) => t,
        _ => return,
    };
    token.access_token = WireSecret::new(format!("{}x", token.access_token.expose()));
    assert_eq!(format!("{response:?}"), format!("{other:?}"));
    let socket = Path::new("/run/regent/agent.sock");
    let a = wire::token(socket, response.clone()).map(|t| format!("{t:?}"));
    let b = wire::token(socket, other).map(|t| format!("{t:?}"));
    assert_eq!(a, b);
}
