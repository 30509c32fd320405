//! Where requests to the license server may go: the URL rule for servers
//! (https://, or plain http:// to a loopback IP literal only), the proxy for
//! `https://` (never for plain HTTP), and extra trust roots (`[server] ca_file`).

use std::net::Ipv6Addr;
use std::path::Path;

use regent_proto::ErrorCode;
use url::{Host, Url};

use super::text::{root_cause, sanitize, server_name};
use crate::error::Error;

/// How `https://` requests reach the license server (`[server] proxy`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ProxySetting {
    /// `HTTPS_PROXY`/`https_proxy`, else `ALL_PROXY`/`all_proxy`, except for
    /// hosts in `NO_PROXY`/`no_proxy`; direct when none is set.
    #[default]
    Environment,
    /// Always direct (`proxy = "none"`): the environment is ignored.
    Direct,
    /// Through this proxy (`http://` or `https://`, host and port only), with
    /// `CONNECT`: the TLS session runs end to end through the tunnel.
    Url(Url),
}

/// The environment variables read for [`ProxySetting::Environment`], first set wins.
/// `HTTP_PROXY`/`http_proxy` are deliberately absent: plain HTTP is never proxied.
pub const HTTPS_PROXY_VARIABLES: [&str; 4] =
    ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"];

impl ProxySetting {
    /// Reads a `[server] proxy` value: `"none"`, or an `http(s)://HOST[:PORT]` URL.
    ///
    /// # Errors
    /// What is wrong with the value and what to write instead (no secret: a
    /// value with a password is refused without being shown).
    pub fn parse(value: &str) -> Result<ProxySetting, String> {
        let value = value.trim();
        if value.eq_ignore_ascii_case("none") {
            return Ok(ProxySetting::Direct);
        }
        let url = Url::parse(value).map_err(|e| {
            format!(
                "{:?} is not a URL ({e}); write \"http://PROXY-HOST:PORT\", or \"none\" to ignore HTTPS_PROXY",
                sanitize(value, 100)
            )
        })?;
        check_proxy_url(&url)?;
        Ok(ProxySetting::Url(url))
    }
}

/// The checks shared by `[server] proxy` and the environment's proxy.
fn check_proxy_url(url: &Url) -> Result<(), String> {
    if !url.has_host() || url.host_str().is_some_and(str::is_empty) {
        return Err(
            "the proxy must be written as a URL with a host: http://PROXY-HOST:PORT (or \"none\")"
                .to_owned(),
        );
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "the proxy URL contains a user name or password; the configuration file is no place for them: set HTTPS_PROXY=http://USER:PASSWORD@HOST:PORT in the service's private environment instead".to_owned(),
        );
    }
    let host = sanitize(url.host_str().unwrap_or(""), 100);
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "proxy scheme {}:// is not supported (only http:// and https:// proxies, which tunnel TLS with CONNECT)",
            sanitize(url.scheme(), 20)
        ));
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "the proxy URL for {host} has a path, query or fragment; write only http://{host}:PORT"
        ));
    }
    Ok(())
}

/// The proxy `https://` requests use under [`ProxySetting::Environment`], and
/// the variable it came from. A value regent cannot use is logged and ignored.
fn proxy_from_environment() -> Option<(Url, &'static str)> {
    for name in HTTPS_PROXY_VARIABLES {
        let Ok(value) = std::env::var(name) else {
            continue;
        };
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        // `host:port` without a scheme is common in these variables.
        let parsed = Url::parse(value)
            .ok()
            .filter(|u| u.has_host())
            .or_else(|| Url::parse(&format!("http://{value}")).ok());
        let problem = match &parsed {
            // Credentials are fine here (the environment is the place for them).
            Some(url) => {
                let mut bare = url.clone();
                let _ = bare.set_username("");
                let _ = bare.set_password(None);
                check_proxy_url(&bare).err()
            }
            None => Some("it is not a URL".to_owned()),
        };
        match (parsed, problem) {
            (Some(url), None) => return Some((url, name)),
            (_, problem) => {
                tracing::warn!(
                    variable = name,
                    problem = problem.as_deref().unwrap_or("unusable"),
                    "ignoring the proxy named in the environment; https:// requests go direct (set [server] proxy to choose one)"
                );
                return None;
            }
        }
    }
    None
}

/// `builder` with every proxy (the environment's included) switched off, then
/// `setting`'s proxy added for `https://` requests only: plain HTTP, which
/// [`check_url`] allows only to loopback IPs, is never handed to a proxy.
/// Returns the proxy's `host:port` for messages.
///
/// # Errors
/// `INTERNAL` when reqwest refuses a proxy URL that passed our checks.
pub fn with_https_proxy(
    builder: reqwest::ClientBuilder,
    setting: &ProxySetting,
) -> Result<(reqwest::ClientBuilder, Option<String>), Error> {
    let builder = builder.no_proxy();
    let (url, no_proxy) = match setting {
        ProxySetting::Direct => return Ok((builder, None)),
        ProxySetting::Url(url) => {
            tracing::info!(proxy = %server_name(url), "https:// requests go through the configured proxy ([server] proxy)");
            (url.clone(), None)
        }
        ProxySetting::Environment => match proxy_from_environment() {
            Some((url, variable)) => {
                tracing::info!(proxy = %server_name(&url), variable, "https:// requests go through the proxy named in the environment (NO_PROXY applies)");
                (url, reqwest::NoProxy::from_env())
            }
            None => return Ok((builder, None)),
        },
    };
    let name = server_name(&url);
    let proxy = reqwest::Proxy::https(url)
        .map_err(|e| {
            Error::new(
                ErrorCode::Internal,
                format!("cannot use the proxy at {name}: {}", root_cause(&e)),
            )
        })?
        .no_proxy(no_proxy);
    Ok((builder.proxy(proxy), Some(name)))
}

/// The certificates of a `[server] ca_file`.
pub(super) fn read_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, Error> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| {
        Error::new(
            ErrorCode::Config,
            format!("[server] ca_file: cannot read {shown}: {e}; name a readable PEM file of CA certificates"),
        )
    })?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
        Error::new(
            ErrorCode::Config,
            format!("[server] ca_file: {shown} is not a PEM certificate bundle ({}); export the CA as PEM (-----BEGIN CERTIFICATE-----)", root_cause(&e)),
        )
    })?;
    if certs.is_empty() {
        return Err(Error::new(
            ErrorCode::Config,
            format!(
                "[server] ca_file: {shown} holds no certificate; export the CA as PEM (-----BEGIN CERTIFICATE-----)"
            ),
        ));
    }
    Ok(certs)
}

/// Refuses URLs that would send credentials in the clear or to an unclear place.
///
/// `https://` is accepted for any host; `http://` only when the host is a
/// loopback IP literal (`127.0.0.0/8`, `::1`), so tests and the emulator work
/// and nothing else can downgrade. Names, `localhost` included, are refused for
/// plain HTTP: they go through the system resolver (and `/etc/hosts`), which
/// may answer with any address.
///
/// # Errors
/// `CONFIG` naming the URL's host and what to change.
pub fn check_url(url: &Url) -> Result<(), Error> {
    let host = sanitize(url.host_str().unwrap_or(""), 100);
    if host.is_empty() {
        return Err(Error::new(
            ErrorCode::Config,
            "the license server URL has no host; use https://HOST/…",
        ));
    }
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(url) => {}
        "http" if matches!(url.host(), Some(Host::Domain(_))) => {
            let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
            return Err(Error::new(
                ErrorCode::Config,
                format!(
                    "refusing plain http:// to {host}: a name is resolved through the system resolver and may not be loopback; use http://127.0.0.1{port}/ (or http://[::1]{port}/) for a local server, or https://"
                ),
            ));
        }
        "http" => {
            return Err(Error::new(
                ErrorCode::Config,
                format!(
                    "refusing plain http:// to {host}: use https:// (plain HTTP is only allowed to loopback addresses)"
                ),
            ));
        }
        other => {
            return Err(Error::new(
                ErrorCode::Config,
                format!(
                    "unsupported URL scheme {}:// for {host}: use https://",
                    sanitize(other, 20)
                ),
            ));
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        // reqwest would turn them into an Authorization header that fights ours,
        // and they would end up in config files and logs.
        return Err(Error::new(
            ErrorCode::Config,
            format!(
                "the license server URL for {host} contains a user name or password; remove it (credentials are enrolled into the secret store)"
            ),
        ));
    }
    Ok(())
}

/// A loopback IP literal; never a name.
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => {
            ip == Ipv6Addr::LOCALHOST || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Some(Host::Domain(_)) | None => false,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use reqwest::StatusCode;

    use super::*;
    use crate::upstream::http::{Http, HttpSettings};

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn check_url_allows_https_anywhere_and_http_to_loopback_only() {
        for ok in [
            "http://127.0.0.1:8080/",
            "http://127.1.2.3/",
            "http://[::1]:9000/x",
            "http://[::ffff:127.0.0.1]:9000/x",
            "https://localhost/",
            "https://example.com/",
            "https://10.0.0.1/",
            "https://licenses.vendor.example:8443/base/",
        ] {
            assert!(check_url(&url(ok)).is_ok(), "{ok} should be allowed");
        }
        for refused in [
            "http://10.0.0.1/",
            "http://example.com/",
            "http://localhost/",
            "http://LOCALHOST:1/",
            "http://localhost./",
            "http://localhost.example.com/",
            "http://[::2]/",
            "http://0.0.0.0/",
        ] {
            let e = check_url(&url(refused)).unwrap_err();
            assert_eq!(e.code, ErrorCode::Config, "{refused}");
            assert!(
                e.message.starts_with("refusing plain http:// to "),
                "{}",
                e.message
            );
        }
        let e = check_url(&url("http://example.com/path")).unwrap_err();
        assert_eq!(
            e.message,
            "refusing plain http:// to example.com: a name is resolved through the system resolver and may not be loopback; use http://127.0.0.1/ (or http://[::1]/) for a local server, or https://"
        );
        // Regression (issue 18, item 1): `localhost` went through the resolver.
        let e = check_url(&url("http://localhost:8600/")).unwrap_err();
        assert!(
            e.message.contains("use http://127.0.0.1:8600/"),
            "{}",
            e.message
        );
        let e = check_url(&url("http://10.0.0.1/")).unwrap_err();
        assert_eq!(
            e.message,
            "refusing plain http:// to 10.0.0.1: use https:// (plain HTTP is only allowed to loopback addresses)"
        );
    }

    #[test]
    fn proxy_setting_accepts_none_and_plain_proxy_urls_only() {
        assert_eq!(ProxySetting::parse("none"), Ok(ProxySetting::Direct));
        assert_eq!(ProxySetting::parse(" NONE "), Ok(ProxySetting::Direct));
        for ok in [
            "http://proxy.corp.example:3128",
            "http://10.1.2.3:8080/",
            "https://proxy.corp.example:443",
        ] {
            assert!(
                matches!(ProxySetting::parse(ok), Ok(ProxySetting::Url(_))),
                "{ok}"
            );
        }
        for (bad, needle) in [
            ("proxy.corp:3128", "http://PROXY-HOST:PORT"),
            ("3128", "not a URL"),
            ("socks5://127.0.0.1:1080", "not supported"),
            ("http://user:hunter22@proxy:3128", "HTTPS_PROXY="),
            ("http://proxy:3128/path", "path, query or fragment"),
            ("http://proxy:3128/?x=1", "path, query or fragment"),
        ] {
            let e = ProxySetting::parse(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
            assert!(!e.contains("hunter22"), "{e}");
        }
    }

    /// Plain HTTP never goes through a proxy: not the configured one, not the
    /// environment's. (The end-to-end form is tests/tests/proxy.rs.)
    #[tokio::test]
    async fn plain_http_never_uses_the_proxy() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Anything connecting to it waits in the backlog: a proxied request
        // would hang there until the request timeout and fail the test.
        let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        proxy.set_nonblocking(true).unwrap();
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_url = Url::parse(&format!("http://{}", proxy.local_addr().unwrap())).unwrap();
        let http = Http::new(HttpSettings {
            proxy: ProxySetting::Url(proxy_url),
            request_timeout: Duration::from_secs(5),
            ..HttpSettings::default()
        })
        .unwrap();
        let target = Url::parse(&format!("http://{}/x", server.local_addr().unwrap())).unwrap();
        let serve = tokio::spawn(async move {
            let (mut c, _) = server.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf).await.unwrap();
            c.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
        });
        let reply = http.send(http.get(&target), &target).await.unwrap();
        assert_eq!(reply.status, StatusCode::NO_CONTENT);
        serve.await.unwrap();
        // The proxy never saw a connection.
        let accepted = proxy.accept().map(|_| ()).map_err(|e| e.kind());
        assert_eq!(accepted, Err(std::io::ErrorKind::WouldBlock));
    }

    #[test]
    fn ca_file_errors_name_the_key_and_the_fix() {
        let dir = std::env::temp_dir().join(format!("regent-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let e = read_ca_file(&missing).unwrap_err();
        assert_eq!(e.code, ErrorCode::Config);
        assert!(
            e.message.starts_with("[server] ca_file: cannot read"),
            "{}",
            e.message
        );
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let e = read_ca_file(&empty).unwrap_err();
        assert!(e.message.contains("holds no certificate"), "{}", e.message);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn check_url_refuses_other_schemes_and_embedded_credentials() {
        assert_eq!(
            check_url(&url("ftp://example.com/")).unwrap_err().code,
            ErrorCode::Config
        );
        assert_eq!(
            check_url(&url("file:///etc/passwd")).unwrap_err().code,
            ErrorCode::Config
        );
        let e = check_url(&url("https://admin:hunter22@example.com/")).unwrap_err();
        assert_eq!(e.code, ErrorCode::Config);
        assert!(!e.message.contains("hunter22"));
    }
}
