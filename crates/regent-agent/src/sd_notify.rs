//! The systemd readiness protocol (`sd_notify(3)`), without libsystemd.
//!
//! A `Type=notify` unit sets `$NOTIFY_SOCKET` to a Unix datagram socket: a
//! filesystem path, or an abstract-namespace name written with a leading `@`.
//! The agent sends `READY=1` once its socket is listening and its state is
//! loaded, `STOPPING=1` when it begins to shut down, `STATUS=…` lines for
//! `systemctl status`, and `WATCHDOG=1` pings when the unit asks for them.
//! Outside systemd (no `$NOTIFY_SOCKET`) every call does nothing.

use std::time::Duration;

/// Where readiness messages go, read once from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notifier {
    address: Option<String>,
}

impl Notifier {
    /// The notifier for `$NOTIFY_SOCKET`; inert when it is unset or empty.
    pub fn from_env() -> Notifier {
        Notifier::new(std::env::var("NOTIFY_SOCKET").ok())
    }

    /// A notifier for an explicit address (`/path` or `@abstract`), for tests.
    pub fn new(address: Option<String>) -> Notifier {
        Notifier {
            address: address.filter(|a| !a.is_empty()),
        }
    }

    /// Whether a service manager listens.
    pub fn is_active(&self) -> bool {
        self.address.is_some()
    }

    /// The agent is serving: socket bound, state and credential loaded.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}\n", one_line(status)));
    }

    /// The agent has begun to shut down.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping\n");
    }

    /// A free-form status line for `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}\n", one_line(status)));
    }

    /// A watchdog keep-alive.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1\n");
    }

    /// Sends one datagram. Failures are logged and otherwise ignored: a
    /// missing service manager must never stop the agent.
    fn send(&self, message: &str) {
        let Some(address) = &self.address else {
            return;
        };
        if let Err(e) = send_datagram(address, message.as_bytes()) {
            tracing::warn!(notify_socket = %address, error = %e, "cannot notify the service manager");
        }
    }
}

/// The watchdog interval the unit asked for (`WatchdogSec=`), halved as
/// `sd_watchdog_enabled(3)` advises; `None` when not asked or not for us.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok()? != std::process::id()
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(unix)]
fn send_datagram(address: &str, message: &[u8]) -> std::io::Result<()> {
    use std::os::unix::net::UnixDatagram;
    let socket = UnixDatagram::unbound()?;
    let sent = if let Some(name) = address.strip_prefix('@') {
        send_abstract(&socket, name, message)?
    } else {
        socket.send_to(message, address)?
    };
    if sent == message.len() {
        Ok(())
    } else {
        Err(std::io::Error::other("short write to the notify socket"))
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_abstract(
    socket: &std::os::unix::net::UnixDatagram,
    name: &str,
    message: &[u8],
) -> std::io::Result<usize> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    socket.send_to_addr(message, &addr)
}

#[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
fn send_abstract(
    _socket: &std::os::unix::net::UnixDatagram,
    _name: &str,
    _message: &[u8],
) -> std::io::Result<usize> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract socket addresses exist only on Linux",
    ))
}

#[cfg(not(unix))]
fn send_datagram(_address: &str, _message: &[u8]) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "$NOTIFY_SOCKET is a systemd (Unix) mechanism",
    ))
}

#[cfg(all(test, unix))]
#[allow(clippy::expect_used)] // `cfg(all(test, …))` is not seen as test code by clippy.
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    fn receive(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("set a read timeout");
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a datagram within 5 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_ready_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::new(Some(path.display().to_string()));
        assert!(notifier.is_active());
        notifier.ready("serving on /run/regent/agent.sock\nsecond line");
        let got = receive(&socket);
        assert_eq!(
            got,
            "READY=1\nSTATUS=serving on /run/regent/agent.sock second line\n"
        );
        notifier.stopping();
        assert!(receive(&socket).starts_with("STOPPING=1\n"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!(
            "regent-test-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        );
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        Notifier::new(Some(format!("@{name}"))).watchdog();
        assert_eq!(receive(&socket), "WATCHDOG=1\n");
    }

    #[test]
    fn without_a_socket_nothing_happens() {
        let notifier = Notifier::new(Some(String::new()));
        assert!(!notifier.is_active());
        notifier.ready("x");
        // A socket that does not exist is logged, not fatal.
        Notifier::new(Some("/nonexistent/regent-notify".into())).ready("x");
    }
}
