//! Answers no honest server sends, from a raw TCP listener on 127.0.0.1: the
//! upstream module must classify every one of them and never panic.
#![allow(clippy::expect_used)] // Test code: a failed expectation fails the test.

use std::time::Duration;

use regent_agent::ErrorCode;
use regent_agent::secret::secret;
use regent_agent::upstream::{Http, HttpSettings, MAX_EXPIRES_IN, OAuth2, OAuth2Endpoint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use url::Url;

/// What the fake server does once it has read a request.
#[derive(Clone)]
enum Script {
    /// Writes these bytes and closes.
    Reply(Vec<u8>),
    /// Writes `head`, then `chunk` every `every`, forever (until the client leaves).
    Trickle {
        head: Vec<u8>,
        chunk: Vec<u8>,
        every: Duration,
    },
}

/// Serves `script` to every connection; returns the token URL.
async fn fake_server(script: Script) -> Url {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, script.clone()));
        }
    });
    Url::parse(&format!("http://{addr}/oauth/token")).expect("url")
}

async fn serve(mut stream: TcpStream, script: Script) {
    read_request(&mut stream).await;
    match script {
        Script::Reply(bytes) => {
            let _ = stream.write_all(&bytes).await;
            let _ = stream.shutdown().await;
        }
        Script::Trickle { head, chunk, every } => {
            if stream.write_all(&head).await.is_err() {
                return;
            }
            loop {
                tokio::time::sleep(every).await;
                if stream.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads headers and a `Content-Length` body, so the client is done sending.
async fn read_request(stream: &mut TcpStream) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        let Ok(n) = stream.read(&mut tmp).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return;
            }
        }
    }
}

fn response(status: &str, headers: &[&str], body: &str) -> Vec<u8> {
    let mut text = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for h in headers {
        text.push_str(h);
        text.push_str("\r\n");
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    text.into_bytes()
}

fn json_200(body: &str) -> Vec<u8> {
    response("200 OK", &["Content-Type: application/json"], body)
}

async fn token_request(
    script: Script,
    settings: HttpSettings,
) -> Result<regent_agent::grant::Grant, regent_agent::Error> {
    let url = fake_server(script).await;
    let http = Http::new(settings).expect("http");
    let upstream =
        OAuth2::new(http, OAuth2Endpoint::TokenUrl(url), "c".into(), None).expect("oauth2");
    upstream
        .client_credentials(&secret("s3cr3t-value".to_owned()))
        .await
}

async fn expect_error(script: Script, code: ErrorCode, needle: &str) {
    expect_error_with(script, HttpSettings::default(), code, needle).await;
}

async fn expect_error_with(script: Script, settings: HttpSettings, code: ErrorCode, needle: &str) {
    let e = token_request(script, settings)
        .await
        .expect_err("a hostile answer is an error");
    assert_eq!(e.code, code, "{}", e.message);
    assert!(
        e.message.contains(needle),
        "expected {needle:?} in: {}",
        e.message
    );
    assert!(!e.message.contains("s3cr3t-value"));
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_refused_while_reading() {
    let settings = HttpSettings {
        max_body_bytes: 4096,
        ..HttpSettings::default()
    };
    let mut bytes =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..10 {
        bytes.extend_from_slice(format!("3e8\r\n{}\r\n", "x".repeat(1000)).as_bytes());
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    expect_error_with(
        Script::Reply(bytes),
        settings,
        ErrorCode::ServerError,
        "larger than 4096 bytes",
    )
    .await;
}

#[tokio::test]
async fn announced_huge_body_is_refused_before_reading() {
    let head =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n\r\n{"
            .to_vec();
    let script = Script::Trickle {
        head,
        chunk: b" ".to_vec(),
        every: Duration::from_secs(5),
    };
    expect_error(script, ErrorCode::ServerError, "larger than 1048576 bytes").await;
}

#[tokio::test]
async fn redirects_are_reported_not_followed() {
    let bytes = response(
        "302 Found",
        &["Location: http://evil.example/login?next=%0a"],
        "",
    );
    expect_error(
        Script::Reply(bytes),
        ErrorCode::ServerError,
        "redirect (HTTP 302) to http://evil.example/login",
    )
    .await;
}

#[tokio::test]
async fn html_and_garbage_bodies_are_server_errors() {
    let html = response(
        "200 OK",
        &["Content-Type: text/html"],
        "<html>Sign in to Wi-Fi</html>",
    );
    expect_error(
        Script::Reply(html),
        ErrorCode::ServerError,
        "content type text/html",
    )
    .await;
    let not_json = response(
        "200 OK",
        &["Content-Type: application/json"],
        "{\"access_token\": ",
    );
    expect_error(
        Script::Reply(not_json),
        ErrorCode::ServerError,
        "not valid JSON",
    )
    .await;
    let array = json_200("[{\"access_token\":\"a\",\"expires_in\":60}]");
    expect_error(
        Script::Reply(array),
        ErrorCode::ServerError,
        "instead of an object",
    )
    .await;
    let negative = json_200(r#"{"access_token":"a","expires_in":-1}"#);
    expect_error(
        Script::Reply(negative),
        ErrorCode::ServerError,
        "expires_in",
    )
    .await;
    let no_token = json_200(r#"{"expires_in":60,"token_type":"bearer"}"#);
    expect_error(
        Script::Reply(no_token),
        ErrorCode::ServerError,
        "without an access_token",
    )
    .await;
    let binary = response(
        "500 Internal Server Error",
        &["Content-Type: application/octet-stream"],
        "\u{1}\u{2}\u{3}",
    );
    expect_error(Script::Reply(binary), ErrorCode::ServerError, "HTTP 500").await;
}

#[tokio::test]
async fn not_http_at_all_is_unavailable() {
    let script = Script::Reply(b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec());
    expect_error(
        script,
        ErrorCode::Unavailable,
        "cannot reach the license server at 127.0.0.1:",
    )
    .await;
}

#[tokio::test]
async fn truncated_body_is_unavailable() {
    let bytes = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"access_token\":\"abc".to_vec();
    expect_error(
        Script::Reply(bytes),
        ErrorCode::Unavailable,
        "broke while reading",
    )
    .await;
}

#[tokio::test]
async fn trickling_body_hits_the_request_timeout() {
    let settings = HttpSettings {
        request_timeout: Duration::from_millis(400),
        ..HttpSettings::default()
    };
    let head =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
            .to_vec();
    let script = Script::Trickle {
        head,
        chunk: b" ".to_vec(),
        every: Duration::from_millis(50),
    };
    let started = std::time::Instant::now();
    expect_error_with(
        script,
        settings,
        ErrorCode::Timeout,
        "did not answer within 400 ms",
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn absurd_lifetimes_are_clamped_not_trusted() {
    let body =
        r#"{"access_token":"a.b.c","token_type":"bearer","expires_in":"315360000","scope":7}"#;
    let grant = token_request(Script::Reply(json_200(body)), HttpSettings::default())
        .await
        .expect("a usable grant");
    assert_eq!(grant.lifetime(), MAX_EXPIRES_IN);
    assert_eq!(grant.scope, None);
}

#[tokio::test]
async fn error_bodies_are_sanitised_and_bounded() {
    let description = format!("bad\u{1b}[31m {} s3cr3t-value", "z".repeat(10_000));
    let body =
        serde_json::json!({"error": "server_error", "error_description": description}).to_string();
    let bytes = response(
        "502 Bad Gateway",
        &["Content-Type: application/json", "Retry-After: 999999"],
        &body,
    );
    let e = token_request(Script::Reply(bytes), HttpSettings::default())
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::ServerError);
    assert!(!e.message.contains('\u{1b}'));
    assert!(e.message.chars().count() < 600, "{}", e.message.len());
    assert_eq!(e.retry_after, Some(Duration::from_secs(3600)));
}
