//! One blocking connection to the agent: connect, `hello`, send frames, read
//! responses with a deadline. Standard library and `interprocess` only.
//!
//! Deadlines: on Unix the socket's send and receive timeouts; on Windows,
//! where named pipes have none, overlapped I/O that is cancelled when the
//! time is up (`blocking/pipe.rs`).

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use interprocess::ConnectWaitMode;
#[cfg(unix)]
use interprocess::local_socket::traits::Stream as _;
use interprocess::local_socket::{ConnectOptions, GenericFilePath, Stream, ToFsName};
use regent_proto::message::{Op, Response};

use crate::error::{self, Error, Failure, Result};
use crate::server::{self, Server as _};
use crate::wire::{self, FrameBuffer};
use crate::{AgentInfo, ClientOptions};

/// How long a client whose request could not be written waits for the
/// agent's refusal (the agent closed first: it is already in the buffer, or
/// the end of the stream is).
const REFUSAL_GRACE_MS: u64 = 500;

pub(crate) struct Connection {
    stream: Stream,
    frames: FrameBuffer,
    socket: PathBuf,
    next_id: u64,
    /// How long one frame may take to go out.
    #[cfg(windows)]
    send_timeout: Duration,
    /// The receive timeout last set on the socket, to skip redundant syscalls.
    #[cfg(unix)]
    recv_timeout: Option<Duration>,
    #[cfg(windows)]
    io: super::pipe::PipeIo,
    /// The stream can no longer be used (closed, desynchronised, half-written frame).
    broken: bool,
    pub(crate) agent: AgentInfo,
}

impl Connection {
    /// Connects and says `hello`, all within `opts.connect_timeout`.
    pub(crate) fn open(socket: &Path, opts: &ClientOptions) -> Result<Self> {
        let deadline = Instant::now() + opts.connect_timeout;
        let mut conn = Connection::connect(socket, opts)?;
        let id = conn.send(wire::hello(opts)).map_err(Failure::into_error)?;
        conn.finish_hello(id, deadline, opts)?;
        Ok(conn)
    }

    /// Connects and sends `hello` and `first` together, in one write: a
    /// client that connects per call (the CLI, a script, the C library's
    /// one-shot use) waits for one round trip, not two. Reads the `hello`
    /// answer (its error, if any, is this call's) and returns the id of
    /// `first`, whose answer follows.
    pub(crate) fn open_with(socket: &Path, opts: &ClientOptions, first: Op) -> Result<(Self, u64)> {
        let deadline = Instant::now() + opts.connect_timeout;
        let mut conn = Connection::connect(socket, opts)?;
        let ids = conn
            .send_all([wire::hello(opts), first])
            .map_err(Failure::into_error)?;
        conn.finish_hello(ids[0], deadline, opts)?;
        Ok((conn, ids[1]))
    }

    /// The socket connection, its owner checked; nothing sent yet.
    fn connect(socket: &Path, opts: &ClientOptions) -> Result<Self> {
        let name = socket
            .to_fs_name::<GenericFilePath>()
            .map_err(|e| error::connect_failed(socket, &e))?;
        let stream = ConnectOptions::new()
            .name(name)
            .wait_mode(ConnectWaitMode::Timeout(opts.connect_timeout))
            .connect_sync()
            .map_err(|e| error::connect_failed(socket, &e))?;
        server::check_server(socket, stream.server_id(), opts)?;
        no_sigpipe(&stream).map_err(|e| error::connect_failed(socket, &e))?;
        let send_timeout = opts.request_timeout.max(Duration::from_millis(1));
        #[cfg(unix)]
        stream
            .set_send_timeout(Some(send_timeout))
            .map_err(|e| error::connect_failed(socket, &e))?;
        Ok(Connection {
            stream,
            frames: FrameBuffer::new(),
            socket: socket.to_owned(),
            next_id: 1,
            #[cfg(windows)]
            send_timeout,
            #[cfg(unix)]
            recv_timeout: None,
            #[cfg(windows)]
            io: super::pipe::PipeIo::new().map_err(|e| error::connect_failed(socket, &e))?,
            broken: false,
            agent: AgentInfo {
                version: 0,
                agent: String::new(),
            },
        })
    }

    /// Reads the answer to the `hello` sent as `id`.
    fn finish_hello(&mut self, id: u64, deadline: Instant, opts: &ClientOptions) -> Result<()> {
        let response = self
            .receive(id, Some(deadline))
            .map_err(Failure::into_error)?
            .ok_or_else(|| error::handshake_timeout(&self.socket, opts.connect_timeout))?;
        self.agent = wire::agent_info(&self.socket, response)?;
        Ok(())
    }

    pub(crate) fn is_broken(&self) -> bool {
        self.broken
    }

    /// Sends one request and returns its id.
    ///
    /// A failed write means the agent did not get the whole frame, so it
    /// cannot have acted on it: [`Failure::NotSent`] (timeouts excepted).
    pub(crate) fn send(&mut self, op: Op) -> Result<u64, Failure> {
        let ids = self.send_all([op])?;
        Ok(ids[0])
    }

    /// Sends requests in one write (pipelined) and returns their ids, in order.
    fn send_all<const N: usize>(&mut self, ops: [Op; N]) -> Result<[u64; N], Failure> {
        let mut ids = [0; N];
        let mut frames = zeroize::Zeroizing::new(Vec::with_capacity(128 * N));
        let mut names = [""; N];
        for ((slot, name), op) in ids.iter_mut().zip(&mut names).zip(ops) {
            *slot = self.next_id;
            self.next_id += 1;
            *name = op.name();
            wire::encode_request_into(*slot, op, &mut frames).map_err(Failure::Other)?;
        }
        if let Err(e) = self.write_all(&frames) {
            // Part of a frame may be out: nothing more can go on this stream.
            self.broken = true;
            return Err(if is_timeout(&e) {
                Failure::Other(Error::new(
                    regent_proto::ErrorCode::Timeout,
                    format!(
                        "the regent agent at {} is not reading requests; `{}` could not be sent",
                        self.socket.display(),
                        names.join("` and `")
                    ),
                ))
            } else {
                // The agent may have refused the connection (connection
                // limit, policy) and closed it before our request arrived:
                // its refusal is then waiting to be read, and names the cause.
                self.refusal()
                    .unwrap_or_else(|| Failure::NotSent(error::connection_lost(&self.socket, &e)))
            });
        }
        Ok(ids)
    }

    /// The agent's refusal of this connection (an error with id 0), when one
    /// is waiting to be read on a connection whose write side broke.
    fn refusal(&mut self) -> Option<Failure> {
        let deadline = Instant::now() + Duration::from_millis(REFUSAL_GRACE_MS);
        match self.receive(u64::MAX, Some(deadline)) {
            Ok(Some(Response {
                id: 0,
                outcome: regent_proto::message::Outcome::Error(refused),
            })) => Some(Failure::Other(Error::from(refused))),
            _ => None,
        }
    }

    /// Reads until the response (or event) carrying `id` arrives; `Ok(None)`
    /// once `deadline` passes. Frames for other ids (answers to calls that
    /// timed out earlier) are skipped.
    pub(crate) fn receive(
        &mut self,
        id: u64,
        deadline: Option<Instant>,
    ) -> Result<Option<Response>, Failure> {
        loop {
            match self.frames.next_response() {
                Ok(Some(response)) if response.id == id => return Ok(Some(response)),
                // An error with id 0 is about the connection itself
                // (permission refused, connection limit): it answers this call.
                Ok(Some(response))
                    if response.id == 0
                        && matches!(response.outcome, regent_proto::message::Outcome::Error(_)) =>
                {
                    self.broken = true;
                    return Ok(Some(response));
                }
                Ok(Some(response)) => {
                    tracing::debug!(id = response.id, "skipping a late response");
                    continue;
                }
                Ok(None) => {}
                Err(detail) => {
                    self.broken = true;
                    return Err(Failure::Other(error::malformed(&self.socket, &detail)));
                }
            }
            let timeout = match deadline {
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Ok(None),
                },
                None => None,
            };
            match self.read_within(timeout)? {
                Ok(0) => {
                    self.broken = true;
                    return Err(Failure::Lost(error::connection_lost(
                        &self.socket,
                        &"the agent closed the connection",
                    )));
                }
                Ok(_) => {}
                // The deadline check at the top of the loop decides.
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.broken = true;
                    return Err(Failure::Lost(error::connection_lost(&self.socket, &e)));
                }
            }
        }
    }

    /// Reads once into the frame buffer, waiting at most `timeout`.
    #[cfg(unix)]
    fn read_within(&mut self, timeout: Option<Duration>) -> Result<io::Result<usize>, Failure> {
        if needs_new_recv_timeout(self.recv_timeout, timeout) {
            self.stream.set_recv_timeout(timeout).map_err(|e| {
                self.broken = true;
                Failure::Lost(error::connection_lost(&self.socket, &e))
            })?;
            self.recv_timeout = timeout;
        }
        Ok(self.frames.read_from(&self.stream))
    }

    /// Reads once into the frame buffer, waiting at most `timeout`.
    #[cfg(windows)]
    fn read_within(&mut self, timeout: Option<Duration>) -> Result<io::Result<usize>, Failure> {
        let reader = PipeReader {
            io: &self.io,
            pipe: pipe_handle(&self.stream),
            timeout,
        };
        Ok(self.frames.read_from(reader))
    }

    #[cfg(unix)]
    fn write_all(&self, frame: &[u8]) -> io::Result<()> {
        // The socket's send timeout (set at open) bounds the write.
        write_all(&self.stream, frame)
    }

    #[cfg(windows)]
    fn write_all(&self, frame: &[u8]) -> io::Result<()> {
        self.io
            .write_all(pipe_handle(&self.stream), frame, self.send_timeout)
    }
}

#[cfg(windows)]
fn pipe_handle(stream: &Stream) -> std::os::windows::io::BorrowedHandle<'_> {
    use std::os::windows::io::AsHandle;
    let Stream::NamedPipe(pipe) = stream;
    pipe.inner().as_handle()
}

/// One read with a deadline, in the shape [`FrameBuffer::read_from`] takes.
#[cfg(windows)]
struct PipeReader<'a> {
    io: &'a super::pipe::PipeIo,
    pipe: std::os::windows::io::BorrowedHandle<'a>,
    timeout: Option<Duration>,
}

#[cfg(windows)]
impl io::Read for PipeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.io.read(self.pipe, buf, self.timeout)
    }
}

/// Whether the socket's receive timeout must change before a read that may
/// wait `want` (`None`: for ever). A read that gives up early is harmless —
/// [`Connection::receive`] checks its deadline and reads again — so a
/// timeout that is already shorter, but not much shorter, is kept: a
/// `setsockopt` per call would be a third system call on every handout,
/// since each call's remaining time differs from the last one's.
#[cfg(unix)]
fn needs_new_recv_timeout(have: Option<Duration>, want: Option<Duration>) -> bool {
    match (have, want) {
        (None, None) => false,
        (None, Some(_)) | (Some(_), None) => true,
        (Some(have), Some(want)) => have > want || have < want / 2,
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Writes a whole frame without raising SIGPIPE when the agent has gone.
#[cfg(all(
    unix,
    not(any(target_vendor = "apple", target_os = "redox", target_os = "vita"))
))]
fn write_all(stream: &Stream, mut buf: &[u8]) -> io::Result<()> {
    use rustix::net::{SendFlags, send};
    let Stream::UdSocket(socket) = stream;
    while !buf.is_empty() {
        match send(socket.inner(), buf, SendFlags::NOSIGNAL) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(all(
    unix,
    any(target_vendor = "apple", target_os = "redox", target_os = "vita")
))]
fn write_all(stream: &Stream, buf: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut writer = stream;
    writer.write_all(buf)
}

/// Where `MSG_NOSIGNAL` does not exist, the socket itself is told not to signal.
#[cfg(target_vendor = "apple")]
fn no_sigpipe(stream: &Stream) -> io::Result<()> {
    let Stream::UdSocket(socket) = stream;
    rustix::net::sockopt::set_socket_nosigpipe(socket.inner(), true).map_err(io::Error::from)
}

#[cfg(not(target_vendor = "apple"))]
fn no_sigpipe(_stream: &Stream) -> io::Result<()> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn the_receive_timeout_changes_only_when_it_would_wait_too_long_or_far_too_little() {
        let s = Duration::from_secs;
        // Each call of a persistent client: its remaining time is a little
        // more than what the last call left set — no system call.
        assert!(!needs_new_recv_timeout(
            Some(s(5) - Duration::from_micros(7)),
            Some(s(5))
        ));
        // Shorter time left than the socket would wait: shrink it.
        assert!(needs_new_recv_timeout(Some(s(5)), Some(s(4))));
        // A tiny timeout left over from a nearly expired call: grow it back.
        assert!(needs_new_recv_timeout(
            Some(Duration::from_millis(1)),
            Some(s(5))
        ));
        // Waiting for ever, and bounding a wait that was for ever.
        assert!(needs_new_recv_timeout(Some(s(5)), None));
        assert!(needs_new_recv_timeout(None, Some(s(5))));
        assert!(!needs_new_recv_timeout(None, None));
    }
}
