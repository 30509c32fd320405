//! A loopback TCP proxy that misbehaves on demand, for network-fault tests.
//!
//! [`Proxy::start`] listens on `127.0.0.1:0` and forwards to an upstream (the
//! emulator). What it does to each request is switched at run time with
//! [`Proxy::set`] (every request) or [`Proxy::set_for`] (requests whose path
//! contains a string; the others pass): pass through, add latency, reset,
//! black-hole, stall, trickle, truncate, answer itself, or forward and rewrite
//! the answer (see [`Fault`]).
//!
//! Every connection carries exactly one exchange: the proxy adds
//! `Connection: close` to each request it forwards, so the fault in force when a
//! request arrives is the one it gets, and switching faults never leaves a
//! pooled connection in the old mode. Like a reverse proxy, it rewrites the
//! upstream's own address in answers (Sentinel's `tokenEndpoint`, an OIDC
//! `issuer`) to its own, so that follow-up requests come back through it.
//!
//! Held connections (black hole, stall) are released when the client leaves,
//! after [`MAX_HOLD`], or when the proxy is dropped. Buffers are bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, timeout, timeout_at};

/// The longest a black-holed or stalled connection is held open.
pub const MAX_HOLD: Duration = Duration::from_secs(120);
/// Largest request head read, and largest upstream answer buffered.
const MAX_HEAD: usize = 64 * 1024;
const MAX_ANSWER: usize = 16 * 1024 * 1024;
/// How long the proxy waits for the upstream's whole answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);
/// How many exchanges [`Proxy::exchanges`] keeps.
const KEEP_EXCHANGES: usize = 512;

/// A rewrite of a forwarded answer.
pub type Edit = Arc<dyn Fn(&mut Answer) + Send + Sync>;
/// An answer made from the request's bytes.
pub type Responder = Arc<dyn Fn(&[u8]) -> Vec<u8> + Send + Sync>;

/// What the proxy does to a request.
#[derive(Clone)]
pub enum Fault {
    /// Forward it and return the answer unchanged.
    Pass,
    /// Wait this long, then forward it. A client that gives up first never
    /// reaches the upstream.
    Delay(Duration),
    /// Read the request, then close the connection (FIN) without an answer.
    Close,
    /// Read the request head, then reset the connection (RST): mid-request.
    ResetRequest,
    /// Read the request and never answer, never close (a half-open connection).
    Blackhole,
    /// Forward it, send the answer up to the cut, then reset (RST).
    ResetResponse(Cut),
    /// Forward it, send the answer up to the cut, then close (FIN).
    Truncate(Cut),
    /// Forward it, send the answer up to the cut, then stop without closing.
    Stall(Cut),
    /// Forward it, then send the answer `bytes` at a time, one burst per `every`.
    Trickle {
        /// Bytes per burst.
        bytes: usize,
        /// Pause between bursts.
        every: Duration,
    },
    /// Answer with these bytes without forwarding, then close.
    Replace(Arc<[u8]>),
    /// Answer with what the closure makes of the request (all its bytes),
    /// without forwarding, then close: a server that reflects its input.
    Respond(Responder),
    /// Forward it and let the closure change the answer (status, headers, body);
    /// `Content-Length` is fixed up afterwards.
    Rewrite(Edit),
}

/// Where a forwarded answer is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// After this many bytes of the whole answer (status line and headers first).
    Bytes(usize),
    /// After this many bytes of the body (0: right after the headers).
    Body(usize),
}

impl Cut {
    fn at(self, answer: &[u8]) -> usize {
        let n = match self {
            Cut::Bytes(n) => n,
            Cut::Body(n) => find(answer, b"\r\n\r\n").map_or(0, |end| end + 4) + n,
        };
        n.min(answer.len())
    }
}

impl Fault {
    /// An answer made of `status` ("200 OK"), headers and a body.
    pub fn reply(status: &str, headers: &[&str], body: &[u8]) -> Fault {
        let mut answer = Answer {
            head: vec![format!("HTTP/1.1 {status}")],
            body: body.to_vec(),
        };
        for h in headers {
            answer.head.push((*h).to_owned());
        }
        Fault::Replace(answer.to_bytes().into())
    }

    /// Raw bytes as the whole answer (need not be HTTP).
    pub fn raw(bytes: &[u8]) -> Fault {
        Fault::Replace(bytes.into())
    }

    /// Forwards and edits the answer's JSON body (left alone when it is not JSON).
    pub fn json(edit: impl Fn(&mut serde_json::Value) + Send + Sync + 'static) -> Fault {
        Fault::Rewrite(Arc::new(move |answer: &mut Answer| answer.edit_json(&edit)))
    }

    /// Forwards and edits the answer.
    pub fn rewrite(edit: impl Fn(&mut Answer) + Send + Sync + 'static) -> Fault {
        Fault::Rewrite(Arc::new(edit))
    }
}

impl fmt::Debug for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Pass => f.write_str("Pass"),
            Fault::Delay(d) => write!(f, "Delay({d:?})"),
            Fault::Close => f.write_str("Close"),
            Fault::ResetRequest => f.write_str("ResetRequest"),
            Fault::Blackhole => f.write_str("Blackhole"),
            Fault::ResetResponse(c) => write!(f, "ResetResponse({c:?})"),
            Fault::Truncate(c) => write!(f, "Truncate({c:?})"),
            Fault::Stall(c) => write!(f, "Stall({c:?})"),
            Fault::Trickle { bytes, every } => write!(f, "Trickle({bytes} B / {every:?})"),
            Fault::Replace(b) => write!(f, "Replace({} bytes)", b.len()),
            Fault::Respond(_) => f.write_str("Respond(..)"),
            Fault::Rewrite(_) => f.write_str("Rewrite(..)"),
        }
    }
}

/// An HTTP answer being rewritten: the status line and header lines, and the body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// `HTTP/1.1 200 OK`, then one `Name: value` per line.
    pub head: Vec<String>,
    /// The body (de-chunked is not attempted: chunked answers are never parsed).
    pub body: Vec<u8>,
}

impl Answer {
    /// Splits a complete `Content-Length` (or close-delimited) answer; `None`
    /// for anything else (chunked, not HTTP), which is then forwarded as is.
    pub fn parse(bytes: &[u8]) -> Option<Answer> {
        let end = find(bytes, b"\r\n\r\n")?;
        let head = std::str::from_utf8(&bytes[..end]).ok()?;
        if !head.starts_with("HTTP/1.") {
            return None;
        }
        let head: Vec<String> = head.split("\r\n").map(str::to_owned).collect();
        let answer = Answer {
            head,
            body: bytes[end + 4..].to_vec(),
        };
        if answer
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            return None;
        }
        Some(answer)
    }

    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.iter().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// Replaces (or adds) header `name`.
    pub fn set_header(&mut self, name: &str, value: &str) {
        self.remove_header(name);
        self.head.push(format!("{name}: {value}"));
    }

    /// Removes every header `name`.
    pub fn remove_header(&mut self, name: &str) {
        let first = self.head.remove(0);
        self.head.retain(|line| {
            line.split_once(':')
                .is_none_or(|(n, _)| !n.trim().eq_ignore_ascii_case(name))
        });
        self.head.insert(0, first);
    }

    /// Replaces the status line's code and reason, e.g. `"503 Service Unavailable"`.
    pub fn set_status(&mut self, status: &str) {
        self.head[0] = format!("HTTP/1.1 {status}");
    }

    /// Applies `edit` to the body parsed as JSON and writes it back.
    pub fn edit_json(&mut self, edit: impl Fn(&mut serde_json::Value)) {
        if let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(&self.body) {
            edit(&mut value);
            self.body = serde_json::to_vec(&value).unwrap();
        }
    }

    /// The answer as bytes, with a `Content-Length` that matches the body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut answer = self.clone();
        answer.set_header("Content-Length", &self.body.len().to_string());
        let mut bytes = answer.head.join("\r\n").into_bytes();
        bytes.extend_from_slice(b"\r\n\r\n");
        bytes.extend_from_slice(&answer.body);
        bytes
    }
}

/// One request and the answer the client was sent (or would have been).
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The request as the client sent it.
    pub request: Vec<u8>,
    /// The answer, after rewriting (empty when there was none).
    pub answer: Vec<u8>,
}

struct Shared {
    rule: Mutex<(Fault, Option<String>)>,
    rewrites: Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
    connections: AtomicU64,
    faulted: AtomicU64,
    exchanges: Mutex<VecDeque<Exchange>>,
}

/// The proxy; stops (and releases every held connection) when dropped.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("fault", &self.shared.rule.lock().unwrap().0)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Listens on `127.0.0.1:0` and forwards to `upstream`, passing everything
    /// until told otherwise. Must be called inside a tokio runtime.
    pub async fn start(upstream: SocketAddr) -> io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            rule: Mutex::new((Fault::Pass, None)),
            rewrites: Mutex::new(vec![(
                upstream.to_string().into_bytes(),
                addr.to_string().into_bytes(),
            )]),
            connections: AtomicU64::new(0),
            faulted: AtomicU64::new(0),
            exchanges: Mutex::new(VecDeque::new()),
        });
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(accept_loop(
            listener,
            upstream,
            Arc::clone(&shared),
            stopped,
        ));
        Ok(Proxy { addr, shared, stop })
    }

    /// Where the proxy listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Applies `fault` to every request from now on.
    pub fn set(&self, fault: Fault) {
        *self.shared.rule.lock().unwrap() = (fault, None);
    }

    /// Applies `fault` to requests whose request line contains `path`; the
    /// others pass.
    pub fn set_for(&self, path: &str, fault: Fault) {
        *self.shared.rule.lock().unwrap() = (fault, Some(path.to_owned()));
    }

    /// Back to passing everything.
    pub fn clear(&self) {
        self.set(Fault::Pass);
    }

    /// Also replaces `from` with `to` in every forwarded answer.
    pub fn rewrite(&self, from: &str, to: &str) {
        self.shared
            .rewrites
            .lock()
            .unwrap()
            .push((from.as_bytes().to_vec(), to.as_bytes().to_vec()));
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Requests a fault other than `Pass` was applied to so far.
    pub fn faulted(&self) -> u64 {
        self.shared.faulted.load(Ordering::Relaxed)
    }

    /// The latest exchanges (at most 512, each cut at 64 KiB), oldest first.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.shared
            .exchanges
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.changed() => return,
        };
        let Ok((client, _)) = accepted else {
            // Out of descriptors, most likely: let some close.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::clone(&shared);
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = serve(&shared, client, upstream) => {}
                _ = stopped.changed() => {}
            }
        });
    }
}

async fn serve(shared: &Shared, mut client: TcpStream, upstream: SocketAddr) {
    let _ = client.set_nodelay(true);
    let Some((head, mut rest)) = read_head(&mut client).await else {
        return;
    };
    let request_line = head.lines().next().unwrap_or_default().to_owned();
    let fault = {
        let rule = shared.rule.lock().unwrap();
        match &rule.1 {
            Some(path) if !request_line.contains(path.as_str()) => Fault::Pass,
            _ => rule.0.clone(),
        }
    };
    if !matches!(fault, Fault::Pass) {
        shared.faulted.fetch_add(1, Ordering::Relaxed);
    }
    if matches!(fault, Fault::ResetRequest) {
        // The body (if any) is still unread: a reset now is mid-request.
        reset(client);
        return;
    }
    let length = content_length(&head);
    while rest.len() < length {
        let mut buf = vec![0u8; 16 * 1024];
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => rest.extend_from_slice(&buf[..n]),
        }
    }
    let mut request = head.clone().into_bytes();
    request.extend_from_slice(&rest);

    let answer = match &fault {
        Fault::Close => {
            shared.record(request, Vec::new());
            let _ = client.shutdown().await;
            return;
        }
        Fault::Blackhole => {
            shared.record(request, Vec::new());
            hold(&mut client).await;
            return;
        }
        Fault::Replace(_) | Fault::Respond(_) => {
            let bytes = match &fault {
                Fault::Respond(make) => make(&request),
                Fault::Replace(bytes) => bytes.to_vec(),
                _ => Vec::new(),
            };
            let _ = client.write_all(&bytes).await;
            let _ = client.shutdown().await;
            shared.record(request, bytes);
            hold_briefly(&mut client).await;
            return;
        }
        Fault::Delay(d) => {
            if client_left_within(&mut client, *d).await {
                return;
            }
            forward(shared, &head, &rest, upstream, None).await
        }
        Fault::Rewrite(edit) => forward(shared, &head, &rest, upstream, Some(edit)).await,
        _ => forward(shared, &head, &rest, upstream, None).await,
    };
    shared.record(request, answer.clone());
    let cut = |c: Cut| &answer[..c.at(&answer)];
    match fault {
        Fault::ResetResponse(c) => {
            let _ = client.write_all(cut(c)).await;
            let _ = client.flush().await;
            reset(client);
        }
        Fault::Truncate(c) => {
            let _ = client.write_all(cut(c)).await;
            let _ = client.shutdown().await;
            hold_briefly(&mut client).await;
        }
        Fault::Stall(c) => {
            let _ = client.write_all(cut(c)).await;
            hold(&mut client).await;
        }
        Fault::Trickle { bytes, every } => {
            for chunk in answer.chunks(bytes.max(1)) {
                if client.write_all(chunk).await.is_err() {
                    return;
                }
                if client_left_within(&mut client, every).await {
                    return;
                }
            }
            let _ = client.shutdown().await;
        }
        _ => {
            let _ = client.write_all(&answer).await;
            let _ = client.shutdown().await;
            hold_briefly(&mut client).await;
        }
    }
}

/// How much of each request and answer [`Proxy::exchanges`] keeps.
const KEEP_BYTES: usize = 64 * 1024;

impl Shared {
    fn record(&self, mut request: Vec<u8>, mut answer: Vec<u8>) {
        request.truncate(KEEP_BYTES);
        answer.truncate(KEEP_BYTES);
        let mut exchanges = self.exchanges.lock().unwrap();
        if exchanges.len() == KEEP_EXCHANGES {
            exchanges.pop_front();
        }
        exchanges.push_back(Exchange { request, answer });
    }
}

/// Sends the request upstream with `Connection: close` and returns the whole
/// answer, rewritten. An upstream that fails gives an empty answer (the client
/// then sees the connection close), as a dead backend behind a proxy would.
async fn forward(
    shared: &Shared,
    head: &str,
    body: &[u8],
    upstream: SocketAddr,
    edit: Option<&Edit>,
) -> Vec<u8> {
    let mut lines: Vec<&str> = head.trim_end_matches("\r\n").split("\r\n").collect();
    lines.retain(|l| {
        l.split_once(':')
            .is_none_or(|(n, _)| !n.trim().eq_ignore_ascii_case("connection"))
    });
    let mut request = lines.join("\r\n");
    request.push_str("\r\nConnection: close\r\n\r\n");
    let mut request = request.into_bytes();
    request.extend_from_slice(body);

    let exchange = async {
        let mut upstream = TcpStream::connect(upstream).await?;
        upstream.write_all(&request).await?;
        let mut answer = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = upstream.read(&mut buf).await?;
            if n == 0 || answer.len() + n > MAX_ANSWER {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
        io::Result::Ok(answer)
    };
    let answer = match timeout(UPSTREAM_TIMEOUT, exchange).await {
        Ok(Ok(answer)) => answer,
        _ => return Vec::new(),
    };
    let rewrites = shared.rewrites.lock().unwrap().clone();
    match Answer::parse(&answer) {
        Some(mut parsed) => {
            for line in &mut parsed.head {
                for (from, to) in &rewrites {
                    *line =
                        String::from_utf8_lossy(&replace(line.as_bytes(), from, to)).into_owned();
                }
            }
            for (from, to) in &rewrites {
                parsed.body = replace(&parsed.body, from, to);
            }
            if let Some(edit) = edit {
                edit(&mut parsed);
            }
            parsed.to_bytes()
        }
        None => answer,
    }
}

/// Reads up to the end of the request head; returns it and the bytes after it.
async fn read_head(client: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            return Some((head, buf[end + 4..].to_vec()));
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        match timeout(UPSTREAM_TIMEOUT, client.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

fn content_length(head: &str) -> usize {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
        .min(MAX_ANSWER)
}

/// Closes with RST instead of FIN.
fn reset(client: TcpStream) {
    let _ = client.set_zero_linger();
    drop(client);
}

/// Keeps the connection open, reading and discarding, until the client leaves.
async fn hold(client: &mut TcpStream) {
    let _ = client_left_within(client, MAX_HOLD).await;
}

/// After our FIN, lets the client read the rest before the socket goes (a
/// close with unread input would turn into a reset).
async fn hold_briefly(client: &mut TcpStream) {
    let _ = client_left_within(client, Duration::from_secs(5)).await;
}

/// True when the client closed (or broke) the connection within `wait`.
async fn client_left_within(client: &mut TcpStream, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    loop {
        match timeout_at(deadline, client.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(at) = (!from.is_empty()).then(|| find(rest, from)).flatten() {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to);
        rest = &rest[at + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}
