//! The baseline: raw Unix-socket request/response with regent's framing and
//! nothing else — no JSON parsing, no token engine, no client library.
//!
//! [`serve_echo`] answers every whole frame with a canned frame as large as
//! the agent's token reply, on tokio as the agent is; [`serve_floor`] does the
//! same with one thread and blocking calls (the floor); [`RawBlocking`] and [`RawAsync`] send prepared
//! request frames and read one whole frame back. Both ends reuse their
//! buffers, so the baseline costs syscalls and wake-ups only.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;

use regent_proto::frame::{self, Framed};
use regent_proto::message::{Op, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Room for the largest frame plus its header.
const BUFFER: usize = frame::MAX_FRAME + frame::HEADER;

/// One request frame, encoded exactly as the regent clients encode it.
///
/// # Errors
/// Only if the request exceeds the frame cap.
pub fn request_frame(id: u64, op: Op) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    frame::encode(&Request { id, op }, &mut out).map_err(io::Error::other)?;
    Ok(out)
}

/// The `hello` a raw client sends to the agent before token requests.
///
/// # Errors
/// As [`request_frame`].
pub fn hello_frame() -> io::Result<Vec<u8>> {
    request_frame(
        1,
        Op::Hello {
            versions: regent_proto::message::SUPPORTED_VERSIONS.to_vec(),
            app: "regent-bench".to_owned(),
            instance: None,
        },
    )
}

/// A `token` request (the cached-token handout).
///
/// # Errors
/// As [`request_frame`].
pub fn token_frame(id: u64, min_valid_s: u64) -> io::Result<Vec<u8>> {
    request_frame(
        id,
        Op::Token {
            min_valid: min_valid_s,
            scope: None,
        },
    )
}

/// A reply frame of `payload` bytes shaped like a JSON object.
pub fn reply_frame(payload: usize) -> Vec<u8> {
    let payload = payload.max(16);
    let mut out = Vec::with_capacity(payload + frame::HEADER);
    out.extend_from_slice(&(payload as u32).to_be_bytes());
    out.extend_from_slice(b"{\"id\":1,\"x\":\"");
    out.resize(frame::HEADER + payload - 2, b'x');
    out.extend_from_slice(b"\"}");
    out
}

/// A reusable receive buffer that yields whole frames.
struct Frames {
    buf: Box<[u8]>,
    filled: usize,
}

impl Frames {
    fn new() -> Frames {
        Frames {
            buf: vec![0; BUFFER].into_boxed_slice(),
            filled: 0,
        }
    }

    /// Length of the whole frame at the start of the buffer, if there is one.
    fn whole(&self) -> io::Result<Option<usize>> {
        match frame::frame_len(&self.buf[..self.filled]) {
            Ok(Framed::Incomplete) => Ok(None),
            Ok(Framed::Frame { len }) => Ok(Some(frame::HEADER + len)),
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }

    /// Drops the first `n` bytes.
    fn consume(&mut self, n: usize) {
        self.buf.copy_within(n..self.filled, 0);
        self.filled -= n;
    }

    /// Queues `reply` in `out` for every whole frame received (the echo
    /// servers); false when a frame is impossible.
    fn answer_whole(&mut self, reply: &[u8], out: &mut Vec<u8>) -> bool {
        loop {
            match self.whole() {
                Ok(Some(n)) => {
                    self.consume(n);
                    out.extend_from_slice(reply);
                }
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }

    fn spare(&mut self) -> &mut [u8] {
        &mut self.buf[self.filled..]
    }
}

/// A blocking raw client (std only).
#[derive(Debug)]
pub struct RawBlocking {
    stream: UnixStream,
    frames: FramesBox,
}

/// `Frames` without a `Debug` dump of 64 KiB.
struct FramesBox(Frames);

impl std::fmt::Debug for FramesBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Frames")
    }
}

impl RawBlocking {
    /// Connects.
    ///
    /// # Errors
    /// When nothing listens on `socket`.
    pub fn connect(socket: &Path) -> io::Result<RawBlocking> {
        Ok(RawBlocking {
            stream: UnixStream::connect(socket)?,
            frames: FramesBox(Frames::new()),
        })
    }

    /// Sends one frame and reads one whole frame back; returns its length.
    ///
    /// # Errors
    /// Socket errors, or a peer that closed or sent an impossible frame.
    pub fn call(&mut self, request: &[u8]) -> io::Result<usize> {
        self.stream.write_all(request)?;
        self.receive()
    }

    /// Reads one whole frame; returns its length (header included).
    ///
    /// # Errors
    /// As [`RawBlocking::call`].
    pub fn receive(&mut self) -> io::Result<usize> {
        let frames = &mut self.frames.0;
        loop {
            if let Some(n) = frames.whole()? {
                frames.consume(n);
                return Ok(n);
            }
            let read = self.stream.read(frames.spare())?;
            if read == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            frames.filled += read;
        }
    }

    /// Sends bytes without waiting for an answer.
    ///
    /// # Errors
    /// Socket errors.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }
}

/// An async raw client (tokio).
#[derive(Debug)]
pub struct RawAsync {
    stream: tokio::net::UnixStream,
    frames: FramesBox,
}

impl RawAsync {
    /// Connects.
    ///
    /// # Errors
    /// When nothing listens on `socket`.
    pub async fn connect(socket: &Path) -> io::Result<RawAsync> {
        Ok(RawAsync {
            stream: tokio::net::UnixStream::connect(socket).await?,
            frames: FramesBox(Frames::new()),
        })
    }

    /// Sends one frame and reads one whole frame back; returns its length.
    ///
    /// # Errors
    /// Socket errors, or a peer that closed or sent an impossible frame.
    pub async fn call(&mut self, request: &[u8]) -> io::Result<usize> {
        self.stream.write_all(request).await?;
        let frames = &mut self.frames.0;
        loop {
            if let Some(n) = frames.whole()? {
                frames.consume(n);
                return Ok(n);
            }
            let read = self.stream.read(frames.spare()).await?;
            if read == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            frames.filled += read;
        }
    }
}

/// Serves the echo baseline on `listener` forever: every whole frame
/// received is answered with `reply`.
pub async fn serve_echo(listener: tokio::net::UnixListener, reply: Arc<[u8]>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(echo_connection(stream, Arc::clone(&reply)));
            }
            Err(e) => {
                tracing::warn!(error = %e, "echo accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

async fn echo_connection(mut stream: tokio::net::UnixStream, reply: Arc<[u8]>) {
    let mut frames = Frames::new();
    let mut out = Vec::with_capacity(reply.len() * 4);
    loop {
        if !frames.answer_whole(&reply, &mut out) {
            return;
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        match stream.read(frames.spare()).await {
            Ok(0) | Err(_) => return,
            Ok(n) => frames.filled += n,
        }
    }
}

/// Serves the floor on `listener` until it fails: one thread, blocking std
/// calls, one connection at a time, each answered until it closes. Every
/// whole frame received is answered with `reply` in one `write`. Nothing
/// here crosses a thread or an event loop, so this is the least a local
/// request/response can cost: a client's wait is one wake-up, one read and
/// one write on the other side.
///
/// # Errors
/// When `accept` itself fails.
pub fn serve_floor(listener: &std::os::unix::net::UnixListener, reply: &[u8]) -> io::Result<()> {
    loop {
        let (stream, _) = listener.accept()?;
        floor_connection(stream, reply);
    }
}

fn floor_connection(mut stream: UnixStream, reply: &[u8]) {
    let mut frames = Frames::new();
    let mut out = Vec::with_capacity(reply.len() * 4);
    loop {
        if !frames.answer_whole(reply, &mut out) {
            return;
        }
        if !out.is_empty() {
            if stream.write_all(&out).is_err() {
                return;
            }
            out.clear();
        }
        match stream.read(frames.spare()) {
            Ok(0) | Err(_) => return,
            Ok(n) => frames.filled += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_frames_have_the_asked_size_and_parse() {
        let f = reply_frame(200);
        assert_eq!(f.len(), 204);
        assert_eq!(frame::frame_len(&f).unwrap(), Framed::Frame { len: 200 });
        let v: serde_json::Value = serde_json::from_slice(&f[4..]).unwrap();
        assert_eq!(v["id"], 1);
    }

    #[tokio::test]
    async fn echo_answers_each_frame() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("echo.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(serve_echo(listener, reply_frame(100).into()));
        let mut client = RawAsync::connect(&path).await.unwrap();
        let request = token_frame(7, 60).unwrap();
        for _ in 0..3 {
            assert_eq!(client.call(&request).await.unwrap(), 104);
        }
        let path2 = path.clone();
        let n = tokio::task::spawn_blocking(move || {
            let mut c = RawBlocking::connect(&path2).unwrap();
            c.call(&token_frame(1, 1).unwrap()).unwrap()
        })
        .await
        .unwrap();
        assert_eq!(n, 104);
    }

    #[test]
    fn the_floor_answers_each_frame_and_each_connection_in_turn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("floor.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || serve_floor(&listener, &reply_frame(100)));
        for _ in 0..3 {
            let mut c = RawBlocking::connect(&path).unwrap();
            for id in 0..3 {
                assert_eq!(c.call(&token_frame(id, 60).unwrap()).unwrap(), 104);
            }
        }
    }
}
