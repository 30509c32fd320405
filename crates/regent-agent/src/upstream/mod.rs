//! The only code in the agent that speaks HTTP: the license-server profiles.
//!
//! - [`admin`]: the admin API (registration tokens, auth tokens) as an
//!   administrator's tools use it: [`AdminClient`].
//! - [`http`]: the shared client (rustls, no redirects, bounded bodies).
//! - [`network`]: where requests may go: [`check_url`] refuses plain HTTP
//!   except to loopback IP literals; plain HTTP never goes through a proxy,
//!   `https://` through `[server] proxy` or `HTTPS_PROXY` (CONNECT, TLS end
//!   to end); `[server] ca_file` adds trust roots.
//! - [`sentinel`]: registration token → auth token → refresh cycle (DESIGN §3.1).
//! - [`oauth2`]: client credentials and refresh tokens, Reltio style (DESIGN §3.2).
//! - [`identity`]: the device facts sent with a Sentinel redemption.
//! - [`profile`]: the [`UpstreamProfile`] trait every profile implements
//!   (enroll, renew); the agent holds an [`Upstream`] (`dyn UpstreamProfile`).
//!
//! Every failure is an [`Error`](crate::Error) with a code from the one table: refusals that
//! need a person (`REVOKED`, registration-token codes, `CLIENT_CREDENTIALS_INVALID`,
//! `CONFIG`) are permanent; `SERVER_ERROR`, `UNAVAILABLE`, `TIMEOUT`,
//! `RATE_LIMITED` and `TOKEN_LIMIT` are worth retrying, after `retry_after` when set.
//! No message, log line or `Debug` output carries a secret.

pub mod admin;
pub mod http;
pub mod identity;
pub mod network;
pub mod oauth2;
pub mod profile;
pub(crate) mod reply;
pub mod sentinel;
pub(crate) mod text;
pub mod token;

use url::Url;

pub use self::admin::{
    AdminClient, AdminCredentials, AdminReply, CreatedRegistrationToken, admin_url,
};
pub use self::http::{Http, HttpSettings, MAX_RETRY_AFTER};
pub use self::identity::DeviceIdentity;
pub use self::network::{ProxySetting, check_url, with_https_proxy};
pub use self::oauth2::{OAuth2, OAuth2Endpoint};
pub use self::profile::{
    BoxFuture, BrowserSignIn, DeviceSignIn, EnrollKind, Enrollment, Held, SignIn, SignInGrant,
    SignInOutcome, Upstream, UpstreamProfile, UserSignIn,
};
pub use self::sentinel::{IdpConfig, Sentinel};
pub use self::token::MAX_EXPIRES_IN;
use crate::grant::Grant;

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
        let up: &Upstream = &s;
        assert_eq!(up.profile(), "sentinel");
        assert_eq!(up.server(), "ems.example:8443");
    }
}
