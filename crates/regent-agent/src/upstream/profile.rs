//! The upstream profile trait (DESIGN §3): what the agent asks of a license
//! server, whatever its API. Each profile (`sentinel/`, `oauth2.rs`)
//! implements it next to its HTTP client; the agent and the renewer only see
//! [`Upstream`], so adding a profile means its folder here, its `[server]`
//! keys in `config` and one arm where the agent builds it
//! (`agent/factories.rs`).

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;

use crate::error::Error;
use crate::grant::Grant;
use crate::secret::SecretString;

use super::identity::DeviceIdentity;

/// A boxed, sendable future (the traits that return one stay object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A license server as the agent uses it: one profile behind a trait object.
pub type Upstream = dyn UpstreamProfile;

/// How a profile enrolls a slot, which decides how the agent makes that
/// crash-safe (DESIGN §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollKind {
    /// A one-time registration token is redeemed for an auth token: it
    /// consumes a count, so the slot's identifier and a pending marker are
    /// durable before it is sent, and a retry replays the same identifier.
    Redemption,
    /// A reusable client secret is proven by a first token request, then
    /// stored as the slot's credential.
    ClientSecret,
}

/// What an enrollment got from the server.
#[derive(Debug, Clone)]
pub struct Enrollment {
    /// The server's auth-token id (a redemption), if it has one.
    pub auth_token_id: Option<String>,
    /// The first access token (and refresh token, if any).
    pub grant: Grant,
}

/// The secrets a slot renews with, as its stored credential holds them.
#[derive(Debug, Default)]
pub struct Held {
    pub refresh_token: Option<SecretString>,
    pub client_secret: Option<SecretString>,
    /// A user's sign-in (`regent login`): renewed with the refresh token
    /// alone; when the server refuses it the user must sign in again.
    pub signed_in: bool,
}

/// Where a browser sign-in goes: the CLI adds `state`, the PKCE challenge
/// and its loopback redirect URI.
#[derive(Debug, Clone)]
pub struct BrowserSignIn {
    pub authorization_endpoint: url::Url,
    pub client_id: String,
    pub scope: Option<String>,
}

/// A device authorization (RFC 8628 §3.2).
#[derive(Debug)]
pub struct DeviceSignIn {
    pub device_code: SecretString,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub expires_in: std::time::Duration,
    pub interval: std::time::Duration,
}

/// What a sign-in is completed with.
#[derive(Debug)]
pub enum SignInGrant {
    /// The browser's code, the PKCE verifier and the redirect URI it went to.
    AuthorizationCode {
        code: SecretString,
        code_verifier: SecretString,
        redirect_uri: String,
    },
    /// One poll of a device authorization.
    DeviceCode { device_code: SecretString },
    /// An existing refresh token, adopted.
    RefreshToken { refresh_token: SecretString },
}

/// A completed sign-in: the first grant, and who signed in when the
/// provider said (ID token or userinfo).
#[derive(Debug)]
pub struct SignIn {
    pub grant: Grant,
    pub user: Option<regent_proto::status::SignedInUser>,
}

/// What one exchange gave.
#[derive(Debug)]
pub enum SignInOutcome {
    SignedIn(SignIn),
    /// The device sign-in is not approved yet; `slow_down` when the server
    /// asked for a longer interval (RFC 8628 §3.5: five seconds more).
    Pending {
        slow_down: bool,
    },
}

/// A profile's user sign-in (`regent login`): the grants a person's
/// authorization gives, next to the device grants of [`UpstreamProfile`].
pub trait UserSignIn: Send + Sync {
    /// Where the browser goes.
    fn browser(&self) -> BoxFuture<'_, Result<BrowserSignIn, Error>>;

    /// Starts a device authorization.
    fn device<'a>(
        &'a self,
        client_secret: Option<&'a SecretString>,
    ) -> BoxFuture<'a, Result<DeviceSignIn, Error>>;

    /// Exchanges a code, polls a device code once, or proves a refresh token.
    fn exchange<'a>(
        &'a self,
        grant: &'a SignInGrant,
        client_secret: Option<&'a SecretString>,
    ) -> BoxFuture<'a, Result<SignInOutcome, Error>>;

    /// Revokes a refresh token (RFC 7009); `false` when the server offers no
    /// revocation endpoint.
    fn revoke<'a>(
        &'a self,
        refresh_token: &'a SecretString,
        client_secret: Option<&'a SecretString>,
    ) -> BoxFuture<'a, Result<bool, Error>>;
}

/// One license-server profile: enroll a slot, renew its access token.
///
/// Every failure is an [`Error`] with a code from the one table (see the
/// module documentation of [`crate::upstream`]).
pub trait UpstreamProfile: Debug + Send + Sync {
    /// The profile's name in the configuration and the status document.
    fn profile(&self) -> &'static str;

    /// The server as logs and status name it (host and port).
    fn server(&self) -> String;

    /// How a slot enrolls with this profile.
    fn enroll_kind(&self) -> EnrollKind;

    /// Whether each renewal may mint one more live token that counts against
    /// `max_active_tokens` (OAuth2 multi-token servers).
    fn counts_tokens(&self) -> bool {
        false
    }

    /// Enrolls with `secret` (a registration token or a client secret);
    /// `identity` is the device's, sent with a redemption.
    fn enroll<'a>(
        &'a self,
        secret: &'a SecretString,
        identity: Option<&'a DeviceIdentity>,
    ) -> BoxFuture<'a, Result<Enrollment, Error>>;

    /// The profile's user sign-in, when it has one.
    fn user_sign_in(&self) -> Option<&dyn UserSignIn> {
        None
    }

    /// Renews with what the slot holds. A profile may drop a secret the
    /// server refused from `held` (the caller stores what is left) and
    /// returns a grant whose `refresh_token`, when set, replaces the held one.
    fn renew<'a>(&'a self, held: &'a mut Held) -> BoxFuture<'a, Result<Grant, Error>>;
}
