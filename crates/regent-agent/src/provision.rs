//! Provisioning drop-in (DESIGN §12): a registration-token file placed in
//! `[provisioning] dir` is redeemed once, then deleted.
//!
//! The directory is scanned at start and on every (debounced) change. For
//! each candidate file:
//! - the directory must belong to root or the agent's user and give group and
//!   others nothing (`0700`), and the file must be a regular file (not a
//!   symlink) owned by root or the agent's user that group and others can
//!   neither read nor write (`0600`/`0400`). Anything else is **refused
//!   unread**: renamed `NAME.refused`, with `NAME.refused.reason` saying why;
//! - the token is redeemed through [`Agent::enroll`]; on success the file is
//!   deleted, on failure it is renamed `NAME.failed` next to
//!   `NAME.failed.reason` naming the error code and message.
//!
//! Names starting with `.` or ending in `~`, `.tmp`, `.swp`, `.part`,
//! `.failed`, `.refused` or `.reason` are never read, so writers can create
//! `.NAME` and rename it into place atomically.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use regent_proto::ErrorCode;

use crate::agent::{Agent, EnrollOptions};
use crate::error::{Error, Result};
use crate::ipc::ServerStats;
use crate::ipc::connection::AUDIT_TARGET;
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
pub fn watch(
    dir: &Path,
    agent: Arc<Agent>,
    stats: Arc<ServerStats>,
) -> Result<ProvisioningWatcher> {
    create_private_dir(dir)?;
    let mut watch = watch_dir(dir, DEBOUNCE)?;
    let provisioner = Provisioner {
        dir: dir.to_path_buf(),
        agent,
        stats,
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
    stats: Arc<ServerStats>,
}

/// What happened to one drop-in file.
enum Outcome {
    Redeemed,
    Failed(Error),
    Refused(String),
}

impl Provisioner {
    async fn scan(&self) {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "cannot read the provisioning directory");
                return;
            }
        };
        let mut names: Vec<String> = entries
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| is_candidate(name))
            .collect();
        if names.is_empty() {
            return;
        }
        names.sort();
        let dir_problem = check_dir(&self.dir).err();
        for name in names {
            let path = self.dir.join(&name);
            let outcome = match &dir_problem {
                Some(problem) => Outcome::Refused(problem.clone()),
                None => self.redeem(&path).await,
            };
            self.settle(&path, &name, outcome);
        }
    }

    async fn redeem(&self, path: &Path) -> Outcome {
        let token = match read_token(path) {
            Ok(Some(token)) => token,
            // Gone meanwhile (an admin removed it): nothing to report.
            Ok(None) => return Outcome::Redeemed,
            Err(problem) => return Outcome::Refused(problem),
        };
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

    fn settle(&self, path: &Path, name: &str, outcome: Outcome) {
        match outcome {
            Outcome::Redeemed => {
                self.stats.provisioned.fetch_add(1, Ordering::Relaxed);
                match std::fs::remove_file(path) {
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
                tracing::warn!(
                    target: AUDIT_TARGET,
                    file = %path.display(),
                    code = %e.code,
                    error = %e.message,
                    "provisioning file not redeemed; renamed to {name}.failed"
                );
                self.set_aside(path, name, "failed", &reason);
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
                self.set_aside(path, name, "refused", &format!("{problem}\n"));
            }
        }
    }

    /// Renames the token file `NAME.<outcome>` and writes `NAME.<outcome>.reason`.
    fn set_aside(&self, path: &Path, name: &str, outcome: &str, reason: &str) {
        let target = self.dir.join(format!("{name}.{outcome}"));
        if let Err(e) = std::fs::rename(path, &target) {
            tracing::error!(file = %path.display(), error = %e, "cannot rename the provisioning file; remove it by hand");
            return;
        }
        let reason_path = self.dir.join(format!("{name}.{outcome}.reason"));
        if let Err(e) = write_private(&reason_path, reason.as_bytes()) {
            tracing::error!(file = %reason_path.display(), error = %e, "cannot write the outcome file");
        }
    }
}

fn is_candidate(name: &str) -> bool {
    !name.starts_with('.') && !IGNORED_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// The directory must not let anyone but its owner (root or us) in.
#[cfg(unix)]
fn check_dir(dir: &Path) -> std::result::Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir).map_err(|e| {
        format!(
            "cannot inspect the provisioning directory {}: {e}",
            dir.display()
        )
    })?;
    let own = crate::ipc::peer::current_uid();
    if meta.uid() != 0 && meta.uid() != own {
        return Err(format!(
            "the provisioning directory {} belongs to uid {}, not to root or the agent's user (uid {own}); `chown` it",
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
    Ok(())
}

#[cfg(not(unix))]
fn check_dir(_dir: &Path) -> std::result::Result<(), String> {
    // Windows: the directory's ACL is the administrator's to set (install.ps1).
    Ok(())
}

/// Reads a token file after checking its type, owner, mode and size.
/// `Ok(None)`: the file disappeared meanwhile.
fn read_token(path: &Path) -> std::result::Result<Option<SecretString>, String> {
    let mut file = match open_no_follow(path) {
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

#[cfg(unix)]
fn open_no_follow(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits() | nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
}

#[cfg(not(unix))]
fn open_no_follow(path: &Path) -> std::io::Result<std::fs::File> {
    if std::fs::symlink_metadata(path)?.file_type().is_symlink() {
        return Err(std::io::Error::other("it is a symbolic link"));
    }
    std::fs::File::open(path)
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

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(bytes)
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
        assert!(check_dir(&base).is_ok());
        let file = base.join("token");
        write_private(&file, b"  abc\n").unwrap();
        assert_eq!(
            read_token(&file).unwrap().map(|s| {
                use crate::secret::ExposeSecret;
                s.expose_secret().to_owned()
            }),
            Some("abc".to_owned())
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let problem = read_token(&file).unwrap_err();
        assert!(problem.contains("0644"), "{problem}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&file, b"two words").unwrap();
        assert!(
            read_token(&file)
                .unwrap_err()
                .contains("more than one word")
        );
        std::os::unix::fs::symlink(&file, base.join("link")).unwrap();
        assert!(read_token(&base.join("link")).is_err());
        assert!(read_token(&base.join("missing")).unwrap().is_none());
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(check_dir(&base).unwrap_err().contains("0755"));
    }
}
