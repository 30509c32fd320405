//! The async client (tokio): one connection per [`Client`] (and its clones),
//! shared by every call and subscription, with requests pipelined by id.

mod conn;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use regent_proto::message::{LoginGrant, Op, Outcome, Response, WireSecret};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::mpsc;

use self::conn::{Conn, Delivery, RouteGuard};
use crate::error::{self, Error, Failure, Resend, Result};
use crate::wire::{self, min_valid_secs};
use crate::{
    AgentInfo, AgentStatus, BrowserLogin, ClientOptions, DeviceLogin, Enrolled, ErrorCode,
    LoggedIn, LoginPoll, SubscriptionEvent, Token,
};

/// A sign-in that cannot be pending (only a device poll can).
fn signed_in(poll: LoginPoll, what: &str) -> Result<LoggedIn> {
    match poll {
        LoginPoll::LoggedIn(done) => Ok(done),
        LoginPoll::Pending { .. } => Err(Error::new(
            ErrorCode::Internal,
            format!("the agent answered {what} as if it were a device poll"),
        )),
    }
}

fn wire_secret(secret: &SecretString) -> WireSecret {
    WireSecret::new(secret.expose_secret().to_owned())
}

/// An async connection to the agent. Cheap to clone; clones share the
/// connection, and any number of tasks may call at once (requests are
/// pipelined and answers matched by id).
///
/// Connecting says `hello`. When the agent restarts, the next call
/// reconnects (with `hello`) and resends the request once if it is a read
/// (`token`, `status`, `metrics`); `enroll` and `unenroll` are resent only
/// when the request surely never reached the agent, otherwise the error says so.
///
/// Needs a tokio runtime with the IO and time drivers enabled.
///
/// ```no_run
/// use std::time::Duration;
/// use regent_client::{Client, ClientOptions};
///
/// # async fn run() -> regent_client::Result<()> {
/// let client = Client::connect(ClientOptions::new("editor")).await?;
/// let token = client.token(Duration::from_secs(60)).await?;
/// println!("Authorization: {} {}", token.token_type, token.secret());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    socket: PathBuf,
    opts: ClientOptions,
    ids: Arc<AtomicU64>,
    current: Mutex<Current>,
    /// Held while connecting, so concurrent callers share one reconnection.
    connecting: tokio::sync::Mutex<()>,
}

struct Current {
    conn: Option<Arc<Conn>>,
    agent: AgentInfo,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("socket", &self.inner.socket)
            .field("app", &self.inner.opts.app)
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
    pub async fn connect(opts: ClientOptions) -> Result<Client> {
        let socket = opts.socket_path();
        let ids = Arc::new(AtomicU64::new(1));
        let conn = Conn::open(&socket, &opts, Arc::clone(&ids)).await?;
        Ok(Client {
            inner: Arc::new(Inner {
                socket,
                opts,
                ids,
                current: Mutex::new(Current {
                    agent: conn.agent.clone(),
                    conn: Some(Arc::new(conn)),
                }),
                connecting: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.inner.socket
    }

    /// The agent that answered the latest `hello`.
    pub fn agent_info(&self) -> AgentInfo {
        self.current().agent.clone()
    }

    /// A token that stays valid for at least `min_valid` (rounded up to whole
    /// seconds).
    ///
    /// # Errors
    /// The agent's error (`NOT_ENROLLED`, `REVOKED`, `UNAVAILABLE` with
    /// `retry_after`, …), `AGENT_UNREACHABLE`, `TIMEOUT`.
    pub async fn token(&self, min_valid: Duration) -> Result<Token> {
        let deadline = self
            .inner
            .opts
            .wait_for_instance
            .map(|w| Instant::now() + w);
        loop {
            let op = Op::Token {
                min_valid: min_valid_secs(min_valid),
                scope: None,
            };
            let response = self.call(op, Resend::Idempotent).await?;
            match wire::token(&self.inner.socket, response) {
                Err(e) if e.code == ErrorCode::NoFreeInstance => match deadline {
                    Some(deadline) if Instant::now() < deadline => {
                        let pause = e.retry_after.unwrap_or(Duration::from_millis(250));
                        let left = deadline.saturating_duration_since(Instant::now());
                        tokio::time::sleep(pause.min(left).max(Duration::from_millis(20))).await;
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
    pub async fn status(&self) -> Result<AgentStatus> {
        let response = self.call(Op::Status {}, Resend::Idempotent).await?;
        wire::status(&self.inner.socket, response)
    }

    /// The agent's metrics in Prometheus text format.
    ///
    /// # Errors
    /// As for [`Client::token`].
    pub async fn metrics(&self) -> Result<String> {
        let response = self.call(Op::Metrics {}, Resend::Idempotent).await?;
        wire::metrics(&self.inner.socket, response)
    }

    /// Enrolls the agent with a registration token or client secret;
    /// `force` replaces a working credential.
    ///
    /// # Errors
    /// The registration-token codes, `ALREADY_ENROLLED`,
    /// `PERMISSION_DENIED` (only the agent's user or root may enroll), and
    /// `AGENT_UNREACHABLE` when the connection broke before the answer — the
    /// enrollment may then have happened: check the status before retrying.
    pub async fn enroll(&self, secret: impl Into<SecretString>, force: bool) -> Result<Enrolled> {
        let secret: SecretString = secret.into();
        let op = Op::Enroll {
            secret: WireSecret::new(secret.expose_secret().to_owned()),
            force,
        };
        let response = self.call(op, Resend::OnlyIfNotSent).await?;
        wire::enrolled(&self.inner.socket, response)
    }

    /// Makes the agent forget its credential.
    ///
    /// # Errors
    /// `PERMISSION_DENIED`, and `AGENT_UNREACHABLE` as for [`Client::enroll`].
    pub async fn unenroll(&self) -> Result<()> {
        let response = self.call(Op::Unenroll {}, Resend::OnlyIfNotSent).await?;
        wire::unenrolled(&self.inner.socket, response)
    }

    /// Where a browser sign-in goes (`regent login`): the provider's
    /// authorization endpoint, client id and scope from the agent's
    /// configuration. The caller adds its loopback `redirect_uri`, `state`
    /// and the PKCE challenge, and hands the redirect's code to
    /// [`Client::login_with_code`].
    ///
    /// # Errors
    /// `CONFIG` when the agent's profile or server has no browser sign-in;
    /// `PERMISSION_DENIED` (the agent's user or root only).
    pub async fn login_browser(&self) -> Result<BrowserLogin> {
        let op = Op::LoginStart {
            device: false,
            client_secret: None,
        };
        let response = self.call(op, Resend::Idempotent).await?;
        match wire::login_started(&self.inner.socket, response)? {
            Ok(browser) => Ok(browser),
            Err(_) => Err(Error::new(
                ErrorCode::Internal,
                "the agent answered a browser sign-in with a device authorization",
            )),
        }
    }

    /// Starts a device sign-in (RFC 8628); `client_secret` for a
    /// confidential client. Show the code and page, then poll with
    /// [`Client::poll_device_login`].
    ///
    /// # Errors
    /// As for [`Client::login_browser`], and `CLIENT_CREDENTIALS_INVALID`.
    pub async fn login_device(&self, client_secret: Option<&SecretString>) -> Result<DeviceLogin> {
        let op = Op::LoginStart {
            device: true,
            client_secret: client_secret.map(|s| WireSecret::new(s.expose_secret().to_owned())),
        };
        let response = self.call(op, Resend::OnlyIfNotSent).await?;
        match wire::login_started(&self.inner.socket, response)? {
            Err(device) => Ok(device),
            Ok(_) => Err(Error::new(
                ErrorCode::Internal,
                "the agent answered a device sign-in with a browser one",
            )),
        }
    }

    /// Completes a browser sign-in: the agent exchanges the code (with the
    /// PKCE verifier and the redirect URI it was sent to) and serves tokens.
    /// `force` replaces a working device enrollment.
    ///
    /// # Errors
    /// `SIGN_IN_FAILED` when the server refuses the code, `ALREADY_ENROLLED`,
    /// `CLIENT_CREDENTIALS_INVALID`, `PERMISSION_DENIED`.
    pub async fn login_with_code(
        &self,
        code: &SecretString,
        code_verifier: &SecretString,
        redirect_uri: &str,
        client_secret: Option<&SecretString>,
        force: bool,
    ) -> Result<LoggedIn> {
        let grant = LoginGrant::AuthorizationCode {
            code: wire_secret(code),
            code_verifier: wire_secret(code_verifier),
            redirect_uri: redirect_uri.to_owned(),
        };
        let poll = self.login(grant, client_secret, force).await?;
        signed_in(poll, "a code exchange")
    }

    /// Polls a device sign-in once.
    ///
    /// # Errors
    /// `SIGN_IN_FAILED` when the person denied it or the code expired; as
    /// for [`Client::login_with_code`].
    pub async fn poll_device_login(
        &self,
        device: &DeviceLogin,
        client_secret: Option<&SecretString>,
        force: bool,
    ) -> Result<LoginPoll> {
        let grant = LoginGrant::DeviceCode {
            device_code: wire_secret(&device.device_code),
        };
        self.login(grant, client_secret, force).await
    }

    /// Adopts an existing refresh token (`regent enroll --refresh-token`):
    /// the agent proves it with one refresh, then keeps it fresh.
    ///
    /// # Errors
    /// `REVOKED` when the server refuses the token; as for
    /// [`Client::login_with_code`].
    pub async fn adopt_refresh_token(
        &self,
        refresh_token: &SecretString,
        client_secret: Option<&SecretString>,
        force: bool,
    ) -> Result<LoggedIn> {
        let grant = LoginGrant::RefreshToken {
            refresh_token: wire_secret(refresh_token),
        };
        let poll = self.login(grant, client_secret, force).await?;
        signed_in(poll, "a refresh token")
    }

    async fn login(
        &self,
        grant: LoginGrant,
        client_secret: Option<&SecretString>,
        force: bool,
    ) -> Result<LoginPoll> {
        let op = Op::Login {
            grant,
            client_secret: client_secret.map(wire_secret),
            force,
        };
        let response = self.call(op, Resend::OnlyIfNotSent).await?;
        wire::logged_in(&self.inner.socket, response)
    }

    /// Signs the user out: the agent revokes the refresh token at the
    /// server (when it offers revocation) and forgets it. Returns whether
    /// the server revoked it.
    ///
    /// # Errors
    /// `NOT_ENROLLED` when nobody is signed in; `PERMISSION_DENIED`.
    pub async fn logout(&self) -> Result<bool> {
        let response = self.call(Op::Logout {}, Resend::OnlyIfNotSent).await?;
        wire::logged_out(&self.inner.socket, response)
    }

    /// Subscribes to tokens valid for at least `min_valid` and to state
    /// changes, on this client's connection. See [`Subscription`].
    ///
    /// # Errors
    /// `AGENT_UNREACHABLE`, `TIMEOUT`, and the agent's refusal.
    pub async fn subscribe(&self, min_valid: Duration) -> Result<Subscription> {
        let live = self.open_subscription(min_valid).await?;
        Ok(Subscription {
            client: self.clone(),
            min_valid,
            live: Some(live),
        })
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Current> {
        // Nothing panics while holding the lock; the state is consistent.
        self.inner.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live connection, or a new one; `true` when it was opened for this call.
    async fn connection(&self) -> Result<(Arc<Conn>, bool)> {
        let live = |client: &Client| {
            client
                .current()
                .conn
                .as_ref()
                .filter(|c| !c.is_closed())
                .map(Arc::clone)
        };
        if let Some(conn) = live(self) {
            return Ok((conn, false));
        }
        let _connecting = self.inner.connecting.lock().await;
        if let Some(conn) = live(self) {
            return Ok((conn, false));
        }
        tracing::debug!(socket = %self.inner.socket.display(), "connecting to the agent");
        let conn = Arc::new(
            Conn::open(
                &self.inner.socket,
                &self.inner.opts,
                Arc::clone(&self.inner.ids),
            )
            .await?,
        );
        let mut current = self.current();
        current.agent = conn.agent.clone();
        current.conn = Some(Arc::clone(&conn));
        Ok((conn, true))
    }

    async fn call(&self, op: Op, resend: Resend) -> Result<Response> {
        let name = op.name();
        let limit = self.inner.opts.request_timeout;
        tokio::time::timeout(limit, self.call_once_or_twice(op, resend))
            .await
            .unwrap_or_else(|_| Err(error::timed_out(&self.inner.socket, name, limit)))
    }

    async fn call_once_or_twice(&self, op: Op, resend: Resend) -> Result<Response> {
        let name = op.name();
        let (conn, fresh) = self.connection().await?;
        let failure = match conn.call(op.clone()).await {
            Ok(response) => return Ok(response),
            Err(failure) => failure,
        };
        let again = !fresh
            && match failure {
                Failure::NotSent(_) => true,
                Failure::Lost(_) => resend == Resend::Idempotent,
                Failure::Other(_) => false,
            };
        if !again {
            return Err(match failure {
                Failure::Lost(_) if resend == Resend::OnlyIfNotSent => {
                    error::outcome_unknown(&self.inner.socket, name)
                }
                other => other.into_error(),
            });
        }
        tracing::debug!(op = name, "connection to the agent broke; reconnecting");
        let (conn, _) = self.connection().await?;
        conn.call(op).await.map_err(|failure| match failure {
            Failure::Lost(_) if resend == Resend::OnlyIfNotSent => {
                error::outcome_unknown(&self.inner.socket, name)
            }
            other => other.into_error(),
        })
    }

    async fn open_subscription(&self, min_valid: Duration) -> Result<Live> {
        let limit = self.inner.opts.request_timeout;
        let attempt = async {
            let (conn, fresh) = self.connection().await?;
            match self.subscribe_on(conn, min_valid).await {
                Err(Failure::NotSent(_) | Failure::Lost(_)) if !fresh => {
                    let (conn, _) = self.connection().await?;
                    self.subscribe_on(conn, min_valid)
                        .await
                        .map_err(Failure::into_error)
                }
                other => other.map_err(Failure::into_error),
            }
        };
        tokio::time::timeout(limit, attempt)
            .await
            .unwrap_or_else(|_| Err(error::timed_out(&self.inner.socket, "subscribe", limit)))
    }

    async fn subscribe_on(&self, conn: Arc<Conn>, min_valid: Duration) -> Result<Live, Failure> {
        let op = Op::Subscribe {
            min_valid: min_valid_secs(min_valid),
        };
        let (route, mut events) = conn.subscribe(op).await?;
        match events.recv().await {
            Some(Ok(response)) => {
                if let Err(e) = wire::subscribed(&self.inner.socket, response) {
                    route.refused();
                    return Err(Failure::Other(e));
                }
                Ok(Live {
                    _conn: conn,
                    events,
                    _route: route,
                })
            }
            Some(Err(closed)) => Err(closed.failure()),
            None => Err(Failure::Lost(error::connection_lost(
                &self.inner.socket,
                &"the connection closed before the agent answered `subscribe`",
            ))),
        }
    }
}

/// Tokens and state changes pushed by the agent.
///
/// The agent sends a token right after subscribing, a fresh one each time it
/// renews, and state changes such as `revoked`. The subscription shares its
/// client's connection.
///
/// If the connection breaks, [`Subscription::next`] returns
/// `AGENT_UNREACHABLE` once, so the app knows events may have been missed;
/// the following call reconnects and subscribes again (failing fast with
/// `AGENT_UNREACHABLE` while the agent is down), and the agent then pushes a
/// current token. Dropping the subscription unsubscribes.
///
/// ```no_run
/// use std::time::Duration;
/// use regent_client::{Client, ClientOptions, SubscriptionEvent};
///
/// # async fn run() -> regent_client::Result<()> {
/// let client = Client::connect(ClientOptions::new("editor")).await?;
/// let mut tokens = client.subscribe(Duration::from_secs(300)).await?;
/// loop {
///     match tokens.next().await {
///         Ok(SubscriptionEvent::Token(token)) => { /* install it */ let _ = token; }
///         Ok(SubscriptionEvent::State { state, .. }) => println!("agent is {state}"),
///         Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_secs(1)).await,
///         Err(e) => return Err(e),
///     }
/// }
/// # }
/// ```
pub struct Subscription {
    client: Client,
    min_valid: Duration,
    live: Option<Live>,
}

struct Live {
    _conn: Arc<Conn>,
    events: mpsc::UnboundedReceiver<Delivery>,
    /// Unsubscribes when dropped.
    _route: RouteGuard,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("client", &self.client)
            .field("min_valid", &self.min_valid)
            .field("connected", &self.live.is_some())
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The next event. Cancel-safe while subscribed: no event is lost if the
    /// future is dropped (e.g. in `select!`).
    ///
    /// # Errors
    /// `AGENT_UNREACHABLE` when the connection broke (call again to
    /// resubscribe), an error the agent ended the subscription with, and the
    /// errors of [`Client::subscribe`] when resubscribing.
    pub async fn next(&mut self) -> Result<SubscriptionEvent> {
        loop {
            let live = match &mut self.live {
                Some(live) => live,
                None => self
                    .live
                    .insert(self.client.open_subscription(self.min_valid).await?),
            };
            match live.events.recv().await {
                Some(Ok(Response { outcome, .. })) => match outcome {
                    Outcome::Event(event) => return Ok(SubscriptionEvent::from_event(event)),
                    Outcome::Error(wire) => {
                        // The agent ended the subscription.
                        self.live = None;
                        return Err(wire.into());
                    }
                    Outcome::Ok(_) => {}
                },
                Some(Err(closed)) => {
                    self.live = None;
                    return Err(closed.error);
                }
                None => {
                    self.live = None;
                    return Err(error::connection_lost(
                        &self.client.inner.socket,
                        &"the connection closed",
                    ));
                }
            }
        }
    }
}
