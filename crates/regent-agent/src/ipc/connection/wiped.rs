//! The connection's read and write buffers, which may hold secrets: wiped as
//! they are consumed, when they grow and when they are dropped.

use super::*;

/// Drops the first `n` bytes of `buf`, wiping the bytes the move leaves
/// behind (a request may carry a registration token).
pub(super) fn consume(buf: &mut Vec<u8>, n: usize) {
    let n = n.min(buf.len());
    let kept = buf.len() - n;
    buf.copy_within(n.., 0);
    buf[kept..].zeroize();
    buf.truncate(kept);
}

/// Makes room for `additional` bytes without leaving a copy behind: where
/// `Vec::reserve` would reallocate and free the old block as it is, the old
/// block is wiped first.
pub(super) fn reserve_wiped(buf: &mut Vec<u8>, additional: usize) {
    if buf.capacity() - buf.len() >= additional {
        return;
    }
    let wanted = buf
        .len()
        .saturating_add(additional)
        .max(buf.capacity().saturating_mul(2));
    let mut bigger = Vec::with_capacity(wanted);
    bigger.extend_from_slice(buf);
    buf.zeroize();
    *buf = bigger;
}

/// A `Write` target that grows with [`reserve_wiped`] and is wiped on drop.
#[derive(Default)]
pub(super) struct WipedWriter(pub(super) Vec<u8>);

impl std::io::Write for WipedWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        reserve_wiped(&mut self.0, bytes.len());
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for WipedWriter {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// The stream a connection is served on, past admission. On Unix it is
/// tokio's own `UnixStream`, taken out of interprocess's wrapper (no system
/// call): tokio's `poll_read` takes a short read as "the socket is drained"
/// and waits for epoll next, where the wrapper reads again and gets `EAGAIN`
/// first — one system call saved per request.
#[cfg(unix)]
pub(super) struct ConnStream(tokio::net::UnixStream);

#[cfg(unix)]
impl From<Stream> for ConnStream {
    fn from(stream: Stream) -> Self {
        let Stream::UdSocket(socket) = stream;
        Self(socket.into())
    }
}

/// The stream a connection is served on, past admission (a named pipe).
#[cfg(windows)]
pub(super) struct ConnStream(Stream);

#[cfg(windows)]
impl From<Stream> for ConnStream {
    fn from(stream: Stream) -> Self {
        Self(stream)
    }
}

impl ConnStream {
    pub(super) async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.0.write_all(bytes).await
    }
}

pub(super) enum ReadOutcome {
    Data,
    Closed,
    Stalled,
}

pub(super) async fn read_some(
    stream: &mut ConnStream,
    buf: &mut Vec<u8>,
    limit: Option<Duration>,
) -> ReadOutcome {
    let read = async {
        // Requests are small (a token request is ~40 bytes): idle
        // connections keep a 512-byte buffer, larger frames grow it.
        if buf.capacity() - buf.len() < 256 {
            reserve_wiped(buf, 512);
        }
        stream.0.read_buf(buf).await
    };
    let result = match limit {
        Some(limit) => match tokio::time::timeout(limit, read).await {
            Ok(r) => r,
            Err(_) => return ReadOutcome::Stalled,
        },
        None => read.await,
    };
    match result {
        Ok(0) | Err(_) => ReadOutcome::Closed,
        Ok(_) => ReadOutcome::Data,
    }
}
