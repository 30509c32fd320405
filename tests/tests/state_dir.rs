//! End to end: the state directory. It is created owner-only whatever the
//! umask, and one agent holds it: a second agent on the same state directory
//! (with its own socket) stops with an error naming the directory and the
//! first agent's pid, instead of renewing the same refresh token.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use regent_proto::ErrorCode;
use regent_tests::{AgentHome, AgentProc, EmulatorProc, exit, regent_bin, text, wait_for_socket};

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn a_second_agent_on_the_same_state_directory_stops_and_names_the_first() {
    let emulator = EmulatorProc::start(300);
    let first_home = AgentHome::new(&emulator.url, "");
    let state = first_home.dir.path().join("state");
    // Its own config and socket, the first agent's state directory.
    let second_home = AgentHome::new(&emulator.url, "");
    let text_b = std::fs::read_to_string(&second_home.config)
        .unwrap()
        .replace(
            &second_home.dir.path().join("state").display().to_string(),
            &state.display().to_string(),
        );
    std::fs::write(&second_home.config, text_b).unwrap();

    let first = AgentProc::start(&first_home);
    let out = first_home.regent(&["enroll"], Some(&format!("{}\n", emulator.mint(1))));
    assert!(out.status.success(), "{}", text(&out));

    let mut second = AgentProc::spawn(&second_home);
    let status = regent_tests::wait_timeout(&mut second.child, WAIT);
    assert_eq!(status.code(), Some(exit(ErrorCode::Config)));
    let log = std::fs::read_to_string(&second.log).unwrap();
    assert!(log.contains(&state.display().to_string()), "{log}");
    assert!(
        log.contains(&format!("(pid {})", first.child.id())),
        "{log}"
    );
    assert!(log.contains("own [state] dir"), "{log}");
    let token = first_home.regent(&["token"], None);
    assert!(
        token.status.success(),
        "the first agent still serves: {}",
        text(&token)
    );

    // A crash leaves no stale lock: the kernel drops it with the process.
    first.kill();
    let second = AgentProc::start(&second_home);
    let token = second_home.regent(&["token"], None);
    assert!(token.status.success(), "{}", text(&token));
    assert!(second.terminate().success());
}

#[test]
fn the_state_directory_is_created_owner_only_under_umask_000() {
    let emulator = EmulatorProc::start(300);
    let home = AgentHome::new(&emulator.url, "");
    let state = home.dir.path().join("state");
    assert!(!state.exists());
    let log = home.dir.path().join("agent.log");
    let child = Command::new("sh")
        .args(["-c", "umask 000 && exec \"$0\" agent --config \"$1\""])
        .arg(regent_bin())
        .arg(&home.config)
        .env("RUST_LOG", "regent_agent=debug,info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let agent = AgentProc { child, log };
    wait_for_socket(&home.socket, WAIT);
    // The socket is bound before the state directory is made; the agent
    // answers only once it is open (its status: not enrolled yet).
    let status = home.regent(&["status"], None);
    assert_eq!(status.status.code(), Some(1), "{}", text(&status));
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700, "state directory mode {mode:04o}");
    let out = home.regent(&["enroll"], Some(&format!("{}\n", emulator.mint(1))));
    assert!(out.status.success(), "{}", text(&out));
    for entry in std::fs::read_dir(&state).unwrap() {
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode() & 0o077;
        assert_eq!(mode, 0, "{} is open to others", entry.path().display());
    }
    assert!(agent.terminate().success());
}
