//! Start-up checks of the socket's directory and of the socket file (Unix).
//!
//! Whoever can write to the directory holding the socket can remove the
//! agent's socket and put their own in its place: apps would then send their
//! hello (and an administrator's `regent enroll` its registration token) to
//! an impostor. So before binding, the agent refuses a socket directory —
//! or any directory above it — that:
//!
//! - belongs to a user other than root or the agent's own uid, or
//! - is group- or world-writable. For a directory above the socket's, the
//!   sticky bit (as on `/tmp`) makes that safe: others cannot rename or
//!   remove what they do not own. For the socket's own directory it does
//!   not: while the agent is stopped, anyone who may create files there can
//!   bind the socket's name first and answer apps in the agent's place.
//!
//! Every ancestor is checked, not only the immediate directory: a writable
//! parent lets its owner rename the socket directory away and create a
//! look-alike (the same rule as OpenSSH's `StrictModes`). Both the path as
//! configured and its canonical form are walked, so a symlink in the path is
//! judged by the directory that holds it and by the directory it points to.
//!
//! After `bind`, the socket file itself must be a socket owned by the agent's
//! uid with exactly the configured mode.

use std::collections::HashSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use regent_proto::ErrorCode;

use crate::error::{Error, Result};

/// Checks `dir` (the socket's directory) and every directory above it.
///
/// # Errors
/// `CONFIG` naming the directory, the problem and the fix.
pub fn check_socket_dir(dir: &Path, own_uid: u32) -> Result<()> {
    for (ancestor, is_dir_itself) in directory_chain(dir, "socket directory")? {
        check_one(&ancestor, (!is_dir_itself).then_some(dir), own_uid)?;
    }
    Ok(())
}

/// `dir` and every directory above it, as written (made absolute) and in its
/// canonical form, each once, `dir` itself marked `true`: whoever can write
/// to any of them can swap what lies below. `what` names `dir` in errors.
///
/// # Errors
/// `CONFIG` when the path cannot be resolved.
pub fn directory_chain(dir: &Path, what: &str) -> Result<Vec<(PathBuf, bool)>> {
    let written = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| {
                Error::new(
                    ErrorCode::Config,
                    format!("cannot resolve the {what} {}: {e}", dir.display()),
                )
            })?
            .join(dir)
    };
    let canonical = std::fs::canonicalize(&written).map_err(|e| {
        Error::new(
            ErrorCode::Config,
            format!("cannot resolve the {what} {}: {e}", written.display()),
        )
    })?;
    let mut seen = HashSet::new();
    let mut chain = Vec::new();
    for path in [&written, &canonical] {
        for ancestor in path.ancestors() {
            if ancestor.as_os_str().is_empty() || !seen.insert(ancestor.to_path_buf()) {
                continue;
            }
            chain.push((ancestor.to_path_buf(), ancestor == path.as_path()));
        }
    }
    Ok(chain)
}

/// Why a directory above a private one is unsafe, if it is: it belongs to
/// another user than root or `own_uid`, or others may write to it without
/// the sticky bit (with it, as on `/tmp`, they cannot rename what is not
/// theirs). The rule [`check_socket_dir`] applies to the socket's parents.
pub fn unsafe_parent(meta: &std::fs::Metadata, own_uid: u32) -> Option<String> {
    let owner = meta.uid();
    if owner != 0 && owner != own_uid {
        return Some(format!(
            "belongs to uid {owner}, not to root or the agent's uid {own_uid}"
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Some(format!(
            "is writable by others (mode {mode:04o}) without the sticky bit"
        ));
    }
    None
}

/// One directory of the chain; `below` is the socket directory when `dir` is
/// one of its parents.
fn check_one(dir: &Path, below: Option<&Path>, own_uid: u32) -> Result<()> {
    let meta = std::fs::metadata(dir).map_err(|e| {
        Error::new(
            ErrorCode::Config,
            format!("cannot inspect {}: {e}", describe(dir, below)),
        )
    })?;
    if !meta.is_dir() {
        return Err(Error::new(
            ErrorCode::Config,
            format!(
                "{} is not a directory; choose another [ipc] socket path",
                describe(dir, below)
            ),
        ));
    }
    let owner = meta.uid();
    if owner != 0 && owner != own_uid {
        return Err(Error::new(
            ErrorCode::Config,
            format!(
                "unsafe socket directory: {} belongs to uid {owner}, not to root or the agent's uid {own_uid}, so that user could replace the agent's socket with their own; \
                 fix: `chown {own_uid} {}` (or root), or set [ipc] socket to a path in a directory the agent's user owns",
                describe(dir, below),
                dir.display()
            ),
        ));
    }
    let mode = meta.mode() & 0o7777;
    let sticky = mode & 0o1000 != 0;
    let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => "group- and world-writable",
        (true, false) => "group-writable",
        _ => "world-writable",
    };
    if mode & 0o022 != 0 && sticky && below.is_none() {
        return Err(Error::new(
            ErrorCode::Config,
            format!(
                "unsafe socket directory: {} is {who} (mode {mode:04o}); the sticky bit does not help here: while the agent is stopped, another user can bind the socket's name first and answer apps in the agent's place; \
                 fix: `chmod go-w {}`, or set [ipc] socket to a path in a private directory (such as $XDG_RUNTIME_DIR/regent or /run/regent)",
                describe(dir, below),
                dir.display()
            ),
        ));
    }
    if mode & 0o022 != 0 && !sticky {
        return Err(Error::new(
            ErrorCode::Config,
            format!(
                "unsafe socket directory: {} is {who} (mode {mode:04o}) without the sticky bit, so other users could remove the agent's socket and put their own in its place; \
                 fix: `chmod go-w {}`{}, or set [ipc] socket to a path in a private directory",
                describe(dir, below),
                dir.display(),
                // A sticky parent is safe; the socket's own directory is not (above).
                if below.is_some() {
                    " (or `chmod +t` it)"
                } else {
                    ""
                }
            ),
        ));
    }
    Ok(())
}

fn describe(dir: &Path, below: Option<&Path>) -> String {
    match below {
        None => format!("the socket directory {}", dir.display()),
        Some(socket_dir) => format!(
            "{}, a parent of the socket directory {},",
            dir.display(),
            socket_dir.display()
        ),
    }
}

/// After `bind`: the path holds a socket, owned by the agent's uid, with
/// exactly `mode`.
///
/// # Errors
/// `CONFIG` naming the socket, what was found and what was expected.
pub fn verify_socket_file(path: &Path, mode: u32, own_uid: u32) -> Result<()> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| {
        Error::new(
            ErrorCode::Config,
            format!(
                "the socket {} vanished right after it was created: {e}",
                path.display()
            ),
        )
    })?;
    let found_mode = meta.mode() & 0o7777;
    let problem = if !meta.file_type().is_socket() {
        Some("is not a socket".to_owned())
    } else if meta.uid() != own_uid {
        Some(format!(
            "belongs to uid {}, not the agent's uid {own_uid}",
            meta.uid()
        ))
    } else if found_mode != mode {
        Some(format!(
            "has mode {found_mode:04o}, not the configured {mode:04o}"
        ))
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(Error::new(
            ErrorCode::Config,
            format!(
                "the socket {} {problem} right after the agent created it; the directory may be on a filesystem that ignores modes or shared with another process: \
                 set [ipc] socket to a path in a private directory on a local filesystem",
                path.display()
            ),
        )),
    }
}

/// The directory a socket path lives in (`.` for a bare file name).
pub fn socket_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn me() -> u32 {
        crate::ipc::peer::current_uid()
    }

    /// A private base directory under the system temp dir (itself 1777).
    fn base() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        chmod(dir.path(), 0o700);
        dir
    }

    #[test]
    fn a_private_directory_is_accepted() {
        let base = base();
        let run = base.path().join("run");
        std::fs::create_dir(&run).unwrap();
        for mode in [0o700, 0o750, 0o755, 0o1700, 0o1755] {
            chmod(&run, mode);
            check_socket_dir(&run, me()).unwrap_or_else(|e| panic!("{mode:o}: {e}"));
        }
    }

    #[test]
    fn a_writable_directory_with_the_sticky_bit_is_refused_too() {
        let base = base();
        let run = base.path().join("run");
        std::fs::create_dir(&run).unwrap();
        for (mode, what) in [
            (0o1777, "group- and world-writable (mode 1777)"),
            (0o1770, "group-writable (mode 1770)"),
            (0o1703, "world-writable (mode 1703)"),
        ] {
            chmod(&run, mode);
            let e = check_socket_dir(&run, me()).unwrap_err();
            assert_eq!(e.code, ErrorCode::Config);
            assert!(e.message.contains(&run.display().to_string()), "{e}");
            assert!(e.message.contains(what), "{e}");
            assert!(e.message.contains("sticky bit does not help"), "{e}");
            assert!(e.message.contains("bind the socket's name first"), "{e}");
            assert!(e.message.contains("chmod go-w"), "{e}");
        }
    }

    /// The packaged defaults: `/run/regent` (0750, the agent's user, below
    /// root's 0755 `/run`) and `$XDG_RUNTIME_DIR/regent` (0700 below the
    /// user's 0700 runtime directory) — rebuilt here below a private base.
    #[test]
    fn the_default_runtime_directories_pass() {
        let base = base();
        chmod(base.path(), 0o755);
        let system = base.path().join("run/regent");
        let user = base.path().join("run/user/1000/regent");
        std::fs::create_dir_all(&system).unwrap();
        std::fs::create_dir_all(&user).unwrap();
        chmod(&base.path().join("run"), 0o755);
        chmod(&system, 0o750);
        chmod(&base.path().join("run/user"), 0o755);
        chmod(&base.path().join("run/user/1000"), 0o700);
        chmod(&user, 0o700);
        check_socket_dir(&system, me()).unwrap();
        check_socket_dir(&user, me()).unwrap();
        // The real ones, where this machine has them.
        for real in [
            Some(PathBuf::from("/run")),
            std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
        ]
        .into_iter()
        .flatten()
        .filter(|d| d.is_dir())
        {
            let meta = std::fs::metadata(&real).unwrap();
            if meta.uid() == me() || meta.uid() == 0 {
                check_one(&real, Some(&real.join("regent")), me())
                    .unwrap_or_else(|e| panic!("{}: {e}", real.display()));
            }
        }
    }

    #[test]
    fn a_writable_directory_without_sticky_bit_is_refused_naming_it_and_the_fix() {
        let base = base();
        let run = base.path().join("run");
        std::fs::create_dir(&run).unwrap();
        for (mode, what) in [
            (0o777, "group- and world-writable"),
            (0o770, "group-writable"),
            (0o703, "world-writable"),
        ] {
            chmod(&run, mode);
            let e = check_socket_dir(&run, me()).unwrap_err();
            assert_eq!(e.code, ErrorCode::Config);
            assert!(e.message.contains(&run.display().to_string()), "{e}");
            assert!(e.message.contains(what), "{e}");
            assert!(e.message.contains("sticky bit"), "{e}");
            assert!(e.message.contains("chmod go-w"), "{e}");
            assert!(e.message.contains("the socket directory"), "{e}");
        }
    }

    #[test]
    fn a_writable_parent_is_refused_too() {
        let base = base();
        let parent = base.path().join("shared");
        let run = parent.join("run");
        std::fs::create_dir_all(&run).unwrap();
        chmod(&run, 0o700);
        chmod(&parent, 0o777);
        let e = check_socket_dir(&run, me()).unwrap_err();
        assert!(
            e.message.contains("a parent of the socket directory"),
            "{e}"
        );
        assert!(e.message.contains(&parent.display().to_string()), "{e}");
        chmod(&parent, 0o1777);
        check_socket_dir(&run, me()).unwrap();
    }

    #[test]
    fn a_symlink_to_an_unsafe_directory_is_judged_by_its_target() {
        let base = base();
        let open = base.path().join("open");
        let target = open.join("sockets");
        std::fs::create_dir_all(&target).unwrap();
        chmod(&target, 0o700);
        chmod(&open, 0o777);
        let link = base.path().join("run");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = check_socket_dir(&link, me()).unwrap_err();
        assert!(e.message.contains(&open.display().to_string()), "{e}");
    }

    #[test]
    fn a_directory_of_another_user_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: chown to another uid needs root");
            return;
        }
        let base = base();
        let run = base.path().join("run");
        std::fs::create_dir(&run).unwrap();
        chmod(&run, 0o700);
        nix::unistd::chown(&run, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let e = check_socket_dir(&run, 0).unwrap_err();
        assert!(e.message.contains("belongs to uid 65534"), "{e}");
        assert!(e.message.contains("chown 0"), "{e}");
        // The same directory is fine for an agent running as its owner.
        check_socket_dir(&run, 65534).unwrap();
    }

    #[test]
    fn the_socket_file_must_have_the_configured_mode_and_owner() {
        let base = base();
        let path = base.path().join("agent.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        chmod(&path, 0o600);
        verify_socket_file(&path, 0o600, me()).unwrap();
        let e = verify_socket_file(&path, 0o660, me()).unwrap_err();
        assert!(
            e.message.contains("has mode 0600, not the configured 0660"),
            "{e}"
        );
        let e = verify_socket_file(&path, 0o600, me() + 1).unwrap_err();
        assert!(e.message.contains("belongs to uid"), "{e}");
        let file = base.path().join("plain");
        std::fs::write(&file, b"").unwrap();
        let e = verify_socket_file(&file, 0o600, me()).unwrap_err();
        assert!(e.message.contains("is not a socket"), "{e}");
    }
}
