//! End to end: the provisioning drop-in directory. A registration-token file
//! is redeemed once and deleted; a loose one is refused unread; a failed one
//! is set aside with a reason file.
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
    assert!(dir.join("wrong.token.failed").exists());

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
fn a_loose_provisioning_directory_is_refused() {
    let emulator = EmulatorProc::start(300);
    let (home, dir) = provisioning_home(&emulator);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let registration = emulator.mint(1);
    drop_token(&dir, "token", &registration, 0o600);
    let _agent = AgentProc::start(&home);
    wait_until(WAIT, "token.refused.reason", || {
        dir.join("token.refused.reason").exists()
    });
    let reason = std::fs::read_to_string(dir.join("token.refused.reason")).unwrap();
    assert!(reason.contains("0755"), "{reason}");
    assert!(reason.contains("chmod 0700"), "{reason}");
    assert_eq!(used_counts(&emulator), 0);
}
