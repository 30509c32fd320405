//! Enrollment of the first slot, whatever the profile, and the background
//! resumption of a redemption left pending.

use super::*;

impl Agent {
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

    /// Enrolls with a registration token (Sentinel) or a client secret (OAuth2).
    /// In `per-instance` mode the secret is kept so that further slots can be
    /// activated as instances need them; slot 0 is activated now.
    ///
    /// # Errors
    /// `ALREADY_ENROLLED` unless forced; the registration token's refusal code
    /// (`REGISTRATION_TOKEN_INVALID`/`_EXPIRED`/`_EXHAUSTED`/`_DISABLED`);
    /// `CLIENT_CREDENTIALS_INVALID`; `STORE_UNAVAILABLE`; transient upstream
    /// errors after a few retries (the redemption then resumes on its own).
    pub async fn enroll(
        self: &Arc<Self>,
        secret_value: SecretString,
        options: EnrollOptions,
    ) -> Result<Enrolled> {
        let _enrolling = self.enroll_lock.lock().await;
        let first = self.slot(FIRST_SLOT);
        if !options.force
            && matches!(
                first.engine.status().state,
                SlotState::Active | SlotState::Degraded
            )
        {
            return Err(Error::new(
                ErrorCode::AlreadyEnrolled,
                "this device is already enrolled and its credential works; run `regent unenroll` first, or pass --force (a new registration consumes another count)",
            ));
        }
        if self.per_instance() {
            self.store.set(DEVICE_SECRET, secret_value.clone()).await?;
            for (_, slot) in self.existing_slots() {
                clear_refusal(&slot);
            }
        }
        let _activating = first.activating.lock().await;
        let result = match self.upstream.enroll_kind() {
            EnrollKind::Redemption => self.enroll_by_redemption(FIRST_SLOT, secret_value).await,
            EnrollKind::ClientSecret => {
                self.enroll_with_client_secret(FIRST_SLOT, secret_value)
                    .await
            }
        };
        if let Err(e) = &result
            && !e.is_retryable()
            && self.per_instance()
        {
            // A refused secret must not be kept for later slots.
            let _ = self.store.delete(DEVICE_SECRET).await;
        }
        result
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
