//! Enrollment of the first slot, whatever the profile: the flow its
//! [`EnrollKind`] asks for.

use super::*;

impl Agent {
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
}
