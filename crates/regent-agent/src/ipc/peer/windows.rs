//! Windows: a pipe client's program is the image path read when it connected
//! (there is no `/proc`). Compiled wherever `/proc` is (it is plain data and
//! tested there too); the Win32 calls sit in `regent_client::win32`, and the
//! account checks (SIDs) in [`Policy::account_access`].

use super::*;

#[cfg(not(target_os = "macos"))]
impl Peer {
    /// Windows: the image path read at connect (`QueryFullProcessImageNameW`)
    /// and the identity of the file at that path now (volume serial number
    /// and file index).
    pub(super) fn windows_executable(&self, pid: u32) -> ExeLookup {
        let Some(path) = self.image.clone() else {
            return ExeLookup::Unknown(format!(
                "the image path of process {pid} could not be read"
            ));
        };
        match file_id(&path) {
            Some(id) => ExeLookup::Found(Executable { path, id }),
            None => ExeLookup::Unknown(format!(
                "cannot open {}, the image of process {pid}, to identify it",
                shown(&path)
            )),
        }
    }
}
