//! The only code in the agent that speaks HTTP: the license-server profiles.
//!
//! - [`http`]: the shared client (rustls, no redirects, bounded bodies).
//! - [`network`]: where requests may go: [`check_url`] refuses plain HTTP
//!   except to loopback IP literals; plain HTTP never goes through a proxy,
//!   `https://` through `[server] proxy` or `HTTPS_PROXY` (CONNECT, TLS end
//!   to end); `[server] ca_file` adds trust roots.
//! - [`sentinel`]: registration token → auth token → refresh cycle (DESIGN §3.1).
//! - [`oauth2`]: client credentials and refresh tokens, Reltio style (DESIGN §3.2).
//! - [`identity`]: the device facts sent with a Sentinel redemption.
//!
//! Every failure is an [`Error`](crate::Error) with a code from the one table: refusals that
//! need a person (`REVOKED`, registration-token codes, `CLIENT_CREDENTIALS_INVALID`,
//! `CONFIG`) are permanent; `SERVER_ERROR`, `UNAVAILABLE`, `TIMEOUT`,
//! `RATE_LIMITED` and `TOKEN_LIMIT` are worth retrying, after `retry_after` when set.
//! No message, log line or `Debug` output carries a secret.

pub mod http;
pub mod identity;
pub mod network;
pub mod oauth2;
pub(crate) mod reply;
pub mod sentinel;
pub(crate) mod text;
pub mod token;

use url::Url;

pub use self::http::{Http, HttpSettings, MAX_RETRY_AFTER};
pub use self::identity::DeviceIdentity;
pub use self::network::{ProxySetting, check_url, with_https_proxy};
pub use self::oauth2::{OAuth2, OAuth2Endpoint};
pub use self::sentinel::{IdpConfig, Sentinel};
pub use self::token::MAX_EXPIRES_IN;
use crate::grant::Grant;

/// The configured license-server profile.
#[derive(Debug)]
pub enum Upstream {
    /// Registration token → auth token → refresh cycle.
    Sentinel(Sentinel),
    /// Client credentials (and refresh tokens when the server sends them).
    OAuth2(OAuth2),
}

impl Upstream {
    /// The profile's name in the configuration: `"sentinel"` or `"oauth2"`.
    pub fn profile(&self) -> &'static str {
        match self {
            Upstream::Sentinel(_) => "sentinel",
            Upstream::OAuth2(_) => "oauth2",
        }
    }

    /// `host[:port]` of the license server, for status output and logs.
    pub fn server(&self) -> String {
        match self {
            Upstream::Sentinel(s) => text::server_name(s.base_url()),
            Upstream::OAuth2(o) => match o.endpoint() {
                OAuth2Endpoint::TokenUrl(url) | OAuth2Endpoint::Issuer(url) => {
                    text::server_name(url)
                }
            },
        }
    }
}

impl From<Sentinel> for Upstream {
    fn from(s: Sentinel) -> Self {
        Upstream::Sentinel(s)
    }
}

impl From<OAuth2> for Upstream {
    fn from(o: OAuth2) -> Self {
        Upstream::OAuth2(o)
    }
}

/// What a Sentinel redemption returns: the auth token's id on the server and
/// the first grant (always with a refresh token).
#[derive(Debug, Clone)]
pub struct Redemption {
    /// The auth token's id (what the administrator deletes to revoke it).
    pub auth_token_id: String,
    /// The first access token and the refresh token.
    pub grant: Grant,
}

/// `base` with `segments` appended as path segments (each percent-encoded),
/// whether or not `base` ends with `/`. Query and fragment are dropped.
fn join_path(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    // http(s) URLs always have a path; check_url refused every other scheme.
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_path_handles_slashes_prefixes_and_odd_segments() {
        let u = |s: &str| Url::parse(s).unwrap();
        assert_eq!(
            join_path(&u("http://127.0.0.1:9/"), &["token", "api"]).as_str(),
            "http://127.0.0.1:9/token/api"
        );
        assert_eq!(
            join_path(&u("https://h/base?x=1#f"), &["token"]).as_str(),
            "https://h/base/token"
        );
        assert_eq!(
            join_path(&u("https://h/auth/"), &["realms", "a/b c", "x"]).as_str(),
            "https://h/auth/realms/a%2Fb%20c/x"
        );
    }

    #[test]
    fn upstream_names_profile_and_server() {
        let http = Http::new(HttpSettings::default()).unwrap();
        let s = Sentinel::new(http, Url::parse("https://ems.example:8443/x/").unwrap()).unwrap();
        let up = Upstream::from(s);
        assert_eq!(up.profile(), "sentinel");
        assert_eq!(up.server(), "ems.example:8443");
    }
}
