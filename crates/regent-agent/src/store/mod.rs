//! Where the agent keeps what must outlive it (DESIGN §5).
//!
//! - Secrets (refresh token, client secret, auth-token id, cached access token)
//!   go to a [`SecretStore`]: the OS keychain ([`keychain`], the default) or, as an
//!   explicit choice for headless services, one `0600` JSON file ([`file`](mod@file)).
//! - Non-secret state goes to `state.json` through [`StateFile`] ([`state`]).
//! - Both files are replaced with [`write_atomic`] ([`atomic`]).
//! - Long keychain values are split over several entries (`chunked`).
//!
//! Keychain calls can block for ever (a locked keyring waiting for a password
//! prompt), so [`SecretStore`] runs every backend call on its own thread and
//! gives up after a timeout; the async runtime never waits on a keychain.

pub mod atomic;
pub(crate) mod chunked;
pub mod file;
pub mod keychain;
pub mod state;
pub mod state_dir;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use regent_proto::ErrorCode;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::secret::SecretString;

pub use atomic::write_atomic;
pub use file::FileBackend;
pub use keychain::KeychainBackend;
pub use state::StateFile;

/// Which secret store the configuration chose (`store.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The OS keychain: Secret Service, macOS Keychain or Windows Credential Manager.
    Keychain,
    /// One `0600` JSON file, for headless services without a keychain.
    File,
}

impl StoreKind {
    /// The configuration spelling: `"keychain"` or `"file"`.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Keychain => "keychain",
            StoreKind::File => "file",
        }
    }
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A place that keeps named secrets. Calls block (D-Bus, disk), so use them
/// through [`SecretStore`], which runs them off the async runtime.
pub trait SecretBackend: Send + Sync + 'static {
    /// The secret called `name`, or `None` if there is none.
    ///
    /// # Errors
    ///
    /// `STORE_UNAVAILABLE` when the store cannot be reached or read.
    fn get(&self, name: &str) -> Result<Option<SecretString>, Error>;

    /// Stores `value` under `name`, replacing any previous value. The value is
    /// durable when this returns.
    ///
    /// # Errors
    ///
    /// `STORE_UNAVAILABLE` when the store cannot be reached or written; the
    /// previous value is then kept.
    fn set(&self, name: &str, value: &SecretString) -> Result<(), Error>;

    /// Removes the secret called `name`. Removing a missing secret succeeds.
    ///
    /// # Errors
    ///
    /// `STORE_UNAVAILABLE` when the store cannot be reached or written.
    fn delete(&self, name: &str) -> Result<(), Error>;

    /// What and where the store is, for status output and error messages, e.g.
    /// `OS keychain (service regent)` or `file /var/lib/regent/secrets.json`.
    fn describe(&self) -> String;
}

/// Calls still running after their caller gave up before new ones are refused at
/// once: each holds a thread, and a locked keyring answers none of them.
const MAX_ABANDONED_CALLS: usize = 8;

/// The agent's secret store: an async facade over a [`SecretBackend`].
///
/// Every call runs on a thread of its own and is abandoned after `timeout`, so a
/// keychain stuck behind a password prompt yields `STORE_UNAVAILABLE` instead of
/// a hang. A plain thread is used rather than `spawn_blocking` because the
/// runtime waits for blocking tasks at shutdown, and a stuck call never ends.
///
/// Writes (`set`, `delete`) carry sequence numbers taken when they are called
/// (a private write-order ticket): an abandoned write that reaches the backend after a later
/// write of the same entry is dropped, so an older credential never lands
/// after a newer one.
#[derive(Clone)]
pub struct SecretStore {
    backend: Arc<dyn SecretBackend>,
    timeout: Duration,
    /// Calls that timed out and whose thread is still running.
    abandoned: Arc<AtomicUsize>,
    order: Arc<WriteOrder>,
}

/// Applies writes in the order they were asked for, whatever order their
/// threads reach the backend in (a mutex does not queue fairly, and a timed-out
/// write may still be running when the next one starts).
#[derive(Debug, Default)]
pub(crate) struct WriteOrder {
    /// The last sequence number handed out.
    issued: AtomicU64,
    /// Per entry: the latest write that reached the backend, and the latest
    /// that succeeded. Held while a write runs.
    entries: Mutex<HashMap<String, Written>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Written {
    tried: u64,
    landed: u64,
}

impl WriteOrder {
    /// The sequence number of a write asked for now.
    pub(crate) fn next(&self) -> u64 {
        self.issued.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Runs `write` (write number `seq` of `name`) unless a later write of
    /// `name` already reached the store. A write superseded that way succeeds
    /// when the later one did (its value is the newer one) and fails otherwise.
    pub(crate) fn apply(
        &self,
        name: &str,
        seq: u64,
        write: impl FnOnce() -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let written = entries.get(name).copied().unwrap_or_default();
        if written.tried > seq {
            tracing::debug!(
                entry = name,
                seq,
                "an older write arrived after a newer one; dropped"
            );
            return if written.landed > seq {
                Ok(())
            } else {
                Err(Error::new(
                    ErrorCode::StoreUnavailable,
                    format!(
                        "the write of {name} was superseded by a later write that failed; \
                         the older value was not written"
                    ),
                ))
            };
        }
        let result = write();
        let entry = entries.entry(name.to_owned()).or_default();
        entry.tried = seq;
        if result.is_ok() {
            entry.landed = seq;
        }
        result
    }
}

impl fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretStore")
            .field("backend", &self.backend.describe())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl SecretStore {
    /// The OS keychain, with entries under `service` (for example `regent`).
    /// Nothing is contacted until the first call.
    ///
    /// # Errors
    ///
    /// `STORE_UNAVAILABLE` when `service` is empty.
    pub fn keychain(service: &str, timeout: Duration) -> Result<SecretStore, Error> {
        Ok(Self::from_backend(
            Arc::new(KeychainBackend::new(service)?),
            timeout,
        ))
    }

    /// A `0600` JSON file at `path` (`store.kind = "file"`). Nothing is read or
    /// created until the first call.
    ///
    /// # Errors
    ///
    /// `STORE_UNAVAILABLE` when `path` does not name a file.
    pub fn file(path: PathBuf, timeout: Duration) -> Result<SecretStore, Error> {
        Ok(Self::from_backend(
            Arc::new(FileBackend::new(path)?),
            timeout,
        ))
    }

    /// Any backend, for example a test double.
    pub fn from_backend(backend: Arc<dyn SecretBackend>, timeout: Duration) -> SecretStore {
        SecretStore {
            backend,
            timeout,
            abandoned: Arc::new(AtomicUsize::new(0)),
            order: Arc::new(WriteOrder::default()),
        }
    }

    /// The secret called `name`, or `None` if there is none.
    ///
    /// # Errors
    ///
    /// `STORE_UNAVAILABLE` when the store cannot be reached or read, or does not
    /// answer within the timeout.
    pub async fn get(&self, name: &str) -> Result<Option<SecretString>, Error> {
        let name = name.to_owned();
        self.run(move |backend| backend.get(&name)).await
    }

    /// Stores `value` under `name`, replacing any previous value.
    ///
    /// # Errors
    ///
    /// `STORE_UNAVAILABLE` when the store cannot be reached or written, or does
    /// not answer within the timeout. After a timeout the write may still
    /// complete later.
    pub async fn set(&self, name: &str, value: SecretString) -> Result<(), Error> {
        let name = name.to_owned();
        let seq = self.order.next();
        let order = Arc::clone(&self.order);
        self.run(move |backend| order.apply(&name, seq, || backend.set(&name, &value)))
            .await
    }

    /// Removes the secret called `name`; removing a missing secret succeeds.
    ///
    /// # Errors
    ///
    /// `STORE_UNAVAILABLE` when the store cannot be reached or written, or does
    /// not answer within the timeout.
    pub async fn delete(&self, name: &str) -> Result<(), Error> {
        let name = name.to_owned();
        let seq = self.order.next();
        let order = Arc::clone(&self.order);
        self.run(move |backend| order.apply(&name, seq, || backend.delete(&name)))
            .await
    }

    /// What and where the store is (see [`SecretBackend::describe`]).
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// Runs `op` on a new thread and waits for it at most `self.timeout`.
    async fn run<T, F>(&self, op: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&dyn SecretBackend) -> Result<T, Error> + Send + 'static,
    {
        let abandoned = self.abandoned.load(Ordering::Acquire);
        if abandoned >= MAX_ABANDONED_CALLS {
            return Err(Error::new(
                ErrorCode::StoreUnavailable,
                format!(
                    "the {} has not answered {abandoned} earlier calls; it may be locked and \
                     waiting for a password prompt",
                    self.describe()
                ),
            ));
        }
        let (answer_tx, answer_rx) = tokio::sync::oneshot::channel();
        let backend = Arc::clone(&self.backend);
        let call = Arc::new(AtomicU8::new(CALL_RUNNING));
        let thread_call = Arc::clone(&call);
        let thread_abandoned = Arc::clone(&self.abandoned);
        std::thread::Builder::new()
            .name("regent-store".into())
            .spawn(move || {
                let answer = op(backend.as_ref());
                let finished = thread_call.compare_exchange(
                    CALL_RUNNING,
                    CALL_DONE,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                if finished.is_err() {
                    // The caller gave up on this call and counted it: uncount it.
                    thread_abandoned.fetch_sub(1, Ordering::AcqRel);
                }
                let _ = answer_tx.send(answer);
            })
            .map_err(|e| {
                Error::new(
                    ErrorCode::StoreUnavailable,
                    format!(
                        "cannot start a thread to reach the {}: {e}",
                        self.describe()
                    ),
                )
            })?;
        match tokio::time::timeout(self.timeout, answer_rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(Error::new(
                ErrorCode::StoreUnavailable,
                format!(
                    "the call to the {} failed unexpectedly (its thread panicked)",
                    self.describe()
                ),
            )),
            Err(_) => {
                // Counted before it is marked, so the thread never uncounts first.
                self.abandoned.fetch_add(1, Ordering::AcqRel);
                let marked = call.compare_exchange(
                    CALL_RUNNING,
                    CALL_ABANDONED,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                if marked.is_err() {
                    // It finished just now; the answer is lost but nothing is stuck.
                    self.abandoned.fetch_sub(1, Ordering::AcqRel);
                }
                Err(Error::new(
                    ErrorCode::StoreUnavailable,
                    format!(
                        "the {} did not answer within {}; it may be locked and waiting for a \
                         password prompt",
                        self.describe(),
                        human_duration(self.timeout)
                    ),
                ))
            }
        }
    }
}

/// States of one call, shared by the caller and the call's thread.
const CALL_RUNNING: u8 = 0;
const CALL_DONE: u8 = 1;
const CALL_ABANDONED: u8 = 2;

/// `5 s`, `1.5 s` or `200 ms`, for messages.
fn human_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{} s", d.as_secs())
    } else if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// Creates the directory that will hold `file`, owner-only (`0700`), if missing.
/// An existing directory is left as it is.
pub(crate) fn ensure_private_dir(file: &Path) -> Result<(), Error> {
    let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    atomic::create_dir_with_mode(dir, 0o700).map_err(|e| {
        Error::new(
            ErrorCode::StoreUnavailable,
            format!("cannot create the directory {}: {e}", dir.display()),
        )
    })
}

// The permission tests that use these are Unix-only.
#[cfg(all(test, unix))]
pub(crate) mod test_support {
    //! Helpers for the store's unit tests.

    /// True when the tests run as root, where permission checks do not apply.
    pub(crate) fn running_as_root() -> bool {
        #[cfg(unix)]
        {
            rustix::process::geteuid().is_root()
        }
        #[cfg(not(unix))]
        {
            false
        }
    }

    /// Reports a test that cannot run here, so the skip is visible in the output.
    pub(crate) fn skip(reason: &str) {
        eprintln!("skipped: {reason}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::{ExposeSecret, secret};
    use std::sync::Mutex;
    use std::sync::mpsc;
    use std::time::Instant;

    /// Answers every call only when the test says so, like a keyring behind a prompt.
    struct GatedBackend {
        gate: Mutex<mpsc::Receiver<()>>,
    }

    impl SecretBackend for GatedBackend {
        fn get(&self, _name: &str) -> Result<Option<SecretString>, Error> {
            let gate = self.gate.lock().unwrap();
            // Err once the test drops the sender: then answer at once.
            let _ = gate.recv();
            Ok(Some(secret("opened".into())))
        }
        fn set(&self, name: &str, _value: &SecretString) -> Result<(), Error> {
            self.get(name).map(|_| ())
        }
        fn delete(&self, name: &str) -> Result<(), Error> {
            self.get(name).map(|_| ())
        }
        fn describe(&self) -> String {
            "OS keychain (service test)".into()
        }
    }

    #[test]
    fn store_kind_uses_config_spelling() {
        assert_eq!(
            serde_json::to_string(&StoreKind::Keychain).unwrap(),
            "\"keychain\""
        );
        let kind: StoreKind = serde_json::from_str("\"file\"").unwrap();
        assert_eq!(kind, StoreKind::File);
        assert!(serde_json::from_str::<StoreKind>("\"File\"").is_err());
        assert_eq!(StoreKind::File.to_string(), "file");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(Duration::from_secs(5)), "5 s");
        assert_eq!(human_duration(Duration::from_millis(200)), "200 ms");
        assert_eq!(human_duration(Duration::from_millis(1500)), "1.5 s");
    }

    #[tokio::test]
    async fn a_call_that_never_answers_times_out() {
        let (release, gate) = mpsc::channel();
        let store = SecretStore::from_backend(
            Arc::new(GatedBackend {
                gate: Mutex::new(gate),
            }),
            Duration::from_millis(200),
        );
        let started = Instant::now();
        let err = store.get("refresh_token").await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(err.code, ErrorCode::StoreUnavailable);
        assert_eq!(
            err.message,
            "the OS keychain (service test) did not answer within 200 ms; it may be locked \
             and waiting for a password prompt"
        );
        let err = store
            .set("refresh_token", secret("s3cr3t-value".into()))
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::StoreUnavailable);
        assert!(!err.message.contains("s3cr3t"));
        drop(release);
    }

    #[tokio::test]
    async fn stuck_calls_are_bounded_and_recover_when_the_store_answers() {
        let (release, gate) = mpsc::channel();
        let store = SecretStore::from_backend(
            Arc::new(GatedBackend {
                gate: Mutex::new(gate),
            }),
            Duration::from_millis(50),
        );
        for _ in 0..MAX_ABANDONED_CALLS {
            assert!(store.get("x").await.is_err());
        }
        let started = Instant::now();
        let err = store.get("x").await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_millis(40),
            "refused at once"
        );
        assert!(
            err.message.contains("has not answered 8 earlier calls"),
            "{}",
            err.message
        );

        // Once the keyring answers, the abandoned threads end and calls work again.
        drop(release);
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.abandoned.load(Ordering::Acquire) > 0 {
            assert!(Instant::now() < deadline, "abandoned calls never ended");
            tokio::task::yield_now().await;
        }
        let value = store.get("x").await.unwrap().unwrap();
        assert_eq!(value.expose_secret(), "opened");
    }

    #[tokio::test]
    async fn many_concurrent_calls_that_answer_are_not_refused() {
        let (release, gate) = mpsc::channel::<()>();
        drop(release); // Every call answers at once.
        let store = SecretStore::from_backend(
            Arc::new(GatedBackend {
                gate: Mutex::new(gate),
            }),
            Duration::from_secs(10),
        );
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..4 * MAX_ABANDONED_CALLS {
            let store = store.clone();
            calls.spawn(async move { store.get("x").await });
        }
        while let Some(answer) = calls.join_next().await {
            assert!(answer.unwrap().unwrap().is_some());
        }
    }

    #[tokio::test]
    async fn a_panicking_backend_is_an_error_not_a_crash() {
        struct Panics;
        impl SecretBackend for Panics {
            fn get(&self, _: &str) -> Result<Option<SecretString>, Error> {
                panic!("backend bug")
            }
            fn set(&self, _: &str, _: &SecretString) -> Result<(), Error> {
                Ok(())
            }
            fn delete(&self, _: &str) -> Result<(), Error> {
                Ok(())
            }
            fn describe(&self) -> String {
                "test store".into()
            }
        }
        let store = SecretStore::from_backend(Arc::new(Panics), Duration::from_secs(5));
        let err = store.get("x").await.unwrap_err();
        assert_eq!(err.code, ErrorCode::StoreUnavailable);
        assert!(err.message.contains("panicked"), "{}", err.message);
        assert_eq!(
            format!("{store:?}"),
            "SecretStore { backend: \"test store\", timeout: 5s }"
        );
    }

    /// Regression (issue 18, item 2): writes abandoned after a timeout raced
    /// later writes of the same entry for the backend's (unfair) lock, so an
    /// older credential could land after a newer one. A write that reaches the
    /// store after a later one of the same entry is now dropped.
    #[test]
    fn an_older_write_never_lands_after_a_newer_one() {
        let order = WriteOrder::default();
        let stored = Mutex::new(Vec::new());
        let write = |value: &'static str| {
            let stored = &stored;
            move || {
                stored.lock().unwrap().push(value);
                Ok(())
            }
        };
        let old = order.next();
        let new = order.next();
        let other = order.next();
        // The newer write's thread gets there first.
        order.apply("slot-0.credential", new, write("new")).unwrap();
        // The older one arrives late: dropped, and it reports the newer
        // value's success (that value is in the store).
        order.apply("slot-0.credential", old, write("old")).unwrap();
        // Another entry is ordered on its own.
        order
            .apply("slot-1.credential", other, write("other"))
            .unwrap();
        assert_eq!(*stored.lock().unwrap(), ["new", "other"]);

        // When the newer write failed, the late older one is not written
        // either, and says so.
        let old = order.next();
        let new = order.next();
        let failed = order.apply("slot-0.credential", new, || {
            Err(Error::new(ErrorCode::StoreUnavailable, "read-only"))
        });
        assert!(failed.is_err());
        let late = order.apply("slot-0.credential", old, write("late"));
        assert_eq!(late.unwrap_err().code, ErrorCode::StoreUnavailable);
        assert_eq!(*stored.lock().unwrap(), ["new", "other"]);
        // In order, every write is applied.
        let next = order.next();
        order
            .apply("slot-0.credential", next, write("next"))
            .unwrap();
        assert_eq!(*stored.lock().unwrap(), ["new", "other", "next"]);
    }

    /// Through the store: a write that timed out and completes later is
    /// overtaken by nothing older, and a later write is applied after it.
    #[tokio::test]
    async fn a_timed_out_write_and_a_later_one_land_in_order() {
        struct Recording {
            gate: Mutex<mpsc::Receiver<()>>,
            values: Mutex<Vec<String>>,
        }
        impl SecretBackend for Recording {
            fn get(&self, _: &str) -> Result<Option<SecretString>, Error> {
                Ok(None)
            }
            fn set(&self, _: &str, value: &SecretString) -> Result<(), Error> {
                if value.expose_secret() == "first" {
                    let _ = self.gate.lock().unwrap().recv();
                }
                self.values
                    .lock()
                    .unwrap()
                    .push(value.expose_secret().to_owned());
                Ok(())
            }
            fn delete(&self, _: &str) -> Result<(), Error> {
                Ok(())
            }
            fn describe(&self) -> String {
                "test store".into()
            }
        }
        let (release, gate) = mpsc::channel();
        let backend = Arc::new(Recording {
            gate: Mutex::new(gate),
            values: Mutex::new(Vec::new()),
        });
        let store = SecretStore::from_backend(
            Arc::clone(&backend) as Arc<dyn SecretBackend>,
            Duration::from_millis(100),
        );
        assert!(store.set("x", secret("first".into())).await.is_err());
        assert!(store.set("x", secret("second".into())).await.is_err());
        drop(release);
        let deadline = Instant::now() + Duration::from_secs(10);
        while backend.values.lock().unwrap().len() < 2 {
            assert!(
                Instant::now() < deadline,
                "the abandoned writes never ended"
            );
            tokio::task::yield_now().await;
        }
        assert_eq!(*backend.values.lock().unwrap(), ["first", "second"]);
    }

    #[test]
    fn private_dir_is_created_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a").join("b").join("secrets.json");
        ensure_private_dir(&file).unwrap();
        assert!(dir.path().join("a/b").is_dir());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("a/b"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700);
        }
    }
}
