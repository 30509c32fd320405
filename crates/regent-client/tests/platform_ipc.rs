//! The blocking client over the platform's own IPC — a Unix socket, or on
//! Windows a named pipe (`scripts/test-windows.sh` runs this under Wine):
//! it gets a token from a peer speaking the protocol, and a peer that
//! accepts and never answers costs it `TIMEOUT` at its deadline, not a hang.
//!
//! Issue 13, bug 1: on Windows the client set socket timeouts that named
//! pipes do not have, so every connection failed with `AGENT_UNREACHABLE`.
//! Unlike `blocking.rs` (whose scripted agent is Unix-only) this file needs
//! nothing but `interprocess`, so it runs on every platform.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use interprocess::local_socket::traits::Listener as _;
use interprocess::local_socket::{GenericFilePath, ListenerOptions, Stream, ToFsName};
use regent_client::{ClientOptions, ErrorCode, blocking};
use regent_proto::frame::{self, Framed, HEADER};
use regent_proto::message::{Op, Outcome, Reply, Request, Response, TokenReply, WireSecret};

/// Longest a test waits for the client before calling it a hang.
const HANG: Duration = Duration::from_secs(60);

/// A fresh socket path, or pipe name on Windows; the directory (Unix) must
/// outlive the listener.
fn endpoint() -> (Option<tempfile::TempDir>, PathBuf) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    if cfg!(windows) {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!(r"\\.\pipe\regent-test-{}-{n}", std::process::id());
        (None, PathBuf::from(name))
    } else {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        (Some(dir), path)
    }
}

/// What the peer does with each request after `hello`.
#[derive(Clone, Copy)]
enum Peer {
    /// Answers `token` requests.
    Answers,
    /// Answers `hello`, then reads and never answers.
    SilentAfterHello,
    /// Accepts, then never answers anything.
    Silent,
}

/// Listens at `path` and serves one connection as `peer` says; returns once
/// the listener exists, so the client can connect at once.
fn serve_one(path: &Path, peer: Peer) -> std::thread::JoinHandle<()> {
    let name = path.to_fs_name::<GenericFilePath>().unwrap();
    let listener = ListenerOptions::new()
        .name(name.into_owned())
        .create_sync()
        .unwrap();
    std::thread::spawn(move || {
        let mut stream = listener.accept().unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            while let Ok(Framed::Frame { len }) = frame::frame_len(&buf) {
                let request: Request = serde_json::from_slice(&buf[HEADER..HEADER + len]).unwrap();
                buf.drain(..HEADER + len);
                if let Some(response) = answer(&request, peer) {
                    let mut out = Vec::new();
                    frame::encode(&response, &mut out).unwrap();
                    stream.write_all(&out).unwrap();
                }
            }
            // The client closing (or giving up) ends the peer.
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
}

fn answer(request: &Request, peer: Peer) -> Option<Response> {
    let reply = match (&request.op, peer) {
        (_, Peer::Silent) => return None,
        (Op::Hello { .. }, _) => Reply::Hello {
            version: 1,
            agent: "platform-ipc-test".into(),
        },
        (Op::Token { .. }, Peer::Answers) => Reply::Token(TokenReply {
            access_token: WireSecret::new("token-over-the-pipe".into()),
            token_type: "Bearer".into(),
            expires_at_ms: unix_ms_in(Duration::from_secs(3600)),
            scope: None,
        }),
        _ => return None,
    };
    Some(Response {
        id: request.id,
        outcome: Outcome::Ok(reply),
    })
}

fn unix_ms_in(lifetime: Duration) -> u64 {
    (SystemTime::now() + lifetime)
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn options(path: &Path) -> ClientOptions {
    ClientOptions::new("platform-ipc-test")
        .socket(path)
        .connect_timeout(Duration::from_millis(500))
        .request_timeout(Duration::from_millis(500))
}

/// Runs `call` on a thread and returns its result, failing the test when it
/// has not returned after [`HANG`] (a deadline the client did not keep).
fn bounded<T: Send + 'static>(call: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(call());
    });
    rx.recv_timeout(HANG)
        .unwrap_or_else(|_| panic!("the blocking client hung past its deadline"))
}

#[test]
fn a_token_comes_over_the_platform_ipc() {
    let (_dir, path) = endpoint();
    let peer = serve_one(&path, Peer::Answers);
    let opts = options(&path);
    let token = bounded(move || {
        let client = blocking::Client::connect(opts)?;
        client.token(Duration::from_secs(60))
    })
    .unwrap_or_else(|e| panic!("no token over {}: {e}", path.display()));
    assert_eq!(token.secret(), "token-over-the-pipe");
    assert!(token.remaining() > Duration::from_secs(60));
    peer.join().unwrap();
}

#[test]
fn a_peer_that_never_answers_hello_costs_a_timeout() {
    let (_dir, path) = endpoint();
    let _peer = serve_one(&path, Peer::Silent);
    let opts = options(&path);
    let error = bounded(move || blocking::Client::connect(opts).map(|_| ()))
        .expect_err("a silent peer cannot complete the handshake");
    assert_eq!(error.code, ErrorCode::Timeout, "{error}");
}

#[test]
fn a_request_the_agent_never_answers_costs_a_timeout() {
    let (_dir, path) = endpoint();
    let _peer = serve_one(&path, Peer::SilentAfterHello);
    let opts = options(&path);
    let error = bounded(move || {
        let client = blocking::Client::connect(opts)?;
        client.token(Duration::from_secs(60))
    })
    .expect_err("nothing answers the token request");
    assert_eq!(error.code, ErrorCode::Timeout, "{error}");
}

/// The stream type is the platform's own (a named pipe on Windows), not a
/// test double.
#[test]
fn the_listener_is_the_platform_ipc() {
    let (_dir, path) = endpoint();
    let _peer = serve_one(&path, Peer::Silent);
    let name = path.as_path().to_fs_name::<GenericFilePath>().unwrap();
    let stream = interprocess::local_socket::ConnectOptions::new()
        .name(name)
        .connect_sync()
        .unwrap();
    #[cfg(windows)]
    assert!(matches!(stream, Stream::NamedPipe(_)));
    #[cfg(unix)]
    assert!(matches!(stream, Stream::UdSocket(_)));
}
