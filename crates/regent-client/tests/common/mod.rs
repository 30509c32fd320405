//! A tiny scripted agent on the platform's real IPC (a Unix socket, or a
//! named pipe on Windows: `platform`), speaking the real protocol: a test
//! peer for client-side behaviour (timeouts, reconnects, pipelining, error
//! mapping, subscriptions), not a stand-in for end-to-end tests.
#![allow(dead_code)]

mod platform;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

pub use platform::endpoint;
use platform::{Conn, Listener};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use regent_client::ClientOptions;
use regent_proto::ErrorCode;
use regent_proto::frame::{self, Framed, HEADER};
use regent_proto::message::{
    Event, Op, Outcome, Reply, Request, Response, TokenReply, WireError, WireSecret,
};

/// What the fake does about one request.
pub enum Action {
    /// Send this response.
    Send(Response),
    /// Send these bytes as they are.
    Raw(Vec<u8>),
    /// Close the connection (after the actions before it).
    Close,
}

type Handler = dyn Fn(&Request) -> Vec<Action> + Send + Sync;

struct Peer {
    conn: Conn,
    /// One response at a time on the wire.
    writing: Mutex<()>,
}

impl Peer {
    fn send(&self, response: &Response) {
        let mut out = Vec::new();
        frame::encode(response, &mut out).unwrap();
        self.send_raw(&out);
    }
    fn send_raw(&self, bytes: &[u8]) {
        // The client may be gone already; that is its business.
        let _writing = self.writing.lock().unwrap();
        let _ = self.conn.write_all(bytes);
    }
}

struct Shared {
    handler: Box<Handler>,
    log: Mutex<Vec<Request>>,
    changed: Condvar,
    connections: AtomicUsize,
    peers: Mutex<Vec<Arc<Peer>>>,
    subscribers: Mutex<Vec<(Arc<Peer>, u64)>>,
    stopping: AtomicBool,
    /// Each connection's thread, joined when the fake stops (so the pipe
    /// name is free again for a restart on Windows).
    serving: Mutex<Vec<JoinHandle<()>>>,
}

pub struct FakeAgent {
    _dir: Option<tempfile::TempDir>,
    pub path: PathBuf,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FakeAgent {
    /// Starts a fake answering with `handler` (see [`standard`] for the defaults).
    pub fn start(handler: impl Fn(&Request) -> Vec<Action> + Send + Sync + 'static) -> FakeAgent {
        let (dir, path) = platform::endpoint();
        let shared = Arc::new(Shared {
            handler: Box::new(handler),
            log: Mutex::new(Vec::new()),
            changed: Condvar::new(),
            connections: AtomicUsize::new(0),
            peers: Mutex::new(Vec::new()),
            subscribers: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
            serving: Mutex::new(Vec::new()),
        });
        let mut agent = FakeAgent {
            _dir: dir,
            path,
            shared,
            accept: None,
        };
        agent.listen();
        agent
    }

    /// Client options pointing at this fake, with short timeouts.
    pub fn options(&self) -> ClientOptions {
        ClientOptions::new("test-app")
            .socket(&self.path)
            .connect_timeout(Duration::from_secs(2))
            .request_timeout(Duration::from_secs(5))
    }

    fn listen(&mut self) {
        let listener = Listener::bind(&self.path);
        self.shared.stopping.store(false, Ordering::SeqCst);
        let shared = Arc::clone(&self.shared);
        self.accept = Some(std::thread::spawn(move || {
            loop {
                let conn = listener.accept();
                if shared.stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { return };
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let peer = Arc::new(Peer {
                    conn,
                    writing: Mutex::new(()),
                });
                shared.peers.lock().unwrap().push(Arc::clone(&peer));
                let serving = {
                    let shared = Arc::clone(&shared);
                    std::thread::spawn(move || serve(peer, shared))
                };
                shared.serving.lock().unwrap().push(serving);
            }
        }));
    }

    fn stop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.kill_connections();
        // Wake the accept loop so it sees `stopping`.
        platform::poke(&self.path);
        if let Some(accept) = self.accept.take() {
            accept.join().unwrap();
        }
        // A connection accepted while stopping is closed too.
        self.kill_connections();
        let serving: Vec<_> = self.shared.serving.lock().unwrap().drain(..).collect();
        for thread in serving {
            thread.join().unwrap();
        }
        self.shared.peers.lock().unwrap().clear();
        platform::remove(&self.path);
    }

    /// An agent restart: every connection closes, then the socket is bound anew.
    pub fn restart(&mut self) {
        self.stop();
        self.listen();
    }

    /// Stops listening, leaving no socket behind (an agent that is down).
    pub fn shut_down(&mut self) {
        self.stop();
    }

    /// Closes every connection (the listener stays).
    pub fn kill_connections(&self) {
        for peer in self.shared.peers.lock().unwrap().drain(..) {
            peer.conn.kill();
        }
        self.shared.subscribers.lock().unwrap().clear();
    }

    /// Pushes `event` to every live subscription.
    pub fn push(&self, event: Event) {
        for (peer, id) in self.shared.subscribers.lock().unwrap().iter() {
            peer.send(&Response {
                id: *id,
                outcome: Outcome::Event(event.clone()),
            });
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Requests of this op (`"token"`, `"hello"`, …) received so far.
    pub fn count(&self, op: &str) -> usize {
        self.shared
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.op.name() == op)
            .count()
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Waits until `count(op) >= n`, failing the test after 5 s.
    pub fn wait_for(&self, op: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut log = self.shared.log.lock().unwrap();
        while log.iter().filter(|r| r.op.name() == op).count() < n {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("timed out waiting for {n} `{op}` requests"));
            log = self.shared.changed.wait_timeout(log, left).unwrap().0;
        }
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(peer: Arc<Peer>, shared: Arc<Shared>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut greeted = false;
    loop {
        while let Ok(Framed::Frame { len }) = frame::frame_len(&buf) {
            let request: Request = serde_json::from_slice(&buf[HEADER..HEADER + len]).unwrap();
            buf.drain(..HEADER + len);
            let first = !greeted;
            greeted = true;
            {
                shared.log.lock().unwrap().push(request.clone());
                shared.changed.notify_all();
            }
            if first && !matches!(request.op, Op::Hello { .. }) {
                peer.send(&error(request.id, ErrorCode::BadRequest, "say hello first"));
                continue;
            }
            if let Op::Subscribe { .. } = request.op {
                shared
                    .subscribers
                    .lock()
                    .unwrap()
                    .push((Arc::clone(&peer), request.id));
            }
            for action in (shared.handler)(&request) {
                match action {
                    Action::Send(response) => peer.send(&response),
                    Action::Raw(bytes) => peer.send_raw(&bytes),
                    Action::Close => {
                        peer.conn.close();
                        return;
                    }
                }
            }
        }
        match peer.conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Unix milliseconds `lifetime` from now.
pub fn expiry_in(lifetime: Duration) -> u64 {
    (SystemTime::now() + lifetime)
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub fn token(id: u64, secret: &str, lifetime: Duration) -> Response {
    Response {
        id,
        outcome: Outcome::Ok(Reply::Token(token_reply(secret, lifetime))),
    }
}

pub fn token_reply(secret: &str, lifetime: Duration) -> TokenReply {
    TokenReply {
        access_token: WireSecret::new(secret.to_owned()),
        token_type: "Bearer".into(),
        expires_at_ms: expiry_in(lifetime),
        scope: Some("licensed".into()),
    }
}

pub fn error(id: u64, code: ErrorCode, message: &str) -> Response {
    Response {
        id,
        outcome: Outcome::Error(WireError::new(code, message)),
    }
}

pub fn ok(id: u64, reply: Reply) -> Response {
    Response {
        id,
        outcome: Outcome::Ok(reply),
    }
}

/// The agent's usual answers: `hello`, a token named after its `min_valid`
/// (`token-<secs>`) valid for an hour, `subscribe` (+ a first token),
/// `unsubscribe`, `status`, `metrics`, `enroll`, `unenroll`.
pub fn standard(request: &Request) -> Vec<Action> {
    let id = request.id;
    let reply = match &request.op {
        Op::Hello { .. } => Reply::Hello {
            version: 1,
            agent: "fake-0.1".into(),
        },
        Op::Token { min_valid, .. } => Reply::Token(token_reply(
            &format!("token-{min_valid}"),
            Duration::from_secs(3600),
        )),
        Op::Subscribe { min_valid } => {
            return vec![
                Action::Send(ok(id, Reply::Subscribed {})),
                Action::Send(Response {
                    id,
                    outcome: Outcome::Event(Event::Token(token_reply(
                        &format!("pushed-{min_valid}"),
                        Duration::from_secs(3600),
                    ))),
                }),
            ];
        }
        Op::Unsubscribe { .. } => Reply::Unsubscribed {},
        Op::Status {} => Reply::Status {
            status: regent_proto::status::AgentStatus {
                profile: "sentinel".into(),
                instance_mode: "shared".into(),
                instances_max: 1,
                device_id: None,
                store: "file".into(),
                slots: vec![regent_proto::status::SlotStatus::new(
                    0,
                    regent_proto::status::SlotState::Active,
                )],
            },
        },
        Op::Metrics {} => Reply::Metrics {
            text: "regent_up 1\n".into(),
        },
        Op::Enroll { .. } => Reply::Enrolled {
            identifier: "device-1/0".into(),
            auth_token_id: Some("at-1".into()),
            expires_at_ms: expiry_in(Duration::from_secs(300)),
        },
        Op::Unenroll {} => Reply::Unenrolled {},
        Op::LoginStart { .. } => Reply::LoginBrowser {
            authorization_endpoint: "https://idp.example/authorize".into(),
            client_id: "desktop".into(),
            scope: None,
        },
        Op::Login { .. } => Reply::LoginPending { slow_down: false },
        Op::Logout {} => Reply::LoggedOut { revoked: true },
    };
    vec![Action::Send(ok(id, reply))]
}

/// A handler that answers the `n`th request of `op` (1-based) with `actions`
/// and everything else with [`standard`].
pub fn on_nth(
    op: &'static str,
    n: usize,
    actions: impl Fn(&Request) -> Vec<Action> + Send + Sync + 'static,
) -> impl Fn(&Request) -> Vec<Action> + Send + Sync + 'static {
    let seen = AtomicUsize::new(0);
    move |request| {
        if request.op.name() == op && seen.fetch_add(1, Ordering::SeqCst) + 1 == n {
            actions(request)
        } else {
            standard(request)
        }
    }
}
