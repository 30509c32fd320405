//! Shared helpers for the end-to-end tests: the real `regent` binary running
//! the emulator and the agent as processes, in temporary directories, with
//! waits on observable events (a line printed, a socket answering) instead of
//! sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod crash;
pub mod forward_proxy;
pub mod http1;
#[cfg(unix)]
pub mod other_user;
pub mod procstat;
pub mod proxy;
pub mod signin;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `regent` binary built by `cargo test --workspace` (or `cargo build`).
pub fn regent_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/regent
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join(format!("regent{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p regent-cli` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// The browser stand-in of the sign-in tests (`src/bin/regent-test-browser.rs`),
/// beside `regent` (found the same way, so that under Wine it is a path
/// Windows can start).
pub fn test_browser_bin() -> PathBuf {
    let bin = regent_bin().with_file_name(format!(
        "regent-test-browser{}",
        std::env::consts::EXE_SUFFIX
    ));
    assert!(
        bin.exists(),
        "{} is missing: `cargo test -p regent-tests` builds it",
        bin.display()
    );
    bin
}

/// Known control key for emulators started by tests.
pub const EMULATOR_KEY: &str = "e2e-control-key";

/// A `regent emulator` process on an ephemeral loopback port.
#[derive(Debug)]
pub struct EmulatorProc {
    child: Child,
    pub url: String,
}

impl EmulatorProc {
    pub fn start(access_token_lifespan: u64) -> EmulatorProc {
        Self::start_with(access_token_lifespan, &[])
    }

    /// Like [`EmulatorProc::start`], with more `regent emulator` arguments.
    pub fn start_with(access_token_lifespan: u64, extra: &[&str]) -> EmulatorProc {
        let mut child = Command::new(regent_bin())
            .args([
                "emulator",
                "--listen",
                "127.0.0.1:0",
                "--access-token-lifespan",
            ])
            .arg(access_token_lifespan.to_string())
            .args(extra)
            .env("REGENT_EMULATOR_ADMIN_KEY", EMULATOR_KEY)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn regent emulator");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().expect("emulator prints its URL").unwrap();
        let url = first
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .expect("URL in the first line")
            .to_owned();
        // Keep draining stdout so the emulator never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        EmulatorProc { child, url }
    }

    /// Runs `regent admin ARGS` against this emulator (its default admin
    /// user and password, from the environment as a script would pass them).
    pub fn admin(&self, args: &[&str]) -> Output {
        let mut all = vec!["admin"];
        all.extend_from_slice(args);
        regent(
            &all,
            None,
            &[
                ("REGENT_ADMIN_URL", self.url.as_str()),
                ("REGENT_ADMIN_USER", "admin"),
                ("REGENT_ADMIN_PASSWORD", "admin"),
            ],
        )
    }

    /// Creates a registration token with `regent admin registration-token create`.
    pub fn mint(&self, count: u32) -> String {
        let out = self.admin(&[
            "registration-token",
            "create",
            "--count",
            &count.to_string(),
        ]);
        assert!(
            out.status.success(),
            "registration-token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// The auth tokens the emulator knows (who redeemed).
    pub fn auth_tokens(&self) -> Vec<serde_json::Value> {
        let out = self.admin(&["auth-token", "list", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn revoke(&self, id: &str) {
        let out = self.admin(&["auth-token", "revoke", id]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for EmulatorProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `regent` with `args`, optional stdin, and extra environment.
pub fn regent(args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Output {
    run_program(&regent_bin(), args, stdin, env)
}

/// Runs `program` with `args`, optional stdin, and extra environment; waits
/// for its output.
pub fn run_program(
    program: &Path,
    args: &[&str],
    stdin: Option<&str>,
    env: &[(&str, &str)],
) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

/// A temporary agent home: config file, state directory, socket.
#[derive(Debug)]
pub struct AgentHome {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
}

impl AgentHome {
    /// A sentinel-profile agent with a file store; `extra` is appended to the config.
    pub fn new(server_url: &str, extra: &str) -> AgentHome {
        let dir = tempfile::tempdir().unwrap();
        let socket = endpoint(dir.path());
        let config = dir.path().join("regent.toml");
        let text = format!(
            "[server]\nprofile = \"sentinel\"\nurl = \"{server_url}\"\nrequest_timeout = 5\n\n\
             [store]\nkind = \"file\"\n\n[state]\ndir = {}\n\n{extra}\n",
            toml_path(&dir.path().join("state"))
        );
        let text = if text.contains("[ipc]") {
            text.replace("[ipc]", &format!("[ipc]\nsocket = {}", toml_path(&socket)))
        } else {
            format!("{text}\n[ipc]\nsocket = {}\n", toml_path(&socket))
        };
        std::fs::write(&config, text).unwrap();
        AgentHome {
            dir,
            config,
            socket,
        }
    }

    /// Environment for CLI commands talking to this agent.
    pub fn env(&self) -> [(&str, &str); 1] {
        [("REGENT_SOCKET", self.socket.to_str().unwrap())]
    }

    /// Runs a CLI command against this agent.
    pub fn regent(&self, args: &[&str], stdin: Option<&str>) -> Output {
        regent(args, stdin, &self.env())
    }

    pub fn client_options(&self, app: &str) -> regent_client::ClientOptions {
        regent_client::ClientOptions::new(app).socket(&self.socket)
    }
}

/// A `regent agent` process.
#[derive(Debug)]
pub struct AgentProc {
    pub child: Child,
    pub log: PathBuf,
}

impl AgentProc {
    /// Starts the agent and waits until its socket answers.
    pub fn start(home: &AgentHome) -> AgentProc {
        let agent = AgentProc::spawn(home);
        wait_for_socket(&home.socket, Duration::from_secs(20));
        agent
    }

    /// Starts the agent without waiting.
    pub fn spawn(home: &AgentHome) -> AgentProc {
        let log = unique(home.dir.path().join("agent.log"));
        let child = Command::new(regent_bin())
            .args(["agent", "--config"])
            .arg(&home.config)
            .env("RUST_LOG", "regent_agent=debug,info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn regent agent");
        AgentProc { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits for the exit status.
    #[cfg(unix)]
    pub fn terminate(mut self) -> std::process::ExitStatus {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).unwrap();
        let status = wait_timeout(&mut self.child, Duration::from_secs(15));
        std::mem::forget(self);
        status
    }

    /// SIGKILL (a crash): nothing is cleaned up.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        std::mem::forget(self);
    }
}

fn unique(path: PathBuf) -> PathBuf {
    let mut n = 0;
    let mut p = path.clone();
    while p.exists() {
        n += 1;
        p = path.with_extension(format!("{n}.log"));
    }
    p
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for a child to exit, killing it after `timeout`.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until something accepts connections on `socket` (on Windows: a
/// pipe name that can be opened).
pub fn wait_for_socket(socket: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        #[cfg(unix)]
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return;
        }
        #[cfg(windows)]
        if std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(socket)
            .is_ok()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "agent socket {} not ready within {timeout:?}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The exit code of a finished command.
pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// stdout and stderr as text, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Polls `check` every 20 ms until it holds, failing after `timeout` with `what`.
pub fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl AgentProc {
    /// Starts the agent with extra environment variables (and some removed),
    /// e.g. without `RUST_LOG` so that `[log] level` decides; waits for the socket.
    pub fn start_with_env(home: &AgentHome, env: &[(&str, &str)], remove: &[&str]) -> AgentProc {
        let log = unique(home.dir.path().join("agent.log"));
        let mut cmd = Command::new(regent_bin());
        cmd.args(["agent", "--config"])
            .arg(&home.config)
            .env("RUST_LOG", "regent_agent=debug,info");
        for name in remove {
            cmd.env_remove(name);
        }
        let child = cmd
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn regent agent");
        let agent = AgentProc { child, log };
        wait_for_socket(&home.socket, Duration::from_secs(20));
        agent
    }

    /// Waits until the log has a line containing every one of `needles`
    /// (after the first `skip` lines); returns that line.
    pub fn wait_for_log_line(&self, skip: usize, needles: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log_text();
            if let Some(line) = log
                .lines()
                .skip(skip)
                .find(|line| needles.iter().all(|n| line.contains(n)))
            {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for a log line with {needles:?}; the log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many lines the log has now (to wait only for later lines).
    pub fn log_lines(&self) -> usize {
        self.log_text().lines().count()
    }
}

/// Replaces a file the way editors save: write a temporary file, rename it over.
pub fn save_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.swp-tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A copy of the `regent` binary (and `regentd` beside it) in a fresh
/// world-readable directory, for
/// tests that run it as another uid: the checkout (and its `target/`) may sit
/// below a directory that other users cannot enter, such as `/root`.
#[cfg(unix)]
pub fn regent_bin_for_any_user() -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("regent-bin-")
        .tempdir_in("/tmp")
        .expect("temporary directory in /tmp");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("regent");
    link_or_copy(&regent_bin(), &bin);
    // `regent` runs `regentd` beside it for every command but `token`.
    link_or_copy(&regentd_bin(), &dir.path().join("regentd"));
    (dir, bin)
}

/// `regentd`, beside [`regent_bin`]: every command but `regent token` runs in
/// it (on Unix `regent` execs it).
pub fn regentd_bin() -> PathBuf {
    regent_bin().with_file_name(format!("regentd{}", std::env::consts::EXE_SUFFIX))
}

/// A hard link of `from` at `to`, or else a copy made by a `cp` child: a copy
/// written by this process would leave its write descriptor open for a
/// moment, and a process forked meanwhile by another test thread would hold
/// it until its exec, so spawning the copy could fail with ETXTBSY ("Text
/// file busy").
#[cfg(unix)]
pub fn link_or_copy(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::hard_link(from, to).is_err() {
        let copied = Command::new("cp")
            .arg(from)
            .arg(to)
            .status()
            .expect("run cp");
        assert!(copied.success(), "copy {}: {copied}", from.display());
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// Where a test agent in `dir` listens: `run/agent.sock`, or on Windows a
/// pipe name of this process's own (`\\.\pipe\regent-test-<pid>-<n>`), never
/// the default one, so tests meet neither each other nor a real agent.
pub fn endpoint(dir: &Path) -> PathBuf {
    #[cfg(windows)]
    {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let _ = dir;
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        PathBuf::from(format!(r"\\.\pipe\regent-test-{}-{n}", std::process::id()))
    }
    #[cfg(not(windows))]
    {
        dir.join("run/agent.sock")
    }
}

/// `path` as a TOML basic string: a Windows path's `\` would otherwise be
/// read as escapes (`\u…` in `C:\users`).
pub fn toml_path(path: &Path) -> String {
    let text = path.to_string_lossy();
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package sits in the repository")
        .to_path_buf()
}

/// A tool the test needs: on CI its absence is a failure, elsewhere a skip.
pub fn have_tool(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is missing on CI; scripts/test.sh installs it"
        );
        eprintln!("skipped: {tool} is not installed (scripts/test.sh installs it)");
    }
    found
}

/// The environment variable that selects the full form of the long tests
/// (crash matrix, soak, 10,000 connections). `scripts/test.sh --long` sets it;
/// without it those tests run their bounded quick form.
pub const LONG_ENV: &str = "REGENT_LONG";

/// True when the full (long) form of the reliability tests was asked for.
pub fn long_run() -> bool {
    std::env::var(LONG_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `quick` normally, `long` under `scripts/test.sh --long`.
pub fn scale(quick: usize, long: usize) -> usize {
    if long_run() { long } else { quick }
}

/// The exit status `regent` gives for `code` (the error number).
pub fn exit(code: regent_proto::ErrorCode) -> i32 {
    i32::from(code.number())
}

/// Whether this test may run processes as other uids (it runs as root). CI
/// must: there a non-root run fails instead of skipping.
#[cfg(unix)]
pub fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run this test as root"
    );
    eprintln!("skipped: needs root to run processes as other uids");
    false
}

/// stderr of a finished command, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The command was refused with `PERMISSION_DENIED`.
#[track_caller]
pub fn assert_denied(out: &Output) {
    assert_eq!(
        code(out),
        exit(regent_proto::ErrorCode::PermissionDenied),
        "{}",
        text(out)
    );
}
