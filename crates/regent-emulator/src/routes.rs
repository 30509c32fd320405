//! The route table and the gate middleware every request passes:
//! emulator-key check, faults, rate limit, then the outcome count.

use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};

use crate::error::{ApiError, Outcome};
use crate::faults::{self, FaultAction};
use crate::net::Peer;
use crate::route::{REALM_TOKEN_PATH, Route};
use crate::state::{App, AppState};
use crate::{control, oauth2, oauth2_admin, oidc, sentinel, sentinel_admin, signin};

const INTROSPECT_PATH: &str = "/_emulator/introspect";
/// Header carrying the emulator admin key.
pub(crate) const EMULATOR_KEY_HEADER: &str = "x-emulator-key";

/// Builds the whole HTTP surface.
pub(crate) fn router(app: AppState) -> Router {
    Router::new()
        .route(
            "/token/api/v5/idpConfigurations",
            get(sentinel::idp_configurations),
        )
        .route(
            "/token/api/v5/authTokens",
            post(sentinel::redeem).get(sentinel_admin::list_auth_tokens),
        )
        .route(
            "/token/api/v5/authTokens/{id}",
            get(sentinel_admin::get_auth_token).delete(sentinel_admin::delete_auth_token),
        )
        .route(
            "/token/api/v5/registrationTokens",
            post(sentinel_admin::create_registration_token)
                .get(sentinel_admin::list_registration_tokens),
        )
        .route(
            "/token/api/v5/registrationTokens/{id}",
            get(sentinel_admin::get_registration_token)
                .patch(sentinel_admin::patch_registration_token)
                .delete(sentinel_admin::delete_registration_token),
        )
        .route(REALM_TOKEN_PATH, post(oidc::token))
        .route(
            "/.well-known/openid-configuration",
            get(oauth2::openid_configuration),
        )
        .route("/oauth/token", post(oauth2::token))
        .route(
            "/oauth/authorize",
            get(signin::authorize_page).post(signin::authorize_submit),
        )
        .route(
            "/oauth/device_authorization",
            post(signin::device_authorization),
        )
        .route(
            "/oauth/device",
            get(signin::device_page).post(signin::device_submit),
        )
        .route("/oauth/revoke", post(signin::revoke))
        .route(
            "/oauth/userinfo",
            get(signin::userinfo).post(signin::userinfo),
        )
        .route(
            "/oauth/clients",
            post(oauth2_admin::create_clients).get(oauth2_admin::list_clients),
        )
        .route("/oauth/clients/{client_id}", get(oauth2_admin::get_client))
        .route(
            "/oauth/customers/{customer_id}",
            get(oauth2_admin::get_customer)
                .put(oauth2_admin::put_customer)
                .post(oauth2_admin::put_customer),
        )
        .route(
            "/oauth/customers/{customer_id}/clients/{client_id}/multitokens",
            get(oauth2_admin::list_multitokens),
        )
        .route(
            "/oauth/customers/{customer_id}/clients/{client_id}/revoketokens",
            put(oauth2_admin::revoke_tokens),
        )
        .route("/_emulator/counters", get(control::counters))
        .route("/_emulator/counters/reset", post(control::reset_counters))
        .route(
            "/_emulator/faults",
            get(control::get_faults)
                .put(control::put_faults)
                .delete(control::delete_faults),
        )
        .route(
            "/_emulator/realm",
            get(control::get_realm).put(control::put_realm),
        )
        .route(
            "/_emulator/rate-limit",
            get(control::get_rate_limit)
                .put(control::put_rate_limit)
                .delete(control::delete_rate_limit),
        )
        .route(INTROSPECT_PATH, get(control::introspect))
        .route(
            "/_emulator/users",
            get(signin::list_users).post(signin::add_user),
        )
        .route("/_emulator/users/{username}", delete(signin::delete_user))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(app.clone(), gate))
        .layer(DefaultBodyLimit::max(crate::BODY_LIMIT))
        .with_state(app)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request",
        format!("method {method} is not allowed on {}", uri.path()),
    )
}

/// Runs in front of every route.
async fn gate(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if path == "/_emulator" || path.starts_with("/_emulator/") {
        let key_ok = request
            .headers()
            .get(EMULATOR_KEY_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|key| app.is_admin_key(key));
        if path != INTROSPECT_PATH && !key_ok {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "access_denied",
                "emulator controls need the header 'X-Emulator-Key: <admin key>' (printed \
                 when the emulator starts)",
            )
            .into_response();
        }
        return next.run(request).await;
    }
    let matched = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let route = Route::classify(request.method(), matched);
    let peer = request
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|ConnectInfo(peer)| peer.clone());
    let response = gated(&app, route, peer, request, next).await;
    let outcome = match response.extensions().get::<Outcome>() {
        Some(Outcome(outcome)) => outcome,
        None if response.status().is_success() => "ok",
        None => "error",
    };
    app.counters().record(route, outcome);
    response
}

/// Faults (latency, drop, status, failure) and then the rate limit.
async fn gated(
    app: &App,
    route: Route,
    peer: Option<Peer>,
    request: Request,
    next: Next,
) -> Response {
    if route.faultable() {
        let plan = app.faults().plan(route);
        if !plan.latency.is_zero() {
            tokio::time::sleep(plan.latency).await;
        }
        match plan.action {
            FaultAction::Pass => {}
            FaultAction::Drop => {
                if let Some(peer) = &peer {
                    peer.drop_connection();
                }
                return ApiError::server_error("injected fault: connection dropped")
                    .with_outcome("dropped")
                    .into_response();
            }
            FaultAction::Status(status, error) => {
                return faults::injected(status, error).into_response();
            }
            FaultAction::Fail => {
                return ApiError::server_error("injected fault: random failure")
                    .with_outcome("fault")
                    .into_response();
            }
        }
    }
    if route.rate_limited()
        && let Some(peer) = &peer
    {
        let verdict = app.limiter().check(peer.addr.ip(), Instant::now());
        if let Err(retry_after) = verdict {
            return ApiError::rate_limited(retry_after).into_response();
        }
    }
    next.run(request).await
}
