//! The keychain secret store against a real Secret Service: a private
//! `dbus-daemon` and an unlocked `gnome-keyring-daemon` per test, with a
//! temporary `HOME` (DESIGN §14). The keychain calls run in a child process; see
//! `support/secret_service.rs` for why. On Windows the same tests run against
//! the Credential Manager (under Wine in `scripts/test-windows.sh`).
#![allow(clippy::panic, clippy::expect_used)] // Test code: a panic is how a test (or its helper) fails.

#[path = "support/secret_service.rs"]
mod secret_service;

use std::time::Duration;

use regent_agent::secret::{ExposeSecret, SecretString, secret};
use regent_agent::store::SecretStore;
use secret_service::{TestKeyring, child_phase, run_child, service};

const SERVICE: &str = "regent-test";
const PASSWORD: &str = "correct horse battery staple";
const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `scenario` on a Tokio runtime, as the agent would call the store.
fn block_on<F: std::future::Future<Output = ()>>(scenario: F) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build a runtime")
        .block_on(scenario);
}

fn store() -> SecretStore {
    SecretStore::keychain(&service(SERVICE), TIMEOUT).expect("keychain store")
}

async fn get(store: &SecretStore, name: &str) -> Option<String> {
    store
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("get {name}: {e}"))
        .map(|value: SecretString| value.expose_secret().to_owned())
}

/// What the keychain holds under `account`, read directly, without chunking.
fn raw_entry(account: &str) -> Option<String> {
    let entry = keyring::Entry::new(&service(SERVICE), account).expect("keyring entry");
    match entry.get_password() {
        Ok(value) => Some(value),
        Err(keyring::Error::NoEntry) => None,
        Err(e) => panic!("raw read of {account}: {e}"),
    }
}

/// A 3,000-character value (three chunks) that is not a repetition, so a
/// misplaced chunk shows.
fn long_value(seed: u32) -> String {
    (0..3000u32)
        .map(|i| char::from(b'!' + ((i.wrapping_mul(7919) ^ seed) % 90) as u8))
        .collect()
}

#[test]
fn keychain_set_get_delete_round_trip() {
    if child_phase().is_some() {
        return block_on(async {
            let store = store();
            assert_eq!(
                store.describe(),
                format!("OS keychain (service {})", service(SERVICE))
            );
            assert_eq!(get(&store, "refresh_token").await, None, "missing entry");
            store
                .delete("refresh_token")
                .await
                .expect("delete of a missing entry");

            store
                .set("refresh_token", secret("rt-1".into()))
                .await
                .expect("set");
            assert_eq!(get(&store, "refresh_token").await.as_deref(), Some("rt-1"));
            // Stored as one plain entry under the service, readable by other tools.
            assert_eq!(raw_entry("refresh_token").as_deref(), Some("rt-1"));

            store
                .set("refresh_token", secret("rt-2 ünïcødé".into()))
                .await
                .expect("overwrite");
            assert_eq!(
                get(&store, "refresh_token").await.as_deref(),
                Some("rt-2 ünïcødé")
            );

            store.delete("refresh_token").await.expect("delete");
            assert_eq!(get(&store, "refresh_token").await, None);
            assert_eq!(raw_entry("refresh_token"), None);

            // Concurrent callers each get their own answer.
            let mut calls = tokio::task::JoinSet::new();
            for i in 0..12 {
                let store = store.clone();
                calls.spawn(async move {
                    let name = format!("slot-{i}");
                    store
                        .set(&name, secret(format!("value-{i}")))
                        .await
                        .expect("set");
                    assert_eq!(get(&store, &name).await, Some(format!("value-{i}")));
                    store.delete(&name).await.expect("delete");
                });
            }
            while let Some(done) = calls.join_next().await {
                done.expect("concurrent call");
            }
        });
    }
    let home = tempfile::tempdir().expect("temporary HOME");
    let keyring = TestKeyring::start(home.path(), Some(PASSWORD));
    run_child("keychain_set_get_delete_round_trip", "main", &keyring.env());
}

#[test]
fn keychain_long_values_are_chunked_and_round_trip() {
    if child_phase().is_some() {
        return block_on(async {
            let store = store();
            let long = long_value(1);
            store
                .set("access_token", secret(long.clone()))
                .await
                .expect("set 3,000 characters");
            assert_eq!(get(&store, "access_token").await, Some(long));
            // Every entry fits a Windows credential; the head points to 3 chunks.
            assert_eq!(
                raw_entry("access_token").as_deref(),
                Some("regent-chunked:v1:1:3")
            );
            for i in 1..=3 {
                let chunk = raw_entry(&format!("access_token#1.{i}")).expect("chunk");
                // Windows keeps 2,560 bytes per credential, as UTF-16.
                let bytes = chunk.encode_utf16().count() * 2;
                assert!(bytes <= 2560, "chunk {i} is {bytes} bytes as UTF-16");
            }

            // Replacing with a shorter chunked value removes the old chunks.
            let shorter = long_value(2)[..2050].to_owned();
            store
                .set("access_token", secret(shorter.clone()))
                .await
                .expect("replace");
            assert_eq!(get(&store, "access_token").await, Some(shorter));
            assert_eq!(raw_entry("access_token#1.1"), None);
            assert!(raw_entry("access_token#2.3").is_some());

            // A value that looks like a chunk header is still just a value.
            let tricky = "regent-chunked:v1:1:3".to_owned();
            store
                .set("access_token", secret(tricky.clone()))
                .await
                .expect("set header-like value");
            assert_eq!(get(&store, "access_token").await, Some(tricky));

            store.delete("access_token").await.expect("delete");
            assert_eq!(get(&store, "access_token").await, None);
            for account in ["access_token", "access_token#3.1", "access_token#2.1"] {
                assert_eq!(raw_entry(account), None, "{account} left behind");
            }
        });
    }
    let home = tempfile::tempdir().expect("temporary HOME");
    let keyring = TestKeyring::start(home.path(), Some(PASSWORD));
    run_child(
        "keychain_long_values_are_chunked_and_round_trip",
        "main",
        &keyring.env(),
    );
}

#[test]
fn keychain_values_survive_restarts() {
    if let Some(phase) = child_phase() {
        return block_on(async move {
            match phase.as_str() {
                "write" => {
                    let first = store();
                    first
                        .set("refresh_token", secret("rt-kept".into()))
                        .await
                        .expect("set");
                    first
                        .set("access_token", secret(long_value(3)))
                        .await
                        .expect("set long");
                    // Another store instance (as after an agent restart) reads them.
                    let second = store();
                    assert_eq!(
                        get(&second, "refresh_token").await.as_deref(),
                        Some("rt-kept")
                    );
                    assert_eq!(get(&second, "access_token").await, Some(long_value(3)));
                }
                "read" => {
                    let store = store();
                    assert_eq!(
                        get(&store, "refresh_token").await.as_deref(),
                        Some("rt-kept")
                    );
                    assert_eq!(get(&store, "access_token").await, Some(long_value(3)));
                    assert_eq!(get(&store, "never_set").await, None);
                }
                other => panic!("unknown phase {other}"),
            }
        });
    }
    let home = tempfile::tempdir().expect("temporary HOME");
    let keyring = TestKeyring::start(home.path(), Some(PASSWORD));
    run_child("keychain_values_survive_restarts", "write", &keyring.env());
    keyring.stop();
    // A new session: new bus, new keyring daemon, same HOME and password.
    let keyring = TestKeyring::start(home.path(), Some(PASSWORD));
    run_child("keychain_values_survive_restarts", "read", &keyring.env());
}
