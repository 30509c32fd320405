//! A user's sign-in (`regent login`, `regent logout`, and `regent enroll
//! --refresh-token`): the agent exchanges what the CLI relays (the browser's
//! code and the PKCE verifier, a device code, or a refresh token to adopt),
//! stores the refresh token as the first slot's credential, and from then on
//! the engine renews it like any other: rotation stored before hand-out,
//! one upstream call at a time, `REVOKED` ("sign in again") when the server
//! refuses it.

use super::*;
use crate::upstream::{
    BrowserSignIn, DeviceSignIn, SignIn, SignInGrant, SignInOutcome, UserSignIn,
};
use regent_proto::status::SignedInUser;

/// A completed sign-in.
#[derive(Debug, Clone)]
pub struct LoggedIn {
    /// Who signed in, when the provider said.
    pub user: Option<SignedInUser>,
    /// The granted scope, when the server said.
    pub scope: Option<String>,
    /// When the first access token expires.
    pub expires_at: SystemTime,
}

/// What one `login` request came to.
#[derive(Debug, Clone)]
pub enum LoginOutcome {
    /// Signed in; tokens are served.
    LoggedIn(LoggedIn),
    /// A device sign-in not approved yet: poll again (five seconds later
    /// than before when `slow_down`).
    Pending { slow_down: bool },
}

impl Agent {
    /// The profile's user sign-in, or why there is none.
    fn sign_in(&self) -> Result<&dyn UserSignIn> {
        if self.per_instance() {
            return Err(Error::new(
                ErrorCode::Config,
                "a user's sign-in is one credential for the whole device, but [instances] mode is \
                 \"per-instance\"; set mode = \"shared\" to sign in with `regent login`",
            ));
        }
        self.upstream.user_sign_in().ok_or_else(|| {
            Error::new(
                ErrorCode::Config,
                format!(
                    "the {} profile has no user sign-in; `regent login` needs [server] profile = \
                     \"oauth2\" with the provider's issuer and client_id",
                    self.upstream.profile()
                ),
            )
        })
    }

    /// Where a browser sign-in goes (the CLI adds `state` and PKCE).
    ///
    /// # Errors
    /// `CONFIG` when the profile or the server offers no browser sign-in;
    /// discovery failures.
    pub async fn login_browser(&self) -> Result<BrowserSignIn> {
        self.sign_in()?.browser().await
    }

    /// Starts a device sign-in (RFC 8628).
    ///
    /// # Errors
    /// `CONFIG` when the profile or the server offers no device sign-in;
    /// `CLIENT_CREDENTIALS_INVALID`; upstream failures.
    pub async fn login_device(&self, client_secret: Option<&SecretString>) -> Result<DeviceSignIn> {
        self.sign_in()?.device(client_secret).await
    }

    /// Completes a sign-in with `grant`: exchanges it and, once the server
    /// hands over tokens, stores the refresh token and serves tokens. A
    /// device code not approved yet answers [`LoginOutcome::Pending`].
    ///
    /// Signing in again replaces the current user's sign-in (and revokes
    /// the replaced refresh token, best effort); replacing a working device
    /// enrollment needs `force`.
    ///
    /// # Errors
    /// `ALREADY_ENROLLED`; `SIGN_IN_FAILED` (denied, expired, code refused);
    /// `REVOKED` (an adopted refresh token the server refuses);
    /// `CLIENT_CREDENTIALS_INVALID`; `CONFIG` (no refresh token granted);
    /// `STORE_UNAVAILABLE`; upstream failures.
    pub async fn login(
        self: &Arc<Self>,
        grant: SignInGrant,
        client_secret: Option<SecretString>,
        force: bool,
    ) -> Result<LoginOutcome> {
        let sign_in = self.sign_in()?;
        let _enrolling = self.enroll_lock.lock().await;
        let first = self.slot(FIRST_SLOT);
        // What the slot holds, from the store (state.json only describes it).
        let user_signed_in = self
            .stored_credential()
            .await
            .ok()
            .flatten()
            .is_some_and(|c| c.signed_in);
        if !force
            && !user_signed_in
            && matches!(
                first.engine.status().state,
                SlotState::Active | SlotState::Degraded
            )
        {
            return Err(Error::new(
                ErrorCode::AlreadyEnrolled,
                "this device holds a working device enrollment, not a user's sign-in; run \
                 `regent unenroll` first, or `regent login --force` to replace it",
            ));
        }
        // A refused or pending exchange leaves the current credential alone.
        let SignIn { grant, user } = match sign_in.exchange(&grant, client_secret.as_ref()).await? {
            SignInOutcome::SignedIn(signed_in) => signed_in,
            SignInOutcome::Pending { slow_down } => return Ok(LoginOutcome::Pending { slow_down }),
        };
        if grant.refresh_token.is_none() {
            return Err(Error::new(
                ErrorCode::Config,
                format!(
                    "the license server at {} signed the user in but gave no refresh token, so the \
                     sign-in would end when the first access token expires; add offline_access to \
                     [server] scope, or ask the administrator to allow this client the refresh_token \
                     grant",
                    self.upstream.server()
                ),
            ));
        }
        let _activating = first.activating.lock().await;
        // The old credential's renewer stops (a renewal in flight finishes)
        // before the new credential takes its entry, so nothing it rotates
        // can overwrite the sign-in.
        first.engine.deactivate().await;
        let replaced = self.stored_credential().await.ok().flatten();
        first.engine.begin_enrolling();
        let mut credential = StoredCredential::default();
        credential.signed_in = true;
        credential.client_secret = client_secret.map(|s| s.expose_secret().to_owned());
        credential.set_grant(&grant);
        let client_id = self.config.server.client_id.clone().unwrap_or_default();
        let record = SlotRecord {
            identifier: user.as_ref().map_or(client_id, |u| u.sub.clone()),
            pending_since: None,
            enrolled_at: Some(now_secs()),
            user: user.clone(),
            scope: grant.scope.clone(),
        };
        if let Err(e) = self.store_sign_in(record, &credential).await {
            first.engine.enrolling_failed(e.clone());
            // The replaced credential is still stored: serve it again.
            if replaced.is_some()
                && let Err(reload) = self.load_slot(FIRST_SLOT).await
            {
                tracing::warn!(code = %reload.code, "could not reload the previous credential after the sign-in failed to store");
            }
            return Err(e);
        }
        self.ledger.forget(FIRST_SLOT);
        clear_refusal(&first);
        let logged_in = LoggedIn {
            user,
            scope: grant.scope.clone(),
            expires_at: grant.expires_at,
        };
        let renewer = self.renewer(FIRST_SLOT, credential);
        first.engine.activate(renewer, Some(grant)).await;
        tracing::info!(
            user = %logged_in.user.as_ref().map(|u| crate::secret::short_hash(&u.sub)).unwrap_or_default(),
            "signed in"
        );
        if let Some(old) = replaced.filter(|c| c.signed_in) {
            self.revoke_stored(sign_in, &old).await;
        }
        Ok(LoginOutcome::LoggedIn(logged_in))
    }

    /// The first slot's stored credential, if any.
    async fn stored_credential(&self) -> Result<Option<StoredCredential>> {
        match self.store.get(&credential_entry(FIRST_SLOT)).await? {
            Some(value) => Ok(Some(StoredCredential::parse(&value)?)),
            None => Ok(None),
        }
    }

    /// Records the signed-in slot in state.json, then stores its credential
    /// (so a stored credential is always one the next start loads); the
    /// previous record comes back when the credential cannot be stored.
    async fn store_sign_in(&self, record: SlotRecord, credential: &StoredCredential) -> Result<()> {
        let previous = {
            let mut state = self.state.lock().await;
            let previous = state.slots.insert(FIRST_SLOT, record);
            let snapshot = state.clone();
            if let Err(e) = self.state_file.save_async(&snapshot).await {
                restore(&mut state, previous);
                return Err(e);
            }
            previous
        };
        let stored = self
            .store
            .set(&credential_entry(FIRST_SLOT), credential.to_secret()?)
            .await;
        if let Err(e) = stored {
            let mut state = self.state.lock().await;
            restore(&mut state, previous);
            let snapshot = state.clone();
            if let Err(save) = self.state_file.save_async(&snapshot).await {
                tracing::warn!(code = %save.code, "could not restore state.json after the credential failed to store");
            }
            return Err(e);
        }
        Ok(())
    }

    /// Revokes a stored user credential's refresh token at the server, best
    /// effort; whether the server revoked it.
    async fn revoke_stored(&self, sign_in: &dyn UserSignIn, credential: &StoredCredential) -> bool {
        let Some(refresh_token) = &credential.refresh_token else {
            return false;
        };
        let refresh_token = crate::secret::secret(refresh_token.clone());
        let client_secret = credential.client_secret.clone().map(crate::secret::secret);
        match sign_in.revoke(&refresh_token, client_secret.as_ref()).await {
            Ok(revoked) => revoked,
            Err(e) => {
                tracing::warn!(code = %e.code, error = %e.message, "could not revoke the refresh token at the server; it lapses when it expires");
                false
            }
        }
    }

    /// Signs the user out: revokes the refresh token at the server when it
    /// offers revocation, then forgets every stored secret (as `unenroll`).
    /// Returns whether the server revoked it.
    ///
    /// # Errors
    /// `NOT_ENROLLED` when no user is signed in (a device enrollment is
    /// removed with `regent unenroll`); `STORE_UNAVAILABLE`.
    pub async fn logout(&self) -> Result<bool> {
        let _enrolling = self.enroll_lock.lock().await;
        let not_signed_in = || {
            Error::new(
                ErrorCode::NotEnrolled,
                "nobody is signed in: there is no user sign-in to end (a device enrollment is \
                 removed with `regent unenroll`)",
            )
        };
        if !self.stored_credential().await?.is_some_and(|c| c.signed_in) {
            return Err(not_signed_in());
        }
        // No renewal may rotate the token while it is revoked: stop the
        // renewer first, then read the credential it last stored.
        self.slot(FIRST_SLOT).engine.deactivate().await;
        let credential = self
            .stored_credential()
            .await?
            .filter(|c| c.signed_in)
            .ok_or_else(not_signed_in)?;
        let revoked = match self.upstream.user_sign_in() {
            Some(sign_in) => self.revoke_stored(sign_in, &credential).await,
            None => false,
        };
        self.unenroll_locked().await?;
        tracing::info!(revoked, "signed out");
        Ok(revoked)
    }
}

/// Puts back the slot record a failed sign-in replaced.
fn restore(state: &mut PersistentState, previous: Option<SlotRecord>) {
    match previous {
        Some(record) => {
            state.slots.insert(FIRST_SLOT, record);
        }
        None => {
            state.slots.remove(&FIRST_SLOT);
        }
    }
}
