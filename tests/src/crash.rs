//! Helpers for the crash matrix and the store-fault tests: a seeded random
//! generator, the emulator's control API over plain HTTP, a private Secret
//! Service, agent homes with any store, and tmpfs mounts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{AgentProc, EMULATOR_KEY, EmulatorProc, regent_bin, wait_for_socket};

// ---------------------------------------------------------------------------
// Randomness
// ---------------------------------------------------------------------------

/// A small seeded generator (SplitMix64): reproducible plans from a printed seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The seed from `var`, or a fresh one from the clock and the process id.
    pub fn seed_from_env(var: &str) -> u64 {
        match std::env::var(var) {
            Ok(v) => v
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{var}={v} is not a number")),
            Err(_) => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64;
                nanos ^ (u64::from(std::process::id()) << 32)
            }
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    /// One element of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------------------
// The emulator's control API
// ---------------------------------------------------------------------------

/// The emulator's admin bearer token, from the one admin client's login.
fn admin_bearer(url: &str) -> String {
    use regent_agent::secret::ExposeSecret;
    use regent_agent::upstream::AdminClient;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let admin = runtime
        .block_on(AdminClient::login_to(url, "admin", "admin"))
        .unwrap();
    admin.bearer().expose_secret().to_owned()
}

/// One HTTP/1.0 request to a loopback `http://` URL with a JSON body (or a
/// form, when it does not start with `{` or `[`); returns (status, body).
pub fn http(
    url: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String) {
    let host = url
        .strip_prefix("http://")
        .expect("an http:// URL")
        .trim_end_matches('/');
    let host = host.split('/').next().unwrap();
    let mut stream = TcpStream::connect(host).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {host}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        let kind = if body.starts_with('{') || body.starts_with('[') {
            "application/json"
        } else {
            "application/x-www-form-urlencoded"
        };
        request.push_str(&format!(
            "Content-Type: {kind}\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    if let Some(body) = body {
        request.push_str(body);
    }
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_owned())
}

/// The emulator-only controls of an [`EmulatorProc`] (started with [`EMULATOR_KEY`]).
pub trait EmulatorControl {
    fn control(&self, method: &str, path: &str, body: Option<&str>) -> serde_json::Value;
    /// `GET /_emulator/counters`.
    fn counters(&self) -> serde_json::Value {
        self.control("GET", "/_emulator/counters", None)
    }
    /// Turns refresh-token rotation (with reuse detection) on or off.
    fn set_rotation(&self, rotate: bool) {
        self.control(
            "PUT",
            "/_emulator/realm",
            Some(&format!("{{\"rotateRefreshTokens\":{rotate}}}")),
        );
    }
    /// Replaces the faults (`PUT /_emulator/faults`).
    fn set_faults(&self, spec: &str) {
        self.control("PUT", "/_emulator/faults", Some(spec));
    }
    /// Whether the emulator accepts `token` now (`/_emulator/introspect`).
    fn introspect(&self, token: &str) -> serde_json::Value;
    /// Creates an OAuth2 client (Reltio style) with the client-credentials and
    /// refresh-token grants, through the admin API.
    fn create_oauth2_client(&self, client_id: &str, secret: &str, validity: u64, rotate: bool);
    /// Counts consumed of every registration token, summed.
    fn used_counts(&self) -> u64 {
        self.counters()["registrationTokens"]
            .as_object()
            .map(|m| m.values().map(|t| t["usedCount"].as_u64().unwrap()).sum())
            .unwrap_or(0)
    }
}

impl EmulatorControl for EmulatorProc {
    fn control(&self, method: &str, path: &str, body: Option<&str>) -> serde_json::Value {
        let (status, text) = http(
            &self.url,
            method,
            path,
            &[("X-Emulator-Key", EMULATOR_KEY)],
            body,
        );
        assert!(
            (200..300).contains(&status),
            "{method} {path}: HTTP {status}: {text}"
        );
        if text.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        }
    }

    fn introspect(&self, token: &str) -> serde_json::Value {
        let auth = format!("Bearer {token}");
        let (status, text) = http(
            &self.url,
            "GET",
            "/_emulator/introspect",
            &[("Authorization", &auth)],
            None,
        );
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    }

    fn create_oauth2_client(&self, client_id: &str, secret: &str, validity: u64, rotate: bool) {
        let bearer = format!("Bearer {}", admin_bearer(&self.url));
        let spec = serde_json::json!({
            "clientId": client_id,
            "clientSecret": secret,
            "accessTokenValidity": validity,
            "authorizedGrantTypes": ["client_credentials", "refresh_token"],
            "rotateRefreshTokens": rotate,
        })
        .to_string();
        let (status, text) = http(
            &self.url,
            "POST",
            "/oauth/clients",
            &[("Authorization", &bearer)],
            Some(&spec),
        );
        assert!(
            (200..300).contains(&status),
            "create client: HTTP {status}: {text}"
        );
    }
}

// ---------------------------------------------------------------------------
// A private Secret Service
// ---------------------------------------------------------------------------

/// A `dbus-daemon` session bus with an unlocked `gnome-keyring-daemon`, in
/// temporary directories; both are stopped on drop.
#[derive(Debug)]
pub struct Keyring {
    runtime: tempfile::TempDir,
    home: tempfile::TempDir,
    address: String,
    children: Vec<Child>,
}

impl Keyring {
    /// Starts the daemons; `None` (after printing why) when they are missing.
    pub fn start() -> Option<Keyring> {
        if !crate::have_tool("dbus-daemon") || !crate::have_tool("gnome-keyring-daemon") {
            return None;
        }
        let runtime = tempfile::Builder::new()
            .prefix("regent-crash-ss-")
            .tempdir()
            .unwrap();
        let home = tempfile::tempdir().unwrap();
        let socket = runtime.path().join("bus");
        let daemon = |program: &str| {
            let mut c = Command::new(program);
            c.env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("HOME", home.path())
                .env("XDG_RUNTIME_DIR", runtime.path())
                .env("LANG", "C.UTF-8");
            c
        };
        let mut bus = daemon("dbus-daemon")
            .arg("--session")
            .arg(format!("--address=unix:path={}", socket.display()))
            .args(["--nofork", "--nopidfile", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dbus-daemon");
        let mut line = String::new();
        BufReader::new(bus.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line.trim().to_owned();
        assert!(address.starts_with("unix:"), "dbus-daemon printed {line:?}");
        let mut keyring = daemon("gnome-keyring-daemon")
            .args(["--foreground", "--components=secrets", "--unlock"])
            .env("DBUS_SESSION_BUS_ADDRESS", &address)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start gnome-keyring-daemon");
        keyring
            .stdin
            .take()
            .unwrap()
            .write_all(b"crash-matrix")
            .unwrap();
        let this = Keyring {
            runtime,
            home,
            address,
            children: vec![keyring, bus],
        };
        this.wait_for_service();
        Some(this)
    }

    /// Locks the default collection (what a screen lock or `Lock` from a
    /// desktop does): reads and writes of its items fail until it is unlocked.
    pub fn lock(&self) {
        let out = Command::new("dbus-send")
            .env("DBUS_SESSION_BUS_ADDRESS", &self.address)
            .args([
                "--session",
                "--print-reply",
                "--dest=org.freedesktop.secrets",
                "/org/freedesktop/secrets",
                "org.freedesktop.Secret.Service.Lock",
                "array:objpath:/org/freedesktop/secrets/aliases/default",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "locking the keyring failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Restarts `gnome-keyring-daemon` on the same home with its password, so
    /// the keyring is unlocked again and holds what was stored before (a
    /// headless keyring cannot be unlocked without a prompt otherwise).
    pub fn restart_unlocked(&mut self) {
        let mut old = self.children.remove(0);
        let _ = old.kill();
        let _ = old.wait();
        let mut keyring = Command::new("gnome-keyring-daemon")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("XDG_RUNTIME_DIR", self.runtime.path())
            .env("LANG", "C.UTF-8")
            .env("DBUS_SESSION_BUS_ADDRESS", &self.address)
            .args(["--foreground", "--components=secrets", "--unlock"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start gnome-keyring-daemon");
        keyring
            .stdin
            .take()
            .unwrap()
            .write_all(b"crash-matrix")
            .unwrap();
        self.children.insert(0, keyring);
        self.wait_for_service();
    }

    fn wait_for_service(&self) {
        crate::wait_until(
            Duration::from_secs(20),
            "the Secret Service on the bus",
            || {
                let out = Command::new("dbus-send")
                    .env("DBUS_SESSION_BUS_ADDRESS", &self.address)
                    .args([
                        "--session",
                        "--print-reply",
                        "--dest=org.freedesktop.DBus",
                        "/org/freedesktop/DBus",
                        "org.freedesktop.DBus.NameHasOwner",
                        "string:org.freedesktop.secrets",
                    ])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).contains("boolean true")
            },
        );
    }

    /// What an agent using this Secret Service needs in its environment.
    pub fn env(&self) -> Vec<(&'static str, OsString)> {
        vec![
            ("DBUS_SESSION_BUS_ADDRESS", OsString::from(&self.address)),
            (
                "XDG_RUNTIME_DIR",
                self.runtime.path().as_os_str().to_owned(),
            ),
            ("HOME", self.home.path().as_os_str().to_owned()),
        ]
    }
}

impl Drop for Keyring {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// Agents
// ---------------------------------------------------------------------------

/// Where an agent keeps its secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    File,
    /// The OS keychain under this service name.
    Keychain(String),
}

/// Which upstream profile the agent speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Profile {
    Sentinel,
    /// Client credentials of this client at the emulator's `/oauth/token`.
    OAuth2 {
        client_id: String,
    },
}

/// An agent home whose config this module writes (any store, fast renewals).
#[derive(Debug)]
pub struct Home {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub env: Vec<(&'static str, OsString)>,
    /// Shell commands run before `exec regent agent` (e.g. `trap '' XFSZ`).
    pub wrapper: Option<String>,
}

impl Home {
    /// An agent of `url`; `state` is the state directory (made under the home
    /// when `None`); `extra` is appended to the config.
    pub fn new(
        url: &str,
        profile: &Profile,
        store: &StoreChoice,
        state: Option<&Path>,
        extra: &str,
    ) -> Home {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run/agent.sock");
        let state = state.map_or_else(|| dir.path().join("state"), Path::to_path_buf);
        let config = dir.path().join("regent.toml");
        let store_toml = match store {
            StoreChoice::File => "kind = \"file\"".to_owned(),
            StoreChoice::Keychain(service) => {
                format!("kind = \"keychain\"\nservice = \"{service}\"\ntimeout = 10")
            }
        };
        let server = match profile {
            Profile::Sentinel => format!("profile = \"sentinel\"\nurl = \"{url}\""),
            Profile::OAuth2 { client_id } => format!(
                "profile = \"oauth2\"\ntoken_url = \"{url}/oauth/token\"\nclient_id = \"{client_id}\""
            ),
        };
        let text = format!(
            "[server]\n{server}\nrequest_timeout = 5\n\n\
             [store]\n{store_toml}\n\n[state]\ndir = \"{}\"\n\n\
             [refresh]\nahead = 0.1\nbackoff_min = 1\nbackoff_max = 2\n\n\
             [ipc]\nsocket = \"{}\"\n\n{extra}\n",
            state.display(),
            socket.display()
        );
        std::fs::write(&config, text).unwrap();
        Home {
            dir,
            config,
            socket,
            state,
            env: Vec::new(),
            wrapper: None,
        }
    }

    /// Starts `regent agent`, with `REGENT_CRASH_POINT` armed when `point` is
    /// given. Does not wait for anything.
    pub fn spawn(&self, point: Option<&str>) -> AgentProc {
        let log = self.next_log();
        let mut cmd = match &self.wrapper {
            None => Command::new(regent_bin()),
            Some(shell) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("{shell}; exec \"$0\" \"$@\""))
                    .arg(regent_bin());
                c
            }
        };
        cmd.args(["agent", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "regent_agent=info,warn")
            .env_remove("REGENT_CRASH_POINT")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(point) = point {
            cmd.env("REGENT_CRASH_POINT", point);
        }
        AgentProc {
            child: cmd.spawn().expect("spawn regent agent"),
            log,
        }
    }

    /// Starts the agent and waits until it answers (the socket is bound before
    /// the state is loaded, so a connection alone is not enough).
    pub fn start(&self, point: Option<&str>) -> AgentProc {
        let agent = self.spawn(point);
        wait_for_socket(&self.socket, Duration::from_secs(20));
        self.client().status().unwrap();
        agent
    }

    fn next_log(&self) -> PathBuf {
        let mut n = 0;
        loop {
            let p = self.dir.path().join(format!("agent.{n}.log"));
            if !p.exists() {
                return p;
            }
            n += 1;
        }
    }

    /// Every agent log of this home, oldest first.
    pub fn logs(&self) -> Vec<String> {
        (0..)
            .map(|n| self.dir.path().join(format!("agent.{n}.log")))
            .take_while(|p| p.exists())
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    }

    /// A blocking client of this agent.
    pub fn client(&self) -> regent_client::blocking::Client {
        regent_client::blocking::Client::connect(
            regent_client::ClientOptions::new("crash-matrix")
                .socket(&self.socket)
                .connect_timeout(Duration::from_secs(10))
                .request_timeout(Duration::from_secs(30)),
        )
        .unwrap()
    }

    /// Slot 0 of the agent's status, as the JSON document shows it.
    pub fn slot0(&self) -> serde_json::Value {
        let status = self.client().status().unwrap();
        serde_json::to_value(status.slots.first()).unwrap()
    }
}

/// Waits until the agent's log announces `regent: crash point NAME reached`;
/// returns the line, or `None` when the agent exited first or `timeout` passed.
pub fn wait_for_crash_point(
    agent: &mut AgentProc,
    name: &str,
    timeout: Duration,
) -> Option<String> {
    let needle = format!("regent: crash point {name} reached");
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(line) = agent.log_text().lines().find(|l| l.contains(&needle)) {
            return Some(line.to_owned());
        }
        if agent.log_text().contains("this build has no crash points") {
            eprintln!(
                "the regent binary has no crash points: build it with \
                 `cargo build -p regent-cli --features crash-points` (cargo test --workspace does)"
            );
            return None;
        }
        if Instant::now() > deadline || matches!(agent.child.try_wait(), Ok(Some(_))) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Files a killed atomic writer may leave in `dir` (`.NAME.tmp.PID.N`).
pub fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.') && n.contains(".tmp."))
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// tmpfs mounts
// ---------------------------------------------------------------------------

/// A small tmpfs mounted at a directory; unmounted on drop.
#[derive(Debug)]
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_kib` at `path` (created); `Err` with the reason
    /// when mounting is not allowed here.
    pub fn mount(path: &Path, size_kib: u64) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size_kib}k,mode=0700"))
            .arg("tmpfs")
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }

    /// Remounts read-only (`true`) or read-write; retries while busy.
    pub fn set_read_only(&self, read_only: bool) {
        let opt = if read_only {
            "remount,ro"
        } else {
            "remount,rw"
        };
        let mut last = String::new();
        for _ in 0..200 {
            let out = Command::new("mount")
                .args(["-o", opt])
                .arg(&self.path)
                .output()
                .unwrap();
            if out.status.success() {
                return;
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("mount -o {opt} {} failed: {last}", self.path.display());
    }

    /// Fills the file system with `name` until a write fails with ENOSPC.
    pub fn fill(&self, name: &str) -> u64 {
        let mut file = std::fs::File::create(self.path.join(name)).unwrap();
        let block = vec![0u8; 4096];
        let mut written = 0u64;
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling {}: {e}", self.path.display()),
            }
        }
        // Flushed, so the space is really taken.
        let _ = file.sync_all();
        written
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}
