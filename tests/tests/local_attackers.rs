//! End to end, with real processes of real uids: the defences against local
//! attackers (issue 9, item 4).
//!
//! - `[ipc] allow_executables`: a same-uid program that is not listed is
//!   refused by name; listed programs (through a symlink), the agent's own
//!   `regent` binary and root are served; a program whose file was deleted
//!   after it started is refused; another uid is refused by uid, then — once
//!   allowed — fails closed because a non-root agent cannot see its program;
//!   the list reloads live.
//! - An unsafe socket directory (0777, a 0777 parent, another owner) stops
//!   the agent at start-up with `CONFIG` (exit 17), and so does a sticky
//!   1777 one (issue 18, item 11); a private one below a sticky parent does not.
//! - The agent is not dumpable: its `/proc/PID` files belong to root, a
//!   same-uid process cannot read its environment, and SIGQUIT leaves no core.
//!
//! Most need root (to run processes as uids 65533/65534); CI runs as root.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use regent_proto::ErrorCode;
use regent_tests::other_user::{chown_to, spawn_retrying, start_agent_as};
use regent_tests::{
    AgentHome, AgentProc, EmulatorProc, assert_denied, exit, is_root, link_or_copy, regent_bin,
    regent_bin_for_any_user, save_by_rename, stderr, text, wait_timeout, wait_until,
};

/// The uid the agent runs as in these tests (`nobody`).
const AGENT_UID: u32 = 65534;
/// Another unprivileged uid.
const OTHER_UID: u32 = 65533;
const WAIT: Duration = Duration::from_secs(20);

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Another name for `bin` (a hard link, so no 200 MB copy) in a fresh
/// world-readable directory under /tmp: a distinct path, so a distinct
/// program as far as `/proc/PID/exe` is concerned. `regentd` is linked
/// beside it too, which `regent` runs for every command but `token`.
fn another_name(bin: &Path) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("regent-link-")
        .tempdir_in("/tmp")
        .unwrap();
    chmod(dir.path(), 0o755);
    let path = dir.path().join("regent");
    link_or_copy(bin, &path);
    link_or_copy(&bin.with_file_name("regentd"), &dir.path().join("regentd"));
    (dir, path)
}

/// `regent token --min-valid 1` run from `bin` as `uid` against `home`'s agent.
fn token_as(bin: &Path, uid: u32, home: &AgentHome) -> Output {
    run_as(bin, uid, home, &["token", "--min-valid", "1"], None)
}

/// Runs `bin args…` as `uid` against the agent of `home`.
fn run_as(bin: &Path, uid: u32, home: &AgentHome, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env("REGENT_SOCKET", &home.socket)
        // The agent runs as `nobody`, below /tmp: clients of other uids are
        // told whom to trust, as a deployment would (issue 18, item 11).
        .env("REGENT_AGENT_UID", AGENT_UID.to_string())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if uid != 0 {
        // The socket's group is the agent's (mode 0660): every client uid
        // gets it as a supplementary group, so the agent's checks decide.
        regent_tests::other_user::as_user(&mut cmd, uid, uid, &[AGENT_UID]);
    }
    let mut child = spawn_retrying(&mut cmd);
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

/// An agent home owned by `uid`, reachable (not writable) by everyone, with
/// a socket of mode 0660 whose group (the agent's) every test client has, so
/// that the agent's own checks decide who gets in.
fn home_for(uid: u32, url: &str, ipc: &str) -> AgentHome {
    let home = AgentHome::new(url, &format!("[ipc]\nmode = \"0660\"\n{ipc}"));
    let run = home.socket.parent().unwrap();
    std::fs::create_dir_all(run).unwrap();
    for path in [home.dir.path(), run] {
        chmod(path, 0o755);
        chown_to(path, uid);
    }
    chown_to(&home.config, uid);
    home
}

#[test]
fn allow_executables_serves_listed_programs_and_refuses_the_rest() {
    if !is_root() {
        return;
    }
    let emulator = EmulatorProc::start(300);
    let (_agent_dir, agent_bin) = regent_bin_for_any_user();
    let (_app_dir, app_bin) = another_name(&agent_bin);
    let (_other_dir, other_bin) = another_name(&agent_bin);
    // `regentd` itself: the deletion case below holds `enroll` open, which
    // `regent` hands to `regentd` (whose path /proc/PID/exe then names).
    let (_late_dir, late_bin) = another_name(&agent_bin);
    let late_bin = late_bin.with_file_name("regentd");
    // The list names the app through a symlink: matched by its target.
    let links = tempfile::tempdir().unwrap();
    let app_link = links.path().join("licensed-app");
    std::os::unix::fs::symlink(&app_bin, &app_link).unwrap();
    let list = |extra: &[&Path]| {
        let mut entries = vec![format!("{:?}", app_link.display().to_string())];
        entries.extend(
            extra
                .iter()
                .map(|p| format!("{:?}", p.display().to_string())),
        );
        format!("allow_executables = [{}]", entries.join(", "))
    };
    let home = home_for(AGENT_UID, &emulator.url, &list(&[]));
    let agent = start_agent_as(&agent_bin, AGENT_UID, &home);

    // The agent's own binary, same uid: administration keeps working.
    let out = run_as(
        &agent_bin,
        AGENT_UID,
        &home,
        &["enroll"],
        Some(&emulator.mint(1)),
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = run_as(&agent_bin, AGENT_UID, &home, &["status"], None);
    assert!(out.status.success(), "{}", text(&out));

    // A listed program (named through a symlink) gets tokens.
    let out = token_as(&app_bin, AGENT_UID, &home);
    assert!(out.status.success(), "{}", text(&out));

    // The same binary under a name that is not listed: refused, by name.
    let out = token_as(&other_bin, AGENT_UID, &home);
    assert_denied(&out);
    let err = stderr(&out);
    assert!(err.contains(&other_bin.display().to_string()), "{err}");
    assert!(err.contains("[ipc] allow_executables"), "{err}");
    agent.wait_for_log_line(
        0,
        &["connection refused: executable not allowed", "regent-link-"],
        WAIT,
    );

    // Root is never restricted.
    let out = run_as(&other_bin, 0, &home, &["status"], None);
    assert!(out.status.success(), "{}", text(&out));

    // Another uid is refused by uid first, with the key to change.
    let out = token_as(&app_bin, OTHER_UID, &home);
    assert_denied(&out);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("uid {OTHER_UID} may not use this agent"))
            && err.contains("allow_uids"),
        "{err}"
    );

    // Live reload: allow the other uid and list one more program.
    let skip = agent.log_lines();
    let config = std::fs::read_to_string(&home.config).unwrap();
    let reloaded = config.replace(
        &list(&[]),
        &format!("{}\nallow_uids = [{OTHER_UID}]", list(&[&late_bin])),
    );
    assert_ne!(config, reloaded);
    save_by_rename(&home.config, &reloaded);
    agent.wait_for_log_line(
        skip,
        &[
            "configuration reloaded",
            "allow_executables",
            &late_bin.display().to_string(),
        ],
        WAIT,
    );
    let out = token_as(&late_bin, AGENT_UID, &home);
    assert!(out.status.success(), "{}", text(&out));

    // Allowed by uid, running a listed program — but a non-root agent cannot
    // read another uid's /proc/PID/exe, so the list fails closed and says why.
    let out = token_as(&app_bin, OTHER_UID, &home);
    assert_denied(&out);
    let err = stderr(&out);
    assert!(
        err.contains("not readable by the agent") && err.contains("allow_executables"),
        "{err}"
    );

    // A listed program whose file is deleted after it started: refused. The
    // CLI reads the secret from stdin before it connects, which holds it
    // between exec and connect.
    let mut child = spawn_retrying(
        Command::new(&late_bin)
            .arg("enroll")
            .env("REGENT_SOCKET", &home.socket)
            .uid(AGENT_UID)
            .gid(AGENT_UID)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let exe_link = format!("/proc/{}/exe", child.id());
    wait_until(WAIT, "the CLI to exec", || {
        std::fs::read_link(&exe_link).is_ok_and(|p| p == late_bin)
    });
    std::fs::remove_file(&late_bin).unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"never-sent-registration-token\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_denied(&out);
    let err = stderr(&out);
    assert!(
        err.contains("deleted or replaced") && err.contains(&late_bin.display().to_string()),
        "{err}"
    );
    agent.wait_for_log_line(
        skip,
        &["connection refused: executable deleted or replaced"],
        WAIT,
    );

    // A listed symlink re-pointed: resolved again at the next event in the
    // config file's directory (here the file rewritten unchanged), silently
    // unless the result differs — even though a listed file (the deleted
    // one) no longer resolves and the agent's log is in that directory.
    let skip = agent.log_lines();
    let new_link = links.path().join("licensed-app.new");
    std::os::unix::fs::symlink(&other_bin, &new_link).unwrap();
    std::fs::rename(&new_link, &app_link).unwrap();
    std::fs::write(&home.config, std::fs::read(&home.config).unwrap()).unwrap();
    agent.wait_for_log_line(
        skip,
        &["configuration reloaded", &other_bin.display().to_string()],
        WAIT,
    );
    let out = token_as(&other_bin, AGENT_UID, &home);
    assert!(out.status.success(), "{}", text(&out));
    let out = token_as(&app_bin, AGENT_UID, &home);
    assert_denied(&out);
    std::thread::sleep(Duration::from_secs(1));
    let unresolved = agent.log_text().matches("cannot resolve").count();
    assert!(
        (1..=3).contains(&unresolved),
        "the missing entry was reported {unresolved} times:\n{}",
        agent.log_text()
    );

    // Without a list, the allowed uid is served — tokens only. The list is
    // emptied explicitly: a reload that merely lacks the key is refused, as
    // a file read half-written would.
    let skip = agent.log_lines();
    let config = std::fs::read_to_string(&home.config).unwrap();
    let without: String = config
        .lines()
        .map(|l| {
            if l.starts_with("allow_executables") {
                "allow_executables = []\n".to_owned()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    save_by_rename(&home.config, &without);
    agent.wait_for_log_line(
        skip,
        &["configuration reloaded", "allow_executables = []"],
        WAIT,
    );
    let out = token_as(&other_bin, OTHER_UID, &home);
    assert!(out.status.success(), "{}", text(&out));
    let out = run_as(&other_bin, OTHER_UID, &home, &["unenroll"], None);
    assert_denied(&out);
    assert!(
        !agent.log_text().contains("panicked"),
        "{}",
        agent.log_text()
    );
}

/// Starts the agent (as root) and expects it to stop at start-up.
fn expect_refusal(home: &AgentHome) -> String {
    let mut agent = AgentProc::spawn(home);
    let status = wait_timeout(&mut agent.child, WAIT);
    let log = agent.log_text();
    assert_eq!(
        status.code(),
        Some(exit(ErrorCode::Config)),
        "the agent should refuse to start: {status}\n{log}"
    );
    assert!(!home.socket.exists(), "no socket may be created:\n{log}");
    log
}

#[test]
fn an_unsafe_socket_directory_stops_the_agent_at_start_up() {
    let emulator = EmulatorProc::start(300);
    let home = AgentHome::new(&emulator.url, "");
    let run = home.socket.parent().unwrap().to_path_buf();
    std::fs::create_dir_all(&run).unwrap();

    // World-writable without the sticky bit.
    chmod(&run, 0o777);
    let log = expect_refusal(&home);
    for needle in [
        "unsafe socket directory",
        &run.display().to_string(),
        "world-writable",
        "mode 0777",
        "chmod go-w",
        "CONFIG",
    ] {
        assert!(log.contains(needle), "{needle:?} missing:\n{log}");
    }

    // Group-writable, too.
    chmod(&run, 0o770);
    let log = expect_refusal(&home);
    assert!(log.contains("group-writable (mode 0770)"), "{log}");

    // With the sticky bit (like /tmp) others cannot remove the socket, but
    // they can bind its name while the agent is stopped: refused too.
    chmod(&run, 0o1777);
    let log = expect_refusal(&home);
    for needle in [
        "group- and world-writable (mode 1777)",
        "sticky bit does not help",
        "chmod go-w",
    ] {
        assert!(log.contains(needle), "{needle:?} missing:\n{log}");
    }

    // A private directory below a sticky parent (like /tmp/x/): fine.
    chmod(&run, 0o700);
    chmod(home.dir.path(), 0o1777);
    let agent = AgentProc::start(&home);
    let mode = std::fs::symlink_metadata(&home.socket).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o600, "the socket has the configured mode");
    assert!(agent.terminate().success());

    // A writable parent lets its owner swap the whole directory: refused.
    chmod(&run, 0o700);
    chmod(home.dir.path(), 0o777);
    let log = expect_refusal(&home);
    assert!(
        log.contains(&format!(
            "{}, a parent of the socket directory",
            home.dir.path().display()
        )),
        "{log}"
    );
    chmod(home.dir.path(), 0o700);

    // Owned by another user (needs root to chown).
    if nix::unistd::geteuid().is_root() {
        chown_to(&run, AGENT_UID);
        let log = expect_refusal(&home);
        assert!(
            log.contains(&format!("belongs to uid {AGENT_UID}")),
            "{log}"
        );
        assert!(log.contains("chown 0"), "{log}");
        chown_to(&run, 0);
    }
    let agent = AgentProc::start(&home);
    assert!(agent.terminate().success());
}

#[test]
fn the_agent_is_not_dumpable_and_leaves_no_core() {
    if !is_root() {
        return;
    }
    let emulator = EmulatorProc::start(300);
    let (_bin_dir, bin) = regent_bin_for_any_user();
    let home = home_for(AGENT_UID, &emulator.url, "");
    let agent = start_agent_as(&bin, AGENT_UID, &home);
    agent.wait_for_log_line(0, &["regent agent starting", "PR_SET_DUMPABLE"], WAIT);
    let pid = agent.child.id();

    // A same-uid process that is not hardened, for comparison: its /proc
    // files are its uid's, and another process of that uid reads them.
    let mut control = Command::new("sleep")
        .arg("60")
        .uid(AGENT_UID)
        .gid(AGENT_UID)
        .spawn()
        .unwrap();
    let read_as_agent_uid = |pid: u32| {
        Command::new("cat")
            .arg(format!("/proc/{pid}/environ"))
            .uid(AGENT_UID)
            .gid(AGENT_UID)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap()
    };
    let owner = |pid: u32| {
        std::fs::metadata(format!("/proc/{pid}/environ"))
            .unwrap()
            .uid()
    };
    wait_until(WAIT, "the control process to exec", || {
        std::fs::read_link(format!("/proc/{}/exe", control.id()))
            .is_ok_and(|p| p.to_string_lossy().contains("sleep"))
    });
    assert_eq!(owner(control.id()), AGENT_UID);
    let out = read_as_agent_uid(control.id());
    assert!(out.status.success(), "control: {}", text(&out));

    // The agent: /proc/PID files belong to root; its own uid cannot read them.
    assert_eq!(owner(pid), 0, "the agent's /proc files belong to root");
    let out = read_as_agent_uid(pid);
    assert!(
        !out.status.success(),
        "environ was readable: {}",
        text(&out)
    );
    assert!(stderr(&out).contains("Permission denied"), "{}", text(&out));
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(
        core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(),
        ["0", "0"],
        "{core}"
    );
    let _ = control.kill();
    let _ = control.wait();
    drop(agent);

    // SIGQUIT dumps core by default; the agent must not, even when started
    // with an unlimited core size in a directory where cores would land.
    let cwd = tempfile::tempdir().unwrap();
    let home = AgentHome::new(&emulator.url, "");
    let script = format!(
        "ulimit -c unlimited && exec {} agent --config {}",
        regent_bin().display(),
        home.config.display()
    );
    let mut agent = Command::new("sh");
    // SIGQUIT may reach us ignored (a background job of a shell); the agent
    // must get the default action, the one that would dump core.
    regent_tests::other_user::default_action(&mut agent, nix::sys::signal::Signal::SIGQUIT);
    let mut agent = agent
        .args(["-c", &script])
        .current_dir(cwd.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    regent_tests::wait_for_socket(&home.socket, WAIT);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        nix::sys::signal::Signal::SIGQUIT,
    )
    .unwrap();
    let status = wait_timeout(&mut agent, WAIT);
    assert_eq!(
        status.signal(),
        Some(nix::sys::signal::Signal::SIGQUIT as i32)
    );
    assert!(!status.core_dumped(), "the agent dumped core");
    let cores: Vec<_> = std::fs::read_dir(cwd.path()).unwrap().collect();
    assert!(cores.is_empty(), "files left: {cores:?}");

    // The same with a process that is not hardened, to show the check bites
    // where the system writes cores at all (core_pattern decides).
    let mut control = Command::new("sh");
    regent_tests::other_user::default_action(&mut control, nix::sys::signal::Signal::SIGQUIT);
    let mut control = control
        .args(["-c", "ulimit -c unlimited && exec sleep 60"])
        .current_dir(cwd.path())
        .spawn()
        .unwrap();
    wait_until(WAIT, "the control process to exec", || {
        std::fs::read_link(format!("/proc/{}/exe", control.id()))
            .is_ok_and(|p| p.to_string_lossy().contains("sleep"))
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(control.id() as i32),
        nix::sys::signal::Signal::SIGQUIT,
    )
    .unwrap();
    let status = wait_timeout(&mut control, WAIT);
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    eprintln!(
        "control (not hardened): core dumped = {} (core_pattern {:?})",
        status.core_dumped(),
        pattern.trim()
    );
}
