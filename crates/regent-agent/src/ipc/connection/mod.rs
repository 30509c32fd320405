//! One client connection: read frames, answer requests in order, push
//! subscription events. One bad client never affects another: every failure
//! here ends this connection only.

mod admission;
mod audit;
mod shutdown;
mod subscriptions;
mod token_frame;
mod wiped;

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
    self, BadRequest, Event as WireEvent, LoginGrant, MAX_NAME_CHARS, Op, Outcome, Reply, Request,
    Response, TokenReply, WireError, WireSecret,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, broadcast};
use tracing::Level;
use zeroize::{Zeroize, Zeroizing};

pub(crate) use self::admission::{Admission, admit, refuse};
use self::admission::{PeerPidfd, decide};
pub use self::audit::AUDIT_TARGET;
use self::audit::audit;
use self::shutdown::ShutdownSignal;
use self::subscriptions::{Subscription, next_event};
use self::token_frame::{TokenFrame, token_reply};
use self::wiped::{ReadOutcome, WipedWriter, consume, read_some, reserve_wiped};
use super::Shared;
use super::peer::{Access, Admitted, Peer, Refusal};
use crate::agent::LoginOutcome;
use crate::engine::{DemandGuard, Event, SlotState};
use crate::error::Error;
use crate::grant::Grant;
use crate::lease::{Holder, Lease};
use crate::secret::{ExposeSecret, SecretString};
use crate::upstream::SignInGrant;

struct Connection<'a> {
    stream: wiped::ConnStream,
    shared: &'a Shared,
    peer: Peer,
    /// The peer's process, pinned when it connected (Linux ≥ 6.5), for
    /// deciding again after a policy change.
    pidfd: Option<PeerPidfd>,
    /// A pidfd was asked for at connect (the policy checked executables).
    pinned_for_executables: bool,
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
        pinned_for_executables,
        admitted,
        generation,
    } = admission;
    // Audit lines name the program that was checked; without a list, the
    // one /proc names now, read once.
    let exe = admitted.exe.or_else(|| peer.executable());
    let mut conn = Connection {
        stream: wiped::ConnStream::from(stream),
        shared,
        peer,
        pidfd,
        pinned_for_executables,
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
                if !self.allow_admin(id, "enroll") {
                    return;
                }
                let value = SecretString::from(secret.expose().to_owned());
                drop(secret);
                let options = crate::agent::EnrollOptions { force };
                match self.shared.agent.enroll(value, options).await {
                    Ok(enrolled) => {
                        audit!(
                            self,
                            Level::INFO,
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
                        audit!(self, Level::WARN, code = %e.code, "enrollment failed");
                        self.reply_error(id, e);
                    }
                }
            }
            Op::LoginStart {
                device,
                client_secret,
            } => {
                if !self.allow_admin(id, "login") {
                    return;
                }
                let client_secret =
                    client_secret.map(|s| SecretString::from(s.expose().to_owned()));
                let reply = if device {
                    self.shared
                        .agent
                        .login_device(client_secret.as_ref())
                        .await
                        .map(|d| Reply::LoginDevice {
                            device_code: WireSecret::new(d.device_code.expose_secret().to_owned()),
                            user_code: d.user_code,
                            verification_uri: d.verification_uri,
                            verification_uri_complete: d.verification_uri_complete,
                            expires_in: d.expires_in.as_secs(),
                            interval: d.interval.as_secs(),
                        })
                } else {
                    self.shared
                        .agent
                        .login_browser()
                        .await
                        .map(|b| Reply::LoginBrowser {
                            authorization_endpoint: b.authorization_endpoint.to_string(),
                            client_id: b.client_id,
                            scope: b.scope,
                        })
                };
                match reply {
                    Ok(reply) => self.reply(id, reply),
                    Err(e) => {
                        audit!(self, Level::WARN, code = %e.code, "sign-in could not start");
                        self.reply_error(id, e);
                    }
                }
            }
            Op::Login {
                grant,
                client_secret,
                force,
            } => {
                if !self.allow_admin(id, "login") {
                    return;
                }
                let owned = |s: WireSecret| SecretString::from(s.expose().to_owned());
                let grant = match grant {
                    LoginGrant::AuthorizationCode {
                        code,
                        code_verifier,
                        redirect_uri,
                    } => SignInGrant::AuthorizationCode {
                        code: owned(code),
                        code_verifier: owned(code_verifier),
                        redirect_uri,
                    },
                    LoginGrant::DeviceCode { device_code } => SignInGrant::DeviceCode {
                        device_code: owned(device_code),
                    },
                    LoginGrant::RefreshToken { refresh_token } => SignInGrant::RefreshToken {
                        refresh_token: owned(refresh_token),
                    },
                };
                match self
                    .shared
                    .agent
                    .login(grant, client_secret.map(owned), force)
                    .await
                {
                    Ok(LoginOutcome::Pending { slow_down }) => {
                        self.reply(id, Reply::LoginPending { slow_down });
                    }
                    Ok(LoginOutcome::LoggedIn(done)) => {
                        audit!(
                            self,
                            Level::INFO,
                            user = %done.user.as_ref().map(|u| crate::secret::short_hash(&u.sub)).unwrap_or_default(),
                            forced = force,
                            "signed in"
                        );
                        self.reply(
                            id,
                            Reply::LoggedIn {
                                user: done.user,
                                scope: done.scope,
                                expires_at_ms: unix_ms(done.expires_at),
                            },
                        );
                    }
                    Err(e) => {
                        audit!(self, Level::WARN, code = %e.code, "sign-in failed");
                        self.reply_error(id, e);
                    }
                }
            }
            Op::Logout {} => {
                if !self.allow_admin(id, "logout") {
                    return;
                }
                match self.shared.agent.logout().await {
                    Ok(revoked) => {
                        audit!(self, Level::INFO, revoked, "signed out");
                        self.reply(id, Reply::LoggedOut { revoked });
                    }
                    Err(e) => self.reply_error(id, e),
                }
            }
            Op::Unenroll {} => {
                if !self.allow_admin(id, "unenroll") {
                    return;
                }
                match self.shared.agent.unenroll().await {
                    Ok(()) => {
                        audit!(self, Level::INFO, "unenrolled");
                        self.reply(id, Reply::Unenrolled {});
                    }
                    Err(e) => self.reply_error(id, e),
                }
            }
        }
    }

    /// Whether the peer may run admin-only `op`; refuses it (audited) if not.
    fn allow_admin(&mut self, id: u64, op: &str) -> bool {
        if self.access.administers() {
            return true;
        }
        audit!(
            self,
            Level::WARN,
            op,
            "admin-only request refused: not the agent's user or root"
        );
        self.reply_error(id, admin_only(op));
        false
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
        self.instance = instance;
        self.app = Some(app);
        // `debug`: the first token handed to this connection is an `info`
        // line naming the same peer, so an app that connects per call (a
        // `regent token` process each time) writes one line per call, not two.
        audit!(
            self,
            Level::DEBUG,
            instance = self.instance.as_deref().unwrap_or(""),
            "client connected"
        );
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
        audit!(
            self,
            Level::WARN,
            op,
            "token request refused: the regent CLI is not in [ipc] allow_executables"
        );
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
    /// The policy no longer serves this connection as it stands: no more
    /// pushed events, and it closes once its answer is sent.
    fn close_after_reload(&mut self) {
        self.closing = true;
        self.subscriptions.clear();
        self.events = None;
    }

    fn recheck_policy(&mut self) -> Result<(), Error> {
        if self.shared.settings.policy.generation() == self.policy_generation {
            return Ok(());
        }
        if cfg!(target_os = "linux")
            && !self.pinned_for_executables
            && self.shared.settings.policy.checks_executables()
        {
            // Connected while no program was checked, so its process was not
            // pinned (one descriptor a connection): its program cannot be
            // checked without the pid-reuse race the pin exists to close.
            // Ask it to reconnect, to be checked like any new connection.
            self.close_after_reload();
            audit!(
                self,
                Level::INFO,
                "connection closed after a policy reload: [ipc] allow_executables is now set; the client is asked to reconnect"
            );
            return Err(Error::new(
                ErrorCode::Unavailable,
                "the agent now checks programs ([ipc] allow_executables was set by a reload); reconnect to be checked",
            )
            .with_retry_after(Duration::ZERO));
        }
        let (generation, decided) = decide(self.shared, &self.peer, self.pidfd.as_ref());
        match decided {
            Ok(admitted) => {
                self.policy_generation = generation;
                if admitted.access != self.access {
                    audit!(self, Level::INFO, access = ?admitted.access, "access changed by a policy reload");
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
                self.close_after_reload();
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
                    audit!(self, Level::INFO, slot = l.slot(), "instance slot leased");
                }
                self.lease = lease;
                self.leased = true;
                Ok(())
            }
            Err(e) => {
                audit!(self, Level::INFO, "no free instance slot");
                Err(e)
            }
        }
    }

    /// One audit line per handout: `info` for the first handout of a token
    /// to this connection, `debug` for repeats (see [`AUDIT_TARGET`]).
    fn audit_handout(&mut self, grant: &Grant, via: &'static str, min_valid: Duration) {
        let expires_at = unix_ms(grant.expires_at) / 1000;
        let scope = grant.scope.as_deref().unwrap_or("");
        if self.audited == Some(grant.expires_at) {
            audit!(self, Level::DEBUG, slot = self.slot, token_type = %grant.token_type, scope, expires_at, min_valid_s = min_valid.as_secs(), via, "token handed out again");
        } else {
            self.audited = Some(grant.expires_at);
            audit!(self, Level::INFO, slot = self.slot, token_type = %grant.token_type, scope, expires_at, min_valid_s = min_valid.as_secs(), via, "token handed out");
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

#[cfg(test)]
mod tests;
