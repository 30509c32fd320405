//! Reading the license server's answers: JSON bodies checked before use, RFC 6749
//! §5.2 error bodies, and the classification every endpoint shares.

use std::fmt;

use base64::Engine as _;
use regent_proto::ErrorCode;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, LOCATION};
use serde_json::{Map, Value};

use super::http::Reply;
use super::text::sanitize;
use crate::error::Error;
use crate::secret::{ExposeSecret, SecretString, secret};

/// Longest server-provided text passed through into a message.
const MAX_SERVER_TEXT: usize = 200;

/// The secrets a request carried, in every form a server could echo them in:
/// as sent, trimmed, form-encoded and base64 (an HTTP Basic header). Any text
/// from the server passes through it before it reaches a message or a log
/// line, so a server (or a proxy's error page) that reflects the request
/// cannot put a secret there. `Debug` shows only how many forms it holds.
#[derive(Clone, Default)]
pub(crate) struct Redact {
    /// Longest first, so that a form containing another is replaced whole.
    forms: Vec<SecretString>,
}

impl fmt::Debug for Redact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redact({} forms)", self.forms.len())
    }
}

impl Redact {
    /// Shorter values are not redacted: they would mangle ordinary words.
    const MIN_LEN: usize = 4;

    /// The forms of each secret in `sent`.
    pub fn new(sent: &[&SecretString]) -> Redact {
        let mut forms: Vec<String> = Vec::new();
        for value in sent.iter().map(|s| s.expose_secret()) {
            for v in [value, value.trim()] {
                forms.push(v.to_owned());
                forms.push(url::form_urlencoded::byte_serialize(v.as_bytes()).collect());
                forms.push(base64::engine::general_purpose::STANDARD.encode(v));
                forms.push(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v));
            }
        }
        forms.retain(|f| f.len() >= Self::MIN_LEN);
        forms.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        forms.dedup();
        Redact {
            forms: forms.into_iter().map(secret).collect(),
        }
    }

    /// `text` with every form replaced by `[redacted]`.
    pub fn apply(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for form in &self.forms {
            let form = form.expose_secret();
            if text.contains(form) {
                text = text.replace(form, "[redacted]");
            }
        }
        text
    }

    /// Server text made safe to show: redacted, then sanitised and cut.
    pub fn show(&self, text: &str, max_chars: usize) -> String {
        sanitize(&self.apply(text), max_chars)
    }

    /// The same error with its message redacted (a last line of defence).
    pub fn error(&self, mut error: Error) -> Error {
        error.message = self.apply(&error.message);
        error
    }
}

/// What the server said about a failure: its `error` code and description,
/// sanitised and scrubbed of any secret we sent.
#[derive(Debug, Clone)]
pub(crate) struct ServerSays {
    pub status: StatusCode,
    pub error: Option<String>,
    pub description: Option<String>,
    /// The request's secrets, kept out of anything else shown from this reply.
    pub redact: Redact,
}

impl ServerSays {
    /// Reads an error answer. Never fails: an unreadable body just says less.
    /// `sent` are the secrets of the request, removed should the server echo one.
    pub fn from_reply(reply: &Reply, sent: &[&SecretString]) -> ServerSays {
        let redact = Redact::new(sent);
        let scrub = |text: &str| -> Option<String> {
            let text = redact.show(text, MAX_SERVER_TEXT);
            (!text.is_empty()).then_some(text)
        };
        let mut says = ServerSays {
            status: reply.status,
            error: None,
            description: None,
            redact: Redact::default(),
        };
        match serde_json::from_slice::<Value>(&reply.body) {
            Ok(Value::Object(obj)) => {
                says.error = match obj.get("error") {
                    Some(Value::String(s)) => scrub(s),
                    // Some servers nest it: {"error": {"code": …, "message": …}}
                    Some(Value::Object(inner)) => {
                        inner.get("code").and_then(text_of).and_then(|s| scrub(&s))
                    }
                    _ => None,
                };
                let nested = obj.get("error").and_then(Value::as_object);
                says.description = ["error_description", "message", "errorMessage", "detail"]
                    .iter()
                    .find_map(|k| obj.get(*k).or_else(|| nested.and_then(|n| n.get(*k))))
                    .and_then(text_of)
                    .and_then(|s| scrub(&s));
            }
            Ok(_) => {}
            Err(_) => {
                // Plain text is passed through; an HTML error page is only noise.
                if media_type(reply).is_some_and(|m| m == "text/plain")
                    && let Ok(text) = std::str::from_utf8(&reply.body)
                {
                    says.description = scrub(text);
                }
            }
        }
        says.redact = redact;
        says
    }

    /// True when the server's `error` is `code` (ASCII case-insensitive).
    pub fn is(&self, code: &str) -> bool {
        self.error
            .as_deref()
            .is_some_and(|e| e.eq_ignore_ascii_case(code))
    }
}

/// `invalid_grant: Token is not active`, or `HTTP 503 Service Unavailable` when
/// the server said nothing readable.
impl fmt::Display for ServerSays {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.error, &self.description) {
            (Some(e), Some(d)) => write!(f, "{e}: {d}"),
            (Some(e), None) => f.write_str(e),
            (None, Some(d)) => write!(f, "HTTP {}: {d}", self.status.as_u16()),
            (None, None) => write!(f, "HTTP {}", self.status),
        }
    }
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The classification shared by every endpoint, once the endpoint's own codes
/// were checked: redirects, 429, 5xx and any other status. `Retry-After` is
/// carried whenever the server sent one.
pub(crate) fn unexpected_status(reply: &Reply, says: &ServerSays, what: &str) -> Error {
    let server = &reply.server;
    let status = reply.status;
    let error = if status.is_redirection() {
        let location = reply
            .headers
            .get(LOCATION)
            .and_then(|l| l.to_str().ok())
            .map(|l| says.redact.show(l, MAX_SERVER_TEXT))
            .unwrap_or_else(|| "an unnamed place".to_owned());
        Error::new(
            ErrorCode::ServerError,
            format!(
                "the license server at {server} answered {what} with a redirect (HTTP {}) to {location}; regent does not follow redirects: configure the final https:// address",
                status.as_u16()
            ),
        )
    } else if status == StatusCode::TOO_MANY_REQUESTS {
        Error::new(
            ErrorCode::RateLimited,
            format!("the license server at {server} is rate-limiting {what} ({says}); retry later"),
        )
    } else if status.is_server_error() {
        Error::new(
            ErrorCode::ServerError,
            format!(
                "the license server at {server} failed during {what} ({says}); this is usually temporary and worth retrying"
            ),
        )
    } else if status.is_client_error() {
        Error::new(
            ErrorCode::ServerError,
            format!("the license server at {server} refused {what} ({says})"),
        )
    } else {
        Error::new(
            ErrorCode::ServerError,
            format!(
                "the license server at {server} answered {what} with an unexpected HTTP {status}"
            ),
        )
    };
    with_retry_after(error, reply)
}

/// Adds the server's `Retry-After`, when it sent one.
pub(crate) fn with_retry_after(error: Error, reply: &Reply) -> Error {
    match reply.retry_after() {
        Some(after) => error.with_retry_after(after),
        None => error,
    }
}

/// The body of a successful answer as a JSON object, or a `SERVER_ERROR` naming
/// what is wrong with it (content type, not JSON, not an object).
pub(crate) fn json_object(reply: &Reply, what: &str) -> Result<Map<String, Value>, Error> {
    json_object_redacted(reply, what, &Redact::default())
}

/// [`json_object`] for an answer to a request that carried secrets: nothing
/// the server sent back is shown without `redact`.
pub(crate) fn json_object_redacted(
    reply: &Reply,
    what: &str,
    redact: &Redact,
) -> Result<Map<String, Value>, Error> {
    let server = &reply.server;
    let bad = |problem: String| {
        Error::new(
            ErrorCode::ServerError,
            format!(
                "the license server at {server} answered {what} with {problem}; is the URL pointing at the right service?"
            ),
        )
    };
    // A missing content type is tolerated; a wrong one (an HTML login page from a
    // proxy, say) is not.
    if let Some(media) = media_type(reply)
        && media != "application/json"
        && !media.ends_with("+json")
    {
        return Err(bad(format!(
            "content type {} instead of JSON",
            redact.show(&media, 80)
        )));
    }
    if reply.body.iter().all(u8::is_ascii_whitespace) {
        return Err(bad("an empty body instead of JSON".to_owned()));
    }
    match serde_json::from_slice::<Value>(&reply.body) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(other) => Err(bad(format!("JSON {} instead of an object", kind(&other)))),
        // serde_json's message gives a position, never the input itself.
        Err(e) => Err(bad(format!("a body that is not valid JSON ({e})"))),
    }
}

/// `application/json` from `application/json; charset=utf-8`, lower-cased.
fn media_type(reply: &Reply) -> Option<String> {
    let value = reply.headers.get(CONTENT_TYPE)?;
    let value = String::from_utf8_lossy(value.as_bytes());
    let media = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    Some(media)
}

/// A JSON value's kind, for messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::{Duration, SystemTime};

    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
    use zeroize::Zeroizing;

    use super::*;
    use crate::secret::secret;

    /// A reply as the HTTP layer would build it, for classification tests.
    pub(crate) fn reply(status: u16, content_type: Option<&str>, body: &str) -> Reply {
        let mut headers = HeaderMap::new();
        if let Some(ct) = content_type {
            headers.insert(CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        }
        Reply {
            status: StatusCode::from_u16(status).unwrap(),
            headers,
            body: Zeroizing::new(body.as_bytes().to_vec()),
            received_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            server: "license.example".into(),
        }
    }

    pub(crate) fn json_reply(status: u16, body: &str) -> Reply {
        reply(status, Some("application/json"), body)
    }

    #[test]
    fn reads_rfc6749_error_bodies() {
        let r = json_reply(
            400,
            r#"{"error":"invalid_grant","error_description":"Token is not active"}"#,
        );
        let says = ServerSays::from_reply(&r, &[]);
        assert!(says.is("invalid_grant"));
        assert!(says.is("INVALID_GRANT"));
        assert_eq!(says.to_string(), "invalid_grant: Token is not active");
    }

    #[test]
    fn reads_other_error_shapes_without_failing() {
        let nested = json_reply(500, r#"{"error":{"code":"E42","message":"db down"}}"#);
        assert_eq!(
            ServerSays::from_reply(&nested, &[]).to_string(),
            "E42: db down"
        );
        let message = json_reply(500, r#"{"message":"oops"}"#);
        assert_eq!(
            ServerSays::from_reply(&message, &[]).to_string(),
            "HTTP 500: oops"
        );
        let text = reply(
            503,
            Some("text/plain; charset=utf-8"),
            "maintenance\nwindow",
        );
        assert_eq!(
            ServerSays::from_reply(&text, &[]).to_string(),
            "HTTP 503: maintenance window"
        );
        let html = reply(
            502,
            Some("text/html"),
            "<html><body>Bad gateway</body></html>",
        );
        assert_eq!(
            ServerSays::from_reply(&html, &[]).to_string(),
            "HTTP 502 Bad Gateway"
        );
        for hostile in [
            "",
            "[]",
            "null",
            r#"{"error":42}"#,
            r#"{"error":null,"error_description":["x"]}"#,
            "{\"error\":\"",
        ] {
            let says = ServerSays::from_reply(&json_reply(400, hostile), &[]);
            assert!(says.error.is_none() || hostile.contains("42"), "{hostile}");
            assert!(
                says.to_string().starts_with("HTTP 400"),
                "{hostile}: {says}"
            );
        }
    }

    #[test]
    fn server_text_is_sanitised_truncated_and_scrubbed() {
        let long = "y".repeat(5000);
        let body = format!(
            r#"{{"error":"bad\u001b[2J","error_description":"echo sekret-value-123 {long}"}}"#
        );
        let sent = secret("sekret-value-123".to_owned());
        let says = ServerSays::from_reply(&json_reply(400, &body), &[&sent]);
        let shown = says.to_string();
        assert!(!shown.contains('\u{1b}'));
        assert!(!shown.contains("sekret-value-123"));
        assert!(shown.contains("[redacted]"));
        assert!(shown.chars().count() < 450, "{}", shown.len());
    }

    #[test]
    fn shared_classification() {
        let says = |r: &Reply| ServerSays::from_reply(r, &[]);
        let mut r = json_reply(429, r#"{"error":"slow_down"}"#);
        r.headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        let e = unexpected_status(&r, &says(&r), "the token request");
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert_eq!(e.retry_after, Some(Duration::from_secs(7)));

        let mut r = json_reply(
            503,
            r#"{"error":"temporarily_unavailable","error_description":"maintenance"}"#,
        );
        r.headers
            .insert(RETRY_AFTER, HeaderValue::from_static("100000"));
        let e = unexpected_status(&r, &says(&r), "the token request");
        assert_eq!(e.code, ErrorCode::ServerError);
        assert!(e.code.is_retryable());
        assert!(
            e.message.contains("temporarily_unavailable: maintenance"),
            "{}",
            e.message
        );
        assert_eq!(e.retry_after, Some(Duration::from_secs(3600)));

        let r = json_reply(404, "");
        let e = unexpected_status(&r, &says(&r), "the token request");
        assert_eq!(e.code, ErrorCode::ServerError);
        assert!(e.message.contains("HTTP 404 Not Found"), "{}", e.message);
        assert_eq!(e.retry_after, None);

        let mut r = reply(302, None, "");
        r.headers.insert(
            LOCATION,
            HeaderValue::from_static("http://evil.example/login"),
        );
        let e = unexpected_status(&r, &says(&r), "the token request");
        assert_eq!(e.code, ErrorCode::ServerError);
        assert!(
            e.message
                .contains("redirect (HTTP 302) to http://evil.example/login"),
            "{}",
            e.message
        );
    }

    /// Regression (network-fault suite): a server reflecting the request put
    /// the registration token into a redirect's `Location`, and the client
    /// secret (base64 in the Basic header) into `error_description`, both of
    /// which reached messages, `status` and the log.
    #[test]
    fn reflected_secrets_are_redacted_in_every_form() {
        let token = secret("reg+token/with=odd chars".to_owned());
        let basic = secret("client-id:s3cr3t-value".to_owned());
        let redact = Redact::new(&[&token, &basic]);
        let b64 = base64::engine::general_purpose::STANDARD.encode("client-id:s3cr3t-value");
        let form: String =
            url::form_urlencoded::byte_serialize(b"reg+token/with=odd chars").collect();
        let echoed = format!(
            "Authorization: Basic {b64} body refresh_token={form} raw reg+token/with=odd chars"
        );
        let shown = redact.show(&echoed, 1000);
        assert!(!shown.contains(&b64), "{shown}");
        assert!(!shown.contains(&form), "{shown}");
        assert!(!shown.contains("reg+token/with=odd chars"), "{shown}");
        assert_eq!(shown.matches("[redacted]").count(), 3, "{shown}");
        assert_eq!(
            format!("{redact:?}"),
            format!("Redact({} forms)", redact.forms.len())
        );
        // Short values are left alone, and nothing else changes.
        assert_eq!(
            Redact::new(&[&secret("ab".into())]).apply("a b ab"),
            "a b ab"
        );

        let body = serde_json::json!({"error": "invalid_request", "error_description": echoed})
            .to_string();
        let mut r = json_reply(302, &body);
        r.headers.insert(
            LOCATION,
            HeaderValue::from_str(&format!("https://evil.example/?{b64}&{form}")).unwrap(),
        );
        let says = ServerSays::from_reply(&r, &[&token, &basic]);
        let e = unexpected_status(&r, &says, "the token request");
        assert!(
            !e.message.contains(&b64) && !e.message.contains(&form),
            "{}",
            e.message
        );
        assert!(
            e.message
                .contains("https://evil.example/?[redacted]&[redacted]"),
            "{}",
            e.message
        );
        let mut r = reply(200, Some("text/plain"), "{}");
        r.headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(&format!("text/{b64}")).unwrap(),
        );
        let e = json_object_redacted(&r, "the token request", &redact).unwrap_err();
        assert!(!e.message.contains(&b64), "{}", e.message);
        let e = redact.error(Error::new(ErrorCode::ServerError, format!("x {b64} y")));
        assert_eq!(e.message, "x [redacted] y");
    }

    #[test]
    fn json_object_checks_type_and_shape() {
        assert!(json_object(&json_reply(200, r#"{"a":1}"#), "x").is_ok());
        assert!(json_object(&reply(200, None, r#"{"a":1}"#), "x").is_ok());
        assert!(
            json_object(
                &reply(200, Some("application/problem+json"), r#"{"a":1}"#),
                "x"
            )
            .is_ok()
        );
        assert!(
            json_object(
                &reply(200, Some("Application/JSON; charset=UTF-8"), r#"{"a":1}"#),
                "x"
            )
            .is_ok()
        );
        for (ct, body, needle) in [
            (Some("text/html"), "<html>", "content type text/html"),
            (Some("application/json"), "", "empty body"),
            (Some("application/json"), "<html>", "not valid JSON"),
            (Some("application/json"), "[1,2]", "JSON an array"),
            (Some("application/json"), "\"x\"", "JSON a string"),
            (Some("application/json"), "{\"a\":", "not valid JSON"),
        ] {
            let e = json_object(&reply(200, ct, body), "the token request").unwrap_err();
            assert_eq!(e.code, ErrorCode::ServerError);
            assert!(e.message.contains(needle), "{ct:?} {body}: {}", e.message);
        }
        // Deep nesting is an error, not a stack overflow.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(json_object(&json_reply(200, &deep), "x").is_err());
    }
}
