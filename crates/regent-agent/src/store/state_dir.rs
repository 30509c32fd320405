//! The state directory itself: created owner-only, and held by one agent.
//!
//! - Created with mode `0700` whatever the umask, and a directory the agent
//!   has just created gets exactly that mode (a umask such as `0277` would
//!   otherwise leave it unwritable, `000` world-writable).
//! - One agent per state directory: two agents sharing one (with different
//!   sockets) would each renew the same refresh token, and with rotation the
//!   second renewal kills the session. The agent holds an exclusive `flock`
//!   on `agent.lock` (opened `O_NOFOLLOW`) for as long as it runs; the file
//!   holds its pid so the second agent can name the first. The kernel drops
//!   the lock when the process ends, however it ends: no stale locks.

use std::path::{Path, PathBuf};

use regent_proto::ErrorCode;

use crate::error::{Error, Result};

/// The lock file's name inside the state directory.
pub const LOCK_FILE: &str = "agent.lock";

/// Creates `dir` (and missing parents) owner-only (`0700`); a directory that
/// already exists is left as it is.
///
/// # Errors
/// `STORE_UNAVAILABLE` naming the directory.
pub fn create_state_dir(dir: &Path) -> Result<()> {
    let fail = |e: std::io::Error| {
        Error::new(
            ErrorCode::StoreUnavailable,
            format!(
                "cannot create the state directory {}: {e}{}",
                dir.display(),
                super::atomic::write_fix_hint(&e, &super::atomic::dir_of(dir))
            ),
        )
    };
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        super::atomic::create_dir_with_mode(parent, 0o700).map_err(fail)?;
    }
    #[cfg_attr(not(unix), expect(unused_mut, reason = "the mode is set on Unix only"))]
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    match builder.create(dir) {
        Ok(()) => {
            // Ours: make the mode exact, whatever the umask took away.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(fail)?;
            }
            tracing::info!(dir = %dir.display(), "created the state directory (mode 0700)");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(fail(e)),
    }
}

/// This process's hold on a state directory; dropping it lets go.
#[derive(Debug)]
pub struct StateDirLock {
    #[cfg(unix)]
    _lock: nix::fcntl::Flock<std::fs::File>,
    path: PathBuf,
}

impl StateDirLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Creates `dir` if needed and takes its lock, without waiting.
///
/// # Errors
/// `CONFIG` when another agent holds the lock (naming the directory and,
/// when it wrote it, that agent's pid); `STORE_UNAVAILABLE` when the lock file
/// cannot be opened (a symlink in its place is refused).
#[cfg(unix)]
pub fn lock_state_dir(dir: &Path) -> Result<StateDirLock> {
    use nix::fcntl::OFlag;
    use std::io::{Read as _, Write as _};
    use std::os::unix::fs::OpenOptionsExt;
    create_state_dir(dir)?;
    let path = dir.join(LOCK_FILE);
    // Held through a read-only handle: a handle open for writing would stop
    // an administrator's `mount -o remount,ro` of the state directory.
    let open = |flags: OFlag| {
        nix::fcntl::open(
            &path,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | flags,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
    };
    let file = open(OFlag::O_CREAT)
        .or_else(|e| open(OFlag::empty()).map_err(|_| e))
        .map(std::fs::File::from)
        .map_err(|e| {
            let e = std::io::Error::from(e);
            Error::new(
                ErrorCode::StoreUnavailable,
                format!(
                    "cannot open the state directory's lock file {}: {e}; it must be a regular file (not a symbolic link) the agent's user can read{}",
                    path.display(),
                    super::atomic::write_fix_hint(&e, dir)
                ),
            )
        })?;
    let lock = match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut text = String::new();
            let holder = std::io::Read::by_ref(&mut file)
                .take(32)
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse::<u32>().ok())
                .map_or_else(String::new, |pid| format!(" (pid {pid})"));
            return Err(Error::new(
                ErrorCode::Config,
                format!(
                    "another regent agent{holder} is already using the state directory {}: two agents on one state directory would renew the same refresh token and break it; \
                     stop the other agent, or give this one its own [state] dir",
                    dir.display()
                ),
            ));
        }
        Err((_, e)) => {
            return Err(Error::new(
                ErrorCode::StoreUnavailable,
                format!("cannot lock {}: {e}", path.display()),
            ));
        }
    };
    // Best effort, and closed at once: the pid only improves the other
    // agent's message.
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(&path)
        .and_then(|mut pid| pid.write_all(format!("{}\n", std::process::id()).as_bytes()));
    Ok(StateDirLock { _lock: lock, path })
}

/// Windows: no lock yet (the service manager runs one agent per service).
///
/// # Errors
/// `STORE_UNAVAILABLE` when the directory cannot be created.
#[cfg(not(unix))]
pub fn lock_state_dir(dir: &Path) -> Result<StateDirLock> {
    create_state_dir(dir)?;
    Ok(StateDirLock {
        path: dir.join(LOCK_FILE),
    })
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_second_lock_names_the_directory_and_the_holder() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("state");
        let first = lock_state_dir(&dir).unwrap();
        let pid = std::fs::read_to_string(first.path()).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        let e = lock_state_dir(&dir).unwrap_err();
        assert_eq!(e.code, ErrorCode::Config);
        assert!(e.message.contains(&dir.display().to_string()), "{e}");
        assert!(
            e.message.contains(&format!("(pid {})", std::process::id())),
            "{e}"
        );
        drop(first);
        lock_state_dir(&dir).unwrap();
    }

    #[test]
    fn a_symlinked_lock_file_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("state");
        create_state_dir(&dir).unwrap();
        let victim = base.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(LOCK_FILE)).unwrap();
        let e = lock_state_dir(&dir).unwrap_err();
        assert!(e.message.contains("not a symbolic link"), "{e}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    }

    #[test]
    fn a_new_state_directory_is_owner_only_and_an_old_one_is_left_alone() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("a/b/state");
        create_state_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        create_state_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o750);
    }
}
