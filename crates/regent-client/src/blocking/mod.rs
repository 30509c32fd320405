//! The blocking client: the standard library and `interprocess` only, no async
//! runtime. The C library is built on it.
//!
//! [`Client`] holds one connection behind a mutex, so it can be shared between
//! threads (calls take turns). [`Subscription`] owns a connection of its own.
//!
//! ```no_run
//! use std::time::Duration;
//! use regent_client::{ClientOptions, blocking::Client};
//!
//! # fn main() -> regent_client::Result<()> {
//! let client = Client::connect(ClientOptions::new("editor"))?;
//! let token = client.token(Duration::from_secs(60))?;
//! println!("Authorization: {} {}", token.token_type, token.secret());
//! # Ok(())
//! # }
//! ```

mod conn;
#[cfg(windows)]
mod pipe;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use regent_proto::message::{Op, Outcome, Response, WireSecret};
use secrecy::{ExposeSecret, SecretString};

use self::conn::Connection;
use crate::error::{self, Failure, Resend, Result};
use crate::wire::{self, min_valid_secs};
use crate::{AgentInfo, AgentStatus, ClientOptions, Enrolled, ErrorCode, SubscriptionEvent, Token};

/// A blocking connection to the agent, shared safely between threads.
///
/// Connecting says `hello`. When the agent restarts, the next call reconnects
/// (with `hello`) and resends the request once if it is a read (`token`,
/// `status`, `metrics`); `enroll` and `unenroll` are resent only when the
/// request surely never reached the agent, otherwise the error says so.
pub struct Client {
    socket: PathBuf,
    opts: ClientOptions,
    state: Mutex<State>,
}

struct State {
    conn: Option<Connection>,
    agent: AgentInfo,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("blocking::Client")
            .field("socket", &self.socket)
            .field("app", &self.opts.app)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the agent and says `hello`.
    ///
    /// # Errors
    /// `AGENT_UNREACHABLE` when nothing listens on the socket (the message
    /// names it), `PERMISSION_DENIED` for someone else's socket, `TIMEOUT`
    /// past `connect_timeout`, `UNSUPPORTED_VERSION` when the agent and this
    /// client share no protocol version.
    pub fn connect(opts: ClientOptions) -> Result<Client> {
        let socket = opts.socket_path();
        let conn = Connection::open(&socket, &opts)?;
        Ok(Client {
            socket,
            opts,
            state: Mutex::new(State {
                agent: conn.agent.clone(),
                conn: Some(conn),
            }),
        })
    }

    /// One token on a connection of its own, for a program that asks once
    /// and exits (a CLI, a script, a cron job): `hello` and `token` go out
    /// together in one write, so the call waits for one round trip instead of
    /// connecting, waiting for the `hello` answer and only then asking. The
    /// connection is closed afterwards. With
    /// [`wait_for_instance`](ClientOptions::wait_for_instance) set, a
    /// `NO_FREE_INSTANCE` answer falls back to [`Client::connect`] and
    /// [`Client::token`], which wait for a slot.
    ///
    /// # Errors
    /// As for [`Client::connect`] and [`Client::token`].
    pub fn token_once(opts: ClientOptions, min_valid: Duration) -> Result<Token> {
        let socket = opts.socket_path();
        let op = Op::Token {
            min_valid: min_valid_secs(min_valid),
            scope: None,
        };
        let (mut conn, id) = Connection::open_with(&socket, &opts, op)?;
        let deadline = Instant::now() + opts.request_timeout;
        let response = conn
            .receive(id, Some(deadline))
            .map_err(Failure::into_error)?
            .ok_or_else(|| error::timed_out(&socket, "token", opts.request_timeout))?;
        match wire::token(&socket, response) {
            Err(e) if e.code == ErrorCode::NoFreeInstance && opts.wait_for_instance.is_some() => {
                drop(conn);
                Client::connect(opts)?.token(min_valid)
            }
            other => other,
        }
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The agent that answered the latest `hello`.
    pub fn agent_info(&self) -> AgentInfo {
        self.lock().agent.clone()
    }

    /// A token that stays valid for at least `min_valid` (rounded up to whole
    /// seconds).
    ///
    /// # Errors
    /// The agent's error (`NOT_ENROLLED`, `REVOKED`, `UNAVAILABLE` with
    /// `retry_after`, …), `AGENT_UNREACHABLE`, `TIMEOUT`.
    pub fn token(&self, min_valid: Duration) -> Result<Token> {
        let deadline = self.opts.wait_for_instance.map(|w| Instant::now() + w);
        loop {
            let op = Op::Token {
                min_valid: min_valid_secs(min_valid),
                scope: None,
            };
            let response = self.call(op, Resend::Idempotent)?;
            match wire::token(&self.socket, response) {
                Err(e) if e.code == ErrorCode::NoFreeInstance => match deadline {
                    Some(deadline) if Instant::now() < deadline => {
                        let pause = e.retry_after.unwrap_or(Duration::from_millis(250));
                        let left = deadline.saturating_duration_since(Instant::now());
                        std::thread::sleep(pause.min(left).max(Duration::from_millis(20)));
                    }
                    _ => return Err(e),
                },
                other => return other,
            }
        }
    }

    /// The agent's status document (the shape of `regent status --json`);
    /// [`AgentStatus::health`] says whether its credential works.
    ///
    /// # Errors
    /// As for [`Client::token`].
    pub fn status(&self) -> Result<AgentStatus> {
        let response = self.call(Op::Status {}, Resend::Idempotent)?;
        wire::status(&self.socket, response)
    }

    /// The agent's metrics in Prometheus text format.
    ///
    /// # Errors
    /// As for [`Client::token`].
    pub fn metrics(&self) -> Result<String> {
        let response = self.call(Op::Metrics {}, Resend::Idempotent)?;
        wire::metrics(&self.socket, response)
    }

    /// Enrolls the agent with a registration token or client secret;
    /// `force` replaces a working credential.
    ///
    /// # Errors
    /// The registration-token codes, `ALREADY_ENROLLED`,
    /// `PERMISSION_DENIED` (only the agent's user or root may enroll), and
    /// `AGENT_UNREACHABLE` when the connection broke before the answer — the
    /// enrollment may then have happened: check the status before retrying.
    pub fn enroll(&self, secret: impl Into<SecretString>, force: bool) -> Result<Enrolled> {
        let secret: SecretString = secret.into();
        let op = Op::Enroll {
            secret: WireSecret::new(secret.expose_secret().to_owned()),
            force,
        };
        let response = self.call(op, Resend::OnlyIfNotSent)?;
        wire::enrolled(&self.socket, response)
    }

    /// Makes the agent forget its credential.
    ///
    /// # Errors
    /// `PERMISSION_DENIED`, and `AGENT_UNREACHABLE` as for [`Client::enroll`].
    pub fn unenroll(&self) -> Result<()> {
        let response = self.call(Op::Unenroll {}, Resend::OnlyIfNotSent)?;
        wire::unenrolled(&self.socket, response)
    }

    /// Subscribes, on a connection of its own, to tokens valid for at least
    /// `min_valid` and to state changes. See [`Subscription`].
    ///
    /// # Errors
    /// As for [`Client::connect`], and the agent's refusal.
    pub fn subscribe(&self, min_valid: Duration) -> Result<Subscription> {
        let live = Subscription::open(&self.socket, &self.opts, min_valid)?;
        Ok(Subscription {
            socket: self.socket.clone(),
            opts: self.opts.clone(),
            min_valid,
            live: Some(live),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => {
                // A panic mid-call may have left half a frame on the stream.
                let mut guard = poisoned.into_inner();
                guard.conn = None;
                self.state.clear_poison();
                guard
            }
        }
    }

    fn call(&self, op: Op, resend: Resend) -> Result<Response> {
        let name = op.name();
        let deadline = Instant::now() + self.opts.request_timeout;
        let mut state = self.lock();
        let mut fresh = false;
        loop {
            let conn = match state.conn.take() {
                Some(conn) => conn,
                None => {
                    let conn = Connection::open(&self.socket, &self.opts)?;
                    state.agent = conn.agent.clone();
                    fresh = true;
                    conn
                }
            };
            let conn = state.conn.insert(conn);
            let result = conn
                .send(op.clone())
                .and_then(|id| conn.receive(id, Some(deadline)));
            if conn.is_broken() {
                state.conn = None;
            }
            let failure = match result {
                Ok(Some(response)) => return Ok(response),
                Ok(None) => {
                    return Err(error::timed_out(
                        &self.socket,
                        name,
                        self.opts.request_timeout,
                    ));
                }
                Err(failure) => failure,
            };
            let again = !fresh
                && Instant::now() < deadline
                && match failure {
                    Failure::NotSent(_) => true,
                    Failure::Lost(_) => resend == Resend::Idempotent,
                    Failure::Other(_) => false,
                };
            if again {
                tracing::debug!(op = name, "connection to the agent broke; reconnecting");
                state.conn = None;
                continue;
            }
            return Err(match failure {
                Failure::Lost(_) if resend == Resend::OnlyIfNotSent => {
                    error::outcome_unknown(&self.socket, name)
                }
                other => other.into_error(),
            });
        }
    }
}

/// Tokens and state changes pushed by the agent, on a connection of its own.
///
/// The agent sends a token right after subscribing, a fresh one each time
/// it renews, and state changes such as `revoked`.
///
/// If the connection breaks, [`Subscription::next`] returns
/// `AGENT_UNREACHABLE` once; the following call reconnects and subscribes
/// again (failing fast with `AGENT_UNREACHABLE` while the agent is down), and
/// the agent then pushes a current token. Dropping the subscription closes
/// its connection.
pub struct Subscription {
    socket: PathBuf,
    opts: ClientOptions,
    min_valid: Duration,
    live: Option<(Connection, u64)>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("blocking::Subscription")
            .field("socket", &self.socket)
            .field("min_valid", &self.min_valid)
            .field("connected", &self.live.is_some())
            .finish_non_exhaustive()
    }
}

impl Subscription {
    fn open(socket: &Path, opts: &ClientOptions, min_valid: Duration) -> Result<(Connection, u64)> {
        let mut conn = Connection::open(socket, opts)?;
        let deadline = Instant::now() + opts.request_timeout;
        let op = Op::Subscribe {
            min_valid: min_valid_secs(min_valid),
        };
        let id = conn.send(op).map_err(Failure::into_error)?;
        let response = conn
            .receive(id, Some(deadline))
            .map_err(Failure::into_error)?
            .ok_or_else(|| error::timed_out(socket, "subscribe", opts.request_timeout))?;
        wire::subscribed(socket, response)?;
        Ok((conn, id))
    }

    /// The next event; `Ok(None)` when `timeout` passes first (`None` waits
    /// for ever). Resubscribing after a break is bounded by the client's
    /// `connect_timeout` and `request_timeout`, not by `timeout`.
    ///
    /// # Errors
    /// `AGENT_UNREACHABLE` when the connection broke (call again to
    /// resubscribe), an error the agent ended the subscription with, and the
    /// errors of [`Client::subscribe`] when resubscribing.
    pub fn next(&mut self, timeout: Option<Duration>) -> Result<Option<SubscriptionEvent>> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        if timeout.is_some() && deadline.is_none() {
            return self.next(None);
        }
        loop {
            let (conn, id) = match &mut self.live {
                Some(live) => live,
                None => self
                    .live
                    .insert(Self::open(&self.socket, &self.opts, self.min_valid)?),
            };
            let received = conn.receive(*id, deadline);
            if conn.is_broken() {
                self.live = None;
            }
            match received {
                Ok(None) => return Ok(None),
                Ok(Some(Response { outcome, .. })) => match outcome {
                    Outcome::Event(event) => return Ok(Some(SubscriptionEvent::from_event(event))),
                    Outcome::Error(wire) => {
                        // The agent ended the subscription.
                        self.live = None;
                        return Err(wire.into());
                    }
                    Outcome::Ok(_) => {}
                },
                Err(failure) => {
                    self.live = None;
                    return Err(failure.into_error());
                }
            }
        }
    }
}

/// A token cache for apps that need a token on every request.
///
/// [`TokenSource::token`] returns the cached token while it stays valid for
/// at least `min_valid` by the wall clock, and asks the agent otherwise;
/// concurrent callers share one request.
///
/// ```no_run
/// use std::time::Duration;
/// use regent_client::{ClientOptions, blocking::{Client, TokenSource}};
///
/// # fn main() -> regent_client::Result<()> {
/// let source = TokenSource::new(Client::connect(ClientOptions::new("editor"))?, Duration::from_secs(60));
/// for _ in 0..1000 {
///     let token = source.token()?; // one agent round trip, then cached
///     # let _ = token;
/// }
/// # Ok(())
/// # }
/// ```
pub struct TokenSource {
    client: Arc<Client>,
    min_valid: Duration,
    cached: Mutex<Option<Token>>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("blocking::TokenSource")
            .field("client", &self.client)
            .field("min_valid", &self.min_valid)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// A cache over `client` (a [`Client`] or an `Arc<Client>` shared with
    /// other code) handing out tokens valid for at least `min_valid`.
    pub fn new(client: impl Into<Arc<Client>>, min_valid: Duration) -> Self {
        TokenSource {
            client: client.into(),
            min_valid,
            cached: Mutex::new(None),
        }
    }

    /// The client underneath.
    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }

    /// The validity every token handed out has left.
    pub fn min_valid(&self) -> Duration {
        self.min_valid
    }

    /// A token valid for at least `min_valid`: cached, or fresh from the agent.
    ///
    /// # Errors
    /// As for [`Client::token`], when the cache cannot serve.
    pub fn token(&self) -> Result<Token> {
        // Held across the request: callers arriving meanwhile wait for its token.
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(token) = cached.as_ref().filter(|t| t.remaining() >= self.min_valid) {
            return Ok(token.clone());
        }
        let token = self.client.token(self.min_valid)?;
        *cached = Some(token.clone());
        Ok(token)
    }

    /// Drops the cached token, e.g. after a server rejected it.
    pub fn invalidate(&self) {
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}
