//! macOS, which has no `/proc`: the peer's program from `proc_pidpath`
//! (`ipc/macos.rs`), its process pinned by the stamp read at accept.
//! **Compiled, never run** (see `ipc/macos.rs`).

use super::*;

/// macOS: the program from `proc_pidpath` (`ipc/macos.rs`), the process
/// pinned by its stamp.
#[cfg(target_os = "macos")]
impl Peer {
    /// The peer's executable as `proc_pidpath` names it, for audit lines
    /// when `allow_executables` is not set (nothing is checked then).
    pub fn executable(&self) -> Option<PathBuf> {
        crate::ipc::macos::program(self.pid?).ok()
    }

    /// The peer's executable, for the `allow_executables` check (macOS): the
    /// path `proc_pidpath` names and the identity of the file at that path.
    /// The process must carry the stamp read when the connection was
    /// accepted before and after the path is read; without a stamp the peer
    /// is refused.
    pub fn lookup_executable(&self, pinned: Option<PinnedProcess<'_>>) -> ExeLookup {
        let Some(pid) = self.pid else {
            return ExeLookup::Unknown("the kernel reported no process id (LOCAL_PEERPID)".into());
        };
        let Some(pinned) = pinned else {
            return ExeLookup::Unknown(format!(
                "process {pid} could not be pinned (proc_pidinfo refused, or the pid now belongs to another process)"
            ));
        };
        if !pinned.is_still(pid) {
            return ExeLookup::Unknown(format!(
                "process {pid} exited before its program could be checked"
            ));
        }
        let path = match crate::ipc::macos::program(pid) {
            Ok(path) => path,
            Err(e) => return ExeLookup::Unknown(format!("proc_pidpath({pid}) failed: {e}")),
        };
        let meta = std::fs::metadata(&path);
        if !pinned.is_still(pid) {
            return ExeLookup::Unknown(format!(
                "process {pid} exited while its program was being checked"
            ));
        }
        match meta {
            Ok(meta) => {
                use std::os::unix::fs::MetadataExt;
                let id = FileId {
                    dev: meta.dev(),
                    ino: meta.ino(),
                };
                ExeLookup::Found(Executable { path, id })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ExeLookup::Deleted(path),
            Err(e) => ExeLookup::Unknown(format!("cannot stat {}: {e}", shown(&path))),
        }
    }
}
