//! Per-instance slots and leases (DESIGN §8) end to end: a real agent serving
//! a real socket, the real emulator, real clients — and app instances that are
//! separate processes, killed with SIGKILL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{RunningAgent, Server, sentinel_server};
use regent_agent::ErrorCode;
use regent_client::{Client, ClientOptions, SlotState};
use regent_emulator::EmulatorConfig;
use reqwest::Method;
use serde_json::json;

const CHILD_ENV: &str = "REGENT_TEST_INSTANCE_CHILD";

fn per_instance(max: u32) -> String {
    format!("[instances]\nmode = \"per-instance\"\nmax = {max}\nlease_grace = 1\n")
}

async fn enroll(agent: &RunningAgent, token: &str) {
    let admin = Client::connect(agent.options("regent-cli", Some("admin")))
        .await
        .unwrap();
    admin
        .enroll(regent_client::SecretString::from(token.to_owned()), false)
        .await
        .unwrap();
}

/// Runs only as the child process: an app instance holding a lease until killed.
#[tokio::test]
async fn instance_child() {
    let Ok(socket) = std::env::var(CHILD_ENV) else {
        return;
    };
    let client = Client::connect(ClientOptions::new("killed-app").socket(socket))
        .await
        .unwrap();
    client.token(Duration::from_secs(1)).await.unwrap();
    eprintln!("instance holds its slot");
    std::future::pending::<()>().await;
}

#[tokio::test]
async fn three_slots_three_auth_tokens_fourth_refused_then_freed_without_new_redemption() {
    let server = Server::start(EmulatorConfig::default()).await;
    let (reg_id, token) = server.mint(json!({"count": 10})).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = RunningAgent::start(
        dir.path(),
        &sentinel_server(&server.url()),
        &per_instance(3),
    )
    .await;
    // Enrolling (an admin connection) holds no instance slot.
    enroll(&agent, &token).await;

    let mut clients = Vec::new();
    let mut tokens = HashSet::new();
    for i in 1..=3 {
        let c = Client::connect(agent.options("editor", Some(&format!("e{i}"))))
            .await
            .unwrap();
        tokens.insert(
            c.token(Duration::from_secs(30))
                .await
                .unwrap()
                .secret()
                .to_owned(),
        );
        clients.push(c);
    }
    assert_eq!(
        tokens.len(),
        3,
        "three instances, three different access tokens"
    );
    assert_eq!(
        server.auth_tokens().await.len(),
        3,
        "backed by three auth tokens"
    );

    // The fourth is refused, naming who holds the slots (same uid may see them).
    let fourth = Client::connect(agent.options("editor", Some("e4")))
        .await
        .unwrap();
    let err = fourth.token(Duration::from_secs(30)).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::NoFreeInstance, "{err:?}");
    assert!(
        err.message.contains("all 3 instance slots are in use"),
        "{}",
        err.message
    );
    assert!(err.message.contains("editor/e1"), "{}", err.message);

    // One instance exits; after the grace period the fourth gets its slot.
    clients.remove(0);
    let t = token_within(&fourth, Duration::from_secs(5)).await.unwrap();
    assert!(!t.secret().is_empty());
    assert_eq!(
        server.registration(&reg_id).await["usedCount"],
        3,
        "no new redemption"
    );
    assert_eq!(server.auth_tokens().await.len(), 3);

    // status lists the slots with who leases them.
    let status = fourth.status().await.unwrap();
    let slots = &status.slots;
    assert_eq!(slots.len(), 3);
    assert!(
        slots.iter().all(|s| s.state == SlotState::Active),
        "{status:?}"
    );
    assert!(
        slots
            .iter()
            .any(|s| s.leased_by.as_ref().and_then(|h| h.instance.as_deref()) == Some("e4")),
        "{status:?}"
    );
    // Metrics count every slot, not just the first.
    let metrics = fourth.metrics().await.unwrap();
    assert!(
        metrics.contains("regent_slot_state{state=\"active\"} 3"),
        "{metrics}"
    );
    drop(clients);
    drop(fourth);

    // Restart: all slots kept (no new redemption), instances re-lease them.
    agent.stop().await;
    let agent = RunningAgent::start(
        dir.path(),
        &sentinel_server(&server.url()),
        &per_instance(3),
    )
    .await;
    let mut again = Vec::new();
    for i in 1..=3 {
        let c = Client::connect(agent.options("editor", Some(&format!("r{i}"))))
            .await
            .unwrap();
        c.token(Duration::from_secs(30)).await.unwrap();
        again.push(c);
    }
    assert_eq!(
        server.registration(&reg_id).await["usedCount"],
        3,
        "restart redeemed again"
    );
    assert_eq!(server.count("redeem", "ok").await, 3);
    drop(again);
    agent.stop().await;
}

/// Asks for a token, waiting up to `limit` for a free instance slot.
async fn token_within(
    client: &Client,
    limit: Duration,
) -> regent_client::Result<regent_client::Token> {
    let started = Instant::now();
    loop {
        match client.token(Duration::from_secs(10)).await {
            Err(e) if e.code == ErrorCode::NoFreeInstance && started.elapsed() < limit => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

#[tokio::test]
async fn a_killed_instance_frees_its_slot() {
    let server = Server::start(EmulatorConfig::default()).await;
    let (_, token) = server.mint(json!({"count": 1})).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = RunningAgent::start(
        dir.path(),
        &sentinel_server(&server.url()),
        &per_instance(1),
    )
    .await;
    enroll(&agent, &token).await;

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "instance_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &agent.socket)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("instance holds its slot"))
    });
    // The enrolling client's own lease may still be in its 1 s grace.
    assert!(
        tokio::time::timeout(Duration::from_secs(20), ready)
            .await
            .unwrap()
            .unwrap()
    );
    let other = Client::connect(agent.options("other", None)).await.unwrap();
    let err = other.token(Duration::from_secs(10)).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::NoFreeInstance);
    assert!(err.message.contains("killed-app"), "{}", err.message);

    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // The client's own wait-for-free-slot option.
    let waiting = Client::connect(
        agent
            .options("other", None)
            .wait_for_instance(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    waiting.token(Duration::from_secs(10)).await.unwrap();
    drop(other);
    agent.stop().await;
}

#[tokio::test]
async fn exhausted_registration_token_fails_only_the_third_instance() {
    let server = Server::start(EmulatorConfig::default()).await;
    let (reg_id, token) = server.mint(json!({"count": 2})).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = RunningAgent::start(
        dir.path(),
        &sentinel_server(&server.url()),
        &per_instance(3),
    )
    .await;
    enroll(&agent, &token).await;
    let a = Client::connect(agent.options("app", Some("a")))
        .await
        .unwrap();
    let b = Client::connect(agent.options("app", Some("b")))
        .await
        .unwrap();
    let c = Client::connect(agent.options("app", Some("c")))
        .await
        .unwrap();
    let mut outcomes = Vec::new();
    for client in [&a, &b, &c] {
        outcomes.push(
            client
                .token(Duration::from_secs(10))
                .await
                .map_err(|e| e.code),
        );
    }
    let failed: Vec<ErrorCode> = outcomes
        .iter()
        .filter_map(|o| o.as_ref().err().copied())
        .collect();
    assert_eq!(
        failed,
        vec![ErrorCode::RegistrationTokenExhausted],
        "{outcomes:?}"
    );
    // The other two keep working.
    for (client, outcome) in [&a, &b, &c].iter().zip(&outcomes) {
        if outcome.is_ok() {
            client.token(Duration::from_secs(10)).await.unwrap();
        }
    }
    assert_eq!(server.registration(&reg_id).await["usedCount"], 2);
    drop((a, b, c));
    agent.stop().await;
}

#[tokio::test]
async fn multitoken_cap_five_with_eight_instances() {
    let server = Server::start(EmulatorConfig::default()).await;
    let (status, body) = server
        .admin_call(
            Method::POST,
            "/oauth/clients",
            Some(json!({"clientId": "fleet", "clientSecret": "fleet-secret", "accessTokenValidity": 60})),
        )
        .await;
    assert!(status == 200 || status == 201, "{body}");
    server
        .admin_call(
            Method::PUT,
            "/oauth/customers/acme",
            Some(json!({"id": "acme", "applicationClients": ["fleet"],
                        "multitokenConfig": {"clientCredentialsMultiTokenConfig": {"maxActiveTokensAllowed": 5}}})),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let server_section = format!(
        "[server]\nprofile = \"oauth2\"\ntoken_url = \"{}/oauth/token\"\nclient_id = \"fleet\"\nmax_active_tokens = 5",
        server.url()
    );
    let agent = RunningAgent::start(dir.path(), &server_section, &per_instance(8)).await;
    enroll(&agent, "fleet-secret").await;

    let mut clients = Vec::new();
    for i in 0..8 {
        clients.push(
            Client::connect(agent.options("worker", Some(&format!("w{i}"))))
                .await
                .unwrap(),
        );
    }
    let mut served = HashSet::new();
    let mut limited = 0;
    for client in &clients {
        match client.token(Duration::from_secs(10)).await {
            Ok(t) => {
                served.insert(t.secret().to_owned());
            }
            Err(e) => {
                assert_eq!(e.code, ErrorCode::TokenLimit, "{e:?}");
                assert!(e.message.contains("max_active_tokens = 5"), "{}", e.message);
                assert!(e.retry_after.is_some());
                limited += 1;
            }
        }
        let active = server.counters().await["activeTokens"]["fleet"]
            .as_u64()
            .unwrap_or(0);
        assert!(active <= 5, "{active} active tokens at the emulator");
    }
    // Slot 0's enrollment token counts too: at most 5 live tokens in all.
    assert!(
        served.len() <= 5 && served.len() >= 4,
        "{} tokens served",
        served.len()
    );
    assert_eq!(served.len() + limited, 8);
    assert_eq!(
        server
            .count("oauth_token", "active_token_limit_exceeded")
            .await,
        0,
        "the agent never asked past the cap"
    );
    drop(clients);
    agent.stop().await;
}
