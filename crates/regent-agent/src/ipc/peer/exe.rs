//! A peer's program as the agent identifies it: the file's identity (device
//! and inode, or volume and file index), canonical paths, and how paths are
//! shown.

use super::*;

/// A file's identity: device and inode (Windows: the volume's serial number
/// and the file index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    /// Device number (Windows: volume serial number).
    pub dev: u64,
    /// Inode number (Windows: file index).
    pub ino: u64,
}

/// The identity of the file at `path` (symlinks followed), now.
pub fn file_id(path: &Path) -> Option<FileId> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        Some(FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
    #[cfg(windows)]
    {
        let (dev, ino) = regent_client::win32::file_identity(path).ok()?;
        Some(FileId { dev, ino })
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = path;
        None
    }
}

/// Whether two program paths name the same path: byte for byte on Unix; on
/// Windows as Windows compares them ([`windows_path_key`]).
pub(super) fn same_path(a: &Path, b: &Path) -> bool {
    if cfg!(windows) {
        windows_path_key(&a.to_string_lossy()) == windows_path_key(&b.to_string_lossy())
    } else {
        a == b
    }
}

/// A Windows path in a form to compare: without the verbatim prefix
/// (`strip_verbatim`), `/` read as `\`, and each character upper-cased
/// when that gives one character, as Windows' case-insensitive comparison of
/// NTFS names does (its upcase table maps characters one to one).
pub fn windows_path_key(path: &str) -> String {
    strip_verbatim(&path.replace('/', "\\"))
        .chars()
        .map(|c| {
            let mut upper = c.to_uppercase();
            match (upper.next(), upper.next()) {
                (Some(u), None) => u,
                _ => c,
            }
        })
        .collect()
}

/// Removes the `\\?\` (verbatim) prefix that `canonicalize` adds on
/// Windows: `\\?\C:\x` → `C:\x`, `\\?\UNC\server\x` → `\\server\x`.
pub(super) fn strip_verbatim(path: &str) -> String {
    if let Some(rest) = path.strip_prefix(r"\\?\UNC\") {
        format!(r"\\{rest}")
    } else if let Some(rest) = path.strip_prefix(r"\\?\") {
        rest.to_owned()
    } else {
        path.to_owned()
    }
}

/// `path` canonicalised (symlinks resolved); on Windows without the
/// verbatim prefix, so that it reads as programs' image paths do.
pub(super) fn canonical(path: &Path) -> std::io::Result<PathBuf> {
    let path = std::fs::canonicalize(path)?;
    if cfg!(windows) {
        return Ok(PathBuf::from(strip_verbatim(&path.to_string_lossy())));
    }
    Ok(path)
}

/// A mount namespace link's text, e.g. `mnt:[4026531841]`.
#[cfg(not(target_os = "macos"))]
pub(super) fn mount_namespace(link: &str) -> Option<String> {
    std::fs::read_link(link)
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// A peer's program: the path `/proc/PID/exe` names and the file's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executable {
    /// The path, as the kernel names it.
    pub path: PathBuf,
    /// The running file's device and inode.
    pub id: FileId,
}

/// What `/proc/PID/exe` says about a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExeLookup {
    /// The program.
    Found(Executable),
    /// The program's file was deleted or replaced after the process started;
    /// the path it had.
    Deleted(PathBuf),
    /// The process runs in another mount namespace, where paths name other
    /// files (a container, or `unshare -m` with a bind mount).
    ForeignNamespace {
        /// The path `/proc/PID/exe` shows (meaningful in that namespace only).
        path: PathBuf,
        /// Its mount namespace, e.g. `mnt:[4026532175]`.
        namespace: String,
    },
    /// Not known, and why.
    Unknown(String),
}

/// The kernel appends this to `/proc/PID/exe` when the file was unlinked.
pub(super) const DELETED_SUFFIX: &str = " (deleted)";

/// Splits off the kernel's ` (deleted)` marker: the path, and whether the
/// file was deleted or replaced since the process started.
pub(super) fn split_deleted(path: PathBuf) -> (PathBuf, bool) {
    let text = path.as_os_str().as_encoded_bytes();
    match text.strip_suffix(DELETED_SUFFIX.as_bytes()) {
        Some(before) => (
            PathBuf::from(String::from_utf8_lossy(before).into_owned()),
            true,
        ),
        None => (path, false),
    }
}

/// A path as logs and messages show it: control characters (a newline that
/// would forge a log line, an escape sequence for a terminal) escaped.
pub fn shown(path: &Path) -> String {
    // As `escape_debug` (control and invisible characters), except that
    // backslashes and quotes stay as they are: a Windows path reads as one.
    path.to_string_lossy()
        .chars()
        .map(|c| match c {
            '\\' | '"' | '\'' => c.to_string(),
            _ => c.escape_debug().to_string(),
        })
        .collect()
}
