//! What the agent reads back at start: `state.json`, the secrets file, keychain
//! entries and the stored credential inside them. A damaged or planted file is
//! hostile input too.
//!
//! Input: a mode line, then the content:
//! - `state.json`: the state file's bytes.
//! - `secrets.json`: the secrets file's bytes (written `0600` so it is read).
//! - `keychain`: keychain entries, one `account=value` a line.
//! - `credential`: one stored credential entry's value.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use regent_proto::ErrorCode;
use serde_json::Value;
use zeroize::Zeroizing;

use super::{mode, rotate_at};
use crate::agent::PersistentState;
use crate::credential::{Ledger, StoredCredential};
use crate::error::Error;
use crate::secret::{ExposeSecret, SecretString, secret};
use crate::store::chunked::{Chunked, EntryStore};
use crate::store::{FileBackend, SecretBackend, StateFile};

const MODES: &[&str] = &["state.json", "secrets.json", "keychain", "credential"];

/// The entry the agent reads first at start.
const CREDENTIAL: &str = "slot-0.credential";

/// Loads `data` as the stored file or entry named by its mode line, using
/// `scratch` (an existing private directory) for files, and checks the outcome.
pub fn store_file(data: &[u8], scratch: &Path) {
    let (m, content) = mode(data, MODES);
    match m {
        0 => state_json(content, scratch),
        1 => secrets_json(content, scratch),
        2 => keychain(content),
        _ => credential(&String::from_utf8_lossy(content)),
    }
}

fn state_json(content: &[u8], scratch: &Path) {
    let path = scratch.join("state.json");
    std::fs::write(&path, content).unwrap();
    let file = StateFile::new(path.clone());
    match file.load::<PersistentState>() {
        Ok(None) => panic!("an existing state file read as missing"),
        Ok(Some(state)) => {
            // Saved and read back, the state is the same.
            let again = StateFile::new(scratch.join("state-saved.json"));
            again.save(&state).unwrap();
            let back = again.load::<PersistentState>().unwrap().unwrap();
            assert_eq!(
                serde_json::to_value(&back).unwrap(),
                serde_json::to_value(&state).unwrap()
            );
        }
        Err(e) => {
            assert_eq!(e.code, ErrorCode::StoreUnavailable);
            assert!(e.message.contains(&path.display().to_string()));
            assert!(e.message.contains("damaged"), "{}", e.message);
            // Left as it was, for the administrator to look at.
            assert_eq!(std::fs::read(&path).unwrap(), content);
        }
    }
}

fn secrets_json(content: &[u8], scratch: &Path) {
    let path = scratch.join("secrets.json");
    write_private(&path, content);
    let store = FileBackend::new(path.clone()).unwrap();
    match store.get(CREDENTIAL) {
        Ok(value) => {
            if let Some(value) = &value {
                credential(value.expose_secret());
            }
            // Writing another entry keeps this one as it was.
            store
                .set("slot-1.registration", &secret("r".into()))
                .unwrap();
            let after = store.get(CREDENTIAL).unwrap();
            assert_eq!(
                after.as_ref().map(ExposeSecret::expose_secret),
                value.as_ref().map(ExposeSecret::expose_secret)
            );
        }
        Err(e) => {
            assert_eq!(e.code, ErrorCode::StoreUnavailable);
            assert_eq!(std::fs::read(&path).unwrap(), content, "changed on error");
            // The message gives a position, never the file's strings.
            write_private(&path, &rotate_strings(content));
            let rotated = FileBackend::new(path).unwrap().get(CREDENTIAL);
            assert_eq!(rotated.err(), Some(e), "the error shows the file's content");
        }
    }
}

fn write_private(path: &Path, content: &[u8]) {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path).unwrap();
    file.write_all(content).unwrap();
}

/// Rotates the letters and digits inside JSON string literals, escapes left
/// alone, so the file's structure (and any syntax error's position) is unchanged.
fn rotate_strings(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut in_string = false;
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        match b {
            b'"' => {
                in_string = !in_string;
                out.push(b);
                i += 1;
            }
            b'\\' if in_string => {
                let n = if data.get(i + 1) == Some(&b'u') { 6 } else { 2 };
                let end = (i + n).min(data.len());
                out.extend_from_slice(&data[i..end]);
                i = end;
            }
            _ if in_string && b.is_ascii_alphanumeric() => {
                let mut s = [0; 4];
                let rotated = super::rotate(char::from(b).encode_utf8(&mut s));
                out.extend_from_slice(rotated.as_bytes());
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// Keychain entries in memory.
#[derive(Debug, Default)]
struct Keychain(Mutex<BTreeMap<String, String>>);

impl EntryStore for Keychain {
    fn read(&self, account: &str) -> Result<Option<Zeroizing<String>>, Error> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .get(account)
            .cloned()
            .map(Zeroizing::new))
    }
    fn write(&self, account: &str, value: &str) -> Result<(), Error> {
        self.0
            .lock()
            .unwrap()
            .insert(account.to_owned(), value.to_owned());
        Ok(())
    }
    fn remove(&self, account: &str) -> Result<(), Error> {
        self.0.lock().unwrap().remove(account);
        Ok(())
    }
    fn describe(&self) -> String {
        "fuzz keychain".into()
    }
}

fn keychain(content: &[u8]) {
    let entries = Keychain::default();
    for line in String::from_utf8_lossy(content).split('\n') {
        if let Some((account, value)) = line.split_once('=') {
            entries.write(account, value).unwrap();
        }
    }
    let store = Chunked::new(entries);
    match store.get(CREDENTIAL) {
        Ok(value) => {
            if let Some(value) = &value {
                credential(value.expose_secret());
            }
            // Any value, even one that looks like a chunk header, round-trips;
            // and replacing it leaves no chunk behind that a reader could use.
            let value = value.unwrap_or_else(|| secret(String::new()));
            let long = secret(format!("{}{}", value.expose_secret(), "x".repeat(4500)));
            for v in [&long, &value] {
                match store.set(CREDENTIAL, v) {
                    Ok(()) => assert_eq!(
                        store
                            .get(CREDENTIAL)
                            .unwrap()
                            .map(|s| s.expose_secret().to_owned()),
                        Some(v.expose_secret().to_owned())
                    ),
                    Err(e) => assert_eq!(e.code, ErrorCode::StoreUnavailable),
                }
            }
        }
        Err(e) => assert_eq!(e.code, ErrorCode::StoreUnavailable),
    }
}

/// The credential a slot keeps: parsed, re-encoded and its cached token.
fn credential(value: &str) {
    match StoredCredential::parse(&secret(value.to_owned())) {
        Ok(c) => {
            let encoded = c.to_secret().unwrap();
            let again = StoredCredential::parse(&encoded).unwrap();
            assert_eq!(
                again.to_secret().unwrap().expose_secret(),
                encoded.expose_secret()
            );
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
            for at in [SystemTime::UNIX_EPOCH, now] {
                if let Some(grant) = c.cached_grant(at) {
                    assert!(grant.expires_at > at);
                    // Stored times past the year 9999 never become instants
                    // (`UNIX_EPOCH + ms` panicked on Windows: issue 13).
                    let latest = regent_proto::time::LATEST_UNIX_MS;
                    assert!(regent_proto::time::to_unix_ms(grant.expires_at) <= latest);
                    assert!(
                        grant
                            .refresh_expires_at
                            .is_none_or(|t| regent_proto::time::to_unix_ms(t) <= latest)
                    );
                    let _ = (grant.lifetime(), grant.remaining(at));
                }
            }
            Ledger::default().load(0, &c.issued);
        }
        Err(e) => {
            assert_eq!(e.code, ErrorCode::StoreUnavailable);
            secrets_do_not_show(value, &e);
        }
    }
}

/// Rotating the secret fields of an unreadable credential changes no message.
fn secrets_do_not_show(value: &str, error: &Error) {
    let Ok(original @ Value::Object(_)) = serde_json::from_str::<Value>(value) else {
        return;
    };
    let mut rotated = original.clone();
    let changed = [
        &["refresh_token"][..],
        &["client_secret"],
        &["access", "token"],
    ]
    .iter()
    .map(|p| rotate_at(&mut rotated, p))
    .fold(false, |a, b| a | b);
    if !changed {
        return;
    }
    let reparse = |v: &Value| {
        StoredCredential::parse(&SecretString::from(serde_json::to_string(v).unwrap())).err()
    };
    // Re-encoding drops duplicate keys, so the original may now parse; what
    // matters is that the rotation changes nothing.
    assert_eq!(
        reparse(&original),
        reparse(&rotated),
        "the error shows a stored secret: {error:?}"
    );
}
