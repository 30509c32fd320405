//! The [`SlotRenewer`]: renews one slot's credential, with the write-ahead
//! before anything is sent and the renewed credential stored (or held)
//! before it is handed out.

use super::*;

/// Renews one slot's credential and persists what rotated before returning.
pub(crate) struct SlotRenewer {
    pub slot: u32,
    pub upstream: Arc<Upstream>,
    pub store: SecretStore,
    pub entry: String,
    pub max_active_tokens: Option<u32>,
    pub request_timeout: Duration,
    pub ledger: Arc<Ledger>,
    pub credential: tokio::sync::Mutex<StoredCredential>,
    /// The credential in memory was renewed but could not be stored: nothing
    /// is sent upstream until it is. Changed only under `credential`'s lock.
    pub unsaved: AtomicBool,
}

impl Renewer for SlotRenewer {
    fn renew(&self) -> BoxFuture<'_, Result<Grant>> {
        Box::pin(async move {
            let mut credential = self.credential.lock().await;
            if self.unsaved.load(Ordering::Acquire) {
                // The store refused the last renewed credential: save it first;
                // the stored refresh token is stale until then, so sending
                // anything would only rotate further away from it.
                self.save_held(&credential).await?;
                if let Some(grant) = credential.cached_grant(SystemTime::now()) {
                    return Ok(grant);
                }
            }
            // Write-ahead: the entry the renewed credential will go to takes a
            // write now, or nothing is sent (DESIGN §5).
            credential.renewal_intent_ms = Some(to_ms(SystemTime::now()));
            if let Err(e) = self.store.set(&self.entry, credential.to_secret()?).await {
                credential.renewal_intent_ms = None;
                return Err(Error::new(
                    ErrorCode::StoreUnavailable,
                    format!(
                        "the renewal of slot {} was not sent, because the store could not \
                         take a write first and a rotated refresh token must never be \
                         lost; the cached token is served until it expires. {}",
                        self.slot, e.message
                    ),
                ));
            }
            crash_point(CrashPoint::BeforeRefresh);
            let mut held = Held {
                refresh_token: credential.refresh_token.clone().map(secret),
                client_secret: credential.client_secret.clone().map(secret),
                signed_in: credential.signed_in,
            };
            let counted = self.upstream.counts_tokens();
            if counted && let Some(max) = self.max_active_tokens {
                self.ledger.reserve(self.slot, max, self.request_timeout)?;
            }
            let result = self.upstream.renew(&mut held).await;
            if counted {
                credential.issued = self.ledger.settle(self.slot, result.as_ref().ok());
            }
            if held.refresh_token.is_none() {
                // The profile dropped a refresh token the server refused.
                credential.refresh_token = None;
            }
            let grant = result?;
            crash_point(CrashPoint::AfterRefresh);
            // The rotated refresh token is durable before anyone uses the new
            // access token. If the store fails, the new credential stays in
            // memory (the session is not lost) and is saved before anything
            // else is sent.
            credential.set_grant(&grant);
            credential.renewal_intent_ms = None;
            if let Err(e) = self.store.set(&self.entry, credential.to_secret()?).await {
                self.unsaved.store(true, Ordering::Release);
                return Err(self.held_error(&e));
            }
            Ok(grant)
        })
    }

    fn save_unsaved(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let credential = self.credential.lock().await;
            if self.unsaved.load(Ordering::Acquire) {
                self.save_held(&credential).await?;
            }
            Ok(())
        })
    }
}

impl SlotRenewer {
    /// Stores the renewed credential held in memory; the caller holds the
    /// credential lock.
    pub(super) async fn save_held(&self, credential: &StoredCredential) -> Result<()> {
        match self.store.set(&self.entry, credential.to_secret()?).await {
            Ok(()) => {
                self.unsaved.store(false, Ordering::Release);
                tracing::info!(
                    slot = self.slot,
                    "the renewed credential held in memory is now stored"
                );
                Ok(())
            }
            Err(e) => Err(self.held_error(&e)),
        }
    }

    pub(super) fn held_error(&self, e: &Error) -> Error {
        Error::new(
            ErrorCode::StoreUnavailable,
            format!(
                "the renewed credential of slot {} could not be stored, so it is held in \
                 memory and nothing more is sent to the license server until it is (retried \
                 with backoff, and once more when the agent stops). {}",
                self.slot, e.message
            ),
        )
    }
}
