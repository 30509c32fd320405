//! Crash-safe file replacement. A reader (or the agent after a crash or power
//! loss) sees either the whole old file or the whole new one, never a mix: the
//! bytes go to a temporary file in the same directory, are flushed to disk, and
//! the temporary file is renamed over the target (DESIGN §5).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Distinguishes temporary files made by concurrent writers in one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replaces the file at `path` with `bytes`, atomically and durably.
///
/// The bytes are written to a new temporary file beside `path` (created with
/// `mode` on Unix; `mode` is ignored elsewhere), flushed with `fsync`, renamed
/// over `path`, and then the directory itself is flushed so the rename survives a
/// power loss. On failure the temporary file is removed and `path` keeps its old
/// content.
///
/// # Errors
///
/// Any I/O error from creating, writing, flushing or renaming the temporary file
/// (for example a full disk or a read-only directory), or from flushing the
/// directory. The error says which step failed but not the path: callers add it.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent_dir(path);
    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "the path does not name a file")
    })?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(
        ".tmp.{}.{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let temp_path = dir.join(temp_name);

    let mut temp = TempFile::create(temp_path, mode)?;
    temp.write_and_sync(bytes)?;
    // A crash here leaves the old file whole and the temporary file behind
    // (see `remove_stale_temp_files`).
    crate::crash::crash_point_with(crate::crash::CrashPoint::MidStoreWrite, || {
        file_name.to_string_lossy().into_owned()
    });
    temp.persist(path)?;
    sync_dir(&dir).map_err(|e| context(e, "flushing the directory"))
}

/// Removes temporary files that [`write_atomic`] left beside `path` when a
/// process was killed between writing and renaming them. They may hold secrets
/// (a newer copy of the secrets file), so they must not outlive the crash.
/// Files of a process that is still running (another writer right now) are
/// left alone. Best effort: returns how many were removed.
pub fn remove_stale_temp_files(path: &Path) -> usize {
    let dir = parent_dir(path);
    let Some(file_name) = path.file_name() else {
        return 0;
    };
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(file_name);
    prefix.push(".tmp.");
    let Some(prefix) = prefix.to_str() else {
        return 0;
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        let Some(pid) = rest
            .split_once('.')
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || process_alive(pid) {
            continue;
        }
        if std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Whether a process with this id runs (Linux: has a `/proc` entry). Elsewhere
/// every process counts as running, so nothing is removed.
fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// What the user can do about a failed write in `dir`, when the error says
/// (a full or read-only file system, missing permissions, a size limit); the
/// result starts with `"; "` so it can be appended to a message, or is empty.
pub fn write_fix_hint(err: &io::Error, dir: &Path) -> String {
    let dir = dir.display();
    match err.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => format!(
            "; the file system holding {dir} is full: free some space there \
             (renewals are retried on their own; rerun a failed command)"
        ),
        io::ErrorKind::ReadOnlyFilesystem => format!(
            "; {dir} is on a read-only file system: remount it read-write, or point \
             [state] dir (and store.path) at a writable directory"
        ),
        io::ErrorKind::PermissionDenied => format!(
            "; the agent may not write in {dir}: give its user write access (chown or chmod)"
        ),
        io::ErrorKind::FileTooLarge => {
            "; a file-size limit (ulimit -f) stops the write: raise it for the agent".to_owned()
        }
        _ => String::new(),
    }
}

/// The directory holding `path`, for messages.
pub fn dir_of(path: &Path) -> PathBuf {
    parent_dir(path)
}

/// Adds the failed step to an I/O error, keeping its kind.
fn context(err: io::Error, step: &str) -> io::Error {
    io::Error::new(err.kind(), format!("{step}: {err}"))
}

/// A temporary file that removes itself unless it was renamed into place.
struct TempFile {
    path: PathBuf,
    file: Option<File>,
}

impl TempFile {
    fn create(path: PathBuf, mode: u32) -> io::Result<TempFile> {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            // Owner-only while it is being written, whatever the umask says.
            options.mode(mode & 0o600);
        }
        let file = options
            .open(&path)
            .map_err(|e| context(e, "creating a temporary file"))?;
        let temp = TempFile {
            path,
            file: Some(file),
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Some(file) = &temp.file {
                file.set_permissions(std::fs::Permissions::from_mode(mode))
                    .map_err(|e| context(e, "setting the file mode"))?;
            }
        }
        #[cfg(not(unix))]
        let _ = mode;
        Ok(temp)
    }

    fn write_and_sync(&mut self, bytes: &[u8]) -> io::Result<()> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("the temporary file is already closed"))?;
        file.write_all(bytes)
            .map_err(|e| context(e, "writing the temporary file"))?;
        file.sync_all()
            .map_err(|e| context(e, "flushing the temporary file"))
    }

    fn persist(mut self, target: &Path) -> io::Result<()> {
        // Closed before the rename: Windows cannot rename an open file.
        drop(self.file.take());
        std::fs::rename(&self.path, target)
            .map_err(|e| context(e, "renaming the temporary file into place"))?;
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        drop(self.file.take());
        if !self.path.as_os_str().is_empty() {
            // Best effort: the failure being reported matters more than this one.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Flushes a directory so a rename inside it is durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Windows cannot open a directory as a file; NTFS journals the rename itself.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// Creates a new file at `path` that only its owner may read (`0600`),
/// refusing to open anything already there: `O_CREAT|O_EXCL`, plus
/// `O_NOFOLLOW` on Unix, so neither an existing file nor a planted symlink
/// ever receives a secret.
///
/// # Errors
/// `AlreadyExists` when the name is taken (a file or a symlink); any other
/// OS error from creating it.
pub fn create_new_private(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options
            .mode(0o600)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits());
    }
    options.open(path)
}

/// Creates `dir` (and its parents) with `mode` for the directories it makes;
/// an existing directory is left as it is. `mode` is ignored off Unix.
///
/// # Errors
/// The OS error from creating the directory.
pub fn create_dir_with_mode(dir: &Path, mode: u32) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    builder.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(unix)]
    use crate::store::test_support::{running_as_root, skip};

    #[test]
    fn replaces_content_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"old", 0o600).unwrap();
        write_atomic(&path, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Nothing but the target is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[cfg(unix)]
    #[test]
    fn a_new_private_file_never_replaces_or_follows() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        drop(create_new_private(&path).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = create_new_private(&path).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::AlreadyExists);
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert_eq!(
            create_new_private(&link).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        // A dangling symlink is not created through either.
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("absent"), &dangling).unwrap();
        assert!(create_new_private(&dangling).is_err());
        assert!(!dir.path().join("absent").exists());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    }

    #[test]
    fn mode_is_exact_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.json");
        write_atomic(&path, b"x", 0o640).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o640);
        }
    }

    #[test]
    fn missing_directory_is_an_error_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent").join("state.json");
        let err = write_atomic(&path, b"x", 0o600).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(
            err.to_string().contains("creating a temporary file"),
            "{err}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn read_only_directory_keeps_the_old_content() {
        use std::os::unix::fs::PermissionsExt;
        if running_as_root() {
            return skip("root ignores directory permissions, so the write cannot be made to fail");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"old", 0o600).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o500)).unwrap();
        let result = write_atomic(&path, b"new", 0o600);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let err = result.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn stale_temp_files_of_dead_writers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.json");
        write_atomic(&path, b"{}", 0o600).unwrap();
        // No process has this id (above the kernel's pid limit).
        let dead = dir.path().join(".secrets.json.tmp.999999999.3");
        let mine = dir
            .path()
            .join(format!(".secrets.json.tmp.{}.7", std::process::id()));
        let other_file = dir.path().join(".state.json.tmp.999999999.0");
        let unrelated = dir.path().join(".secrets.json.tmp.notapid.1");
        for p in [&dead, &mine, &other_file, &unrelated] {
            std::fs::write(p, b"partial").unwrap();
        }
        assert_eq!(remove_stale_temp_files(&path), 1);
        assert!(!dead.exists());
        assert!(mine.exists(), "a live writer's file is kept");
        assert!(other_file.exists(), "only this file's temporaries");
        assert!(unrelated.exists());
        assert_eq!(std::fs::read(&path).unwrap(), b"{}");
    }

    #[test]
    fn write_errors_say_how_to_fix_them() {
        let dir = Path::new("/var/lib/regent");
        let hint = |kind| write_fix_hint(&io::Error::from(kind), dir);
        assert!(
            hint(io::ErrorKind::StorageFull).contains("/var/lib/regent is full: free some space")
        );
        assert!(hint(io::ErrorKind::ReadOnlyFilesystem).contains("remount it read-write"));
        assert!(hint(io::ErrorKind::PermissionDenied).contains("write access"));
        assert!(hint(io::ErrorKind::FileTooLarge).contains("ulimit -f"));
        assert_eq!(hint(io::ErrorKind::Other), "");
        assert!(hint(io::ErrorKind::StorageFull).starts_with("; "));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn full_disk_keeps_the_old_content_and_removes_the_temp_file() {
        // /dev/full fails every write with ENOSPC: it stands in for the temporary
        // file's handle, so the write step really meets a full disk.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"old", 0o600).unwrap();
        let mut temp = TempFile {
            path: dir.path().join(".state.json.tmp.test"),
            file: Some(File::create("/dev/full").unwrap()),
        };
        std::fs::write(&temp.path, b"partial").unwrap();
        let err = temp.write_and_sync(b"new").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull, "{err}");
        assert!(err.to_string().contains("No space left on device"), "{err}");
        drop(temp);
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert!(!dir.path().join(".state.json.tmp.test").exists());
    }
}
