//! Named-user sign-in end to end: the real `regent` binaries (emulator,
//! agent, CLI) and a browser stand-in run as `$BROWSER`. A user signs in with
//! the browser flow and the device flow; tokens are served, renewed across
//! rotation, revoked, and signed in again without a restart; each error path
//! says what happened.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use regent_proto::ErrorCode;
use regent_tests::http1::{post_form, request};
use regent_tests::{
    AgentHome, AgentProc, EMULATOR_KEY, EmulatorProc, code, exit, regent_bin, test_browser_bin,
    text, wait_until,
};
use serde_json::Value;

use regent_tests::signin::{self, PASSWORD};

struct Setup {
    emu: EmulatorProc,
    home: AgentHome,
    agent: AgentProc,
    browser_log: PathBuf,
}

/// The agent's status document, asked with the client library: the waits
/// below ask every 20 ms, which as a process each time is too many process
/// starts for Wine. (`regent status --json` itself is checked once.)
fn status_of(home: &AgentHome) -> Value {
    regent_client::blocking::Client::connect(home.client_options("login-test"))
        .and_then(|client| client.status())
        .map_or(Value::Null, |status| serde_json::to_value(status).unwrap())
}

/// An emulator with user alice and a public client, and an oauth2 agent
/// pointed at it; access tokens live `lifespan` seconds.
fn setup(lifespan: u64) -> Setup {
    let emu = signin::emulator(lifespan);
    let home = signin::oauth2_home(&emu);
    let agent = AgentProc::start(&home);
    let browser_log = home.dir.path().join("browser.log");
    Setup {
        emu,
        home,
        agent,
        browser_log,
    }
}

impl Setup {
    /// `regent login ARGS` with the browser stand-in as `$BROWSER`.
    fn login(&self, args: &[&str], browser: &[(&str, &str)]) -> std::process::Output {
        let mut all = vec!["login"];
        all.extend_from_slice(args);
        Command::new(regent_bin())
            .args(&all)
            .env("REGENT_SOCKET", &self.home.socket)
            .env("BROWSER", test_browser_bin())
            .env("REGENT_TEST_BROWSER_USER", "alice")
            .env("REGENT_TEST_BROWSER_PASSWORD", PASSWORD)
            .env("REGENT_TEST_BROWSER_LOG", &self.browser_log)
            .envs(browser.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn status(&self) -> Value {
        status_of(&self.home)
    }

    fn token(&self) -> String {
        let out = self.home.regent(&["token", "--min-valid", "1"], None);
        assert_eq!(code(&out), 0, "{}", text(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Whom the emulator says an access token belongs to.
    fn userinfo(&self, token: &str) -> (u16, Value) {
        let auth = format!("Bearer {token}");
        let answer = request(
            "GET",
            &format!("{}/oauth/userinfo", self.emu.url),
            &[("Authorization", &auth)],
            None,
        );
        (
            answer.status,
            serde_json::from_str(&answer.body).unwrap_or(Value::Null),
        )
    }

    fn control(&self, method: &str, path: &str, json: Option<&str>) -> u16 {
        request(
            method,
            &format!("{}{path}", self.emu.url),
            &[("X-Emulator-Key", EMULATOR_KEY)],
            json.map(|j| ("application/json", j)),
        )
        .status
    }

    fn inject(&self, error: &str, status: u16) {
        let spec = format!(
            r#"{{"nextStatus":{{"status":{status},"count":1,"error":"{error}"}},"routes":["oauth_token"]}}"#
        );
        assert_eq!(self.control("PUT", "/_emulator/faults", Some(&spec)), 200);
    }

    fn browser_log(&self) -> String {
        std::fs::read_to_string(&self.browser_log).unwrap_or_default()
    }
}

#[test]
fn a_user_signs_in_with_the_browser_and_tokens_follow_them_through_rotation_revocation_and_re_login()
 {
    let s = setup(3);
    let out = s.login(&[], &[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains("signed in as alice <alice@example.com>"),
        "{said}"
    );
    assert!(said.contains("granted scope: openid profile"), "{said}");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("http://127.0.0.1:"),
        "the URL is printed: {err}"
    );
    assert!(err.contains("code_challenge_method=S256"), "{err}");
    assert!(
        s.browser_log().contains("redirect: 200"),
        "{}",
        s.browser_log()
    );

    let out = s.home.regent(&["status", "--json"], None);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let slot = &status["slots"][0];
    assert_eq!(slot["state"], "active");
    assert_eq!(slot["user"]["preferred_username"], "alice");
    assert_eq!(slot["user"]["email"], "alice@example.com");
    assert_eq!(slot["scope"], "openid profile");
    let human = text(&s.home.regent(&["status"], None));
    assert!(
        human.contains("signed in as alice <alice@example.com>"),
        "{human}"
    );

    let first = s.token();
    let (status_code, info) = s.userinfo(&first);
    assert_eq!(
        (status_code, info["preferred_username"].as_str()),
        (200, Some("alice"))
    );

    // Renewed (the emulator rotates the refresh token on every refresh).
    wait_until(Duration::from_secs(30), "two renewals", || {
        s.status()["slots"][0]["renewals_ok"].as_u64() >= Some(2)
    });
    let renewed = s.token();
    assert_ne!(renewed, first);
    assert_eq!(s.userinfo(&renewed).0, 200, "the renewed token is alice's");

    // Revoked at the server: the user is deleted.
    assert_eq!(s.control("DELETE", "/_emulator/users/alice", None), 204);
    wait_until(
        Duration::from_secs(30),
        "the revocation to be noticed",
        || s.status()["slots"][0]["state"] == "revoked",
    );
    let slot = &s.status()["slots"][0];
    assert!(
        slot["last_error"]
            .as_str()
            .unwrap()
            .contains("sign in again with `regent login`"),
        "{slot}"
    );
    let refused = s.home.regent(&["token"], None);
    assert_eq!(
        code(&refused),
        exit(ErrorCode::Revoked),
        "{}",
        text(&refused)
    );

    // Signed in again, without restarting the agent.
    let user = r#"{"username":"alice","password":"wonderland","email":"alice@example.com"}"#;
    assert_eq!(s.control("POST", "/_emulator/users", Some(user)), 201);
    let again = s.login(&[], &[]);
    assert_eq!(code(&again), 0, "{}", text(&again));
    assert_eq!(s.status()["slots"][0]["state"], "active");
    assert_eq!(s.userinfo(&s.token()).0, 200);

    // Signed out: revoked at the server, forgotten here.
    let token = s.token();
    let out = s.home.regent(&["logout"], None);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(text(&out).contains("the server revoked"), "{}", text(&out));
    let status = s.home.regent(&["status"], None);
    assert_eq!(
        code(&status),
        exit(ErrorCode::NotEnrolled),
        "{}",
        text(&status)
    );
    assert_eq!(
        s.userinfo(&token).0,
        401,
        "revoking the refresh token ended its access tokens"
    );
    let out = s.home.regent(&["logout"], None);
    assert_eq!(code(&out), exit(ErrorCode::NotEnrolled), "{}", text(&out));

    // Nothing secret reached the agent's log.
    let log = s.agent.log_text();
    assert!(
        !log.contains(&token) && !log.contains(&first),
        "a token in the log"
    );
}

#[test]
fn a_redirect_with_a_wrong_state_is_refused_and_the_sign_in_goes_on() {
    let s = setup(300);
    let out = s.login(&[], &[("REGENT_TEST_BROWSER_TAMPER", "state")]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let log = s.browser_log();
    assert!(log.contains("forged state: 400"), "{log}");
    assert!(log.contains("redirect: 200"), "{log}");
    assert!(
        text(&out).contains("does not match this sign-in"),
        "{}",
        text(&out)
    );
}

#[test]
fn connections_that_send_nothing_do_not_hold_up_the_redirect() {
    let s = setup(300);
    // Each idle connection is read for up to 10 s: served one after another,
    // twenty would outlast the 30 s this sign-in may take.
    let out = s.login(
        &["--timeout", "30"],
        &[("REGENT_TEST_BROWSER_TAMPER", "stall")],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        s.browser_log().contains("stalled: 20 idle connections"),
        "{}",
        s.browser_log()
    );
    assert!(
        s.browser_log().contains("redirect: 200"),
        "{}",
        s.browser_log()
    );
}

#[test]
fn a_cancelled_sign_in_a_wrong_profile_and_a_timeout_each_say_so() {
    let s = setup(300);
    let out = s.login(&[], &[("REGENT_TEST_BROWSER_ACTION", "deny")]);
    assert_eq!(code(&out), exit(ErrorCode::SignInFailed), "{}", text(&out));
    assert!(text(&out).contains("access_denied"), "{}", text(&out));

    // The stand-in logs the page the CLI answered its redirect with after
    // the CLI has exited: wait for that line, or it could land after
    // `before` and look like a second browser.
    wait_until(
        Duration::from_secs(30),
        "the browser stand-in to finish",
        || s.browser_log().contains("redirect:"),
    );
    let before = s.browser_log();
    let out = s.login(&["--no-browser", "--timeout", "1"], &[]);
    assert_eq!(code(&out), exit(ErrorCode::Timeout), "{}", text(&out));
    assert!(
        text(&out).contains("no sign-in arrived within 1s"),
        "{}",
        text(&out)
    );
    assert_eq!(s.browser_log(), before, "--no-browser starts none");

    // A sentinel agent has no user sign-in.
    let sentinel = AgentHome::new(&s.emu.url, "");
    let _agent = AgentProc::start(&sentinel);
    let out = sentinel.regent(&["login"], None);
    assert_eq!(code(&out), exit(ErrorCode::Config), "{}", text(&out));
    assert!(
        text(&out).contains("profile = \"oauth2\""),
        "{}",
        text(&out)
    );
}

/// Runs `regent login --device`, plays the person at the verification page
/// with `action`, and returns the CLI's output.
fn device_login(s: &Setup, action: &str, before_approval: impl FnOnce()) -> (i32, String) {
    let mut child = Command::new(regent_bin())
        .args(["login", "--device"])
        .env("REGENT_SOCKET", &s.home.socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let user_code = first.rsplit(' ').next().unwrap().to_owned();
    assert!(
        first.contains("/oauth/device and enter the code"),
        "{first}"
    );
    let complete = lines.next().unwrap().unwrap();
    assert!(
        complete.contains(&format!("?user_code={user_code}")),
        "{complete}"
    );
    before_approval();
    let page = post_form(
        &format!("{}/oauth/device", s.emu.url),
        &[],
        &[
            ("user_code", &user_code),
            ("username", "alice"),
            ("password", PASSWORD),
            ("action", action),
        ],
    );
    assert_eq!(page.status, 200, "{}", page.body);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let output = child.wait_with_output().unwrap();
    let all = format!(
        "{first}\n{complete}\n{}\n{}",
        rest.join("\n"),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), all)
}

#[test]
fn a_user_signs_in_from_another_device_and_slow_down_and_refusals_are_honoured() {
    let s = setup(300);
    // The first poll is told to slow down: the next waits five seconds more.
    let (rc, said) = device_login(&s, "allow", || s.inject("slow_down", 400));
    assert_eq!(rc, 0, "{said}");
    assert!(said.contains("poll less often; now every 6s"), "{said}");
    assert!(said.contains("signed in as alice"), "{said}");
    assert_eq!(
        s.status()["slots"][0]["user"]["preferred_username"],
        "alice"
    );
    assert_eq!(s.userinfo(&s.token()).0, 200);

    let (rc, said) = device_login(&s, "deny", || {});
    assert_eq!(rc, exit(ErrorCode::SignInFailed), "{said}");
    assert!(said.contains("denied at the verification page"), "{said}");
    assert_eq!(
        s.status()["slots"][0]["state"],
        "active",
        "a refused sign-in leaves the current one alone"
    );

    let (rc, said) = device_login(&s, "allow", || s.inject("expired_token", 400));
    assert_eq!(rc, exit(ErrorCode::SignInFailed), "{said}");
    assert!(said.contains("expired"), "{said}");
}

#[test]
fn an_existing_refresh_token_is_adopted_and_a_dead_one_is_refused() {
    let s = setup(300);
    let refresh = signin::refresh_token_of_alice(&s.emu);
    let out = s.home.regent(
        &["enroll", "--refresh-token-stdin"],
        Some(&format!("{refresh}\n")),
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        text(&out).contains("adopted the refresh token of alice"),
        "{}",
        text(&out)
    );
    assert_eq!(
        s.status()["slots"][0]["user"]["preferred_username"],
        "alice"
    );
    assert_eq!(s.userinfo(&s.token()).0, 200);

    // The same token again: the agent rotated it, so the server sees reuse.
    let out = Command::new(regent_bin())
        .args(["enroll", "--refresh-token", "--from-env", "OLD_TOKEN"])
        .env("REGENT_SOCKET", &s.home.socket)
        .env("OLD_TOKEN", &refresh)
        .output()
        .unwrap();
    assert_eq!(code(&out), exit(ErrorCode::Revoked), "{}", text(&out));
    assert!(
        text(&out).contains("sign in again with `regent login`"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains(&refresh), "the token is never echoed");
    assert!(!s.agent.log_text().contains(&refresh), "nor logged");
}

/// Registers a confidential client at the emulator (admin API, as an
/// administrator would) and points a fresh agent at it.
fn confidential_setup(s: &Setup, client_id: &str, grants: &[&str]) -> (AgentHome, AgentProc) {
    let admin = regent_agent_admin_token(&s.emu.url);
    let body = serde_json::json!({
        "clientId": client_id,
        "clientSecret": "web-s3cret",
        "authorizedGrantTypes": grants,
        "accessTokenValidity": 3,
    })
    .to_string();
    let auth = format!("Bearer {admin}");
    let made = request(
        "POST",
        &format!("{}/oauth/clients", s.emu.url),
        &[("Authorization", &auth)],
        Some(("application/json", &body)),
    );
    assert_eq!(made.status, 201, "{}", made.body);
    let home = signin::oauth2_home(&s.emu);
    let config = std::fs::read_to_string(&home.config).unwrap().replace(
        &format!("client_id = \"{}\"", signin::CLIENT),
        &format!("client_id = \"{client_id}\""),
    );
    std::fs::write(&home.config, config).unwrap();
    let agent = AgentProc::start(&home);
    (home, agent)
}

/// An admin bearer token from the emulator's password grant.
fn regent_agent_admin_token(url: &str) -> String {
    let answer = post_form(
        &format!("{url}/oauth/token"),
        &[],
        &[
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", "admin"),
        ],
    );
    let tokens: Value = serde_json::from_str(&answer.body).unwrap();
    tokens["access_token"].as_str().unwrap().to_owned()
}

#[test]
fn a_confidential_client_signs_in_with_its_secret_and_a_grant_without_refresh_is_refused() {
    let s = setup(3);
    let (home, _agent) = confidential_setup(&s, "web", &["authorization_code", "refresh_token"]);
    let login = |home: &AgentHome, args: &[&str], secret: Option<&str>| {
        let mut all = vec!["login"];
        all.extend_from_slice(args);
        let mut command = Command::new(regent_bin());
        command
            .args(&all)
            .env("REGENT_SOCKET", &home.socket)
            .env("BROWSER", test_browser_bin())
            .env("REGENT_TEST_BROWSER_USER", "alice")
            .env("REGENT_TEST_BROWSER_PASSWORD", PASSWORD)
            .stdin(Stdio::null());
        if let Some(secret) = secret {
            command.env("WEB_SECRET", secret);
        }
        command.output().unwrap()
    };
    // Without its secret the provider refuses the confidential client.
    let out = login(&home, &[], None);
    assert_eq!(
        code(&out),
        exit(ErrorCode::ClientCredentialsInvalid),
        "{}",
        text(&out)
    );
    let out = login(
        &home,
        &["--client-secret-env", "WEB_SECRET"],
        Some("web-s3cret"),
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(text(&out).contains("signed in as alice"), "{}", text(&out));
    // Renewed with the secret (HTTP Basic) and the rotating refresh token,
    // once an app asks (renewals follow demand).
    let out = home.regent(&["token", "--min-valid", "1"], None);
    assert_eq!(code(&out), 0, "{}", text(&out));
    wait_until(Duration::from_secs(30), "a renewal", || {
        status_of(&home)["slots"][0]["renewals_ok"].as_u64() >= Some(1)
    });
    let out = home.regent(&["token", "--min-valid", "1"], None);
    assert_eq!(code(&out), 0, "{}", text(&out));

    // A client the provider gives no refresh token cannot keep a sign-in.
    let (home, _agent) = confidential_setup(&s, "web-once", &["authorization_code"]);
    let out = login(
        &home,
        &["--client-secret-env", "WEB_SECRET"],
        Some("web-s3cret"),
    );
    assert_eq!(code(&out), exit(ErrorCode::Config), "{}", text(&out));
    assert!(
        text(&out).contains("gave no refresh token"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("offline_access"), "{}", text(&out));
}

#[test]
fn per_instance_agents_refuse_a_user_sign_in() {
    let emu = signin::emulator(300);
    let home = signin::oauth2_home(&emu);
    let config = std::fs::read_to_string(&home.config).unwrap()
        + "\n[instances]\nmode = \"per-instance\"\nmax = 2\n";
    std::fs::write(&home.config, config).unwrap();
    let _agent = AgentProc::start(&home);
    let out = home.regent(&["login", "--no-browser", "--timeout", "1"], None);
    assert_eq!(code(&out), exit(ErrorCode::Config), "{}", text(&out));
    assert!(text(&out).contains("per-instance"), "{}", text(&out));
}
