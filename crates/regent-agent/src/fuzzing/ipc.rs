//! What a local client sends: length-prefixed frames of JSON requests.
//!
//! Input: `stream\n` and then raw bytes as read from the socket (length
//! prefixes included), or one request's JSON payload, which is framed first.

use regent_proto::ErrorCode;
use regent_proto::frame::{self, FrameError, Framed, HEADER, MAX_FRAME};
use regent_proto::message::{Op, Request, WireSecret, decode_request};
use serde_json::Value;

use super::{mode, rotate_at};

const MODES: &[&str] = &["payload", "stream"];

/// Runs the agent's framing loop over a byte stream, decoding each frame.
pub fn ipc_request(data: &[u8]) {
    let (m, rest) = mode(data, MODES);
    if m == 1 {
        frames(rest);
        return;
    }
    let mut framed = Vec::new();
    match frame::encode_raw(rest, &mut framed) {
        Ok(()) => frames(&framed),
        Err(FrameError::Empty) => assert!(rest.is_empty()),
        Err(FrameError::TooLarge(n)) => assert!(n > MAX_FRAME && framed.is_empty()),
    }
}

/// The loop of `ipc::connection`: answer every whole frame, stop at a bad header.
fn frames(stream: &[u8]) {
    let mut buf = stream;
    loop {
        match frame::frame_len(buf) {
            Ok(Framed::Incomplete) => {
                // Waiting for more is only ever for a frame within the cap.
                let announced = buf
                    .first_chunk::<HEADER>()
                    .map_or(HEADER, |h| HEADER + u32::from_be_bytes(*h) as usize);
                assert!(buf.len() < announced && announced <= HEADER + MAX_FRAME);
                return;
            }
            Ok(Framed::Frame { len }) => {
                assert!(len > 0 && len <= MAX_FRAME && buf.len() >= HEADER + len);
                request(&buf[HEADER..HEADER + len]);
                buf = &buf[HEADER + len..];
            }
            Err(FrameError::TooLarge(n)) => {
                // Refused from the 4-byte header alone.
                assert!(n > MAX_FRAME);
                assert_eq!(
                    buf.first_chunk::<HEADER>()
                        .map(|h| u32::from_be_bytes(*h) as usize),
                    Some(n)
                );
                return;
            }
            Err(FrameError::Empty) => {
                assert_eq!(buf.first_chunk::<HEADER>(), Some(&[0; HEADER]));
                return;
            }
        }
    }
}

/// The properties of decoding one payload.
fn request(payload: &[u8]) {
    match decode_request(payload) {
        Ok(request) => {
            // The token fast path and the general decoder agree.
            let general = serde_json::from_slice::<Request>(payload)
                .map(|r| serde_json::to_value(r).unwrap());
            let decoded = serde_json::to_value(&request).unwrap();
            assert_eq!(
                general.as_ref().ok(),
                Some(&decoded),
                "the decoders disagree"
            );
            round_trips(&request, payload.len());
            secret_is_redacted(&request);
        }
        Err(bad) => {
            assert_eq!(bad.error.code, ErrorCode::BadRequest);
            assert_eq!(bad.error.number, ErrorCode::BadRequest.number());
            assert!(bad.error.message.starts_with("malformed request: "));
            if bad.id != 0 {
                // The echoed id was read from an object, not made up (the rest
                // of the payload may be broken: invalid UTF-8 in a string the
                // id reader skips, say).
                let text = String::from_utf8_lossy(payload);
                assert!(
                    text.trim_start().starts_with('{'),
                    "an id echoed for a non-object"
                );
                assert!(
                    text.contains(&bad.id.to_string()),
                    "id {} is not in the request",
                    bad.id
                );
                if let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(payload) {
                    assert_eq!(obj.get("id").and_then(Value::as_u64), Some(bad.id));
                }
            }
        }
    }
    secret_does_not_show(payload);
}

/// encode(decode(x)) decodes to the same request.
fn round_trips(request: &Request, payload_len: usize) {
    let mut out = Vec::new();
    match frame::encode(request, &mut out) {
        Ok(()) => {}
        // Defaults written out (`"min_valid":0`, `"app":""`) can push a request
        // that was just under the cap over it.
        Err(FrameError::TooLarge(_)) if payload_len > MAX_FRAME - 64 => return,
        Err(e) => panic!("a decoded request cannot be encoded again: {e}"),
    }
    let Ok(Framed::Frame { len }) = frame::frame_len(&out) else {
        panic!("an encoded request is not one frame");
    };
    assert_eq!(HEADER + len, out.len());
    let again = decode_request(&out[HEADER..]).unwrap();
    assert_eq!(
        serde_json::to_value(&again).unwrap(),
        serde_json::to_value(request).unwrap()
    );
}

/// A request's `Debug` never shows the enrollment secret.
fn secret_is_redacted(request: &Request) {
    let Op::Enroll { secret, force } = &request.op else {
        return;
    };
    let other = Request {
        id: request.id,
        op: Op::Enroll {
            secret: WireSecret::new(format!("{}x", secret.expose())),
            force: *force,
        },
    };
    assert_eq!(format!("{request:?}"), format!("{other:?}"));
}

/// Rotating the `secret` field changes no error message.
fn secret_does_not_show(payload: &[u8]) {
    let Ok(original @ Value::Object(_)) = serde_json::from_slice::<Value>(payload) else {
        return;
    };
    let mut rotated = original.clone();
    if !rotate_at(&mut rotated, &["secret"]) {
        return;
    }
    let outcome = |v: &Value| match decode_request(&serde_json::to_vec(v).unwrap()) {
        Ok(r) => format!("{r:?}"),
        Err(bad) => format!("{bad:?}"),
    };
    assert_eq!(
        outcome(&original),
        outcome(&rotated),
        "the outcome shows the enrollment secret"
    );
}
