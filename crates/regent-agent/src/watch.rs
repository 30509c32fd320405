//! Watching a directory for changes, debounced, as a tokio channel.
//!
//! `notify` 8 has no tokio integration: its watcher calls back on its own
//! thread (blocked in the kernel until an event comes), the callback forwards
//! a wake-up into an unbounded channel, and [`DirWatch::changed`] debounces
//! on the runtime's timer. Only changes count: reads of a file (open, read,
//! close without writing) do not. The
//! **directory** is watched, not the file: editors save by writing a temporary
//! file and renaming it over the original, and a deleted or replaced file is
//! only seen from its parent. Consumers re-read what they care about on every
//! wake-up, so a lost or merged event costs nothing.

use std::path::Path;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{self, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use regent_proto::ErrorCode;
use tokio::sync::mpsc;

use crate::error::{Error, Result};

/// A live directory watch; dropping it stops the watch.
pub struct DirWatch {
    _watcher: RecommendedWatcher,
    /// One message per change event (or watch error).
    changes: mpsc::UnboundedReceiver<()>,
    debounce: Duration,
}

impl DirWatch {
    /// Waits for the next batch of changes — until one arrives and then
    /// `debounce` passes without another, or at most `MAX_BATCH` (5)
    /// debounce periods — `false` once the watch has ended. A method on the whole
    /// watch, so a task that waits also owns (and so keeps alive) the
    /// watcher itself.
    pub async fn changed(&mut self) -> bool {
        if self.changes.recv().await.is_none() {
            return false;
        }
        // Debounced here, on the runtime's timer: a debouncer thread (the
        // notify-debouncer-full crate, used before) woke every 50 ms for as
        // long as the agent ran, changes or not. The batch is capped: a
        // file written more often than `debounce` (a log at trace level
        // beside the configuration) must not hold back a reload for ever.
        let cap = tokio::time::Instant::now() + self.debounce.saturating_mul(MAX_BATCH);
        loop {
            let quiet_until = (tokio::time::Instant::now() + self.debounce).min(cap);
            match tokio::time::timeout_at(quiet_until, self.changes.recv()).await {
                Ok(Some(())) if tokio::time::Instant::now() < cap => {}
                _ => return true,
            }
        }
    }
}

impl std::fmt::Debug for DirWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirWatch").finish_non_exhaustive()
    }
}

/// The longest batch, in debounce periods.
const MAX_BATCH: u32 = 5;

/// Whether an event can mean a file changed. Opening, reading and closing a
/// file without writing are not changes: the consumers re-read the files
/// they watch, and counting those reads as changes made each re-read wake
/// the watch again — an agent re-reading its configuration several times a
/// second for as long as it ran.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(access) => *access == AccessKind::Close(AccessMode::Write),
        _ => true,
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
    let mut watcher = notify::recommended_watcher(move |result: notify::Result<notify::Event>| {
        match result {
            Ok(event) if is_change(&event.kind) => {
                let _ = tx.send(());
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(dir = %shown, error = %e, "file watch error");
                // Something may have changed unseen: look again.
                let _ = tx.send(());
            }
        }
    })
    .map_err(|e| watch_error(dir, &e))?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|e| watch_error(dir, &e))?;
    Ok(DirWatch {
        _watcher: watcher,
        changes,
        debounce,
    })
}

fn watch_error(dir: &Path, e: &notify::Error) -> Error {
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

    #[test]
    fn reading_a_file_is_not_a_change_and_writing_one_is() {
        use notify::event::{CreateKind, ModifyKind, RemoveKind, RenameMode};
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Access(AccessKind::Any),
        ] {
            assert!(!is_change(&kind), "{kind:?}");
        }
        for kind in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Modify(ModifyKind::Any),
            EventKind::Remove(RemoveKind::File),
            EventKind::Any,
            EventKind::Other,
        ] {
            assert!(is_change(&kind), "{kind:?}");
        }
    }

    #[tokio::test]
    async fn a_file_written_without_pause_does_not_hold_the_batch_back() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let debounce = Duration::from_millis(50);
        let mut watch = watch_dir(dir.path(), debounce).unwrap();
        // A log beside the configuration: a line every 20 ms, for up to
        // 20 s (bounded), until the test is done.
        let done = Arc::new(AtomicBool::new(false));
        let writing = Arc::new(AtomicBool::new(true));
        let writer = {
            let (done, writing) = (Arc::clone(&done), Arc::clone(&writing));
            let log = dir.path().join("agent.log");
            std::thread::spawn(move || {
                for i in 0..1000 {
                    if done.load(Ordering::SeqCst) {
                        break;
                    }
                    let _ = std::fs::write(&log, format!("line {i}\n"));
                    std::thread::sleep(Duration::from_millis(20));
                }
                writing.store(false, Ordering::SeqCst);
            })
        };
        let woke = tokio::time::timeout(Duration::from_secs(30), watch.changed()).await;
        let still_writing = writing.load(Ordering::SeqCst);
        done.store(true, Ordering::SeqCst);
        writer.join().unwrap();
        assert!(woke.unwrap());
        assert!(
            still_writing,
            "the batch ended only when the writes stopped: a busy file held it back"
        );
    }

    #[tokio::test]
    async fn re_reading_the_watched_files_does_not_wake_the_watch_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("regent.toml");
        std::fs::write(&file, b"x").unwrap();
        let mut watch = watch_dir(dir.path(), Duration::from_millis(50)).unwrap();
        std::fs::write(&file, b"y").unwrap();
        let woke = tokio::time::timeout(Duration::from_secs(10), watch.changed()).await;
        assert!(woke.unwrap());
        // What a consumer does on a wake-up: read the file. Those reads
        // (open, read, close) must not start another batch; they did, and
        // the agent re-read its configuration in a loop.
        for _ in 0..20 {
            assert_eq!(std::fs::read(&file).unwrap(), b"y");
        }
        let again = tokio::time::timeout(Duration::from_secs(1), watch.changed()).await;
        assert!(again.is_err(), "reads woke the watch");
    }
}
