//! End to end: the provisioning drop-in directory. A registration-token file
//! is redeemed once and deleted; a loose one is refused unread; a failed one
//! is deleted next to a reason file; an unsafe directory is never touched,
//! and nothing the agent writes there follows a planted symlink.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regent_tests::{AgentHome, AgentProc, EmulatorProc, wait_until};

const WAIT: Duration = Duration::from_secs(15);

fn provisioning_home(emulator: &EmulatorProc) -> (AgentHome, PathBuf) {
    let home = AgentHome::new(&emulator.url, "");
    let dir = home.dir.path().join("provisioning");
    let text = std::fs::read_to_string(&home.config).unwrap();
    std::fs::write(
        &home.config,
        format!("{text}\n[provisioning]\ndir = \"{}\"\n", dir.display()),
    )
    .unwrap();
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    (home, dir)
}

/// Writes a token file the way provisioning tools should: a hidden temporary
/// file with the final mode, renamed into place.
fn drop_token(dir: &Path, name: &str, value: &str, mode: u32) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, format!("{value}\n")).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn used_counts(emulator: &EmulatorProc) -> usize {
    emulator.auth_tokens().len()
}

fn state(home: &AgentHome) -> String {
    let out = home.regent(&["status", "--json"], None);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    status["slots"][0]["state"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

#[test]
fn drop_in_refuses_loose_files_reports_failures_and_redeems_once() {
    let emulator = EmulatorProc::start(300);
    let (home, dir) = provisioning_home(&emulator);
    let registration = emulator.mint(5);

    // Left by an earlier version: a failed file that kept its token.
    std::fs::write(dir.join("old.token.failed"), "old-registration-token\n").unwrap();
    std::fs::write(dir.join("old.token.failed.reason"), "UNAVAILABLE (7): …\n").unwrap();
    // Present before start, but world-readable: refused unread at the first scan.
    drop_token(&dir, "site.token", &registration, 0o644);
    let agent = AgentProc::start(&home);
    wait_until(WAIT, "site.token.refused", || {
        dir.join("site.token.refused.reason").exists()
    });
    assert!(!dir.join("site.token").exists());
    assert!(dir.join("site.token.refused").exists());
    let reason = std::fs::read_to_string(dir.join("site.token.refused.reason")).unwrap();
    assert!(reason.contains("0644"), "{reason}");
    assert!(reason.contains("0600"), "{reason}");
    assert!(
        !reason.contains(&registration),
        "the reason must not repeat the token"
    );
    assert_eq!(
        used_counts(&emulator),
        0,
        "a refused file is never redeemed"
    );
    assert!(
        !dir.join("old.token.failed").exists(),
        "an old token file stays"
    );
    assert!(dir.join("old.token.failed.reason").exists());
    assert_eq!(state(&home), "unenrolled");

    // A token the server does not know: renamed .failed with the code.
    drop_token(&dir, "wrong.token", "not-a-registration-token", 0o600);
    wait_until(WAIT, "wrong.token.failed.reason", || {
        dir.join("wrong.token.failed.reason").exists()
    });
    let reason = std::fs::read_to_string(dir.join("wrong.token.failed.reason")).unwrap();
    assert!(
        reason.starts_with("REGISTRATION_TOKEN_INVALID (2):"),
        "{reason}"
    );
    // A token read is never left on disk, whatever the outcome.
    assert!(!dir.join("wrong.token").exists());
    assert!(!dir.join("wrong.token.failed").exists());
    assert_eq!(
        files_holding(&dir, "not-a-registration-token"),
        Vec::<String>::new()
    );

    // The right one, 0600: redeemed once, then deleted.
    drop_token(&dir, "site.token", &registration, 0o600);
    wait_until(WAIT, "site.token to be deleted", || {
        !dir.join("site.token").exists()
    });
    assert!(!dir.join("site.token.failed").exists());
    wait_until(WAIT, "the agent to be active", || state(&home) == "active");
    assert_eq!(used_counts(&emulator), 1);
    let token = home.regent(&["token"], None);
    assert!(token.status.success());

    // Dropped again on an enrolled device (config management re-running):
    // not redeemed a second time, and the admin sees why.
    drop_token(&dir, "again.token", &registration, 0o600);
    wait_until(WAIT, "again.token.failed.reason", || {
        dir.join("again.token.failed.reason").exists()
    });
    let reason = std::fs::read_to_string(dir.join("again.token.failed.reason")).unwrap();
    assert!(reason.starts_with("ALREADY_ENROLLED"), "{reason}");
    assert_eq!(used_counts(&emulator), 1, "one redemption, one count");
    // The still-valid registration token does not stay behind in a .failed
    // file; only the loose copy refused unread at the start still holds it.
    assert_eq!(
        files_holding(&dir, &registration),
        vec!["site.token.refused".to_owned()]
    );

    let log = agent.log_text();
    assert!(
        !log.contains(&registration),
        "the token never reaches a log"
    );
    assert!(log.contains("enrolled from a provisioning file"), "{log}");
    let metrics = String::from_utf8(home.regent(&["metrics"], None).stdout).unwrap();
    for expected in [
        "regent_provisioning_files_total{outcome=\"redeemed\"} 1",
        "regent_provisioning_files_total{outcome=\"failed\"} 2",
        "regent_provisioning_files_total{outcome=\"refused\"} 1",
    ] {
        assert!(metrics.contains(expected), "{expected}\n{metrics}");
    }
    assert!(agent.terminate().success());
}

#[test]
fn a_loose_provisioning_directory_is_only_logged_and_left_untouched() {
    let emulator = EmulatorProc::start(300);
    let (home, dir) = provisioning_home(&emulator);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let registration = emulator.mint(1);
    drop_token(&dir, "token", &registration, 0o600);
    let agent = AgentProc::start(&home);
    let line = agent.wait_for_log_line(0, &["provisioning directory unsafe"], WAIT);
    assert!(line.contains("0755"), "{line}");
    assert!(line.contains("chmod 0700"), "{line}");
    assert_eq!(
        names(&dir),
        vec!["token".to_owned()],
        "nothing renamed or written"
    );
    assert_eq!(used_counts(&emulator), 0);
}

/// Issue 18 item 3: another user plants symlinks named like the agent's
/// outcome files in a world-writable drop-in directory, pointing at the
/// credential. The agent must neither rename nor write anything there: the
/// credential stays byte for byte, and the agent starts and serves.
#[test]
fn an_unsafe_directory_is_never_written_through_planted_symlinks() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: planting files as another uid needs root");
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this test as root"
        );
        return;
    }
    let emulator = EmulatorProc::start(300);
    let (home, dir) = provisioning_home(&emulator);
    let agent = AgentProc::start(&home);
    let out = home.regent(&["enroll"], Some(&format!("{}\n", emulator.mint(1))));
    assert!(out.status.success(), "{}", regent_tests::text(&out));
    assert!(agent.terminate().success());
    let secrets = home.dir.path().join("state/secrets.json");
    let before = std::fs::read(&secrets).unwrap();

    // The directory is opened to everyone; uid 65534 plants a token file
    // and symlinks where the old agent wrote its outcome files.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    drop_token(&dir, "t", "planted-token", 0o600);
    std::os::unix::fs::chown(dir.join("t"), Some(OTHER_UID), Some(OTHER_UID)).unwrap();
    let planted = [
        "t.refused",
        "t.refused.reason",
        "t.failed",
        "t.failed.reason",
    ];
    for name in planted {
        std::os::unix::fs::symlink(&secrets, dir.join(name)).unwrap();
        std::os::unix::fs::lchown(dir.join(name), Some(OTHER_UID), Some(OTHER_UID)).unwrap();
    }
    let listing = names(&dir);

    let agent = AgentProc::start(&home);
    let line = agent.wait_for_log_line(0, &["provisioning directory unsafe"], WAIT);
    assert!(line.contains("0777"), "{line}");
    assert_eq!(
        std::fs::read(&secrets).unwrap(),
        before,
        "the credential was overwritten"
    );
    assert_eq!(names(&dir), listing, "the directory was changed");
    assert_eq!(
        std::fs::read_to_string(dir.join("t")).unwrap(),
        "planted-token\n"
    );
    for name in planted {
        assert_eq!(
            std::fs::read_link(dir.join(name)).unwrap(),
            secrets,
            "{name}"
        );
    }
    let token = home.regent(&["token"], None);
    assert!(token.status.success(), "{}", regent_tests::text(&token));
    assert!(agent.terminate().success());
}

/// In a safe directory the agent does write outcome files; a symlink left
/// under such a name (by an earlier admin mistake or a tool) is replaced,
/// never followed.
#[test]
fn a_safe_directory_never_follows_a_symlinked_reason_name() {
    let emulator = EmulatorProc::start(300);
    let (home, dir) = provisioning_home(&emulator);
    let agent = AgentProc::start(&home);
    let out = home.regent(&["enroll"], Some(&format!("{}\n", emulator.mint(1))));
    assert!(out.status.success(), "{}", regent_tests::text(&out));
    let secrets = home.dir.path().join("state/secrets.json");
    let before = std::fs::read(&secrets).unwrap();

    for name in ["loose.refused.reason", "wrong.failed.reason"] {
        std::os::unix::fs::symlink(&secrets, dir.join(name)).unwrap();
    }
    drop_token(&dir, "loose", "loose-token", 0o644);
    drop_token(&dir, "wrong", "not-a-registration-token", 0o600);
    for name in ["loose.refused.reason", "wrong.failed.reason"] {
        wait_until(WAIT, name, || {
            std::fs::symlink_metadata(dir.join(name)).is_ok_and(|m| m.is_file())
        });
    }
    assert_eq!(
        std::fs::read(&secrets).unwrap(),
        before,
        "the credential was overwritten"
    );
    // Enrolled already: the agent answers that before asking the server.
    let reason = std::fs::read_to_string(dir.join("wrong.failed.reason")).unwrap();
    assert!(reason.starts_with("ALREADY_ENROLLED"), "{reason}");
    assert_eq!(
        files_holding(&dir, "not-a-registration-token"),
        Vec::<String>::new()
    );
    let reason = std::fs::read_to_string(dir.join("loose.refused.reason")).unwrap();
    assert!(reason.contains("0644"), "{reason}");
    assert!(dir.join("loose.refused").exists());
    let token = home.regent(&["token"], None);
    assert!(token.status.success(), "{}", regent_tests::text(&token));
    assert!(agent.terminate().success());
}

/// `nobody`: the other user of these tests.
const OTHER_UID: u32 = 65534;

/// The directory's entries, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// The regular files in `dir` whose content contains `secret`.
fn files_holding(dir: &Path, secret: &str) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|name| {
            let path = dir.join(name);
            std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file())
                && std::fs::read_to_string(&path).is_ok_and(|text| text.contains(secret))
        })
        .collect()
}
