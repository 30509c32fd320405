//! The fake agent's transport, the platform's own IPC: a Unix socket, or on
//! Windows a named pipe (interprocess, the crate the client itself uses).
//! Everything else in the fake is the same on both.

use std::path::PathBuf;

/// A fresh socket path (in a temporary directory that must outlive the
/// listener), or on Windows a pipe name of this process's own, so tests
/// never meet each other (nor the default pipe name).
pub fn endpoint() -> (Option<tempfile::TempDir>, PathBuf) {
    #[cfg(unix)]
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        (Some(dir), path)
    }
    #[cfg(windows)]
    {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!(r"\\.\pipe\regent-test-{}-{n}", std::process::id());
        (None, PathBuf::from(name))
    }
}

#[cfg(unix)]
mod imp {
    use std::io::{self, Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::Path;

    pub struct Listener(UnixListener);

    impl Listener {
        pub fn bind(path: &Path) -> Listener {
            Listener(UnixListener::bind(path).unwrap())
        }
        pub fn accept(&self) -> io::Result<Conn> {
            self.0.accept().map(|(stream, _)| Conn(stream))
        }
    }

    /// One accepted connection; read by one thread while others write.
    pub struct Conn(UnixStream);

    impl Conn {
        pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
            (&self.0).read(buf)
        }
        pub fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
            (&self.0).write_all(bytes)
        }
        /// Ends the connection: the client reads what was sent, then EOF;
        /// a read blocked on this side returns.
        pub fn close(&self) {
            let _ = self.0.shutdown(std::net::Shutdown::Both);
        }
        /// As the agent dying would.
        pub fn kill(&self) {
            self.close();
        }
    }

    /// Connects and hangs up at once (to wake a blocked `accept`).
    pub fn poke(path: &Path) {
        let _ = UnixStream::connect(path);
    }

    /// Leaves no socket file behind (an agent that is down).
    pub fn remove(path: &Path) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(windows)]
mod imp {
    use std::io::{self, Read, Write};
    use std::os::windows::io::{AsHandle, AsRawHandle};
    use std::path::Path;

    use interprocess::local_socket::traits::Listener as _;
    use interprocess::local_socket::{
        ConnectOptions, GenericFilePath, ListenerOptions, Stream, ToFsName,
    };

    pub struct Listener(interprocess::local_socket::Listener);

    impl Listener {
        pub fn bind(path: &Path) -> Listener {
            let name = path.to_fs_name::<GenericFilePath>().unwrap();
            let listener = ListenerOptions::new()
                .name(name.into_owned())
                .create_sync()
                .unwrap();
            Listener(listener)
        }
        pub fn accept(&self) -> io::Result<Conn> {
            self.0.accept().map(Conn)
        }
    }

    /// One accepted pipe instance (overlapped, so one thread may read while
    /// another writes).
    pub struct Conn(Stream);

    impl Conn {
        pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
            (&self.0).read(buf)
        }
        pub fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
            (&self.0).write_all(bytes)
        }
        /// Ends the connection once the client has read what was sent
        /// (FlushFileBuffers waits for that; a disconnect alone discards it).
        pub fn close(&self) {
            let _ = (&self.0).flush();
            self.kill();
        }
        /// Disconnects the pipe instance at once, unread data and all, as
        /// the agent dying would; a read blocked on this side returns.
        pub fn kill(&self) {
            let Stream::NamedPipe(pipe) = &self.0;
            let handle = pipe.inner().as_handle().as_raw_handle();
            // The only call interprocess has no safe form of; test code.
            #[allow(unsafe_code)]
            // SAFETY: `handle` is this connection's server end of the pipe,
            // open for as long as `self` is borrowed here.
            unsafe {
                windows_sys::Win32::System::Pipes::DisconnectNamedPipe(handle);
            }
        }
    }

    /// Connects and hangs up at once (to wake a blocked `accept`).
    pub fn poke(path: &Path) {
        if let Ok(name) = path.to_fs_name::<GenericFilePath>() {
            let _ = ConnectOptions::new().name(name).connect_sync();
        }
    }

    /// A pipe name is gone with its last instance: nothing to remove.
    pub fn remove(_path: &Path) {}
}

pub use imp::{Conn, Listener, poke, remove};
