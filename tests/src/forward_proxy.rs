//! A loopback forward proxy that records everything it is sent, for the
//! proxy tests (issue 18, item 1).
//!
//! `CONNECT 127.0.0.1:PORT` opens a tunnel (loopback targets only) and relays
//! bytes both ways, keeping a copy of each direction; any other request is
//! recorded and answered `502`, so a client that sends plain HTTP to it fails
//! visibly and leaves its request (headers, secrets and all) in the record.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Largest request head read, and most bytes kept per direction of a tunnel.
const MAX_HEAD: usize = 64 * 1024;
const KEEP: usize = 4 * 1024 * 1024;
/// How long a tunnel may stay idle before it is closed.
const IDLE: Duration = Duration::from_secs(120);

/// One `CONNECT` tunnel as the proxy saw it.
#[derive(Debug, Clone, Default)]
pub struct Tunnel {
    /// The `CONNECT` request head, as sent.
    pub head: String,
    /// Bytes the client sent through the tunnel (after the head).
    pub from_client: Vec<u8>,
    /// Bytes relayed back to the client.
    pub from_server: Vec<u8>,
}

#[derive(Default)]
struct Record {
    /// Every byte any client sent, heads included.
    bytes_received: u64,
    connections: u64,
    tunnels: Vec<Tunnel>,
    /// Requests other than `CONNECT` (refused with 502), as sent.
    plain: Vec<Vec<u8>>,
}

/// The proxy; stops when dropped.
pub struct ForwardProxy {
    addr: SocketAddr,
    record: Arc<Mutex<Record>>,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for ForwardProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardProxy")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ForwardProxy {
    /// Listens on `127.0.0.1:0`. Must be called inside a tokio runtime.
    pub async fn start() -> io::Result<ForwardProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let record = Arc::new(Mutex::new(Record::default()));
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(accept_loop(listener, Arc::clone(&record), stopped));
        Ok(ForwardProxy { addr, record, stop })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every byte received from clients so far.
    pub fn bytes_received(&self) -> u64 {
        self.record.lock().unwrap().bytes_received
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.record.lock().unwrap().connections
    }

    /// The tunnels opened so far (open ones with what they relayed until now).
    pub fn tunnels(&self) -> Vec<Tunnel> {
        self.record.lock().unwrap().tunnels.clone()
    }

    /// Requests other than `CONNECT` received so far.
    pub fn plain_requests(&self) -> Vec<Vec<u8>> {
        self.record.lock().unwrap().plain.clone()
    }

    /// Everything clients sent and the proxy relayed back, in one buffer (to
    /// search for secrets).
    pub fn everything_seen(&self) -> Vec<u8> {
        let record = self.record.lock().unwrap();
        let mut all = Vec::new();
        for plain in &record.plain {
            all.extend_from_slice(plain);
        }
        for t in &record.tunnels {
            all.extend_from_slice(t.head.as_bytes());
            all.extend_from_slice(&t.from_client);
            all.extend_from_slice(&t.from_server);
        }
        all
    }
}

impl Drop for ForwardProxy {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn accept_loop(
    listener: TcpListener,
    record: Arc<Mutex<Record>>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.changed() => return,
        };
        let Ok((client, _)) = accepted else {
            continue;
        };
        record.lock().unwrap().connections += 1;
        let record = Arc::clone(&record);
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = serve(&record, client) => {}
                _ = stopped.changed() => {}
            }
        });
    }
}

async fn serve(record: &Arc<Mutex<Record>>, mut client: TcpStream) {
    // Read up to the end of the head, counting every byte.
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break Some(end + 4);
        }
        if buf.len() > MAX_HEAD {
            break None;
        }
        match tokio::time::timeout(IDLE, client.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                record.lock().unwrap().bytes_received += n as u64;
                buf.extend_from_slice(&chunk[..n]);
            }
            _ => break None,
        }
    };
    let Some(end) = end else {
        record.lock().unwrap().plain.push(buf);
        return;
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let target = head
        .strip_prefix("CONNECT ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|t| t.parse::<SocketAddr>().ok())
        .filter(|t| t.ip().is_loopback());
    let Some(target) = target else {
        // Not a tunnel: keep what was sent, body included.
        let length = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(0)
            .min(KEEP);
        let mut rest = buf;
        while rest.len() < end + length {
            match tokio::time::timeout(IDLE, client.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => {
                    record.lock().unwrap().bytes_received += n as u64;
                    rest.extend_from_slice(&chunk[..n]);
                }
                _ => break,
            }
        }
        record.lock().unwrap().plain.push(rest);
        let _ = client
            .write_all(
                b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            )
            .await;
        let _ = client.shutdown().await;
        return;
    };
    let index = {
        let mut r = record.lock().unwrap();
        r.tunnels.push(Tunnel {
            head,
            from_client: buf[end..].to_vec(),
            from_server: Vec::new(),
        });
        r.tunnels.len() - 1
    };
    let Ok(mut server) = TcpStream::connect(target).await else {
        let _ = client
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    // Bytes that arrived with the head belong to the tunnel.
    if end < buf.len() && server.write_all(&buf[end..]).await.is_err() {
        return;
    }
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = relay(record, index, true, &mut client_read, &mut server_write);
    let down = relay(record, index, false, &mut server_read, &mut client_write);
    let _ = tokio::join!(up, down);
}

/// Copies `from` to `to` until either end closes, keeping a copy in the record.
async fn relay(
    record: &Arc<Mutex<Record>>,
    index: usize,
    from_client: bool,
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match tokio::time::timeout(IDLE, from.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => break,
        };
        {
            let mut r = record.lock().unwrap();
            if from_client {
                r.bytes_received += n as u64;
            }
            let tunnel = &mut r.tunnels[index];
            let kept = if from_client {
                &mut tunnel.from_client
            } else {
                &mut tunnel.from_server
            };
            if kept.len() + n <= KEEP {
                kept.extend_from_slice(&buf[..n]);
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
