//! Enrollment with a reusable client secret ([`EnrollKind::ClientSecret`],
//! the oauth2 profile): the secret is proven by a first token request, then
//! stored.

use super::*;

impl Agent {
    pub(super) async fn enroll_with_client_secret(
        self: &Arc<Self>,
        slot: u32,
        client_secret: SecretString,
    ) -> Result<Enrolled> {
        let engine = &self.slot(slot).engine;
        engine.begin_enrolling();
        // Proving the secret works is the enrollment: nothing is stored until
        // the server accepts it.
        let grant = match self.upstream.enroll(&client_secret, None).await {
            Ok(enrollment) => enrollment.grant,
            Err(e) => {
                engine.enrolling_failed(e.clone());
                return Err(e);
            }
        };
        let mut credential = StoredCredential::default();
        credential.client_secret = Some(client_secret.expose_secret().to_owned());
        credential.set_grant(&grant);
        credential.issued.push(IssuedToken {
            fingerprint: crate::credential::fingerprint(&grant.access_token),
            expires_at_ms: to_ms(grant.expires_at),
        });
        self.ledger.load(slot, &credential.issued);
        // The slot is in state.json before its credential is stored, so a
        // stored credential is always one the next start loads.
        let identifier = match self.record_oauth2_slot(slot).await {
            Ok(identifier) => identifier,
            Err(e) => {
                engine.enrolling_failed(e.clone());
                return Err(e);
            }
        };
        if let Err(e) = self
            .store
            .set(&credential_entry(slot), credential.to_secret()?)
            .await
        {
            engine.enrolling_failed(e.clone());
            return Err(e);
        }
        let expires_at = grant.expires_at;
        let renewer = self.renewer(slot, credential);
        engine.activate(renewer, Some(grant)).await;
        Ok(Enrolled {
            identifier,
            auth_token_id: None,
            expires_at: time::OffsetDateTime::from(expires_at),
        })
    }

    pub(super) async fn record_oauth2_slot(&self, slot: u32) -> Result<String> {
        let client_id = self.config.server.client_id.clone().unwrap_or_default();
        let identifier = if slot == FIRST_SLOT {
            client_id
        } else {
            format!("{client_id}#{slot}")
        };
        let mut state = self.state.lock().await;
        state.slots.insert(
            slot,
            SlotRecord {
                identifier: identifier.clone(),
                pending_since: None,
                enrolled_at: Some(now_secs()),
                user: None,
                scope: None,
            },
        );
        let snapshot = state.clone();
        self.state_file.save_async(&snapshot).await?;
        Ok(identifier)
    }
}
