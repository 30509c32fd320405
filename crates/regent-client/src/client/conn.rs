//! One multiplexed async connection: a reader task dispatching responses by
//! id to waiting calls and subscriptions, and frames written by the caller
//! itself when nothing is queued ahead and the socket takes the whole frame
//! at once (the common case: no task hop on the way out), else by a writer
//! task from a queue, in order. Dropping the last handle stops both tasks and
//! closes the socket.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use interprocess::local_socket::tokio::Stream;
use interprocess::local_socket::{ConnectOptions, GenericFilePath, ToFsName};
use regent_proto::message::{Op, Response};
use tokio::io::{AsyncWrite as _, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{self, Error, Failure, Result};
use crate::server::{self, Server as _};
use crate::wire::{self, Frame, FrameBuffer};
use crate::{AgentInfo, ClientOptions};

/// Requests queued for the writer; senders wait when it is full.
const QUEUE: usize = 256;
/// The writer sends queued frames together, up to this many bytes per write.
const BATCH: usize = 64 * 1024;

/// Why a connection stopped, as seen by one request.
#[derive(Debug, Clone)]
pub(crate) struct Closed {
    pub(crate) error: Error,
    pub(crate) kind: ClosedKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClosedKind {
    /// The socket broke before any of this request was written.
    NotSent,
    /// The socket broke after the request may have reached the agent.
    Lost,
    /// The agent broke the protocol.
    Violation,
}

impl Closed {
    pub(crate) fn failure(self) -> Failure {
        match self.kind {
            ClosedKind::NotSent => Failure::NotSent(self.error),
            ClosedKind::Lost => Failure::Lost(self.error),
            ClosedKind::Violation => Failure::Other(self.error),
        }
    }
}

/// Frames for the writer, with their request ids.
type Queue = mpsc::Sender<(u64, Frame)>;

/// What the reader hands a waiter.
pub(crate) type Delivery = Result<Response, Closed>;

enum Route {
    Call(oneshot::Sender<Delivery>),
    Subscription(mpsc::UnboundedSender<Delivery>),
}

struct Pending {
    route: Route,
    /// Some of the request's frame may have been written.
    maybe_sent: bool,
}

#[derive(Default)]
struct Routes {
    /// Set once the connection has stopped: new requests are refused.
    closed: Option<Error>,
    by_id: HashMap<u64, Pending>,
}

struct Shared {
    socket: PathBuf,
    routes: Mutex<Routes>,
    /// The writer task has frames to send (the queue is not empty, or it is
    /// writing). Frames go into the queue only under this lock, and straight
    /// to the socket only under it while it is `false`, so bytes of two
    /// frames never interleave and a direct write never overtakes a queued
    /// frame's rest.
    writer_busy: Mutex<bool>,
}

impl Shared {
    fn routes(&self) -> MutexGuard<'_, Routes> {
        // Nothing panics while holding the lock; a poisoned map is still consistent.
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn writer_busy(&self) -> MutexGuard<'_, bool> {
        self.writer_busy.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self, id: u64, route: Route) -> Result<(), Failure> {
        let mut routes = self.routes();
        if let Some(error) = &routes.closed {
            return Err(Failure::NotSent(error.clone()));
        }
        routes.by_id.insert(
            id,
            Pending {
                route,
                maybe_sent: false,
            },
        );
        Ok(())
    }

    /// Records whether the frames of `ids` may have reached the agent.
    fn mark(&self, ids: impl Iterator<Item = u64>, maybe_sent: bool) {
        let mut routes = self.routes();
        for id in ids {
            if let Some(pending) = routes.by_id.get_mut(&id) {
                pending.maybe_sent = maybe_sent;
            }
        }
    }

    fn dispatch(&self, response: Response) {
        // An error with id 0 is about the connection itself (permission
        // refused, connection limit): every waiter gets it, unretried.
        if response.id == 0
            && let regent_proto::message::Outcome::Error(e) = &response.outcome
        {
            self.close(Error::from(e.clone()), true);
            return;
        }
        let mut routes = self.routes();
        let id = response.id;
        match routes.by_id.remove(&id) {
            Some(Pending {
                route: Route::Call(waiter),
                ..
            }) => {
                // The waiter may have timed out meanwhile; its answer is dropped.
                let _ = waiter.send(Ok(response));
            }
            Some(Pending {
                route: Route::Subscription(events),
                maybe_sent,
            }) => {
                if events.send(Ok(response)).is_ok() {
                    let route = Route::Subscription(events);
                    routes.by_id.insert(id, Pending { route, maybe_sent });
                }
            }
            None => tracing::debug!(id, "dropping a response nobody waits for"),
        }
    }

    /// Stops the connection: every waiter learns why, and whether its request
    /// may have been acted on.
    fn close(&self, error: Error, violation: bool) {
        let mut routes = self.routes();
        if routes.closed.is_some() {
            return;
        }
        tracing::debug!(%error, "connection to the agent closed");
        for (_, pending) in routes.by_id.drain() {
            let kind = match (violation, pending.maybe_sent) {
                (true, _) => ClosedKind::Violation,
                (false, true) => ClosedKind::Lost,
                (false, false) => ClosedKind::NotSent,
            };
            let closed = Closed {
                error: error.clone(),
                kind,
            };
            let _ = match pending.route {
                Route::Call(waiter) => waiter.send(Err(closed)).is_ok(),
                Route::Subscription(events) => events.send(Err(closed)).is_ok(),
            };
        }
        routes.closed = Some(error);
    }

    fn lost(&self, cause: &dyn std::fmt::Display) -> Error {
        error::connection_lost(&self.socket, cause)
    }

    /// A write failed. When the agent closed its end, the reader closes the
    /// connection with what it finds first — the agent's refusal (connection
    /// limit, policy), which names the cause, or the end of the stream;
    /// otherwise the write error does.
    fn write_failed(&self, e: &std::io::Error) {
        if !matches!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        ) {
            self.close(self.lost(e), false);
        }
    }
}

/// Removes a route when its call ends or is cancelled; for a subscription,
/// also tells the agent to stop.
pub(crate) struct RouteGuard {
    shared: Arc<Shared>,
    id: u64,
    unsubscribe: Option<(Queue, Arc<AtomicU64>)>,
}

impl RouteGuard {
    /// The agent refused the subscription: nothing to unsubscribe from.
    pub(crate) fn refused(mut self) {
        self.unsubscribe = None;
    }
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        let still_open = {
            let mut routes = self.shared.routes();
            routes.by_id.remove(&self.id);
            routes.closed.is_none()
        };
        if let (true, Some((frames, ids))) = (still_open, self.unsubscribe.take()) {
            let id = ids.fetch_add(1, Ordering::Relaxed);
            let op = Op::Unsubscribe {
                subscription: self.id,
            };
            // Best effort: the agent also ends subscriptions with their connection.
            if let Ok(frame) = wire::encode_request(id, op) {
                // Queued under the writer lock, like every frame (see `Shared`).
                let mut busy = self.shared.writer_busy();
                if frames.try_send((id, frame)).is_ok() {
                    *busy = true;
                }
            }
        }
    }
}

/// A connection that has said `hello`.
pub(crate) struct Conn {
    shared: Arc<Shared>,
    stream: Arc<Stream>,
    frames: Queue,
    ids: Arc<AtomicU64>,
    tasks: [AbortHandle; 2],
    pub(crate) agent: AgentInfo,
}

impl Drop for Conn {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Conn {
    /// Connects and says `hello`, all within `opts.connect_timeout`.
    pub(crate) async fn open(
        socket: &Path,
        opts: &ClientOptions,
        ids: Arc<AtomicU64>,
    ) -> Result<Conn> {
        let handshake = async {
            let name = socket
                .to_fs_name::<GenericFilePath>()
                .map_err(|e| error::connect_failed(socket, &e))?;
            let stream = ConnectOptions::new()
                .name(name)
                .connect_tokio()
                .await
                .map_err(|e| error::connect_failed(socket, &e))?;
            server::check_server(socket, stream.server_id(), opts)?;
            let mut conn = Conn::start(socket, stream, ids);
            let response = conn
                .call(wire::hello(opts))
                .await
                .map_err(Failure::into_error)?;
            conn.agent = wire::agent_info(socket, response)?;
            Ok(conn)
        };
        tokio::time::timeout(opts.connect_timeout, handshake)
            .await
            .unwrap_or_else(|_| Err(error::handshake_timeout(socket, opts.connect_timeout)))
    }

    fn start(socket: &Path, stream: Stream, ids: Arc<AtomicU64>) -> Conn {
        let stream = Arc::new(stream);
        let shared = Arc::new(Shared {
            socket: socket.to_owned(),
            routes: Mutex::new(Routes::default()),
            writer_busy: Mutex::new(false),
        });
        let (frames, queue) = mpsc::channel(QUEUE);
        let reader = tokio::spawn(read_loop(Arc::clone(&stream), Arc::clone(&shared)));
        let writer = tokio::spawn(write_loop(Arc::clone(&stream), queue, Arc::clone(&shared)));
        Conn {
            shared,
            stream,
            frames,
            ids,
            tasks: [reader.abort_handle(), writer.abort_handle()],
            agent: AgentInfo {
                version: 0,
                agent: String::new(),
            },
        }
    }

    /// Whether the connection has stopped (the next call needs a new one).
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.routes().closed.is_some()
    }

    /// Sends a request and waits for its response, however long it takes;
    /// callers bound the wait. Cancel-safe.
    pub(crate) async fn call(&self, op: Op) -> Result<Response, Failure> {
        let (waiter, answer) = oneshot::channel();
        let (_route, _) = self.send(op, Route::Call(waiter), false).await?;
        match answer.await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(closed)) => Err(closed.failure()),
            Err(_) => Err(Failure::Lost(
                self.shared.lost(&"the connection's reader stopped"),
            )),
        }
    }

    /// Sends `subscribe`; the reply and then the events arrive on the receiver.
    pub(crate) async fn subscribe(
        &self,
        op: Op,
    ) -> Result<(RouteGuard, mpsc::UnboundedReceiver<Delivery>), Failure> {
        let (events, receiver) = mpsc::unbounded_channel();
        let (route, _) = self.send(op, Route::Subscription(events), true).await?;
        Ok((route, receiver))
    }

    async fn send(
        &self,
        op: Op,
        route: Route,
        subscription: bool,
    ) -> Result<(RouteGuard, u64), Failure> {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let frame = wire::encode_request(id, op).map_err(Failure::Other)?;
        self.shared.register(id, route)?;
        let guard = RouteGuard {
            shared: Arc::clone(&self.shared),
            id,
            unsubscribe: subscription.then(|| (self.frames.clone(), Arc::clone(&self.ids))),
        };
        // Room in the queue first (the only wait), then, under the writer
        // lock, either the socket or the queue.
        let Ok(permit) = self.frames.reserve().await else {
            // The writer has stopped, so this frame was never written.
            let closed = self.shared.routes().closed.clone();
            let error =
                closed.unwrap_or_else(|| self.shared.lost(&"the connection's writer stopped"));
            return Err(Failure::NotSent(error));
        };
        let mut busy = self.shared.writer_busy();
        if *busy {
            permit.send((id, frame));
            return Ok((guard, id));
        }
        // Marked before writing, as the writer task does.
        self.shared.mark(std::iter::once(id), true);
        let mut sink = &*self.stream;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match std::pin::Pin::new(&mut sink).poll_write(&mut cx, &frame) {
            std::task::Poll::Ready(Ok(n)) if n == frame.len() => {}
            std::task::Poll::Ready(Ok(n)) => {
                // The rest goes next, before anything else.
                *busy = true;
                permit.send((id, Zeroizing::new(frame[n..].to_vec())));
            }
            std::task::Poll::Pending => {
                self.shared.mark(std::iter::once(id), false);
                *busy = true;
                permit.send((id, frame));
            }
            std::task::Poll::Ready(Err(e)) => {
                drop(busy);
                self.shared.mark(std::iter::once(id), false);
                self.shared.write_failed(&e);
            }
        }
        Ok((guard, id))
    }
}

async fn read_loop(stream: Arc<Stream>, shared: Arc<Shared>) {
    let mut frames = FrameBuffer::new();
    let mut source = &*stream;
    loop {
        loop {
            match frames.next_response() {
                Ok(Some(response)) => shared.dispatch(response),
                Ok(None) => break,
                Err(detail) => {
                    shared.close(error::malformed(&shared.socket, &detail), true);
                    return;
                }
            }
        }
        match frames.read_from_async(&mut source).await {
            Ok(0) => {
                shared.close(shared.lost(&"the agent closed the connection"), false);
                return;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                shared.close(shared.lost(&e), false);
                return;
            }
        }
    }
}

async fn write_loop(
    stream: Arc<Stream>,
    mut queue: mpsc::Receiver<(u64, Frame)>,
    shared: Arc<Shared>,
) {
    let mut sink = &*stream;
    let mut batch = Zeroizing::new(Vec::with_capacity(BATCH));
    // (request id, end of its frame in `batch`)
    let mut ends = Vec::new();
    while let Some((id, frame)) = queue.recv().await {
        batch.extend_from_slice(&frame);
        ends.push((id, batch.len()));
        drop(frame);
        // Pipelined requests go out in one write.
        while batch.len() < BATCH {
            let Ok((id, frame)) = queue.try_recv() else {
                break;
            };
            batch.extend_from_slice(&frame);
            ends.push((id, batch.len()));
        }
        // Marked before writing: if the connection breaks meanwhile, the
        // request counts as possibly received — never resent by mistake.
        shared.mark(ends.iter().map(|(id, _)| *id), true);
        let mut written = 0;
        let result = loop {
            if written == batch.len() {
                break Ok(());
            }
            match sink.write(&batch[written..]).await {
                Ok(0) => break Err(std::io::Error::from(std::io::ErrorKind::WriteZero)),
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        batch.zeroize();
        if let Err(e) = result {
            // A frame cut short cannot have been acted on.
            let unsent = ends.iter().filter(|(_, end)| *end > written);
            shared.mark(unsent.map(|(id, _)| *id), false);
            shared.write_failed(&e);
            return;
        }
        {
            let mut busy = shared.writer_busy();
            if queue.is_empty() {
                *busy = false;
            }
        }
        ends.clear();
    }
}
