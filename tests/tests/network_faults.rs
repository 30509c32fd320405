//! Network faults end to end: the real `regent agent` and `regent emulator`
//! processes with the loopback fault proxy (`regent_tests::proxy`) between
//! them. The agent-level suite (`tests/tests/upstream_faults/`)
//! tries every fault on both profiles and phases; this one proves the shipped
//! binary behaves the same: `regent enroll` and `regent token` exit with the
//! right code while the license server misbehaves, the agent stays up and
//! answers `regent status`, it recovers by itself when the fault clears, and
//! its log never shows a secret.
//!
//! Only faults that never reach the emulator are used here (the emulator
//! binary rotates refresh tokens, and a lost answer to a processed refresh
//! ends the session by design; the agent-level suite covers those faults
//! with rotation off).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use regent_proto::ErrorCode;
use regent_tests::procstat::Sample;
use regent_tests::proxy::{Fault, Proxy};
use regent_tests::{AgentHome, AgentProc, EmulatorProc, code, scale, text};
use serde_json::Value;

const LIFETIME: u64 = 10;

fn status(home: &AgentHome) -> Value {
    let out = home.regent(&["status", "--json"], None);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("status: {}", text(&out)))
}

fn slot(home: &AgentHome) -> Value {
    status(home)["slots"][0].clone()
}

/// Polls `regent token --min-valid N` until it prints a token; returns it.
fn wait_for_token(home: &AgentHome, min_valid: u64, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let out = home.regent(&["token", "--min-valid", &min_valid.to_string()], None);
        if out.status.success() {
            return String::from_utf8(out.stdout).unwrap().trim().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no token within {limit:?} after the fault cleared: {}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_agent_binary_classifies_network_faults_and_recovers() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let emulator = EmulatorProc::start(LIFETIME);
    let upstream: SocketAddr = emulator.url.trim_start_matches("http://").parse().unwrap();
    let proxy = rt.block_on(Proxy::start(upstream)).unwrap();
    let home = AgentHome::new(
        &proxy.url(),
        "[refresh]\nbackoff_min = 1\nbackoff_max = 2\n",
    );
    let config = std::fs::read_to_string(&home.config).unwrap();
    std::fs::write(
        &home.config,
        config.replace(
            "request_timeout = 5",
            "request_timeout = 2\nconnect_timeout = 1",
        ),
    )
    .unwrap();
    let agent = AgentProc::start(&home);
    let registration = emulator.mint(1);
    let mut secrets = vec![registration.clone()];

    // Enrollment through a connection that is reset mid-request: a clear
    // UNAVAILABLE exit, and the redemption finishes by itself once it clears.
    proxy.set_for("/authTokens", Fault::ResetRequest);
    let started = Instant::now();
    let out = home.regent(&["enroll"], Some(&format!("{registration}\n")));
    assert_eq!(
        code(&out),
        i32::from(ErrorCode::Unavailable.number()),
        "{}",
        text(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(40));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the license server"));
    assert!(proxy.faulted() >= 1);
    assert_eq!(slot(&home)["pending_redemption"], true);
    proxy.clear();
    let token = wait_for_token(&home, 1, Duration::from_secs(30));
    secrets.push(token);
    assert_eq!(emulator.auth_tokens().len(), 1, "one auth token, one count");

    // Renewal faults. Clients keep asking for 8 s of a 10 s token, so the
    // agent renews about a second after each token: the next renewal meets
    // the fault.
    let cases: Vec<(&str, Fault, ErrorCode)> = vec![
        (
            "half-open: never answers",
            Fault::Blackhole,
            ErrorCode::Timeout,
        ),
        (
            "latency above the timeout",
            Fault::Delay(Duration::from_secs(3)),
            ErrorCode::Timeout,
        ),
        (
            "RST mid-request",
            Fault::ResetRequest,
            ErrorCode::Unavailable,
        ),
        (
            "closed without an answer",
            Fault::Close,
            ErrorCode::Unavailable,
        ),
        (
            "not HTTP",
            Fault::raw(b"SSH-2.0-OpenSSH_9.6\r\n"),
            ErrorCode::Unavailable,
        ),
        (
            "captive-portal HTML",
            Fault::reply(
                "200 OK",
                &["Content-Type: text/html"],
                b"<html>Wi-Fi</html>",
            ),
            ErrorCode::ServerError,
        ),
        (
            "oversized body (2 MiB)",
            Fault::reply(
                "200 OK",
                &["Content-Type: application/json"],
                &vec![b' '; 2 << 20],
            ),
            ErrorCode::ServerError,
        ),
        (
            "invalid JSON",
            Fault::reply(
                "200 OK",
                &["Content-Type: application/json"],
                b"{\"access_token\":",
            ),
            ErrorCode::ServerError,
        ),
    ];
    for (name, fault, expected) in &cases {
        renewal_round(&home, &proxy, name, fault.clone(), *expected, &mut secrets);
        println!("{name}: {expected} while on, recovered when off");
    }

    // Long form: the same faults again and again against the same process,
    // whose descriptors and memory must not keep growing.
    let rounds = scale(0, 150);
    if rounds > 0 {
        let pid = agent.child.id();
        let mut samples = vec![(0, Sample::settled(pid, 5).unwrap())];
        for round in 1..=rounds {
            let (name, fault, expected) = &cases[round % cases.len()];
            renewal_round(&home, &proxy, name, fault.clone(), *expected, &mut secrets);
            if round == rounds / 2 || round == rounds {
                samples.push((round, Sample::settled(pid, 5).unwrap()));
            }
        }
        for (round, s) in &samples {
            println!(
                "agent after {round} extra faults: {} fds, RSS {} KiB (peak {} KiB), {} threads",
                s.fds, s.rss_kib, s.hwm_kib, s.threads
            );
        }
        let (mid, end) = (samples[1].1, samples[2].1);
        assert!(
            end.fds <= mid.fds + 4,
            "descriptors grew: {mid:?} → {end:?}"
        );
        assert!(
            end.rss_kib <= mid.rss_kib + 8 * 1024,
            "memory grew by more than 8 MiB between the middle and the end: {mid:?} → {end:?}"
        );
    }

    for ex in proxy.exchanges() {
        for bytes in [&ex.request, &ex.answer] {
            let text = String::from_utf8_lossy(bytes);
            for key in ["access_token", "refresh_token"] {
                for (i, _) in text.match_indices(key) {
                    let value: String = text[i + key.len()..]
                        .trim_start_matches(['"', ':', '=', ' '])
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || "-_.~".contains(*c))
                        .collect();
                    if value.len() >= 12 {
                        secrets.push(value);
                    }
                }
            }
        }
    }
    let log = agent.log_text();
    assert!(log.contains("renewal failed"), "the log says what failed");
    for s in &secrets {
        assert!(
            !log.contains(s.as_str()),
            "a secret ({}…) is in the agent's log",
            &s[..6]
        );
    }
    assert!(!log.contains("panicked"));
    let status = agent.terminate();
    assert!(status.success(), "the agent exits cleanly: {status:?}");
}

/// One renewal fault: on until a renewal fails with `expected` (the cached
/// token still served meanwhile), then off until the agent is active again
/// and serves a token with 8 s left.
fn renewal_round(
    home: &AgentHome,
    proxy: &Proxy,
    name: &str,
    fault: Fault,
    expected: ErrorCode,
    secrets: &mut Vec<String>,
) {
    secrets.push(wait_for_token(home, 8, Duration::from_secs(30)));
    let failed_before = slot(home)["renewals_failed"].as_u64().unwrap();
    proxy.set_for("/openid-connect/token", fault);
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        // Keeps the demand for 8 s up; the answer may still come from the cache.
        let _ = home.regent(&["token", "--min-valid", "8"], None);
        let s = slot(home);
        if s["renewals_failed"].as_u64().unwrap() > failed_before {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: no failed renewal within 30 s: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(seen["last_error_code"], expected.name(), "{name}: {seen}");
    assert_eq!(seen["state"], "degraded", "{name}: {seen}");
    // The cached token is still served during the outage.
    let out = home.regent(&["token", "--min-valid", "1"], None);
    assert!(
        out.status.success(),
        "{name}: cached token not served: {}",
        text(&out)
    );
    proxy.clear();
    // Recovered: a renewal succeeds (the agent is active again) and a
    // token with 8 s left is served.
    let deadline = Instant::now() + Duration::from_secs(30);
    while slot(home)["state"] != "active" {
        let _ = home.regent(&["token", "--min-valid", "8"], None);
        assert!(
            Instant::now() < deadline,
            "{name}: not active again within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    secrets.push(wait_for_token(home, 8, Duration::from_secs(30)));
}
