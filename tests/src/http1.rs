//! A minimal blocking HTTP/1.1 client for loopback: what the sign-in tests
//! (and their browser stand-in) use to act as a person's browser and to
//! drive the emulator's controls.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;

use url::Url;

/// An answer: status, `Location` (when a redirect), body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub location: Option<String>,
    pub body: String,
}

/// Sends one request (`Connection: close`) and reads the whole answer.
/// `body` is `(content type, text)`.
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &str)>,
) -> Answer {
    let url = Url::parse(url).expect("a URL");
    let host = url.host_str().expect("a host");
    assert!(
        matches!(host, "127.0.0.1" | "localhost" | "[::1]"),
        "tests only talk to loopback, not {host}"
    );
    let port = url.port_or_known_default().expect("a port");
    let mut stream = TcpStream::connect((host.trim_matches(['[', ']']), port)).expect("connect");
    let mut target = url.path().to_owned();
    if let Some(q) = url.query() {
        target.push('?');
        target.push_str(q);
    }
    let mut head =
        format!("{method} {target} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let text = body.map_or("", |(_, text)| text);
    if let Some((content_type, text)) = body {
        head.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            text.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("send");
    stream.write_all(text.as_bytes()).expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read");
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let location = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("location")
            .then(|| value.trim().to_owned())
    });
    Answer {
        status,
        location,
        body: body.to_owned(),
    }
}

/// `application/x-www-form-urlencoded` text of `pairs`.
pub fn form(pairs: &[(&str, &str)]) -> String {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        out.append_pair(k, v);
    }
    out.finish()
}

/// Posts a form.
pub fn post_form(url: &str, headers: &[(&str, &str)], pairs: &[(&str, &str)]) -> Answer {
    request(
        "POST",
        url,
        headers,
        Some(("application/x-www-form-urlencoded", &form(pairs))),
    )
}
