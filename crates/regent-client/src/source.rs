//! A token cache for apps that need a token on every request.

use std::sync::Mutex;
use std::time::Duration;

use crate::{Client, Result, Token};

/// Hands out the cached token while it stays valid for at least `min_valid`
/// by the wall clock, and asks the agent otherwise; concurrent callers share
/// one request. A cache hit costs a mutex and a clone, no round trip.
///
/// ```no_run
/// use std::time::Duration;
/// use regent_client::{Client, ClientOptions, TokenSource};
///
/// # async fn run() -> regent_client::Result<()> {
/// let client = Client::connect(ClientOptions::new("editor")).await?;
/// let source = TokenSource::new(client, Duration::from_secs(60));
/// for _ in 0..1000 {
///     let token = source.token().await?; // one agent round trip, then cached
///     # let _ = token;
/// }
/// # Ok(())
/// # }
/// ```
pub struct TokenSource {
    client: Client,
    min_valid: Duration,
    cached: Mutex<Option<Token>>,
    /// Held while asking the agent, so a burst of misses makes one request.
    refreshing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("client", &self.client)
            .field("min_valid", &self.min_valid)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// A cache over `client` handing out tokens valid for at least `min_valid`.
    pub fn new(client: Client, min_valid: Duration) -> Self {
        TokenSource {
            client,
            min_valid,
            cached: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// The client underneath.
    pub fn client(&self) -> &Client {
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
    pub async fn token(&self) -> Result<Token> {
        if let Some(token) = self.cached() {
            return Ok(token);
        }
        let _refreshing = self.refreshing.lock().await;
        if let Some(token) = self.cached() {
            return Ok(token);
        }
        let token = self.client.token(self.min_valid).await?;
        *self.lock() = Some(token.clone());
        Ok(token)
    }

    /// Drops the cached token, e.g. after a server rejected it.
    pub fn invalidate(&self) {
        *self.lock() = None;
    }

    fn cached(&self) -> Option<Token> {
        self.lock()
            .as_ref()
            .filter(|t| t.remaining() >= self.min_valid)
            .cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Token>> {
        // A token or nothing: never inconsistent, even after a panic elsewhere.
        self.cached.lock().unwrap_or_else(|p| p.into_inner())
    }
}
