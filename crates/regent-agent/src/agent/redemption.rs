//! Enrollment by redemption ([`EnrollKind::Redemption`], the sentinel
//! profile): a crash-safe redemption of a registration token
//! (DESIGN §5): marker, identifier and registration token durable first; the
//! auth token stored before success is reported; a redemption left pending is
//! resumed in the background.

use super::*;

/// An enroll call retries a failed redemption inline only after waits this
/// short, and only while it has run less than the budget; longer waits (a
/// server's `Retry-After`) happen in the background resumption, so the call
/// returns within the client's timeout.
pub(super) const INLINE_RETRY_LIMIT: Duration = Duration::from_secs(10);

pub(super) const INLINE_RETRY_BUDGET: Duration = Duration::from_secs(20);

/// An enroll call waits at most this long for the server in all, below the
/// clients' default 30 s call timeout: a server that never answers must not
/// turn into a client-side `TIMEOUT` while the agent carries on unseen.
pub(super) const INLINE_CALL_LIMIT: Duration = Duration::from_secs(25);

impl Agent {
    pub(super) async fn enroll_by_redemption(
        self: &Arc<Self>,
        slot: u32,
        registration: SecretString,
    ) -> Result<Enrolled> {
        // The caller holds `enroll_lock`, which `unenroll` needs: the epoch
        // cannot end before the background resumption (if any) starts.
        let epoch = *self.epoch.lock().await;
        self.begin_redemption(slot, &registration, epoch).await?;
        // Redeem, retrying transient failures a few times (Sentinel: an HTTP
        // 500 while creating an auth token should be retried). The caller is
        // waiting: a long wait asked by the server (`Retry-After`), or retries
        // past the inline budget, are left to the background resumption.
        let started = Instant::now();
        let deadline = started + INLINE_CALL_LIMIT;
        let mut delays = backon_delays(&self.config).take(3);
        loop {
            match self
                .redeem(slot, &registration, Some(deadline), epoch)
                .await
            {
                Ok(enrolled) => return Ok(enrolled),
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) => match delays
                    .next()
                    .map(|d| d.max(e.retry_after.unwrap_or_default()))
                {
                    Some(delay)
                        if delay <= INLINE_RETRY_LIMIT
                            && started.elapsed() + delay < INLINE_RETRY_BUDGET =>
                    {
                        tracing::warn!(slot, code = %e.code, error = %e.message, retry_in_ms = delay.as_millis() as u64, "redemption failed; retrying");
                        tokio::time::sleep(delay).await;
                    }
                    _ => {
                        // The pending marker stays: the next start (or enroll)
                        // replays the same identifier without a second count.
                        let agent = Arc::clone(self);
                        tokio::spawn(async move {
                            agent.resume_redemption(slot, registration, epoch).await;
                        });
                        return Err(e);
                    }
                },
            }
        }
    }

    /// Makes the identifier, pending marker and registration token durable
    /// before anything is sent. The marker goes first, so a stored registration
    /// token always belongs to a slot that `state.json` knows and the next start
    /// can resume or remove it; a marker without a registration token means
    /// nothing was sent. Nothing is written once `epoch` has ended (unenrolled).
    pub(super) async fn begin_redemption(
        &self,
        slot: u32,
        registration: &SecretString,
        epoch: u64,
    ) -> Result<()> {
        let current = self.epoch.lock().await;
        if *current != epoch {
            return Err(unenrolled_meanwhile());
        }
        {
            let mut state = self.state.lock().await;
            let device_id = state.device_id.clone();
            let record = state.slots.entry(slot).or_insert_with(|| SlotRecord {
                identifier: format!("{device_id}-{slot}"),
                pending_since: None,
                enrolled_at: None,
                user: None,
                scope: None,
            });
            record.pending_since = Some(now_secs());
            let snapshot = state.clone();
            if let Err(e) = self.state_file.save_async(&snapshot).await {
                // Not durable: do not show a redemption as pending.
                if let Some(record) = state.slots.get_mut(&slot) {
                    record.pending_since = None;
                }
                return Err(e);
            }
        }
        if let Err(e) = self
            .store
            .set(&registration_entry(slot), registration.clone())
            .await
        {
            // Nothing was sent: the marker must not stay behind.
            self.clear_pending(slot, false).await;
            return Err(e);
        }
        drop(current);
        crash_point(CrashPoint::BeforeRedeem);
        self.slot(slot).engine.begin_enrolling();
        Ok(())
    }

    /// One redemption attempt with the slot's stored identifier. With a
    /// `deadline`, a server that has not answered by then is given up on
    /// (`TIMEOUT`); that is safe at any moment, like a dropped connection: the
    /// pending marker stays and a replay costs no second count. An answer
    /// that arrives after `epoch` ended (the device was unenrolled meanwhile)
    /// is dropped, never stored.
    pub(super) async fn redeem(
        self: &Arc<Self>,
        slot: u32,
        registration: &SecretString,
        deadline: Option<Instant>,
        epoch: u64,
    ) -> Result<Enrolled> {
        let engine = &self.slot(slot).engine;
        let identifier = {
            let state = self.state.lock().await;
            match state.slots.get(&slot) {
                Some(record) => record.identifier.clone(),
                None => return Err(Error::new(ErrorCode::Internal, "slot has no identifier")),
            }
        };
        if *self.epoch.lock().await != epoch {
            tracing::info!(
                slot,
                "redemption not sent: the device was unenrolled meanwhile"
            );
            let e = unenrolled_meanwhile();
            engine.enrolling_failed(e.clone());
            return Err(e);
        }
        let mut identity = DeviceIdentity::detect(identifier.clone());
        identity.ref_id1 = self.config.server.ref_id1.clone();
        identity.ref_id2 = self.config.server.ref_id2.clone();
        let answer = match deadline {
            None => self.upstream.enroll(registration, Some(&identity)).await,
            Some(deadline) => {
                match tokio::time::timeout_at(
                    deadline.into(),
                    self.upstream.enroll(registration, Some(&identity)),
                )
                .await
                {
                    Ok(answer) => answer,
                    Err(_) => Err(Error::new(
                        ErrorCode::Timeout,
                        format!(
                            "the license server has not answered within {} s; the redemption goes on in the background with the same identifier (no second count): `regent status` shows when it completes",
                            INLINE_CALL_LIMIT.as_secs()
                        ),
                    )),
                }
            }
        };
        let redemption = match answer {
            Ok(r) => r,
            Err(e) => {
                if !e.is_retryable() {
                    // Refused: leave nothing half-written behind.
                    self.clear_pending(slot, false).await;
                }
                engine.enrolling_failed(e.clone());
                return Err(e);
            }
        };
        crash_point(CrashPoint::AfterRedeem);
        // Held until the credential is stored and active: `unenroll` either
        // comes before (and the answer is dropped) or after (and deletes it).
        let current = self.epoch.lock().await;
        if *current != epoch {
            drop(current);
            drop(redemption);
            tracing::warn!(
                slot,
                "a redemption answered after `regent unenroll`: the auth token it created was dropped, not stored (it used a registration count; an administrator can delete it at the server, e.g. `regent admin auth-tokens`)"
            );
            let e = unenrolled_meanwhile();
            engine.enrolling_failed(e.clone());
            return Err(e);
        }
        // The auth token is in the store before success is reported.
        let mut credential = StoredCredential::default();
        credential.auth_token_id = redemption.auth_token_id.clone();
        credential.set_grant(&redemption.grant);
        if let Err(e) = self
            .store
            .set(&credential_entry(slot), credential.to_secret()?)
            .await
        {
            engine.enrolling_failed(e.clone());
            return Err(e);
        }
        crash_point(CrashPoint::AfterStore);
        self.clear_pending(slot, true).await;
        let expires_at = redemption.grant.expires_at;
        let renewer = self.renewer(slot, credential);
        engine.activate(renewer, Some(redemption.grant)).await;
        drop(current);
        tracing::info!(slot, identifier = %crate::secret::short_hash(&identifier), "enrolled: registration token redeemed for an auth token");
        Ok(Enrolled {
            identifier,
            auth_token_id: redemption.auth_token_id,
            expires_at: time::OffsetDateTime::from(expires_at),
        })
    }

    /// Deletes a registration token that no redemption needs any more (best
    /// effort): it must not outlive its enrollment in the store.
    pub(super) async fn remove_used_registration(&self, slot: u32) {
        if let Err(e) = self.store.delete(&registration_entry(slot)).await {
            tracing::warn!(slot, error = %e, "could not delete a used registration token from the store");
        }
    }

    /// Retries an interrupted redemption until it succeeds, is refused for
    /// good, or the device is unenrolled (the `epoch` it was begun in ends).
    pub(super) async fn resume_redemption(
        self: Arc<Self>,
        slot: u32,
        registration: SecretString,
        epoch: u64,
    ) {
        let slot_ref = self.slot(slot);
        let mut delays = backon_delays(&self.config);
        loop {
            let attempt = {
                // Held per attempt, not across the sleep: an enroll may come in between.
                let _activating = slot_ref.activating.lock().await;
                if *self.epoch.lock().await != epoch || !self.is_pending(slot).await {
                    return; // someone enrolled or unenrolled meanwhile
                }
                // Shown as enrolling while it runs, never as unenrolled with
                // no redemption pending while one completes.
                slot_ref.engine.begin_enrolling();
                self.redeem(slot, &registration, None, epoch).await
            };
            match attempt {
                Ok(_) => return,
                Err(e) if !e.is_retryable() => return,
                Err(e) => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(60));
                    let delay = delay.max(e.retry_after.unwrap_or_default());
                    tracing::warn!(slot, code = %e.code, error = %e.message, retry_in_s = delay.as_secs(), "redemption not finished; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Drops the pending marker and the slot's stored registration token.
    pub(super) async fn clear_pending(&self, slot: u32, enrolled: bool) {
        {
            let mut state = self.state.lock().await;
            if let Some(record) = state.slots.get_mut(&slot) {
                record.pending_since = None;
                if enrolled {
                    record.enrolled_at = Some(now_secs());
                }
            }
            let snapshot = state.clone();
            if let Err(e) = self.state_file.save_async(&snapshot).await {
                tracing::warn!(error = %e, "could not clear the pending-redemption marker");
            }
        }
        if let Err(e) = self.store.delete(&registration_entry(slot)).await {
            tracing::warn!(error = %e, "could not delete the used registration token from the store");
        }
    }
}
