//! End to end: running as a service. Readiness over `$NOTIFY_SOCKET`, the
//! systemd units and the launchd plist, Prometheus metrics and audit lines.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use regent_client::{Client, SubscriptionEvent};
use regent_tests::{
    AgentHome, AgentProc, EmulatorProc, have_tool, regent_bin, repo_root, text, wait_timeout,
};

fn receive(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 1024];
    let n = socket.recv(&mut buf).expect("a notify datagram in time");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn readiness_is_sent_only_once_the_socket_listens_and_stopping_on_sigterm() {
    let emulator = EmulatorProc::start(300);
    let home = AgentHome::new(&emulator.url, "");
    let notify_path = home.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = Command::new(regent_bin())
        .args(["agent", "--config"])
        .arg(&home.config)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(home.dir.path().join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = notify.recv(&mut buf).unwrap_or_else(|e| {
        panic!(
            "no READY=1 ({e}); agent log:\n{}",
            std::fs::read_to_string(home.dir.path().join("agent.log")).unwrap_or_default()
        )
    });
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    // By the time READY=1 arrives the socket must already accept clients.
    let connected = UnixStream::connect(&home.socket);
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    assert!(ready.contains("STATUS=serving on"), "{ready:?}");
    assert!(connected.is_ok(), "READY=1 before the socket listened");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(receive(&notify).starts_with("STOPPING=1\n"));
    assert!(wait_timeout(&mut child, Duration::from_secs(15)).success());
}

/// Runs `systemd-analyze verify` on a copy of `unit` whose ExecStart points
/// at the binary just built (verify insists that the program exists).
fn verify_unit(unit: &Path, user: bool) {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(unit).unwrap();
    assert!(text.contains("ExecStart=/usr/bin/regent agent"), "{text}");
    let copy = dir.path().join("regent.service");
    std::fs::write(
        &copy,
        text.replace(
            "ExecStart=/usr/bin/regent",
            &format!("ExecStart={}", regent_bin().display()),
        ),
    )
    .unwrap();
    let runtime = dir.path().join("runtime");
    std::fs::create_dir(&runtime).unwrap();
    let mut cmd = Command::new("systemd-analyze");
    if user {
        cmd.arg("--user").env("XDG_RUNTIME_DIR", &runtime);
    }
    let out = cmd.arg("verify").arg(&copy).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify reports unknown keys and bad values as warnings with exit 0:
    // any line about our unit is a failure.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("regent.service") || l.contains(&*copy.to_string_lossy()))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "{} does not verify:\n{}",
        unit.display(),
        text_of(&out)
    );
}

fn text_of(out: &std::process::Output) -> String {
    text(out)
}

#[test]
fn both_systemd_units_verify() {
    if !have_tool("systemd-analyze") {
        return;
    }
    let root = repo_root();
    let system = root.join("packaging/systemd/regent.service");
    verify_unit(&system, false);
    verify_unit(&root.join("packaging/systemd/user/regent.service"), true);
    let text = std::fs::read_to_string(&system).unwrap();
    for required in [
        "Type=notify",
        "User=regent",
        "Group=regent",
        "StateDirectory=regent",
        "RuntimeDirectory=regent",
        "ConfigurationDirectory=regent",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
        "UMask=0077",
    ] {
        assert!(
            text.lines()
                .any(|l| l.trim() == required || l.starts_with(&format!("{required} "))),
            "regent.service lacks {required}"
        );
    }
}

#[test]
fn the_launchd_plist_is_a_valid_launch_agent() {
    if !have_tool("python3") {
        return;
    }
    let plist = repo_root().join("packaging/launchd/com.regent.agent.plist");
    let check = r#"
import plistlib, sys
d = plistlib.load(open(sys.argv[1], "rb"))
assert d["Label"] == "com.regent.agent", d
assert d["ProgramArguments"][1:] == ["agent"], d
assert d["KeepAlive"] == {"SuccessfulExit": False}, d
assert d["RunAtLoad"] is True
assert d["StandardErrorPath"].startswith("__HOME__/Library/Logs/"), d
assert d["EnvironmentVariables"]["REGENT_SOCKET"].startswith("__RUNTIME_DIR__/"), d
print("ok")
"#;
    let out = Command::new("python3")
        .args(["-c", check])
        .arg(&plist)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // Every key is one launchd.plist(5) documents, with a value of its type.
    let out = check_plist(&plist);
    assert!(out.status.success(), "{}", text(&out));
}

/// `packaging/launchd/check_plist.py` with the committed list of launchd's
/// documented keys.
fn check_plist(plist: &Path) -> std::process::Output {
    let dir = repo_root().join("packaging/launchd");
    Command::new("python3")
        .arg(dir.join("check_plist.py"))
        .arg(dir.join("launchd-keys.txt"))
        .arg(plist)
        .output()
        .unwrap()
}

#[test]
fn the_plist_check_refuses_unknown_keys_wrong_types_and_values() {
    if !have_tool("python3") {
        return;
    }
    let original =
        std::fs::read_to_string(repo_root().join("packaging/launchd/com.regent.agent.plist"))
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // (edit, what the check must name)
    let cases = [
        (
            ("<key>RunAtLoad</key>", "<key>RunAtLaod</key>"),
            "RunAtLaod: not a key launchd.plist(5) documents at the top level",
        ),
        (
            ("<key>SuccessfulExit</key>", "<key>SuccesfulExit</key>"),
            "KeepAlive.SuccesfulExit: not a key launchd.plist(5) documents in KeepAlive",
        ),
        (
            ("<integer>10</integer>", "<string>10</string>"),
            "ThrottleInterval: a str where launchd expects integer",
        ),
        (
            ("<string>Background</string>", "<string>Lazy</string>"),
            "ProcessType: 'Lazy' is not one of",
        ),
        (("<key>Label</key>", "<key>Name</key>"), "Label: missing"),
        (
            ("</dict>\n</plist>", "</dict>"),
            "not a valid property list",
        ),
    ];
    for ((from, to), named) in cases {
        assert!(original.contains(from), "the plist no longer has {from:?}");
        let path = dir.path().join("edited.plist");
        std::fs::write(&path, original.replacen(from, to, 1)).unwrap();
        let out = check_plist(&path);
        assert!(!out.status.success(), "{from:?} → {to:?} passed");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains(named), "{from:?} → {to:?}: {said}");
    }
}

/// A small checker for the Prometheus text exposition format (0.0.4): every
/// line is a `# HELP`, a `# TYPE` or a sample `name{labels} value`; TYPE comes
/// before a family's samples; names and labels are well formed; values are
/// numbers; no series repeats; counters end in `_total`; histograms have
/// increasing cumulative `le` buckets ending in `+Inf` equal to `_count`.
/// Returns the samples.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    fn is_name(s: &str) -> bool {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    fn value(s: &str) -> f64 {
        match s {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            _ => s
                .parse()
                .unwrap_or_else(|_| panic!("not a sample value: {s:?}")),
        }
    }
    assert!(text.ends_with('\n'), "exposition must end with a newline");
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helped = BTreeSet::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(is_name(name), "{line}");
            assert!(helped.insert(name.to_owned()), "HELP twice: {line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap_or(""));
            assert!(is_name(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(parts.next().is_none(), "{line}");
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE twice: {line}"
            );
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line: {line:?}"
        );
        let (series, val) = line.rsplit_once(' ').expect("name and value");
        let name = series.split('{').next().unwrap();
        assert!(is_name(name), "{line}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            let inner = labels
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .unwrap_or_else(|| panic!("bad label set: {line}"));
            for pair in inner.split(',') {
                let (key, quoted) = pair.split_once('=').expect("label=value");
                assert!(is_name(key), "{line}");
                assert!(
                    quoted.len() >= 2 && quoted.starts_with('"') && quoted.ends_with('"'),
                    "{line}"
                );
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(name);
        let kind = types
            .get(family)
            .unwrap_or_else(|| panic!("sample before its TYPE: {line}"));
        if kind == "counter" {
            assert!(name.ends_with("_total"), "counter without _total: {line}");
        }
        assert!(
            samples.insert(series.to_owned(), value(val)).is_none(),
            "series twice: {line}"
        );
    }
    for (family, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        let prefix = format!("{family}_bucket{{le=\"");
        let buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter_map(|(k, v)| {
                let le = k.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                Some((value(le), *v))
            })
            .collect();
        let mut sorted = buckets.clone();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(
            sorted.last().is_some_and(|b| b.0.is_infinite()),
            "{family}: no +Inf bucket"
        );
        assert!(
            sorted.windows(2).all(|w| w[0].1 <= w[1].1),
            "{family}: buckets not cumulative"
        );
        let count = samples[&format!("{family}_count")];
        assert_eq!(sorted.last().unwrap().1, count, "{family}: +Inf != _count");
        assert!(samples.contains_key(&format!("{family}_sum")));
    }
    samples
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_audit_lines_hold_no_secret() {
    let emulator = EmulatorProc::start(300);
    let home = AgentHome::new(&emulator.url, "");
    let agent = AgentProc::start_with_env(
        &home,
        &[("RUST_LOG", "regent::audit=debug,regent_agent=debug,info")],
        &[],
    );
    let registration = emulator.mint(1);
    let out = home.regent(&["enroll"], Some(&format!("{registration}\n")));
    assert!(out.status.success(), "{}", text(&out));
    let token = home.regent(&["token"], None);
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    assert!(token.len() > 20);
    // The same token twice to one app, and once through a subscription.
    let client = Client::connect(home.client_options("audited-app"))
        .await
        .unwrap();
    client.token(Duration::from_secs(30)).await.unwrap();
    client.token(Duration::from_secs(30)).await.unwrap();
    let mut sub = client.subscribe(Duration::from_secs(30)).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
        Ok(Ok(SubscriptionEvent::Token(_))) => {}
        other => panic!("expected a token push, got {other:?}"),
    }

    let metrics = home.regent(&["metrics"], None);
    assert!(metrics.status.success(), "{}", text(&metrics));
    let metrics = String::from_utf8(metrics.stdout).unwrap();
    let samples = parse_prometheus(&metrics);
    assert_eq!(samples["regent_slot_state{state=\"active\"}"], 1.0);
    assert!(samples["regent_tokens_served_total"] >= 4.0, "{metrics}");
    assert!(samples.contains_key("regent_renewals_total{outcome=\"ok\"}"));
    assert!(samples.contains_key("regent_renewals_total{outcome=\"failed\"}"));
    assert!(samples["regent_connections_open"] >= 1.0, "{metrics}");
    // The redemption was one upstream request, at least.
    assert!(samples["regent_upstream_request_duration_seconds_count"] >= 1.0);
    assert!(!metrics.contains(&token));

    let log = agent.log_text();
    let audit: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("regent::audit"))
        .collect();
    let handouts: Vec<&&str> = audit
        .iter()
        .filter(|l| l.contains("token handed out") && l.contains("audited-app"))
        .collect();
    assert!(
        handouts
            .iter()
            .any(|l| l.contains(" INFO ") && l.contains("via=\"token\"")),
        "{log}"
    );
    assert!(
        handouts
            .iter()
            .any(|l| l.contains("DEBUG") && l.contains("handed out again")),
        "a repeat of the same token is a debug line:\n{log}"
    );
    for line in &handouts {
        for field in ["pid=", "uid=", "exe=", "expires_at=", "token_type="] {
            assert!(line.contains(field), "{field} missing: {line}");
        }
    }
    assert!(
        audit
            .iter()
            .any(|l| l.contains("enrolled") && l.contains("identifier=")),
        "{log}"
    );
    assert!(!log.contains(&token), "an access token reached the log");
    assert!(
        !log.contains(&registration),
        "the registration token reached the log"
    );
    drop(sub);
    drop(client);
    assert!(agent.terminate().success());
}

#[test]
fn journald_format_falls_back_to_text_on_stderr_without_a_journal() {
    if Path::new("/run/systemd/journal/socket").exists() {
        eprintln!("skipped: a journal runs here, so there is no fallback to see");
        return;
    }
    let emulator = EmulatorProc::start(300);
    let home = AgentHome::new(&emulator.url, "[log]\nformat = \"journald\"\n");
    let agent = AgentProc::start(&home);
    let out = home.regent(&["status"], None);
    assert_eq!(
        code_of(&out),
        i32::from(regent_proto::ErrorCode::NotEnrolled.number())
    );
    let log = agent.log_text();
    assert!(
        log.contains("[log] format = \"journald\", but the journal is unreachable"),
        "{log}"
    );
    assert!(log.contains("regent agent starting"), "{log}");
}

fn code_of(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

#[test]
fn status_is_unhealthy_once_a_degraded_agent_has_no_valid_token() {
    let emulator = EmulatorProc::start(2);
    let home = AgentHome::new(&emulator.url, "");
    let _agent = AgentProc::start(&home);
    let out = home.regent(&["enroll"], Some(&format!("{}\n", emulator.mint(1))));
    assert!(out.status.success(), "{}", text(&out));
    let out = home.regent(&["status"], None);
    assert_eq!(code_of(&out), 0, "{}", text(&out));
    // The license server goes away: renewals fail, the cached token expires.
    drop(emulator);
    let unavailable = i32::from(regent_proto::ErrorCode::Unavailable.number());
    regent_tests::wait_until(
        Duration::from_secs(20),
        "status to report UNAVAILABLE",
        || {
            home.regent(&["token", "--min-valid", "1"], None);
            code_of(&home.regent(&["status"], None)) == unavailable
        },
    );
    let out = home.regent(&["status", "--json"], None);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["slots"][0]["state"], "degraded", "{status}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cached token has expired"));
}
