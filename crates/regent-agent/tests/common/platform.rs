//! What differs between platforms in the agent's integration tests: where
//! the agent listens (a socket file, or on Windows a pipe name), how a path
//! goes into a TOML config, and a raw connection for protocol-level tests.

use std::io;
use std::path::{Path, PathBuf};

use interprocess::local_socket::{ConnectOptions, GenericFilePath, Stream, ToFsName};

/// Where a test agent listens: `agent.sock` in the test's directory, or on
/// Windows a pipe name of this process's own (`\\.\pipe\regent-test-<pid>-<n>`),
/// never the default one, so tests do not meet each other or a real agent.
pub fn endpoint(dir: &Path) -> PathBuf {
    #[cfg(unix)]
    {
        dir.join("agent.sock")
    }
    #[cfg(windows)]
    {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let _ = dir;
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        PathBuf::from(format!(r"\\.\pipe\regent-test-{}-{n}", std::process::id()))
    }
}

/// A TOML string holding `path` as written: Windows paths carry `\u…`,
/// which a plain `"…"` pasted into a config reads as an escape.
pub fn toml_path(path: &Path) -> String {
    toml_str(&path.to_string_lossy())
}

/// `text` as a TOML string value, quoted and escaped by the `toml` crate.
pub fn toml_str(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// A raw connection to the agent at `path` (the platform's own IPC), for
/// tests below the client library. Reads give up after 5 s where the
/// platform has read timeouts (not named pipes: the agent's own
/// `read_timeout` ends a stalled exchange there).
pub fn connect_raw(path: &Path) -> io::Result<Stream> {
    let name = path.to_fs_name::<GenericFilePath>()?;
    let stream = ConnectOptions::new().name(name).connect_sync()?;
    #[cfg(unix)]
    {
        use interprocess::local_socket::traits::Stream as _;
        stream.set_recv_timeout(Some(std::time::Duration::from_secs(5)))?;
    }
    Ok(stream)
}
