//! The OS keychain secret store, through `keyring` 4: Secret Service on Linux
//! (pure-Rust zbus), Keychain on macOS, Credential Manager on Windows (DESIGN §5).
//! Entries live under one service name (`regent`), one account per secret name;
//! values longer than 1,000 UTF-16 units are split over several entries to fit
//! Windows' limit (see `store/chunked.rs`).
//!
//! A Secret Service without a default collection answers every lookup with "no
//! entry", so the first "no entry" is confirmed by writing and removing a probe
//! entry (`#probe`) once; otherwise an enrolled agent would think it is not.
//!
//! `keyring` 4's `Entry::new` connects to the platform store once per process,
//! on first use, and keeps that connection (and that failure) for the life of the
//! process: a Secret Service that appears later is not seen until a restart.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use regent_proto::ErrorCode;
use zeroize::{Zeroize, Zeroizing};

use crate::error::Error;
use crate::secret::SecretString;
use crate::store::SecretBackend;
use crate::store::chunked::{Chunked, EntryStore};

/// The OS keychain as a [`SecretBackend`], with chunking of long values.
#[derive(Debug)]
pub struct KeychainBackend {
    chunked: Chunked<OsKeychain>,
}

impl KeychainBackend {
    /// Entries under `service` (for example `regent`). Nothing is contacted until
    /// the first call.
    ///
    /// # Errors
    ///
    /// `STORE_UNAVAILABLE` when `service` is empty.
    pub fn new(service: &str) -> Result<KeychainBackend, Error> {
        if service.is_empty() {
            return Err(Error::new(
                ErrorCode::StoreUnavailable,
                "the keychain service name is empty; set a name such as \"regent\"",
            ));
        }
        Ok(KeychainBackend {
            chunked: Chunked::new(OsKeychain {
                service: service.to_owned(),
                writable: AtomicBool::new(false),
            }),
        })
    }
}

impl SecretBackend for KeychainBackend {
    fn get(&self, name: &str) -> Result<Option<SecretString>, Error> {
        self.chunked.get(name)
    }

    fn set(&self, name: &str, value: &SecretString) -> Result<(), Error> {
        self.chunked.set(name, value)
    }

    fn delete(&self, name: &str) -> Result<(), Error> {
        self.chunked.delete(name)
    }

    fn describe(&self) -> String {
        self.chunked.entries().describe()
    }
}

/// The platform keychain through `keyring`'s default store.
struct OsKeychain {
    service: String,
    /// Set once a probe entry could be written: from then on "no entry" is believed.
    writable: AtomicBool,
}

impl fmt::Debug for OsKeychain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Whether `keyring` talks to a Secret Service here (the platforms where a
/// missing default collection looks like an empty store).
const USES_SECRET_SERVICE: bool = cfg!(all(
    unix,
    not(any(
        target_os = "macos",
        target_os = "ios",
        target_os = "android"
    ))
));

/// Account of the probe entry; `#` keeps it apart from every secret name.
const PROBE_ACCOUNT: &str = "#probe";

impl OsKeychain {
    /// Makes sure the keychain can hold secrets, once per backend. A Secret
    /// Service without a default collection (gnome-keyring started headless
    /// without `--unlock`) answers every lookup with "no entry"; believing it
    /// would make an enrolled agent think it is not enrolled.
    fn check_writable(&self) -> Result<(), Error> {
        if !USES_SECRET_SERVICE || self.writable.load(Ordering::Acquire) {
            return Ok(());
        }
        let probe = self.entry(PROBE_ACCOUNT)?;
        probe
            .set_password("probe")
            .map_err(|e| self.error(PROBE_ACCOUNT, e))?;
        match probe.delete_credential() {
            Ok(()) | Err(keyring::Error::NoEntry) => {}
            Err(e) => return Err(self.error(PROBE_ACCOUNT, e)),
        }
        self.writable.store(true, Ordering::Release);
        Ok(())
    }

    fn entry(&self, account: &str) -> Result<keyring::Entry, Error> {
        keyring::Entry::new(&self.service, account).map_err(|e| self.error(account, e))
    }

    /// Maps a `keyring` error to `STORE_UNAVAILABLE` with a message that says what
    /// to do. The error's `Debug` output is never used: some variants carry the
    /// secret's bytes, which are zeroized here.
    fn error(&self, account: &str, err: keyring::Error) -> Error {
        let message = match err {
            keyring::Error::NoDefaultStore => {
                let detail = match keyring::Entry::store_status() {
                    Err(e) => e.to_string(),
                    Ok(()) => "no default credential store".to_owned(),
                };
                no_store_message(&detail)
            }
            keyring::Error::NoStorageAccess(e) => {
                let detail = e.to_string();
                // secret-service's NoResult: there is no default collection to use.
                if detail.contains("result not returned") {
                    format!(
                        "the keyring has no default collection (a Secret Service started \
                         without unlocking a login keyring); log in to the desktop, or use \
                         store.kind = \"file\" for a headless service ({}: {detail})",
                        self.describe()
                    )
                } else {
                    format!(
                        "the keyring is locked; unlock it (log in to the desktop) or use \
                         store.kind = \"file\" for a headless service ({}: {detail})",
                        self.describe()
                    )
                }
            }
            keyring::Error::PlatformFailure(e) => {
                let detail = e.to_string();
                if means_no_secret_service(&detail) {
                    no_store_message(&detail)
                } else {
                    format!(
                        "the {} failed on entry {account}: {detail}",
                        self.describe()
                    )
                }
            }
            keyring::Error::BadEncoding(mut bytes) => {
                bytes.zeroize();
                format!(
                    "the entry {account} in the {} is not UTF-8 text; remove it (regent \
                     unenroll) and enroll again",
                    self.describe()
                )
            }
            keyring::Error::BadDataFormat(mut bytes, e) => {
                bytes.zeroize();
                format!(
                    "the entry {account} in the {} is malformed ({e}); remove it (regent \
                     unenroll) and enroll again",
                    self.describe()
                )
            }
            keyring::Error::Ambiguous(items) => format!(
                "{} items in the {} match the entry {account}; remove the extra ones",
                items.len(),
                self.describe()
            ),
            // Display of the remaining variants carries no secret.
            other => format!("the {} failed on entry {account}: {other}", self.describe()),
        };
        Error::new(ErrorCode::StoreUnavailable, message)
    }
}

/// Whether a platform failure means there is no Secret Service to talk to.
fn means_no_secret_service(detail: &str) -> bool {
    [
        "no secret service provider",
        "ServiceUnknown",
        "NameHasNoOwner",
        "No such file or directory",
        "Connection refused",
    ]
    .iter()
    .any(|needle| detail.contains(needle))
}

#[cfg(all(
    unix,
    not(any(target_os = "macos", target_os = "ios", target_os = "android"))
))]
fn no_store_message(detail: &str) -> String {
    format!(
        "no Secret Service is running on the session bus (is gnome-keyring or KWallet \
         running? for a headless system service set store.kind = \"file\"): {detail}"
    )
}

#[cfg(not(all(
    unix,
    not(any(target_os = "macos", target_os = "ios", target_os = "android"))
)))]
fn no_store_message(detail: &str) -> String {
    format!(
        "the OS keychain cannot be opened (for a headless system service set \
         store.kind = \"file\"): {detail}"
    )
}

impl EntryStore for OsKeychain {
    fn read(&self, account: &str) -> Result<Option<Zeroizing<String>>, Error> {
        match self.entry(account)?.get_password() {
            Ok(value) => Ok(Some(Zeroizing::new(value))),
            Err(keyring::Error::NoEntry) => self.check_writable().map(|()| None),
            Err(e) => Err(self.error(account, e)),
        }
    }

    fn write(&self, account: &str, value: &str) -> Result<(), Error> {
        let entry = self.entry(account)?;
        match entry.set_password(value) {
            Ok(()) => Ok(()),
            // Duplicates (left by another tool or a race): replace them all by one.
            Err(keyring::Error::Ambiguous(items)) => {
                for item in items {
                    match item.delete_credential() {
                        Ok(()) | Err(keyring::Error::NoEntry) => {}
                        Err(e) => return Err(self.error(account, e)),
                    }
                }
                entry
                    .set_password(value)
                    .map_err(|e| self.error(account, e))
            }
            Err(e) => Err(self.error(account, e)),
        }
    }

    fn remove(&self, account: &str) -> Result<(), Error> {
        match self.entry(account)?.delete_credential() {
            Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
            Err(keyring::Error::Ambiguous(items)) => {
                for item in items {
                    match item.delete_credential() {
                        Ok(()) | Err(keyring::Error::NoEntry) => {}
                        Err(e) => return Err(self.error(account, e)),
                    }
                }
                Ok(())
            }
            Err(e) => Err(self.error(account, e)),
        }
    }

    fn describe(&self) -> String {
        format!("OS keychain (service {})", self.service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_never_carry_secret_bytes() {
        let keychain = OsKeychain {
            service: "regent".into(),
            writable: AtomicBool::new(false),
        };
        let err = keychain.error("t", keyring::Error::BadEncoding(b"hunter2\xff".to_vec()));
        assert!(!err.message.contains("hunter2"));
        assert!(!format!("{err:?}").contains("104, 117")); // "hu" as bytes
        assert!(
            err.message.contains("OS keychain (service regent)"),
            "{}",
            err.message
        );
    }
}
