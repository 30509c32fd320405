//! End to end: the config file is watched; log level, allow lists and refresh
//! settings apply live, and a broken edit is rejected with the old settings
//! kept in force.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use regent_proto::ErrorCode;
use regent_tests::{AgentHome, AgentProc, EmulatorProc, code, exit, save_by_rename, text};

const WAIT: Duration = Duration::from_secs(15);
/// A uid other than ours and root's: `nobody`.
const OTHER_UID: u32 = 65534;

fn config_text(home: &AgentHome, url: &str, level: &str, allow: &str, extra: &str) -> String {
    format!(
        "[server]\nprofile = \"sentinel\"\nurl = \"{url}\"\nrequest_timeout = 5\n\n\
         [store]\nkind = \"file\"\n\n[state]\ndir = \"{}\"\n\n\
         [ipc]\nsocket = \"{}\"\nmode = \"0660\"\nallow_uids = {allow}\n\n\
         [log]\nlevel = \"{level}\"\n{extra}",
        home.dir.path().join("state").display(),
        home.socket.display()
    )
}

/// `regent status` as another user: only the exit status matters here.
fn status_as_other_user(home: &AgentHome) -> i32 {
    let (_bin_dir, bin) = regent_tests::regent_bin_for_any_user();
    let out = Command::new(&bin)
        .arg("status")
        .env("REGENT_SOCKET", &home.socket)
        .uid(OTHER_UID)
        .gid(OTHER_UID)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    code(&out)
}

#[test]
fn log_level_and_allow_list_reload_live_and_a_broken_edit_is_rejected() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: this test runs a client as another uid, which needs root");
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this test as root"
        );
        return;
    }
    let emulator = EmulatorProc::start(300);
    let home = AgentHome::new(&emulator.url, "");
    // The socket must be reachable by the other user (its group is the
    // socket's), so the allow list is the only thing that decides.
    regent_tests::other_user::socket_group(&home, OTHER_UID);
    std::fs::write(
        &home.config,
        config_text(&home, &emulator.url, "info", "[]", ""),
    )
    .unwrap();
    let agent = AgentProc::start_with_env(&home, &[], &["RUST_LOG"]);

    // Before: the other uid is refused; debug lines are not logged.
    assert_eq!(
        status_as_other_user(&home),
        exit(ErrorCode::PermissionDenied)
    );
    let out = home.regent(&["enroll"], Some("wrong-token\n"));
    assert_eq!(
        code(&out),
        exit(ErrorCode::RegistrationTokenInvalid),
        "{}",
        text(&out)
    );
    assert!(
        !agent.log_text().contains("license server answered"),
        "debug line at level info:\n{}",
        agent.log_text()
    );

    // Save by rename, as editors do: level, allow list and refresh change live.
    let skip = agent.log_lines();
    save_by_rename(
        &home.config,
        &config_text(
            &home,
            &emulator.url,
            "debug",
            &format!("[{OTHER_UID}]"),
            "\n[refresh]\nmargin = 5\n",
        ),
    );
    let line = agent.wait_for_log_line(skip, &["configuration reloaded"], WAIT);
    assert!(line.contains("[log] level"), "{line}");
    assert!(line.contains("allow_uids"), "{line}");
    assert!(line.contains("[refresh]"), "{line}");
    // Access is decided: NOT_ENROLLED, not PERMISSION_DENIED.
    assert_eq!(status_as_other_user(&home), exit(ErrorCode::NotEnrolled));
    let skip = agent.log_lines();
    let out = home.regent(&["enroll"], Some("wrong-token\n"));
    assert_eq!(
        code(&out),
        exit(ErrorCode::RegistrationTokenInvalid),
        "{}",
        text(&out)
    );
    agent.wait_for_log_line(skip, &["DEBUG", "license server answered"], WAIT);

    // A broken edit: a string where a list belongs.
    let skip = agent.log_lines();
    let broken = config_text(&home, &emulator.url, "warn", "\"everyone\"", "");
    let line_no = broken
        .lines()
        .position(|l| l.starts_with("allow_uids"))
        .unwrap()
        + 1;
    save_by_rename(&home.config, &broken);
    let line = agent.wait_for_log_line(skip, &["configuration change rejected"], WAIT);
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains(&home.config.display().to_string()), "{line}");
    assert!(line.contains(&format!("line {line_no}")), "{line}");
    assert!(
        line.contains("allow_uids") || line.contains("sequence"),
        "{line}"
    );
    // The previous settings stay: the other uid still gets in, debug still logs.
    assert_eq!(status_as_other_user(&home), exit(ErrorCode::NotEnrolled));
    let skip = agent.log_lines();
    home.regent(&["enroll"], Some("wrong-token\n"));
    agent.wait_for_log_line(skip, &["DEBUG", "license server answered"], WAIT);

    // A section that cannot change live is named, and nothing else changes.
    let skip = agent.log_lines();
    let moved = config_text(
        &home,
        &emulator.url,
        "debug",
        &format!("[{OTHER_UID}]"),
        "\n[refresh]\nmargin = 5\n",
    )
    .replace("request_timeout = 5", "request_timeout = 6");
    save_by_rename(&home.config, &moved);
    agent.wait_for_log_line(skip, &["[server]", "only after a restart"], WAIT);

    let metrics = String::from_utf8(home.regent(&["metrics"], None).stdout).unwrap();
    assert!(
        metrics.contains("regent_config_reloads_total{outcome=\"applied\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("regent_config_reloads_total{outcome=\"rejected\"} 1"),
        "{metrics}"
    );
    assert!(agent.terminate().success());
}

/// Issue 18 item 14: the config file holds the allow lists, so one that
/// others may write is refused at start (CONFIG naming the file and the
/// fix) and at reload (the settings in force stay).
#[test]
fn a_config_file_others_can_write_is_refused_at_start_and_on_reload() {
    use std::os::unix::fs::PermissionsExt as _;
    let emulator = EmulatorProc::start(300);
    let home = AgentHome::new(&emulator.url, "");
    let shown = home.config.display().to_string();
    std::fs::set_permissions(&home.config, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut refused = AgentProc::spawn(&home);
    let status = regent_tests::wait_timeout(&mut refused.child, WAIT);
    assert_eq!(status.code(), Some(exit(ErrorCode::Config)));
    let log = std::fs::read_to_string(&refused.log).unwrap();
    assert!(log.contains(&shown), "{log}");
    assert!(log.contains("world-writable (mode 0666)"), "{log}");
    assert!(log.contains(&format!("chmod go-w {shown}")), "{log}");
    assert!(!home.socket.exists(), "no agent may serve with that file");

    std::fs::set_permissions(&home.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let agent = AgentProc::start_with_env(&home, &[], &["RUST_LOG"]);
    agent.wait_for_log_line(0, &["watching the configuration file"], WAIT);
    let text = std::fs::read_to_string(&home.config).unwrap();
    let changed = format!("{text}\n[log]\nlevel = \"debug\"\n");
    // The change arrives in a group-writable file: not applied.
    let skip = agent.log_lines();
    let tmp = home.config.with_extension("toml.new");
    std::fs::write(&tmp, &changed).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o664)).unwrap();
    std::fs::rename(&tmp, &home.config).unwrap();
    let line = agent.wait_for_log_line(skip, &["configuration change rejected"], WAIT);
    assert!(line.contains("group-writable (mode 0664)"), "{line}");
    assert!(line.contains(&format!("chmod go-w {shown}")), "{line}");
    // The same text in a file only its owner may write: applied.
    let skip = agent.log_lines();
    save_by_rename(&home.config, &changed);
    std::fs::set_permissions(&home.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let line = agent.wait_for_log_line(skip, &["configuration reloaded"], WAIT);
    assert!(line.contains("[log] level"), "{line}");
    // One refusal, one reload.
    let metrics = String::from_utf8(home.regent(&["metrics"], None).stdout).unwrap();
    assert!(
        metrics.contains("regent_config_reloads_total{outcome=\"rejected\"} 1"),
        "{metrics}"
    );
    assert!(agent.terminate().success());
}

/// Issue 18 item 14: a config file read while half-written is still valid
/// TOML when it is cut at a line end; losing its last line must not lift
/// `allow_executables`. Only an explicit `allow_executables = []` does.
#[test]
fn a_config_cut_short_never_drops_allow_executables() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: this test runs a client as another uid, which needs root");
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this test as root"
        );
        return;
    }
    let emulator = EmulatorProc::start(300);
    let home = AgentHome::new(&emulator.url, "");
    // The socket must be reachable by the other user (its group is the
    // socket's), so the allow lists are the only thing that decides.
    regent_tests::other_user::socket_group(&home, OTHER_UID);
    // The whole file ends with the restriction; the cut one is the same
    // file without its last line.
    let allow = format!("[{OTHER_UID}]");
    let cut = config_text(&home, &emulator.url, "info", &allow, "");
    let marker = format!("allow_uids = {allow}\n");
    let whole = cut.replace(
        &marker,
        &format!("{marker}allow_executables = [\"/bin/sh\"]\n"),
    );
    assert_ne!(whole, cut);
    std::fs::write(&home.config, &whole).unwrap();
    let agent = AgentProc::start_with_env(&home, &[], &["RUST_LOG"]);
    // The other uid is allowed, but not from this program.
    assert_eq!(
        status_as_other_user(&home),
        exit(ErrorCode::PermissionDenied)
    );

    let skip = agent.log_lines();
    save_by_rename(&home.config, &cut);
    let line = agent.wait_for_log_line(skip, &["configuration change rejected"], WAIT);
    assert!(line.contains("allow_executables is missing"), "{line}");
    assert!(line.contains("allow_executables = []"), "{line}");
    assert_eq!(
        status_as_other_user(&home),
        exit(ErrorCode::PermissionDenied),
        "the restriction stays in force"
    );

    // Lifted on purpose: applied.
    let skip = agent.log_lines();
    let lifted = cut.replace(&marker, &format!("{marker}allow_executables = []\n"));
    save_by_rename(&home.config, &lifted);
    agent.wait_for_log_line(skip, &["configuration reloaded"], WAIT);
    assert_eq!(status_as_other_user(&home), exit(ErrorCode::NotEnrolled));
    assert!(agent.terminate().success());
}
