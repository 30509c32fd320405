//! Where the agent listens and how long to wait for it.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// The environment variable that overrides the socket path.
pub const SOCKET_ENV: &str = "REGENT_SOCKET";

/// How to reach the agent and how long to wait.
///
/// ```
/// use std::time::Duration;
/// use regent_client::ClientOptions;
///
/// let opts = ClientOptions::new("editor")
///     .instance("editor-1")
///     .request_timeout(Duration::from_secs(5));
/// assert_eq!(opts.connect_timeout, Duration::from_secs(2));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// The agent's socket; `None` means [`default_socket_path`].
    pub socket: Option<PathBuf>,
    /// The application's name, sent in `hello` (audit log and status).
    pub app: String,
    /// A stable instance id, for agents leasing one slot per instance.
    pub instance: Option<String>,
    /// Limit for connecting plus the `hello` exchange (default 2 s).
    pub connect_timeout: Duration,
    /// How long a token request waits for a free instance slot when the
    /// agent answers `NO_FREE_INSTANCE` (per-instance mode); `None` (the
    /// default) returns that error at once.
    pub wait_for_instance: Option<Duration>,
    /// Limit for one call, reconnecting included (default 30 s: a token
    /// request may wait for the license server).
    pub request_timeout: Duration,
    /// The uid the agent runs as, when it is neither this process's uid nor
    /// root (nor the owner of a private socket directory); `None` means
    /// `$REGENT_AGENT_UID` when set. The client refuses any other server
    /// with `AGENT_UNREACHABLE` before sending anything.
    pub agent_uid: Option<u32>,
}

impl ClientOptions {
    /// Defaults with this application name.
    pub fn new(app: impl Into<String>) -> Self {
        ClientOptions {
            app: app.into(),
            ..ClientOptions::default()
        }
    }

    /// Uses this socket instead of the default.
    #[must_use]
    pub fn socket(mut self, socket: impl Into<PathBuf>) -> Self {
        self.socket = Some(socket.into());
        self
    }

    /// Sets the instance id.
    #[must_use]
    pub fn instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }

    /// Sets the connect (and `hello`) timeout.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Waits up to `limit` for a free instance slot instead of failing with
    /// `NO_FREE_INSTANCE` at once.
    #[must_use]
    pub fn wait_for_instance(mut self, limit: Duration) -> Self {
        self.wait_for_instance = Some(limit);
        self
    }

    /// Sets the per-call timeout.
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Also accepts a server running as `uid` (a system agent's dedicated
    /// user); overrides `$REGENT_AGENT_UID`.
    #[must_use]
    pub fn agent_uid(mut self, uid: u32) -> Self {
        self.agent_uid = Some(uid);
        self
    }

    /// The socket these options point at: [`ClientOptions::socket`], else
    /// [`default_socket_path`].
    pub fn socket_path(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(default_socket_path)
    }
}

impl Default for ClientOptions {
    /// No explicit socket, the executable's name as `app`, 2 s to connect,
    /// 30 s per call.
    fn default() -> Self {
        ClientOptions {
            socket: None,
            app: executable_name(),
            instance: None,
            connect_timeout: Duration::from_secs(2),
            wait_for_instance: None,
            request_timeout: Duration::from_secs(30),
            agent_uid: None,
        }
    }
}

/// The program's file name, made acceptable to the agent, which refuses a
/// `hello` whose names are not printable or longer than 128 characters.
fn executable_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|name| {
            name.chars()
                .map(|c| {
                    if regent_proto::message::is_name_char(c) {
                        c
                    } else {
                        '?'
                    }
                })
                .take(regent_proto::message::MAX_NAME_CHARS)
                .collect()
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The socket the agent listens on by default (DESIGN §6).
///
/// `$REGENT_SOCKET` when set and non-empty; otherwise, on Unix,
/// `$XDG_RUNTIME_DIR/regent/agent.sock` when `XDG_RUNTIME_DIR` is set (a user
/// agent) and `/run/regent/agent.sock` when not (the system agent). On
/// Windows the per-user agent's pipe `\\.\pipe\regent-agent-<user SID>`
/// ([`user_pipe`]) when it exists now, else the system agent's
/// `\\.\pipe\regent-agent` ([`SYSTEM_PIPE`]); as on Unix, a user agent
/// is preferred, and whoever answers is checked before anything is sent.
pub fn default_socket_path() -> PathBuf {
    socket_path_from(
        std::env::var_os(SOCKET_ENV),
        std::env::var_os("XDG_RUNTIME_DIR"),
    )
}

/// The system agent's named pipe on Windows (the service's default).
pub const SYSTEM_PIPE: &str = r"\\.\pipe\regent-agent";

/// A per-user agent's named pipe on Windows: [`SYSTEM_PIPE`], a dash and
/// the user's SID (`S-1-5-21-…`).
pub fn user_pipe(sid: &str) -> PathBuf {
    PathBuf::from(format!("{SYSTEM_PIPE}-{sid}"))
}

/// The per-user pipe when `exists` says so, else the system pipe.
#[cfg_attr(not(windows), allow(dead_code))]
fn pipe_from(user_sid: Option<&str>, exists: impl Fn(&std::path::Path) -> bool) -> PathBuf {
    user_sid
        .map(user_pipe)
        .filter(|pipe| exists(pipe))
        .unwrap_or_else(|| PathBuf::from(SYSTEM_PIPE))
}

fn socket_path_from(regent_socket: Option<OsString>, runtime_dir: Option<OsString>) -> PathBuf {
    if let Some(path) = regent_socket.filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    #[cfg(windows)]
    {
        let _ = runtime_dir;
        // Without our own SID (cannot happen for a running process) only the
        // system pipe can be named.
        let sid = crate::win32::own_user().ok();
        pipe_from(sid.as_deref(), crate::win32::pipe_exists)
    }
    #[cfg(not(windows))]
    match runtime_dir.filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("regent").join("agent.sock"),
        None => PathBuf::from("/run/regent/agent.sock"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_override_wins() {
        let path = socket_path_from(Some("/tmp/x.sock".into()), Some("/run/user/1000".into()));
        assert_eq!(path, PathBuf::from("/tmp/x.sock"));
    }

    #[cfg(unix)]
    #[test]
    fn user_then_system_paths() {
        let user = socket_path_from(None, Some("/run/user/1000".into()));
        assert_eq!(user, PathBuf::from("/run/user/1000/regent/agent.sock"));
        let empty = socket_path_from(Some("".into()), Some("".into()));
        assert_eq!(empty, PathBuf::from("/run/regent/agent.sock"));
        assert_eq!(
            socket_path_from(None, None),
            PathBuf::from("/run/regent/agent.sock")
        );
    }

    #[test]
    fn windows_pipes_user_first_then_system() {
        let sid = "S-1-5-21-1-2-3-1001";
        let user = PathBuf::from(r"\\.\pipe\regent-agent-S-1-5-21-1-2-3-1001");
        assert_eq!(user_pipe(sid), user);
        assert_eq!(pipe_from(Some(sid), |p| p == user.as_path()), user);
        assert_eq!(pipe_from(Some(sid), |_| false), PathBuf::from(SYSTEM_PIPE));
        assert_eq!(pipe_from(None, |_| true), PathBuf::from(SYSTEM_PIPE));
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let opts = ClientOptions::default();
        assert_eq!(opts.connect_timeout, Duration::from_secs(2));
        assert_eq!(opts.request_timeout, Duration::from_secs(30));
        assert!(!opts.app.is_empty());
        let opts = ClientOptions::new("editor").socket("/tmp/a.sock");
        assert_eq!(opts.app, "editor");
        assert_eq!(opts.socket_path(), PathBuf::from("/tmp/a.sock"));
    }
}
