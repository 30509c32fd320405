//! Proxies and the license server (issue 18, item 1), against the real
//! `regent agent` and `regent emulator` binaries.
//!
//! - With `HTTP_PROXY`/`http_proxy`/`ALL_PROXY` pointing at a recording proxy,
//!   plain-HTTP traffic to the loopback emulator never reaches it: not a byte.
//!   (It used to receive the registration token, then every refresh and
//!   access token, in clear.)
//! - `http://localhost:PORT` is refused at start with the fix in the message.
//! - `https://` goes through a real CONNECT proxy, configured (`[server] proxy`)
//!   or from `HTTPS_PROXY`, with TLS end to end: the proxy sees the CONNECT
//!   line and opaque TLS records, never a secret. The chain is
//!   agent → CONNECT proxy → TLS terminator (a test CA named in
//!   `[server] ca_file`) → rewriting reverse proxy → emulator.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use regent_proto::ErrorCode;
use regent_tests::forward_proxy::ForwardProxy;
use regent_tests::proxy::Proxy;
use regent_tests::{AgentHome, AgentProc, EmulatorProc, code, text, wait_timeout};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};

/// Access-token lifetime at the emulator: short, so renewals come quickly.
const LIFETIME: u64 = 6;

/// Every variable a proxy-aware HTTP stack reads.
const PROXY_VARIABLES: [&str; 8] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

fn slot(home: &AgentHome) -> Value {
    let out = home.regent(&["status", "--json"], None);
    let status: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("status: {}", text(&out)));
    status["slots"][0].clone()
}

/// Enrolls with a fresh registration token, then lets the agent renew at
/// least twice; returns every secret that crossed the wire (registration
/// token, access tokens).
fn enroll_and_renew(home: &AgentHome, emulator: &EmulatorProc) -> Vec<String> {
    let registration = emulator.mint(1);
    let out = home.regent(&["enroll"], Some(&format!("{registration}\n")));
    assert!(out.status.success(), "enroll: {}", text(&out));
    let mut secrets = vec![registration];
    // Asking for nearly the whole lifetime keeps the agent renewing.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = home.regent(&["token", "--min-valid", &(LIFETIME - 1).to_string()], None);
        if out.status.success() {
            let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
            if !secrets.contains(&token) {
                secrets.push(token);
            }
        }
        if slot(home)["renewals_ok"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no two renewals within 60 s: {}",
            slot(home)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(secrets.len() >= 2, "no access token was handed out");
    secrets
}

/// Regression: with every proxy variable pointing at a recording proxy, the
/// agent's plain-HTTP traffic to the loopback emulator went to the proxy
/// (enrollment then failed on the proxy's 502). Now not one byte reaches it.
#[test]
fn plain_http_to_loopback_never_goes_through_the_environments_proxy() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let recorder = rt.block_on(ForwardProxy::start()).unwrap();
    let emulator = EmulatorProc::start(LIFETIME);
    let home = AgentHome::new(
        &emulator.url,
        "[refresh]\nbackoff_min = 1\nbackoff_max = 2\n",
    );
    let proxy = recorder.url();
    let env: Vec<(&str, &str)> = PROXY_VARIABLES[..6]
        .iter()
        .map(|name| (*name, proxy.as_str()))
        .collect();
    let agent = AgentProc::start_with_env(&home, &env, &["NO_PROXY", "no_proxy"]);

    enroll_and_renew(&home, &emulator);

    assert_eq!(
        recorder.connections(),
        0,
        "the agent connected to the proxy"
    );
    assert_eq!(recorder.bytes_received(), 0, "the proxy received bytes");
    assert!(recorder.plain_requests().is_empty());
    drop(agent);
}

/// Regression: `localhost` was treated as loopback and resolved through the
/// system resolver; the agent now refuses to start, naming the key and the fix.
#[test]
fn a_localhost_server_url_is_refused_with_the_fix() {
    for (url, key) in [
        ("http://localhost:8600/", "url"),
        ("http://localhost.:8600/", "url"),
    ] {
        let home = AgentHome::new(url, "");
        let mut agent = AgentProc::spawn(&home);
        let status = wait_timeout(&mut agent.child, Duration::from_secs(20));
        assert_eq!(
            status.code(),
            Some(i32::from(ErrorCode::Config.number())),
            "{url}: {}",
            agent.log_text()
        );
        let log = agent.log_text();
        assert!(
            log.contains(&format!(
                "[server] {key}: refusing plain http:// to localhost"
            )) && log.contains("use http://127.0.0.1:8600/"),
            "{url}: {log}"
        );
        // `regent agent --check` names the same problem.
        let out = regent_tests::regent(
            &[
                "agent",
                "--check",
                "--config",
                home.config.to_str().unwrap(),
            ],
            None,
            &[],
        );
        assert_eq!(
            code(&out),
            i32::from(ErrorCode::Config.number()),
            "{}",
            text(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("use http://127.0.0.1:8600/"),
            "{}",
            text(&out)
        );
    }
}

/// A test CA, and a certificate for 127.0.0.1 signed by it.
struct TestPki {
    ca_pem: String,
    leaf_der: rustls::pki_types::CertificateDer<'static>,
    key_der: rustls::pki_types::PrivateKeyDer<'static>,
}

fn test_pki() -> TestPki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "regent proxy-test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "regent proxy-test server");
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    TestPki {
        ca_pem: ca_cert.pem(),
        leaf_der: leaf_cert.der().clone(),
        key_der: rustls::pki_types::PrivatePkcs8KeyDer::from(leaf_key.serialize_der()).into(),
    }
}

/// A TLS terminator on `127.0.0.1:0` in front of `backend`; serves until the
/// runtime stops.
async fn tls_front(pki: &TestPki, backend: SocketAddr) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![pki.leaf_der.clone()], pki.key_der.clone_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

/// How the agent is told about the CONNECT proxy.
#[derive(Debug, Clone, Copy)]
enum ProxyFrom {
    Config,
    Environment,
    /// `HTTPS_PROXY` set, but `NO_PROXY` names the server: direct.
    EnvironmentExcluded,
}

fn https_through_a_connect_proxy(from: ProxyFrom) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let emulator = EmulatorProc::start(LIFETIME);
    let upstream: SocketAddr = emulator.url.trim_start_matches("http://").parse().unwrap();
    let pki = test_pki();
    let (reverse, front, connect, plain_recorder) = rt.block_on(async {
        let reverse = Proxy::start(upstream).await.unwrap();
        let front = tls_front(&pki, reverse.addr()).await;
        // The emulator names its own address in `tokenEndpoint`: make it the
        // https:// front, as a real server behind TLS would.
        reverse.rewrite(&reverse.url(), &format!("https://{front}"));
        let connect = ForwardProxy::start().await.unwrap();
        let plain_recorder = ForwardProxy::start().await.unwrap();
        (reverse, front, connect, plain_recorder)
    });
    let home = AgentHome::new(
        &format!("https://{front}"),
        "[refresh]\nbackoff_min = 1\nbackoff_max = 2\n",
    );
    let ca_file = home.dir.path().join("test-ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let mut server_keys = format!("ca_file = \"{}\"", ca_file.display());
    if matches!(from, ProxyFrom::Config) {
        server_keys.push_str(&format!("\nproxy = \"{}\"", connect.url()));
    }
    let config = std::fs::read_to_string(&home.config).unwrap();
    std::fs::write(
        &home.config,
        config.replace(
            "request_timeout = 5",
            &format!("request_timeout = 5\n{server_keys}"),
        ),
    )
    .unwrap();
    let connect_url = connect.url();
    let recorder_url = plain_recorder.url();
    let mut env = vec![
        ("HTTP_PROXY", recorder_url.as_str()),
        ("http_proxy", recorder_url.as_str()),
    ];
    if matches!(
        from,
        ProxyFrom::Environment | ProxyFrom::EnvironmentExcluded
    ) {
        env.push(("HTTPS_PROXY", connect_url.as_str()));
    }
    if matches!(from, ProxyFrom::EnvironmentExcluded) {
        env.push(("NO_PROXY", "localhost,127.0.0.1"));
    }
    // Removed first, then `env` is set (NO_PROXY included for the last case).
    let agent = AgentProc::start_with_env(
        &home,
        &env,
        &[
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
            "NO_PROXY",
            "no_proxy",
        ],
    );

    let mut secrets = enroll_and_renew(&home, &emulator);
    let stored = std::fs::read_to_string(home.dir.path().join("state/secrets.json")).unwrap();
    for field in serde_json::from_str::<Value>(&stored)
        .map(|v| collect_strings(&v))
        .unwrap_or_default()
    {
        if field.len() >= 16 {
            secrets.push(field); // the stored refresh token among them
        }
    }

    // The requests did go through the TLS front to the emulator…
    let requests: Vec<String> = reverse
        .exchanges()
        .iter()
        .map(|e| {
            String::from_utf8_lossy(&e.request)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert!(
        requests.iter().any(|r| r.contains("/authTokens")),
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .filter(|r| r.contains("openid-connect/token"))
            .count()
            >= 2,
        "{requests:?}"
    );
    if matches!(from, ProxyFrom::EnvironmentExcluded) {
        assert_eq!(connect.connections(), 0, "NO_PROXY was not honoured");
        assert_eq!(plain_recorder.bytes_received(), 0);
        return;
    }
    // …every one of them through a CONNECT tunnel, with TLS inside.
    let tunnels = connect.tunnels();
    assert!(!tunnels.is_empty(), "the agent did not use the proxy");
    assert!(connect.plain_requests().is_empty());
    for t in &tunnels {
        assert!(
            t.head.starts_with(&format!("CONNECT {front} HTTP/1.1\r\n")),
            "{:?}",
            t.head
        );
        assert_eq!(
            t.from_client.get(..2),
            Some(&[0x16, 0x03][..]),
            "not a TLS handshake"
        );
    }
    let seen = connect.everything_seen();
    for secret in &secrets {
        assert!(
            find(&seen, secret.as_bytes()).is_none(),
            "the proxy saw a secret in clear"
        );
    }
    for marker in [
        "Authorization",
        "refresh_token",
        "grant_type",
        "access_token",
    ] {
        assert!(
            find(&seen, marker.as_bytes()).is_none(),
            "the proxy saw {marker:?} in clear"
        );
    }
    // HTTP_PROXY is never used.
    assert_eq!(plain_recorder.bytes_received(), 0);
    assert!(slot(&home)["renewals_ok"].as_u64().unwrap_or(0) >= 2);
    assert!(home.regent(&["status"], None).status.success());
    drop(agent);
    drop(rt);
}

#[test]
fn https_goes_through_the_configured_connect_proxy_with_tls_end_to_end() {
    https_through_a_connect_proxy(ProxyFrom::Config);
}

#[test]
fn https_goes_through_the_environments_connect_proxy_with_tls_end_to_end() {
    https_through_a_connect_proxy(ProxyFrom::Environment);
}

#[test]
fn no_proxy_keeps_a_server_off_the_environments_proxy() {
    https_through_a_connect_proxy(ProxyFrom::EnvironmentExcluded);
}

/// Without `[server] ca_file`, the test CA is not trusted: a clear error that
/// names the key to set.
#[test]
fn an_unknown_ca_is_refused_and_the_message_names_ca_file() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let emulator = EmulatorProc::start(LIFETIME);
    let upstream: SocketAddr = emulator.url.trim_start_matches("http://").parse().unwrap();
    let pki = test_pki();
    let front = rt.block_on(tls_front(&pki, upstream));
    let home = AgentHome::new(&format!("https://{front}"), "");
    let agent = AgentProc::start_with_env(&home, &[], &PROXY_VARIABLES);
    let registration = emulator.mint(1);
    let out = home.regent(&["enroll"], Some(&format!("{registration}\n")));
    assert_eq!(
        code(&out),
        i32::from(ErrorCode::Unavailable.number()),
        "{}",
        text(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("[server] ca_file"), "{stderr}");
    drop(agent);
}

fn collect_strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().flat_map(collect_strings).collect(),
        Value::Object(o) => o.values().flat_map(collect_strings).collect(),
        _ => Vec::new(),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `regent admin` sends the admin password: with every proxy variable set it
/// still goes direct to the loopback emulator (it used to go to the proxy),
/// and a server naming a plain-http:// token endpoint elsewhere gets nothing.
#[test]
fn the_admin_cli_keeps_its_password_off_proxies_and_plain_http() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let emulator = EmulatorProc::start(LIFETIME);
    let recorder = rt.block_on(ForwardProxy::start()).unwrap();
    let proxy = recorder.url();
    let mut env: Vec<(&str, &str)> = PROXY_VARIABLES[..6]
        .iter()
        .map(|name| (*name, proxy.as_str()))
        .collect();
    env.extend([
        ("REGENT_ADMIN_USER", "admin"),
        ("REGENT_ADMIN_PASSWORD", "admin"),
        ("REGENT_ADMIN_URL", emulator.url.as_str()),
    ]);
    let out = regent_tests::regent(&["admin", "token", "list", "--json"], None, &env);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(recorder.bytes_received(), 0, "the proxy received bytes");

    // A server (here the emulator behind a rewriting proxy) that names a
    // plain-http token endpoint on another host.
    let upstream: SocketAddr = emulator.url.trim_start_matches("http://").parse().unwrap();
    let reverse = rt.block_on(Proxy::start(upstream)).unwrap();
    reverse.rewrite(&reverse.url(), "http://198.51.100.7");
    let rewritten = reverse.url();
    env.pop();
    env.push(("REGENT_ADMIN_URL", rewritten.as_str()));
    let out = regent_tests::regent(&["admin", "registration-token", "list"], None, &env);
    // The agent's own discovery refuses it, with the agent's code.
    assert_eq!(
        code(&out),
        i32::from(ErrorCode::Config.number()),
        "{}",
        text(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("names a token endpoint regent refuses") && stderr.contains("198.51.100.7"),
        "{stderr}"
    );
    // Only the discovery request reached the server: no password was posted.
    let requests: Vec<String> = reverse
        .exchanges()
        .iter()
        .map(|e| String::from_utf8_lossy(&e.request).into_owned())
        .collect();
    assert!(
        requests.iter().all(|r| !r.contains("password")),
        "{requests:?}"
    );
    assert_eq!(recorder.bytes_received(), 0);
}
