//! The file secret store (`store.kind = "file"`): the explicit choice for
//! headless system services that have no keychain (DESIGN §5). All secrets live
//! in one JSON object (name → value) in a single `0600` file, replaced atomically
//! on every change. The file is refused when other users could read it, because
//! then the secrets in it are no longer secret.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use regent_proto::ErrorCode;
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use crate::error::Error;
use crate::secret::{ExposeSecret, SecretString, secret};
use crate::store::atomic::{dir_of, remove_stale_temp_files, write_atomic, write_fix_hint};
use crate::store::{SecretBackend, ensure_private_dir};

/// Mode of the secrets file: owner read/write only.
const SECRETS_FILE_MODE: u32 = 0o600;

/// Secrets kept in one `0600` JSON file. Every call reads the file, so changes
/// made by another process (for example `regent unenroll`) are seen at once;
/// every change is written through before the call returns.
#[derive(Debug)]
pub struct FileBackend {
    path: PathBuf,
    /// Serializes read-modify-write cycles within this process.
    lock: Mutex<()>,
    /// Set once temporary files left by a killed writer were looked for.
    swept: AtomicBool,
}

impl FileBackend {
    /// A file store at `path`. Nothing is read or created until the first call.
    ///
    /// # Errors
    ///
    /// `STORE_UNAVAILABLE` when `path` does not name a file.
    pub fn new(path: PathBuf) -> Result<FileBackend, Error> {
        if path.file_name().is_none() {
            return Err(Error::new(
                ErrorCode::StoreUnavailable,
                format!(
                    "the secrets file path {} does not name a file",
                    path.display()
                ),
            ));
        }
        Ok(FileBackend {
            path,
            lock: Mutex::new(()),
            swept: AtomicBool::new(false),
        })
    }

    /// Where the secrets are kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads every secret; a missing file holds none. The first call also
    /// removes temporary copies that a writer killed mid-write left behind:
    /// they may hold secrets.
    fn load(&self) -> Result<Entries, Error> {
        if !self.swept.swap(true, Ordering::AcqRel) {
            let removed = remove_stale_temp_files(&self.path);
            if removed > 0 {
                tracing::info!(
                    removed,
                    path = %self.path.display(),
                    "removed temporary files left by an interrupted write"
                );
            }
        }
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Entries::default()),
            // Windows refuses to open a directory ("Access denied"): say what is wrong.
            Err(_) if self.path.is_dir() => {
                return Err(self.error(format!(
                    "{} is a directory, not a regular file; point store.path at a file",
                    self.path.display()
                )));
            }
            Err(e) => return Err(self.error(format!("cannot open {}: {e}", self.path.display()))),
        };
        let meta = file
            .metadata()
            .map_err(|e| self.error(format!("cannot inspect {}: {e}", self.path.display())))?;
        if !meta.is_file() {
            return Err(self.error(format!(
                "{} is not a regular file; point store.path at a file",
                self.path.display()
            )));
        }
        self.check_private(&meta)?;
        // Sized up front so the buffer holding the plaintext is never reallocated
        // (a reallocation would leave a copy behind that nothing zeroizes).
        let len = usize::try_from(meta.len()).unwrap_or(0);
        let mut bytes = Zeroizing::new(Vec::with_capacity(len.saturating_add(1)));
        file.read_to_end(&mut bytes)
            .map_err(|e| self.error(format!("cannot read {}: {e}", self.path.display())))?;
        // Only the position of a syntax error is reported: serde_json's messages
        // can quote the offending value, which may be a secret.
        serde_json::from_slice::<Entries>(&bytes).map_err(|e| {
            self.error(format!(
                "{path} is not a valid secrets file ({kind} at line {line}, column {column}); \
                 it was left unchanged. Restore it from a backup, or move it aside \
                 (mv {path} {path}.bad) and enroll again",
                path = self.path.display(),
                kind = match e.classify() {
                    serde_json::error::Category::Eof => "unexpected end",
                    serde_json::error::Category::Syntax => "syntax error",
                    serde_json::error::Category::Data => "unexpected value",
                    serde_json::error::Category::Io => "read error",
                },
                line = e.line(),
                column = e.column(),
            ))
        })
    }

    /// Refuses a file that another user owns or could read or change.
    #[cfg(unix)]
    fn check_private(&self, meta: &std::fs::Metadata) -> Result<(), Error> {
        use std::os::unix::fs::MetadataExt;
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me {
            return Err(self.error(format!(
                "{path} belongs to uid {owner}, but the agent runs as uid {me}; refusing to \
                 use another user's secrets. Fix the owner (chown {me} {path}) or point \
                 store.path elsewhere",
                path = self.path.display(),
                owner = meta.uid(),
            )));
        }
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(self.error(format!(
                "{path} is open to other users (mode {mode:04o}); refusing to use it. \
                 Run: chmod 600 {path}",
                path = self.path.display(),
            )));
        }
        Ok(())
    }

    /// On Windows the file inherits the state directory's ACL, set up by the installer.
    #[cfg(not(unix))]
    fn check_private(&self, _meta: &std::fs::Metadata) -> Result<(), Error> {
        Ok(())
    }

    /// Replaces the file with `entries`.
    fn save(&self, entries: &Entries) -> Result<(), Error> {
        // Worst case of JSON escaping is 6 bytes per byte (\u00XX), so this
        // capacity is never outgrown and the plaintext is never reallocated.
        let capacity = entries.0.iter().fold(64, |total: usize, (k, v)| {
            total.saturating_add(k.len().saturating_add(v.len()).saturating_mul(6) + 16)
        });
        let mut bytes = Zeroizing::new(Vec::with_capacity(capacity));
        serde_json::to_writer_pretty(&mut *bytes, entries)
            .map_err(|e| self.error(format!("cannot encode {}: {e}", self.path.display())))?;
        bytes.push(b'\n');
        ensure_private_dir(&self.path)?;
        write_atomic(&self.path, &bytes, SECRETS_FILE_MODE).map_err(|e| {
            self.error(format!(
                "cannot save {}: {e}; the previous secrets were kept{}",
                self.path.display(),
                write_fix_hint(&e, &dir_of(&self.path))
            ))
        })
    }

    fn error(&self, message: String) -> Error {
        Error::new(ErrorCode::StoreUnavailable, message)
    }

    fn locked(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded data is `()`: a panic elsewhere cannot have left it inconsistent.
        self.lock.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl SecretBackend for FileBackend {
    fn get(&self, name: &str) -> Result<Option<SecretString>, Error> {
        let _guard = self.locked();
        let entries = self.load()?;
        Ok(entries
            .0
            .get(name)
            .map(|v| secret(String::from(v.as_str()))))
    }

    fn set(&self, name: &str, value: &SecretString) -> Result<(), Error> {
        let _guard = self.locked();
        let mut entries = self.load()?;
        entries.0.insert(
            name.to_owned(),
            Zeroizing::new(String::from(value.expose_secret())),
        );
        self.save(&entries)
    }

    fn delete(&self, name: &str) -> Result<(), Error> {
        let _guard = self.locked();
        let mut entries = self.load()?;
        if entries.0.remove(name).is_none() {
            return Ok(());
        }
        self.save(&entries)
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

/// The file's content: secrets by name, each zeroized when dropped.
#[derive(Default)]
struct Entries(BTreeMap<String, Zeroizing<String>>);

impl Serialize for Entries {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value.as_str())?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;

        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of secret names to string values")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut entries = BTreeMap::new();
                while let Some((name, value)) = map.next_entry::<String, String>()? {
                    entries.insert(name, Zeroizing::new(value));
                }
                Ok(Entries(entries))
            }
        }

        deserializer.deserialize_map(EntriesVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(unix)]
    use crate::store::test_support::{running_as_root, skip};

    fn store_in(dir: &Path) -> FileBackend {
        FileBackend::new(dir.join("state").join("secrets.json")).unwrap()
    }

    #[test]
    fn round_trips_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(dir.path());
        assert!(store.get("refresh_token").unwrap().is_none());
        store.set("refresh_token", &secret("rt-1".into())).unwrap();
        store
            .set("client_secret", &secret("cs \"quoted\" é\n".into()))
            .unwrap();
        store.set("refresh_token", &secret("rt-2".into())).unwrap();
        assert_eq!(
            store.get("refresh_token").unwrap().unwrap().expose_secret(),
            "rt-2"
        );
        assert_eq!(
            store.get("client_secret").unwrap().unwrap().expose_secret(),
            "cs \"quoted\" é\n"
        );

        // A new instance (the agent restarted) reads the same values.
        let again = store_in(dir.path());
        assert_eq!(
            again.get("refresh_token").unwrap().unwrap().expose_secret(),
            "rt-2"
        );

        again.delete("refresh_token").unwrap();
        again.delete("refresh_token").unwrap();
        again.delete("never_set").unwrap();
        assert!(store.get("refresh_token").unwrap().is_none());
        assert!(store.get("client_secret").unwrap().is_some());
        assert_eq!(store.describe(), format!("file {}", store.path().display()));
    }

    #[test]
    fn file_is_one_json_object() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(dir.path());
        store.set("b", &secret("2".into())).unwrap();
        store.set("a", &secret("1".into())).unwrap();
        let text = std::fs::read_to_string(store.path()).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value, serde_json::json!({"a": "1", "b": "2"}));
    }

    #[cfg(unix)]
    #[test]
    fn file_is_0600_and_new_directory_0700() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(dir.path());
        store.set("a", &secret("1".into())).unwrap();
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(dir.path().join("state"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
    }

    #[cfg(unix)]
    #[test]
    fn refuses_a_file_others_can_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(dir.path());
        store.set("a", &secret("1".into())).unwrap();
        std::fs::set_permissions(store.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        for result in [
            store.get("a").map(|_| ()),
            store.set("a", &secret("2".into())),
            store.delete("a"),
        ] {
            let err = result.unwrap_err();
            assert_eq!(err.code, ErrorCode::StoreUnavailable);
            assert!(
                err.message
                    .contains(&format!("chmod 600 {}", store.path().display())),
                "{}",
                err.message
            );
            assert!(err.message.contains("mode 0644"), "{}", err.message);
        }
        // Nothing was rewritten behind the user's back.
        std::fs::set_permissions(store.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(store.get("a").unwrap().unwrap().expose_secret(), "1");
    }

    #[cfg(unix)]
    #[test]
    fn refuses_a_file_owned_by_another_user() {
        if !running_as_root() {
            return skip("only root can give a file to another user");
        }
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(dir.path());
        store.set("a", &secret("1".into())).unwrap();
        std::os::unix::fs::chown(store.path(), Some(65534), None).unwrap();
        let err = store.get("a").unwrap_err();
        assert_eq!(err.code, ErrorCode::StoreUnavailable);
        assert!(
            err.message.contains("belongs to uid 65534"),
            "{}",
            err.message
        );
    }

    #[test]
    fn corrupt_file_is_reported_without_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(dir.path());
        store.set("a", &secret("1".into())).unwrap();
        std::fs::write(store.path(), b"{\"a\": [\"hunter2-secret\"]}").unwrap();
        let err = store.get("a").unwrap_err();
        assert_eq!(err.code, ErrorCode::StoreUnavailable);
        assert!(
            err.message.contains("not a valid secrets file"),
            "{}",
            err.message
        );
        assert!(err.message.contains("line 1"), "{}", err.message);
        assert!(!err.message.contains("hunter2"), "{}", err.message);
        // A set must not replace a file it could not read.
        assert!(store.set("b", &secret("2".into())).is_err());
        assert_eq!(
            std::fs::read(store.path()).unwrap(),
            b"{\"a\": [\"hunter2-secret\"]}"
        );
    }

    #[test]
    fn a_directory_in_place_of_the_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(dir.path());
        std::fs::create_dir_all(store.path()).unwrap();
        let err = store.get("a").unwrap_err();
        assert!(
            err.message.contains("not a regular file"),
            "{}",
            err.message
        );
    }

    #[cfg(unix)]
    #[test]
    fn failed_write_keeps_the_old_secrets_and_names_the_file() {
        use std::os::unix::fs::PermissionsExt;
        if running_as_root() {
            return skip("root ignores directory permissions, so the write cannot be made to fail");
        }
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(dir.path());
        store.set("a", &secret("1".into())).unwrap();
        let state_dir = dir.path().join("state");
        std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o500)).unwrap();
        let result = store.set("a", &secret("2".into()));
        std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let err = result.unwrap_err();
        assert_eq!(err.code, ErrorCode::StoreUnavailable);
        assert!(err.message.contains("Permission denied"), "{}", err.message);
        assert!(
            err.message.contains(&store.path().display().to_string()),
            "{}",
            err.message
        );
        assert_eq!(store.get("a").unwrap().unwrap().expose_secret(), "1");
    }

    #[test]
    fn unwritable_location_is_an_error_naming_it() {
        // Works as root too: a regular file where the directory should be.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("state"), b"not a directory").unwrap();
        let store = store_in(dir.path());
        let err = store.set("a", &secret("1".into())).unwrap_err();
        assert_eq!(err.code, ErrorCode::StoreUnavailable);
        assert!(
            err.message
                .contains(&dir.path().join("state").display().to_string())
        );
    }

    #[test]
    fn a_path_without_file_name_is_refused() {
        assert!(FileBackend::new(PathBuf::from("/")).is_err());
    }
}
