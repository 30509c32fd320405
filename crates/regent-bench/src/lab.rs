//! What the scenarios run against: the emulator in-process, agents and the
//! echo baseline as child processes (so the agent's memory and start-up are
//! its own, and client and server never share a runtime), temporary homes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use regent_agent::secret::ExposeSecret;
use regent_agent::upstream::AdminClient;
use regent_emulator::{Emulator, EmulatorConfig};
use serde_json::{Value, json};

use crate::machine::Machine;

/// Which program plays the agent.
#[derive(Debug, Clone)]
pub enum AgentBin {
    /// The `regent` binary (`regent agent --config …`).
    Regent(PathBuf),
    /// This binary's hidden `agent` mode, which runs the same
    /// `regent_agent::daemon::run_with` as `regent agent`.
    Bench(PathBuf),
}

impl AgentBin {
    /// `explicit` when given; else the `regent` binary built beside this one
    /// (same cargo profile) when it is not older than this binary; else this
    /// binary's agent mode.
    ///
    /// # Errors
    /// When this executable's path cannot be read, or `explicit` does not exist.
    pub fn resolve(explicit: Option<PathBuf>) -> Result<AgentBin> {
        if let Some(path) = explicit {
            if !path.exists() {
                bail!("--agent-bin {} does not exist", path.display());
            }
            return Ok(AgentBin::Regent(path));
        }
        let me = std::env::current_exe().context("cannot find this executable's path")?;
        let sibling = me.with_file_name(format!("regent{}", std::env::consts::EXE_SUFFIX));
        let modified = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
        match (modified(&sibling), modified(&me)) {
            (Some(regent), Some(bench)) if regent >= bench => Ok(AgentBin::Regent(sibling)),
            _ => Ok(AgentBin::Bench(me)),
        }
    }

    /// A command that runs the agent with `config`.
    pub fn command(&self, config: &Path) -> Command {
        let mut cmd = match self {
            AgentBin::Regent(p) | AgentBin::Bench(p) => Command::new(p),
        };
        cmd.arg("agent").arg("--config").arg(config);
        cmd
    }

    /// For the report.
    pub fn describe(&self) -> String {
        match self {
            AgentBin::Regent(p) => format!("{} agent", p.display()),
            AgentBin::Bench(p) => format!("{} agent (regent-bench's agent mode)", p.display()),
        }
    }
}

/// Run-wide settings and shared fixtures.
#[derive(Debug)]
pub struct Lab {
    /// The runtime for async clients, the emulator and in-process engines.
    pub rt: tokio::runtime::Runtime,
    /// Everything temporary lives here.
    pub dir: tempfile::TempDir,
    /// Smoke mode: tiny sizes, checks that everything runs.
    pub quick: bool,
    /// The agent under test.
    pub agent_bin: AgentBin,
    /// Where the run happens.
    pub machine: Machine,
    /// The open-file limits (soft, hard) after raising them.
    pub open_files: (u64, u64),
    /// This process was started pinned to one CPU (with its children) by a
    /// parent `regent-bench`, to measure without cross-CPU wake-ups.
    pub pinned: bool,
    enrolled: OnceLock<Enrolled>,
}

/// An emulator with long-lived tokens and an agent home enrolled with it:
/// every later start of the agent serves the stored token.
#[derive(Debug)]
pub struct Enrolled {
    /// The license server.
    pub server: Server,
    /// The enrolled home.
    pub home: Home,
}

impl Lab {
    /// Sets up the runtime, the temporary directory and the open-file limit.
    ///
    /// # Errors
    /// When the runtime or the directory cannot be created.
    pub fn new(quick: bool, agent_bin: AgentBin, pinned: bool) -> Result<Lab> {
        let rt = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
        let dir = tempfile::Builder::new()
            .prefix("regent-bench-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        // 10,000 agent connections plus their client ends, and the fleet's
        // HTTP connections, all need descriptors.
        let open_files =
            crate::machine::raise_open_files(65_536).context("cannot read the open-file limit")?;
        Ok(Lab {
            rt,
            dir,
            quick,
            agent_bin,
            machine: Machine::describe(),
            open_files,
            pinned,
            enrolled: OnceLock::new(),
        })
    }

    /// Picks the full or the quick value.
    pub fn size<T>(&self, full: T, quick: T) -> T {
        if self.quick { quick } else { full }
    }

    /// A fresh directory under the lab's.
    ///
    /// # Errors
    /// When it cannot be created.
    pub fn subdir(&self, name: &str) -> Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(path)
    }

    /// The emulator with hour-long tokens and a home enrolled with it
    /// (created on first use).
    ///
    /// # Errors
    /// When the emulator, the agent or the enrollment fails.
    pub fn enrolled(&self) -> Result<&Enrolled> {
        if let Some(e) = self.enrolled.get() {
            return Ok(e);
        }
        let server = self.rt.block_on(Server::start(EmulatorConfig {
            access_token_lifespan: Duration::from_secs(3600),
            ..EmulatorConfig::default()
        }))?;
        let home = Home::new(&self.subdir("enrolled")?, &server.url(), "")?;
        self.enroll(&server, &home)?;
        Ok(self.enrolled.get_or_init(|| Enrolled { server, home }))
    }

    /// Starts an agent on `home`, enrolls it with a fresh registration token
    /// from `server`, and stops it: the home then holds a stored credential
    /// and a cached token.
    ///
    /// # Errors
    /// When any step fails.
    pub fn enroll(&self, server: &Server, home: &Home) -> Result<()> {
        let agent = self.spawn_agent(home)?;
        let registration = self.rt.block_on(server.mint(1))?;
        self.rt
            .block_on(async {
                let client = regent_client::Client::connect(
                    regent_client::ClientOptions::new("regent-bench").socket(&home.socket),
                )
                .await?;
                client.enroll(registration, false).await?;
                Ok::<_, regent_client::Error>(())
            })
            .context("enrolling the agent")?;
        agent.terminate()
    }

    /// Starts the agent on `home` and waits until its socket answers.
    ///
    /// # Errors
    /// When it cannot start or does not listen within 20 s.
    pub fn spawn_agent(&self, home: &Home) -> Result<ChildProc> {
        // Not beside regent.toml: the agent watches that directory for config
        // changes, and every log line written there woke its watcher (issue
        // 15: 0.36 s of CPU in a 10 s latency run, on a 2-vCPU machine).
        let logs = home.dir.join("log");
        std::fs::create_dir_all(&logs)
            .with_context(|| format!("cannot create {}", logs.display()))?;
        let log = logs.join("agent.log");
        let child = ChildProc::spawn(
            self.agent_bin.command(&home.config),
            &log,
            home.socket.clone(),
            "agent",
        )?;
        child.wait_ready(Duration::from_secs(20))?;
        Ok(child)
    }

    /// Runs this binary with `args` (plus `--pinned`, `--quick` as in this
    /// run, and `--agent-bin` when a `regent` binary is under test) pinned to
    /// one CPU, it and every process
    /// it starts; returns its standard output.
    ///
    /// # Errors
    /// When the affinity cannot be set or the child fails; always on
    /// platforms other than Linux (no `sched_setaffinity`).
    #[cfg(not(target_os = "linux"))]
    pub fn run_pinned(&self, args: &[&str]) -> Result<String> {
        bail!(
            "pinning a run ({args:?}) to one CPU needs Linux's sched_setaffinity; not available on this platform"
        )
    }

    /// Runs this binary with `args` (plus `--pinned`, `--quick` as in this
    /// run, and `--agent-bin` when a `regent` binary is under test) pinned to
    /// one CPU, it and every process
    /// it starts; returns its standard output.
    ///
    /// # Errors
    /// When the affinity cannot be set or the child fails.
    #[cfg(target_os = "linux")]
    pub fn run_pinned(&self, args: &[&str]) -> Result<String> {
        use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};
        let me = std::env::current_exe().context("cannot find this executable's path")?;
        let mut cmd = Command::new(me);
        cmd.args(args).arg("--pinned");
        if self.quick {
            cmd.arg("--quick");
        }
        // The child resolves the bench's own agent mode by itself; a
        // `regent` binary is handed on.
        if let AgentBin::Regent(bin) = &self.agent_bin {
            cmd.arg("--agent-bin").arg(bin);
        }
        let all = sched_getaffinity(None).context("cannot read the CPU affinity")?;
        let cpu = (0..CpuSet::MAX_CPU)
            .rev()
            .find(|c| all.is_set(*c))
            .ok_or_else(|| anyhow!("no CPU in this thread's affinity mask"))?;
        let mut one = CpuSet::new();
        one.set(cpu);
        // The child inherits the spawning thread's mask; this thread gets
        // its own back right after.
        sched_setaffinity(None, &one).context("cannot pin to one CPU")?;
        let output = cmd.stderr(Stdio::inherit()).output();
        sched_setaffinity(None, &all).context("cannot restore the CPU affinity")?;
        let output = output.context("cannot run the pinned child")?;
        if !output.status.success() {
            bail!("the pinned run ({args:?}) failed: {}", output.status);
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Starts the echo baseline answering `reply_bytes`-byte frames.
    ///
    /// # Errors
    /// When it cannot start or does not listen within 10 s.
    pub fn spawn_echo(&self, reply_bytes: usize) -> Result<ChildProc> {
        self.spawn_baseline("echo", "", reply_bytes, "echo server")
    }

    /// Starts a floor server (blocking, single-thread) answering
    /// `reply_bytes`-byte frames; `name` tells several apart.
    ///
    /// # Errors
    /// When it cannot start or does not listen within 10 s.
    pub fn spawn_floor(&self, name: &str, reply_bytes: usize) -> Result<ChildProc> {
        self.spawn_baseline("floor", name, reply_bytes, "floor server")
    }

    fn spawn_baseline(
        &self,
        mode: &str,
        name: &str,
        reply_bytes: usize,
        what: &'static str,
    ) -> Result<ChildProc> {
        let dir = self.subdir(mode)?;
        let socket = dir.join(format!("{mode}{name}-{reply_bytes}.sock"));
        let _ = std::fs::remove_file(&socket);
        let me = std::env::current_exe().context("cannot find this executable's path")?;
        let mut cmd = Command::new(me);
        cmd.arg(mode)
            .arg("--socket")
            .arg(&socket)
            .arg("--reply-bytes")
            .arg(reply_bytes.to_string());
        let log = dir.join(format!("{mode}{name}.log"));
        let child = ChildProc::spawn(cmd, &log, socket, what)?;
        child.wait_ready(Duration::from_secs(10))?;
        Ok(child)
    }

    /// The `regent` binary when that is the agent under test (its `token`
    /// command is measured); `None` when the bench plays the agent itself.
    pub fn regent_bin(&self) -> Option<&Path> {
        match &self.agent_bin {
            AgentBin::Regent(path) => Some(path),
            AgentBin::Bench(_) => None,
        }
    }
}

/// A child process serving a socket (or a port); killed when dropped.
#[derive(Debug)]
pub struct ChildProc {
    child: Child,
    /// Its socket.
    pub socket: PathBuf,
    what: &'static str,
    log: PathBuf,
}

impl ChildProc {
    /// Spawns `cmd` with stdin closed, stdout discarded, stderr to `log`.
    ///
    /// # Errors
    /// When the program cannot be started.
    pub fn spawn(
        mut cmd: Command,
        log: &Path,
        socket: PathBuf,
        what: &'static str,
    ) -> Result<ChildProc> {
        let stderr = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start the {what}: {cmd:?}"))?;
        Ok(ChildProc {
            child,
            socket,
            what,
            log: log.to_owned(),
        })
    }

    /// Wraps a child started by the caller.
    pub fn adopt(child: Child, socket: PathBuf, what: &'static str, log: PathBuf) -> ChildProc {
        ChildProc {
            child,
            socket,
            what,
            log,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls until the socket accepts a connection; returns how long it took.
    ///
    /// # Errors
    /// When the process exits or `timeout` passes first.
    pub fn wait_ready(&self, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            if accepts(&self.socket) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!(
                    "the {} did not listen on {} within {timeout:?}; its log: {}",
                    self.what,
                    self.socket.display(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// The last lines of the child's stderr, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(5).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }

    /// SIGTERM, then waits up to 10 s (SIGKILL after that).
    ///
    /// # Errors
    /// When the process cannot be signalled or waited for.
    pub fn terminate(mut self) -> Result<()> {
        #[cfg(unix)]
        {
            let pid = rustix::process::Pid::from_raw(self.child.id() as i32)
                .ok_or_else(|| anyhow!("the {} has no valid pid", self.what))?;
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        // No SIGTERM here: the process is killed (no graceful stop measured).
        #[cfg(not(unix))]
        self.child.kill()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.child.kill()?;
                self.child.wait()?;
                bail!("the {} did not stop within 10 s of SIGTERM", self.what);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Whether something accepts connections on `socket` (a Unix socket).
#[cfg(unix)]
fn accepts(socket: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket).is_ok()
}

/// Whether a server instance of the named pipe `socket` is waiting
/// (opening the pipe connects to it).
#[cfg(not(unix))]
fn accepts(socket: &Path) -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(socket)
        .is_ok()
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Where a lab agent in `dir` listens: `agent.sock` there, or on Windows a
/// pipe name of this process's own (a path is not a pipe name there).
fn endpoint(dir: &Path) -> PathBuf {
    if cfg!(windows) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        PathBuf::from(format!(r"\\.\pipe\regent-bench-{}-{n}", std::process::id()))
    } else {
        dir.join("agent.sock")
    }
}

/// `path` as a TOML basic string: a Windows path's `\` would otherwise be
/// read as escapes (`\u…` in `C:\users`).
fn toml_path(path: &Path) -> String {
    let text = path.to_string_lossy();
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// An agent's home: config file, state directory, socket.
#[derive(Debug, Clone)]
pub struct Home {
    /// The directory.
    pub dir: PathBuf,
    /// The config file.
    pub config: PathBuf,
    /// The agent's socket.
    pub socket: PathBuf,
}

impl Home {
    /// A sentinel-profile agent with a file store in `dir`; `refresh` is the
    /// body of the `[refresh]` section.
    ///
    /// # Errors
    /// When the config file cannot be written.
    pub fn new(dir: &Path, server_url: &str, refresh: &str) -> Result<Home> {
        let socket = endpoint(dir);
        let config = dir.join("regent.toml");
        let text = format!(
            "[server]\nprofile = \"sentinel\"\nurl = \"{server_url}\"\nrequest_timeout = 5\nconnect_timeout = 2\n\n\
             [store]\nkind = \"file\"\n\n[state]\ndir = {}\n\n\
             [ipc]\nsocket = {}\nmax_connections = 30000\n\n[refresh]\n{refresh}\n\n[log]\nlevel = \"info\"\n",
            toml_path(&dir.join("state")),
            toml_path(&socket)
        );
        std::fs::write(&config, text)
            .with_context(|| format!("cannot write {}", config.display()))?;
        Ok(Home {
            dir: dir.to_owned(),
            config,
            socket,
        })
    }
}

/// Where the emulator runs.
#[derive(Debug)]
enum Running {
    /// On the bench's runtime.
    InProcess(Emulator),
    /// In a child process (`regent-bench emulator`), so that its sockets and
    /// CPU time are not the bench's.
    Child(ChildProc),
}

/// The emulator plus an admin session.
#[derive(Debug)]
pub struct Server {
    running: Running,
    url: String,
    admin_key: String,
    http: reqwest::Client,
    admin: AdminClient,
}

impl Server {
    /// Starts the emulator on loopback and logs in as its administrator.
    ///
    /// # Errors
    /// When it cannot start or the login fails.
    pub async fn start(config: EmulatorConfig) -> Result<Server> {
        let emulator = Emulator::start(config.clone())
            .await
            .context("cannot start the emulator")?;
        let url = emulator.url();
        let admin_key = emulator.admin_key().to_owned();
        Server::login(Running::InProcess(emulator), url, admin_key, &config).await
    }

    /// Starts the emulator (default settings) in a child process.
    ///
    /// # Errors
    /// When it cannot start, print its address, or log in.
    pub async fn start_child(log: &Path) -> Result<Server> {
        use std::io::BufRead as _;
        let config = EmulatorConfig::default();
        let me = std::env::current_exe().context("cannot find this executable's path")?;
        let stderr = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut child = Command::new(me)
            .arg("emulator")
            .env(EMULATOR_KEY_ENV, &config.admin_key)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("cannot start the emulator process")?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("the emulator's stdout is not captured"))?;
        let running = Running::Child(ChildProc::adopt(
            child,
            PathBuf::new(),
            "emulator",
            log.to_owned(),
        ));
        // It prints its URL once listening, then nothing more.
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufReader::new(stdout)
                .read_line(&mut line)
                .map(|_| line)
        })
        .await??;
        let url = line.trim().to_owned();
        if !url.starts_with("http://127.0.0.1:") {
            bail!("the emulator process printed {url:?} instead of its loopback URL");
        }
        let admin_key = config.admin_key.clone();
        Server::login(running, url, admin_key, &config).await
    }

    async fn login(
        running: Running,
        url: String,
        admin_key: String,
        config: &EmulatorConfig,
    ) -> Result<Server> {
        let admin = AdminClient::login_to(&url, &config.admin_username, &config.admin_password)
            .await
            .context("the emulator's admin login")?;
        let http = reqwest::Client::new();
        Ok(Server {
            running,
            url,
            admin_key,
            http,
            admin,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        match &self.running {
            Running::InProcess(emulator) => emulator.url(),
            Running::Child(_) => self.url.clone(),
        }
    }

    /// The pid of the emulator's process (the bench's own when in-process).
    pub fn pid(&self) -> u32 {
        match &self.running {
            Running::InProcess(_) => std::process::id(),
            Running::Child(child) => child.pid(),
        }
    }

    /// An admin call; returns the JSON body.
    ///
    /// # Errors
    /// Transport errors and non-2xx answers.
    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> Result<Value> {
        Ok(self.admin.call(method, path, Some(&body)).await?)
    }

    /// Mints a registration token with `count` redemptions; returns its value.
    ///
    /// # Errors
    /// When the admin call fails.
    pub async fn mint(&self, count: u32) -> Result<String> {
        let created = self
            .admin
            .create_registration_token(json!({ "count": count }))
            .await?;
        Ok(created.value.expose_secret().to_owned())
    }

    /// `GET /_emulator/counters`.
    ///
    /// # Errors
    /// Transport errors and non-2xx answers.
    pub async fn counters(&self) -> Result<Value> {
        let response = self
            .http
            .get(format!("{}/_emulator/counters", self.url()))
            .header("X-Emulator-Key", &self.admin_key)
            .send()
            .await?
            .error_for_status()?;
        Ok(response.json().await?)
    }

    /// `POST /_emulator/counters/reset`.
    ///
    /// # Errors
    /// Transport errors and non-2xx answers.
    pub async fn reset_counters(&self) -> Result<()> {
        self.http
            .post(format!("{}/_emulator/counters/reset", self.url()))
            .header("X-Emulator-Key", &self.admin_key)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }
}

/// The environment variable that hands the child emulator its control key.
pub const EMULATOR_KEY_ENV: &str = "REGENT_BENCH_EMULATOR_KEY";

/// Requests a route received with an outcome, from a counters document.
pub fn count(counters: &Value, route: &str, outcome: &str) -> u64 {
    counters["requests"][route][outcome].as_u64().unwrap_or(0)
}

/// Requests a route received, whatever the outcome.
pub fn total(counters: &Value, route: &str) -> u64 {
    counters["requests"][route]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The agent reads back the very paths written, a Windows one included
    /// (`\u` in `C:\users` is no escape).
    #[test]
    fn the_lab_config_holds_paths_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path(), "http://127.0.0.1:9", "").unwrap();
        let text = std::fs::read_to_string(&home.config).unwrap();
        let windows = Path::new(r#"C:\users\bench "lab"\state"#);
        let text = text.replace(&toml_path(&dir.path().join("state")), &toml_path(windows));
        let config = regent_agent::config::Config::parse(&text, &home.config).unwrap();
        assert_eq!(config.state.dir.as_deref(), Some(windows));
        assert_eq!(config.ipc.socket.as_deref(), Some(home.socket.as_path()));
    }
}
