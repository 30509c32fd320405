//! Crash safety of chunked keychain values (issue 9 crash matrix, the
//! `mid-chunk-write` point): a process SIGKILLed after writing some chunks of a
//! new value, before switching the head entry, leaves the previous value whole
//! and readable; the next write succeeds and leaves no stray chunk behind.
//! Runs against a real Secret Service (see `support/secret_service.rs`), or on
//! Windows the Credential Manager, the writer ended by TerminateProcess.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]
// Crash points exist only with the `crash-points` feature (see `regent_agent::crash`).
#![cfg(feature = "crash-points")]

#[path = "support/secret_service.rs"]
mod secret_service;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use regent_agent::crash::CRASH_POINT_ENV;
use regent_agent::secret::{ExposeSecret, secret};
use regent_agent::store::SecretStore;
use secret_service::{TestKeyring, child_phase, run_child, service};

const TEST: &str = "killed_mid_chunk_write_keeps_the_previous_value";
const SERVICE: &str = "regent-crash-test";
const NAME: &str = "slot-0.credential";
const PASSWORD: &str = "crash matrix";
/// Must match `support/secret_service.rs`.
const PHASE_VAR: &str = "REGENT_TEST_KEYCHAIN_PHASE";

/// A 3,000-character value (three chunks) that is not a repetition.
fn long_value(seed: u32) -> String {
    (0..3000u32)
        .map(|i| char::from(b'!' + ((i.wrapping_mul(7919) ^ seed) % 90) as u8))
        .collect()
}

fn raw_entry(account: &str) -> Option<String> {
    let entry = keyring::Entry::new(&service(SERVICE), account).expect("keyring entry");
    match entry.get_password() {
        Ok(value) => Some(value),
        Err(keyring::Error::NoEntry) => None,
        Err(e) => panic!("raw read of {account}: {e}"),
    }
}

fn child(phase: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = SecretStore::keychain(&service(SERVICE), Duration::from_secs(10)).unwrap();
        let get = || async {
            store
                .get(NAME)
                .await
                .unwrap()
                .map(|v| v.expose_secret().to_owned())
        };
        match phase {
            "write-old" => store.set(NAME, secret(long_value(1))).await.unwrap(),
            "write-new" => store.set(NAME, secret(long_value(2))).await.unwrap(),
            "read-old" => {
                assert!(
                    get().await == Some(long_value(1)),
                    "the previous value was damaged"
                );
                assert_eq!(raw_entry(NAME).as_deref(), Some("regent-chunked:v1:1:3"));
            }
            "read-new" => {
                assert!(get().await == Some(long_value(2)), "the new value is wrong");
                assert_eq!(raw_entry(NAME).as_deref(), Some("regent-chunked:v1:2:3"));
                // The old generation's chunks are gone; no stray chunk remains.
                for index in 1..=3 {
                    assert_eq!(raw_entry(&format!("{NAME}#1.{index}")), None);
                }
                assert_eq!(raw_entry(&format!("{NAME}#2.4")), None);
            }
            other => panic!("unknown phase {other}"),
        }
    });
}

#[test]
fn killed_mid_chunk_write_keeps_the_previous_value() {
    if let Some(phase) = child_phase() {
        return child(&phase);
    }
    let home = tempfile::tempdir().unwrap();
    let keyring = TestKeyring::start(home.path(), Some(PASSWORD));
    let env = keyring.env();
    run_child(TEST, "write-old", &env);
    // Killed after each chunk of the new value: 1, 2, and all 3 (head not switched).
    for n in 1..=3 {
        let mut writer = Command::new(std::env::current_exe().unwrap())
            .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(PHASE_VAR, "write-new")
            .env(CRASH_POINT_ENV, format!("mid-chunk-write@{n}"))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = writer.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("regent: crash point mid-chunk-write reached") {
                    let _ = tx.send(line);
                    return;
                }
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the writer reached the crash point");
        assert!(line.contains(&format!("part {n} of 3 written")), "{line}");
        writer.kill().unwrap(); // SIGKILL; TerminateProcess on Windows
        writer.wait().unwrap();
        run_child(TEST, "read-old", &env);
    }
    run_child(TEST, "write-new", &env);
    run_child(TEST, "read-new", &env);
}
