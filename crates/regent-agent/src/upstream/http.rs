//! The HTTP client every profile shares: rustls, no redirects, bounded bodies,
//! and transport failures mapped onto the code table. Where requests may go
//! (URL rule, proxy, trust roots) is [`super::network`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use regent_proto::ErrorCode;
use reqwest::RequestBuilder;
use reqwest::StatusCode;
use reqwest::header::{DATE, HeaderMap, RETRY_AFTER};
use url::Url;
use zeroize::Zeroizing;

use super::network::{ProxySetting, read_ca_file, with_https_proxy};
use super::text::{root_cause, server_name};
use crate::error::Error;
use crate::metrics::Histogram;

/// Sent as `User-Agent` on every request.
pub const USER_AGENT: &str = concat!("regent/", env!("CARGO_PKG_VERSION"));

/// The longest `Retry-After` we honour: a server asking for more is asked
/// again after this long rather than trusted to come back.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60 * 60);

/// Timeouts, limits, proxy and trust roots for talking to the license server.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Time allowed to open the TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Time allowed for the whole request, body included.
    pub request_timeout: Duration,
    /// Largest response body read; a bigger one is an error, not a truncation.
    pub max_body_bytes: usize,
    /// Where `https://` requests go. Plain `http://` requests (loopback only)
    /// never go through a proxy, whatever this says.
    pub proxy: ProxySetting,
    /// A PEM file of extra trust roots (a private CA, a TLS-inspecting proxy),
    /// trusted besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Where the latency of every answered request is recorded: the agent's
    /// own histogram (its `regent_upstream_request_duration_seconds`), or a
    /// fresh one nobody reads.
    pub latency: Arc<Histogram>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_body_bytes: 1024 * 1024,
            proxy: ProxySetting::Environment,
            ca_file: None,
            latency: Arc::default(),
        }
    }
}

/// The HTTP client (cheap to clone: clones share one connection pool).
#[derive(Debug, Clone)]
pub struct Http {
    client: reqwest::Client,
    settings: HttpSettings,
    /// `host:port` of the proxy `https://` requests go through, for messages.
    proxy: Option<String>,
}

impl Http {
    /// Builds the client: rustls, redirects not followed, `User-Agent: regent/<version>`.
    ///
    /// # Errors
    /// `CONFIG` for a zero timeout or body limit; `INTERNAL` when the TLS stack
    /// cannot be set up.
    pub fn new(settings: HttpSettings) -> Result<Http, Error> {
        if settings.connect_timeout.is_zero() || settings.request_timeout.is_zero() {
            return Err(Error::new(
                ErrorCode::Config,
                "the license server connect and request timeouts must be more than zero",
            ));
        }
        if settings.max_body_bytes == 0 {
            return Err(Error::new(
                ErrorCode::Config,
                "the license server response size limit must be more than zero",
            ));
        }
        let mut builder = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            // A redirect is reported, never followed: following one could carry a
            // credential to another host or downgrade to plain HTTP.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout);
        let (builder_with_proxy, proxy) = with_https_proxy(builder, &settings.proxy)?;
        builder = builder_with_proxy;
        if let Some(path) = &settings.ca_file {
            builder = builder.tls_certs_merge(read_ca_file(path)?);
        }
        let client = builder.build().map_err(|e| {
            Error::new(
                ErrorCode::Internal,
                format!("cannot set up the HTTP client: {}", root_cause(&e)),
            )
        })?;
        Ok(Http {
            client,
            settings,
            proxy,
        })
    }

    /// The settings this client was built with.
    pub fn settings(&self) -> &HttpSettings {
        &self.settings
    }

    pub(crate) fn request(&self, method: reqwest::Method, url: &Url) -> RequestBuilder {
        self.client.request(method, url.clone())
    }

    pub(crate) fn get(&self, url: &Url) -> RequestBuilder {
        self.client.get(url.clone())
    }

    pub(crate) fn post(&self, url: &Url) -> RequestBuilder {
        self.client.post(url.clone())
    }

    /// Sends `request` to `target` and reads the whole (bounded) answer.
    /// Any status is a `Reply`; only transport failures are errors here.
    pub(crate) async fn send(&self, request: RequestBuilder, target: &Url) -> Result<Reply, Error> {
        let server = server_name(target);
        let started = Instant::now();
        let mut response = request
            .send()
            .await
            .map_err(|e| self.transport_error(&e, &server))?;
        let received_at = SystemTime::now();
        let status = response.status();
        let headers = response.headers().clone();
        let limit = self.settings.max_body_bytes;
        if response
            .content_length()
            .is_some_and(|len| len > limit as u64)
        {
            return Err(too_large(&server, limit));
        }
        let mut body = Zeroizing::new(Vec::new());
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => return Err(self.body_error(&e, &server)),
            };
            if body.len().saturating_add(chunk.len()) > limit {
                return Err(too_large(&server, limit));
            }
            body.extend_from_slice(&chunk);
        }
        self.settings.latency.observe(started.elapsed());
        tracing::debug!(
            server = %server,
            path = target.path(),
            status = status.as_u16(),
            bytes = body.len(),
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "license server answered"
        );
        Ok(Reply {
            status,
            headers,
            body,
            received_at,
            server,
        })
    }

    fn transport_error(&self, e: &reqwest::Error, server: &str) -> Error {
        tracing::debug!(server, timeout = e.is_timeout(), connect = e.is_connect(), cause = %root_cause(e), "request to the license server failed");
        let proxied = e
            .url()
            .is_some_and(|u| u.scheme() == "https")
            .then_some(self.proxy.as_deref())
            .flatten();
        let server = &match proxied {
            Some(proxy) => format!("{server} (through the proxy at {proxy})"),
            None => server.to_owned(),
        };
        let server = server.as_str();
        if e.is_timeout() {
            if e.is_connect() {
                return Error::new(
                    ErrorCode::Timeout,
                    format!(
                        "could not connect to the license server at {server} within {}; check the network",
                        seconds(self.settings.connect_timeout)
                    ),
                );
            }
            return self.timeout(server);
        }
        if e.is_builder() {
            return Error::new(
                ErrorCode::Internal,
                format!(
                    "could not build the request to the license server at {server}: {}",
                    root_cause(e)
                ),
            );
        }
        if e.is_connect() {
            let cause = root_cause(e);
            let hint = if cause.contains("certificate") {
                "; if a private CA or a TLS-inspecting proxy signs its certificate, name that CA's PEM file in [server] ca_file"
            } else {
                ""
            };
            return Error::new(
                ErrorCode::Unavailable,
                format!("cannot reach the license server at {server}: {cause}{hint}"),
            );
        }
        Error::new(
            ErrorCode::Unavailable,
            format!(
                "cannot reach the license server at {server}: the connection failed ({})",
                root_cause(e)
            ),
        )
    }

    fn body_error(&self, e: &reqwest::Error, server: &str) -> Error {
        if e.is_timeout() {
            return self.timeout(server);
        }
        Error::new(
            ErrorCode::Unavailable,
            format!(
                "cannot reach the license server at {server}: the connection broke while reading its answer ({})",
                root_cause(e)
            ),
        )
    }

    fn timeout(&self, server: &str) -> Error {
        Error::new(
            ErrorCode::Timeout,
            format!(
                "the license server at {server} did not answer within {}; it may be overloaded, or the network slow",
                seconds(self.settings.request_timeout)
            ),
        )
    }
}

/// A complete answer from the license server. Its body may hold tokens: it is
/// zeroized on drop and never shown by `Debug`.
pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Zeroizing<Vec<u8>>,
    /// When the response headers arrived (wall clock): the base of every expiry.
    pub received_at: SystemTime,
    /// `host[:port]`, for messages.
    pub server: String,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("status", &self.status)
            .field("server", &self.server)
            .field("body_bytes", &self.body.len())
            .finish_non_exhaustive()
    }
}

impl Reply {
    /// The server's `Retry-After`, if it sent a usable one (capped at [`MAX_RETRY_AFTER`]).
    pub fn retry_after(&self) -> Option<Duration> {
        let value = self.headers.get(RETRY_AFTER)?.to_str().ok()?;
        // An HTTP-date is measured against the server's own `Date`, so a skewed
        // local clock does not stretch or shrink the wait.
        let now = self
            .headers
            .get(DATE)
            .and_then(|d| d.to_str().ok())
            .and_then(|d| httpdate::parse_http_date(d).ok())
            .unwrap_or(self.received_at);
        parse_retry_after(value, now)
    }
}

/// Parses `Retry-After` (delta-seconds or HTTP-date), capped at [`MAX_RETRY_AFTER`].
/// A date in the past means "now" (zero); anything unparsable is `None`.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        // All digits but too big for u64 is simply "very long": cap it.
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

fn too_large(server: &str, limit: usize) -> Error {
    Error::new(
        ErrorCode::ServerError,
        format!(
            "the license server at {server} sent an answer larger than {limit} bytes; refusing to read it (is the URL pointing at the right service?)"
        ),
    )
}

fn seconds(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_accepts_seconds_and_dates_and_caps_them() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("86400", now), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("99999999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        let in_90s = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&in_90s, now),
            Some(Duration::from_secs(90))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        let far = httpdate::fmt_http_date(now + Duration::from_secs(30 * 86400));
        assert_eq!(parse_retry_after(&far, now), Some(MAX_RETRY_AFTER));
        for bad in ["", "-5", "1.5", "soon", "Wed, 99 Foo 2024"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_dates_use_the_servers_clock() {
        let server_now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut headers = HeaderMap::new();
        headers.insert(DATE, httpdate::fmt_http_date(server_now).parse().unwrap());
        headers.insert(
            RETRY_AFTER,
            httpdate::fmt_http_date(server_now + Duration::from_secs(30))
                .parse()
                .unwrap(),
        );
        let reply = Reply {
            status: StatusCode::TOO_MANY_REQUESTS,
            headers,
            body: Zeroizing::new(Vec::new()),
            // Our clock is an hour ahead of the server's.
            received_at: server_now + Duration::from_secs(3600),
            server: "x".into(),
        };
        assert_eq!(reply.retry_after(), Some(Duration::from_secs(30)));
    }

    #[test]
    fn settings_default_and_validation() {
        let d = HttpSettings::default();
        assert_eq!(d.connect_timeout, Duration::from_secs(10));
        assert_eq!(d.request_timeout, Duration::from_secs(30));
        assert_eq!(d.max_body_bytes, 1 << 20);
        let zero = HttpSettings {
            request_timeout: Duration::ZERO,
            ..d
        };
        assert_eq!(Http::new(zero).unwrap_err().code, ErrorCode::Config);
    }
}
