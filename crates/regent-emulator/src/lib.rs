//! `regent-emulator`: a real local license server (axum on loopback) with the
//! Sentinel EMS and Reltio-style OAuth2 semantics regent is built against, an
//! admin API shaped like the vendors', fault injection and counters.
//! The HTTP contract is documented in `docs/emulator.md`.
//!
//! Module map:
//! - `config` — start-up settings ([`EmulatorConfig`], [`RateLimit`]).
//! - `state` — the in-memory store behind one mutex; realm sessions and bearer tokens.
//! - `sentinel` — `idpConfigurations` and registration-token redemption (replay, counts).
//! - `sentinel_admin` — registration-token and auth-token admin routes.
//! - `oidc` — the realm token endpoint: refresh (rotation, reuse detection), password grant.
//! - `oauth2` — Reltio-style `/oauth/token`: re-issue, multi-token cap, refresh.
//! - `oauth2_admin` — `/oauth/clients`, `/oauth/customers`, multitokens, revoketokens.
//! - `signin` — users: the authorization endpoint (login form, PKCE), device
//!   authorization and its page, the code and device grants, revocation, userinfo.
//! - `control` — `/_emulator/*`: counters, faults, realm settings, rate limit, introspect.
//! - `routes` — route table, route names, the gate middleware (key, faults, rate limit, counts).
//! - `faults`, `ratelimit`, `counters` — the state those controls change.
//! - `net` — the listener whose connections can be dropped on purpose.
//! - `error`, `extract` — RFC 6749 JSON errors and extractors that use them.
//! - `clock`, `secret` — wall-clock expiries and unguessable values.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let emulator = regent_emulator::Emulator::start(Default::default()).await?;
//! println!("license server at {} (admin key {})", emulator.url(), emulator.admin_key());
//! emulator.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

mod clock;
mod config;
mod control;
mod counters;
mod error;
mod extract;
mod faults;
mod net;
mod oauth2;
mod oauth2_admin;
mod oidc;
mod ratelimit;
mod records;
mod route;
mod routes;
mod secret;
mod sentinel;
mod sentinel_admin;
mod signin;
mod state;

pub use config::{EmulatorConfig, RateLimit};
pub use records::UserSpec;
pub use signin::login_form_fields;

/// Largest request body accepted, in bytes; larger bodies get 413 `invalid_request`.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Serves the emulator on `listener` until `shutdown` resolves, then shuts
/// down gracefully (in-flight requests finish). The CLI and
/// [`Emulator::start`] both use this.
///
/// Absolute URLs in responses (`tokenEndpoint`, `issuer`) are built from the
/// listener's address; an unspecified address (`0.0.0.0`) is reported as
/// loopback.
///
/// # Errors
///
/// `InvalidInput` if `config` is unusable (empty admin key, zero lifespans,
/// …), or the listener's address cannot be read.
pub async fn run(
    listener: TcpListener,
    config: EmulatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    config.validate()?;
    let base_url = format!("http://{}", reachable(listener.local_addr()?));
    let app = Arc::new(state::App::new(base_url, &config));
    tracing::info!(url = %app.base_url, realm = %app.realm, "emulator listening");
    let service = routes::router(app).into_make_service_with_connect_info::<net::Peer>();
    axum::serve(net::KillableListener(listener), service)
        .with_graceful_shutdown(shutdown)
        .await
}

/// The address clients should use: loopback instead of an unspecified address.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// A running emulator on the current tokio runtime. Dropping the handle also
/// starts a graceful shutdown; [`Emulator::shutdown`] waits for it to finish.
pub struct Emulator {
    addr: SocketAddr,
    admin_key: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl fmt::Debug for Emulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emulator")
            .field("addr", &self.addr)
            .field("admin_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Emulator {
    /// Binds `127.0.0.1:0` and spawns the server on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// Binding fails, or `config` is unusable (see [`run`]).
    pub async fn start(config: EmulatorConfig) -> io::Result<Emulator> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), config).await
    }

    /// Like [`Emulator::start`] on a given address.
    ///
    /// # Errors
    ///
    /// Binding fails, or `config` is unusable (see [`run`]).
    pub async fn start_on(addr: SocketAddr, config: EmulatorConfig) -> io::Result<Emulator> {
        config.validate()?;
        let listener = TcpListener::bind(addr).await?;
        let addr = reachable(listener.local_addr()?);
        let admin_key = config.admin_key.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run(listener, config, async move {
            // A dropped sender also means stop.
            let _ = stopped.await;
        }));
        Ok(Emulator {
            addr,
            admin_key,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The bound address (loopback when bound to an unspecified address).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The key for `X-Emulator-Key` on `/_emulator/*` routes.
    pub fn admin_key(&self) -> &str {
        &self.admin_key
    }

    /// Stops accepting connections, lets in-flight requests finish and waits
    /// for the server task to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "emulator stopped with an error"),
                Err(e) => tracing::warn!(error = %e, "emulator task failed"),
            }
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
