//! Watching a directory for changes, debounced, as a tokio channel.
//!
//! `notify` 8 has no tokio integration: its debouncer calls back on its own
//! thread, and the callback forwards a wake-up into an unbounded channel. The
//! **directory** is watched, not the file: editors save by writing a temporary
//! file and renaming it over the original, and a deleted or replaced file is
//! only seen from its parent. Consumers re-read what they care about on every
//! wake-up, so a lost or merged event costs nothing.

use std::path::Path;
use std::time::Duration;

use notify_debouncer_full::notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use regent_proto::ErrorCode;
use tokio::sync::mpsc;

use crate::error::{Error, Result};

/// A live directory watch; dropping it stops the watch.
pub struct DirWatch {
    _debouncer: Debouncer<notify_debouncer_full::notify::RecommendedWatcher, RecommendedCache>,
    /// One message per debounced batch of changes.
    changes: mpsc::UnboundedReceiver<()>,
}

impl DirWatch {
    /// Waits for the next batch of changes; `false` once the watch has ended.
    /// A method on the whole watch, so a task that waits also owns (and so
    /// keeps alive) the watcher itself.
    pub async fn changed(&mut self) -> bool {
        self.changes.recv().await.is_some()
    }
}

impl std::fmt::Debug for DirWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirWatch").finish_non_exhaustive()
    }
}

/// Watches `dir` (not recursively), waking the receiver once per batch of
/// changes that stays quiet for `debounce`.
///
/// # Errors
/// `CONFIG` naming the directory when it cannot be watched (missing, or the
/// inotify limit is reached).
pub fn watch_dir(dir: &Path, debounce: Duration) -> Result<DirWatch> {
    let (tx, changes) = mpsc::unbounded_channel();
    let shown = dir.display().to_string();
    let mut debouncer = new_debouncer(debounce, None, move |result: DebounceEventResult| {
        match result {
            Ok(events) if events.is_empty() => {}
            Ok(_) => {
                let _ = tx.send(());
            }
            Err(errors) => {
                for e in errors {
                    tracing::warn!(dir = %shown, error = %e, "file watch error");
                }
                // Something may have changed unseen: look again.
                let _ = tx.send(());
            }
        }
    })
    .map_err(|e| watch_error(dir, &e))?;
    debouncer
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|e| watch_error(dir, &e))?;
    Ok(DirWatch {
        _debouncer: debouncer,
        changes,
    })
}

fn watch_error(dir: &Path, e: &notify_debouncer_full::notify::Error) -> Error {
    Error::new(
        ErrorCode::Config,
        format!(
            "cannot watch {} for changes: {e}; check that it exists (and, on Linux, fs.inotify.max_user_watches)",
            dir.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_rename_into_the_directory_wakes_the_watch() {
        let dir = tempfile::tempdir().unwrap();
        let mut watch = watch_dir(dir.path(), Duration::from_millis(50)).unwrap();
        let tmp = dir.path().join(".file.tmp");
        std::fs::write(&tmp, b"x").unwrap();
        std::fs::rename(&tmp, dir.path().join("file")).unwrap();
        let woke = tokio::time::timeout(Duration::from_secs(10), watch.changed()).await;
        assert!(woke.unwrap());
    }
}
