use super::*;

fn grant(token: &str, secs: u64) -> Grant {
    let now = SystemTime::now();
    Grant {
        access_token: secret(token.to_owned()),
        token_type: "Bearer".into(),
        received_at: now,
        expires_at: now + Duration::from_secs(secs),
        refresh_token: None,
        refresh_expires_at: None,
        scope: None,
    }
}

/// A secret store in memory whose writes fail from a chosen one on.
#[derive(Default)]
struct FlakyStore {
    entries: Mutex<BTreeMap<String, String>>,
    writes: std::sync::atomic::AtomicU64,
    /// Writes numbered from this one on fail (0: none fail).
    fail_from: std::sync::atomic::AtomicU64,
}

impl FlakyStore {
    fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }
    /// The next `ok` writes succeed, every later one fails.
    fn fail_after(&self, ok: u64) {
        self.fail_from
            .store(self.writes() + ok + 1, Ordering::SeqCst);
    }
    fn heal(&self) {
        self.fail_from.store(0, Ordering::SeqCst);
    }
    fn stored(&self, name: &str) -> StoredCredential {
        let value = self.entries.lock().unwrap()[name].clone();
        StoredCredential::parse(&secret(value)).unwrap()
    }
}

impl crate::store::SecretBackend for FlakyStore {
    fn get(&self, name: &str) -> Result<Option<SecretString>> {
        Ok(self.entries.lock().unwrap().get(name).cloned().map(secret))
    }
    fn set(&self, name: &str, value: &SecretString) -> Result<()> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        let from = self.fail_from.load(Ordering::SeqCst);
        if from != 0 && n >= from {
            return Err(Error::new(
                ErrorCode::StoreUnavailable,
                "cannot save test store: Read-only file system",
            ));
        }
        self.entries
            .lock()
            .unwrap()
            .insert(name.to_owned(), value.expose_secret().to_owned());
        Ok(())
    }
    fn delete(&self, name: &str) -> Result<()> {
        self.entries.lock().unwrap().remove(name);
        Ok(())
    }
    fn describe(&self) -> String {
        "test store".into()
    }
}

/// A real emulator (rotating refresh tokens), a slot redeemed there, and
/// its renewer writing to `store`.
async fn redeemed_renewer(
    store: &Arc<FlakyStore>,
) -> (regent_emulator::Emulator, reqwest::Client, SlotRenewer) {
    use crate::upstream::DeviceIdentity;
    use crate::upstream::http::{Http, HttpSettings};
    use crate::upstream::sentinel::Sentinel;
    let config = regent_emulator::EmulatorConfig::default();
    let emulator = regent_emulator::Emulator::start(config.clone())
        .await
        .unwrap();
    let admin = crate::upstream::AdminClient::login_to(
        &emulator.url(),
        &config.admin_username,
        &config.admin_password,
    )
    .await
    .unwrap();
    let minted = admin
        .create_registration_token(serde_json::json!({"count": 1}))
        .await
        .unwrap();
    let token = minted.value.expose_secret();
    let sentinel = Sentinel::new(
        Http::new(HttpSettings::default()).unwrap(),
        emulator.url().parse().unwrap(),
    )
    .unwrap();
    let redemption = sentinel
        .redeem(
            &secret(token.to_owned()),
            &DeviceIdentity::detect("unit-slot-0".into()),
        )
        .await
        .unwrap();
    let mut credential = StoredCredential::default();
    credential.auth_token_id = Some(redemption.auth_token_id.clone());
    credential.set_grant(&redemption.grant);
    let renewer = SlotRenewer {
        slot: 0,
        upstream: Arc::new(sentinel),
        store: SecretStore::from_backend(
            Arc::clone(store) as Arc<dyn crate::store::SecretBackend>,
            Duration::from_secs(5),
        ),
        entry: "slot-0.credential".into(),
        max_active_tokens: None,
        request_timeout: Duration::from_secs(5),
        ledger: Arc::new(Ledger::default()),
        credential: tokio::sync::Mutex::new(credential),
        unsaved: AtomicBool::new(false),
    };
    (emulator, reqwest::Client::new(), renewer)
}

/// Refresh requests the emulator received, whatever their outcome.
async fn refresh_requests(emulator: &regent_emulator::Emulator, http: &reqwest::Client) -> u64 {
    let counters: serde_json::Value = http
        .get(format!("{}/_emulator/counters", emulator.url()))
        .header("X-Emulator-Key", emulator.admin_key())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    counters["requests"]["realm_token"]
        .as_object()
        .map(|o| o.values().filter_map(serde_json::Value::as_u64).sum())
        .unwrap_or(0)
}

/// Regression (issue 18, item 2): a renewal the store cannot take was sent
/// anyway, rotating the refresh token at the server while the stored one
/// went stale; the engine's retries rotated it again and again. Now the
/// write-ahead fails first and nothing is sent; a credential renewed just
/// before the store broke is held, saved before anything else is sent,
/// and offered once more at shutdown.
#[tokio::test]
async fn nothing_is_sent_while_the_store_cannot_take_the_answer() {
    let store = Arc::new(FlakyStore::default());
    let (emulator, http, renewer) = redeemed_renewer(&store).await;
    // The redemption's own token request is counted too.
    let base = refresh_requests(&emulator, &http).await;

    // Healthy: write-ahead, refresh, save.
    renewer.renew().await.unwrap();
    assert_eq!(refresh_requests(&emulator, &http).await, base + 1);
    assert_eq!(
        store.writes(),
        2,
        "a write ahead and the renewed credential"
    );
    assert!(
        store
            .stored("slot-0.credential")
            .renewal_intent_ms
            .is_none()
    );

    // The store refuses writes: nothing is sent, however often retried.
    store.fail_after(0);
    for _ in 0..3 {
        let e = renewer.renew().await.unwrap_err();
        assert_eq!(e.code, ErrorCode::StoreUnavailable);
        assert!(e.message.contains("was not sent"), "{}", e.message);
        assert!(e.message.contains("Read-only file system"), "{}", e.message);
    }
    assert_eq!(refresh_requests(&emulator, &http).await, base + 1);

    // The store breaks between the write-ahead and the save: the renewed
    // credential is held, and nothing more is sent until it is stored.
    store.heal();
    store.fail_after(1);
    let e = renewer.renew().await.unwrap_err();
    assert!(e.message.contains("held in memory"), "{}", e.message);
    assert_eq!(refresh_requests(&emulator, &http).await, base + 2);
    let stale = store.stored("slot-0.credential");
    assert!(
        stale.renewal_intent_ms.is_some(),
        "the intent record is stored"
    );
    for _ in 0..3 {
        let e = renewer.renew().await.unwrap_err();
        assert!(e.message.contains("held in memory"), "{}", e.message);
    }
    assert!(renewer.save_unsaved().await.is_err());
    assert_eq!(refresh_requests(&emulator, &http).await, base + 2);

    // The store answers again: the held credential is saved (at shutdown
    // here) and is the live one; the next renewal works with it.
    store.heal();
    renewer.save_unsaved().await.unwrap();
    assert_eq!(refresh_requests(&emulator, &http).await, base + 2);
    let saved = store.stored("slot-0.credential");
    assert_eq!(
        saved.refresh_token,
        renewer.credential.lock().await.refresh_token
    );
    assert_ne!(saved.refresh_token, stale.refresh_token);
    renewer.renew().await.unwrap();
    assert_eq!(refresh_requests(&emulator, &http).await, base + 3);
}

/// The held credential is saved by the next renewal attempt too, which
/// then hands out its (still valid) token without calling the server.
#[tokio::test]
async fn a_held_credential_is_saved_before_anything_is_sent() {
    let store = Arc::new(FlakyStore::default());
    let (emulator, http, renewer) = redeemed_renewer(&store).await;
    // The redemption's own token request is counted too.
    let base = refresh_requests(&emulator, &http).await;
    store.fail_after(1);
    assert!(renewer.renew().await.is_err());
    assert_eq!(refresh_requests(&emulator, &http).await, base + 1);
    store.heal();
    let grant = renewer.renew().await.unwrap();
    assert_eq!(
        refresh_requests(&emulator, &http).await,
        base + 1,
        "no call"
    );
    let saved = store.stored("slot-0.credential");
    let access = saved.cached_grant(SystemTime::now()).unwrap();
    assert!(grant.same_token_as(&access));
}

/// Issue 13, bug 3: `UNIX_EPOCH + ms` panicked the Windows agent on such
/// a store (and on Linux read it as a token valid for millennia).
#[test]
fn a_stored_expiry_past_the_year_9999_counts_as_expired() {
    let stored = |received: u64, expires: u64, refresh: u64| {
        StoredCredential::parse(&secret(format!(
            r#"{{"refresh_token": "r", "refresh_expires_at_ms": {refresh},
                "access": {{"token": "a", "token_type": "Bearer",
                "received_at_ms": {received}, "expires_at_ms": {expires}}}}}"#
        )))
        .unwrap()
    };
    let now = SystemTime::now();
    let now_ms = to_ms(now);
    for expires in [u64::MAX, 1 << 62, regent_proto::time::LATEST_UNIX_MS + 1] {
        assert!(
            stored(now_ms, expires, now_ms).cached_grant(now).is_none(),
            "{expires}"
        );
        assert!(
            stored(u64::MAX, expires, now_ms)
                .cached_grant(now)
                .is_none()
        );
    }
    assert!(
        stored(u64::MAX, now_ms + 60_000, now_ms)
            .cached_grant(now)
            .is_none()
    );
    let grant = stored(now_ms, now_ms + 60_000, u64::MAX)
        .cached_grant(now)
        .unwrap();
    assert_eq!(
        grant.refresh_expires_at, None,
        "an impossible expiry is unknown"
    );
    assert!(grant.remaining(now) <= Duration::from_secs(60));
}

#[test]
fn an_unreadable_credential_is_reported_without_its_content() {
    let e = StoredCredential::parse(&secret(
        r#"{"refresh_token": 987654, "x": "hunter2"}"#.into(),
    ))
    .err()
    .unwrap();
    assert_eq!(e.code, ErrorCode::StoreUnavailable);
    assert!(e.message.contains("line 1"), "{}", e.message);
    assert!(!e.message.contains("987654"), "{}", e.message);
    let e = StoredCredential::parse(&secret("hunter2-not-json".into()))
        .err()
        .unwrap();
    assert!(!e.message.contains("hunter2"), "{}", e.message);
}

/// A credential stored before issue 14 fingerprinted its tokens with
/// `DefaultHasher`: after an upgrade, a re-issue of its cached token is
/// still one token, not two, against `max_active_tokens`.
#[test]
fn a_legacy_fingerprint_is_migrated_on_load() {
    let expires = to_ms(SystemTime::now()) + 60_000;
    let stored = StoredCredential::parse(&secret(format!(
        r#"{{"client_secret": "s",
            "access": {{"token": "tok-a", "token_type": "Bearer",
            "received_at_ms": 1, "expires_at_ms": {expires}}},
            "issued": [{{"fingerprint": {}, "expires_at_ms": {expires}}},
                       {{"fingerprint": 77, "expires_at_ms": {expires}}}]}}"#,
        legacy_fingerprint("tok-a")
    )))
    .unwrap();
    let prints: Vec<u64> = stored.issued.iter().map(|t| t.fingerprint).collect();
    assert_eq!(prints, [fingerprint(&secret("tok-a".into())), 77]);
    let ledger = Ledger::default();
    ledger.load(0, &stored.issued);
    ledger.reserve(0, 3, Duration::from_secs(5)).unwrap();
    assert_eq!(ledger.settle(0, Some(&grant("tok-a", 60))).len(), 2);
    // The stable fingerprint is what `std` cannot change under us.
    assert_eq!(fingerprint(&secret("abc".into())), 0xba78_16bf_8f01_cfea);
}

#[test]
fn ledger_counts_every_slot_and_reservations() {
    let ledger = Ledger::default();
    let timeout = Duration::from_secs(5);
    ledger.reserve(0, 2, timeout).unwrap();
    ledger.reserve(1, 2, timeout).unwrap();
    // Two requests in flight fill a cap of two.
    let e = ledger.reserve(2, 2, timeout).unwrap_err();
    assert_eq!(e.code, ErrorCode::TokenLimit);
    assert!(e.retry_after.is_some());
    let held = ledger.settle(0, Some(&grant("a", 60)));
    assert_eq!(held.len(), 1);
    ledger.settle(1, None); // failed: the place is free again
    ledger.reserve(2, 2, timeout).unwrap();
    assert_eq!(ledger.settle(2, Some(&grant("b", 60))).len(), 1);
    assert!(ledger.reserve(1, 2, timeout).is_err());
    // A re-issued token is not counted twice.
    ledger.forget(2);
    ledger.reserve(0, 3, timeout).unwrap();
    assert_eq!(ledger.settle(0, Some(&grant("a", 60))).len(), 1);
}

/// A profile that needs no server: renews with the held client secret,
/// drops the held refresh token as if the server refused it, and counts
/// its tokens like an OAuth2 multi-token server.
#[derive(Debug)]
struct FakeProfile;

impl crate::upstream::UpstreamProfile for FakeProfile {
    fn profile(&self) -> &'static str {
        "fake"
    }

    fn server(&self) -> String {
        "fake.invalid".into()
    }

    fn enroll_kind(&self) -> crate::upstream::EnrollKind {
        crate::upstream::EnrollKind::ClientSecret
    }

    fn counts_tokens(&self) -> bool {
        true
    }

    fn enroll<'a>(
        &'a self,
        _secret: &'a SecretString,
        _identity: Option<&'a crate::upstream::DeviceIdentity>,
    ) -> BoxFuture<'a, Result<crate::upstream::Enrollment>> {
        Box::pin(async { Err(Error::new(ErrorCode::Internal, "not used")) })
    }

    fn renew<'a>(&'a self, held: &'a mut Held) -> BoxFuture<'a, Result<Grant>> {
        Box::pin(async move {
            assert_eq!(
                held.client_secret.as_ref().map(|s| s.expose_secret()),
                Some("the-secret")
            );
            held.refresh_token = None;
            Ok(grant("fresh", 60))
        })
    }
}

/// The renewer only sees the profile trait: what the profile drops from the
/// held secrets is dropped from the stored credential, and a profile that
/// counts its tokens has them in the ledger and in `issued`.
#[tokio::test]
async fn the_renewer_follows_any_profile() {
    let store = Arc::new(FlakyStore::default());
    let mut credential = StoredCredential::default();
    credential.client_secret = Some("the-secret".into());
    credential.refresh_token = Some("refused".into());
    let ledger = Arc::new(Ledger::default());
    let renewer = SlotRenewer {
        slot: 3,
        upstream: Arc::new(FakeProfile),
        store: SecretStore::from_backend(
            Arc::clone(&store) as Arc<dyn crate::store::SecretBackend>,
            Duration::from_secs(5),
        ),
        entry: "slot-3.credential".into(),
        max_active_tokens: Some(1),
        request_timeout: Duration::from_secs(5),
        ledger: Arc::clone(&ledger),
        credential: tokio::sync::Mutex::new(credential),
        unsaved: AtomicBool::new(false),
    };
    let got = renewer.renew().await.unwrap();
    assert!(got.same_token_as(&grant("fresh", 60)));
    let stored = store.stored("slot-3.credential");
    assert_eq!(
        stored.refresh_token, None,
        "the refused refresh token is gone"
    );
    assert_eq!(stored.issued.len(), 1);
    assert_eq!(
        stored.issued[0].fingerprint,
        fingerprint(&secret("fresh".into()))
    );
    // The one live token fills max_active_tokens = 1: the next renewal waits.
    let e = renewer.renew().await.unwrap_err();
    assert_eq!(e.code, ErrorCode::TokenLimit);
}
