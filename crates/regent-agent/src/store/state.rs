//! Non-secret state (`state.json`): device id, slot identifiers, pending-redemption
//! markers, expiries. It must survive crashes whole (DESIGN §5), and a damaged
//! file must stop the agent with a clear message rather than be replaced by an
//! empty state, which would forget a redemption in progress.
//!
//! The agent saves through [`StateFile::save_async`], which writes and flushes
//! on a blocking thread, never on the async runtime's. Saves carry sequence
//! numbers taken when they are asked for, so an older state never lands after
//! a newer one whatever order their threads run in.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use regent_proto::ErrorCode;

use crate::error::Error;
use crate::store::atomic::{dir_of, remove_stale_temp_files, write_atomic, write_fix_hint};
use crate::store::{WriteOrder, ensure_private_dir};

/// Mode of the state file: it names the device and its slots, so owner only.
const STATE_FILE_MODE: u32 = 0o600;

/// A JSON file holding the agent's non-secret state, replaced atomically on save.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
    order: Arc<WriteOrder>,
}

/// The name saves are ordered under (one file, one name).
const ORDER_NAME: &str = "state.json";

impl StateFile {
    /// A state file at `path`. Nothing is read or created until [`load`](Self::load)
    /// or [`save`](Self::save).
    pub fn new(path: PathBuf) -> Self {
        StateFile {
            path,
            order: Arc::new(WriteOrder::default()),
        }
    }

    /// Where the state lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the state. A missing file is `Ok(None)`: the agent has not saved
    /// anything yet. Temporary files that a killed writer left beside it are
    /// removed first.
    ///
    /// # Errors
    ///
    /// `STORE_UNAVAILABLE` when the file cannot be read, or when it is not valid
    /// JSON of the expected shape. A damaged file is left as it is; the message
    /// names it and says how to recover.
    pub fn load<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>, Error> {
        // What a crash between writing and renaming left behind.
        remove_stale_temp_files(&self.path);
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::new(
                    ErrorCode::StoreUnavailable,
                    format!("cannot read the state file {}: {e}", self.path.display()),
                ));
            }
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::new(
                ErrorCode::StoreUnavailable,
                format!(
                    "the state file {path} is damaged ({e}); the agent left it unchanged. \
                     Restore it from a backup, or move it aside (mv {path} {path}.bad) and \
                     enroll again",
                    path = self.path.display()
                ),
            )
        })
    }

    /// Writes the state: pretty JSON to a temporary file in the same directory
    /// (mode `0600`), flushed, renamed over the old file, and the directory
    /// flushed. The directory is created (mode `0700`) if missing.
    ///
    /// # Errors
    ///
    /// `STORE_UNAVAILABLE` when the value cannot be serialized or the file cannot
    /// be written (full disk, read-only directory, …); the message carries the
    /// OS error and the path, and the old file is left intact.
    pub fn save<T: serde::Serialize>(&self, value: &T) -> Result<(), Error> {
        let bytes = self.encode(value)?;
        let seq = self.order.next();
        self.order
            .apply(ORDER_NAME, seq, || write_bytes(&self.path, &bytes))
    }

    /// [`save`](Self::save) with the write and its flushes on a blocking
    /// thread, off the async runtime. The save takes its place in the order
    /// when first polled; it completes even if the caller stops waiting.
    ///
    /// # Errors
    ///
    /// As [`save`](Self::save).
    pub async fn save_async<T: serde::Serialize>(&self, value: &T) -> Result<(), Error> {
        let bytes = self.encode(value)?;
        let seq = self.order.next();
        let order = Arc::clone(&self.order);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            order.apply(ORDER_NAME, seq, || write_bytes(&path, &bytes))
        })
        .await
        .map_err(|e| {
            Error::new(
                ErrorCode::StoreUnavailable,
                format!(
                    "the save of the state file {} stopped unexpectedly: {e}",
                    self.path.display()
                ),
            )
        })?
    }

    fn encode<T: serde::Serialize>(&self, value: &T) -> Result<Vec<u8>, Error> {
        let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| {
            Error::new(
                ErrorCode::StoreUnavailable,
                format!("cannot encode the state for {}: {e}", self.path.display()),
            )
        })?;
        bytes.push(b'\n');
        Ok(bytes)
    }
}

/// Replaces the state file at `path` with `bytes`.
fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    ensure_private_dir(path)?;
    write_atomic(path, bytes, STATE_FILE_MODE).map_err(|e| {
        Error::new(
            ErrorCode::StoreUnavailable,
            format!(
                "cannot save the state file {}: {e}; the previous state was kept{}",
                path.display(),
                write_fix_hint(&e, &dir_of(path))
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(unix)]
    use crate::store::test_support::{running_as_root, skip};
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct State {
        device_id: String,
        pending: Vec<u32>,
    }

    fn sample() -> State {
        State {
            device_id: "dev-1".into(),
            pending: vec![1, 2],
        }
    }

    #[test]
    fn missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateFile::new(dir.path().join("state.json"));
        assert_eq!(state.load::<State>().unwrap(), None);
    }

    #[test]
    fn round_trips_as_pretty_json_with_owner_only_mode() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateFile::new(dir.path().join("sub").join("state.json"));
        state.save(&sample()).unwrap();
        assert_eq!(state.load::<State>().unwrap(), Some(sample()));
        let text = std::fs::read_to_string(state.path()).unwrap();
        assert!(text.contains("\n  \"device_id\": \"dev-1\""), "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let file_mode = std::fs::metadata(state.path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(file_mode & 0o777, 0o600);
            let dir_mode = std::fs::metadata(dir.path().join("sub"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(dir_mode & 0o777, 0o700);
        }
    }

    #[test]
    fn corrupt_file_is_an_error_naming_it_and_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, b"{\"device_id\": \"dev-1\", \"pend").unwrap();
        let err = StateFile::new(path.clone()).load::<State>().unwrap_err();
        assert_eq!(err.code, ErrorCode::StoreUnavailable);
        assert!(
            err.message.contains(&path.display().to_string()),
            "{}",
            err.message
        );
        assert!(err.message.contains("damaged"), "{}", err.message);
        assert!(err.message.contains("move it aside"), "{}", err.message);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"{\"device_id\": \"dev-1\", \"pend"
        );
    }

    #[test]
    fn wrong_shape_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, b"[1, 2, 3]").unwrap();
        let err = StateFile::new(path).load::<State>().unwrap_err();
        assert_eq!(err.code, ErrorCode::StoreUnavailable);
    }

    #[cfg(unix)]
    #[test]
    fn failed_save_keeps_the_previous_state() {
        use std::os::unix::fs::PermissionsExt;
        if running_as_root() {
            return skip("root ignores directory permissions, so the save cannot be made to fail");
        }
        let dir = tempfile::tempdir().unwrap();
        let state = StateFile::new(dir.path().join("state.json"));
        state.save(&sample()).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o500)).unwrap();
        let result = state.save(&State {
            device_id: "dev-2".into(),
            pending: vec![],
        });
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let err = result.unwrap_err();
        assert_eq!(err.code, ErrorCode::StoreUnavailable);
        assert!(err.message.contains("Permission denied"), "{}", err.message);
        assert!(err.message.contains("state.json"), "{}", err.message);
        assert_eq!(state.load::<State>().unwrap(), Some(sample()));
    }
}
