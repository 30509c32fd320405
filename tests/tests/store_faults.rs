//! A full disk and a read-only state directory (issue 9, crash matrix): the real
//! agent reports `STORE_UNAVAILABLE` with what to do, corrupts nothing
//! (`state.json` and the secrets file still parse and hold the last stored
//! credential) and recovers on its own once the space returns — renewals
//! without a restart, enrollment when the user reruns it.
//!
//! The faults are real: a small tmpfs mounted over the state directory, filled
//! with a ballast file (ENOSPC) or remounted read-only (EROFS). Tests run as
//! root, so permissions cannot stop a write. Where mounting is not allowed the
//! full-disk case falls back to a file-size limit on the agent process
//! (`prlimit`, with SIGXFSZ ignored so the write fails with EFBIG instead of
//! killing it); the read-only cases are then skipped with a printed reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use regent_proto::ErrorCode;
use regent_proto::status::SlotState;
use regent_tests::crash::{EmulatorControl, Home, Profile, StoreChoice, Tmpfs, temp_files};
use regent_tests::{AgentProc, EmulatorProc, regent, text};

const LIFESPAN: u64 = 2;
const WAIT: Duration = Duration::from_secs(20);
/// Big enough for the agent's files, small enough to fill at once.
const TMPFS_KIB: u64 = 512;
const BALLAST: &str = "ballast";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Full,
    ReadOnly,
}

/// A fault on the state directory that can be switched on and off.
enum Fault {
    Full(Tmpfs),
    ReadOnly(Tmpfs),
    /// Fallback without mounts: `RLIMIT_FSIZE` on the agent process.
    FileSizeLimit,
}

impl Fault {
    /// Mounts a tmpfs at `state`, or falls back (full disk) or returns `None`
    /// after saying loudly why the test cannot run here.
    fn prepare(kind: Kind, state: &Path) -> Option<Fault> {
        // REGENT_TEST_NO_MOUNT=1 tries the fallback where mounting works too.
        let mounted = if std::env::var_os("REGENT_TEST_NO_MOUNT").is_some() {
            Err("REGENT_TEST_NO_MOUNT is set".to_owned())
        } else {
            Tmpfs::mount(state, TMPFS_KIB)
        };
        match mounted {
            Ok(tmpfs) => Some(match kind {
                Kind::Full => Fault::Full(tmpfs),
                Kind::ReadOnly => Fault::ReadOnly(tmpfs),
            }),
            Err(why) => match kind {
                Kind::Full if have("prlimit") => {
                    eprintln!(
                        "!!! store_faults: cannot mount a tmpfs ({why}); the full disk is \
                         replaced by a file-size limit on the agent (EFBIG)"
                    );
                    std::fs::create_dir_all(state).unwrap();
                    Some(Fault::FileSizeLimit)
                }
                _ => {
                    eprintln!(
                        "!!! SKIPPED store_faults ({kind:?}): cannot mount a tmpfs here ({why}) \
                         and nothing else makes a write fail for root"
                    );
                    None
                }
            },
        }
    }

    /// Shell commands the agent must start under.
    fn wrapper(&self) -> Option<String> {
        matches!(self, Fault::FileSizeLimit).then(|| "trap '' XFSZ".to_owned())
    }

    fn start(&self, agent: &AgentProc) {
        match self {
            Fault::Full(tmpfs) => {
                tmpfs.fill(BALLAST);
            }
            Fault::ReadOnly(tmpfs) => tmpfs.set_read_only(true),
            Fault::FileSizeLimit => prlimit(agent, "1:unlimited"),
        }
    }

    fn stop(&self, agent: &AgentProc) {
        match self {
            Fault::Full(tmpfs) => std::fs::remove_file(tmpfs.path.join(BALLAST)).unwrap(),
            Fault::ReadOnly(tmpfs) => tmpfs.set_read_only(false),
            Fault::FileSizeLimit => prlimit(agent, "unlimited:unlimited"),
        }
    }

    /// What the error must say: the OS error and how to fix it.
    fn expected(&self) -> [&'static str; 2] {
        match self {
            Fault::Full(_) => ["No space left on device", "is full: free some space there"],
            Fault::ReadOnly(_) => ["Read-only file system", "remount it read-write"],
            Fault::FileSizeLimit => ["File too large", "ulimit -f"],
        }
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn prlimit(agent: &AgentProc, limit: &str) {
    let status = Command::new("prlimit")
        .arg("--pid")
        .arg(agent.child.id().to_string())
        .arg(format!("--fsize={limit}"))
        .status()
        .unwrap();
    assert!(status.success(), "prlimit --fsize={limit} failed");
}

/// An emulator with one registration token, and an agent home whose state
/// directory carries `kind` of fault.
struct Setup {
    emulator: EmulatorProc,
    token: String,
    fault: Fault,
    home: Home,
    // Dropped last: the mount point lives in it.
    _dirs: tempfile::TempDir,
}

impl Setup {
    fn new(kind: Kind) -> Option<Setup> {
        Setup::with_profile(kind, false)
    }

    /// With `oauth2`, the agent speaks the OAuth2 profile and `token` is the
    /// client secret.
    fn with_profile(kind: Kind, oauth2: bool) -> Option<Setup> {
        let dirs = tempfile::tempdir().unwrap();
        let state = dirs.path().join("state");
        let fault = Fault::prepare(kind, &state)?;
        let emulator = EmulatorProc::start(LIFESPAN);
        let (profile, token) = if oauth2 {
            let secret = "store-faults-client-secret".to_owned();
            emulator.create_oauth2_client("store-faults", &secret, LIFESPAN, true);
            let profile = Profile::OAuth2 {
                client_id: "store-faults".into(),
            };
            (profile, secret)
        } else {
            (Profile::Sentinel, emulator.mint(5))
        };
        let mut home = Home::new(
            &emulator.url,
            &profile,
            &StoreChoice::File,
            Some(&state),
            "",
        );
        home.wrapper = fault.wrapper();
        Some(Setup {
            emulator,
            token,
            fault,
            home,
            _dirs: dirs,
        })
    }

    fn secrets(&self) -> PathBuf {
        self.home.state.join("secrets.json")
    }

    fn state_file(&self) -> PathBuf {
        self.home.state.join("state.json")
    }
}

fn wait_slot(
    home: &Home,
    what: &str,
    mut done: impl FnMut(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = home.slot0();
        if done(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; slot 0: {s}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The stored credential's refresh token; panics unless both files parse.
fn stored_refresh_token(setup: &Setup) -> String {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(setup.state_file()).unwrap())
            .expect("state.json parses");
    assert!(state["slots"]["0"]["identifier"].is_string(), "{state}");
    let secrets: serde_json::Value =
        serde_json::from_slice(&std::fs::read(setup.secrets()).unwrap())
            .expect("secrets.json parses");
    let credential: serde_json::Value =
        serde_json::from_str(secrets["slot-0.credential"].as_str().unwrap())
            .expect("the stored credential parses");
    credential["refresh_token"].as_str().unwrap().to_owned()
}

fn assert_names_the_fix(setup: &Setup, message: &str) {
    for needle in setup.fault.expected() {
        assert!(
            message.contains(needle),
            "{needle:?} missing from: {message}"
        );
    }
}

/// Renewals meet a full disk (or a read-only state directory): the slot reports
/// `STORE_UNAVAILABLE` with the fix, clients are told so once no cached token
/// will do, the files keep the last stored credential, and renewals succeed
/// again as soon as the space returns — without a restart. After that the
/// stored credential is the live one (a restart renews with it).
fn renewals_survive(kind: Kind) {
    let Some(setup) = Setup::new(kind) else {
        return;
    };
    let home = &setup.home;
    let agent = home.start(None);
    let client = home.client();
    client.enroll(setup.token.clone(), false).unwrap();
    client.token(Duration::from_secs(1)).unwrap(); // demand: renew ahead
    wait_slot(home, "steady renewals", |s| {
        s["renewals_ok"].as_u64().unwrap_or(0) >= 2
    });

    setup.fault.start(&agent);
    let failed = wait_slot(home, "a renewal that cannot be stored", |s| {
        s["last_error_code"] == "STORE_UNAVAILABLE"
    });
    let message = failed["last_error"].as_str().unwrap();
    assert_names_the_fix(&setup, message);
    assert!(
        message.contains(&setup.secrets().display().to_string()),
        "{message}"
    );
    assert!(!message.contains(&setup.token), "a secret in: {message}");

    // Nothing corrupted: both files parse and keep the last stored credential,
    // however many renewals fail.
    let secrets_before = std::fs::read(setup.secrets()).unwrap();
    let state_before = std::fs::read(setup.state_file()).unwrap();
    let stored_before = stored_refresh_token(&setup);
    let failures = failed["renewals_failed"].as_u64().unwrap();
    wait_slot(home, "more failed renewals", |s| {
        s["renewals_failed"].as_u64().unwrap() >= failures + 2
    });
    assert_eq!(std::fs::read(setup.secrets()).unwrap(), secrets_before);
    assert_eq!(std::fs::read(setup.state_file()).unwrap(), state_before);
    assert_eq!(stored_refresh_token(&setup), stored_before);
    assert_eq!(temp_files(&home.state), Vec::<String>::new());

    // A client that needs a token is told why and what to do, once the cached
    // token will no longer do.
    let deadline = Instant::now() + WAIT;
    let error = loop {
        match client.token(Duration::from_secs(1)) {
            Err(e) => break e,
            Ok(_) => {
                assert!(Instant::now() < deadline, "tokens kept coming");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    // Once no token is left at all the code itself is STORE_UNAVAILABLE.
    let deadline = Instant::now() + WAIT;
    let error = if error.code == ErrorCode::StoreUnavailable {
        error
    } else {
        assert_eq!(error.code, ErrorCode::Unavailable, "{error:?}");
        assert!(
            error.message.contains("STORE_UNAVAILABLE"),
            "{}",
            error.message
        );
        loop {
            let e = client.token(Duration::from_secs(1)).unwrap_err();
            if e.code == ErrorCode::StoreUnavailable || Instant::now() > deadline {
                break e;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(error.code, ErrorCode::StoreUnavailable, "{error:?}");
    assert_names_the_fix(&setup, &error.message);
    assert!(error.retry_after.is_some(), "{error:?}");
    println!(
        "{kind:?}: the reply to a client: {} ({})",
        error.message, error.code
    );
    let cli = regent(
        &["token", "--min-valid", "1"],
        None,
        &[("REGENT_SOCKET", home.socket.to_str().unwrap())],
    );
    let cli_text = text(&cli);
    assert!(!cli.status.success(), "{cli_text}");
    assert!(cli_text.contains("STORE_UNAVAILABLE"), "{cli_text}");
    assert_names_the_fix(&setup, &cli_text);

    // The space returns: renewals succeed again without a restart.
    let ok_before = home.slot0()["renewals_ok"].as_u64().unwrap();
    setup.fault.stop(&agent);
    wait_slot(home, "renewals after the space returned", |s| {
        s["state"] == "active"
            && s["last_error_code"].is_null()
            && s["renewals_ok"].as_u64().unwrap() > ok_before
    });
    let token = client.token(Duration::from_secs(1)).unwrap();
    assert_eq!(setup.emulator.introspect(token.secret())["active"], true);
    assert_ne!(
        stored_refresh_token(&setup),
        stored_before,
        "the renewed credential was stored"
    );

    // The stored credential is the live one: a restart renews with it.
    assert!(agent.terminate().success());
    let agent = home.start(None);
    let client = home.client();
    client.token(Duration::from_secs(1)).unwrap();
    wait_slot(home, "a renewal after the restart", |s| {
        s["state"] == "active" && s["renewals_ok"].as_u64().unwrap_or(0) >= 1
    });
    let token = client.token(Duration::from_secs(1)).unwrap();
    assert_eq!(setup.emulator.introspect(token.secret())["active"], true);
    assert_eq!(setup.emulator.used_counts(), 1);
    assert_eq!(setup.emulator.counters()["activeSessions"], 1);
    assert!(agent.terminate().success());
}

#[test]
fn full_disk_during_renewals_reports_store_unavailable_and_recovers_without_restart() {
    renewals_survive(Kind::Full);
}

#[test]
fn read_only_state_dir_during_renewals_reports_store_unavailable_and_recovers_without_restart() {
    renewals_survive(Kind::ReadOnly);
}

/// `regent enroll` on a full or read-only state directory: `STORE_UNAVAILABLE`
/// with the fix, before anything is sent (no count consumed); rerun once the
/// space returns, it enrolls with one count.
fn enrollment_refused_cleanly(kind: Kind) {
    let Some(setup) = Setup::new(kind) else {
        return;
    };
    let home = &setup.home;
    let agent = home.start(None);
    let state_before = std::fs::read(setup.state_file()).unwrap();
    setup.fault.start(&agent);
    let error = home
        .client()
        .enroll(setup.token.clone(), false)
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::StoreUnavailable, "{error:?}");
    assert_names_the_fix(&setup, &error.message);
    assert!(!error.message.contains(&setup.token));
    println!(
        "{kind:?}: the reply to `enroll`: {} ({})",
        error.message, error.code
    );
    assert_eq!(setup.emulator.used_counts(), 0);
    assert_eq!(setup.emulator.counters()["redemptions"], 0);
    assert_eq!(std::fs::read(setup.state_file()).unwrap(), state_before);
    let slot = home.slot0();
    assert_eq!(slot["pending_redemption"], false, "{slot}");
    assert_eq!(slot["state"], "unenrolled", "{slot}");

    setup.fault.stop(&agent);
    home.client().enroll(setup.token.clone(), false).unwrap();
    let token = home.client().token(Duration::from_secs(1)).unwrap();
    assert_eq!(setup.emulator.introspect(token.secret())["active"], true);
    assert_eq!(setup.emulator.used_counts(), 1);
    stored_refresh_token(&setup);
    assert!(agent.terminate().success());
}

#[test]
fn enrollment_on_a_full_disk_is_refused_before_anything_is_sent() {
    enrollment_refused_cleanly(Kind::Full);
}

#[test]
fn enrollment_on_a_read_only_state_dir_is_refused_before_anything_is_sent() {
    enrollment_refused_cleanly(Kind::ReadOnly);
}

/// The disk fills while the server redeems: the count is consumed but the
/// answer cannot be stored. `regent enroll` says `STORE_UNAVAILABLE`; the
/// pending redemption keeps retrying (replays, no count) and completes on its
/// own once the space returns — one count in all.
#[test]
fn disk_fills_during_redemption_and_the_agent_completes_it_when_space_returns() {
    let Some(setup) = Setup::new(Kind::Full) else {
        return;
    };
    let home = &setup.home;
    let agent = home.start(None);
    // The redemption waits at the server long enough to fill the disk meanwhile.
    setup
        .emulator
        .set_faults(r#"{"latencyMs": 1500, "routes": ["redeem"]}"#);
    let socket = home.socket.clone();
    let token = setup.token.clone();
    let enroll = std::thread::spawn(move || {
        regent_client::blocking::Client::connect(
            regent_client::ClientOptions::new("store-faults")
                .socket(&socket)
                .request_timeout(Duration::from_secs(60)),
        )
        .unwrap()
        .enroll(token, false)
    });
    // The pending marker and the registration token are durable before the
    // request goes out.
    regent_tests::wait_until(WAIT, "the pending marker", || {
        std::fs::read_to_string(setup.state_file()).is_ok_and(|t| t.contains("pending_since"))
            && std::fs::read_to_string(setup.secrets())
                .is_ok_and(|t| t.contains("slot-0.registration"))
    });
    setup.fault.start(&agent);
    setup.emulator.set_faults("{}");
    let error = enroll.join().unwrap().unwrap_err();
    assert_eq!(error.code, ErrorCode::StoreUnavailable, "{error:?}");
    assert_names_the_fix(&setup, &error.message);
    assert_eq!(setup.emulator.used_counts(), 1);
    let slot = home.slot0();
    assert_eq!(slot["pending_redemption"], true, "{slot}");

    setup.fault.stop(&agent);
    wait_slot(home, "the redemption to complete", |s| {
        s["state"] == "active" && s["pending_redemption"] == false
    });
    let token = home.client().token(Duration::from_secs(1)).unwrap();
    assert_eq!(setup.emulator.introspect(token.secret())["active"], true);
    assert_eq!(
        setup.emulator.used_counts(),
        1,
        "a second count was consumed"
    );
    assert_eq!(setup.emulator.auth_tokens().len(), 1);
    let secrets = std::fs::read_to_string(setup.secrets()).unwrap();
    assert!(!secrets.contains("slot-0.registration"), "{secrets}");
    assert!(agent.terminate().success());
}

/// An agent started on a read-only, empty state directory stops at once with
/// `STORE_UNAVAILABLE` naming the directory and the fix.
#[test]
fn agent_refuses_to_start_on_a_read_only_state_dir() {
    let Some(setup) = Setup::new(Kind::ReadOnly) else {
        return;
    };
    let Fault::ReadOnly(tmpfs) = &setup.fault else {
        unreachable!()
    };
    tmpfs.set_read_only(true);
    let mut agent = setup.home.spawn(None);
    let status = regent_tests::wait_timeout(&mut agent.child, WAIT);
    let log = agent.log_text();
    assert!(!status.success(), "{log}");
    assert_eq!(
        status.code(),
        Some(i32::from(ErrorCode::StoreUnavailable.number())),
        "{log}"
    );
    assert!(log.contains("Read-only file system"), "{log}");
    assert!(log.contains("remount it read-write"), "{log}");
    assert!(
        log.contains(&setup.home.state.display().to_string()),
        "{log}"
    );
}

/// OAuth2 enrollment on a full disk: `STORE_UNAVAILABLE`, the slot back to
/// unenrolled (not stuck enrolling), nothing stored; rerun once the space
/// returns, it enrolls.
#[test]
fn oauth2_enrollment_on_a_full_disk_is_refused_and_can_be_rerun() {
    let Some(setup) = Setup::with_profile(Kind::Full, true) else {
        return;
    };
    let home = &setup.home;
    let agent = home.start(None);
    setup.fault.start(&agent);
    let error = home
        .client()
        .enroll(setup.token.clone(), false)
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::StoreUnavailable, "{error:?}");
    assert_names_the_fix(&setup, &error.message);
    assert!(!error.message.contains(&setup.token));
    let slot = home.slot0();
    assert_eq!(slot["state"], "unenrolled", "{slot}");
    assert!(
        std::fs::read_to_string(setup.secrets()).is_err(),
        "nothing is stored"
    );

    setup.fault.stop(&agent);
    home.client().enroll(setup.token.clone(), false).unwrap();
    let token = home.client().token(Duration::from_secs(1)).unwrap();
    assert_eq!(
        setup.emulator.introspect(token.secret())["clientId"],
        "store-faults"
    );
    assert!(agent.terminate().success());
}

/// How a store is broken and repaired for [`nothing_rotates_while_unsaveable`].
struct StoreBreak<'a> {
    /// Makes every write to the store fail.
    break_it: Box<dyn FnMut() + 'a>,
    /// Repairs it (the agent is stopped by then).
    repair: Box<dyn FnMut() + 'a>,
    /// What the agent's message must say: the OS error, the fix, the place.
    fix: Vec<String>,
}

/// Renewals come due while the store cannot take a write; the agent is
/// stopped before the store is repaired, then restarted. Nothing may reach the
/// server meanwhile, clients get `STORE_UNAVAILABLE` with the fix once the
/// cached token is gone, and the stored credential must still work.
fn nothing_rotates_while_unsaveable(
    emulator: &EmulatorProc,
    token: &str,
    home: &Home,
    mut store: StoreBreak<'_>,
) {
    use regent_tests::procstat::UpstreamCounts;
    emulator.set_rotation(true);
    let agent = home.start(None);
    let client = home.client();
    client.enroll(token.to_owned(), false).unwrap();
    client.token(Duration::from_secs(1)).unwrap(); // demand: renew ahead
    wait_slot(home, "steady renewals", |s| {
        s["renewals_ok"].as_u64().unwrap_or(0) >= 2
    });
    let failures = |s: &serde_json::Value| s["renewals_failed"].as_u64().unwrap_or(0);
    let names_the_fix = |message: &str| {
        for needle in &store.fix {
            assert!(
                message.contains(needle.as_str()),
                "{needle:?} missing from: {message}"
            );
        }
    };

    // A fence: the server refuses every refresh while the store breaks, so no
    // renewal begun before the break can rotate after it.
    emulator.set_faults(
        r#"{"nextStatus": {"status": 503, "count": 1000000}, "routes": ["realm_token"]}"#,
    );
    let before = failures(&home.slot0());
    wait_slot(home, "a renewal the server refused", |s| {
        failures(s) > before
    });
    (store.break_it)();
    let after = failures(&home.slot0());
    // The second attempt to fail from here on began after the break.
    wait_slot(home, "two attempts on the broken store", |s| {
        failures(s) >= after + 2
    });
    let at_fault = UpstreamCounts::fetch(&emulator.url);
    emulator.set_faults("{}");

    // Renewals keep coming due; none reaches the server.
    let now = failures(&home.slot0());
    let slot = wait_slot(home, "renewals held back by the store", |s| {
        failures(s) >= now + 3 && s["last_error_code"] == "STORE_UNAVAILABLE"
    });
    let during = UpstreamCounts::fetch(&emulator.url);
    assert_eq!(
        during.all_requests("realm_token"),
        at_fault.all_requests("realm_token"),
        "renewals were sent while the store could not take their answer: {}",
        during.raw
    );
    assert_eq!(during.refreshes(), at_fault.refreshes());
    let message = slot["last_error"].as_str().unwrap();
    names_the_fix(message);
    assert!(message.contains("was not sent"), "{message}");
    assert!(!message.contains(token), "a secret in: {message}");
    println!("the slot's error while the store is broken: {message}");
    // Once the cached token is gone, clients are told why and what to do.
    let deadline = Instant::now() + WAIT;
    let error = loop {
        match client.token(Duration::from_secs(1)) {
            Err(e) if e.code == ErrorCode::StoreUnavailable => break e,
            _ => {
                assert!(Instant::now() < deadline, "no STORE_UNAVAILABLE reply");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    names_the_fix(&error.message);
    assert!(error.retry_after.is_some(), "{error:?}");
    let after_reply = UpstreamCounts::fetch(&emulator.url);
    assert_eq!(
        after_reply.all_requests("realm_token"),
        at_fault.all_requests("realm_token"),
        "{}",
        after_reply.raw
    );

    // Stopped while the store is still broken; repaired; restarted.
    assert!(agent.terminate().success());
    (store.repair)();
    let agent = home.start(None);
    let client = home.client();
    let token = client
        .token(Duration::from_secs(1))
        .expect("the stored credential still works after the restart");
    assert_eq!(emulator.introspect(token.secret())["active"], true);
    let slot = wait_slot(home, "renewals with the stored credential", |s| {
        s["state"] == "active" && s["renewals_ok"].as_u64().unwrap_or(0) >= 2
    });
    assert!(slot["last_error_code"].is_null(), "{slot}");
    assert_eq!(emulator.used_counts(), 1);
    assert_eq!(emulator.counters()["activeSessions"], 1);
    assert!(agent.terminate().success());
}

/// Regression (issue 18, item 2): with the state directory read-only, every
/// renewal that came due rotated the refresh token at the server while the
/// new one could not be stored (the engine's backoff retried, rotating again);
/// after a restart the stored token was stale and the server answered
/// `REVOKED` (reuse detected). Now a renewal is sent only after a write to the
/// store succeeded: while the store is read-only nothing reaches the server,
/// the cached token is served until it expires, clients then get
/// `STORE_UNAVAILABLE` with the fix, and the credential still works after the
/// agent was stopped on the read-only store and restarted on a restored one.
#[test]
fn renewals_due_on_a_read_only_store_rotate_nothing_and_the_credential_survives_a_restart() {
    let Some(setup) = Setup::new(Kind::ReadOnly) else {
        return;
    };
    let Fault::ReadOnly(tmpfs) = &setup.fault else {
        unreachable!("a read-only fault needs a tmpfs")
    };
    let mut fix: Vec<String> = setup
        .fault
        .expected()
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    fix.push(setup.secrets().display().to_string());
    nothing_rotates_while_unsaveable(
        &setup.emulator,
        &setup.token,
        &setup.home,
        StoreBreak {
            break_it: Box::new(|| tmpfs.set_read_only(true)),
            repair: Box::new(|| tmpfs.set_read_only(false)),
            fix,
        },
    );
}

/// The same with the OS keychain locked (a real Secret Service, locked over
/// D-Bus as a desktop's screen lock does; a headless keyring can only be
/// unlocked by restarting it with its password).
#[test]
fn renewals_due_on_a_locked_keychain_rotate_nothing_and_the_credential_survives_a_restart() {
    let Some(keyring) = regent_tests::crash::Keyring::start() else {
        eprintln!(
            "!!! SKIPPED: no dbus-daemon or gnome-keyring-daemon here \
             (apt-get install dbus gnome-keyring)"
        );
        return;
    };
    let keyring = std::cell::RefCell::new(keyring);
    let emulator = EmulatorProc::start(LIFESPAN);
    let token = emulator.mint(5);
    let mut home = Home::new(
        &emulator.url,
        &Profile::Sentinel,
        &StoreChoice::Keychain("regent-store-faults".into()),
        None,
        "",
    );
    home.env = keyring.borrow().env();
    nothing_rotates_while_unsaveable(
        &emulator,
        &token,
        &home,
        StoreBreak {
            break_it: Box::new(|| keyring.borrow().lock()),
            repair: Box::new(|| keyring.borrow_mut().restart_unlocked()),
            fix: vec![
                "locked".into(),
                "OS keychain (service regent-store-faults)".into(),
            ],
        },
    );
}

/// A client of `home` that names itself instance `name` (per-instance mode).
fn instance_client(home: &Home, name: &str) -> regent_client::blocking::Client {
    regent_client::blocking::Client::connect(
        regent_client::ClientOptions::new("store-faults")
            .instance(name)
            .socket(&home.socket)
            .connect_timeout(Duration::from_secs(10))
            .request_timeout(Duration::from_secs(30)),
    )
    .unwrap()
}

/// Regression (issue 18, item 14): in per-instance mode one slot's stored
/// credential that cannot be read stopped the whole agent at start, so every
/// instance lost its token. Now that slot alone answers `STORE_UNAVAILABLE`
/// (naming the slot, the entry, the file and the fix) and the others serve.
#[test]
fn an_unreadable_slot_credential_stops_only_that_slot() {
    let emulator = EmulatorProc::start(300);
    let home = Home::new(
        &emulator.url,
        &Profile::Sentinel,
        &StoreChoice::File,
        None,
        "[instances]\nmode = \"per-instance\"\nmax = 4\nlease_grace = 1\n",
    );
    let agent = home.start(None);
    let admin = home.client();
    admin.enroll(emulator.mint(5), false).unwrap();
    let first: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|name| {
            let c = instance_client(&home, name);
            c.token(Duration::from_secs(1)).unwrap();
            c
        })
        .collect();
    let status = admin.status().unwrap();
    let active = |n: u32| {
        status
            .slots
            .iter()
            .any(|s| s.slot == n && s.state == SlotState::Active)
    };
    assert!(active(0) && active(1) && active(2), "{status:?}");
    drop(first);
    drop(admin);
    assert!(agent.terminate().success());

    // Slot 1's entry in the secrets file is damaged.
    let secrets = home.state.join("secrets.json");
    let mut entries: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&secrets).unwrap()).unwrap();
    entries["slot-1.credential"] = serde_json::Value::from("{\"refresh_token\": [damaged");
    std::fs::write(&secrets, serde_json::to_vec(&entries).unwrap()).unwrap();

    let agent = home.start(None);
    let status = home.client().status().unwrap();
    let slot1 = status.slots.iter().find(|s| s.slot == 1).unwrap();
    assert_eq!(
        slot1.last_error_code,
        Some(ErrorCode::StoreUnavailable),
        "{slot1:?}"
    );
    let message = slot1.last_error.as_deref().unwrap();
    for needle in [
        "slot 1",
        "slot-1.credential",
        &secrets.display().to_string(),
        "regent unenroll",
    ] {
        assert!(
            message.contains(needle),
            "{needle:?} missing from: {message}"
        );
    }
    // Every instance gets a slot; only the one leased slot 1 is refused.
    let clients: Vec<_> = ["w", "x", "y", "z"]
        .iter()
        .map(|name| instance_client(&home, name))
        .collect();
    let mut refused = Vec::new();
    let mut served = 0;
    for c in &clients {
        match c.token(Duration::from_secs(1)) {
            Ok(token) => {
                assert_eq!(emulator.introspect(token.secret())["active"], true);
                served += 1;
            }
            Err(e) => refused.push(e),
        }
    }
    assert_eq!(served, 3, "{refused:?}");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].code, ErrorCode::StoreUnavailable);
    assert!(
        refused[0].message.contains("slot 1"),
        "{}",
        refused[0].message
    );
    assert!(
        !refused[0].message.contains("damaged"),
        "{}",
        refused[0].message
    );
    // The damaged entry was left for the administrator, not overwritten.
    let entries: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&secrets).unwrap()).unwrap();
    assert_eq!(entries["slot-1.credential"], "{\"refresh_token\": [damaged");
    drop(clients);
    assert!(agent.terminate().success());
}
