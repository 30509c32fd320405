//! End to end, with real processes of real uids: who gets a token over the
//! local socket (issue 18, items 4, 7, 8, 10, 12, 13).
//!
//! - A supplementary group listed in `allow_groups` lets a peer in; a user
//!   named in `allow_users` too.
//! - A live reload that removes a uid closes its open connections with
//!   `PERMISSION_DENIED`, at its next request or pushed event.
//! - `allow_executables`: `regent token` is not a way around the list, and a
//!   bind mount in a private mount namespace cannot pass as a listed program.
//! - Slot identifiers and the device id: admin-only in status, hashed in logs.
//! - Refused peers hold no connection slot and only a bounded number of
//!   descriptors; a socket mode open to every user is refused.
//! - `hello` names must be printable; program paths are escaped in logs and
//!   messages.
//!
//! Most need root (to run processes as other uids); CI runs as root.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use regent_proto::ErrorCode;
use regent_tests::other_user::{RawClient, Received, as_user, socket_group, start_agent_as};
use regent_tests::{
    AgentHome, AgentProc, EmulatorProc, assert_denied, exit, is_root, regent_bin_for_any_user,
    save_by_rename, stderr, text, wait_timeout,
};
use serde_json::{Value, json};

/// The uid the agent runs as when the test needs a non-root agent (`nobody`).
const AGENT_UID: u32 = 65534;
/// A client uid.
const OTHER_UID: u32 = 65533;
/// The group that owns the socket of a root agent (its clients' way in).
const SOCKET_GID: u32 = 65530;
/// A group listed in `allow_groups`.
const ALLOWED_GID: u32 = 65531;
const WAIT: Duration = Duration::from_secs(20);

/// A root agent whose socket (mode 0660) belongs to [`SOCKET_GID`].
fn root_agent_home(url: &str, ipc: &str) -> AgentHome {
    let home = AgentHome::new(url, &format!("[ipc]\nmode = \"0660\"\n{ipc}"));
    socket_group(&home, SOCKET_GID);
    home
}

/// Runs `bin args…` as `uid` (primary group the same number) with the
/// supplementary `groups`, against `home`'s agent.
fn run_as(bin: &Path, uid: u32, groups: &[u32], home: &AgentHome, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env("REGENT_SOCKET", &home.socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if uid != 0 {
        as_user(&mut cmd, uid, uid, groups);
    }
    cmd.output().unwrap()
}

fn enroll(home: &AgentHome, emulator: &EmulatorProc) {
    let out = home.regent(&["enroll"], Some(&emulator.mint(1)));
    assert!(out.status.success(), "{}", text(&out));
}

/// Another name for `bin` (a hard link) in a fresh world-readable directory.
fn another_name(bin: &Path, name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("regent-link-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join(name);
    std::fs::hard_link(bin, &path).unwrap();
    (dir, path)
}

#[test]
fn a_supplementary_group_in_allow_groups_is_served() {
    if !is_root() {
        return;
    }
    let emulator = EmulatorProc::start(300);
    let home = root_agent_home(
        &emulator.url,
        &format!("allow_groups = [\"{ALLOWED_GID}\"]"),
    );
    let _agent = AgentProc::start(&home);
    enroll(&home, &emulator);
    let (_bin_dir, bin) = regent_bin_for_any_user();

    // Primary group OTHER_UID; the allowed group only as a supplementary one,
    // as `usermod -aG` makes it.
    let out = run_as(
        &bin,
        OTHER_UID,
        &[SOCKET_GID, ALLOWED_GID],
        &home,
        &["token", "--min-valid", "1"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(!out.stdout.is_empty(), "{}", text(&out));

    // The same program and uid without that group: refused by the agent.
    let out = run_as(
        &bin,
        OTHER_UID,
        &[SOCKET_GID],
        &home,
        &["token", "--min-valid", "1"],
    );
    assert_denied(&out);
    assert!(stderr(&out).contains("allow_groups"), "{}", text(&out));
}

#[test]
fn allow_users_admits_a_user_by_name() {
    if !is_root() {
        return;
    }
    // `nobody` is uid 65534 (AGENT_UID) on Debian: the name resolves at load.
    let emulator = EmulatorProc::start(300);
    let home = root_agent_home(&emulator.url, "allow_users = [\"nobody\"]");
    let _agent = AgentProc::start(&home);
    enroll(&home, &emulator);
    let (_bin_dir, bin) = regent_bin_for_any_user();
    let out = run_as(
        &bin,
        AGENT_UID,
        &[SOCKET_GID],
        &home,
        &["token", "--min-valid", "1"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(!out.stdout.is_empty(), "{}", text(&out));
    // Another uid, not named: refused, told which keys admit it.
    let out = run_as(
        &bin,
        OTHER_UID,
        &[SOCKET_GID],
        &home,
        &["token", "--min-valid", "1"],
    );
    assert_denied(&out);
    assert!(stderr(&out).contains("allow_users"), "{}", text(&out));
    // A user that does not exist stops the agent with CONFIG naming it.
    let broken = AgentHome::new(
        &emulator.url,
        "[ipc]\nallow_users = [\"no-such-user-xyz\"]\n",
    );
    let config = broken.config.to_str().unwrap();
    let out = broken.regent(&["agent", "--no-watch", "--config", config], None);
    assert_eq!(
        out.status.code(),
        Some(i32::from(ErrorCode::Config.number())),
        "{}",
        text(&out)
    );
    assert!(stderr(&out).contains("no-such-user-xyz"), "{}", text(&out));
}

fn config_with_allow_uids(home: &AgentHome, uids: &str) -> String {
    let config = std::fs::read_to_string(&home.config).unwrap();
    let kept: String = config
        .lines()
        .filter(|l| !l.starts_with("allow_uids"))
        .map(|l| format!("{l}\n"))
        .collect();
    kept.replace("[ipc]\n", &format!("[ipc]\nallow_uids = {uids}\n"))
}

fn is_error(frame: &Value, id: u64, code: &str) -> bool {
    frame["id"] == id && frame["error"]["code"] == code
}

fn is_pushed_token(frame: &Value) -> bool {
    frame["event"]["kind"] == "token"
}

#[test]
fn a_reload_that_removes_a_uid_closes_its_open_connections() {
    if !is_root() {
        return;
    }
    // Short-lived tokens, so that renewals push new ones every few seconds.
    let emulator = EmulatorProc::start(6);
    let home = root_agent_home(&emulator.url, &format!("allow_uids = [{OTHER_UID}]"));
    let agent = AgentProc::start(&home);
    enroll(&home, &emulator);

    // Two connections of the other uid, both subscribed; one also polls.
    let connect = || {
        let mut client = RawClient::connect_as(&home.socket, OTHER_UID, OTHER_UID, &[SOCKET_GID]);
        client.send(&json!({"id": 1, "op": "hello", "versions": [1], "app": "watcher"}));
        let hello = client.frame(WAIT);
        assert_eq!(hello["ok"]["kind"], "hello", "{hello}");
        client.send(&json!({"id": 2, "op": "subscribe", "min_valid": 1}));
        client.frame_where(WAIT, is_pushed_token);
        client
    };
    let mut polling = connect();
    let pushed_only = connect();
    polling.send(&json!({"id": 3, "op": "token", "min_valid": 1}));
    let reply = polling.frame_where(WAIT, |f| f["id"] == 3 && !is_pushed_token(f));
    assert_eq!(reply["ok"]["kind"], "token", "{reply}");
    // Renewals reach both subscriptions while the uid is allowed.
    pushed_only.frame_where(WAIT, is_pushed_token);

    // The uid is removed by a live edit.
    let skip = agent.log_lines();
    save_by_rename(&home.config, &config_with_allow_uids(&home, "[]"));
    agent.wait_for_log_line(skip, &["configuration reloaded", "allow_uids = []"], WAIT);

    // The next request is refused and the connection closes; tokens pushed
    // before the reload may still be in flight, none after the refusal.
    polling.send(&json!({"id": 4, "op": "token", "min_valid": 1}));
    let refusal = polling.frame_where(WAIT, |f| !is_pushed_token(f));
    // (A renewal landing first is refused the same way, with id 0.)
    assert!(
        is_error(&refusal, 4, "PERMISSION_DENIED") || is_error(&refusal, 0, "PERMISSION_DENIED"),
        "{refusal}"
    );
    let message = refusal["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("uid {OTHER_UID} may not use this agent")),
        "{message}"
    );
    assert!(
        matches!(polling.next(WAIT), Received::Closed),
        "the connection stays open"
    );

    // The connection that only listens hears PERMISSION_DENIED at the next
    // renewal instead of a token, then the close.
    let refusal = pushed_only.frame_where(WAIT, |f| !is_pushed_token(f));
    assert!(is_error(&refusal, 0, "PERMISSION_DENIED"), "{refusal}");
    assert!(
        matches!(pushed_only.next(WAIT), Received::Closed),
        "the connection stays open"
    );
    agent.wait_for_log_line(
        skip,
        &["connection closed after a policy reload", "uid not allowed"],
        WAIT,
    );

    // A new connection is refused at once, too.
    let (_bin_dir, bin) = regent_bin_for_any_user();
    let out = run_as(
        &bin,
        OTHER_UID,
        &[SOCKET_GID],
        &home,
        &["token", "--min-valid", "1"],
    );
    assert_denied(&out);
}

/// `unshare -Urm` works here (unprivileged user and mount namespaces).
fn private_mount_namespaces_work() -> bool {
    if !regent_tests::have_tool("unshare") {
        return false;
    }
    let mut cmd = Command::new("unshare");
    cmd.args(["-Urm", "true"]);
    as_user(&mut cmd, AGENT_UID, AGENT_UID, &[]);
    let ok = cmd.status().is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: unprivileged user namespaces are disabled here");
    }
    ok
}

#[test]
fn allow_executables_is_not_bypassed_by_the_cli_or_a_bind_mount() {
    if !is_root() {
        return;
    }
    let emulator = EmulatorProc::start(300);
    let (_bin_dir, agent_bin) = regent_bin_for_any_user();
    // The listed program: a small file of its own (not the regent binary).
    let listed_dir = tempfile::Builder::new()
        .prefix("regent-listed-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(listed_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let listed = listed_dir.path().join("licensed-app");
    std::fs::copy("/bin/true", &listed).unwrap();
    std::fs::set_permissions(&listed, std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = AgentHome::new(
        &emulator.url,
        &format!(
            "[ipc]\nallow_executables = [{:?}]",
            listed.display().to_string()
        ),
    );
    let agent = start_agent_as(&agent_bin, AGENT_UID, &home);

    // The agent's own CLI, run by the agent's uid: administration works…
    let token = emulator.mint(1);
    let mut cmd = Command::new(&agent_bin);
    cmd.arg("enroll")
        .env("REGENT_SOCKET", &home.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    as_user(&mut cmd, AGENT_UID, AGENT_UID, &[]);
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(token.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = run_as(&agent_bin, AGENT_UID, &[], &home, &["status"]);
    assert!(out.status.success(), "{}", text(&out));

    // …but it is no way around the list for tokens: `regent token` is the
    // small `regent` binary, not the agent's program, so it is refused at
    // connect like any unlisted program; and the agent's own program
    // (`regentd`, which administration runs) is served for administration
    // only.
    for (program, says) in [
        (agent_bin.clone(), agent_bin.display().to_string()),
        (
            agent_bin.with_file_name("regentd"),
            "administration only".to_owned(),
        ),
    ] {
        let out = run_as(
            &program,
            AGENT_UID,
            &[],
            &home,
            &["token", "--min-valid", "1"],
        );
        assert_denied(&out);
        let err = stderr(&out);
        assert!(
            err.contains("allow_executables") && err.contains(&says),
            "{err}"
        );
    }
    agent.wait_for_log_line(0, &["token request refused", "allow_executables"], WAIT);

    // A bind mount in a private mount namespace shows the listed path in
    // /proc/PID/exe while another program runs: refused.
    if !private_mount_namespaces_work() {
        return;
    }
    let script = format!(
        "mount --bind {agent} {listed} && exec {listed} token --min-valid 1",
        agent = agent_bin.display(),
        listed = listed.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["-Urm", "sh", "-c", &script])
        .env("REGENT_SOCKET", &home.socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    as_user(&mut cmd, AGENT_UID, AGENT_UID, &[]);
    let out = cmd.output().unwrap();
    assert_denied(&out);
    let err = stderr(&out);
    assert!(
        err.contains("another mount namespace") && err.contains(&listed.display().to_string()),
        "{err}"
    );
    agent.wait_for_log_line(0, &["connection refused: another mount namespace"], WAIT);
}

#[test]
fn identifiers_are_for_administrators_and_logs_carry_a_hash() {
    if !is_root() {
        return;
    }
    let emulator = EmulatorProc::start(300);
    let home = root_agent_home(&emulator.url, &format!("allow_uids = [{OTHER_UID}]"));
    let agent = AgentProc::start(&home);
    enroll(&home, &emulator);
    let identifier = emulator.auth_tokens()[0]["identifier"]
        .as_str()
        .unwrap()
        .to_owned();
    let device_id = identifier.rsplit_once('-').unwrap().0.to_owned();

    // Root (an administrator) sees both.
    let out = home.regent(&["status", "--json"], None);
    assert!(out.status.success(), "{}", text(&out));
    let admin: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        admin["slots"][0]["identifier"],
        identifier.as_str(),
        "{admin}"
    );
    assert_eq!(admin["device_id"], device_id.as_str(), "{admin}");

    // An allowed uid that is not an administrator sees the rest, not them.
    let (_bin_dir, bin) = regent_bin_for_any_user();
    for args in [&["status", "--json"][..], &["status"][..]] {
        let out = run_as(&bin, OTHER_UID, &[SOCKET_GID], &home, args);
        assert!(out.status.success(), "{}", text(&out));
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(shown.contains("active"), "{shown}");
        assert!(!shown.contains(&device_id), "{shown}");
    }
    let out = run_as(&bin, OTHER_UID, &[SOCKET_GID], &home, &["status", "--json"]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["slots"][0]["state"], "active", "{status}");
    assert!(status["slots"][0].get("identifier").is_none(), "{status}");
    assert!(status.get("device_id").is_none(), "{status}");

    // The log names the enrollment by a short hash, never the identifier.
    let log = agent.log_text();
    assert!(!log.contains(&device_id), "{log}");
    let hash = {
        let out = Command::new("sh")
            .args([
                "-c",
                "printf %s \"$1\" | sha256sum | cut -c1-8",
                "sh",
                &identifier,
            ])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    assert_eq!(hash.len(), 8);
    assert!(
        log.lines()
            .any(|l| l.contains("enrolled") && l.contains(&format!("identifier={hash}"))),
        "{log}"
    );
}

#[test]
fn refused_peers_hold_no_connection_slot_and_few_descriptors() {
    if !is_root() {
        return;
    }
    let emulator = EmulatorProc::start(300);
    let home = root_agent_home(&emulator.url, "max_connections = 2");
    let agent = AgentProc::start(&home);
    enroll(&home, &emulator);
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", agent.child.id()))
            .unwrap()
            .count()
    };
    let baseline = fds();

    // A uid that is not allowed opens 100 connections, reads each refusal
    // and keeps every connection open, sending nothing.
    const REFUSED: usize = 100;
    let script = format!(
        r#"
import socket, struct, sys
held = []
for _ in range({REFUSED}):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    n = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))[0]
    body = s.recv(n, socket.MSG_WAITALL).decode()
    assert "PERMISSION_DENIED" in body, body
    held.append(s)
print("REFUSED", len(held), flush=True)
sys.stdin.read()
"#
    );
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-c", &script])
        .arg(&home.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    as_user(&mut cmd, OTHER_UID, OTHER_UID, &[SOCKET_GID]);
    let mut attacker = cmd.spawn().unwrap();
    let mut line = [0u8; 12];
    attacker
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut line)
        .unwrap();
    assert_eq!(&line, b"REFUSED 100\n");

    // While they are held: the agent keeps a bounded number of them open…
    let held = fds().saturating_sub(baseline);
    assert!(
        held <= 32 + 8,
        "{held} descriptors held for {REFUSED} refused connections"
    );
    // …and none of them took one of the two connection slots.
    for _ in 0..2 {
        let out = home.regent(&["token", "--min-valid", "1"], None);
        assert!(out.status.success(), "{}", text(&out));
    }
    drop(attacker.stdin.take());
    wait_timeout(&mut attacker, WAIT);
    assert!(
        agent
            .log_text()
            .contains("connection refused: uid not allowed"),
        "{}",
        agent.log_text()
    );
}

#[test]
fn a_socket_mode_open_to_every_user_is_refused_at_start_up() {
    let emulator = EmulatorProc::start(300);
    for mode in ["0666", "0662"] {
        let home = AgentHome::new(&emulator.url, &format!("[ipc]\nsocket_mode = \"{mode}\""));
        let mut agent = AgentProc::spawn(&home);
        let status = wait_timeout(&mut agent.child, WAIT);
        let log = agent.log_text();
        assert_eq!(status.code(), Some(exit(ErrorCode::Config)), "{log}");
        assert!(
            log.contains(&format!("[ipc] socket_mode = \"{mode}\"")) && log.contains("every user"),
            "{log}"
        );
        assert!(!home.socket.exists(), "{log}");
    }
}

/// Sends one frame on a raw connection and reads the answer.
fn exchange(stream: &mut UnixStream, request: &Value) -> Value {
    let body = request.to_string();
    let mut frame = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(body.as_bytes());
    stream.write_all(&frame).unwrap();
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).unwrap();
    let mut body = vec![0; u32::from_be_bytes(header) as usize];
    stream.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap()
}

#[test]
fn hello_names_must_be_printable_and_program_paths_are_escaped() {
    let emulator = EmulatorProc::start(300);
    let home = AgentHome::new(&emulator.url, "");
    let agent = AgentProc::start(&home);
    let forged = "2026-12-06T00:00:00Z  INFO regent::audit: token handed out app=forged";
    let long = "a".repeat(129);
    let cases = [
        (json!({"app": format!("app\n{forged}")}), "app"),
        (json!({"app": "app\u{1b}[2J"}), "app"),
        (json!({"app": "app", "instance": "i\u{202e}"}), "instance"),
        (json!({"app": long}), "app"),
    ];
    for (names, field) in cases {
        let mut stream = UnixStream::connect(&home.socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut hello = json!({"id": 1, "op": "hello", "versions": [1]});
        for (k, v) in names.as_object().unwrap() {
            hello[k] = v.clone();
        }
        let answer = exchange(&mut stream, &hello);
        assert_eq!(answer["error"]["code"], "BAD_REQUEST", "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("hello: {field} ")),
            "{message}"
        );
        // Nothing else is served on that connection.
        let answer = exchange(&mut stream, &json!({"id": 2, "op": "status"}));
        assert_eq!(answer["error"]["code"], "BAD_REQUEST", "{answer}");
    }
    // 128 printable characters (any script) are fine.
    let mut stream = UnixStream::connect(&home.socket).unwrap();
    let name: String = "é".repeat(128);
    let answer = exchange(
        &mut stream,
        &json!({"id": 1, "op": "hello", "versions": [1], "app": name}),
    );
    assert_eq!(answer["ok"]["kind"], "hello", "{answer}");
    let log = agent.log_text();
    assert!(!log.lines().any(|l| l.starts_with(forged)), "{log}");
    drop(agent);

    // A program whose path holds a newline and an escape sequence, refused
    // by allow_executables: the log line and the message show it escaped.
    if !is_root() {
        return;
    }
    let (_bin_dir, agent_bin) = regent_bin_for_any_user();
    let (_evil_dir, evil) = another_name(&agent_bin, &format!("x\n{forged}\u{1b}[31m"));
    let home = AgentHome::new(
        &emulator.url,
        &format!(
            "[ipc]\nallow_executables = [{:?}]",
            agent_bin.display().to_string()
        ),
    );
    let agent = start_agent_as(&agent_bin, AGENT_UID, &home);
    let out = run_as(&evil, AGENT_UID, &[], &home, &["token", "--min-valid", "1"]);
    assert_denied(&out);
    let err = stderr(&out);
    assert!(!err.contains('\u{1b}'), "{err:?}");
    assert!(err.contains("x\\n2026-12-06"), "{err:?}");
    agent.wait_for_log_line(0, &["connection refused: executable not allowed"], WAIT);
    let log = agent.log_text();
    assert!(!log.contains('\u{1b}'), "{log:?}");
    assert!(!log.lines().any(|l| l.starts_with(forged)), "{log}");
    assert!(log.contains("x\\n2026-12-06"), "{log}");
}

/// The descriptors of `pid` that are pidfds.
fn pidfds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().contains("pidfd"))
        .count()
}

#[test]
fn connections_hold_a_pidfd_only_while_programs_are_checked() {
    // One descriptor per connection without `allow_executables` (issue 15:
    // a pidfd each halved the connections an open-file limit allows); a
    // reload that starts checking programs asks the unpinned connections
    // to reconnect (UNAVAILABLE, retry at once), and new ones are checked.
    let emulator = EmulatorProc::start(300);
    let home = AgentHome::new(&emulator.url, "");
    let agent = AgentProc::start(&home);
    enroll(&home, &emulator);
    let mut clients: Vec<UnixStream> = (0..5)
        .map(|i| {
            let mut stream = UnixStream::connect(&home.socket).unwrap();
            let hello = exchange(
                &mut stream,
                &json!({"id": 1, "op": "hello", "versions": [1], "app": format!("app{i}")}),
            );
            assert_eq!(hello["ok"]["kind"], "hello", "{hello}");
            let token = exchange(
                &mut stream,
                &json!({"id": 2, "op": "token", "min_valid": 1}),
            );
            assert_eq!(token["ok"]["kind"], "token", "{token}");
            stream
        })
        .collect();
    assert_eq!(
        pidfds_of(agent.child.id()),
        0,
        "no pidfd without allow_executables"
    );

    let skip = agent.log_lines();
    let config = std::fs::read_to_string(&home.config).unwrap();
    let listed = format!(
        "allow_executables = [\"{}\"]",
        regent_tests::regent_bin().display()
    );
    assert!(config.contains("[ipc]"), "{config}");
    save_by_rename(
        &home.config,
        &config.replace("[ipc]\n", &format!("[ipc]\n{listed}\n")),
    );
    agent.wait_for_log_line(skip, &["configuration reloaded", "allow_executables"], WAIT);

    for stream in &mut clients {
        let reply = exchange(stream, &json!({"id": 3, "op": "token", "min_valid": 1}));
        assert!(is_error(&reply, 3, "UNAVAILABLE"), "{reply}");
        assert_eq!(reply["error"]["retry_after_ms"], 0, "{reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("allow_executables") && message.contains("reconnect"),
            "{message}"
        );
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "the connection is closed after the reply");
    }
    agent.wait_for_log_line(skip, &["asked to reconnect"], WAIT);
    // Reconnected, the CLI (the agent's own program) is checked and served.
    let out = home.regent(&["token", "--min-valid", "1"], None);
    assert!(out.status.success(), "{}", text(&out));
}
