//! The keychain secret store when there is no usable Secret Service: every call
//! must fail with `STORE_UNAVAILABLE` and a message saying what to do, within the
//! store's timeout, never hang (DESIGN §5). Each case runs in its own child
//! process, because `keyring` keeps its first connection (or failure) for the
//! life of a process.
//!
//! Unix only: a missing bus, a locked keyring and a frozen daemon are Secret
//! Service states; the Windows Credential Manager is unlocked by the logon.
#![cfg(unix)]
#![allow(clippy::panic, clippy::expect_used)] // Test code: a panic is how a test (or its helper) fails.

#[path = "support/secret_service.rs"]
mod secret_service;

use std::ffi::OsString;
use std::time::{Duration, Instant};

use regent_agent::ErrorCode;
use regent_agent::secret::secret;
use regent_agent::store::SecretStore;
use secret_service::{TestKeyring, child_phase, run_child};

const SERVICE: &str = "regent-test";
const PASSWORD: &str = "correct horse battery staple";
const TIMEOUT: Duration = Duration::from_secs(3);
/// Scheduling slack on a busy machine on top of the store's timeout.
const SLACK: Duration = Duration::from_secs(2);

fn block_on<F: std::future::Future<Output = ()>>(scenario: F) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build a runtime")
        .block_on(scenario);
}

/// Runs get, set and delete; each must fail with `STORE_UNAVAILABLE` within the
/// timeout. Returns the messages, for the caller to check.
async fn every_call_is_unavailable(store: &SecretStore) -> Vec<String> {
    let mut messages = Vec::new();
    for call in ["get", "set", "delete"] {
        let started = Instant::now();
        let result = match call {
            "get" => store.get("refresh_token").await.map(|_| ()),
            "set" => store.set("refresh_token", secret("rt-1".into())).await,
            _ => store.delete("refresh_token").await,
        };
        let elapsed = started.elapsed();
        let err = result.expect_err(&format!("{call} must fail"));
        eprintln!("{call}: {elapsed:?}: {}", err.message);
        assert_eq!(
            err.code,
            ErrorCode::StoreUnavailable,
            "{call}: {}",
            err.message
        );
        assert!(
            elapsed < TIMEOUT + SLACK,
            "{call} took {elapsed:?}: {}",
            err.message
        );
        assert!(!err.message.contains("rt-1"), "{}", err.message);
        messages.push(err.message);
    }
    messages
}

#[test]
fn keychain_without_a_session_bus_fails_fast() {
    if child_phase().is_some() {
        return block_on(async {
            let store = SecretStore::keychain(SERVICE, TIMEOUT).expect("keychain store");
            let started = Instant::now();
            let messages = every_call_is_unavailable(&store).await;
            // A missing bus is an immediate error, not a wait for the timeout.
            assert!(started.elapsed() < TIMEOUT, "took {:?}", started.elapsed());
            for message in messages {
                assert!(
                    message.starts_with("no Secret Service is running on the session bus"),
                    "{message}"
                );
                assert!(message.contains("store.kind = \"file\""), "{message}");
            }
        });
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let missing = dir.path().join("no-bus-here");
    let env = vec![
        (
            "DBUS_SESSION_BUS_ADDRESS",
            OsString::from(format!("unix:path={}", missing.display())),
        ),
        ("XDG_RUNTIME_DIR", dir.path().as_os_str().to_owned()),
    ];
    run_child("keychain_without_a_session_bus_fails_fast", "main", &env);
}

#[test]
fn keychain_on_a_bus_without_secret_service_is_unavailable() {
    if child_phase().is_some() {
        return block_on(async {
            let store = SecretStore::keychain(SERVICE, TIMEOUT).expect("keychain store");
            for message in every_call_is_unavailable(&store).await {
                assert!(
                    message.starts_with("no Secret Service is running on the session bus"),
                    "{message}"
                );
            }
        });
    }
    let home = tempfile::tempdir().expect("temporary HOME");
    let bus = TestKeyring::bus_without_secret_service(home.path());
    run_child(
        "keychain_on_a_bus_without_secret_service_is_unavailable",
        "main",
        &bus.env(),
    );
}

#[test]
fn keychain_without_a_default_collection_is_unavailable() {
    if child_phase().is_some() {
        return block_on(async {
            let store = SecretStore::keychain(SERVICE, TIMEOUT).expect("keychain store");
            // A lookup must not answer "no such secret": that would make an
            // enrolled agent believe it is not enrolled.
            for message in every_call_is_unavailable(&store).await {
                assert!(
                    message.starts_with("the keyring has no default collection"),
                    "{message}"
                );
                assert!(message.contains("store.kind = \"file\""), "{message}");
            }
        });
    }
    // Started without --unlock in an empty HOME: no login keyring, no default
    // collection.
    let home = tempfile::tempdir().expect("temporary HOME");
    let keyring = TestKeyring::start(home.path(), None);
    run_child(
        "keychain_without_a_default_collection_is_unavailable",
        "main",
        &keyring.env(),
    );
}

#[test]
fn keychain_locked_login_keyring_is_unavailable() {
    if let Some(phase) = child_phase() {
        return block_on(async move {
            let store = SecretStore::keychain(SERVICE, TIMEOUT).expect("keychain store");
            match phase.as_str() {
                "seed" => store
                    .set("refresh_token", secret("rt-0".into()))
                    .await
                    .expect("set while unlocked"),
                "locked" => {
                    let err = store.get("never_set").await.expect_err("cannot tell");
                    assert_eq!(err.code, ErrorCode::StoreUnavailable);
                    let messages = every_call_is_unavailable(&store).await;
                    for message in messages {
                        // Headless, gnome-keyring dismisses the unlock prompt at
                        // once; on a desktop the prompt would wait: the timeout.
                        assert!(
                            message.starts_with("the keyring is locked")
                                || message.contains("did not answer within"),
                            "{message}"
                        );
                    }
                }
                other => panic!("unknown phase {other}"),
            }
        });
    }
    // A login keyring with an item in it, then a new session whose daemon was
    // not given the password: the keyring exists but is locked.
    let home = tempfile::tempdir().expect("temporary HOME");
    let keyring = TestKeyring::start(home.path(), Some(PASSWORD));
    run_child(
        "keychain_locked_login_keyring_is_unavailable",
        "seed",
        &keyring.env(),
    );
    keyring.stop();
    let keyring = TestKeyring::start(home.path(), None);
    run_child(
        "keychain_locked_login_keyring_is_unavailable",
        "locked",
        &keyring.env(),
    );
}

#[test]
fn keychain_that_never_answers_times_out() {
    const SHORT: Duration = Duration::from_secs(1);
    if child_phase().is_some() {
        return block_on(async {
            let store = SecretStore::keychain(SERVICE, SHORT).expect("keychain store");
            for call in ["get", "set"] {
                let started = Instant::now();
                let result = match call {
                    "get" => store.get("refresh_token").await.map(|_| ()),
                    _ => store.set("refresh_token", secret("rt-1".into())).await,
                };
                let elapsed = started.elapsed();
                let err = result.expect_err("a frozen keyring cannot answer");
                eprintln!("{call}: {elapsed:?}: {}", err.message);
                assert_eq!(err.code, ErrorCode::StoreUnavailable);
                assert_eq!(
                    err.message,
                    "the OS keychain (service regent-test) did not answer within 1 s; it may \
                     be locked and waiting for a password prompt"
                );
                assert!(elapsed >= SHORT && elapsed < SHORT + SLACK, "{elapsed:?}");
            }
            // The stuck threads are abandoned: the runtime (and the process) still
            // ends, which `run_child` checks by waiting for the child to exit.
        });
    }
    let home = tempfile::tempdir().expect("temporary HOME");
    let keyring = TestKeyring::start(home.path(), Some(PASSWORD));
    keyring.freeze();
    run_child(
        "keychain_that_never_answers_times_out",
        "main",
        &keyring.env(),
    );
}
