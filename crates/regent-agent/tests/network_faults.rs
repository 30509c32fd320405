//! Network faults between the agent and its license server (issue 9, item 2).
//!
//! A table of faults, each tried on both upstream profiles (sentinel, oauth2)
//! and in both phases (enrollment = redemption / client credentials, renewal =
//! refresh). Every case runs a fresh world: the emulator, the loopback fault
//! proxy (`tests/src/proxy.rs`) in front of it, and a real agent serving its IPC
//! socket in this process, pointed at the proxy, with short timeouts
//! (connect 1 s, request 2 s) and short backoff (1–2 s). Then:
//!
//! 1. the fault goes on (in the proxy, or the emulator's own fault injection);
//! 2. renewal: a request the cache can serve is still served (the outage rule
//!    of DESIGN §4: cached tokens are served while valid); a request that needs
//!    a renewal gets `UNAVAILABLE` whose cause (`status`'s `last_error_code`)
//!    is the expected code; enrollment: the enroll call fails with the expected
//!    code. Either way the call completes (hang detector: a generous
//!    `tokio::time::timeout`), and the agent answers `status` over IPC while the
//!    upstream call is stuck;
//! 3. the fault goes off; the agent serves a fresh token, live at the
//!    emulator, without a restart (sentinel: the interrupted redemption
//!    resumes by itself and never costs a second count; oauth2: the enroll
//!    call is simply repeated, as nothing was stored);
//! 4. no secret (registration token, client secret, any access or refresh
//!    token seen on the wire) appears in any message the client saw or in the
//!    agent's log.
//!
//! The sentinel emulator runs with refresh-token rotation off: with rotation on,
//! a refresh whose answer is lost after the server processed it leaves the
//! agent with a stale refresh token and Keycloak-style reuse detection ends the
//! session — inherent to rotation, shown separately by
//! `lost_refresh_answer_with_rotation_ends_the_session_cleanly`. The oauth2
//! client rotates, and recovers from that by falling back to client credentials.
//!
//! Quick form: every fault once per profile and phase (a few hundred cases run
//! concurrently, ~1 min). Long form (`REGENT_LONG=1`): also a randomized
//! sequence of many faults against one long-lived agent per profile, checking
//! recovery after each and that descriptors and memory do not grow.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

#[allow(dead_code)]
#[path = "../../../tests/src/proxy.rs"]
mod proxy;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::Server;
use proxy::{Cut, Fault, Proxy};
use regent_agent::config::Config;
use regent_client::{Client, ClientOptions, ErrorCode, Token};
use regent_emulator::EmulatorConfig;
use reqwest::Method;
use serde_json::{Value, json};

/// Access-token lifetime at the emulator.
const LIFETIME: u64 = 10;
/// After enrollment the token is left to age this long, so that a request for
/// `MIN_VALID` needs a renewal while a fresh token satisfies it.
const AGE: Duration = Duration::from_millis(2300);
const MIN_VALID: Duration = Duration::from_secs(8);
/// The agent's upstream timeouts (seconds).
const CONNECT_TIMEOUT: u64 = 1;
const REQUEST_TIMEOUT: u64 = 2;
/// Longer than the request timeout: a delay this long must time out.
const ABOVE_TIMEOUT: Duration = Duration::from_millis(3000);
const BELOW_TIMEOUT: Duration = Duration::from_millis(200);
/// Hang detectors, far above what the timeouts allow.
const CALL_BOUND: Duration = Duration::from_secs(45);
const IPC_BOUND: Duration = Duration::from_secs(5);
const RECOVERY_BOUND: Duration = Duration::from_secs(40);
/// Cases in flight at once.
const CONCURRENCY: usize = 64;
const CLIENT_ID: &str = "faults";
const CLIENT_SECRET: &str = "oauth-client-secret-4f1d9c2e7b";
/// Planted in hostile answers: must never show up in a message.
const PLANTED: &str = "planted-secret-9a8b7c6d";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Profile {
    Sentinel,
    OAuth2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Enroll,
    Renew,
}

impl Profile {
    fn name(self) -> &'static str {
        match self {
            Profile::Sentinel => "sentinel",
            Profile::OAuth2 => "oauth2",
        }
    }
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Enroll => "enroll",
            Phase::Renew => "renew",
        }
    }
}

/// Where a fault is injected.
#[derive(Clone)]
enum Inject {
    Proxy(Fault),
    /// `PUT /_emulator/faults` body (its `routes` are set per phase).
    Emulator(Value),
}

/// What the client must see while the fault is on.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// The operation succeeds (the fault is harmless or absorbed).
    Served,
    /// It fails, classified as one of these codes.
    Code(&'static [ErrorCode]),
}

type TokenCheck = fn(&Token) -> Result<(), String>;

#[derive(Clone)]
struct Case {
    name: String,
    inject: Inject,
    expect: Expect,
    /// An extra check of a token served during the fault.
    check: Option<TokenCheck>,
    /// Recovery needs the enroll call repeated (the agent was asked to wait
    /// longer than the test runs).
    reenroll: bool,
}

const TIMEOUT: &[ErrorCode] = &[ErrorCode::Timeout];
const UNAVAILABLE: &[ErrorCode] = &[ErrorCode::Unavailable];
const SERVER_ERROR: &[ErrorCode] = &[ErrorCode::ServerError];
const RATE_LIMITED: &[ErrorCode] = &[ErrorCode::RateLimited];

fn case(name: &str, inject: Inject, expect: Expect) -> Case {
    Case {
        name: name.to_owned(),
        inject,
        expect,
        check: None,
        reenroll: false,
    }
}

fn proxy_case(name: &str, fault: Fault, expect: Expect) -> Case {
    case(name, Inject::Proxy(fault), expect)
}

fn checked(mut c: Case, check: TokenCheck) -> Case {
    c.check = Some(check);
    c
}

/// The token object of an answer: `authToken.token` in a Sentinel redemption,
/// the whole body otherwise.
fn token_object(v: &mut Value) -> &mut Value {
    if v.get("authToken").and_then(|a| a.get("token")).is_some() {
        &mut v["authToken"]["token"]
    } else {
        v
    }
}

/// Forwards, then sets (or with `None` removes) one field of the token object.
fn field(name: &'static str, value: Option<Value>) -> Fault {
    Fault::json(move |v| {
        let t = token_object(v);
        match &value {
            Some(x) => t[name] = x.clone(),
            None => {
                if let Some(o) = t.as_object_mut() {
                    o.remove(name);
                }
            }
        }
    })
}

fn lifetime_clamped(t: &Token) -> Result<(), String> {
    let left = t.remaining();
    if left > Duration::from_secs(24 * 3600) {
        return Err(format!("lifetime not clamped: {left:?}"));
    }
    Ok(())
}

fn bearer(t: &Token) -> Result<(), String> {
    if t.token_type != "Bearer" {
        return Err(format!("token_type {:?}, expected Bearer", t.token_type));
    }
    Ok(())
}

fn mac(t: &Token) -> Result<(), String> {
    if t.token_type != "MAC" {
        return Err(format!("token_type {:?}, expected MAC", t.token_type));
    }
    Ok(())
}

/// Every fault, for one profile and phase.
fn catalogue(profile: Profile, phase: Phase) -> Vec<Case> {
    use Expect::{Code, Served};
    let big = vec![b' '; 2 * 1024 * 1024];
    let mut chunked =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    // 18 chunks of 64 KiB: past the 1 MiB limit.
    for _ in 0..18 {
        chunked.extend_from_slice(format!("10000\r\n{}\r\n", " ".repeat(0x10000)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let mut big_headers = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n".to_vec();
    for i in 0..20_000 {
        big_headers.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "h".repeat(40)).as_bytes());
    }
    big_headers.extend_from_slice(b"Content-Length: 2\r\n\r\n{}");
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));

    let mut cases = vec![
        // Latency.
        proxy_case(
            "latency below the timeout (proxy)",
            Fault::Delay(BELOW_TIMEOUT),
            Served,
        ),
        proxy_case(
            "latency above the timeout (proxy)",
            Fault::Delay(ABOVE_TIMEOUT),
            Code(TIMEOUT),
        ),
        case(
            "latency below the timeout (emulator)",
            Inject::Emulator(json!({"latencyMs": BELOW_TIMEOUT.as_millis() as u64})),
            Served,
        ),
        case(
            "latency above the timeout (emulator)",
            Inject::Emulator(json!({"latencyMs": ABOVE_TIMEOUT.as_millis() as u64})),
            Code(TIMEOUT),
        ),
        // Resets and closes.
        proxy_case("RST mid-request", Fault::ResetRequest, Code(UNAVAILABLE)),
        proxy_case(
            "RST in the answer's headers",
            Fault::ResetResponse(Cut::Bytes(20)),
            Code(UNAVAILABLE),
        ),
        proxy_case(
            "RST in the answer's body",
            Fault::ResetResponse(Cut::Body(10)),
            Code(UNAVAILABLE),
        ),
        proxy_case("closed without an answer", Fault::Close, Code(UNAVAILABLE)),
        case(
            "connection dropped (emulator)",
            Inject::Emulator(json!({"dropConnections": 1000})),
            Code(UNAVAILABLE),
        ),
        // Half-open connections and slow bodies.
        proxy_case(
            "half-open: accepts, never answers",
            Fault::Blackhole,
            Code(TIMEOUT),
        ),
        proxy_case(
            "half-open: stalls after the headers",
            Fault::Stall(Cut::Body(0)),
            Code(TIMEOUT),
        ),
        proxy_case(
            "half-open: stalls mid-body",
            Fault::Stall(Cut::Body(12)),
            Code(TIMEOUT),
        ),
        proxy_case(
            "slow body: 1 byte per 100 ms",
            Fault::Trickle {
                bytes: 1,
                every: Duration::from_millis(100),
            },
            Code(TIMEOUT),
        ),
        proxy_case(
            "slow but in time: 64 bytes per 5 ms",
            Fault::Trickle {
                bytes: 64,
                every: Duration::from_millis(5),
            },
            Served,
        ),
        // Truncated and oversized answers.
        proxy_case(
            "truncated in the headers",
            Fault::Truncate(Cut::Bytes(30)),
            Code(UNAVAILABLE),
        ),
        proxy_case(
            "truncated mid-body",
            Fault::Truncate(Cut::Body(10)),
            Code(UNAVAILABLE),
        ),
        proxy_case(
            "not HTTP at all",
            Fault::raw(b"SSH-2.0-OpenSSH_9.6\r\n"),
            Code(UNAVAILABLE),
        ),
        proxy_case(
            "oversized body, announced (2 MiB)",
            Fault::reply("200 OK", &["Content-Type: application/json"], &big),
            Code(SERVER_ERROR),
        ),
        proxy_case(
            "oversized body, chunked (1.1 MiB)",
            Fault::raw(&chunked),
            Code(SERVER_ERROR),
        ),
        proxy_case(
            "oversized headers (1 MiB)",
            Fault::raw(&big_headers),
            Code(UNAVAILABLE),
        ),
        // Statuses.
        case(
            "503 with Retry-After (emulator)",
            Inject::Emulator(json!({"nextStatus": {"status": 503, "count": 100_000}})),
            Code(SERVER_ERROR),
        ),
        case(
            "500 on every request (emulator)",
            Inject::Emulator(json!({"failureRate": 1.0})),
            Code(SERVER_ERROR),
        ),
        case(
            "429 with Retry-After (emulator)",
            Inject::Emulator(json!({"nextStatus": {"status": 429, "count": 100_000}})),
            Code(RATE_LIMITED),
        ),
        proxy_case(
            "503 with Retry-After: 4 s",
            Fault::reply(
                "503 Service Unavailable",
                &["Content-Type: application/json", "Retry-After: 4"],
                br#"{"error":"temporarily_unavailable"}"#,
            ),
            Code(SERVER_ERROR),
        ),
        proxy_case(
            "502 HTML page from a gateway",
            Fault::reply(
                "502 Bad Gateway",
                &["Content-Type: text/html"],
                b"<html>bad gateway</html>",
            ),
            Code(SERVER_ERROR),
        ),
        proxy_case(
            "302 redirect elsewhere",
            Fault::reply(
                "302 Found",
                &["Location: https://login.example/portal"],
                b"",
            ),
            Code(SERVER_ERROR),
        ),
        // Content types and bodies.
        proxy_case(
            "wrong content type on a real answer",
            Fault::rewrite(|a| a.set_header("Content-Type", "text/html; charset=utf-8")),
            Code(SERVER_ERROR),
        ),
        proxy_case(
            "no content type on a real answer (tolerated)",
            Fault::rewrite(|a| a.remove_header("Content-Type")),
            Served,
        ),
        proxy_case(
            "captive-portal HTML with 200",
            Fault::reply(
                "200 OK",
                &["Content-Type: text/html"],
                b"<html>Sign in to Wi-Fi</html>",
            ),
            Code(SERVER_ERROR),
        ),
        proxy_case(
            "invalid JSON",
            Fault::rewrite(|a| {
                let n = a.body.len() / 2;
                a.body.truncate(n);
            }),
            Code(SERVER_ERROR),
        ),
        proxy_case(
            "empty body with 200",
            Fault::rewrite(|a| a.body.clear()),
            Code(SERVER_ERROR),
        ),
        proxy_case(
            "JSON null",
            Fault::json(|v| *v = Value::Null),
            Code(SERVER_ERROR),
        ),
        proxy_case(
            "JSON array instead of an object",
            Fault::json(|v| *v = json!([v.clone()])),
            Code(SERVER_ERROR),
        ),
        proxy_case(
            "JSON nested 100,000 deep",
            Fault::reply(
                "200 OK",
                &["Content-Type: application/json"],
                deep.as_bytes(),
            ),
            Code(SERVER_ERROR),
        ),
        // Fields of the token answer.
        proxy_case(
            "access_token missing",
            field("access_token", None),
            Code(SERVER_ERROR),
        ),
        proxy_case(
            "access_token empty",
            field("access_token", Some(json!(""))),
            Code(SERVER_ERROR),
        ),
        proxy_case(
            "access_token a number",
            field("access_token", Some(json!(12345))),
            Code(SERVER_ERROR),
        ),
        proxy_case(
            "access_token with a newline",
            field(
                "access_token",
                Some(json!(format!("{PLANTED}\r\nX-Injected: 1"))),
            ),
            Code(SERVER_ERROR),
        ),
        proxy_case(
            "access_token with a NUL",
            field("access_token", Some(json!(format!("{PLANTED}\u{0}")))),
            Code(SERVER_ERROR),
        ),
        proxy_case(
            "access_token non-ASCII",
            field("access_token", Some(json!(format!("{PLANTED}é")))),
            Code(SERVER_ERROR),
        ),
        proxy_case(
            "access_token 40 KiB",
            field(
                "access_token",
                Some(json!(format!("{PLANTED}{}", "x".repeat(40 * 1024)))),
            ),
            Code(SERVER_ERROR),
        ),
        proxy_case(
            "expires_in missing",
            field("expires_in", None),
            Code(SERVER_ERROR),
        ),
        proxy_case(
            "expires_in negative",
            field("expires_in", Some(json!(-300))),
            Code(SERVER_ERROR),
        ),
        proxy_case(
            "expires_in zero",
            field("expires_in", Some(json!(0))),
            Code(SERVER_ERROR),
        ),
        proxy_case(
            "expires_in a word",
            field("expires_in", Some(json!("soon"))),
            Code(SERVER_ERROR),
        ),
        proxy_case(
            "expires_in a boolean",
            field("expires_in", Some(json!(true))),
            Code(SERVER_ERROR),
        ),
        proxy_case(
            "expires_in NaN-like",
            field("expires_in", Some(json!("NaN"))),
            Code(SERVER_ERROR),
        ),
        checked(
            proxy_case(
                "expires_in 10 years (clamped)",
                field("expires_in", Some(json!(315_360_000))),
                Served,
            ),
            lifetime_clamped,
        ),
        checked(
            proxy_case(
                "expires_in 1e300 (clamped)",
                field("expires_in", Some(json!(1e300))),
                Served,
            ),
            lifetime_clamped,
        ),
        checked(
            proxy_case(
                "expires_in beyond u64 (clamped)",
                Fault::rewrite(|a| {
                    let text = String::from_utf8_lossy(&a.body).replace(
                        &format!("\"expires_in\":{LIFETIME}"),
                        "\"expires_in\":184467440737095516160000",
                    );
                    a.body = text.into_bytes();
                }),
                Served,
            ),
            lifetime_clamped,
        ),
        proxy_case(
            "expires_in as a numeric string",
            field("expires_in", Some(json!(format!(" {LIFETIME}.5 ")))),
            Served,
        ),
        checked(
            proxy_case(
                "token_type MAC (passed through)",
                field("token_type", Some(json!("MAC"))),
                Served,
            ),
            mac,
        ),
        checked(
            proxy_case("token_type missing", field("token_type", None), Served),
            bearer,
        ),
        checked(
            proxy_case(
                "token_type with spaces and non-ASCII",
                field("token_type", Some(json!("Bé arer\u{1b}[2J"))),
                Served,
            ),
            bearer,
        ),
        checked(
            proxy_case(
                "token_type 10 KiB",
                field("token_type", Some(json!("T".repeat(10 * 1024)))),
                Served,
            ),
            bearer,
        ),
        checked(
            proxy_case(
                "token_type a number",
                field("token_type", Some(json!(7))),
                Served,
            ),
            bearer,
        ),
        proxy_case(
            "unknown fields and a 100 KiB scope",
            Fault::json(|v| {
                let t = token_object(v);
                t["scope"] = json!("s ".repeat(50 * 1024));
                t["x-unknown"] = json!({"deep": [1, 2, 3]});
                t["refresh_expires_in"] = json!(-1);
            }),
            Served,
        ),
        // A server that reflects the request (with its secrets) into its answer.
        proxy_case(
            "request reflected into error_description",
            Fault::Respond(Arc::new(|req: &[u8]| {
                let body = json!({"error": "invalid_request",
                                  "error_description": String::from_utf8_lossy(req)})
                .to_string();
                http_answer("400 Bad Request", "application/json", "", &body)
            })),
            Code(SERVER_ERROR),
        ),
        proxy_case(
            "request reflected into a redirect",
            Fault::Respond(Arc::new(|req: &[u8]| {
                let flat = graphic(req);
                http_answer(
                    "302 Found",
                    "text/plain",
                    &format!("Location: https://evil.example/?{flat}\r\n"),
                    "",
                )
            })),
            Code(SERVER_ERROR),
        ),
        proxy_case(
            "request reflected into the content type",
            Fault::Respond(Arc::new(|req: &[u8]| {
                let flat = graphic(req);
                http_answer("200 OK", &format!("text/{flat}"), "", "{}")
            })),
            Code(SERVER_ERROR),
        ),
        proxy_case(
            "request reflected as a plain-text 500",
            Fault::Respond(Arc::new(|req: &[u8]| {
                http_answer(
                    "500 Internal Server Error",
                    "text/plain",
                    "",
                    &String::from_utf8_lossy(req),
                )
            })),
            Code(SERVER_ERROR),
        ),
    ];
    // The refresh token matters where the answer must carry one.
    let refresh_needed = profile == Profile::Sentinel && phase == Phase::Enroll;
    let rt_expect = if refresh_needed {
        Code(SERVER_ERROR)
    } else {
        Served
    };
    cases.push(proxy_case(
        "refresh_token a number",
        field("refresh_token", Some(json!(42))),
        rt_expect,
    ));
    cases.push(proxy_case(
        "refresh_token with control characters",
        field("refresh_token", Some(json!(format!("{PLANTED}\n\t")))),
        rt_expect,
    ));
    if phase == Phase::Enroll {
        // Honoured in the background, never by holding the enroll call: the
        // call returns, and enrolling again (same identifier) recovers.
        cases.push(Case {
            reenroll: true,
            ..proxy_case(
                "503 with Retry-After: 1 hour",
                Fault::reply(
                    "503 Service Unavailable",
                    &["Content-Type: application/json", "Retry-After: 3600"],
                    br#"{"error":"temporarily_unavailable"}"#,
                ),
                Code(SERVER_ERROR),
            )
        });
    }
    if refresh_needed {
        cases.extend([
            proxy_case(
                "authToken missing",
                Fault::json(|v| {
                    v.as_object_mut().map(|o| o.remove("authToken"));
                }),
                Code(SERVER_ERROR),
            ),
            proxy_case(
                "authToken.id empty",
                Fault::json(|v| v["authToken"]["id"] = json!("")),
                Code(SERVER_ERROR),
            ),
            proxy_case(
                "authToken.id with control characters",
                Fault::json(|v| v["authToken"]["id"] = json!("id\u{7}\r\n")),
                Code(SERVER_ERROR),
            ),
            proxy_case(
                "authToken.token a string",
                Fault::json(|v| v["authToken"]["token"] = json!(PLANTED)),
                Code(SERVER_ERROR),
            ),
            proxy_case(
                "another identifier echoed (tolerated)",
                Fault::json(|v| v["authToken"]["identifier"] = json!("someone-else\u{1b}[31m")),
                Served,
            ),
        ]);
    }
    cases
}

/// The request's visible ASCII characters, for answers that reflect it.
fn graphic(req: &[u8]) -> String {
    String::from_utf8_lossy(req)
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .collect()
}

fn http_answer(status: &str, content_type: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

// ---------------------------------------------------------------------------
// The world of one case: emulator, proxy, agent, clients.

/// Everything the agent logs, for the secret scan.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_capture() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = Capture::default();
        let writer = capture.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("regent_agent=debug")
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .try_init();
        capture
    })
}

struct World {
    profile: Profile,
    server: Server,
    proxy: Proxy,
    _dir: tempfile::TempDir,
    socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<regent_agent::Result<()>>>,
    client: Client,
    /// The registration token or client secret.
    secret: String,
    registration_id: Option<String>,
    /// Messages the client saw, for the secret scan.
    seen: Vec<String>,
}

impl World {
    async fn start(profile: Profile, rotate: bool) -> World {
        World::start_with(profile, rotate, REQUEST_TIMEOUT).await
    }

    async fn start_with(profile: Profile, rotate: bool, request_timeout: u64) -> World {
        let server = Server::start(EmulatorConfig {
            access_token_lifespan: Duration::from_secs(LIFETIME),
            rotate_refresh_tokens: rotate,
            ..EmulatorConfig::default()
        })
        .await;
        let proxy = Proxy::start(server.emulator.addr()).await.unwrap();
        let (secret, registration_id, server_section) = match profile {
            Profile::Sentinel => {
                let (id, token) = server.mint(json!({"count": 3})).await;
                let section = format!(
                    "[server]\nprofile = \"sentinel\"\nurl = \"{}\"\n",
                    proxy.url()
                );
                (token, Some(id), section)
            }
            Profile::OAuth2 => {
                oauth_client(&server).await;
                let section = format!(
                    "[server]\nprofile = \"oauth2\"\ntoken_url = \"{}/oauth/token\"\nclient_id = \"{CLIENT_ID}\"\n",
                    proxy.url()
                );
                (CLIENT_SECRET.to_owned(), None, section)
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let socket = common::platform::endpoint(dir.path());
        let text = format!(
            "{server_section}connect_timeout = {CONNECT_TIMEOUT}\nrequest_timeout = {request_timeout}\n\
             [store]\nkind = \"file\"\n[state]\ndir = {}\n\
             [refresh]\nbackoff_min = 1\nbackoff_max = 2\n[ipc]\nsocket = {}\n",
            common::platform::toml_path(&dir.path().join("state")),
            common::platform::toml_path(&socket)
        );
        let config = Config::parse(&text, std::path::Path::new("agent.toml")).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(regent_agent::daemon::run(config, async {
            let _ = stopped.await;
        }));
        let client = connect(&socket).await;
        World {
            profile,
            server,
            proxy,
            _dir: dir,
            socket,
            stop: Some(stop),
            task: Some(task),
            client,
            secret,
            registration_id,
            seen: Vec::new(),
        }
    }

    /// The path the proxy faults for this profile and phase.
    fn route_path(&self, phase: Phase) -> &'static str {
        match (self.profile, phase) {
            (Profile::Sentinel, Phase::Enroll) => "/token/api/v5/authTokens",
            (Profile::Sentinel, Phase::Renew) => "/openid-connect/token",
            (Profile::OAuth2, _) => "/oauth/token",
        }
    }

    fn route_name(&self, phase: Phase) -> &'static str {
        match (self.profile, phase) {
            (Profile::Sentinel, Phase::Enroll) => "redeem",
            (Profile::Sentinel, Phase::Renew) => "realm_token",
            (Profile::OAuth2, _) => "oauth_token",
        }
    }

    async fn inject(&self, inject: &Inject, phase: Phase) {
        match inject {
            Inject::Proxy(fault) => self.proxy.set_for(self.route_path(phase), fault.clone()),
            Inject::Emulator(spec) => {
                let mut spec = spec.clone();
                spec["routes"] = json!([self.route_name(phase)]);
                self.server
                    .control(Method::PUT, "/_emulator/faults", Some(spec))
                    .await;
            }
        }
    }

    async fn clear(&self) {
        self.proxy.clear();
        self.server
            .control(Method::DELETE, "/_emulator/faults", None)
            .await;
    }

    async fn enroll(&mut self) -> Result<(), regent_client::Error> {
        let result = self.client.enroll(self.secret.clone(), false).await;
        if let Err(e) = &result {
            self.seen.push(e.message.clone());
        }
        result.map(|_| ())
    }

    async fn token(&mut self, min_valid: Duration) -> Result<Token, regent_client::Error> {
        let result = self.client.token(min_valid).await;
        if let Err(e) = &result {
            self.seen.push(e.message.clone());
        }
        result
    }

    /// `status` over a second connection, bounded: the agent must answer it
    /// whatever its upstream is doing.
    async fn status(&mut self) -> Result<Value, String> {
        let started = Instant::now();
        let status = bounded("status over IPC", IPC_BOUND, async {
            connect(&self.socket).await.status().await
        })
        .await?
        .map_err(|e| format!("status failed: {} {}", e.code, e.message))?;
        // Kept as the JSON document, which `seen` records for the report.
        let status = serde_json::to_value(&status).map_err(|e| e.to_string())?;
        if started.elapsed() > IPC_BOUND / 2 {
            return Err(format!("status took {:?}", started.elapsed()));
        }
        self.seen.push(status.to_string());
        Ok(status)
    }

    async fn last_error_code(&mut self) -> Result<Option<ErrorCode>, String> {
        let status = self.status().await?;
        Ok(status["slots"][0]["last_error_code"]
            .as_str()
            .and_then(ErrorCode::from_name))
    }

    async fn used_count(&self) -> u64 {
        match &self.registration_id {
            Some(id) => self.server.registration(id).await["usedCount"]
                .as_u64()
                .unwrap_or(0),
            None => 0,
        }
    }

    /// Every secret of this world: what we enrolled with, and every token that
    /// crossed the proxy (in either direction).
    fn secrets(&self) -> Vec<String> {
        let mut out = vec![self.secret.clone(), PLANTED.to_owned()];
        if self.profile == Profile::OAuth2 {
            out.push(
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{CLIENT_ID}:{CLIENT_SECRET}")),
            );
        }
        for ex in self.proxy.exchanges() {
            for bytes in [&ex.request, &ex.answer] {
                let text = String::from_utf8_lossy(bytes);
                collect_token_values(&text, &mut out);
            }
        }
        out.retain(|s| s.len() >= 12);
        out.sort();
        out.dedup();
        out
    }

    /// Stops the agent; it must shut down cleanly and promptly.
    async fn stop(mut self) -> Result<(), String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            bounded("agent shutdown", Duration::from_secs(20), task)
                .await?
                .map_err(|e| format!("agent task panicked: {e}"))?
                .map_err(|e| format!("agent stopped with an error: {e}"))?;
        }
        Ok(())
    }
}

/// Values of `access_token` / `refresh_token` in JSON answers and form bodies.
fn collect_token_values(text: &str, out: &mut Vec<String>) {
    for key in ["access_token", "refresh_token"] {
        for (i, _) in text.match_indices(key) {
            let rest = &text[i + key.len()..];
            let rest = rest.trim_start_matches(['"', ':', '=', ' ']);
            let value: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'))
                .collect();
            if value.len() >= 12 {
                out.push(value);
            }
        }
    }
}

async fn oauth_client(server: &Server) {
    let (status, body) = server
        .admin_call(
            Method::POST,
            "/oauth/clients",
            Some(json!({"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET,
                        "accessTokenValidity": LIFETIME,
                        "authorizedGrantTypes": ["client_credentials", "refresh_token"]})),
        )
        .await;
    assert!(status == 200 || status == 201, "{status} {body}");
    // Multi-token mode: every request mints a fresh token.
    let (status, body) = server
        .admin_call(
            Method::PUT,
            "/oauth/customers/faults",
            Some(json!({"id": "faults", "applicationClients": [CLIENT_ID],
                        "multitokenConfig": {"clientCredentialsMultiTokenConfig": {"maxActiveTokensAllowed": 200}}})),
        )
        .await;
    assert!(status == 200 || status == 201, "{status} {body}");
}

async fn connect(socket: &std::path::Path) -> Client {
    let started = Instant::now();
    loop {
        let options = ClientOptions::new("network-faults")
            .socket(socket)
            .request_timeout(Duration::from_secs(120));
        match Client::connect(options).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "agent socket not ready: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// A hang detector: `what` must complete within `limit`.
async fn bounded<T>(what: &str, limit: Duration, f: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| format!("HANG: {what} did not complete within {limit:?}"))
}

// ---------------------------------------------------------------------------
// Running a case.

#[derive(Clone, Debug)]
struct Outcome {
    profile: Profile,
    phase: Phase,
    name: String,
    /// What the client's call returned while the fault was on.
    client: Result<(), ErrorCode>,
    /// The cause the agent recorded (`last_error_code`), or the enroll error.
    cause: Option<ErrorCode>,
    classify: Duration,
    recover: Option<Duration>,
    failures: Vec<String>,
}

async fn run_case(profile: Profile, phase: Phase, case: Case) -> Outcome {
    let mut outcome = Outcome {
        profile,
        phase,
        name: case.name.clone(),
        client: Ok(()),
        cause: None,
        classify: Duration::ZERO,
        recover: None,
        failures: Vec::new(),
    };
    let rotate = profile == Profile::OAuth2;
    let world = World::start(profile, rotate).await;
    let result = match phase {
        Phase::Renew => renew_case(world, &case, &mut outcome).await,
        Phase::Enroll => enroll_case(world, &case, &mut outcome).await,
    };
    if let Err(e) = result {
        outcome.failures.push(e);
    }
    outcome
}

fn check_expectation(case: &Case, outcome: &mut Outcome, served: Option<&Token>) {
    match (case.expect, &outcome.client) {
        (Expect::Served, Ok(())) => {
            if let (Some(check), Some(token)) = (case.check, served)
                && let Err(e) = check(token)
            {
                outcome.failures.push(e);
            }
        }
        (Expect::Served, Err(code)) => outcome.failures.push(format!(
            "expected a token, got {code} (cause {:?})",
            outcome.cause
        )),
        (Expect::Code(_), Ok(())) => outcome
            .failures
            .push("expected a failure, the call succeeded".into()),
        (Expect::Code(codes), Err(_)) => {
            if !outcome.cause.is_some_and(|c| codes.contains(&c)) {
                outcome.failures.push(format!(
                    "classified as {:?}, expected one of {codes:?}",
                    outcome.cause
                ));
            }
        }
    }
}

async fn renew_case(mut w: World, case: &Case, outcome: &mut Outcome) -> Result<(), String> {
    bounded("enrollment", CALL_BOUND, w.enroll())
        .await?
        .map_err(|e| {
            format!(
                "enrollment before the fault failed: {} {}",
                e.code, e.message
            )
        })?;
    let first = w
        .token(Duration::from_secs(1))
        .await
        .map_err(|e| e.message)?;
    tokio::time::sleep(AGE).await;

    w.inject(&case.inject, Phase::Renew).await;
    // The cached token is still valid: served during the outage.
    let cached = bounded("cached token", IPC_BOUND, w.token(Duration::from_secs(1)))
        .await?
        .map_err(|e| {
            format!(
                "cached token not served during the fault: {} {}",
                e.code, e.message
            )
        })?;
    if cached.secret() != first.secret() {
        return Err("a different token than the cached one was served".into());
    }

    // A request that needs a renewal, through the fault.
    let started = Instant::now();
    let client = w.client.clone();
    let call = tokio::spawn(async move {
        let result = client.token(MIN_VALID).await;
        (result, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.status().await?;
    let (result, took) = bounded("token request needing a renewal", CALL_BOUND, call)
        .await?
        .map_err(|e| format!("token task panicked: {e}"))?;
    outcome.classify = took;
    let served = match result {
        Ok(token) => {
            outcome.client = Ok(());
            Some(token)
        }
        Err(e) => {
            w.seen.push(e.message.clone());
            outcome.client = Err(e.code);
            if e.code != ErrorCode::Unavailable {
                outcome.failures.push(format!(
                    "the client saw {} (expected UNAVAILABLE): {}",
                    e.code, e.message
                ));
            }
            if e.retry_after.is_none() {
                outcome
                    .failures
                    .push("UNAVAILABLE without retry_after".into());
            }
            None
        }
    };
    outcome.cause = w.last_error_code().await?;
    check_expectation(case, outcome, served.as_ref());
    if let Some(t) = &served
        && t.secret() == first.secret()
    {
        outcome
            .failures
            .push("the old token was served as a renewed one".into());
    }
    if matches!(case.inject, Inject::Proxy(_)) && w.proxy.faulted() == 0 {
        outcome.failures.push("the fault was never applied".into());
    }

    // Fault off: a fresh token without a restart.
    w.clear().await;
    let cleared = Instant::now();
    let fresh = recover(&mut w, |w| Box::pin(w.token(MIN_VALID))).await?;
    outcome.recover = Some(cleared.elapsed());
    if fresh.secret() == first.secret() {
        outcome.failures.push("recovered with the old token".into());
    }
    let live = w.server.introspect(fresh.secret()).await;
    if live["active"] != true {
        outcome.failures.push(format!(
            "the recovered token is not live at the emulator: {live}"
        ));
    }
    scan(&w, outcome);
    w.stop().await
}

async fn enroll_case(mut w: World, case: &Case, outcome: &mut Outcome) -> Result<(), String> {
    w.inject(&case.inject, Phase::Enroll).await;
    let started = Instant::now();
    let client = w.client.clone();
    let secret = w.secret.clone();
    let call = tokio::spawn(async move {
        let result = client.enroll(secret, false).await;
        (result, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.status().await?;
    let (result, took) = bounded("enroll", CALL_BOUND, call)
        .await?
        .map_err(|e| format!("enroll task panicked: {e}"))?;
    outcome.classify = took;
    let mut served = None;
    match result {
        Ok(_) => {
            outcome.client = Ok(());
            let token = bounded(
                "token after enrollment",
                CALL_BOUND,
                w.token(Duration::from_secs(1)),
            )
            .await?;
            match token {
                Ok(t) => served = Some(t),
                Err(e) => outcome
                    .failures
                    .push(format!("enrolled, but no token: {} {}", e.code, e.message)),
            }
        }
        Err(e) => {
            w.seen.push(e.message.clone());
            outcome.client = Err(e.code);
            outcome.cause = Some(e.code);
            // The agent stays up and says why it has no token.
            let t = bounded(
                "token while not enrolled",
                IPC_BOUND,
                w.token(Duration::from_secs(1)),
            )
            .await?;
            if t.is_ok() && w.profile == Profile::OAuth2 {
                outcome
                    .failures
                    .push("a token was served after a failed enrollment".into());
            }
        }
    }
    check_expectation(case, outcome, served.as_ref());
    if matches!(case.inject, Inject::Proxy(_)) && w.proxy.faulted() == 0 {
        outcome.failures.push("the fault was never applied".into());
    }

    w.clear().await;
    let cleared = Instant::now();
    let fresh = if outcome.client.is_ok() {
        recover(&mut w, |w| Box::pin(w.token(Duration::from_secs(1)))).await?
    } else {
        match w.profile {
            // The interrupted redemption resumes by itself, same identifier.
            Profile::Sentinel if !case.reenroll => {
                recover(&mut w, |w| Box::pin(w.token(Duration::from_secs(1)))).await?
            }
            // Nothing was stored (oauth2), or the agent waits as the server
            // asked: the user enrolls again.
            _ => {
                recover(&mut w, |w| {
                    Box::pin(async move {
                        w.enroll().await?;
                        w.token(Duration::from_secs(1)).await
                    })
                })
                .await?
            }
        }
    };
    outcome.recover = Some(cleared.elapsed());
    let live = w.server.introspect(fresh.secret()).await;
    if live["active"] != true {
        outcome.failures.push(format!(
            "the token after recovery is not live at the emulator: {live}"
        ));
    }
    if w.profile == Profile::Sentinel {
        let used = w.used_count().await;
        if used != 1 {
            outcome.failures.push(format!(
                "the registration token's usedCount is {used}, not 1"
            ));
        }
    }
    scan(&w, outcome);
    w.stop().await
}

type Attempt<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<Token, regent_client::Error>> + Send + 'a>>;

/// Retries `attempt` (honouring `retry_after`, at most 500 ms at a time) until
/// it succeeds; fails after `RECOVERY_BOUND`.
async fn recover(
    w: &mut World,
    mut attempt: impl for<'a> FnMut(&'a mut World) -> Attempt<'a>,
) -> Result<Token, String> {
    let deadline = Instant::now() + RECOVERY_BOUND;
    let mut last = String::new();
    while Instant::now() < deadline {
        match bounded("recovery attempt", CALL_BOUND, attempt(w)).await? {
            Ok(token) => return Ok(token),
            Err(e) => {
                if !e.is_retryable() && e.code != ErrorCode::NotEnrolled {
                    return Err(format!(
                        "no recovery: a permanent error {} {}",
                        e.code, e.message
                    ));
                }
                last = format!("{} {}", e.code, e.message);
                let pause = e
                    .retry_after
                    .unwrap_or(Duration::from_millis(200))
                    .clamp(Duration::from_millis(50), Duration::from_millis(500));
                tokio::time::sleep(pause).await;
            }
        }
    }
    Err(format!(
        "no recovery within {RECOVERY_BOUND:?} after the fault cleared; last: {last}"
    ))
}

/// No secret in anything the client saw.
fn scan(w: &World, outcome: &mut Outcome) {
    let secrets = w.secrets();
    for text in &w.seen {
        for s in &secrets {
            if text.contains(s.as_str()) {
                outcome.failures.push(format!(
                    "a secret ({}…) appears in a message the client saw: {}",
                    &s[..6],
                    text.chars().take(300).collect::<String>()
                ));
            }
        }
    }
    SECRETS.lock().unwrap().extend(secrets);
}

static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

// ---------------------------------------------------------------------------
// The suite.

async fn run_suite(cases: Vec<(Profile, Phase, Case)>) -> Vec<Outcome> {
    let semaphore = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for (profile, phase, case) in cases {
        let semaphore = Arc::clone(&semaphore);
        tasks.spawn(async move {
            let _permit = semaphore.acquire_owned().await.unwrap();
            let name = case.name.clone();
            match tokio::time::timeout(Duration::from_secs(180), run_case(profile, phase, case))
                .await
            {
                Ok(outcome) => outcome,
                Err(_) => Outcome {
                    profile,
                    phase,
                    name,
                    client: Ok(()),
                    cause: None,
                    classify: Duration::ZERO,
                    recover: None,
                    failures: vec!["HANG: the whole case did not finish within 180 s".into()],
                },
            }
        });
    }
    let mut outcomes = Vec::new();
    while let Some(done) = tasks.join_next().await {
        outcomes.push(done.expect("a case panicked"));
    }
    outcomes.sort_by(|a, b| (a.profile, a.phase, &a.name).cmp(&(b.profile, b.phase, &b.name)));
    outcomes
}

fn code_name(r: &Result<(), ErrorCode>) -> String {
    match r {
        Ok(()) => "token".into(),
        Err(c) => c.name().into(),
    }
}

fn report(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    let mut counts: BTreeMap<(Profile, Phase), usize> = BTreeMap::new();
    for o in outcomes {
        *counts.entry((o.profile, o.phase)).or_default() += 1;
    }
    writeln!(out, "| profile | phase | fault | client saw | cause | classified in | recovered | recovery time |").unwrap();
    writeln!(out, "|---|---|---|---|---|---|---|---|").unwrap();
    for o in outcomes {
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.1} s | {} | {} |",
            o.profile.name(),
            o.phase.name(),
            o.name,
            code_name(&o.client),
            o.cause.map_or("—".into(), |c| c.name().to_owned()),
            o.classify.as_secs_f64(),
            if o.failures.is_empty() && o.recover.is_some() {
                "yes"
            } else {
                "NO"
            },
            o.recover
                .map_or("—".into(), |d| format!("{:.1} s", d.as_secs_f64())),
        )
        .unwrap();
    }
    writeln!(out).unwrap();
    for ((profile, phase), n) in &counts {
        writeln!(
            out,
            "faults tried: {} {}: {n}",
            profile.name(),
            phase.name()
        )
        .unwrap();
    }
    writeln!(out, "faults tried in total: {}", outcomes.len()).unwrap();
    out
}

fn assert_clean_logs() {
    let log = String::from_utf8_lossy(&log_capture().0.lock().unwrap()).into_owned();
    assert!(!log.is_empty(), "the agent's log was not captured");
    for s in SECRETS.lock().unwrap().iter() {
        if let Some(at) = log.find(s.as_str()) {
            let line_start = log[..at].rfind('\n').map_or(0, |i| i + 1);
            let line: String = log[line_start..].chars().take(300).collect();
            panic!("a secret ({}…) appears in the agent's log: {line}", &s[..6]);
        }
    }
    assert!(!log.contains("panicked"), "a panic in the agent's log");
}

// Many worlds share this runtime: extra workers keep one blocked on a slow
// fsync (the agent saves state.json on its runtime) from starving the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 12)]
async fn every_fault_is_classified_and_recovered_from() {
    log_capture();
    let started = Instant::now();
    let mut cases = Vec::new();
    for profile in [Profile::Sentinel, Profile::OAuth2] {
        for phase in [Phase::Enroll, Phase::Renew] {
            for case in catalogue(profile, phase) {
                // REGENT_FAULT_FILTER=text runs only the faults whose name has it.
                if std::env::var("REGENT_FAULT_FILTER").is_ok_and(|f| !case.name.contains(&f)) {
                    continue;
                }
                cases.push((profile, phase, case));
            }
        }
    }
    let outcomes = run_suite(cases).await;
    let table = report(&outcomes);
    println!("{table}");
    println!("wall time: {:.1} s", started.elapsed().as_secs_f64());
    if let Ok(path) = std::env::var("REGENT_FAULT_REPORT") {
        std::fs::write(path, &table).unwrap();
    }
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.failures.is_empty())
        .map(|o| {
            format!(
                "{} {} {}: {}",
                o.profile.name(),
                o.phase.name(),
                o.name,
                o.failures.join("; ")
            )
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} cases failed:\n{}",
        failed.len(),
        outcomes.len(),
        failed.join("\n")
    );
    assert_clean_logs();
}

/// Regression: a server whose tokens live shorter than clients ask for
/// (`expires_in: 1` while apps want 8 s) made the agent renew every tenth of
/// the lifetime and on every request — about 11 upstream calls a second. Now
/// it fetches once per renewal point; once a renewal has shown the 1 s
/// lifetime, requests are `BAD_REQUEST` naming it (issue 14: retrying
/// cannot help), and `UNAVAILABLE` with a retry time before that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_shorter_than_demand_do_not_make_the_agent_spin() {
    for profile in [Profile::Sentinel, Profile::OAuth2] {
        let mut w = World::start(profile, profile == Profile::OAuth2).await;
        w.enroll().await.unwrap();
        let first = w.token(Duration::from_secs(1)).await.unwrap();
        tokio::time::sleep(AGE).await;
        w.proxy.set_for(
            w.route_path(Phase::Renew),
            field("expires_in", Some(json!(1))),
        );
        let before = w.proxy.connections();
        let started = Instant::now();
        let (mut asked, mut named) = (0, 0);
        while started.elapsed() < Duration::from_secs(6) {
            let e = bounded("token", CALL_BOUND, w.token(MIN_VALID))
                .await
                .unwrap()
                .expect_err("no 1 s token satisfies 8 s");
            match e.code {
                ErrorCode::BadRequest => {
                    assert!(e.message.contains("tokens valid for 1s"), "{}", e.message);
                    named += 1;
                }
                ErrorCode::Unavailable => assert!(e.retry_after.is_some(), "{}", e.message),
                other => panic!("{other}: {}", e.message),
            }
            asked += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            named * 2 > asked,
            "{profile:?}: only {named} of {asked} requests were told the lifetime"
        );
        let upstream = w.proxy.connections() - before;
        println!(
            "{profile:?}: {asked} requests asking 8 s of 1 s tokens caused {upstream} upstream calls in 6 s"
        );
        // One per renewal point (2/3 of 1 s, ± jitter) is about 9.
        assert!(
            upstream <= 15,
            "{profile:?}: {upstream} upstream calls in 6 s"
        );
        w.proxy.clear();
        // The server issues long tokens again: the agent learns it at its
        // next renewal (the clients' standing demand schedules one), and
        // the 8 s request is served again without a restart. Until then it
        // is still told the 1 s lifetime.
        let deadline = Instant::now() + RECOVERY_BOUND;
        let fresh = loop {
            match bounded("token", CALL_BOUND, w.token(MIN_VALID))
                .await
                .unwrap()
            {
                Ok(token) => break token,
                Err(e)
                    if Instant::now() < deadline
                        && (e.is_retryable() || e.code == ErrorCode::BadRequest) =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("{profile:?}: no recovery: {} {}", e.code, e.message),
            }
        };
        assert_ne!(fresh.secret(), first.secret());
        scan(
            &w,
            &mut Outcome {
                profile,
                phase: Phase::Renew,
                name: String::new(),
                client: Ok(()),
                cause: None,
                classify: Duration::ZERO,
                recover: None,
                failures: Vec::new(),
            },
        );
        w.stop().await.unwrap();
    }
}

/// With refresh-token rotation on, a refresh whose answer is lost after the
/// server rotated leaves the agent holding a stale refresh token; presenting
/// it trips the server's reuse detection, which ends the session. That is
/// inherent to rotation: the agent reports it as `REVOKED` with a clear
/// message, stays up, and a new registration token enrolls it again without a
/// restart (and without touching the first token's count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_refresh_answer_with_rotation_ends_the_session_cleanly() {
    let mut w = World::start(Profile::Sentinel, true).await;
    w.enroll().await.unwrap();
    let first = w.token(Duration::from_secs(1)).await.unwrap();
    tokio::time::sleep(AGE).await;
    w.proxy
        .set_for(w.route_path(Phase::Renew), Fault::Truncate(Cut::Body(10)));
    let e = bounded("token", CALL_BOUND, w.token(MIN_VALID))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable, "{}", e.message);
    w.proxy.clear();
    // The next refresh presents the rotated-away token: the session ends.
    let deadline = Instant::now() + RECOVERY_BOUND;
    let revoked = loop {
        match bounded("token", CALL_BOUND, w.token(MIN_VALID))
            .await
            .unwrap()
        {
            Err(e) if e.code == ErrorCode::Revoked => break e,
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(
                    e.retry_after
                        .unwrap_or_default()
                        .min(Duration::from_millis(500)),
                )
                .await;
            }
            other => panic!("expected REVOKED, got {:?}", other.map(|t| t.token_type)),
        }
    };
    assert!(
        revoked.message.contains("enroll again"),
        "{}",
        revoked.message
    );
    assert_eq!(w.status().await.unwrap()["slots"][0]["state"], "revoked");
    // A new registration token, no restart.
    let (_, token) = w.server.mint(json!({"count": 1})).await;
    w.secret = token;
    w.enroll().await.unwrap();
    let fresh = w.token(MIN_VALID).await.unwrap();
    assert_ne!(fresh.secret(), first.secret());
    assert_eq!(w.server.introspect(fresh.secret()).await["active"], true);
    assert_eq!(w.used_count().await, 1);
    w.stop().await.unwrap();
}

/// A server that accepts the redemption and never answers, with a request
/// timeout longer than the clients' 30 s: the enroll call still answers in
/// time (`TIMEOUT`, the work goes on in the background), and the redemption
/// completes by itself once the server answers, with one count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_answers_before_the_clients_timeout_when_the_server_is_silent() {
    // Longer than the clients' 30 s call timeout, so only the agent's own
    // 25 s bound can answer the call in time.
    const SLOW_REQUEST_TIMEOUT: u64 = 31;
    let mut w = World::start_with(Profile::Sentinel, false, SLOW_REQUEST_TIMEOUT).await;
    w.proxy
        .set_for(w.route_path(Phase::Enroll), Fault::Blackhole);
    let started = Instant::now();
    let e = bounded("enroll", CALL_BOUND, w.enroll())
        .await
        .unwrap()
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.code, ErrorCode::Timeout, "{}", e.message);
    assert!(e.message.contains("background"), "{}", e.message);
    // Below the clients' default 30 s call timeout (the agent's own bound is 25 s).
    assert!(took < Duration::from_secs(30), "enroll took {took:?}");
    w.proxy.clear();
    // The background resumption (its backoff is 1–2 s) replays the identifier.
    // Its first attempt may already sit in the black hole, which holds it for
    // the whole request timeout.
    let deadline = Instant::now() + RECOVERY_BOUND + Duration::from_secs(SLOW_REQUEST_TIMEOUT);
    loop {
        let state = w.status().await.unwrap()["slots"][0]["state"].clone();
        if state == "active" {
            break;
        }
        assert!(Instant::now() < deadline, "never enrolled: {state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.token(MIN_VALID).await.unwrap();
    assert_eq!(w.used_count().await, 1);
    w.stop().await.unwrap();
}

fn long_run() -> bool {
    std::env::var("REGENT_LONG").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Linux only (`/proc`); 0 elsewhere, where the long form's descriptor
/// check is therefore not made.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

fn log_kib() -> u64 {
    (log_capture().0.lock().unwrap().len() / 1024) as u64
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4)
}

/// Slot 0's (renewals_ok, renewals_failed, last_error_code) from `status`.
async fn counters(w: &mut World) -> Result<(u64, u64, Option<ErrorCode>), String> {
    let status = w.status().await?;
    let slot = &status["slots"][0];
    Ok((
        slot["renewals_ok"].as_u64().unwrap_or(0),
        slot["renewals_failed"].as_u64().unwrap_or(0),
        slot["last_error_code"]
            .as_str()
            .and_then(ErrorCode::from_name),
    ))
}

/// One fault against a long-lived agent whose clients keep asking for
/// `MIN_VALID` (so it renews about every second): the fault goes on, the next
/// renewal meets it and is classified (or succeeds), the fault goes off, and a
/// fresh token is served.
async fn random_round(w: &mut World, case: &Case) -> Result<Outcome, String> {
    let mut outcome = Outcome {
        profile: w.profile,
        phase: Phase::Renew,
        name: case.name.clone(),
        client: Ok(()),
        cause: None,
        classify: Duration::ZERO,
        recover: None,
        failures: Vec::new(),
    };
    let (mut ok0, failed0, _) = counters(w).await?;
    let faulted0 = w.proxy.faulted();
    w.inject(&case.inject, Phase::Renew).await;
    let started = Instant::now();
    loop {
        // Keeps the demand up; the answer itself may come from the cache.
        let _ = bounded("token", CALL_BOUND, w.token(MIN_VALID)).await?;
        let (ok, failed, code) = counters(w).await?;
        if failed > failed0 {
            outcome.client = Err(ErrorCode::Unavailable);
            outcome.cause = code;
            break;
        }
        if ok > ok0 {
            // A renewal that was under way before the fault went on may still
            // succeed: only one that met the fault counts.
            let met = match case.inject {
                Inject::Proxy(_) => w.proxy.faulted() > faulted0,
                Inject::Emulator(_) => true,
            };
            if met && matches!(case.expect, Expect::Served) {
                break;
            }
            ok0 = ok;
        }
        if started.elapsed() > CALL_BOUND {
            return Err(format!(
                "no renewal met the fault and was classified within {CALL_BOUND:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    outcome.classify = started.elapsed();
    check_expectation(case, &mut outcome, None);
    w.clear().await;
    let cleared = Instant::now();
    let fresh = recover(w, |w| Box::pin(w.token(MIN_VALID))).await?;
    outcome.recover = Some(cleared.elapsed());
    if w.server.introspect(fresh.secret()).await["active"] != true {
        outcome
            .failures
            .push("the recovered token is not live at the emulator".into());
    }
    Ok(outcome)
}

/// Long form: a randomized sequence of faults against one agent per profile
/// (quick form: a few rounds). Descriptors and memory are measured after a
/// warm-up, at the middle and at the end: neither may keep growing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_fault_sequence_against_one_long_lived_agent() {
    use rand::{Rng as _, SeedableRng as _};
    log_capture();
    let rounds = if long_run() { 120 } else { 3 };
    let seed: u64 = std::env::var("REGENT_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("random fault sequence: {rounds} rounds per profile, seed {seed} (REGENT_FAULT_SEED)");
    let started = Instant::now();
    let mut runs = tokio::task::JoinSet::new();
    for (n, profile) in [Profile::Sentinel, Profile::OAuth2].into_iter().enumerate() {
        runs.spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed + n as u64);
            // Lifetimes clamped to 24 h would end the renewals the rounds rely on.
            let cases: Vec<Case> = catalogue(profile, Phase::Renew)
                .into_iter()
                .filter(|c| !c.name.contains("clamped") && !c.reenroll)
                .collect();
            let mut w = World::start(profile, profile == Profile::OAuth2).await;
            w.enroll().await.unwrap();
            let mut outcomes = Vec::new();
            let mut samples = Vec::new();
            for round in 0..rounds {
                if round == rounds.min(10) || round == rounds / 2 {
                    samples.push((round, open_fds(), rss_kib(), log_kib()));
                }
                let case = &cases[rng.random_range(0..cases.len())];
                match random_round(&mut w, case).await {
                    Ok(o) => outcomes.push(o),
                    Err(e) => panic!("{profile:?} round {round} ({}): {e}", case.name),
                }
            }
            samples.push((rounds, open_fds(), rss_kib(), log_kib()));
            scan(&w, &mut outcomes[0]);
            w.stop().await.unwrap();
            (profile, outcomes, samples)
        });
    }
    let mut failed = Vec::new();
    while let Some(done) = runs.join_next().await {
        let (profile, outcomes, samples) = done.unwrap();
        let mut by_cause: BTreeMap<String, usize> = BTreeMap::new();
        for o in &outcomes {
            *by_cause
                .entry(o.cause.map_or("token".into(), |c| c.name().to_owned()))
                .or_default() += 1;
            if !o.failures.is_empty() {
                failed.push(format!("{profile:?} {}: {}", o.name, o.failures.join("; ")));
            }
        }
        let slowest = outcomes
            .iter()
            .filter_map(|o| o.recover)
            .max()
            .unwrap_or_default();
        println!(
            "{profile:?}: {} faults, outcomes {by_cause:?}, slowest recovery {:.1} s",
            outcomes.len(),
            slowest.as_secs_f64()
        );
        println!(
            "{profile:?}: (round, open fds, process RSS KiB, captured log KiB) samples: {samples:?}"
        );
        let (_, fds_mid, _, _) = samples[samples.len() - 2];
        let (_, fds_end, _, _) = samples[samples.len() - 1];
        // Both agents, emulators and proxies share the process: a leak of one
        // descriptor per fault would show as dozens. (The quick form shares
        // the process with the suite, whose worlds come and go.)
        if long_run() {
            assert!(
                fds_end <= fds_mid + 8,
                "{profile:?}: descriptors grew {fds_mid} → {fds_end}"
            );
        }
    }
    println!(
        "random sequence wall time: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    assert_clean_logs();
}
