//! Framing: a 4-byte big-endian length, then one UTF-8 JSON object of at most
//! [`MAX_FRAME`] bytes.
//!
//! "Is a whole frame buffered?" ([`frame_len`]) is separate from "parse it"
//! ([`crate::message`]), and "incomplete" is an ordinary value, not an error.
//! A length above the cap is refused from the 4-byte header alone, before any
//! of the payload is read or buffered.

use serde::Serialize;

/// The largest payload accepted or sent.
pub const MAX_FRAME: usize = 64 * 1024;
/// Bytes of the length prefix.
pub const HEADER: usize = 4;

/// Why a byte stream cannot be a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    /// A zero-length frame carries no JSON object.
    #[error("empty frame")]
    Empty,
}

/// What the buffer holds at its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framed {
    /// Not enough bytes yet: read more.
    Incomplete,
    /// A whole frame: the payload is `buf[HEADER..HEADER + len]`.
    Frame {
        /// Payload length.
        len: usize,
    },
}

/// Checks whether `buf` starts with a whole frame.
///
/// # Errors
/// [`FrameError`] when the header announces an impossible frame; the
/// connection should answer `BAD_REQUEST` and close, since the stream can no
/// longer be resynchronised.
pub fn frame_len(buf: &[u8]) -> Result<Framed, FrameError> {
    let Some(header) = buf.first_chunk::<HEADER>() else {
        return Ok(Framed::Incomplete);
    };
    let len = u32::from_be_bytes(*header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if buf.len() < HEADER + len {
        return Ok(Framed::Incomplete);
    }
    Ok(Framed::Frame { len })
}

/// Appends `message` as one frame to `out`.
///
/// # Errors
/// [`FrameError::TooLarge`] when the JSON exceeds the cap (nothing is appended).
pub fn encode<T: Serialize>(message: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    // Serialising our own types into a Vec cannot fail (no maps with non-string keys).
    if serde_json::to_writer(&mut *out, message).is_err() {
        out.truncate(start);
        return Err(FrameError::Empty);
    }
    let len = out.len() - start - HEADER;
    if len > MAX_FRAME {
        out.truncate(start);
        return Err(FrameError::TooLarge(len));
    }
    let prefix = u32::try_from(len).map_err(|_| FrameError::TooLarge(len))?;
    out[start..start + HEADER].copy_from_slice(&prefix.to_be_bytes());
    Ok(())
}

/// Appends an already-serialised JSON payload as one frame.
///
/// # Errors
/// [`FrameError`] when the payload is empty or too large.
pub fn encode_raw(payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    if payload.is_empty() {
        return Err(FrameError::Empty);
    }
    if payload.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(payload.len()));
    }
    let prefix = u32::try_from(payload.len()).map_err(|_| FrameError::TooLarge(payload.len()))?;
    out.extend_from_slice(&prefix.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_until_the_whole_frame_is_there() {
        let mut out = Vec::new();
        encode(&serde_json::json!({"id": 1}), &mut out).unwrap();
        for cut in 0..out.len() {
            assert_eq!(frame_len(&out[..cut]), Ok(Framed::Incomplete), "cut {cut}");
        }
        let len = out.len() - HEADER;
        assert_eq!(frame_len(&out), Ok(Framed::Frame { len }));
        out.extend_from_slice(b"\0\0\0");
        assert_eq!(
            frame_len(&out),
            Ok(Framed::Frame { len }),
            "trailing bytes are the next frame"
        );
    }

    #[test]
    fn oversize_is_refused_from_the_header() {
        let header = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert_eq!(frame_len(&header), Err(FrameError::TooLarge(MAX_FRAME + 1)));
        assert_eq!(
            frame_len(&u32::MAX.to_be_bytes()),
            Err(FrameError::TooLarge(u32::MAX as usize))
        );
        assert_eq!(frame_len(&[0, 0, 0, 0]), Err(FrameError::Empty));
        let big = "x".repeat(MAX_FRAME);
        let mut out = vec![7];
        assert!(encode(&big, &mut out).is_err());
        assert_eq!(out, vec![7], "nothing appended on failure");
    }

    #[test]
    fn raw_and_typed_encodings_agree() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        encode(&serde_json::json!({"k": "v"}), &mut a).unwrap();
        encode_raw(br#"{"k":"v"}"#, &mut b).unwrap();
        assert_eq!(a, b);
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::message::decode_request;

    proptest! {
        /// Any byte stream either yields a frame, asks for more, or is refused
        /// as a bad request — never a panic, never a frame above the cap.
        #[test]
        fn any_bytes_decode_ask_for_more_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            match frame_len(&bytes) {
                Ok(Framed::Incomplete) => {
                    let announced = bytes
                        .first_chunk::<HEADER>()
                        .map_or(usize::MAX, |h| HEADER + u32::from_be_bytes(*h) as usize);
                    prop_assert!(bytes.len() < announced);
                }
                Ok(Framed::Frame { len }) => {
                    prop_assert!(len <= MAX_FRAME);
                    let _ = decode_request(&bytes[HEADER..HEADER + len]);
                }
                Err(_) => {}
            }
        }

        /// A frame cut anywhere is incomplete, never an error or a wrong frame.
        #[test]
        fn split_frames_are_incomplete(id in any::<u64>(), min_valid in any::<u64>(), cut in 0usize..64) {
            let mut out = Vec::new();
            encode(&serde_json::json!({"id": id, "op": "token", "min_valid": min_valid}), &mut out).unwrap();
            let cut = cut.min(out.len() - 1);
            prop_assert_eq!(frame_len(&out[..cut]), Ok(Framed::Incomplete));
            let Framed::Frame { len } = frame_len(&out).unwrap() else { panic!("whole frame") };
            let request = decode_request(&out[HEADER..HEADER + len]).unwrap();
            prop_assert_eq!(request.id, id);
        }

        /// Headers announcing more than the cap are refused before any payload.
        #[test]
        fn oversize_headers_are_refused(len in (MAX_FRAME as u32 + 1)..=u32::MAX) {
            prop_assert_eq!(frame_len(&len.to_be_bytes()), Err(FrameError::TooLarge(len as usize)));
        }
    }
}
