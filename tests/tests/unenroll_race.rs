//! `unenroll` while a background redemption is in flight (issue 18, item 9):
//! the redemption's answer arrived after unenroll had returned and was
//! stored — a count spent and a credential kept on a device its owner had
//! just unenrolled. After `unenroll` returns, nothing is stored.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use regent_proto::ErrorCode;
use regent_proto::status::SlotState;
use regent_tests::crash::{EmulatorControl, Home, Profile, StoreChoice, wait_for_crash_point};
use regent_tests::{EmulatorProc, code, regent, regent_bin, text, wait_timeout, wait_until};

fn cli(home: &Home, args: &[&str]) -> std::process::Output {
    regent(
        args,
        None,
        &[("REGENT_SOCKET", home.socket.to_str().unwrap())],
    )
}

/// Log lines that say how the in-flight redemption ended.
const DROPPED: &str = "a redemption answered after `regent unenroll`";
const NOT_SENT: &str = "redemption not sent: the device was unenrolled meanwhile";
/// What the old agent logged when it stored the late answer.
const STORED: &str = "enrolled: registration token redeemed";

#[test]
fn a_redemption_answered_after_unenroll_is_dropped_not_stored() {
    let emulator = EmulatorProc::start(300);
    let home = Home::new(
        &emulator.url,
        &Profile::Sentinel,
        &StoreChoice::File,
        None,
        "",
    );
    let registration = emulator.mint(2);

    // A redemption interrupted after its marker and registration token were
    // stored: the next start resumes it in the background.
    let mut agent = home.start(Some("before-redeem"));
    let mut enroll = Command::new(regent_bin())
        .arg("enroll")
        .env("REGENT_SOCKET", &home.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = enroll.stdin.take().unwrap();
        stdin.write_all(registration.as_bytes()).unwrap();
    }
    wait_for_crash_point(&mut agent, "before-redeem", Duration::from_secs(30))
        .expect("the agent reaches before-redeem");
    agent.kill();
    wait_timeout(&mut enroll, Duration::from_secs(30));

    // The server takes 3 s to answer the resumed redemption.
    emulator.set_faults(r#"{"latencyMs":3000,"routes":["redeem"]}"#);
    let agent = home.start(None);
    wait_until(
        Duration::from_secs(20),
        "the resumed redemption under way",
        || home.slot0()["state"] == "enrolling",
    );
    let out = cli(&home, &["unenroll"]);
    assert!(out.status.success(), "{}", text(&out));

    // Wait until the agent has dealt with the late answer.
    let deadline = Instant::now() + Duration::from_secs(30);
    let outcome = loop {
        let log = agent.log_text();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains(DROPPED) || l.contains(NOT_SENT) || l.contains(STORED))
        {
            break line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the redemption never ended; the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("the in-flight redemption ended: {outcome}");
    emulator.set_faults("{}");

    // Nothing was kept: no token, no credential, no registration token.
    let out = cli(&home, &["token", "--min-valid", "1"]);
    assert_eq!(
        code(&out),
        i32::from(ErrorCode::NotEnrolled.number()),
        // stderr only: on failure stdout would hold the token.
        "a token after unenroll ({outcome}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let slot = home.slot0();
    assert_eq!(slot["state"], "unenrolled", "{slot}");
    assert_eq!(slot["pending_redemption"], false, "{slot}");
    let secrets = std::fs::read_to_string(home.state.join("secrets.json")).unwrap_or_default();
    assert!(
        !secrets.contains("slot-0.credential") && !secrets.contains("slot-0.registration"),
        "secrets kept after unenroll: {:?}",
        secrets.len()
    );
    // The server's answer, when it was sent, was dropped (the count it used
    // is the race's cost; the administrator sees the auth token).
    if outcome.contains(NOT_SENT) {
        assert_eq!(emulator.used_counts(), 0);
    } else {
        assert!(outcome.contains(DROPPED), "{outcome}");
        assert_eq!(emulator.used_counts(), 1);
    }

    // A restart resumes nothing and stays unenrolled.
    assert!(agent.terminate().success());
    let _agent = home.start(None);
    let slot = home.slot0();
    assert_eq!(slot["state"], "unenrolled", "{slot}");
    let out = cli(&home, &["token", "--min-valid", "1"]);
    assert_eq!(
        code(&out),
        i32::from(ErrorCode::NotEnrolled.number()),
        "{}",
        text(&out)
    );
    // And the device can enroll again.
    let out = Command::new(regent_bin())
        .arg("enroll")
        .env("REGENT_SOCKET", &home.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(registration.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

/// The same race through a per-instance slot's lazy redemption: an instance's
/// first request redeems a slot of its own; `unenroll` while that redemption
/// is at the server. The instance gets `NOT_ENROLLED`, and nothing is stored.
#[test]
fn a_lazy_slot_redemption_answered_after_unenroll_is_dropped_not_stored() {
    let emulator = EmulatorProc::start(300);
    let home = Home::new(
        &emulator.url,
        &Profile::Sentinel,
        &StoreChoice::File,
        None,
        "[instances]\nmode = \"per-instance\"\nmax = 2\n",
    );
    let registration = emulator.mint(4);
    let agent = home.start(None);
    let out = Command::new(regent_bin())
        .arg("enroll")
        .env("REGENT_SOCKET", &home.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(registration.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let instance = |name: &str| {
        regent_client::blocking::Client::connect(
            regent_client::ClientOptions::new("lazy")
                .instance(name)
                .socket(&home.socket)
                .request_timeout(Duration::from_secs(60)),
        )
        .unwrap()
    };
    // The first instance takes slot 0 (already redeemed).
    let first = instance("a");
    first.token(Duration::from_secs(1)).unwrap();

    // The second one's slot is redeemed on its first request, slowly.
    emulator.set_faults(r#"{"latencyMs":3000,"routes":["redeem"]}"#);
    let second = std::thread::spawn({
        let second = instance("b");
        move || second.token(Duration::from_secs(1))
    });
    let slot1 = || {
        let status = home.client().status().unwrap();
        status.slots.into_iter().find(|s| s.slot == 1)
    };
    wait_until(
        Duration::from_secs(20),
        "slot 1's redemption under way",
        || slot1().is_some_and(|s| s.state == SlotState::Enrolling),
    );
    let out = cli(&home, &["unenroll"]);
    assert!(out.status.success(), "{}", text(&out));

    let answer = second.join().unwrap();
    emulator.set_faults("{}");
    let e = answer.expect_err("no token for an instance after unenroll");
    assert_eq!(e.code, ErrorCode::NotEnrolled, "{e:?}");
    let log = agent.log_text();
    assert!(
        log.contains(DROPPED) || log.contains(NOT_SENT),
        "the late answer was not dropped; the log:\n{log}"
    );
    let secrets = std::fs::read_to_string(home.state.join("secrets.json")).unwrap_or_default();
    for entry in [
        "slot-0.credential",
        "slot-1.credential",
        "slot-1.registration",
        "device.secret",
    ] {
        assert!(!secrets.contains(entry), "{entry} kept after unenroll");
    }
    let slot = slot1().expect("slot 1 exists");
    assert_eq!(slot.state, SlotState::Unenrolled, "{slot:?}");
    assert!(!slot.pending_redemption, "{slot:?}");
}
