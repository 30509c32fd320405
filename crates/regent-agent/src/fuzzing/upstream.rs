//! The license server's answers: status, headers and body into a grant, a
//! discovered token endpoint, or an error. Each answer goes through the same
//! sync function the agent runs after `Http::send` (`*_outcome` in
//! `upstream::sentinel` and `upstream::oauth2`), redaction included.
//!
//! Input: an optional endpoint line, then a status line, header lines, a blank
//! line and the body:
//!
//! ```text
//! oauth2-token
//! 429
//! Content-Type: application/json
//! Retry-After: 7
//!
//! {"error":"active_token_limit_exceeded"}
//! ```

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use regent_proto::ErrorCode;
use regent_proto::frame::{self, Framed, HEADER};
use regent_proto::message::{self, Outcome as WireOutcome, Response, TokenReply, WireSecret};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde_json::Value;
use url::Url;
use zeroize::Zeroizing;

use super::{has_control, mode, rotate_at};
use crate::error::Error;
use crate::grant::Grant;
use crate::secret::{ExposeSecret, SecretString, secret};
use crate::upstream::DeviceIdentity;
use crate::upstream::check_url;
use crate::upstream::http::{Http, HttpSettings, MAX_RETRY_AFTER, Reply};
use crate::upstream::oauth2::{self, GrantType, OAuth2, OAuth2Endpoint};
use crate::upstream::sentinel::{self, IdpConfig};
use crate::upstream::token::{MAX_EXPIRES_IN, MAX_REFRESH_EXPIRES_IN, MAX_TOKEN_BYTES};

/// The calls whose answers are parsed, as named on the first input line.
pub const ENDPOINTS: &[&str] = &[
    "sentinel-redeem",
    "sentinel-refresh",
    "oauth2-token",
    "oauth2-refresh",
    "sentinel-discovery",
    "oauth2-discovery",
];

/// The registration token sent with `sentinel-redeem` (a server may echo it).
pub const REGISTRATION_TOKEN: &str = "regtok-3f9a1c77e2b4";
/// The refresh token sent with `sentinel-refresh` and `oauth2-refresh`.
pub const REFRESH_TOKEN: &str = "refresh-b81d0c5e4f6a";
/// The client secret sent with `oauth2-token` and `oauth2-refresh`.
pub const CLIENT_SECRET: &str = "clientsecret-5e02aa91c3";
/// The OAuth2 client id (the Basic header carries `id:secret`).
pub const CLIENT_ID: &str = "fuzz-client";

const SERVER: &str = "license.example";
/// Longest error message a server can provoke (two 200-character server texts
/// of up to 4 bytes each, a 200-character location and our own words).
const MAX_MESSAGE_BYTES: usize = 4096;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Endpoint {
    SentinelRedeem,
    SentinelRefresh,
    OAuth2Token,
    OAuth2Refresh,
    /// `GET /token/api/v5/idpConfigurations`.
    SentinelDiscovery,
    /// `GET {issuer}/.well-known/openid-configuration`.
    OAuth2Discovery,
}

impl Endpoint {
    fn from_index(i: usize) -> Endpoint {
        match i {
            0 => Endpoint::SentinelRedeem,
            1 => Endpoint::SentinelRefresh,
            2 => Endpoint::OAuth2Token,
            3 => Endpoint::OAuth2Refresh,
            4 => Endpoint::SentinelDiscovery,
            _ => Endpoint::OAuth2Discovery,
        }
    }

    fn is_discovery(self) -> bool {
        matches!(
            self,
            Endpoint::SentinelDiscovery | Endpoint::OAuth2Discovery
        )
    }

    /// The secrets the agent sent: a server may echo them, we must not.
    fn sent(self) -> &'static [&'static str] {
        match self {
            Endpoint::SentinelRedeem => &[REGISTRATION_TOKEN],
            Endpoint::SentinelRefresh => &[REFRESH_TOKEN],
            Endpoint::OAuth2Token => &[CLIENT_SECRET],
            Endpoint::OAuth2Refresh => &[CLIENT_SECRET, REFRESH_TOKEN],
            Endpoint::SentinelDiscovery | Endpoint::OAuth2Discovery => &[],
        }
    }

    /// The codes a refusal (non-2xx answer) may map to.
    fn refusal_codes(self) -> &'static [ErrorCode] {
        use ErrorCode::*;
        match self {
            Endpoint::SentinelRedeem => &[
                RegistrationTokenInvalid,
                RegistrationTokenExpired,
                RegistrationTokenExhausted,
                RegistrationTokenDisabled,
                RateLimited,
                ServerError,
            ],
            Endpoint::SentinelRefresh => &[Revoked, Config, RateLimited, ServerError],
            Endpoint::OAuth2Token => &[
                TokenLimit,
                ClientCredentialsInvalid,
                Config,
                RateLimited,
                ServerError,
            ],
            Endpoint::OAuth2Refresh => &[
                TokenLimit,
                ClientCredentialsInvalid,
                Revoked,
                Config,
                RateLimited,
                ServerError,
            ],
            Endpoint::SentinelDiscovery | Endpoint::OAuth2Discovery => &[RateLimited, ServerError],
        }
    }

    /// The codes a 2xx answer that cannot be used may map to.
    fn unusable_codes(self) -> &'static [ErrorCode] {
        if self.is_discovery() {
            // CONFIG: the document names a token endpoint regent refuses.
            &[ErrorCode::ServerError, ErrorCode::Config]
        } else {
            &[ErrorCode::ServerError]
        }
    }

    /// Where the token fields are in a successful answer.
    fn token_paths(self) -> [&'static [&'static str]; 2] {
        match self {
            Endpoint::SentinelRedeem => [
                &["authToken", "token", "access_token"],
                &["authToken", "token", "refresh_token"],
            ],
            _ => [&["access_token"], &["refresh_token"]],
        }
    }
}

/// What one answer turned into.
enum Parsed {
    Granted {
        grant: Grant,
        auth_token_id: Option<String>,
    },
    /// A discovery document: where tokens are requested (Sentinel: as whom).
    Discovered {
        token_url: Url,
        idp: Option<IdpConfig>,
    },
    Failed {
        error: Error,
        /// A non-2xx answer (a refusal), as opposed to a 2xx that could not be used.
        refused: bool,
    },
}

impl Parsed {
    /// Everything about the outcome except the tokens' values (the grant's
    /// `Debug` redacts them).
    fn redacted(&self) -> String {
        match self {
            Parsed::Granted {
                grant,
                auth_token_id,
            } => format!("{grant:?} {auth_token_id:?}"),
            Parsed::Discovered { token_url, idp } => format!("{token_url} {idp:?}"),
            Parsed::Failed { error, refused } => format!("{error:?} {refused}"),
        }
    }
}

/// Parses one license-server answer for one endpoint and checks the outcome.
pub fn upstream_reply(data: &[u8]) {
    let (endpoint, rest) = mode(data, ENDPOINTS);
    let endpoint = Endpoint::from_index(endpoint);
    let reply = read_reply(rest);
    let parsed = parse(endpoint, &reply);
    check(endpoint, &reply, &parsed, None);
    tokens_do_not_show(endpoint, &reply);
}

/// `status\nName: value\n…\n\nbody`; unusable lines are skipped.
fn read_reply(data: &[u8]) -> Reply {
    let (status, mut rest) = split_line(data);
    let status = std::str::from_utf8(status)
        .ok()
        .and_then(|l| l.trim().parse::<u16>().ok())
        .and_then(|n| StatusCode::from_u16(n).ok())
        .unwrap_or(StatusCode::OK);
    let mut headers = HeaderMap::new();
    while !rest.is_empty() {
        let (line, after) = split_line(rest);
        rest = after;
        if line.is_empty() {
            break; // the body follows
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(line[..colon].trim_ascii()),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) {
            headers.append(name, value);
        }
    }
    Reply {
        status,
        headers,
        body: Zeroizing::new(rest.to_vec()),
        received_at: received_at(),
        server: SERVER.to_owned(),
    }
}

/// The bytes up to the first newline, and those after it.
fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

fn received_at() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

/// What the profile does with an answer: the very function the async methods
/// of `upstream::sentinel` and `upstream::oauth2` call after `Http::send`.
fn parse(endpoint: Endpoint, reply: &Reply) -> Parsed {
    let refused = !reply.status.is_success();
    let client_secret = secret_of(CLIENT_SECRET);
    let refresh_token = secret_of(REFRESH_TOKEN);
    let granted = |grant: Grant, auth_token_id: Option<String>| Parsed::Granted {
        grant,
        auth_token_id,
    };
    let outcome = match endpoint {
        Endpoint::SentinelRedeem => {
            sentinel::redemption_outcome(reply, &identity(), &secret_of(REGISTRATION_TOKEN))
                .map(|r| granted(r.grant, Some(r.auth_token_id)))
        }
        Endpoint::SentinelRefresh => {
            sentinel::refresh_outcome(reply, &idp(), &refresh_token).map(|g| granted(g, None))
        }
        Endpoint::OAuth2Token => oauth2()
            .token_outcome(
                reply,
                GrantType::ClientCredentials,
                Some(&client_secret),
                &[&client_secret],
            )
            .map(|g| granted(g, None)),
        Endpoint::OAuth2Refresh => oauth2()
            .token_outcome(
                reply,
                GrantType::RefreshToken,
                Some(&client_secret),
                &[&client_secret, &refresh_token],
            )
            .map(|g| granted(g, None)),
        Endpoint::SentinelDiscovery => {
            sentinel::discovery_outcome(reply).map(|idp| Parsed::Discovered {
                token_url: idp.token_url.clone(),
                idp: Some(idp),
            })
        }
        Endpoint::OAuth2Discovery => {
            oauth2::discovery_outcome(reply).map(|discovery| Parsed::Discovered {
                token_url: discovery.token,
                idp: None,
            })
        }
    };
    outcome.unwrap_or_else(|error| Parsed::Failed { error, refused })
}

/// The secrets a call sends as the agent sends them (for OAuth2 also the
/// `client_id:secret` pair that the Basic header encodes).
fn sent_forms(endpoint: Endpoint) -> Vec<String> {
    let mut sent: Vec<String> = endpoint.sent().iter().map(|s| (*s).to_owned()).collect();
    if matches!(endpoint, Endpoint::OAuth2Token | Endpoint::OAuth2Refresh) {
        sent.push(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
    }
    sent
}

/// Every way a server could echo what it was sent: as is, form-encoded and
/// base64 (an HTTP Basic header).
fn echoes(endpoint: Endpoint) -> Vec<String> {
    use base64::Engine as _;
    let mut forms = Vec::new();
    for s in sent_forms(endpoint) {
        forms.push(url::form_urlencoded::byte_serialize(s.as_bytes()).collect());
        forms.push(base64::engine::general_purpose::STANDARD.encode(&s));
        forms.push(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&s));
        forms.push(s);
    }
    forms
}

fn secret_of(value: &str) -> SecretString {
    secret(value.to_owned())
}

fn identity() -> DeviceIdentity {
    DeviceIdentity {
        identifier: "dev-fuzz/0".into(),
        fqdn: "host.example".into(),
        mac_address: "aa:bb:cc:dd:ee:ff".into(),
        system_user_name: "alice".into(),
        ref_id1: None,
        ref_id2: None,
    }
}

fn idp() -> IdpConfig {
    IdpConfig {
        realm: "regent".into(),
        client_id: "regent-agent".into(),
        token_url: Url::parse(
            "https://license.example/realms/regent/protocol/openid-connect/token",
        )
        .unwrap(),
    }
}

fn oauth2() -> &'static OAuth2 {
    static OAUTH2: OnceLock<OAuth2> = OnceLock::new();
    OAUTH2.get_or_init(|| {
        let http = Http::new(HttpSettings::default()).unwrap();
        let url = Url::parse("https://license.example/oauth/token").unwrap();
        OAuth2::new(
            http,
            OAuth2Endpoint::TokenUrl(url),
            CLIENT_ID.into(),
            Some("entities_api".into()),
        )
        .unwrap()
    })
}

/// The properties of one outcome. `tokens` are the token fields' values in the
/// body, when the caller knows them.
fn check(endpoint: Endpoint, reply: &Reply, parsed: &Parsed, tokens: Option<[Option<&str>; 2]>) {
    match parsed {
        Parsed::Failed { error, refused } => {
            assert_eq!(*refused, !reply.status.is_success());
            let allowed = if *refused {
                endpoint.refusal_codes()
            } else {
                endpoint.unusable_codes()
            };
            assert!(
                allowed.contains(&error.code),
                "{endpoint:?} HTTP {}: code {} is not one this call can fail with",
                reply.status,
                error.code
            );
            check_message(&error.message);
            let debug = format!("{error:?}");
            for sent in echoes(endpoint) {
                assert!(
                    !error.message.contains(&sent) && !debug.contains(&sent),
                    "the message shows a secret the agent sent ({sent}): {}",
                    error.message
                );
            }
            if let Some(after) = error.retry_after {
                assert!(after <= MAX_RETRY_AFTER, "retry_after {after:?}");
                assert!(
                    reply.headers.contains_key(RETRY_AFTER),
                    "retry_after without a Retry-After header"
                );
            }
        }
        Parsed::Granted {
            grant,
            auth_token_id,
        } => {
            assert!(reply.status.is_success());
            check_grant(grant);
            if endpoint == Endpoint::SentinelRedeem {
                let id = auth_token_id.as_deref().unwrap();
                assert!(
                    !id.is_empty() && id.len() <= 256 && !has_control(id),
                    "{id:?}"
                );
                assert!(grant.refresh_token.is_some());
            }
            if let Some([access, refresh]) = tokens {
                assert_eq!(Some(grant.access_token.expose_secret()), access);
                if let Some(rt) = &grant.refresh_token {
                    assert_eq!(Some(rt.expose_secret()), refresh);
                }
            }
            fits_in_one_frame(grant);
        }
        Parsed::Discovered { token_url, idp } => {
            assert!(reply.status.is_success() && endpoint.is_discovery());
            discovered(endpoint, token_url, idp.as_ref());
        }
    }
}

/// What an accepted discovery document promises: a token endpoint regent
/// would send a secret to (https://, or http:// to a loopback IP literal; no
/// user name), and for Sentinel a realm and client id fit for messages.
fn discovered(endpoint: Endpoint, token_url: &Url, idp: Option<&IdpConfig>) {
    assert!(check_url(token_url).is_ok(), "{token_url}");
    if token_url.scheme() == "http" {
        assert!(
            matches!(
                token_url.host(),
                Some(url::Host::Ipv4(_) | url::Host::Ipv6(_))
            ),
            "plain http:// to a name: {token_url}"
        );
    }
    assert!(token_url.username().is_empty() && token_url.password().is_none());
    assert!(
        token_url.as_str().len() <= 16 * 1024,
        "{}",
        token_url.as_str().len()
    );
    match (endpoint, idp) {
        (Endpoint::SentinelDiscovery, Some(idp)) => {
            assert_eq!(token_url, &idp.token_url);
            for name in [&idp.realm, &idp.client_id] {
                assert!(
                    !name.is_empty() && name.len() <= 256 && !has_control(name),
                    "{name:?}"
                );
            }
            assert!(token_url.query().is_none() && token_url.fragment().is_none());
            assert!(
                token_url.path().ends_with("/protocol/openid-connect/token"),
                "{token_url}"
            );
            // The refusal of a refresh at that endpoint names the client id:
            // it stays a short, clean message.
            let mut headers = HeaderMap::new();
            headers.insert(
                reqwest::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            let refusal = Reply {
                status: StatusCode::BAD_REQUEST,
                headers,
                body: Zeroizing::new(br#"{"error":"invalid_client"}"#.to_vec()),
                received_at: received_at(),
                server: SERVER.to_owned(),
            };
            let e = sentinel::refresh_outcome(&refusal, idp, &secret_of(REFRESH_TOKEN))
                .err()
                .unwrap();
            check_message(&e.message);
        }
        (Endpoint::OAuth2Discovery, None) => {}
        other => panic!("a discovery outcome for {other:?}"),
    }
}

fn check_message(message: &str) {
    assert!(!message.is_empty());
    assert!(
        message.len() <= MAX_MESSAGE_BYTES,
        "a {}-byte message",
        message.len()
    );
    assert!(
        !has_control(message),
        "the message carries control characters: {message:?}"
    );
}

fn check_grant(grant: &Grant) {
    assert_eq!(grant.received_at, received_at());
    let lifetime = grant.lifetime();
    assert!(
        lifetime >= Duration::from_secs(1) && lifetime <= MAX_EXPIRES_IN,
        "lifetime {lifetime:?}"
    );
    for token in std::iter::once(&grant.access_token).chain(&grant.refresh_token) {
        let token = token.expose_secret();
        assert!(!token.is_empty() && token.len() <= MAX_TOKEN_BYTES);
        assert!(token.bytes().all(|b| b.is_ascii_graphic()));
    }
    if let Some(at) = grant.refresh_expires_at {
        assert!(at > grant.received_at && at <= grant.received_at + MAX_REFRESH_EXPIRES_IN);
    }
    let t = &grant.token_type;
    assert!(
        !t.is_empty() && t.chars().count() <= 41 && !has_control(t),
        "{t:?}"
    );
    if let Some(scope) = &grant.scope {
        assert!(!scope.is_empty() && scope.chars().count() <= 2001 && !has_control(scope));
    }
}

/// A grant the parser accepts can be handed to an app: its token reply fits in
/// one IPC frame and reads back unchanged.
fn fits_in_one_frame(grant: &Grant) {
    let reply = TokenReply {
        access_token: WireSecret::new(grant.access_token.expose_secret().to_owned()),
        token_type: grant.token_type.clone(),
        expires_at_ms: 1_700_000_000_000,
        scope: grant.scope.clone(),
    };
    let response = Response {
        id: u64::MAX,
        outcome: WireOutcome::Ok(message::Reply::Token(reply.clone())),
    };
    let mut out = Vec::new();
    if let Err(e) = frame::encode(&response, &mut out) {
        panic!("an accepted grant cannot be sent to an app: {e}");
    }
    let Ok(Framed::Frame { len }) = frame::frame_len(&out) else {
        panic!("an encoded frame does not read back as one");
    };
    let back: Response = serde_json::from_slice(&out[HEADER..HEADER + len]).unwrap();
    match back.outcome {
        WireOutcome::Ok(message::Reply::Token(back)) => assert_eq!(back, reply),
        _ => panic!("the token reply read back as something else"),
    }
}

/// The differential check: rotating the token fields of a 2xx answer changes
/// nothing but the tokens handed out, so no message or log-able output can
/// carry them.
fn tokens_do_not_show(endpoint: Endpoint, reply: &Reply) {
    if !reply.status.is_success() {
        return;
    }
    let Ok(original @ Value::Object(_)) = serde_json::from_slice::<Value>(&reply.body) else {
        return;
    };
    let mut rotated = original.clone();
    let paths = endpoint.token_paths();
    let changed = paths
        .iter()
        .map(|p| rotate_at(&mut rotated, p))
        .fold(false, |a, b| a | b);
    if !changed {
        return;
    }
    let run = |body: &Value| {
        let reply = Reply {
            status: reply.status,
            headers: reply.headers.clone(),
            body: Zeroizing::new(serde_json::to_vec(body).unwrap()),
            received_at: reply.received_at,
            server: reply.server.clone(),
        };
        let parsed = parse(endpoint, &reply);
        let tokens = paths.map(|p| string_at(body, p));
        check(endpoint, &reply, &parsed, Some(tokens));
        parsed.redacted()
    };
    let a = run(&original);
    let b = run(&rotated);
    assert_eq!(a, b, "the outcome depends on the tokens' content");
}

fn string_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(value, |v, key| v.get(*key))
        .and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The outcome of one committed seed of `fuzz/corpus/upstream_reply/`.
    fn outcome(seed: &str) -> Parsed {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/corpus/upstream_reply")
            .join(seed);
        let data = std::fs::read(&path).unwrap();
        let (endpoint, rest) = mode(&data, ENDPOINTS);
        let endpoint = Endpoint::from_index(endpoint);
        let reply = read_reply(rest);
        let parsed = parse(endpoint, &reply);
        check(endpoint, &reply, &parsed, None);
        parsed
    }

    fn failed(seed: &str) -> Error {
        match outcome(seed) {
            Parsed::Failed { error, .. } => error,
            other => panic!("{seed} was accepted: {}", other.redacted()),
        }
    }

    /// The discovery documents go through the agent's own functions: the
    /// emulator's answers are accepted, and what would send a secret to an
    /// unclear place, or carry text unfit for a message, is refused.
    #[test]
    fn discovery_seeds_take_the_real_path() {
        match outcome("emulator-sentinel-discovery-200") {
            Parsed::Discovered {
                token_url,
                idp: Some(idp),
            } => {
                assert_eq!(idp.realm, "regent");
                assert!(
                    token_url
                        .as_str()
                        .ends_with("/auth/realms/regent/protocol/openid-connect/token"),
                    "{token_url}"
                );
            }
            other => panic!("{}", other.redacted()),
        }
        assert!(matches!(
            outcome("emulator-oauth2-discovery-200"),
            Parsed::Discovered { idp: None, .. }
        ));
        // Regression (issue 18, item 1): `localhost` was accepted as loopback.
        for seed in ["discovery-sentinel-localhost", "discovery-oauth2-localhost"] {
            let e = failed(seed);
            assert_eq!(e.code, ErrorCode::Config, "{seed}: {}", e.message);
            assert!(e.message.contains("use http://127.0.0.1:"), "{}", e.message);
        }
        for seed in [
            "discovery-sentinel-plain-http",
            "discovery-sentinel-userinfo",
            "discovery-oauth2-plain-http",
            "discovery-oauth2-userinfo",
        ] {
            let e = failed(seed);
            assert_eq!(e.code, ErrorCode::Config, "{seed}: {}", e.message);
            assert!(!e.message.contains("hunter22"), "{}", e.message);
        }
        // Found by the discovery target: a bidi character in the realm and a
        // 5,000-byte client id were accepted; the client id then made every
        // refusal message 5 KB long.
        for seed in [
            "discovery-sentinel-bidi-realm",
            "discovery-sentinel-long-client",
            "discovery-oauth2-long",
        ] {
            assert_eq!(failed(seed).code, ErrorCode::ServerError, "{seed}");
        }
        let e = failed("discovery-oauth2-rate-limited");
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert_eq!(e.retry_after, Some(Duration::from_secs(30)));
    }
}
