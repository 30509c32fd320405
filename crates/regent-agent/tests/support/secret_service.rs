//! A real, private Secret Service for tests (DESIGN §14): a `dbus-daemon` session
//! bus and a `gnome-keyring-daemon` with a temporary `HOME`, killed on drop.
//!
//! On Windows the keychain is the Credential Manager, which every process of
//! the user (under Wine: of the prefix) shares: there [`TestKeyring`] starts
//! nothing and gives each test a service name of its own ([`service`]), so
//! tests running at once never touch each other's entries.
//!
//! `keyring` reads `DBUS_SESSION_BUS_ADDRESS` and connects once per process, and
//! changing the environment of a running multi-threaded test process is unsound,
//! so the code that talks to the keychain runs in a child process: the test
//! binary re-runs one of its own tests ([`run_child`]) with the bus address in
//! the child's environment, and that test, seeing [`child_phase`], does the work.
//!
//! ```ignore
//! #[path = "support/secret_service.rs"]
//! mod secret_service;
//!
//! #[test]
//! fn my_keychain_test() {
//!     if let Some(phase) = secret_service::child_phase() {
//!         return my_scenario(&phase); // runs in the child, talks to the keyring
//!     }
//!     let home = tempfile::tempdir().unwrap();
//!     let keyring = TestKeyring::start(home.path(), Some("password"));
//!     secret_service::run_child("my_keychain_test", "main", &keyring.env());
//! }
//! ```
#![allow(clippy::expect_used)] // Test support: a failed expectation fails the test.
#![allow(dead_code)] // Each test file uses its own part of these helpers.

use std::ffi::OsString;
use std::fs::File;
#[cfg(unix)]
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
#[cfg(unix)]
use std::path::PathBuf;
#[cfg(unix)]
use std::process::Child;
use std::process::{Command, Stdio};
#[cfg(unix)]
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[cfg(unix)]
/// How to get the daemons on a fresh Debian machine.
pub const INSTALL_HINT: &str =
    "run `apt-get install -y --no-install-recommends dbus gnome-keyring` (scripts/test.sh does)";

/// Set in a child process started by [`run_child`]: which phase to run.
const PHASE_VAR: &str = "REGENT_TEST_KEYCHAIN_PHASE";

#[cfg(unix)]
/// A session bus that allows everything and activates nothing.
const BUS_CONFIG_WITHOUT_ACTIVATION: &str = r#"<!DOCTYPE busconfig PUBLIC
 "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=SOCKET</listen>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#;

#[cfg(unix)]
/// How long the daemons get to become ready.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a child process gets to run its phase.
const CHILD_TIMEOUT: Duration = Duration::from_secs(120);

#[cfg(unix)]
/// A running session bus with a gnome-keyring Secret Service on it.
pub struct TestKeyring {
    /// `XDG_RUNTIME_DIR` of the daemons (0700); holds the bus socket and logs.
    runtime: tempfile::TempDir,
    home: PathBuf,
    address: String,
    keyring: Option<Child>,
    bus: Option<Child>,
}

#[cfg(unix)]
impl TestKeyring {
    /// Starts a bus and a keyring daemon whose keyrings live under `home`.
    ///
    /// With `Some(password)` the login keyring is unlocked with it (and created
    /// with it if `home` has none). With `None` the daemon starts without
    /// `--unlock`: no default collection in a fresh `home`, or a locked login
    /// keyring in a `home` that already has one.
    ///
    /// Panics, saying what to install, when the daemons are missing.
    pub fn start(home: &Path, unlock_password: Option<&str>) -> TestKeyring {
        let mut this = TestKeyring::start_bus(home, false);
        this.start_keyring(unlock_password);
        this
    }

    /// Starts only a session bus, on which no Secret Service runs or can be
    /// activated: what a headless server with a user bus but no keyring has.
    pub fn bus_without_secret_service(home: &Path) -> TestKeyring {
        TestKeyring::start_bus(home, true)
    }

    fn start_bus(home: &Path, without_activation: bool) -> TestKeyring {
        let runtime = tempfile::Builder::new()
            .prefix("regent-ss-")
            .tempdir()
            .expect("create a runtime directory");
        set_mode(runtime.path(), 0o700);
        let socket = runtime.path().join("bus");
        let mut this = TestKeyring {
            home: home.to_path_buf(),
            address: String::new(),
            keyring: None,
            bus: None,
            runtime,
        };

        let mut command = this.daemon_command("dbus-daemon");
        if without_activation {
            // The standard session config would start gnome-keyring on demand.
            let config = this.runtime.path().join("session.conf");
            let text = BUS_CONFIG_WITHOUT_ACTIVATION.replace("SOCKET", &socket.to_string_lossy());
            std::fs::write(&config, text).expect("write bus config");
            command.arg(format!("--config-file={}", config.display()));
        } else {
            command
                .arg("--session")
                .arg(format!("--address=unix:path={}", socket.display()));
        }
        let mut bus = spawn(
            command
                .arg("--nofork")
                .arg("--nopidfile")
                .arg("--print-address=1")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(this.log_file("dbus-daemon.log")),
            "dbus-daemon",
        );
        let stdout = bus.stdout.take().expect("dbus-daemon stdout is piped");
        this.bus = Some(bus);
        // The daemon prints its address once it listens.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        match rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(line) if line.starts_with("unix:") => this.address = line.trim().to_owned(),
            other => panic!(
                "dbus-daemon did not print its address ({other:?}); its log:\n{}",
                this.log("dbus-daemon.log")
            ),
        }
        this
    }

    /// Starts gnome-keyring-daemon on the bus and waits until it serves
    /// `org.freedesktop.secrets`.
    fn start_keyring(&mut self, unlock_password: Option<&str>) {
        let mut keyring_command = self.daemon_command("gnome-keyring-daemon");
        keyring_command
            .arg("--foreground")
            .arg("--components=secrets")
            .env("DBUS_SESSION_BUS_ADDRESS", &self.address)
            .stdout(self.log_file("gnome-keyring.log"))
            .stderr(self.log_file("gnome-keyring.err"));
        if unlock_password.is_some() {
            keyring_command.arg("--unlock").stdin(Stdio::piped());
        } else {
            keyring_command.stdin(Stdio::null());
        }
        let mut keyring = spawn(&mut keyring_command, "gnome-keyring-daemon");
        if let Some(password) = unlock_password {
            // The daemon reads the password up to end of input.
            let mut stdin = keyring.stdin.take().expect("stdin is piped");
            stdin
                .write_all(password.as_bytes())
                .expect("write the keyring password");
        }
        self.keyring = Some(keyring);
        self.wait_for_secret_service();
    }

    /// The session bus address, for `DBUS_SESSION_BUS_ADDRESS`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The `HOME` whose `.local/share/keyrings` holds the keyrings.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The environment a client of this Secret Service needs.
    pub fn env(&self) -> Vec<(&'static str, OsString)> {
        vec![
            ("DBUS_SESSION_BUS_ADDRESS", OsString::from(&self.address)),
            (
                "XDG_RUNTIME_DIR",
                self.runtime.path().as_os_str().to_owned(),
            ),
            ("HOME", self.home.as_os_str().to_owned()),
        ]
    }

    /// Freezes the keyring daemon (SIGSTOP): the bus stays up, but calls to the
    /// Secret Service never get an answer, like a keyring waiting on a prompt.
    pub fn freeze(&self) {
        if let Some(keyring) = &self.keyring {
            rustix::process::kill_process(
                rustix::process::Pid::from_child(keyring),
                rustix::process::Signal::STOP,
            )
            .expect("freeze gnome-keyring-daemon");
        }
    }

    /// Stops both daemons (the keyring first, so it can finish writing) and
    /// waits for them to exit.
    pub fn stop(mut self) {
        self.stop_daemons();
    }

    fn stop_daemons(&mut self) {
        for child in [self.keyring.take(), self.bus.take()].into_iter().flatten() {
            terminate(child);
        }
    }

    /// A command for a daemon with a clean, private environment.
    fn daemon_command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("XDG_RUNTIME_DIR", self.runtime.path())
            .env("LANG", "C.UTF-8");
        command
    }

    fn log_file(&self, name: &str) -> File {
        File::create(self.runtime.path().join(name)).expect("create a daemon log file")
    }

    /// A daemon's log, for failure messages.
    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.runtime.path().join(name)).unwrap_or_default()
    }

    /// Polls the bus until the keyring daemon owns `org.freedesktop.secrets`.
    fn wait_for_secret_service(&mut self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let output = Command::new("dbus-send")
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
                .unwrap_or_else(|e| panic!("cannot run dbus-send ({e}): {INSTALL_HINT}"));
            if String::from_utf8_lossy(&output.stdout).contains("boolean true") {
                return;
            }
            if let Some(keyring) = self.keyring.as_mut()
                && let Ok(Some(status)) = keyring.try_wait()
            {
                panic!(
                    "gnome-keyring-daemon exited at start ({status}); its log:\n{}{}",
                    self.log("gnome-keyring.log"),
                    self.log("gnome-keyring.err")
                );
            }
            assert!(
                Instant::now() < deadline,
                "gnome-keyring-daemon did not take org.freedesktop.secrets on the bus within \
                 {STARTUP_TIMEOUT:?}; its log:\n{}{}",
                self.log("gnome-keyring.log"),
                self.log("gnome-keyring.err")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(unix)]
impl Drop for TestKeyring {
    fn drop(&mut self) {
        self.stop_daemons();
    }
}

#[cfg(unix)]
fn spawn(command: &mut Command, program: &str) -> Child {
    match command.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("`{program}` is not installed: {INSTALL_HINT}")
        }
        Err(e) => panic!("cannot start {program}: {e}"),
    }
}

#[cfg(unix)]
/// SIGTERM (and SIGCONT, in case it is frozen), then SIGKILL if the process has
/// not exited within 5 s.
fn terminate(mut child: Child) {
    let pid = rustix::process::Pid::from_child(&child);
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::CONT);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .expect("set directory mode");
}

/// Set by [`TestKeyring::env`] on Windows: the test's own service name.
const SERVICE_VAR: &str = "REGENT_TEST_KEYCHAIN_SERVICE";

/// The keychain service a test (or its child) uses: `base`, or on Windows
/// the name its [`TestKeyring`] chose.
pub fn service(base: &str) -> String {
    std::env::var(SERVICE_VAR).unwrap_or_else(|_| base.to_owned())
}

/// The Credential Manager, shared by every process of the user (the Wine
/// prefix): nothing to start; each test gets a service name of its own.
#[cfg(windows)]
pub struct TestKeyring {
    service: String,
}

#[cfg(windows)]
impl TestKeyring {
    /// A service name of `home`'s own (temporary directories have unique
    /// names), so a test's "same HOME" is the same store, as on Unix, and no
    /// other test uses it. The password has no Windows meaning (the logon
    /// unlocks the Credential Manager).
    pub fn start(home: &Path, _unlock_password: Option<&str>) -> TestKeyring {
        let name = home.file_name().unwrap_or_default().to_string_lossy();
        TestKeyring {
            service: format!("regent-test-{}", name.trim_start_matches('.')),
        }
    }

    /// The environment a child needs: the service name.
    pub fn env(&self) -> Vec<(&'static str, OsString)> {
        vec![(SERVICE_VAR, OsString::from(&self.service))]
    }

    /// A new session of the same store: on Windows the next process simply
    /// reads the Credential Manager again.
    pub fn stop(self) {}
}

/// In a child started by [`run_child`]: the phase it was asked to run.
pub fn child_phase() -> Option<String> {
    std::env::var(PHASE_VAR).ok()
}

/// Re-runs test `test_name` of the current test binary in a child process with
/// `env` added and [`child_phase`] returning `phase`; panics, showing the child's
/// output, unless the child's test passes within two minutes.
pub fn run_child(test_name: &str, phase: &str, env: &[(&'static str, OsString)]) {
    let logs = tempfile::tempdir().expect("create a directory for child logs");
    let out_path = logs.path().join("stdout");
    let err_path = logs.path().join("stderr");
    let exe = std::env::current_exe().expect("find the test binary");
    let mut command = Command::new(exe);
    command
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(PHASE_VAR, phase)
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("create child stdout"))
        .stderr(File::create(&err_path).expect("create child stderr"));
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("start the test binary again");
    let deadline = Instant::now() + CHILD_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    // The child's own test must have run: a wrong name would run zero tests.
    let ran = stdout.contains("test result: ok. 1 passed");
    match status {
        // Shown by `cargo test -- --nocapture`: what the child printed.
        Some(status) if status.success() && ran => println!("--- {phase} phase stderr\n{stderr}"),
        Some(status) => panic!(
            "phase {phase:?} of {test_name} failed ({status}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        ),
        None => panic!(
            "phase {phase:?} of {test_name} did not finish within {CHILD_TIMEOUT:?}:\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        ),
    }
}
