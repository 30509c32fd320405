//! `--output FILE`: a new registration token written to a `0600` file,
//! removed again if writing it fails.

use super::*;

/// The `--output` file: created new (`O_EXCL|O_NOFOLLOW`, `0600`) before the
/// token exists, removed again unless the token was written to it.
pub(super) struct OutputFile {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl OutputFile {
    pub(super) fn create(path: &Path) -> Result<OutputFile, Error> {
        match regent_agent::store::atomic::create_new_private(path) {
            Ok(file) => Ok(OutputFile {
                path: path.to_path_buf(),
                file: Some(file),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(Error::new(
                ErrorCode::BadRequest,
                format!(
                    "{} already exists; --output writes the registration token only to a new file (mode 0600), never over an existing one or through a symlink: remove it or name another path",
                    path.display()
                ),
            )),
            Err(e) => Err(internal(&format!("cannot create {}", path.display()), e)),
        }
    }

    pub(super) fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        use std::io::Write as _;
        let Some(mut file) = self.file.take() else {
            return Ok(());
        };
        file.write_all(bytes)
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| file.sync_all())
            .map_err(|e| internal(&format!("cannot write {}", self.path.display()), e))?;
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            // Nothing (or not all) was written: leave no empty or partial file.
            drop(self.file.take());
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
