//! Provisioning drop-in (DESIGN §12): a registration-token file placed in
//! `[provisioning] dir` is redeemed once, then deleted.
//!
//! The directory is scanned at start and on every (debounced) change.
//! - The directory must belong to root or the agent's user and give group and
//!   others nothing (`0700`), and no directory above it may be writable by
//!   others without the sticky bit (the socket directory's rule, see
//!   [`crate::ipc::socket_dir`]). Otherwise it is **only logged, never
//!   touched**: another user who can write there could plant symlinks that
//!   a rename or a reason file would follow.
//! - All work in the directory goes through one handle opened `O_NOFOLLOW`
//!   (`openat`, `renameat`, `unlinkat`), so swapping the directory or a name
//!   in it for a symlink redirects nothing; reason files are created
//!   `O_EXCL|O_NOFOLLOW`.
//! - A candidate file must be a regular file (not a symlink) owned by root or
//!   the agent's user that group and others can neither read nor write
//!   (`0600`/`0400`). Anything else is **refused unread**: renamed
//!   `NAME.refused`, with `NAME.refused.reason` saying why.
//! - The token is redeemed through [`Agent::enroll`]. Once read, the file is
//!   deleted whatever the outcome: a registration token is a secret, and a
//!   failed redemption that is retried goes on from the secret store. A
//!   failure leaves `NAME.failed.reason` naming the error code and message.
//!
//! Names starting with `.` or ending in `~`, `.tmp`, `.swp`, `.part`,
//! `.failed`, `.refused` or `.reason` are never read, so writers can create
//! `.NAME` and rename it into place atomically.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use regent_proto::ErrorCode;

use crate::agent::{Agent, EnrollOptions};
use crate::error::{Error, Result};
use crate::ipc::connection::AUDIT_TARGET;
use crate::metrics::Counters;
use crate::secret::SecretString;
use crate::watch::watch_dir;

/// Quiet time after the last change before the directory is scanned: a
/// writer that creates and then fills a file is done by then.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// Registration tokens are short; anything larger is not one.
const MAX_TOKEN_BYTES: u64 = 16 * 1024;

const IGNORED_SUFFIXES: [&str; 7] = [
    "~", ".tmp", ".swp", ".part", ".failed", ".refused", ".reason",
];

/// A running provisioning watch; dropping it stops watching.
#[derive(Debug)]
pub struct ProvisioningWatcher {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ProvisioningWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Creates `dir` if missing (mode `0700`), scans it once, then watches it.
///
/// # Errors
/// `CONFIG` when the directory cannot be created or watched.
pub fn watch(dir: &Path, agent: Arc<Agent>, stats: Arc<Counters>) -> Result<ProvisioningWatcher> {
    create_private_dir(dir)?;
    let mut watch = watch_dir(dir, DEBOUNCE)?;
    let provisioner = Provisioner {
        dir: dir.to_path_buf(),
        agent,
        stats,
        last_problem: Mutex::new(None),
    };
    tracing::info!(dir = %dir.display(), "watching the provisioning directory for registration-token files");
    let task = tokio::spawn(async move {
        provisioner.scan().await;
        while watch.changed().await {
            provisioner.scan().await;
        }
    });
    Ok(ProvisioningWatcher { task })
}

fn create_private_dir(dir: &Path) -> Result<()> {
    crate::store::atomic::create_dir_with_mode(dir, 0o700).map_err(|e| {
        Error::new(
            ErrorCode::Config,
            format!(
                "cannot create the provisioning directory {}: {e}",
                dir.display()
            ),
        )
    })
}

struct Provisioner {
    dir: PathBuf,
    agent: Arc<Agent>,
    stats: Arc<Counters>,
    /// The unsafe-directory problem last logged, so that every change in an
    /// unsafe directory does not repeat it.
    last_problem: Mutex<Option<String>>,
}

/// What happened to one drop-in file.
enum Outcome {
    Redeemed,
    Failed(Error),
    Refused(String),
}

impl Provisioner {
    async fn scan(&self) {
        let dir = match DropDir::open(&self.dir) {
            Ok(dir) => dir,
            Err(problem) => {
                self.report_unsafe(problem);
                return;
            }
        };
        self.set_last_problem(None);
        let all = match dir.names() {
            Ok(names) => names,
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "cannot read the provisioning directory");
                return;
            }
        };
        self.remove_legacy_failed(&dir, &all);
        let mut names: Vec<String> = all.into_iter().filter(|n| is_candidate(n)).collect();
        names.sort();
        for name in names {
            let path = self.dir.join(&name);
            let outcome = match dir.read_token(&name) {
                Ok(Some(token)) => self.redeem(&path, token).await,
                // Gone meanwhile (an admin removed it): nothing to report.
                Ok(None) => continue,
                Err(problem) => Outcome::Refused(problem),
            };
            self.settle(&dir, &path, &name, outcome);
        }
    }

    /// Earlier versions renamed a failed token file `NAME.failed` (next to
    /// `NAME.failed.reason`), keeping the token on disk even after a retry
    /// succeeded. Such files are removed; the reason file stays.
    fn remove_legacy_failed(&self, dir: &DropDir, names: &[String]) {
        for name in names {
            if name.ends_with(".failed") && names.contains(&format!("{name}.reason")) {
                match dir.remove(name) {
                    Ok(()) => tracing::info!(
                        target: AUDIT_TARGET,
                        file = %self.dir.join(name).display(),
                        "removed a failed provisioning file left by an earlier version: it held a registration token"
                    ),
                    Err(e) => {
                        tracing::warn!(file = %self.dir.join(name).display(), error = %e, "cannot remove an old failed provisioning file; delete it by hand, it holds a registration token")
                    }
                }
            }
        }
    }

    /// An unsafe directory is logged (once per distinct problem) and left
    /// exactly as it is.
    fn report_unsafe(&self, problem: String) {
        if self.set_last_problem(Some(problem.clone())) {
            tracing::error!(
                target: AUDIT_TARGET,
                dir = %self.dir.display(),
                "provisioning directory unsafe; nothing in it is read, renamed or written until it is fixed: {problem}"
            );
        }
    }

    /// Records the current problem; `true` when it differs from the last one.
    fn set_last_problem(&self, problem: Option<String>) -> bool {
        let mut last = self
            .last_problem
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = *last != problem;
        *last = problem;
        changed
    }

    async fn redeem(&self, path: &Path, token: SecretString) -> Outcome {
        tracing::info!(file = %path.display(), "redeeming a registration token from the provisioning directory");
        match self.agent.enroll(token, EnrollOptions::default()).await {
            Ok(enrolled) => {
                tracing::info!(
                    target: AUDIT_TARGET,
                    file = %path.display(),
                    identifier = %crate::secret::short_hash(&enrolled.identifier),
                    auth_token_id = %enrolled.auth_token_id.as_deref().map(crate::secret::short_hash).unwrap_or_default(),
                    "enrolled from a provisioning file"
                );
                Outcome::Redeemed
            }
            Err(e) => Outcome::Failed(e),
        }
    }

    fn settle(&self, dir: &DropDir, path: &Path, name: &str, outcome: Outcome) {
        match outcome {
            Outcome::Redeemed => {
                self.stats.provisioned.fetch_add(1, Ordering::Relaxed);
                match dir.remove(name) {
                    Ok(()) => {
                        tracing::info!(file = %path.display(), "provisioning file redeemed and deleted");
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::error!(file = %path.display(), error = %e, "redeemed, but cannot delete the provisioning file; delete it by hand");
                    }
                }
            }
            Outcome::Failed(e) => {
                self.stats
                    .provisioning_failed
                    .fetch_add(1, Ordering::Relaxed);
                let mut reason =
                    format!("{} ({}): {}\n", e.code.name(), e.code.number(), e.message);
                if e.code.is_retryable() {
                    reason.push_str(
                        "The agent keeps retrying this redemption in the background with the same identifier (no extra count); `regent status` shows whether it completed.\n",
                    );
                }
                reason.push_str(
                    "The token file was deleted: a registration token does not stay on disk. To try again, place the file again.\n",
                );
                tracing::warn!(
                    target: AUDIT_TARGET,
                    file = %path.display(),
                    code = %e.code,
                    error = %e.message,
                    "provisioning file not redeemed; deleted, reason in {name}.failed.reason"
                );
                if let Err(e) = dir.remove(name)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::error!(file = %path.display(), error = %e, "cannot delete the provisioning file; delete it by hand");
                }
                self.write_reason(dir, &format!("{name}.failed.reason"), &reason);
            }
            Outcome::Refused(problem) => {
                self.stats
                    .provisioning_refused
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    target: AUDIT_TARGET,
                    file = %path.display(),
                    problem = %problem,
                    "provisioning file refused unread; renamed to {name}.refused"
                );
                let target = format!("{name}.refused");
                if let Err(e) = dir.rename(name, &target) {
                    tracing::error!(file = %path.display(), error = %e, "cannot rename the provisioning file; remove it by hand");
                    return;
                }
                self.write_reason(dir, &format!("{target}.reason"), &format!("{problem}\n"));
            }
        }
    }

    fn write_reason(&self, dir: &DropDir, name: &str, reason: &str) {
        if let Err(e) = dir.write_new(name, reason.as_bytes()) {
            tracing::error!(file = %self.dir.join(name).display(), error = %e, "cannot write the outcome file");
        }
    }
}

fn is_candidate(name: &str) -> bool {
    !name.starts_with('.') && !IGNORED_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// The drop-in directory, checked and held open: every name is looked up
/// relative to this handle, never through the path again.
#[cfg(unix)]
struct DropDir {
    fd: std::os::fd::OwnedFd,
}

#[cfg(unix)]
impl DropDir {
    /// Opens `dir` after checking the directories above it, then checks the
    /// opened directory itself. `Err`: why it is unsafe (and the fix).
    fn open(dir: &Path) -> std::result::Result<DropDir, String> {
        use nix::fcntl::OFlag;
        use std::os::unix::fs::MetadataExt as _;
        let own = crate::ipc::peer::current_uid();
        let chain = crate::ipc::socket_dir::directory_chain(dir, "provisioning directory")
            .map_err(|e| e.message)?;
        for (ancestor, is_dir_itself) in chain {
            if is_dir_itself {
                continue;
            }
            let meta = std::fs::metadata(&ancestor)
                .map_err(|e| format!("cannot inspect {}: {e}", ancestor.display()))?;
            if let Some(problem) = crate::ipc::socket_dir::unsafe_parent(&meta, own) {
                return Err(format!(
                    "{}, a parent of the provisioning directory {}, {problem}, so another user could put a directory of their own in its place; \
                     fix: `chmod go-w {}` (or `chown` it to root), or set [provisioning] dir to a directory below private ones",
                    ancestor.display(),
                    dir.display(),
                    ancestor.display()
                ));
            }
        }
        let fd = nix::fcntl::open(
            dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| {
            format!(
                "cannot open the provisioning directory {} ({e}); it must be a directory, not a symbolic link",
                dir.display()
            )
        })?;
        let file = std::fs::File::from(fd);
        let meta = file.metadata().map_err(|e| {
            format!(
                "cannot inspect the provisioning directory {}: {e}",
                dir.display()
            )
        })?;
        if meta.uid() != 0 && meta.uid() != own {
            return Err(format!(
                "the provisioning directory {} belongs to uid {}, not to root or the agent's user (uid {own}); `chown` it, then place the token file again",
                dir.display(),
                meta.uid()
            ));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "the provisioning directory {} has mode {mode:04o}: group or others have access; `chmod 0700` it, then place the token file again",
                dir.display()
            ));
        }
        Ok(DropDir {
            fd: std::os::fd::OwnedFd::from(file),
        })
    }

    /// Every (UTF-8) name in the directory but `.` and `..`.
    fn names(&self) -> std::io::Result<Vec<String>> {
        use nix::fcntl::OFlag;
        let mut listing = nix::dir::Dir::openat(
            &self.fd,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        let mut names = Vec::new();
        for entry in listing.iter() {
            let entry = entry?;
            if let Ok(name) = entry.file_name().to_str()
                && name != "."
                && name != ".."
            {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    fn open_file(&self, name: &str) -> std::io::Result<std::fs::File> {
        use nix::fcntl::OFlag;
        let fd = nix::fcntl::openat(
            &self.fd,
            name,
            OFlag::O_RDONLY
                | OFlag::O_NOFOLLOW
                | OFlag::O_NONBLOCK
                | OFlag::O_NOCTTY
                | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        Ok(std::fs::File::from(fd))
    }

    fn remove(&self, name: &str) -> std::io::Result<()> {
        nix::unistd::unlinkat(&self.fd, name, nix::unistd::UnlinkatFlags::NoRemoveDir)?;
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        nix::fcntl::renameat(&self.fd, from, &self.fd, to)?;
        Ok(())
    }

    /// Puts a new `name` (`0600`) holding `bytes` in place atomically: a
    /// hidden temporary file created `O_EXCL|O_NOFOLLOW`, renamed over
    /// `name`. A rename replaces whatever `name` was (an older reason file, a
    /// symlink) without following it, and readers never see a partial file.
    fn write_new(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        use nix::fcntl::OFlag;
        use std::io::Write as _;
        let temp = format!(".{name}.tmp");
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mode = nix::sys::stat::Mode::from_bits_truncate(0o600);
        let fd = match nix::fcntl::openat(&self.fd, temp.as_str(), flags, mode) {
            // Left by an interrupted earlier write (or planted): not followed.
            Err(nix::errno::Errno::EEXIST) => {
                self.remove(&temp)?;
                nix::fcntl::openat(&self.fd, temp.as_str(), flags, mode)?
            }
            other => other?,
        };
        let written = std::fs::File::from(fd).write_all(bytes);
        match written.and_then(|()| self.rename(&temp, name)) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = self.remove(&temp);
                Err(e)
            }
        }
    }
}

/// Windows: the directory's ACL is the administrator's to set (install.ps1);
/// names are used through the path.
#[cfg(not(unix))]
struct DropDir {
    path: PathBuf,
}

#[cfg(not(unix))]
impl DropDir {
    fn open(dir: &Path) -> std::result::Result<DropDir, String> {
        Ok(DropDir {
            path: dir.to_path_buf(),
        })
    }

    fn names(&self) -> std::io::Result<Vec<String>> {
        Ok(std::fs::read_dir(&self.path)?
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| entry.file_name().into_string().ok())
            .collect())
    }

    fn open_file(&self, name: &str) -> std::io::Result<std::fs::File> {
        let path = self.path.join(name);
        if std::fs::symlink_metadata(&path)?.file_type().is_symlink() {
            return Err(std::io::Error::other("it is a symbolic link"));
        }
        std::fs::File::open(path)
    }

    fn remove(&self, name: &str) -> std::io::Result<()> {
        std::fs::remove_file(self.path.join(name))
    }

    fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        std::fs::rename(self.path.join(from), self.path.join(to))
    }

    fn write_new(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write as _;
        let path = self.path.join(name);
        let _ = std::fs::remove_file(&path);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)?
            .write_all(bytes)
    }
}

impl DropDir {
    /// Reads a token file after checking its type, owner, mode and size.
    /// `Ok(None)`: the file disappeared meanwhile.
    fn read_token(&self, name: &str) -> std::result::Result<Option<SecretString>, String> {
        let mut file = match self.open_file(name) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(format!(
                    "cannot open it ({e}); it must be a regular file (not a symlink) readable by the agent's user"
                ));
            }
        };
        let meta = file
            .metadata()
            .map_err(|e| format!("cannot inspect it: {e}"))?;
        if !meta.is_file() {
            return Err("it is not a regular file".to_owned());
        }
        check_owner_and_mode(&meta)?;
        if meta.len() > MAX_TOKEN_BYTES {
            return Err(format!(
                "it holds {} bytes; a registration token is far shorter (at most {MAX_TOKEN_BYTES})",
                meta.len()
            ));
        }
        let mut text = zeroize::Zeroizing::new(String::new());
        file.by_ref()
            .take(MAX_TOKEN_BYTES)
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read it: {e}"))?;
        let token = text.trim();
        if token.is_empty() {
            return Err("it is empty; write the registration token into it".to_owned());
        }
        if token.chars().any(char::is_whitespace) {
            return Err(
                "it holds more than one word; it must hold the registration token alone".to_owned(),
            );
        }
        Ok(Some(SecretString::from(token.to_owned())))
    }
}

#[cfg(unix)]
fn check_owner_and_mode(meta: &std::fs::Metadata) -> std::result::Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let own = crate::ipc::peer::current_uid();
    if meta.uid() != 0 && meta.uid() != own {
        return Err(format!(
            "it belongs to uid {}, not to root or the agent's user (uid {own})",
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "its mode is {mode:04o}: group or others may read or write it, so the token may have leaked and was not used; \
             write the token file with mode 0600 (e.g. `install -m 0600 token DIR/`), and consider issuing a new registration token"
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_owner_and_mode(_meta: &std::fs::Metadata) -> std::result::Result<(), String> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_are_candidates() {
        assert!(is_candidate("token"));
        assert!(is_candidate("site-a.token"));
        for name in [
            ".token",
            "token~",
            "token.tmp",
            "token.swp",
            "token.part",
            "token.failed",
            "token.failed.reason",
            "token.refused",
        ] {
            assert!(!is_candidate(name), "{name}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn loose_files_and_directories_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("prov");
        create_private_dir(&base).unwrap();
        let drop_dir = DropDir::open(&base).unwrap();
        drop_dir.write_new("token", b"  abc\n").unwrap();
        let read = |d: &DropDir, name: &str| {
            d.read_token(name).map(|s| {
                s.map(|s| {
                    use crate::secret::ExposeSecret;
                    s.expose_secret().to_owned()
                })
            })
        };
        assert_eq!(read(&drop_dir, "token").unwrap(), Some("abc".to_owned()));
        let file = base.join("token");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let problem = read(&drop_dir, "token").unwrap_err();
        assert!(problem.contains("0644"), "{problem}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&file, b"two words").unwrap();
        assert!(
            read(&drop_dir, "token")
                .unwrap_err()
                .contains("more than one word")
        );
        std::os::unix::fs::symlink(&file, base.join("link")).unwrap();
        assert!(read(&drop_dir, "link").is_err());
        assert!(read(&drop_dir, "missing").unwrap().is_none());
        let mut names = drop_dir.names().unwrap();
        names.sort();
        assert_eq!(names, ["link", "token"]);
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        let problem = DropDir::open(&base).err().unwrap();
        assert!(problem.contains("0755"), "{problem}");
        // A symlink in place of the directory is refused, not followed.
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = dir.path().join("prov-link");
        std::os::unix::fs::symlink(&base, &link).unwrap();
        assert!(DropDir::open(&link).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn a_writable_parent_makes_the_directory_unsafe() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let parent = dir.path().join("shared");
        let base = parent.join("prov");
        create_private_dir(&base).unwrap();
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o777)).unwrap();
        let problem = DropDir::open(&base).err().unwrap();
        assert!(
            problem.contains("a parent of the provisioning directory"),
            "{problem}"
        );
        assert!(problem.contains(&parent.display().to_string()), "{problem}");
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(DropDir::open(&base).is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn reason_files_never_follow_a_planted_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("prov");
        create_private_dir(&base).unwrap();
        let victim = dir.path().join("secrets.json");
        std::fs::write(&victim, b"{\"keep\":1}").unwrap();
        std::os::unix::fs::symlink(&victim, base.join("t.refused.reason")).unwrap();
        let drop_dir = DropDir::open(&base).unwrap();
        drop_dir.write_new("t.refused.reason", b"why\n").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"{\"keep\":1}");
        let written = base.join("t.refused.reason");
        assert!(std::fs::symlink_metadata(&written).unwrap().is_file());
        assert_eq!(std::fs::read(&written).unwrap(), b"why\n");
    }
}
