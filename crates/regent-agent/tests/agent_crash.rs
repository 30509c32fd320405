//! Crash safety: the agent is SIGKILLed right after the server answered a
//! redemption but before anything was stored; the restarted agent recovers the
//! same auth token and no second count is consumed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Crash points exist only with the `crash-points` feature (see `regent_agent::crash`).
#![cfg(feature = "crash-points")]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Server, secret, sentinel_config, wait_for_state};
use regent_agent::agent::{Agent, EnrollOptions};
use regent_agent::crash::CRASH_POINT_ENV;
use regent_agent::engine::SlotState;
use regent_agent::secret::ExposeSecret;
use regent_emulator::EmulatorConfig;
use serde_json::json;

const CHILD_ENV: &str = "REGENT_TEST_CRASH_CHILD";

/// Runs only as the child process: enrolls, and stops at the armed crash point.
#[tokio::test]
async fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return; // Not the child: nothing to do.
    };
    let spec: serde_json::Value = serde_json::from_str(&spec).unwrap();
    let dir = std::path::PathBuf::from(spec["dir"].as_str().unwrap());
    let config = sentinel_config(spec["url"].as_str().unwrap(), &dir, "");
    let agent = Agent::open(config).await.unwrap();
    // The registration token comes through stdin, never an argument.
    let mut token = String::new();
    std::io::stdin().read_line(&mut token).unwrap();
    let result = agent
        .enroll(secret(token.trim()), EnrollOptions::default())
        .await;
    panic!("the crash point should have stopped enrollment, got {result:?}");
}

async fn crash_at(point: &str) {
    let server = Server::start(EmulatorConfig::default()).await;
    let (id, token) = server.mint(json!({"count": 5})).await;
    let dir = tempfile::tempdir().unwrap();
    let spec = json!({"url": server.url(), "dir": dir.path()}).to_string();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, spec)
        .env(CRASH_POINT_ENV, point)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{token}").unwrap();
    }
    let stderr = child.stderr.take().unwrap();
    let announced = format!("regent: crash point {point} reached");
    let reached = tokio::task::spawn_blocking(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains(&announced))
    });
    let reached = tokio::time::timeout(Duration::from_secs(30), reached)
        .await
        .expect("child reached the crash point in time")
        .unwrap();
    assert!(reached, "child exited without reaching crash point {point}");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // Restart: the pending redemption resumes with the same identifier.
    let agent = Agent::open(sentinel_config(&server.url(), dir.path(), ""))
        .await
        .unwrap();
    wait_for_state(&agent, SlotState::Active, Duration::from_secs(15)).await;
    let grant = agent.token(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        server.introspect(grant.access_token.expose_secret()).await["active"],
        true
    );

    let registration = server.registration(&id).await;
    assert_eq!(
        registration["usedCount"], 1,
        "a second count was consumed: {registration}"
    );
    let tokens = server.auth_tokens().await;
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    let status = agent.status().await;
    assert_eq!(
        tokens[0]["identifier"].as_str(),
        status.slots[0].identifier.as_deref()
    );
    assert!(!status.slots[0].pending_redemption);
}

#[tokio::test]
async fn killed_after_server_answered_redemption_recovers_same_auth_token_one_count() {
    crash_at("after-redeem").await;
}

#[tokio::test]
async fn killed_before_redemption_was_sent_resumes_it() {
    crash_at("before-redeem").await;
}

#[tokio::test]
async fn killed_after_store_keeps_the_credential() {
    crash_at("after-store").await;
}

const SAVE_CHILD_ENV: &str = "REGENT_TEST_STATE_SAVE_CHILD";

/// Runs only as the child of the test below: opens an agent on a fresh state
/// directory (its first atomic write is `state.json`) on a one-thread
/// runtime that also runs a ticker.
#[tokio::test(flavor = "current_thread")]
async fn state_save_child() {
    let Ok(dir) = std::env::var(SAVE_CHILD_ENV) else {
        return; // Not the child: nothing to do.
    };
    tokio::spawn(async {
        for n in 1u64.. {
            tokio::time::sleep(Duration::from_millis(20)).await;
            eprintln!("runtime tick {n}");
        }
    });
    let config = sentinel_config("http://127.0.0.1:9", Path::new(&dir), "");
    let result = Agent::open(config).await;
    panic!("the crash point should have stopped the state save, got {result:?}");
}

/// Regression (issue 18, left from the reliability round): `state.json` was
/// saved (with fsyncs) on the async runtime's own threads, so a slow or
/// stuck disk stalled every task of that thread. A save stopped mid-write
/// (the `mid-store-write` crash point parks its thread for good) now leaves
/// the runtime running.
#[tokio::test]
async fn a_stalled_state_save_leaves_the_runtime_running() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "state_save_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SAVE_CHILD_ENV, dir.path())
        .env(CRASH_POINT_ENV, "mid-store-write")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let ticked_after_the_stall = tokio::task::spawn_blocking(move || {
        let mut stalled = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("regent: crash point mid-store-write reached") {
                stalled = true;
            } else if stalled && line.contains("runtime tick") {
                return Ok(());
            }
        }
        Err(if stalled {
            "the runtime stopped with the state save"
        } else {
            "the child exited before the state save"
        })
    });
    let outcome = tokio::time::timeout(Duration::from_secs(30), ticked_after_the_stall).await;
    child.kill().unwrap();
    child.wait().unwrap();
    match outcome {
        Ok(result) => result.unwrap().unwrap(),
        Err(_) => {
            panic!("no runtime tick after the state save stalled (saved on the runtime thread)")
        }
    }
}
