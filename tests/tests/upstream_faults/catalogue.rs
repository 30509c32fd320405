//! Every fault, for each profile and phase, and what the client must see while it is on.

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Profile {
    Sentinel,
    OAuth2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    Enroll,
    Renew,
}

impl Profile {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Profile::Sentinel => "sentinel",
            Profile::OAuth2 => "oauth2",
        }
    }
}

impl Phase {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Phase::Enroll => "enroll",
            Phase::Renew => "renew",
        }
    }
}

/// Where a fault is injected.
#[derive(Clone)]
pub(crate) enum Inject {
    Proxy(Fault),
    /// `PUT /_emulator/faults` body (its `routes` are set per phase).
    Emulator(Value),
}

/// What the client must see while the fault is on.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Expect {
    /// The operation succeeds (the fault is harmless or absorbed).
    Served,
    /// It fails, classified as one of these codes.
    Code(&'static [ErrorCode]),
}

pub(crate) type TokenCheck = fn(&Token) -> Result<(), String>;

#[derive(Clone)]
pub(crate) struct Case {
    pub(crate) name: String,
    pub(crate) inject: Inject,
    pub(crate) expect: Expect,
    /// An extra check of a token served during the fault.
    pub(crate) check: Option<TokenCheck>,
    /// Recovery needs the enroll call repeated (the agent was asked to wait
    /// longer than the test runs).
    pub(crate) reenroll: bool,
}

pub(crate) const TIMEOUT: &[ErrorCode] = &[ErrorCode::Timeout];
pub(crate) const UNAVAILABLE: &[ErrorCode] = &[ErrorCode::Unavailable];
pub(crate) const SERVER_ERROR: &[ErrorCode] = &[ErrorCode::ServerError];
pub(crate) const RATE_LIMITED: &[ErrorCode] = &[ErrorCode::RateLimited];

pub(crate) fn case(name: &str, inject: Inject, expect: Expect) -> Case {
    Case {
        name: name.to_owned(),
        inject,
        expect,
        check: None,
        reenroll: false,
    }
}

pub(crate) fn proxy_case(name: &str, fault: Fault, expect: Expect) -> Case {
    case(name, Inject::Proxy(fault), expect)
}

pub(crate) fn checked(mut c: Case, check: TokenCheck) -> Case {
    c.check = Some(check);
    c
}

/// The token object of an answer: `authToken.token` in a Sentinel redemption,
/// the whole body otherwise.
pub(crate) fn token_object(v: &mut Value) -> &mut Value {
    if v.get("authToken").and_then(|a| a.get("token")).is_some() {
        &mut v["authToken"]["token"]
    } else {
        v
    }
}

/// Forwards, then sets (or with `None` removes) one field of the token object.
pub(crate) fn field(name: &'static str, value: Option<Value>) -> Fault {
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

pub(crate) fn lifetime_clamped(t: &Token) -> Result<(), String> {
    let left = t.remaining();
    if left > Duration::from_secs(24 * 3600) {
        return Err(format!("lifetime not clamped: {left:?}"));
    }
    Ok(())
}

pub(crate) fn bearer(t: &Token) -> Result<(), String> {
    if t.token_type != "Bearer" {
        return Err(format!("token_type {:?}, expected Bearer", t.token_type));
    }
    Ok(())
}

pub(crate) fn mac(t: &Token) -> Result<(), String> {
    if t.token_type != "MAC" {
        return Err(format!("token_type {:?}, expected MAC", t.token_type));
    }
    Ok(())
}

/// Every fault, for one profile and phase.
pub(crate) fn catalogue(profile: Profile, phase: Phase) -> Vec<Case> {
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
pub(crate) fn graphic(req: &[u8]) -> String {
    String::from_utf8_lossy(req)
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .collect()
}

pub(crate) fn http_answer(status: &str, content_type: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
