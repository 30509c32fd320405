//! Clients running as other users (needs root): a command with a chosen
//! uid, primary group and supplementary groups; a socket directory whose
//! group is handed to the sockets created in it; and a raw protocol client
//! (Python) that sends framed JSON lines and reports every frame it receives,
//! for tests that must hold a connection open as another uid.
#![cfg(unix)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::{AgentHome, AgentProc};

/// Makes `cmd` run as `uid` with primary group `gid` and exactly the
/// supplementary `groups`. (`Command::uid` drops every supplementary group
/// and `Command::groups` is unstable, so this sets all three itself.)
#[allow(unsafe_code)]
pub fn as_user<'a>(cmd: &'a mut Command, uid: u32, gid: u32, groups: &[u32]) -> &'a mut Command {
    use nix::unistd::{Gid, Uid, setgid, setuid};
    let groups: Vec<Gid> = groups.iter().copied().map(Gid::from_raw).collect();
    // SAFETY: between fork and exec the closure makes only system calls
    // (setgroups, setgid, setuid) on data prepared before the fork; it
    // allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            setgroups(&groups)?;
            setgid(Gid::from_raw(gid))?;
            setuid(Uid::from_raw(uid))?;
            Ok(())
        })
    }
}

/// Gives `cmd` the default action for `signal`, whatever this process
/// inherited: a shell ignores SIGINT and SIGQUIT for what it runs in the
/// background, an ignored signal stays ignored across `exec`, and `sh`
/// cannot reset a signal ignored on entry — so a test that sends one must
/// restore it itself.
#[allow(unsafe_code)]
pub fn default_action(cmd: &mut Command, signal: nix::sys::signal::Signal) -> &mut Command {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, sigaction};
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: between fork and exec the closure makes one system call
    // (sigaction) with a value built before the fork; SIG_DFL installs no
    // handler.
    unsafe {
        cmd.pre_exec(move || {
            sigaction(signal, &default)?;
            Ok(())
        })
    }
}

#[cfg(not(target_vendor = "apple"))]
fn setgroups(groups: &[nix::unistd::Gid]) -> nix::Result<()> {
    nix::unistd::setgroups(groups)
}

/// `nix` has no `setgroups` for Apple targets (their count is an `int`).
#[cfg(target_vendor = "apple")]
#[allow(unsafe_code)]
fn setgroups(groups: &[nix::unistd::Gid]) -> nix::Result<()> {
    let count = nix::libc::c_int::try_from(groups.len()).map_err(|_| nix::errno::Errno::EINVAL)?;
    // SAFETY: `Gid` is a transparent `gid_t`; the slice holds `count` of them.
    let rc = unsafe { nix::libc::setgroups(count, groups.as_ptr().cast()) };
    nix::errno::Errno::result(rc).map(drop)
}

/// Prepares `home`'s socket directory so that the socket the agent creates
/// there (mode `0660`) belongs to group `gid`: the directory is setgid to
/// that group, the way a system agent's `RuntimeDirectory` with `Group=`
/// works. The home directory becomes enterable by everyone.
pub fn socket_group(home: &AgentHome, gid: u32) {
    let run = home.socket.parent().expect("the socket has a directory");
    std::fs::create_dir_all(run).unwrap();
    std::fs::set_permissions(home.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    nix::unistd::chown(run, None, Some(nix::unistd::Gid::from_raw(gid))).unwrap();
    std::fs::set_permissions(run, std::fs::Permissions::from_mode(0o2750)).unwrap();
}

/// The raw client: connects, prints `CONNECTED`, then sends each stdin line
/// as one frame and prints each frame received as one line; `EOF` when the
/// agent closes the connection.
const RAW_CLIENT: &str = r#"
import socket, struct, sys, threading
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("CONNECT-ERROR", e, flush=True)
    sys.exit(1)
print("CONNECTED", flush=True)
def read():
    buf = b""
    while True:
        try:
            chunk = s.recv(65536)
        except OSError:
            chunk = b""
        if not chunk:
            break
        buf += chunk
        while len(buf) >= 4:
            n = struct.unpack(">I", buf[:4])[0]
            if len(buf) < 4 + n:
                break
            print(buf[4:4 + n].decode(), flush=True)
            buf = buf[4 + n:]
    print("EOF", flush=True)
reader = threading.Thread(target=read)
reader.start()
for line in sys.stdin:
    data = line.strip().encode()
    try:
        s.sendall(struct.pack(">I", len(data)) + data)
    except OSError:
        pass
reader.join()
"#;

/// What the raw client reported.
#[derive(Debug)]
pub enum Received {
    /// One frame, parsed.
    Frame(serde_json::Value),
    /// The agent closed the connection.
    Closed,
}

/// A raw protocol client process of another uid, holding one connection.
#[derive(Debug)]
pub struct RawClient {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl RawClient {
    /// Connects to `socket` as `uid`/`gid` with `groups`; panics when the
    /// connection cannot be made.
    pub fn connect_as(socket: &Path, uid: u32, gid: u32, groups: &[u32]) -> RawClient {
        // The system's, which every uid can run (a per-user install under
        // /root is not reachable by another uid).
        let python = if Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        };
        let mut cmd = Command::new(python);
        cmd.args(["-c", RAW_CLIENT])
            .arg(socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        as_user(&mut cmd, uid, gid, groups);
        let mut child = cmd.spawn().expect("spawn python3");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        let client = RawClient {
            child,
            stdin,
            lines,
        };
        let first = client.line(Duration::from_secs(20));
        assert_eq!(first.as_deref(), Some("CONNECTED"), "raw client: {first:?}");
        client
    }

    fn line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Sends one request.
    pub fn send(&mut self, request: &serde_json::Value) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{request}").unwrap();
        stdin.flush().unwrap();
    }

    /// The next frame or the close, waiting up to `timeout`; panics on a
    /// timeout.
    pub fn next(&self, timeout: Duration) -> Received {
        match self.line(timeout) {
            Some(line) if line == "EOF" => Received::Closed,
            Some(line) => Received::Frame(
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")),
            ),
            None => panic!("nothing from the raw client within {timeout:?}"),
        }
    }

    /// The next frame; panics on a close or a timeout.
    pub fn frame(&self, timeout: Duration) -> serde_json::Value {
        match self.next(timeout) {
            Received::Frame(v) => v,
            Received::Closed => panic!("the agent closed the connection"),
        }
    }

    /// Frames until one matches `wanted`, which is returned; panics on a
    /// close, or when none matched within `timeout` in all.
    pub fn frame_where(
        &self,
        timeout: Duration,
        mut wanted: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let frame = self.frame(left);
            if wanted(&frame) {
                return frame;
            }
        }
    }
}

impl Drop for RawClient {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Gives `path` to `uid` (and the group of the same number).
pub fn chown_to(path: &Path, uid: u32) {
    nix::unistd::chown(
        path,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(uid)),
    )
    .unwrap();
}

/// Spawns `cmd`, retrying while the kernel says "text file busy": the binary
/// was just copied, and a process another test forked meanwhile may still
/// hold the copy's write descriptor until it execs.
pub fn spawn_retrying(cmd: &mut Command) -> Child {
    for _ in 0..250 {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            result => return result.unwrap(),
        }
    }
    panic!("the binary stayed busy for 5 s");
}

/// Starts `bin agent` as `uid` (group the same number) with debug logs,
/// `home` owned by `uid` and reachable by everyone; waits for the socket.
pub fn start_agent_as(bin: &Path, uid: u32, home: &AgentHome) -> AgentProc {
    let run = home.socket.parent().expect("the socket has a directory");
    std::fs::create_dir_all(run).unwrap();
    for path in [home.dir.path(), run] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
        chown_to(path, uid);
    }
    chown_to(&home.config, uid);
    let log = home.dir.path().join(format!("agent-as-{uid}.log"));
    let mut cmd = Command::new(bin);
    cmd.args(["agent", "--config"])
        .arg(&home.config)
        .env("RUST_LOG", "regent_agent=debug,info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    as_user(&mut cmd, uid, uid, &[]);
    let child = spawn_retrying(&mut cmd);
    let mut agent = AgentProc { child, log };
    crate::wait_until(Duration::from_secs(20), "the agent's socket", || {
        if let Some(status) = agent.child.try_wait().unwrap() {
            panic!("the agent exited ({status}):\n{}", agent.log_text());
        }
        std::os::unix::net::UnixStream::connect(&home.socket).is_ok()
    });
    agent
}
