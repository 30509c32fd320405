//! Route names, as counters and fault settings name them: a leaf that the
//! counters, the faults and the router all depend on.

use axum::http::Method;

/// The Keycloak-style realm token endpoint.
pub(crate) const REALM_TOKEN_PATH: &str = "/auth/realms/{realm}/protocol/openid-connect/token";

/// A named group of routes, as counters and fault settings name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    IdpConfigurations,
    Redeem,
    AuthTokensAdmin,
    RegistrationTokensAdmin,
    RealmToken,
    OpenidConfiguration,
    OauthToken,
    OauthClientsAdmin,
    OauthCustomersAdmin,
    Authorize,
    DeviceAuthorization,
    DeviceVerification,
    Revoke,
    Userinfo,
    Emulator,
    Unmatched,
}

impl Route {
    const ALL: [Route; 16] = [
        Route::IdpConfigurations,
        Route::Redeem,
        Route::AuthTokensAdmin,
        Route::RegistrationTokensAdmin,
        Route::RealmToken,
        Route::OpenidConfiguration,
        Route::OauthToken,
        Route::OauthClientsAdmin,
        Route::OauthCustomersAdmin,
        Route::Authorize,
        Route::DeviceAuthorization,
        Route::DeviceVerification,
        Route::Revoke,
        Route::Userinfo,
        Route::Emulator,
        Route::Unmatched,
    ];

    /// Routes faults apply to when `PUT /_emulator/faults` names none.
    pub(crate) const DEFAULT_FAULT_ROUTES: [Route; 4] = [
        Route::IdpConfigurations,
        Route::Redeem,
        Route::RealmToken,
        Route::OauthToken,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Route::IdpConfigurations => "idp_configurations",
            Route::Redeem => "redeem",
            Route::AuthTokensAdmin => "auth_tokens_admin",
            Route::RegistrationTokensAdmin => "registration_tokens_admin",
            Route::RealmToken => "realm_token",
            Route::OpenidConfiguration => "openid_configuration",
            Route::OauthToken => "oauth_token",
            Route::OauthClientsAdmin => "oauth_clients_admin",
            Route::OauthCustomersAdmin => "oauth_customers_admin",
            Route::Authorize => "authorize",
            Route::DeviceAuthorization => "device_authorization",
            Route::DeviceVerification => "device_verification",
            Route::Revoke => "revoke",
            Route::Userinfo => "userinfo",
            Route::Emulator => "emulator",
            Route::Unmatched => "unmatched",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Route> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }

    /// Client-facing routes: the only ones faults can touch.
    pub(crate) fn faultable(self) -> bool {
        matches!(
            self,
            Route::IdpConfigurations
                | Route::Redeem
                | Route::RealmToken
                | Route::OpenidConfiguration
                | Route::OauthToken
                | Route::Authorize
                | Route::DeviceAuthorization
                | Route::DeviceVerification
                | Route::Revoke
                | Route::Userinfo
        )
    }

    pub(crate) fn faultable_names() -> Vec<&'static str> {
        Self::ALL
            .into_iter()
            .filter(|r| r.faultable())
            .map(Route::name)
            .collect()
    }

    /// Token-issuing routes: the only ones the rate limit counts.
    pub(crate) fn rate_limited(self) -> bool {
        matches!(self, Route::Redeem | Route::RealmToken | Route::OauthToken)
    }

    pub(crate) fn classify(method: &Method, matched: Option<&str>) -> Route {
        let Some(path) = matched else {
            return Route::Unmatched;
        };
        match path {
            "/token/api/v5/idpConfigurations" => Route::IdpConfigurations,
            "/token/api/v5/authTokens" if method == Method::POST => Route::Redeem,
            REALM_TOKEN_PATH => Route::RealmToken,
            "/.well-known/openid-configuration" => Route::OpenidConfiguration,
            "/oauth/token" => Route::OauthToken,
            "/oauth/authorize" => Route::Authorize,
            "/oauth/device_authorization" => Route::DeviceAuthorization,
            "/oauth/device" => Route::DeviceVerification,
            "/oauth/revoke" => Route::Revoke,
            "/oauth/userinfo" => Route::Userinfo,
            p if p.starts_with("/token/api/v5/authTokens") => Route::AuthTokensAdmin,
            p if p.starts_with("/token/api/v5/registrationTokens") => {
                Route::RegistrationTokensAdmin
            }
            p if p.starts_with("/oauth/clients") => Route::OauthClientsAdmin,
            p if p.starts_with("/oauth/customers") => Route::OauthCustomersAdmin,
            p if p.starts_with("/_emulator") => Route::Emulator,
            _ => Route::Unmatched,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_classification() {
        for route in Route::ALL {
            assert_eq!(Route::from_name(route.name()), Some(route));
        }
        assert_eq!(
            Route::classify(&Method::POST, Some("/token/api/v5/authTokens")),
            Route::Redeem
        );
        assert_eq!(
            Route::classify(&Method::GET, Some("/token/api/v5/authTokens")),
            Route::AuthTokensAdmin
        );
        assert_eq!(
            Route::classify(&Method::POST, Some(REALM_TOKEN_PATH)),
            Route::RealmToken
        );
        assert_eq!(Route::classify(&Method::GET, None), Route::Unmatched);
        assert!(Route::DEFAULT_FAULT_ROUTES.iter().all(|r| r.faultable()));
        assert!(!Route::RegistrationTokensAdmin.faultable());
    }
}
