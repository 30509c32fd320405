//! End to end: the real `regent agent`, `regent emulator` and CLI commands.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use regent_client::{Client, SubscriptionEvent};
use regent_proto::ErrorCode;
use regent_tests::{AgentHome, AgentProc, EmulatorProc, code, regent, text};

fn exit(code_: ErrorCode) -> i32 {
    i32::from(code_.number())
}

#[tokio::test]
async fn enroll_token_status_unenroll_through_the_cli() {
    let emulator = EmulatorProc::start(300);
    let home = AgentHome::new(&emulator.url, "");
    let _agent = AgentProc::start(&home);

    let out = home.regent(&["token"], None);
    assert_eq!(code(&out), exit(ErrorCode::NotEnrolled), "{}", text(&out));
    let out = home.regent(&["status"], None);
    assert_eq!(code(&out), exit(ErrorCode::NotEnrolled), "{}", text(&out));

    // A secret as an argument is refused, with the reason.
    let out = home.regent(&["enroll", "my-registration-token"], None);
    assert_eq!(code(&out), exit(ErrorCode::BadRequest), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ps"),
        "{}",
        text(&out)
    );

    // A wrong token: its own code.
    let out = home.regent(&["enroll"], Some("not-a-token\n"));
    assert_eq!(
        code(&out),
        exit(ErrorCode::RegistrationTokenInvalid),
        "{}",
        text(&out)
    );

    let registration = emulator.mint(2);
    let out = home.regent(&["enroll"], Some(&format!("{registration}\n")));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("enrolled"),
        "{}",
        text(&out)
    );

    let raw = home.regent(&["token", "--min-valid", "30"], None);
    assert!(raw.status.success(), "{}", text(&raw));
    let token = String::from_utf8(raw.stdout.clone())
        .unwrap()
        .trim()
        .to_owned();
    assert!(token.len() > 20);
    let header = home.regent(&["token", "--format", "header"], None);
    assert_eq!(
        String::from_utf8_lossy(&header.stdout).trim(),
        format!("Authorization: Bearer {token}")
    );
    let json: serde_json::Value =
        serde_json::from_slice(&home.regent(&["token", "--format", "json"], None).stdout).unwrap();
    assert_eq!(json["access_token"], token.as_str());
    assert!(json["expires_in"].as_u64().unwrap() >= 30);
    let exec: serde_json::Value = serde_json::from_slice(
        &home
            .regent(&["token", "--format", "exec-credential"], None)
            .stdout,
    )
    .unwrap();
    assert_eq!(exec["kind"], "ExecCredential");
    assert_eq!(exec["apiVersion"], "client.authentication.k8s.io/v1");
    assert_eq!(exec["status"]["token"], token.as_str());
    assert!(
        exec["status"]["expirationTimestamp"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );

    // More validity than a 300 s token can give: never a short token, and
    // BAD_REQUEST naming the server's lifetime (retrying cannot help).
    let out = home.regent(&["token", "--min-valid", "3600"], None);
    assert_eq!(code(&out), exit(ErrorCode::BadRequest), "{}", text(&out));
    assert!(text(&out).contains("valid for 300s"), "{}", text(&out));

    let out = home.regent(&["status", "--json"], None);
    assert!(out.status.success(), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["slots"][0]["state"], "active");
    assert!(status["slots"][0]["expires_at"].as_u64().is_some());
    let human = home.regent(&["status"], None);
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("active"),
        "{}",
        text(&human)
    );

    let metrics = home.regent(&["metrics"], None);
    let metrics = String::from_utf8(metrics.stdout).unwrap();
    assert!(
        metrics.contains("regent_slot_state{state=\"active\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("regent_tokens_served_total"), "{metrics}");
    assert!(!metrics.contains(&token));

    // The redeemer is visible to the administrator; one count used.
    assert_eq!(emulator.auth_tokens().len(), 1);

    let out = home.regent(&["unenroll"], None);
    assert!(out.status.success(), "{}", text(&out));
    let out = home.regent(&["token"], None);
    assert_eq!(code(&out), exit(ErrorCode::NotEnrolled), "{}", text(&out));
}

#[tokio::test]
async fn subscribers_get_three_renewals_and_hear_about_revocation() {
    let emulator = EmulatorProc::start(3);
    let home = AgentHome::new(&emulator.url, "");
    let _agent = AgentProc::start(&home);
    let out = home.regent(&["enroll"], Some(&emulator.mint(1)));
    assert!(out.status.success(), "{}", text(&out));

    let client = Client::connect(home.client_options("subscriber"))
        .await
        .unwrap();
    let min_valid = Duration::from_secs(1);
    let mut subscription = client.subscribe(min_valid).await.unwrap();
    let mut tokens = Vec::new();
    while tokens.len() < 4 {
        let event = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("a pushed token within a renewal period")
            .unwrap();
        if let SubscriptionEvent::Token(t) = event {
            assert!(
                t.remaining() >= min_valid,
                "pushed token below min_valid: {:?}",
                t.remaining()
            );
            tokens.push(t.secret().to_owned());
        }
    }
    tokens.dedup();
    assert_eq!(tokens.len(), 4, "each push is a new token");

    let id = emulator.auth_tokens()[0]["id"].as_str().unwrap().to_owned();
    emulator.revoke(&id);
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("the revocation is pushed within a renewal period")
            .unwrap();
        if let SubscriptionEvent::State { state, error } = event
            && state == "revoked"
        {
            assert_eq!(error.unwrap().code, ErrorCode::Revoked);
            break;
        }
    }
    let out = home.regent(&["token", "--min-valid", "1"], None);
    assert_eq!(code(&out), exit(ErrorCode::Revoked), "{}", text(&out));
    // A new registration token re-enrolls without a restart.
    let out = home.regent(&["enroll"], Some(&emulator.mint(1)));
    assert!(out.status.success(), "{}", text(&out));
    let out = home.regent(&["token", "--min-valid", "1"], None);
    assert!(out.status.success(), "{}", text(&out));
}

#[cfg(unix)]
#[tokio::test]
async fn restart_sigterm_live_and_stale_sockets() {
    let emulator = EmulatorProc::start(300);
    let home = AgentHome::new(&emulator.url, "");
    let agent = AgentProc::start(&home);
    assert!(
        home.regent(&["enroll"], Some(&emulator.mint(1)))
            .status
            .success()
    );

    // The socket has the configured mode.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&home.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    // A second agent refuses to take over a live socket.
    let mut second = AgentProc::spawn(&home);
    let status = regent_tests::wait_timeout(&mut second.child, Duration::from_secs(15));
    assert_eq!(status.code(), Some(exit(ErrorCode::Config)));
    let log = std::fs::read_to_string(&second.log).unwrap();
    assert!(log.contains("already listening"), "{log}");
    assert!(
        home.regent(&["token"], None).status.success(),
        "the first agent still serves"
    );

    // A connected client survives an agent restart (it reconnects).
    let client = Client::connect(home.client_options("survivor"))
        .await
        .unwrap();
    let before = client.token(Duration::from_secs(10)).await.unwrap();

    // SIGTERM: clean exit, socket removed.
    let status = agent.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        !home.socket.exists(),
        "socket file left behind after SIGTERM"
    );

    let agent = AgentProc::start(&home);
    let after = client.token(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        before.secret(),
        after.secret(),
        "the stored token is served after a restart"
    );

    // SIGKILL leaves a stale socket; the next agent reclaims it.
    agent.kill();
    assert!(home.socket.exists());
    let agent = AgentProc::start(&home);
    assert!(
        agent.log_text().contains("reclaimed a stale socket"),
        "{}",
        agent.log_text()
    );
    assert!(home.regent(&["token"], None).status.success());
    assert_eq!(
        emulator.auth_tokens().len(),
        1,
        "restarts never redeem again"
    );
}

#[test]
fn emulator_refuses_non_loopback_and_demo_needs_no_setup() {
    let out = regent(&["emulator", "--listen", "0.0.0.0:0"], None, &[]);
    assert_eq!(code(&out), exit(ErrorCode::Config), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}

#[test]
fn the_demo_runs_start_to_finish() {
    // Exactly the README's run command (with its defaults).
    let out = regent(&["demo"], None, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    for expected in [
        "minted a registration token",
        // The socket and the secrets file, each named for what it is (it
        // said "a 0600 file store at …/agent.sock").
        if cfg!(windows) {
            "secrets.json (readable by this account only)"
        } else {
            "secrets.json (mode 0600)"
        },
        "enrolled",
        "got token",
        "deleting auth token",
        "told: agent is revoked",
        "done",
    ] {
        assert!(
            stdout.contains(expected),
            "demo output lacks {expected:?}:\n{stdout}"
        );
    }
}

#[test]
fn the_user_demo_signs_in_with_a_headless_browser() {
    let out = regent(&["demo", "--user", "--renewals", "1"], None, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    for expected in [
        "sign-in started: PKCE (S256)",
        "browser    opened the sign-in page; signing in as alice",
        "signed in as alice <alice@example.com>; scope openid profile",
        "got token",
        "deleting user alice",
        "sign in again with `regent login`",
        "done",
    ] {
        assert!(
            stdout.contains(expected),
            "demo output lacks {expected:?}:\n{stdout}"
        );
    }
    assert!(!stdout.contains("registration token"), "{stdout}");
}

#[cfg(target_os = "linux")]
#[test]
fn another_uid_is_refused_unless_allowed_and_never_enrolls() {
    use std::os::unix::process::CommandExt;
    if nix::unistd::geteuid().as_raw() != 0 {
        eprintln!("skipped: needs root to run the CLI as another uid (65534)");
        return;
    }
    let emulator = EmulatorProc::start(300);
    // A 0660 socket of group 65534, so the kernel lets uid 65534 connect
    // and the agent's own peer-credential check decides.
    let home = AgentHome::new(&emulator.url, "[ipc]\nmode = \"0660\"");
    regent_tests::other_user::socket_group(&home, 65534);
    let agent = AgentProc::start(&home);
    assert!(
        home.regent(&["enroll"], Some(&emulator.mint(1)))
            .status
            .success()
    );
    let (_bin_dir, bin) = regent_tests::regent_bin_for_any_user();
    let as_nobody = |args: &[&str]| {
        std::process::Command::new(&bin)
            .args(args)
            .env("REGENT_SOCKET", &home.socket)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    let out = as_nobody(&["token", "--min-valid", "1"]);
    assert_eq!(
        code(&out),
        exit(ErrorCode::PermissionDenied),
        "{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("allow_uids"),
        "{}",
        text(&out)
    );
    let log = agent.log_text();
    assert!(
        log.contains("connection refused: uid not allowed"),
        "audit line: {log}"
    );
    drop(agent);

    // Allowed by uid: tokens yes, enrollment no.
    let config = std::fs::read_to_string(&home.config).unwrap();
    std::fs::write(
        &home.config,
        config.replace("[ipc]", "[ipc]\nallow_uids = [65534]"),
    )
    .unwrap();
    let _agent = AgentProc::start(&home);
    let out = as_nobody(&["token", "--min-valid", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = as_nobody(&["unenroll"]);
    assert_eq!(
        code(&out),
        exit(ErrorCode::PermissionDenied),
        "{}",
        text(&out)
    );
}

/// Regression (issue 14): the agent bound its socket (making its directory)
/// before it checked `[server] url`, then exited on the config error. Now a
/// bad configuration is refused before anything is made on disk.
#[test]
fn a_bad_configuration_is_refused_before_anything_is_made_on_disk() {
    // Plain http:// to a host that is not a loopback IP literal: CONFIG.
    let home = AgentHome::new("http://192.0.2.1:9", "");
    let out = regent(
        &[
            "agent",
            "--no-watch",
            "--config",
            home.config.to_str().unwrap(),
        ],
        None,
        &[],
    );
    assert_eq!(code(&out), exit(ErrorCode::Config), "{}", text(&out));
    assert!(text(&out).contains("[server]"), "{}", text(&out));
    let run_dir = home.socket.parent().unwrap();
    assert!(
        !run_dir.exists(),
        "the socket directory was made: {}",
        run_dir.display()
    );
    let state = home.dir.path().join("state");
    assert!(
        !state.exists(),
        "the state directory was made: {}",
        state.display()
    );
}

/// Regression (issue 14): `--client-secret-stdin` did nothing, and `regent
/// enroll` on a terminal waited silently for input. Without a source a
/// terminal is refused, naming the ways to give the secret; `--stdin` (the
/// old flag is an alias) prompts and reads it. `script` gives the CLI a
/// real terminal (Unix only: Wine gives no pseudo-terminal to drive).
#[cfg(unix)]
#[test]
fn enroll_on_a_terminal_asks_for_a_source_or_prompts_with_stdin() {
    let run = |args: &str, input: &str| {
        let command = format!("{} {args}", regent_tests::regent_bin().display());
        let mut child = std::process::Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .env("REGENT_SOCKET", "/nonexistent/regent/agent.sock")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run("enroll", "");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(code(&out), exit(ErrorCode::BadRequest), "{said}");
    assert!(said.contains("--stdin to type it here"), "{said}");
    for flag in ["--stdin", "--client-secret-stdin"] {
        // The secret is typed, then Ctrl-D; there is no agent, so it ends
        // AGENT_UNREACHABLE after the prompt.
        let out = run(&format!("enroll {flag}"), "typed-secret\n\u{4}");
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            said.contains("paste the registration token"),
            "{flag}: {said}"
        );
        assert_eq!(
            code(&out),
            exit(ErrorCode::AgentUnreachable),
            "{flag}: {said}"
        );
    }
}

/// Issue 14: a crash point named with a typo never fired, so a crash test
/// waited for nothing. The agent now refuses the value at startup, naming
/// the known points, before anything is made on disk. (A `regent` built
/// without the `crash-points` feature ignores the variable and runs: then
/// there is nothing to check.)
#[test]
fn an_unknown_crash_point_is_refused_naming_the_known_ones() {
    use std::process::{Command, Stdio};
    let home = AgentHome::new("http://127.0.0.1:9", "");
    let mut agent = Command::new(regent_tests::regent_bin())
        .args(["agent", "--no-watch", "--config"])
        .arg(&home.config)
        .env("REGENT_CRASH_POINT", "after-redem")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while agent.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let running = agent.try_wait().unwrap().is_none();
    if running {
        agent.kill().unwrap();
    }
    let out = agent.wait_with_output().unwrap();
    if running && text(&out).contains("this build has no crash points") {
        eprintln!(
            "skipped: this regent has no crash points (build it with --features crash-points)"
        );
        return;
    }
    assert_eq!(code(&out), exit(ErrorCode::Config), "{}", text(&out));
    assert!(text(&out).contains("\"after-redem\""), "{}", text(&out));
    assert!(text(&out).contains("after-redeem"), "{}", text(&out));
    assert!(!home.dir.path().join("state").exists());
}
