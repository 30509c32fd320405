//! Planted secrets: a whole lifecycle through the real CLI and agent, with
//! every byte they show anyone captured and scanned for every secret value
//! involved (issue 9, item 4).
//!
//! The secrets: the registration tokens (the real one and a wrong one), a
//! secret passed by mistake as an argument and one put in the config file by
//! mistake, and every access and refresh token the emulator issued — taken
//! from a recording proxy between the agent and the emulator (the emulator's
//! admin API never shows token values) — plus what the agent's file store
//! holds. Each is searched as written, JSON-escaped, in base64 (standard and
//! URL-safe, at every alignment) and by its first and last 12 characters.
//!
//! What is scanned: the agent's stdout and its stderr at `trace` level for
//! every crate, stdout and stderr of every CLI command (except the stdout of
//! `regent token`, whose output is the token by request), the error messages
//! clients received, `/proc/PID/cmdline` and `/proc/PID/environ` of the agent
//! and of any child it has (sampled all along), and every file in the state
//! directory except the secret store itself.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use regent_proto::ErrorCode;
use regent_tests::{
    AgentHome, AgentProc, EmulatorProc, code, exit, regent, regent_bin, scale, text,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// A recording HTTP proxy between the agent and the emulator.

/// Every response body the emulator sent through the proxy.
type Bodies = Arc<Mutex<Vec<Vec<u8>>>>;

/// Listens on loopback and forwards to `upstream`. Response bodies are
/// recorded, and the emulator's own address in them (`tokenEndpoint`) is
/// rewritten to the proxy's, so refreshes come through the proxy too. The
/// proxy's port has as many digits as the emulator's, so lengths (and
/// `Content-Length`) do not change.
fn start_proxy(upstream_url: &str) -> (String, Bodies) {
    let upstream: SocketAddr = upstream_url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let digits = upstream.port().to_string().len();
    let listener = (0..500)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .find(|l| l.local_addr().unwrap().port().to_string().len() == digits)
        .expect("a loopback port with as many digits as the emulator's");
    let port = listener.local_addr().unwrap().port();
    let from = format!("127.0.0.1:{}", upstream.port()).into_bytes();
    let to = format!("127.0.0.1:{port}").into_bytes();
    let bodies: Bodies = Arc::default();
    let recorded = Arc::clone(&bodies);
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(upstream) else {
                continue;
            };
            let (mut c_read, mut s_write) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_read, &mut s_write);
                let _ = s_write.shutdown(std::net::Shutdown::Write);
            });
            let (from, to, recorded) = (from.clone(), to.clone(), Arc::clone(&recorded));
            std::thread::spawn(move || relay_responses(server, client, &from, &to, &recorded));
        }
    });
    (format!("http://127.0.0.1:{port}"), bodies)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn replace_all(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut rest = data;
    while let Some(at) = find(rest, from) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to);
        rest = &rest[at + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// Reads whole HTTP/1.1 responses (`Content-Length` framed: the emulator
/// never chunks), records and rewrites their bodies, forwards them.
fn relay_responses(
    mut server: TcpStream,
    mut client: TcpStream,
    from: &[u8],
    to: &[u8],
    bodies: &Bodies,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        while let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            assert!(
                !head.contains("transfer-encoding: chunked"),
                "the proxy does not handle chunked responses"
            );
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
            if buf.len() < end + 4 + len {
                break;
            }
            let message: Vec<u8> = buf.drain(..end + 4 + len).collect();
            let (head, body) = message.split_at(end + 4);
            let body = replace_all(body, from, to);
            bodies.lock().unwrap().push(body.clone());
            if client
                .write_all(head)
                .and_then(|()| client.write_all(&body))
                .is_err()
            {
                return;
            }
        }
        match server.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let _ = client.shutdown(std::net::Shutdown::Write);
}

/// Token values in recorded response bodies.
fn issued_tokens(bodies: &Bodies) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for body in bodies.lock().unwrap().iter() {
        if let Ok(json) = serde_json::from_slice::<Value>(body) {
            collect(&json, &mut out);
        }
    }
    out
}

/// Strings under keys that name a secret, anywhere in `v` (JSON inside
/// strings included, as the file store nests it).
fn collect(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            for (key, value) in map {
                let secret_key = matches!(
                    key.as_str(),
                    "access_token"
                        | "refresh_token"
                        | "id_token"
                        | "client_secret"
                        | "token"
                        | "registration"
                        | "secret"
                );
                match value {
                    Value::String(s) if secret_key => {
                        out.insert(s.clone());
                    }
                    _ => collect(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|x| collect(x, out)),
        Value::String(s) => {
            if let Ok(inner) = serde_json::from_str::<Value>(s)
                && (inner.is_object() || inner.is_array())
            {
                collect(&inner, out);
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// The forms a secret could take in output.

fn base64(data: &[u8], alphabet: &[u8; 64]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(alphabet[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Needles for one secret: raw, JSON-escaped, first and last 12 characters,
/// and a 16-character run of its base64 (standard and URL-safe) at each of
/// the three alignments it can have inside a longer encoded text.
fn needles(secret: &str) -> Vec<(String, &'static str)> {
    let mut out = vec![(secret.to_owned(), "raw")];
    let json = serde_json::to_string(secret).unwrap();
    out.push((json[1..json.len() - 1].to_owned(), "json-escaped"));
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() >= 12 {
        out.push((chars[..12].iter().collect(), "first 12 chars"));
        out.push((chars[chars.len() - 12..].iter().collect(), "last 12 chars"));
    }
    for (alphabet, name) in [(STANDARD, "base64"), (URL_SAFE, "base64url")] {
        for shift in 0..3 {
            let mut data = vec![b'x'; shift];
            data.extend_from_slice(secret.as_bytes());
            let encoded = base64(&data, alphabet);
            // Skip the characters that carry the filler bytes.
            let skip = if shift == 0 { 0 } else { 4 };
            if encoded.len() >= skip + 16 {
                out.push((encoded[skip..skip + 16].to_owned(), name));
            }
        }
    }
    out.sort();
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

// ---------------------------------------------------------------------------
// What was captured.

#[derive(Default)]
struct Captured {
    sources: Vec<(String, Vec<u8>)>,
    /// Token values the CLI printed on request (collected, not scanned).
    printed_tokens: BTreeSet<String>,
}

impl Captured {
    fn add(&mut self, name: impl Into<String>, data: impl Into<Vec<u8>>) {
        self.sources.push((name.into(), data.into()));
    }

    /// A CLI command's output; `stdout_is_the_token` for `regent token`.
    fn cli(&mut self, step: &str, out: &Output, stdout_is_the_token: bool) {
        if stdout_is_the_token {
            let printed = String::from_utf8_lossy(&out.stdout).into_owned();
            self.printed_tokens.insert(printed.trim().to_owned());
        } else {
            self.add(format!("cli {step}: stdout"), out.stdout.clone());
        }
        self.add(format!("cli {step}: stderr"), out.stderr.clone());
    }

    /// `/proc/PID/{cmdline,environ}` of `pid` and of every child it has.
    fn proc_files(&mut self, pid: u32, when: &str) {
        let mut pids = vec![pid];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for task in tasks.flatten() {
                let children =
                    std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
                pids.extend(
                    children
                        .split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
        for p in pids {
            for file in ["cmdline", "environ"] {
                if let Ok(data) = std::fs::read(format!("/proc/{p}/{file}")) {
                    self.add(format!("/proc/{p}/{file} ({when})"), data);
                }
            }
        }
    }
}

/// `regent …` against the agent of `home`, with extra environment.
fn cli(home: &AgentHome, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Output {
    let mut all = home.env().to_vec();
    all.extend_from_slice(env);
    regent(args, stdin, &all)
}

#[test]
fn no_planted_secret_reaches_any_output() {
    let lifetime = 3;
    let renewals = scale(3, 30);
    let emulator = EmulatorProc::start(lifetime);
    let (proxy_url, bodies) = start_proxy(&emulator.url);
    let home = AgentHome::new(&proxy_url, "");
    let mut captured = Captured::default();
    let mut planted: Vec<(String, &'static str)> = Vec::new();

    // The agent, at trace level for every crate; stdout and stderr kept.
    let stdout_file = home.dir.path().join("agent.stdout");
    let log = home.dir.path().join("agent.log");
    let child = Command::new(regent_bin())
        .args(["agent", "--config"])
        .arg(&home.config)
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_file).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let agent = AgentProc { child, log };
    regent_tests::wait_for_socket(&home.socket, WAIT);
    let pid = agent.child.id();
    captured.proc_files(pid, "start");

    // Before enrollment.
    let out = cli(&home, &["status"], None, &[]);
    assert_eq!(code(&out), exit(ErrorCode::NotEnrolled), "{}", text(&out));
    captured.cli("status (not enrolled)", &out, false);

    // A wrong registration token, on stdin.
    let wrong = "planted-WRONG-registration-token-7Qx2vLk9Zr4Tw8Yp";
    planted.push((wrong.to_owned(), "wrong registration token"));
    let out = cli(&home, &["enroll"], Some(&format!("{wrong}\n")), &[]);
    assert_eq!(
        code(&out),
        exit(ErrorCode::RegistrationTokenInvalid),
        "{}",
        text(&out)
    );
    captured.cli("enroll (wrong token)", &out, false);

    // A secret passed as an argument by mistake: refused without echoing it.
    let as_argument = "planted-ARGUMENT-secret-Hq3mN8bV2cX6zL1k";
    planted.push((as_argument.to_owned(), "secret given as an argument"));
    let out = cli(&home, &["enroll", as_argument], None, &[]);
    assert_eq!(code(&out), exit(ErrorCode::BadRequest), "{}", text(&out));
    captured.cli("enroll (secret as argument)", &out, false);

    // The real registration token, on stdin.
    let registration = emulator.mint(3);
    planted.push((registration.clone(), "registration token"));
    let out = cli(&home, &["enroll"], Some(&format!("{registration}\n")), &[]);
    assert!(out.status.success(), "{}", text(&out));
    captured.cli("enroll", &out, false);
    captured.proc_files(pid, "enrolled");

    // Again, from an environment variable: ALREADY_ENROLLED, nothing echoed.
    let out = cli(
        &home,
        &["enroll", "--from-env", "REGENT_PLANTED_TOKEN"],
        None,
        &[("REGENT_PLANTED_TOKEN", &registration)],
    );
    assert_eq!(
        code(&out),
        exit(ErrorCode::AlreadyEnrolled),
        "{}",
        text(&out)
    );
    captured.cli("enroll --from-env (already enrolled)", &out, false);

    // Tokens in every format: stdout is the token by request, stderr is scanned.
    for format in ["raw", "json", "header", "exec-credential"] {
        let out = cli(
            &home,
            &["token", "--min-valid", "1", "--format", format],
            None,
            &[],
        );
        assert!(out.status.success(), "{}", text(&out));
        captured.cli(&format!("token --format {format}"), &out, true);
    }
    for (step, args) in [
        ("status", &["status"][..]),
        ("status --json", &["status", "--json"][..]),
        ("metrics", &["metrics"][..]),
    ] {
        let out = cli(&home, args, None, &[]);
        assert!(out.status.success(), "{step}: {}", text(&out));
        captured.cli(step, &out, false);
    }

    // Renewals (each rotates the refresh token), with demand held by fetches.
    let count_renewals = || agent.log_text().matches("access token renewed").count();
    let before = count_renewals();
    let deadline = std::time::Instant::now() + WAIT * u32::try_from(renewals).unwrap();
    while count_renewals() < before + renewals {
        assert!(
            std::time::Instant::now() < deadline,
            "renewals stalled:\n{}",
            agent.log_text()
        );
        let out = cli(&home, &["token", "--min-valid", "1"], None, &[]);
        assert!(out.status.success(), "{}", text(&out));
        captured.cli("token (renewal loop)", &out, true);
        std::thread::sleep(Duration::from_millis(500));
    }
    captured.proc_files(pid, "renewing");
    let mut stores =
        vec![std::fs::read_to_string(home.dir.path().join("state/secrets.json")).unwrap()];

    // Unenroll, enroll again (the same registration token, another session).
    let out = cli(&home, &["unenroll"], None, &[]);
    assert!(out.status.success(), "{}", text(&out));
    captured.cli("unenroll", &out, false);
    let out = cli(&home, &["token", "--min-valid", "1"], None, &[]);
    assert_eq!(code(&out), exit(ErrorCode::NotEnrolled), "{}", text(&out));
    captured.cli("token (not enrolled)", &out, false);
    let out = cli(&home, &["enroll"], Some(&registration), &[]);
    assert!(out.status.success(), "{}", text(&out));
    captured.cli("enroll again", &out, false);
    stores.push(std::fs::read_to_string(home.dir.path().join("state/secrets.json")).unwrap());

    // Revoked at the server: the next renewal fails, clients are told.
    for auth in emulator.auth_tokens() {
        emulator.revoke(auth["id"].as_str().unwrap());
    }
    let mut last = None;
    regent_tests::wait_until(WAIT, "the agent to notice the revocation", || {
        let out = cli(&home, &["status"], None, &[]);
        let revoked = code(&out) == exit(ErrorCode::Revoked);
        last = Some(out);
        revoked
    });
    captured.cli("status (revoked)", &last.unwrap(), false);
    let out = cli(&home, &["token", "--min-valid", "1"], None, &[]);
    assert_eq!(code(&out), exit(ErrorCode::Revoked), "{}", text(&out));
    captured.cli("token (revoked)", &out, false);
    let out = cli(&home, &["status", "--json"], None, &[]);
    captured.cli("status --json (revoked)", &out, false);
    captured.proc_files(pid, "revoked");
    let out = cli(&home, &["unenroll"], None, &[]);
    assert!(out.status.success(), "{}", text(&out));
    captured.cli("unenroll (revoked)", &out, false);

    // Errors seen by a client of the library, verbatim.
    let client_error = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let client = regent_client::Client::connect(home.client_options("scan"))
            .await
            .unwrap();
        client.token(Duration::from_secs(1)).await.unwrap_err()
    });
    captured.add(
        "client error (not enrolled)",
        format!("{client_error} {client_error:?}"),
    );

    // A config file with secrets put in by mistake (keys of their own).
    let config_secret = "planted-CONFIG-secret-Rk7wQ2nJ5xB9mT3v";
    planted.push((config_secret.to_owned(), "secret in the config file"));
    let bad = home.dir.path().join("bad.toml");
    for (i, body) in [
        format!("[server]\nprofile = \"sentinel\"\nurl = \"https://x.example\"\nregistration_token = \"{config_secret}\"\n"),
        format!("[server]\nprofile = \"sentinel\"\nurl = \"https://x.example\"\n[enroll]\ntoken = \"{config_secret}\"\n"),
        format!("[server]\nprofile = \"sentinel\"\nurl = \"https://x.example\"\nauth_token = \"{config_secret}\"\n"),
    ]
    .iter()
    .enumerate()
    {
        std::fs::write(&bad, body).unwrap();
        let out = regent(&["agent", "--check", "--config", bad.to_str().unwrap()], None, &[]);
        assert_eq!(code(&out), exit(ErrorCode::Config), "{}", text(&out));
        captured.cli(&format!("agent --check (bad config {i})"), &out, false);
        // And as a live edit of the running agent's file: rejected, logged.
        let original = std::fs::read_to_string(&home.config).unwrap();
        let skip = agent.log_lines();
        regent_tests::save_by_rename(&home.config, &format!("{original}\n{}", body.lines().skip(3).collect::<Vec<_>>().join("\n")));
        agent.wait_for_log_line(skip, &["configuration change rejected"], WAIT);
        regent_tests::save_by_rename(&home.config, &original);
    }

    // Stop the agent; then everything it wrote.
    let status = agent.terminate();
    assert!(status.success(), "{status}");
    let agent_log = std::fs::read(home.dir.path().join("agent.log")).unwrap();
    let trace_lines = String::from_utf8_lossy(&agent_log)
        .matches(" TRACE ")
        .count();
    assert!(trace_lines > 20, "the agent did not log at trace level");
    captured.add("agent stderr (trace)", agent_log);
    captured.add("agent stdout", std::fs::read(&stdout_file).unwrap());
    let state = home.dir.path().join("state");
    stores.push(std::fs::read_to_string(state.join("secrets.json")).unwrap_or_default());
    for entry in walk(&state) {
        if entry.file_name().is_some_and(|n| n == "secrets.json") {
            continue;
        }
        captured.add(
            format!("state file {}", entry.display()),
            std::fs::read(&entry).unwrap(),
        );
    }

    // The secrets the server issued, and what the store held.
    let issued = issued_tokens(&bodies);
    assert!(
        issued.len() >= 2 * renewals,
        "the proxy saw only {} token values",
        issued.len()
    );
    for token in &issued {
        planted.push((token.clone(), "token issued by the server"));
    }
    let mut stored = BTreeSet::new();
    for store in &stores {
        if let Ok(json) = serde_json::from_str::<Value>(store) {
            collect(&json, &mut stored);
        }
    }
    assert!(!stored.is_empty(), "the secret store held nothing readable");
    for s in stored {
        planted.push((s, "value in the secret store"));
    }
    for printed in &captured.printed_tokens {
        assert!(
            issued.iter().any(|t| printed.contains(t.as_str())),
            "the CLI printed a token the proxy never saw"
        );
    }

    // Scan.
    let mut forms = 0usize;
    let mut failures = Vec::new();
    let mut seen = BTreeSet::new();
    for (secret, kind) in &planted {
        if secret.len() < 12 || !seen.insert(secret.clone()) {
            continue;
        }
        for (needle, form) in needles(secret) {
            forms += 1;
            for (source, data) in &captured.sources {
                if find(data, needle.as_bytes()).is_some() {
                    failures.push(format!("{kind} ({form}) found in {source}"));
                }
            }
        }
    }
    let bytes: usize = captured.sources.iter().map(|(_, d)| d.len()).sum();
    let lines: usize = captured
        .sources
        .iter()
        .map(|(_, d)| d.iter().filter(|b| **b == b'\n').count())
        .sum();
    eprintln!(
        "secret scan: {} sources, {bytes} bytes, {lines} lines; {} distinct secrets ({} issued by the server) in {forms} forms; {} renewals; {} token outputs withheld",
        captured.sources.len(),
        seen.len(),
        issued.len(),
        renewals,
        captured.printed_tokens.len()
    );
    for (source, data) in &captured.sources {
        if data.len() > 2048 {
            eprintln!("  {source}: {} bytes", data.len());
        }
    }
    assert!(
        failures.is_empty(),
        "secrets leaked:\n{}",
        failures.join("\n")
    );
    assert!(
        bytes > 10_000,
        "too little output was captured: {bytes} bytes"
    );
}

/// Every file below `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Regression: with `RUST_LOG=trace` and the log file in the config file's
/// (watched) directory, every line written was a file event the watch crates
/// traced — a log that fed itself (20 MB in 3 s, one core busy).
#[test]
fn trace_logs_next_to_the_config_file_do_not_feed_themselves() {
    let emulator = EmulatorProc::start(300);
    let home = AgentHome::new(&emulator.url, "");
    let agent = AgentProc::start_with_env(&home, &[("RUST_LOG", "trace")], &[]);
    assert_eq!(
        agent.log.parent(),
        home.config.parent(),
        "the log is in the watched directory"
    );
    // Wait for an event that is surely after the watch started, then idle.
    agent.wait_for_log_line(0, &["watching the configuration file"], WAIT);
    let out = home.regent(&["status"], None);
    assert_eq!(code(&out), exit(ErrorCode::NotEnrolled), "{}", text(&out));
    std::thread::sleep(Duration::from_secs(1));
    let first = std::fs::metadata(&agent.log).unwrap().len();
    std::thread::sleep(Duration::from_secs(1));
    let second = std::fs::metadata(&agent.log).unwrap().len();
    assert!(
        second - first < 4096 && second < 256 * 1024,
        "an idle agent kept logging: {first} then {second} bytes"
    );
    assert!(
        !agent.log_text().contains("inotify event"),
        "file-watch events are traced"
    );
}
