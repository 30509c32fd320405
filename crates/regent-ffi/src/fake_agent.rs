//! A scripted agent on a real Unix socket, speaking the real protocol, for
//! the unit tests (the end-to-end tests in `tests/tests/ffi.rs` use the real
//! agent). Tokens are named after their `min_valid` (`token-30`); a
//! `min_valid` of 100000 s or more is refused with `UNAVAILABLE` and a retry
//! hint; one of exactly 99999 s is never answered.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::regent_client::ErrorCode;
use regent_proto::frame::{self, Framed, HEADER};
use regent_proto::message::{
    Event, Op, Outcome, Reply, Request, Response, TokenReply, WireError, WireSecret,
};

#[derive(Default)]
struct Shared {
    connections: Vec<UnixStream>,
    subscribers: Vec<(Arc<Mutex<UnixStream>>, u64)>,
}

pub(crate) struct FakeAgent {
    dir: tempfile::TempDir,
    pub(crate) path: PathBuf,
    shared: Arc<Mutex<Shared>>,
}

impl FakeAgent {
    pub(crate) fn start() -> FakeAgent {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let agent = FakeAgent {
            dir,
            path,
            shared: Arc::default(),
        };
        agent.listen();
        agent
    }

    fn listen(&self) {
        let listener = UnixListener::bind(&self.path).unwrap();
        let shared = Arc::clone(&self.shared);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                shared
                    .lock()
                    .unwrap()
                    .connections
                    .push(stream.try_clone().unwrap());
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || serve(stream, &shared));
            }
        });
    }

    /// The socket path as a C string.
    pub(crate) fn c_path(&self) -> CString {
        CString::new(self.path.to_str().unwrap()).unwrap()
    }

    /// A path in the same directory where nothing listens.
    pub(crate) fn c_dead_path(&self) -> CString {
        CString::new(self.dir.path().join("nobody.sock").to_str().unwrap()).unwrap()
    }

    /// Pushes an event to every subscription.
    pub(crate) fn push(&self, event: Event) {
        for (peer, id) in &self.shared.lock().unwrap().subscribers {
            send(
                peer,
                &Response {
                    id: *id,
                    outcome: Outcome::Event(event.clone()),
                },
            );
        }
    }

    /// Closes every connection and stops answering (the agent went down).
    pub(crate) fn shut_down(&self) {
        let _ = std::fs::remove_file(&self.path);
        let mut shared = self.shared.lock().unwrap();
        for conn in shared.connections.drain(..) {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
        shared.subscribers.clear();
    }

    /// Listens again after [`FakeAgent::shut_down`].
    pub(crate) fn restart(&self) {
        self.listen();
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn send(peer: &Mutex<UnixStream>, response: &Response) {
    let mut out = Vec::new();
    frame::encode(response, &mut out).unwrap();
    let _ = peer.lock().unwrap().write_all(&out);
}

pub(crate) fn token_reply(secret: &str, lifetime: Duration) -> TokenReply {
    TokenReply {
        access_token: WireSecret::new(secret.to_owned()),
        token_type: "Bearer".into(),
        expires_at_ms: (SystemTime::now() + lifetime)
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
        scope: None,
    }
}

fn serve(mut stream: UnixStream, shared: &Mutex<Shared>) {
    let peer = Arc::new(Mutex::new(stream.try_clone().unwrap()));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Ok(Framed::Frame { len }) = frame::frame_len(&buf) {
            let request: Request = serde_json::from_slice(&buf[HEADER..HEADER + len]).unwrap();
            buf.drain(..HEADER + len);
            let id = request.id;
            let ok = |reply| Response {
                id,
                outcome: Outcome::Ok(reply),
            };
            match request.op {
                Op::Hello { .. } => send(
                    &peer,
                    &ok(Reply::Hello {
                        version: 1,
                        agent: "fake".into(),
                    }),
                ),
                // Never answered: for request timeouts.
                Op::Token {
                    min_valid: 99_999, ..
                } => {}
                Op::Token { min_valid, .. } if min_valid >= 100_000 => {
                    let mut e = WireError::new(ErrorCode::Unavailable, "no such token yet");
                    e.retry_after_ms = Some(1500);
                    send(
                        &peer,
                        &Response {
                            id,
                            outcome: Outcome::Error(e),
                        },
                    );
                }
                Op::Token { min_valid, .. } => send(
                    &peer,
                    &ok(Reply::Token(token_reply(
                        &format!("token-{min_valid}"),
                        Duration::from_secs(3600),
                    ))),
                ),
                Op::Subscribe { min_valid } => {
                    shared
                        .lock()
                        .unwrap()
                        .subscribers
                        .push((Arc::clone(&peer), id));
                    send(&peer, &ok(Reply::Subscribed {}));
                    send(
                        &peer,
                        &Response {
                            id,
                            outcome: Outcome::Event(Event::Token(token_reply(
                                &format!("pushed-{min_valid}"),
                                Duration::from_secs(3600),
                            ))),
                        },
                    );
                }
                other => panic!("the fake agent does not answer {}", other.name()),
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
