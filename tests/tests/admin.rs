//! End to end: `regent admin` against the emulator's Sentinel-shaped admin
//! API: size, create, list, disable, redeem until exhausted, raise the count,
//! list who redeemed, revoke, delete — with credentials from the environment
//! or a file, never from an argument.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt as _;
use std::process::Output;
use std::time::Duration;

use regent_proto::ErrorCode;
use regent_tests::{AgentHome, AgentProc, EmulatorProc, code, exit, regent, text, wait_until};
use serde_json::Value;

fn admin(emulator: &EmulatorProc, args: &[&str]) -> Output {
    let mut all = vec!["admin"];
    all.extend_from_slice(args);
    regent(
        &all,
        None,
        &[
            ("REGENT_ADMIN_URL", emulator.url.as_str()),
            ("REGENT_ADMIN_USER", "admin"),
            ("REGENT_ADMIN_PASSWORD", "admin"),
        ],
    )
}

fn admin_json(emulator: &EmulatorProc, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = admin(emulator, &all);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One device: an agent with its own state directory (its own identifier).
struct Device {
    home: AgentHome,
    _agent: AgentProc,
}

impl Device {
    fn start(emulator: &EmulatorProc) -> Device {
        let home = AgentHome::new(&emulator.url, "");
        let agent = AgentProc::start(&home);
        Device {
            home,
            _agent: agent,
        }
    }

    fn enroll(&self, registration: &str) -> Output {
        self.home
            .regent(&["enroll"], Some(&format!("{registration}\n")))
    }
}

#[test]
fn size_create_list_disable_exhaust_raise_investigate_revoke_delete() {
    let emulator = EmulatorProc::start(2);

    // Size: 100 devices × 2 instances = 200 counts (dry run: no server).
    let size = regent(
        &[
            "admin",
            "token",
            "create",
            "--devices",
            "100",
            "--instances-per-device",
            "2",
            "--dry-run",
            "--json",
        ],
        None,
        &[],
    );
    assert!(size.status.success(), "{}", text(&size));
    let size: Value = serde_json::from_slice(&size.stdout).unwrap();
    assert_eq!(size["count"], 200);
    let big = admin_json(
        &emulator,
        &[
            "token",
            "create",
            "--devices",
            "100",
            "--instances-per-device",
            "2",
            "--expires",
            "2099-12-31",
        ],
    );
    assert_eq!(big["count"], 200);
    assert_eq!(big["expiryDate"], "2099-12-31T23:59:59Z");

    // Create a token for two devices; the value alone is on stdout.
    let created = admin(
        &emulator,
        &[
            "token",
            "create",
            "--devices",
            "2",
            "--expires",
            "7d",
            "--ref-id1",
            "site-a",
        ],
    );
    assert!(created.status.success(), "{}", text(&created));
    let registration = stdout(&created).trim().to_owned();
    assert!(
        registration.len() > 20 && !registration.contains(' '),
        "{registration}"
    );
    assert!(
        String::from_utf8_lossy(&created.stderr)
            .contains("count 2 (2 devices × 1 instance per device)"),
        "{}",
        text(&created)
    );

    // List: both tokens, never their values.
    let listed = admin_json(&emulator, &["token", "list"]);
    let records = listed.as_array().unwrap();
    assert_eq!(records.len(), 2);
    assert!(!listed.to_string().contains(&registration));
    let record = records.iter().find(|r| r["refId1"] == "site-a").unwrap();
    let id = record["id"].as_str().unwrap().to_owned();
    assert_eq!(record["count"], 2);
    assert_eq!(record["usedCount"], 0);
    assert_eq!(record["state"], "ENABLED");
    let table = admin(&emulator, &["token", "list"]);
    let table = stdout(&table);
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains(&id) && table.contains("0/2"), "{table}");
    assert!(!table.contains(&registration));

    // Disabled: redemption refused with its own code.
    let out = admin(&emulator, &["token", "disable", &id]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("DISABLED"), "{}", text(&out));
    let devices: Vec<Device> = (0..3).map(|_| Device::start(&emulator)).collect();
    let out = devices[0].enroll(&registration);
    assert_eq!(
        code(&out),
        exit(ErrorCode::RegistrationTokenDisabled),
        "{}",
        text(&out)
    );
    let out = admin(&emulator, &["token", "enable", &id]);
    assert!(out.status.success(), "{}", text(&out));

    // Redeem until exhausted: two devices fit, the third is refused.
    for device in &devices[..2] {
        let out = device.enroll(&registration);
        assert!(out.status.success(), "{}", text(&out));
    }
    let out = devices[2].enroll(&registration);
    assert_eq!(
        code(&out),
        exit(ErrorCode::RegistrationTokenExhausted),
        "{}",
        text(&out)
    );
    let shown = admin_json(&emulator, &["token", "show", &id]);
    assert_eq!(shown["usedCount"], 2);

    // Investigate the depleted count: who redeemed, from which host and user.
    let redeemers = admin_json(
        &emulator,
        &["auth-token", "list", "--registration-token", &id],
    );
    let redeemers = redeemers.as_array().unwrap().clone();
    assert_eq!(redeemers.len(), 2);
    for r in &redeemers {
        assert!(
            r["identifier"].as_str().is_some_and(|i| i.ends_with("-0")),
            "{r}"
        );
        assert!(r["fqdn"].as_str().is_some_and(|h| !h.is_empty()), "{r}");
        assert!(r["creationDate"].as_str().is_some(), "{r}");
        assert_eq!(r["registrationTokenId"], id.as_str());
    }
    let table = stdout(&admin(&emulator, &["auth-token", "list"]));
    for header in ["IDENTIFIER", "HOST", "USER", "MAC", "CREATED", "LAST USE"] {
        assert!(table.lines().next().unwrap().contains(header), "{table}");
    }
    assert!(
        table.contains(redeemers[0]["identifier"].as_str().unwrap()),
        "{table}"
    );

    // Raise the count: the third device fits now.
    let raised = admin_json(&emulator, &["token", "update", &id, "--count", "3"]);
    assert_eq!(raised["count"], 3);
    let out = devices[2].enroll(&registration);
    assert!(out.status.success(), "{}", text(&out));

    // Revoke the second device's auth token: its agent turns REVOKED at the
    // next renewal (2-second tokens), and `regent status` says so.
    let status = devices[1].home.regent(&["status", "--json"], None);
    assert!(status.status.success(), "{}", text(&status));
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    let identifier = status["slots"][0]["identifier"]
        .as_str()
        .unwrap()
        .to_owned();
    let victim = redeemers
        .iter()
        .find(|r| r["identifier"] == identifier.as_str())
        .unwrap_or_else(|| panic!("{identifier} not among {redeemers:?}"));
    let out = admin(
        &emulator,
        &["auth-token", "revoke", victim["id"].as_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    wait_until(
        Duration::from_secs(20),
        "the revoked device to fail",
        || {
            code(&devices[1].home.regent(&["token", "--min-valid", "1"], None))
                == exit(ErrorCode::Revoked)
        },
    );
    let status = devices[1].home.regent(&["status"], None);
    assert_eq!(code(&status), exit(ErrorCode::Revoked), "{}", text(&status));
    // The others are untouched.
    for device in [&devices[0], &devices[2]] {
        let out = device.home.regent(&["token", "--min-valid", "1"], None);
        assert!(out.status.success(), "{}", text(&out));
    }
    let remaining = admin_json(&emulator, &["auth-token", "list"]);
    assert_eq!(remaining.as_array().unwrap().len(), 2);

    // Delete the registration token: gone from the list, devices keep working.
    let out = admin(&emulator, &["token", "delete", &id]);
    assert!(out.status.success(), "{}", text(&out));
    let listed = admin_json(&emulator, &["token", "list"]);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["id"] != id.as_str())
    );
    assert!(
        devices[2]
            .home
            .regent(&["token", "--min-valid", "1"], None)
            .status
            .success()
    );
}

#[test]
fn admin_credentials_never_come_from_arguments() {
    let emulator = EmulatorProc::start(300);
    let url = emulator.url.as_str();
    // No such option: the password cannot be passed on the command line.
    let out = regent(
        &[
            "admin",
            "--url",
            url,
            "--password",
            "admin",
            "token",
            "list",
        ],
        None,
        &[],
    );
    assert_eq!(code(&out), exit(ErrorCode::BadRequest), "{}", text(&out));

    // A credentials file readable by others is refused; 0600 works.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin.toml");
    std::fs::write(&file, "user = \"admin\"\npassword = \"admin\"\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let file_arg = file.to_str().unwrap();
    let list = [
        "admin",
        "--url",
        url,
        "--credentials-file",
        file_arg,
        "token",
        "list",
    ];
    let out = regent(&list, None, &[]);
    assert_eq!(code(&out), exit(ErrorCode::Config), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("0644"),
        "{}",
        text(&out)
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = regent(&list, None, &[]);
    assert!(out.status.success(), "{}", text(&out));

    // A wrong password: PERMISSION_DENIED, and the password is not echoed.
    let out = regent(
        &["admin", "token", "list"],
        None,
        &[
            ("REGENT_ADMIN_URL", url),
            ("REGENT_ADMIN_USER", "admin"),
            ("REGENT_ADMIN_PASSWORD", "wrong-password-xyz"),
        ],
    );
    assert_eq!(
        code(&out),
        exit(ErrorCode::PermissionDenied),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("wrong-password-xyz"));

    // Nothing at all: CONFIG, naming the three ways.
    let out = regent(
        &["admin", "token", "list"],
        None,
        &[
            ("REGENT_ADMIN_URL", url),
            ("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent"),
        ],
    );
    assert_eq!(code(&out), exit(ErrorCode::Config), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--credentials-file")
            && err.contains("REGENT_ADMIN_PASSWORD")
            && err.contains("regent admin login"),
        "{err}"
    );
}

/// Issue 18 item 14: `--output` creates a new `0600` file (`O_EXCL`,
/// `O_NOFOLLOW`) and checks the name before the token exists: an existing
/// file or a symlink is refused with no count minted and nothing written.
#[test]
fn output_goes_only_to_a_new_private_file() {
    let emulator = EmulatorProc::start(300);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site-a.token");
    let shown = path.to_str().unwrap();
    let out = admin(
        &emulator,
        &["token", "create", "--devices", "1", "--output", shown],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).is_empty(), "the value went to the file");
    let value = std::fs::read_to_string(&path).unwrap();
    assert!(value.trim().len() > 20, "{value}");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    let created = admin_json(&emulator, &["token", "list"])
        .as_array()
        .unwrap()
        .len();

    // The same name again: refused before anything is created.
    let again = admin(
        &emulator,
        &["token", "create", "--devices", "1", "--output", shown],
    );
    assert_eq!(
        code(&again),
        exit(ErrorCode::BadRequest),
        "{}",
        text(&again)
    );
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{}",
        text(&again)
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), value);

    // A symlink (even a dangling one) is never written through.
    let target = dir.path().join("elsewhere");
    let link = dir.path().join("link.token");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let through = admin(
        &emulator,
        &[
            "token",
            "create",
            "--devices",
            "1",
            "--output",
            link.to_str().unwrap(),
        ],
    );
    assert_eq!(
        code(&through),
        exit(ErrorCode::BadRequest),
        "{}",
        text(&through)
    );
    assert!(!target.exists());
    assert_eq!(
        admin_json(&emulator, &["token", "list"])
            .as_array()
            .unwrap()
            .len(),
        created,
        "no registration token was minted for a refused --output"
    );
}

/// `regent emulator mint|auth-tokens|revoke` were folded into `regent admin`:
/// an old script gets a refusal naming the command that replaced it.
#[test]
fn the_emulators_old_admin_commands_name_their_replacements() {
    for (old, new) in [
        ("mint", "regent admin registration-token create"),
        ("auth-tokens", "regent admin auth-token list"),
        ("revoke", "regent admin auth-token revoke"),
    ] {
        let out = regent(
            &[
                "emulator",
                old,
                "--url",
                "http://127.0.0.1:9",
                "--count",
                "3",
            ],
            None,
            &[],
        );
        assert_eq!(code(&out), exit(ErrorCode::BadRequest), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(new),
            "{old}: {}",
            text(&out)
        );
    }
}
