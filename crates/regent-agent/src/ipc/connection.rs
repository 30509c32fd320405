//! One client connection: read frames, answer requests in order, push
//! subscription events. One bad client never affects another: every failure
//! here ends this connection only.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, SystemTime};

use regent_proto::time::to_unix_ms as unix_ms;

use interprocess::local_socket::tokio::Stream;
#[cfg(not(windows))]
use interprocess::local_socket::traits::StreamCommon as _;
use regent_proto::ErrorCode;
use regent_proto::frame::{self, Framed};
use regent_proto::message::{
    self, BadRequest, Event as WireEvent, MAX_NAME_CHARS, Op, Outcome, Reply, Request, Response,
    TokenReply, WireError, WireSecret,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, broadcast};
use zeroize::{Zeroize, Zeroizing};

use super::Shared;
use super::peer::{Access, Admitted, Peer, Refusal};
use crate::engine::{DemandGuard, Event, SlotState};
use crate::error::Error;
use crate::grant::Grant;
use crate::lease::{Holder, Lease};
use crate::secret::{ExposeSecret, SecretString};

/// Target of audit events: who received a token, never the token.
///
/// Every handout is audited with the peer's pid, uid, executable and app
/// name and what it received (slot, token type, scope, expiry). The first
/// handout of each token to a connection is an `info` line; the same token
/// handed to the same connection again is a `debug` line, so a busy app does
/// not flood the log while every token still has an `info` record of who got
/// it. Enrollment changes (enroll, unenroll, refusals) are `info`/`warn`.
pub const AUDIT_TARGET: &str = "regent::audit";

/// `retry_after` for a subscription refused at the agent's limit.
const SUBSCRIPTION_RETRY: Duration = Duration::from_secs(10);

struct Subscription {
    id: u64,
    min_valid: Duration,
    /// Expiry of the last token pushed, to push each token once.
    last_pushed: Option<SystemTime>,
    _demand: DemandGuard,
    /// This subscription's place under `[ipc] max_subscriptions`.
    _permit: OwnedSemaphorePermit,
}

struct Connection<'a> {
    stream: Stream,
    shared: &'a Shared,
    peer: Peer,
    /// The peer's process, pinned when it connected (Linux ≥ 6.5), for
    /// deciding again after a policy change.
    pidfd: Option<PeerPidfd>,
    access: Access,
    /// The policy generation `access` was decided under.
    policy_generation: u64,
    /// The policy no longer admits the peer: answer what is buffered, close.
    closing: bool,
    app: Option<String>,
    /// The slot this connection's tokens come from (0 in shared mode).
    slot: u32,
    /// The per-instance lease, taken on the first token or subscribe request
    /// (so admin connections such as `regent status` never hold a slot) and
    /// released into its grace period when the connection ends.
    lease: Option<Lease>,
    /// The lease question is settled: a lease is held, or the agent is in
    /// shared mode and never leases (so requests skip asking).
    leased: bool,
    instance: Option<String>,
    /// The last token reply serialised on this connection (see [`TokenFrame`]).
    token_frame: Option<TokenFrame>,
    /// The peer's executable for audit lines: the program checked against
    /// `allow_executables`, or (no list) the one `/proc` named at connect.
    exe: Option<std::path::PathBuf>,
    /// Expiry of the last token audited at `info` for this connection.
    audited: Option<SystemTime>,
    /// Bytes read and not yet parsed; may hold an enrollment secret, so it is
    /// wiped as it is consumed, when it grows, and on drop.
    buf: Vec<u8>,
    /// Frames to send; holds tokens, so it is wiped like `buf`.
    out: Vec<u8>,
    subscriptions: Vec<Subscription>,
    events: Option<broadcast::Receiver<Event>>,
}

impl Drop for Connection<'_> {
    fn drop(&mut self) {
        self.buf.zeroize();
        self.out.zeroize();
    }
}

#[cfg(target_os = "linux")]
type PeerPidfd = std::os::fd::OwnedFd;
#[cfg(target_os = "macos")]
type PeerPidfd = super::macos::Stamp;
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
type PeerPidfd = ();

/// A peer that passed the policy, ready for [`handle`].
pub(crate) struct Admission {
    peer: Peer,
    pidfd: Option<PeerPidfd>,
    admitted: Admitted,
    generation: u64,
}

/// Reads the peer's credentials from the kernel: uid, gid, pid, and on
/// Linux its supplementary groups and a pidfd.
#[cfg(not(windows))]
fn peer_of(stream: &Stream) -> (Peer, Option<PeerPidfd>) {
    match stream.peer_creds() {
        #[cfg(unix)]
        Ok(creds) => {
            let peer = Peer {
                uid: creds.euid(),
                gid: creds.egid(),
                pid: creds.pid().and_then(|p| u32::try_from(p).ok()),
                groups: creds.groups().map(<[u32]>::to_vec).unwrap_or_default(),
                ..Peer::default()
            };
            #[cfg(target_os = "linux")]
            {
                use std::os::fd::AsFd;
                let mut peer = peer;
                let Stream::UdSocket(socket) = stream;
                let fd = socket.as_fd();
                match super::creds::peer_groups(fd) {
                    Ok(Some(groups)) => peer.groups = groups,
                    Ok(None) => {
                        // Kernels before 4.13: the account's groups.
                        if let Some(uid) = peer.uid {
                            peer.groups = super::creds::groups_of_user(uid);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, uid = peer.uid, "cannot read the peer's supplementary groups; only its primary group counts for [ipc] allow_groups");
                    }
                }
                (peer, super::creds::peer_pidfd(fd))
            }
            #[cfg(target_os = "macos")]
            {
                use std::os::fd::AsFd;
                let mut peer = peer;
                if creds.groups_truncated() {
                    tracing::warn!(
                        uid = peer.uid,
                        "the peer belongs to more groups than macOS reports (16); a group beyond those does not count for [ipc] allow_groups: allow its uid instead"
                    );
                }
                let Stream::UdSocket(socket) = stream;
                let (pid, stamp) = super::macos::identify(socket.as_fd(), peer.uid);
                peer.pid = pid;
                (peer, stamp)
            }
            #[cfg(not(any(target_os = "linux", target_os = "macos")))]
            (peer, None)
        }
        #[cfg(not(unix))]
        Ok(creds) => (
            Peer {
                pid: creds.pid(),
                ..Peer::default()
            },
            None,
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read peer credentials; refusing the connection");
            (Peer::default(), None)
        }
    }
}

/// Identifies a named pipe's client: its pid (`GetNamedPipeClientProcessId`
/// on the server end), then, with the process held open
/// (`PROCESS_QUERY_LIMITED_INFORMATION`, so its pid cannot pass to another
/// process meanwhile), its creation time (a process started after the
/// connection only reused the pid of a client that exited), its token's user
/// and enabled groups and its image path. A client whose account cannot be
/// read has no `sid` and is refused.
#[cfg(windows)]
fn peer_of(stream: &Stream) -> (Peer, Option<PeerPidfd>) {
    let Stream::NamedPipe(pipe) = stream;
    // The client connected before now: a process created later only has its
    // pid (the client exited and the pid was reused before it was opened).
    let connected_by = regent_client::win32::filetime_now();
    let pid = match pipe.inner().client_process_id() {
        Ok(pid) => pid,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the pipe client's process id; refusing the connection");
            return (Peer::default(), None);
        }
    };
    let mut peer = Peer {
        pid: Some(pid),
        ..Peer::default()
    };
    let process = match regent_client::win32::Process::open(pid) {
        Ok(process) => process,
        Err(e) => {
            tracing::warn!(error = %e, pid, "cannot open the pipe client's process; refusing the connection");
            return (peer, None);
        }
    };
    match process.created() {
        Ok(created) if created <= connected_by => {}
        Ok(_) => {
            tracing::warn!(
                pid,
                "the pipe client's process id now names a process started after it connected (the client exited and its pid was reused); refusing the connection"
            );
            return (peer, None);
        }
        Err(e) => {
            tracing::warn!(error = %e, pid, "cannot read when the pipe client's process started; refusing the connection");
            return (peer, None);
        }
    }
    match process.account() {
        Ok((sid, groups)) => {
            peer.sid = Some(sid);
            peer.group_sids = groups;
        }
        Err(e) => {
            tracing::warn!(error = %e, pid, "cannot read the pipe client's account from its token; refusing the connection");
            return (peer, None);
        }
    }
    match process.image_path() {
        Ok(path) => peer.image = Some(path),
        // Checked (and refused) only when allow_executables is set.
        Err(e) => tracing::debug!(error = %e, pid, "cannot read the pipe client's image path"),
    }
    (peer, None)
}

/// Decides under the current policy; `pidfd` pins the process on Linux.
fn decide(
    shared: &Shared,
    peer: &Peer,
    pidfd: Option<&PeerPidfd>,
) -> (u64, Result<Admitted, Refusal>) {
    #[cfg(target_os = "linux")]
    let pinned = {
        use std::os::fd::AsFd;
        pidfd.map(|fd| super::peer::PinnedProcess::new(fd.as_fd()))
    };
    #[cfg(target_os = "macos")]
    let pinned = pidfd.map(|stamp| super::peer::PinnedProcess::stamped(*stamp));
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    let pinned: Option<super::peer::PinnedProcess<'_>> = {
        let _ = pidfd;
        None
    };
    shared
        .settings
        .policy
        .decide(peer, || peer.lookup_executable(pinned))
}

/// Reads who the peer is and decides whether it is served. A refusal is
/// counted and logged here; the caller sends it.
pub(crate) fn admit(stream: &Stream, shared: &Shared) -> Result<Admission, Refusal> {
    let (peer, pidfd) = peer_of(stream);
    let (generation, decided) = decide(shared, &peer, pidfd.as_ref());
    match decided {
        Ok(admitted) => Ok(Admission {
            peer,
            pidfd,
            admitted,
            generation,
        }),
        Err(refusal) => {
            shared.stats.refused.fetch_add(1, Ordering::Relaxed);
            let exe = refusal.exe.clone().or_else(|| peer.executable());
            tracing::warn!(
                target: AUDIT_TARGET,
                uid = peer.uid,
                sid = peer.sid.as_deref(),
                pid = peer.pid,
                exe = ?exe,
                detail = %refusal.message,
                "{}",
                refusal.reason
            );
            Err(refusal)
        }
    }
}

/// Answers one error frame and closes (connection limit, permission).
/// With a `drain` permit, what the client sends is read and discarded for a
/// moment first, so that its own first write (its hello) does not fail with
/// `EPIPE` before it reads the refusal; without one (too many refusals at
/// once) the frame is written if the socket takes it at once and the
/// connection closes, so refused peers can hold no more than a bounded number
/// of descriptors, and never a connection slot.
pub(crate) async fn refuse(
    mut stream: Stream,
    code: ErrorCode,
    message: &str,
    drain: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let mut out = Vec::new();
    let response = Response {
        id: 0,
        outcome: Outcome::Error(WireError::new(code, message)),
    };
    if frame::encode(&response, &mut out).is_err() {
        return;
    }
    let Some(_permit) = drain else {
        // A fresh socket's buffer takes a small frame at once.
        let _ = tokio::time::timeout(Duration::ZERO, stream.write_all(&out)).await;
        return;
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&out)).await;
    let mut sink = Zeroizing::new([0u8; 1024]);
    let drain = async {
        let mut total = 0usize;
        while let Ok(n) = stream.read(&mut sink[..]).await {
            total += n;
            if n == 0 || total > 64 * 1024 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
}

/// Serves one admitted connection until it closes, misbehaves, the policy
/// stops admitting it, or the agent shuts down.
pub(crate) async fn handle(
    stream: Stream,
    admission: Admission,
    shared: &Shared,
    mut shutdown: broadcast::Receiver<()>,
) {
    let Admission {
        peer,
        pidfd,
        admitted,
        generation,
    } = admission;
    // Audit lines name the program that was checked; without a list, the
    // one /proc names now, read once.
    let exe = admitted.exe.or_else(|| peer.executable());
    let mut conn = Connection {
        stream,
        shared,
        peer,
        pidfd,
        access: admitted.access,
        policy_generation: generation,
        closing: false,
        app: None,
        slot: 0,
        lease: None,
        leased: false,
        instance: None,
        token_frame: None,
        exe,
        audited: None,
        buf: Vec::new(),
        out: Vec::new(),
        subscriptions: Vec::new(),
        events: None,
    };
    conn.run(&mut shutdown).await;
}

impl Connection<'_> {
    async fn run(&mut self, shutdown: &mut broadcast::Receiver<()>) {
        let read_timeout = self.shared.settings.read_timeout;
        let mut shutdown = ShutdownSignal::new(shutdown.recv());
        loop {
            // Answer every whole frame already buffered (pipelined requests).
            while !self.closing {
                match frame::frame_len(&self.buf) {
                    Ok(Framed::Incomplete) => break,
                    Ok(Framed::Frame { len }) => {
                        let end = frame::HEADER + len;
                        let request = message::decode_request(&self.buf[frame::HEADER..end]);
                        consume(&mut self.buf, end);
                        self.request(request).await;
                    }
                    Err(e) => {
                        self.shared
                            .stats
                            .bad_requests
                            .fetch_add(1, Ordering::Relaxed);
                        self.reply_error(
                            0,
                            Error::new(
                                ErrorCode::BadRequest,
                                format!("{e}; closing the connection"),
                            ),
                        );
                        let _ = self.flush().await;
                        return;
                    }
                }
            }
            if self.flush().await.is_err() || self.closing {
                return;
            }
            if self.buf.is_empty() && self.buf.capacity() > 4096 {
                // Idle connections keep no large buffers.
                self.buf.zeroize();
                self.buf = Vec::new();
            }
            // A half-sent frame, or a connection that has not said hello, may
            // only stall for read_timeout; an idle client may stay connected.
            let stalled_limit =
                (!self.buf.is_empty() || self.app.is_none()).then_some(read_timeout);
            let events = self.events.as_mut();
            tokio::select! {
                () = &mut shutdown => return,
                read = read_some(&mut self.stream, &mut self.buf, stalled_limit) => match read {
                    ReadOutcome::Data => {}
                    ReadOutcome::Closed => return,
                    ReadOutcome::Stalled => {
                        let what = if self.app.is_none() && self.buf.is_empty() { "no hello" } else { "half a frame" };
                        self.shared.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
                        self.reply_error(0, Error::new(
                            ErrorCode::BadRequest,
                            format!("{what} within {}s; closing the connection", read_timeout.as_secs()),
                        ));
                        let _ = self.flush().await;
                        return;
                    }
                },
                event = next_event(events) => {
                    self.on_event(event).await;
                    if self.closing {
                        let _ = self.flush().await;
                        return;
                    }
                }
            }
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let result = self.stream.write_all(&self.out).await;
        // The buffer held tokens: wipe it, not just truncate it.
        self.out.zeroize();
        result
    }

    fn reply(&mut self, id: u64, reply: Reply) {
        self.push(Response {
            id,
            outcome: Outcome::Ok(reply),
        });
    }

    fn reply_error(&mut self, id: u64, error: Error) {
        let mut wire = WireError::new(error.code, error.message);
        wire.retry_after_ms = error
            .retry_after
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.push(Response {
            id,
            outcome: Outcome::Error(wire),
        });
    }

    fn push(&mut self, response: Response) {
        // Serialised apart, then copied in: `out` only grows through
        // `reserve_wiped`, which wipes what a reallocation leaves behind.
        let mut json = WipedWriter::default();
        let encoded = serde_json::to_writer(&mut json, &response)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                reserve_wiped(&mut self.out, frame::HEADER + json.0.len());
                frame::encode_raw(&json.0, &mut self.out).map_err(|e| e.to_string())
            });
        if let Err(e) = encoded {
            tracing::error!(error = %e, "response too large to send");
            let fallback = Response {
                id: response.id,
                outcome: Outcome::Error(WireError::new(ErrorCode::Internal, "response too large")),
            };
            reserve_wiped(&mut self.out, 256);
            let _ = frame::encode(&fallback, &mut self.out);
        }
    }

    /// Answers a token request. The reply is serialised once per grant and
    /// reused while the slot hands out the same token: only the id changes.
    fn reply_token(&mut self, id: u64, grant: &Arc<Grant>) {
        let fresh = self
            .token_frame
            .as_ref()
            .is_none_or(|cached| !cached.is_for(grant));
        if fresh {
            self.token_frame = TokenFrame::new(grant);
        }
        match &self.token_frame {
            Some(cached) => cached.encode(id, &mut self.out),
            None => self.reply(id, Reply::Token(token_reply(grant))),
        }
    }

    async fn request(&mut self, request: Result<Request, BadRequest>) {
        self.shared.stats.requests.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.recheck_policy() {
            let id = match &request {
                Ok(r) => r.id,
                Err(bad) => bad.id,
            };
            self.reply_error(id, e);
            return;
        }
        let request = match request {
            Ok(r) => r,
            Err(bad) => {
                self.shared
                    .stats
                    .bad_requests
                    .fetch_add(1, Ordering::Relaxed);
                self.push(Response {
                    id: bad.id,
                    outcome: Outcome::Error(bad.error),
                });
                return;
            }
        };
        let id = request.id;
        if self.app.is_none() && !matches!(request.op, Op::Hello { .. }) {
            self.reply_error(
                id,
                Error::new(
                    ErrorCode::BadRequest,
                    "the first request on a connection must be hello",
                ),
            );
            return;
        }
        match request.op {
            Op::Hello {
                versions,
                app,
                instance,
            } => self.hello(id, &versions, app, instance),
            Op::Token { min_valid, .. } => {
                let min_valid = Duration::from_secs(min_valid);
                if let Err(e) = self
                    .may_fetch_tokens("token")
                    .and_then(|()| self.ensure_lease())
                {
                    self.reply_error(id, e);
                    return;
                }
                match self.shared.agent.token_for(self.slot, min_valid).await {
                    Ok(grant) => {
                        self.audit_handout(&grant, "token", min_valid);
                        self.reply_token(id, &grant);
                    }
                    Err(e) => self.reply_error(id, e),
                }
            }
            Op::Subscribe { min_valid } => self.subscribe(id, Duration::from_secs(min_valid)).await,
            Op::Unsubscribe { subscription } => {
                self.subscriptions.retain(|s| s.id != subscription);
                if self.subscriptions.is_empty() {
                    self.events = None;
                }
                self.reply(id, Reply::Unsubscribed {});
            }
            Op::Status {} => {
                let status = self
                    .shared
                    .agent
                    .status_with(self.access.administers())
                    .await;
                self.reply(id, Reply::Status { status });
            }
            Op::Metrics {} => {
                let text = self.shared.agent.render_metrics(&self.shared.stats);
                self.reply(id, Reply::Metrics { text });
            }
            Op::Enroll { secret, force } => {
                if !self.access.administers() {
                    tracing::warn!(target: AUDIT_TARGET, pid = self.peer.pid, uid = self.peer.uid, sid = self.peer.sid.as_deref(), exe = ?self.exe, app = self.app.as_deref().unwrap_or(""), "enroll refused: not the agent's user or root");
                    self.reply_error(id, admin_only("enroll"));
                    return;
                }
                let value = SecretString::from(secret.expose().to_owned());
                drop(secret);
                let options = crate::agent::EnrollOptions { force };
                match self.shared.agent.enroll(value, options).await {
                    Ok(enrolled) => {
                        tracing::info!(
                            target: AUDIT_TARGET,
                            pid = self.peer.pid,
                            uid = self.peer.uid,
                            sid = self.peer.sid.as_deref(),
                            exe = ?self.exe,
                            app = self.app.as_deref().unwrap_or(""),
                            identifier = %crate::secret::short_hash(&enrolled.identifier),
                            auth_token_id = %enrolled.auth_token_id.as_deref().map(crate::secret::short_hash).unwrap_or_default(),
                            forced = force,
                            "enrolled"
                        );
                        self.reply(
                            id,
                            Reply::Enrolled {
                                identifier: enrolled.identifier,
                                auth_token_id: enrolled.auth_token_id,
                                expires_at_ms: unix_ms(SystemTime::from(enrolled.expires_at)),
                            },
                        );
                    }
                    Err(e) => {
                        tracing::warn!(target: AUDIT_TARGET, pid = self.peer.pid, uid = self.peer.uid, sid = self.peer.sid.as_deref(), exe = ?self.exe, app = self.app.as_deref().unwrap_or(""), code = %e.code, "enrollment failed");
                        self.reply_error(id, e);
                    }
                }
            }
            Op::Unenroll {} => {
                if !self.access.administers() {
                    tracing::warn!(target: AUDIT_TARGET, pid = self.peer.pid, uid = self.peer.uid, sid = self.peer.sid.as_deref(), exe = ?self.exe, app = self.app.as_deref().unwrap_or(""), "unenroll refused: not the agent's user or root");
                    self.reply_error(id, admin_only("unenroll"));
                    return;
                }
                match self.shared.agent.unenroll().await {
                    Ok(()) => {
                        tracing::info!(target: AUDIT_TARGET, pid = self.peer.pid, uid = self.peer.uid, sid = self.peer.sid.as_deref(), exe = ?self.exe, app = self.app.as_deref().unwrap_or(""), "unenrolled");
                        self.reply(id, Reply::Unenrolled {});
                    }
                    Err(e) => self.reply_error(id, e),
                }
            }
        }
    }

    fn hello(&mut self, id: u64, versions: &[u32], app: String, instance: Option<String>) {
        let Some(version) = message::negotiate(versions) else {
            self.reply_error(
                id,
                Error::new(
                    ErrorCode::UnsupportedVersion,
                    format!(
                        "client speaks protocol versions {versions:?}, this agent speaks {:?}; upgrade the older side",
                        message::SUPPORTED_VERSIONS
                    ),
                ),
            );
            return;
        };
        for (field, value) in [
            ("app", Some(app.as_str())),
            ("instance", instance.as_deref()),
        ] {
            if let Some(problem) = value.and_then(name_problem) {
                self.reply_error(
                    id,
                    Error::new(
                        ErrorCode::BadRequest,
                        format!("hello: {field} {problem}; use at most {MAX_NAME_CHARS} printable characters"),
                    ),
                );
                return;
            }
        }
        tracing::info!(
            target: AUDIT_TARGET,
            pid = self.peer.pid,
            uid = self.peer.uid,
            sid = self.peer.sid.as_deref(),
            exe = ?self.exe,
            app = %app,
            instance = instance.as_deref().unwrap_or(""),
            "client connected"
        );
        self.instance = instance;
        self.app = Some(app);
        self.reply(
            id,
            Reply::Hello {
                version,
                agent: env!("CARGO_PKG_VERSION").to_owned(),
            },
        );
    }

    /// Tokens need token access: the agent's own CLI admitted only for
    /// administration ([`Access::Manage`]) may not fetch them.
    fn may_fetch_tokens(&self, op: &str) -> Result<(), Error> {
        if self.access.fetches_tokens() {
            return Ok(());
        }
        tracing::warn!(target: AUDIT_TARGET, pid = self.peer.pid, uid = self.peer.uid, sid = self.peer.sid.as_deref(), exe = ?self.exe, app = self.app.as_deref().unwrap_or(""), op, "token request refused: the regent CLI is not in [ipc] allow_executables");
        Err(Error::new(
            ErrorCode::PermissionDenied,
            format!(
                "{op} refused: [ipc] allow_executables is set and does not list this program ({}), which is admitted for administration only (status, metrics, enroll, unenroll); an administrator can add its path to allow_executables",
                self.exe
                    .as_deref()
                    .map_or_else(|| "unknown".to_owned(), super::peer::shown)
            ),
        ))
    }

    /// Decides again when the policy changed since this connection was
    /// admitted (a generation number makes the unchanged case one atomic
    /// load). A peer the policy no longer admits is told why and the
    /// connection closes after the frames already queued.
    fn recheck_policy(&mut self) -> Result<(), Error> {
        if self.shared.settings.policy.generation() == self.policy_generation {
            return Ok(());
        }
        let (generation, decided) = decide(self.shared, &self.peer, self.pidfd.as_ref());
        match decided {
            Ok(admitted) => {
                self.policy_generation = generation;
                if admitted.access != self.access {
                    tracing::info!(target: AUDIT_TARGET, pid = self.peer.pid, uid = self.peer.uid, sid = self.peer.sid.as_deref(), exe = ?self.exe, app = self.app.as_deref().unwrap_or(""), access = ?admitted.access, "access changed by a policy reload");
                }
                self.access = admitted.access;
                if admitted.exe.is_some() {
                    self.exe = admitted.exe;
                }
                if !self.access.fetches_tokens() {
                    self.subscriptions.clear();
                    self.events = None;
                }
                Ok(())
            }
            Err(refusal) => {
                self.closing = true;
                self.subscriptions.clear();
                self.events = None;
                self.shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    target: AUDIT_TARGET,
                    uid = self.peer.uid,
                    sid = self.peer.sid.as_deref(),
                    pid = self.peer.pid,
                    exe = ?refusal.exe.as_ref().or(self.exe.as_ref()),
                    app = self.app.as_deref().unwrap_or(""),
                    detail = %refusal.message,
                    "connection closed after a policy reload: {}",
                    refusal.reason
                );
                Err(Error::new(
                    ErrorCode::PermissionDenied,
                    format!("{}; closing the connection", refusal.message),
                ))
            }
        }
    }

    /// Leases a slot for this instance (per-instance mode) if it has none yet.
    fn ensure_lease(&mut self) -> Result<(), Error> {
        if self.leased {
            return Ok(());
        }
        let holder = Holder {
            app: self.app.clone().unwrap_or_default(),
            instance: self.instance.clone(),
            pid: self.peer.pid,
        };
        match self.shared.agent.lease(holder, self.access.administers()) {
            Ok(lease) => {
                self.slot = lease.as_ref().map_or(0, Lease::slot);
                if let Some(l) = &lease {
                    tracing::info!(target: AUDIT_TARGET, pid = self.peer.pid, uid = self.peer.uid, sid = self.peer.sid.as_deref(), app = self.app.as_deref().unwrap_or(""), slot = l.slot(), "instance slot leased");
                }
                self.lease = lease;
                self.leased = true;
                Ok(())
            }
            Err(e) => {
                tracing::info!(target: AUDIT_TARGET, pid = self.peer.pid, uid = self.peer.uid, sid = self.peer.sid.as_deref(), app = self.app.as_deref().unwrap_or(""), "no free instance slot");
                Err(e)
            }
        }
    }

    async fn subscribe(&mut self, id: u64, min_valid: Duration) {
        if let Err(e) = self.may_fetch_tokens("subscribe") {
            self.reply_error(id, e);
            return;
        }
        let per_connection = self.shared.settings.max_subscriptions_per_connection;
        if self.subscriptions.len() >= per_connection {
            self.reply_error(
                id,
                Error::new(
                    ErrorCode::BadRequest,
                    format!(
                        "this connection already holds {per_connection} subscriptions, the most allowed ([ipc] max_subscriptions_per_connection); unsubscribe first or reuse one subscription"
                    ),
                ),
            );
            return;
        }
        let Ok(permit) = Arc::clone(&self.shared.subscriptions).try_acquire_owned() else {
            tracing::warn!(target: AUDIT_TARGET, pid = self.peer.pid, uid = self.peer.uid, sid = self.peer.sid.as_deref(), app = self.app.as_deref().unwrap_or(""), limit = self.shared.settings.max_subscriptions, "subscription refused: the agent's subscription limit is reached");
            self.reply_error(
                id,
                Error::new(
                    ErrorCode::Unavailable,
                    format!(
                        "the agent holds {} subscriptions, the most allowed ([ipc] max_subscriptions); retry later",
                        self.shared.settings.max_subscriptions
                    ),
                )
                .with_retry_after(SUBSCRIPTION_RETRY),
            );
            return;
        };
        if let Err(e) = self.ensure_lease() {
            self.reply_error(id, e);
            return;
        }
        let demand = self.shared.agent.hold_demand_for(self.slot, min_valid);
        if self.events.is_none() {
            self.events = Some(self.shared.agent.events_for(self.slot));
        }
        self.subscriptions.push(Subscription {
            id,
            min_valid,
            last_pushed: None,
            _demand: demand,
            _permit: permit,
        });
        let index = self.subscriptions.len() - 1;
        self.reply(id, Reply::Subscribed {});
        // The current token right away (or why there is none).
        match self.shared.agent.token_for(self.slot, min_valid).await {
            Ok(grant) => self.push_token(index, &grant),
            Err(e) => {
                let state = self.shared.agent.engine_status_for(self.slot).state;
                self.push_state(id, state, Some(e));
            }
        }
    }

    /// Pushes `grant` to the subscription at `index` unless it already has it.
    fn push_token(&mut self, index: usize, grant: &Grant) {
        let Some(sub) = self.subscriptions.get_mut(index) else {
            return;
        };
        if sub.last_pushed == Some(grant.expires_at) {
            return;
        }
        sub.last_pushed = Some(grant.expires_at);
        let (id, min_valid) = (sub.id, sub.min_valid);
        self.audit_handout(grant, "subscription", min_valid);
        self.push(Response {
            id,
            outcome: Outcome::Event(WireEvent::Token(token_reply(grant))),
        });
    }

    /// One audit line per handout: `info` for the first handout of a token
    /// to this connection, `debug` for repeats (see [`AUDIT_TARGET`]).
    fn audit_handout(&mut self, grant: &Grant, via: &'static str, min_valid: Duration) {
        let expires_at = unix_ms(grant.expires_at) / 1000;
        let app = self.app.as_deref().unwrap_or("");
        let scope = grant.scope.as_deref().unwrap_or("");
        if self.audited == Some(grant.expires_at) {
            tracing::debug!(target: AUDIT_TARGET, pid = self.peer.pid, uid = self.peer.uid, sid = self.peer.sid.as_deref(), exe = ?self.exe, app, slot = self.slot, token_type = %grant.token_type, scope, expires_at, min_valid_s = min_valid.as_secs(), via, "token handed out again");
        } else {
            self.audited = Some(grant.expires_at);
            tracing::info!(target: AUDIT_TARGET, pid = self.peer.pid, uid = self.peer.uid, sid = self.peer.sid.as_deref(), exe = ?self.exe, app, slot = self.slot, token_type = %grant.token_type, scope, expires_at, min_valid_s = min_valid.as_secs(), via, "token handed out");
        }
    }

    fn push_state(&mut self, id: u64, state: SlotState, error: Option<Error>) {
        let error = error.map(|e| {
            let mut w = WireError::new(e.code, e.message);
            w.retry_after_ms = e
                .retry_after
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            w
        });
        self.push(Response {
            id,
            outcome: Outcome::Event(WireEvent::State {
                state: state.as_str().to_owned(),
                error,
            }),
        });
    }

    async fn on_event(&mut self, event: Option<Event>) {
        if let Err(e) = self.recheck_policy() {
            self.reply_error(0, e);
            return;
        }
        let renewed = match event {
            Some(Event::State { to, error, .. }) => {
                let ids: Vec<u64> = self.subscriptions.iter().map(|s| s.id).collect();
                for id in ids {
                    self.push_state(id, to, error.clone());
                }
                to == SlotState::Active
            }
            // A lagged receiver missed events: re-push what is current.
            Some(Event::Renewed { .. }) | None => true,
        };
        if renewed {
            // One engine call per distinct min_valid, not per subscription:
            // fan-out stays linear in the number of subscriptions.
            let mut answers: HashMap<Duration, Option<Arc<Grant>>> = HashMap::new();
            for index in 0..self.subscriptions.len() {
                let min_valid = self.subscriptions[index].min_valid;
                let grant = match answers.get(&min_valid) {
                    Some(answer) => answer.clone(),
                    None => {
                        let answer = self.shared.agent.token_for(self.slot, min_valid).await.ok();
                        answers.insert(min_valid, answer.clone());
                        answer
                    }
                };
                if let Some(grant) = grant {
                    self.push_token(index, &grant);
                }
            }
        }
    }
}

fn admin_only(op: &str) -> Error {
    Error::new(
        ErrorCode::PermissionDenied,
        if cfg!(windows) {
            format!(
                "{op} is only allowed to the agent's own account, LocalSystem and administrators (run elevated)"
            )
        } else {
            format!("{op} is only allowed to the agent's own user and root")
        },
    )
}

fn token_reply(grant: &Grant) -> TokenReply {
    TokenReply {
        access_token: WireSecret::new(grant.access_token.expose_secret().to_owned()),
        token_type: grant.token_type.clone(),
        expires_at_ms: unix_ms(grant.expires_at),
        scope: grant.scope.clone(),
    }
}

/// The agent's shutdown broadcast, as a future that is cheap to poll on every
/// request. Polling a pending `broadcast::Recv` takes the channel's locks,
/// which every connection shares; so the channel is polled once to register,
/// and again only after it has woken this connection.
struct ShutdownSignal<F> {
    recv: Pin<Box<F>>,
    wake: Arc<SignalWake>,
    registered: bool,
}

/// The waker the channel holds: records that it fired, then wakes the task.
#[derive(Default)]
struct SignalWake {
    fired: AtomicBool,
    task: std::sync::Mutex<Option<Waker>>,
}

impl Wake for SignalWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::SeqCst);
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

impl<F: Future> ShutdownSignal<F> {
    fn new(recv: F) -> Self {
        ShutdownSignal {
            recv: Box::pin(recv),
            wake: Arc::new(SignalWake::default()),
            registered: false,
        }
    }
}

impl<F: Future> Future for ShutdownSignal<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        {
            // Forward to the task's current waker (it rarely changes).
            let mut task = self
                .wake
                .task
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        if self.registered && !self.wake.fired.swap(false, Ordering::SeqCst) {
            return Poll::Pending;
        }
        self.registered = true;
        let waker = Waker::from(Arc::clone(&self.wake));
        let mut inner = Context::from_waker(&waker);
        self.recv.as_mut().poll(&mut inner).map(|_| ())
    }
}

/// A token reply serialised once: `"ok":{…}}`, the response after its
/// `{"id":N,` prefix. Keyed by the grant's allocation, which a `Weak` keeps
/// from being reused, so a renewed token can never be mistaken for it.
struct TokenFrame {
    grant: Weak<Grant>,
    tail: Zeroizing<Vec<u8>>,
}

impl TokenFrame {
    /// `None` only if the reply cannot be serialised (then the caller takes
    /// the general path, which reports it).
    fn new(grant: &Arc<Grant>) -> Option<TokenFrame> {
        let outcome = Outcome::Ok(Reply::Token(token_reply(grant)));
        let json = Zeroizing::new(serde_json::to_vec(&outcome).ok()?);
        // `{"ok":{…}}` without its opening brace.
        let tail = Zeroizing::new(json.get(1..)?.to_vec());
        (tail.len() + 32 <= frame::MAX_FRAME).then(|| TokenFrame {
            grant: Arc::downgrade(grant),
            tail,
        })
    }

    fn is_for(&self, grant: &Arc<Grant>) -> bool {
        std::ptr::eq(self.grant.as_ptr(), Arc::as_ptr(grant))
    }

    /// Appends the frame `{"id":ID,"ok":{…}}`, byte for byte what
    /// `frame::encode` makes of the same response.
    fn encode(&self, id: u64, out: &mut Vec<u8>) {
        reserve_wiped(out, frame::HEADER + 32 + self.tail.len());
        let start = out.len();
        out.extend_from_slice(&[0; frame::HEADER]);
        out.extend_from_slice(b"{\"id\":");
        push_decimal(out, id);
        out.push(b',');
        out.extend_from_slice(&self.tail);
        let len = (out.len() - start - frame::HEADER) as u32;
        out[start..start + frame::HEADER].copy_from_slice(&len.to_be_bytes());
    }
}

fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// What is wrong with an `app` or `instance` name from `hello`, if anything
/// ([`message::is_name_char`], [`MAX_NAME_CHARS`]).
fn name_problem(name: &str) -> Option<String> {
    let len = name.chars().count();
    if len > MAX_NAME_CHARS {
        return Some(format!("is {len} characters long"));
    }
    let bad = name.chars().find(|c| !message::is_name_char(*c))?;
    Some(format!(
        "contains the non-printable character {}",
        bad.escape_unicode()
    ))
}

/// Drops the first `n` bytes of `buf`, wiping the bytes the move leaves
/// behind (a request may carry a registration token).
fn consume(buf: &mut Vec<u8>, n: usize) {
    let n = n.min(buf.len());
    let kept = buf.len() - n;
    buf.copy_within(n.., 0);
    buf[kept..].zeroize();
    buf.truncate(kept);
}

/// Makes room for `additional` bytes without leaving a copy behind: where
/// `Vec::reserve` would reallocate and free the old block as it is, the old
/// block is wiped first.
fn reserve_wiped(buf: &mut Vec<u8>, additional: usize) {
    if buf.capacity() - buf.len() >= additional {
        return;
    }
    let wanted = buf
        .len()
        .saturating_add(additional)
        .max(buf.capacity().saturating_mul(2));
    let mut bigger = Vec::with_capacity(wanted);
    bigger.extend_from_slice(buf);
    buf.zeroize();
    *buf = bigger;
}

/// A `Write` target that grows with [`reserve_wiped`] and is wiped on drop.
#[derive(Default)]
struct WipedWriter(Vec<u8>);

impl std::io::Write for WipedWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        reserve_wiped(&mut self.0, bytes.len());
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for WipedWriter {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

enum ReadOutcome {
    Data,
    Closed,
    Stalled,
}

async fn read_some(stream: &mut Stream, buf: &mut Vec<u8>, limit: Option<Duration>) -> ReadOutcome {
    let read = async {
        // Requests are small (a token request is ~40 bytes): idle
        // connections keep a 512-byte buffer, larger frames grow it.
        if buf.capacity() - buf.len() < 256 {
            reserve_wiped(buf, 512);
        }
        stream.read_buf(buf).await
    };
    let result = match limit {
        Some(limit) => match tokio::time::timeout(limit, read).await {
            Ok(r) => r,
            Err(_) => return ReadOutcome::Stalled,
        },
        None => read.await,
    };
    match result {
        Ok(0) | Err(_) => ReadOutcome::Closed,
        Ok(_) => ReadOutcome::Data,
    }
}

/// The next engine event; `None` when the receiver lagged. Pending forever
/// when there are no subscriptions.
async fn next_event(events: Option<&mut broadcast::Receiver<Event>>) -> Option<Event> {
    let Some(events) = events else {
        return std::future::pending().await;
    };
    loop {
        match events.recv().await {
            Ok(e) => return Some(e),
            Err(broadcast::error::RecvError::Lagged(_)) => return None,
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::secret;

    fn grant(token: &str, scope: Option<&str>) -> Arc<Grant> {
        let now = SystemTime::now();
        Arc::new(Grant {
            access_token: secret(token.to_owned()),
            token_type: "Bearer".into(),
            received_at: now,
            expires_at: now + Duration::from_secs(300),
            refresh_token: None,
            refresh_expires_at: None,
            scope: scope.map(str::to_owned),
        })
    }

    #[test]
    fn cached_token_frames_match_the_general_encoder() {
        for (token, scope) in [("abc", None), ("a\"b\\c\u{1}é", Some("read write"))] {
            let g = grant(token, scope);
            let cached = TokenFrame::new(&g).unwrap();
            for id in [0, 1, 9, 10, 12_345, u64::MAX] {
                let mut fast = Vec::new();
                cached.encode(id, &mut fast);
                let mut general = Vec::new();
                frame::encode(
                    &Response {
                        id,
                        outcome: Outcome::Ok(Reply::Token(token_reply(&g))),
                    },
                    &mut general,
                )
                .unwrap();
                assert_eq!(fast, general, "id {id}");
            }
        }
    }

    #[tokio::test]
    async fn the_shutdown_signal_fires_once_sent_and_not_before() {
        let (tx, mut rx) = broadcast::channel::<()>(1);
        let mut signal = ShutdownSignal::new(rx.recv());
        for _ in 0..3 {
            // Polled repeatedly while nothing was sent: pending.
            assert!(
                tokio::time::timeout(Duration::from_millis(10), &mut signal)
                    .await
                    .is_err()
            );
        }
        let send = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            tx.send(()).unwrap();
        };
        tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(&mut signal, send)
        })
        .await
        .expect("woken by the broadcast");
        // A dropped sender (the agent's drain) ends it too.
        let (tx, mut rx) = broadcast::channel::<()>(1);
        let mut signal = ShutdownSignal::new(rx.recv());
        assert!(
            tokio::time::timeout(Duration::from_millis(10), &mut signal)
                .await
                .is_err()
        );
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), signal)
            .await
            .expect("woken by the closed channel");
    }

    #[test]
    fn hello_names_are_printable_and_short() {
        assert_eq!(name_problem("my-app 2.1 (é, 日本)"), None);
        assert_eq!(name_problem(&"x".repeat(MAX_NAME_CHARS)), None);
        let long = name_problem(&"x".repeat(MAX_NAME_CHARS + 1)).unwrap();
        assert!(long.contains("129 characters"), "{long}");
        for bad in [
            "a\nb",
            "a\rb",
            "\u{1b}[31m",
            "a\u{7}",
            "right\u{202e}left",
            "\u{200b}",
        ] {
            let problem = name_problem(bad).unwrap();
            assert!(
                problem.contains("non-printable character \\u{"),
                "{bad:?}: {problem}"
            );
            assert!(!problem.chars().any(char::is_control), "{problem:?}");
        }
    }

    #[test]
    fn consumed_and_regrown_buffers_keep_what_remains() {
        // (What lies past the end cannot be read without unsafe code; this
        // checks that wiping keeps what must be kept.)
        let mut buf = b"SECRET-REGISTRATION-TOKEN|rest".to_vec();
        consume(&mut buf, 26);
        assert_eq!(buf, b"rest");
        consume(&mut buf, 10);
        assert!(buf.is_empty());
        let mut small = Vec::with_capacity(4);
        small.extend_from_slice(b"abcd");
        reserve_wiped(&mut small, 100);
        assert_eq!(small, b"abcd");
        assert!(small.capacity() >= 104);
    }

    #[test]
    fn a_cached_frame_belongs_to_one_grant() {
        let first = grant("one", None);
        let cached = TokenFrame::new(&first).unwrap();
        assert!(cached.is_for(&first));
        assert!(cached.is_for(&Arc::clone(&first)));
        // Same token value, another grant (a re-issue or a renewal): not it.
        assert!(!cached.is_for(&grant("one", None)));
    }

    /// A real client on a real pipe: the agent reads its pid, its token's
    /// user and enabled groups, and its image path. Under Wine (one
    /// account) the client is this process, so the expected values are ours.
    #[cfg(windows)]
    #[tokio::test]
    async fn a_pipe_client_is_identified_by_its_token_and_image() {
        use interprocess::local_socket::tokio::Stream as ClientStream;
        use interprocess::local_socket::traits::tokio::{Listener as _, Stream as _};
        use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
        let name = format!(r"\\.\pipe\regent-test-peer-{}", std::process::id());
        let listener = ListenerOptions::new()
            .name(name.as_str().to_fs_name::<GenericFilePath>().unwrap())
            .create_tokio()
            .unwrap();
        let connect_name = name.clone();
        let client = tokio::spawn(async move {
            let name = connect_name
                .as_str()
                .to_fs_name::<GenericFilePath>()
                .unwrap();
            ClientStream::connect(name).await.unwrap()
        });
        let server = listener.accept().await.unwrap();
        let _client = client.await.unwrap();
        let (peer, _) = peer_of(&server);
        eprintln!("identified: {peer:?}");
        assert_eq!(peer.pid, Some(std::process::id()));
        assert_eq!(
            peer.sid.as_deref(),
            Some(regent_client::win32::own_user().unwrap().as_str())
        );
        // Everyone (S-1-1-0) is enabled in every user's token.
        assert!(
            peer.group_sids.iter().any(|g| g == "S-1-1-0"),
            "{:?}",
            peer.group_sids
        );
        let image = peer.image.clone().unwrap();
        let own = super::super::peer::own_executable().unwrap();
        assert_eq!(
            super::super::peer::windows_path_key(&image.to_string_lossy()),
            super::super::peer::windows_path_key(&own.to_string_lossy()),
        );
        // The very file: its identity matches the running test binary's.
        match peer.lookup_executable(None) {
            super::super::peer::ExeLookup::Found(exe) => {
                assert_eq!(Some(exe.id), super::super::peer::file_id(&own));
            }
            other => panic!("{other:?}"),
        }
    }
}
