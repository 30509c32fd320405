//! The realm's OIDC token endpoint (Keycloak-style):
//! `POST /auth/realms/{realm}/protocol/openid-connect/token` with the
//! `refresh_token` grant (rotation and reuse detection) and the `password`
//! grant for admin bearer tokens.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;
use time::OffsetDateTime;

use crate::clock;
use crate::error::{ApiError, token_response};
use crate::extract::{ApiPath, FormParams};
use crate::secret;
use crate::state::{ADMIN_TOKEN_LIFESPAN, AppState, Store, Subject};

/// Scope reported on realm token responses.
const REALM_SCOPE: &str = "openid offline_access";

/// A realm token pair as Keycloak answers it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct RealmTokens {
    access_token: String,
    expires_in: u64,
    refresh_expires_in: u64,
    refresh_token: String,
    token_type: &'static str,
    scope: &'static str,
}

impl RealmTokens {
    pub(crate) fn new(
        access_token: String,
        access_lifespan: Duration,
        refresh_token: String,
        refresh_lifespan: Duration,
    ) -> Self {
        Self {
            access_token,
            expires_in: access_lifespan.as_secs(),
            refresh_expires_in: refresh_lifespan.as_secs(),
            refresh_token,
            token_type: "Bearer",
            scope: REALM_SCOPE,
        }
    }
}

fn token_not_active() -> ApiError {
    ApiError::invalid_grant("Token is not active")
}

fn session_not_active() -> ApiError {
    ApiError::invalid_grant("Session not active")
}

/// `POST /auth/realms/{realm}/protocol/openid-connect/token`
pub(crate) async fn token(
    State(app): State<AppState>,
    ApiPath(realm): ApiPath<String>,
    form: FormParams,
) -> Result<Response, ApiError> {
    if realm != app.realm {
        return Err(ApiError::not_found(format!(
            "realm '{realm}' does not exist; this server's realm is '{}'",
            app.realm
        )));
    }
    let grant = form.require("grant_type")?;
    match form.get("client_id")? {
        Some(id) if id == app.client_id => {}
        Some(id) => {
            return Err(ApiError::invalid_client(format!(
                "unknown client_id '{id}'; this realm's client is '{}'",
                app.client_id
            )));
        }
        None => {
            return Err(ApiError::invalid_client(format!(
                "missing client_id; this realm's client is '{}'",
                app.client_id
            )));
        }
    }
    let now = clock::now();
    match grant {
        "refresh_token" => {
            let presented = form.require("refresh_token")?;
            let tokens = app.store().refresh_realm(presented, now)?;
            app.counters().note_refresh();
            Ok(token_response(StatusCode::OK, tokens))
        }
        "password" => {
            let username = form.require("username")?;
            let password = form.require("password")?;
            let tokens = app.store().admin_login(username, password, now)?;
            Ok(token_response(StatusCode::OK, tokens))
        }
        other => Err(ApiError::unsupported_grant_type(
            other,
            "refresh_token, password",
        )),
    }
}

impl Store {
    /// Refreshes a realm session (Keycloak semantics):
    /// unknown or idle-expired token → "Token is not active"; killed session or
    /// deleted auth token → "Session not active"; a superseded (already
    /// rotated) token → "Maximum allowed refresh token reuse exceeded", and the
    /// session dies with it.
    pub(crate) fn refresh_realm(
        &mut self,
        presented: &str,
        now: OffsetDateTime,
    ) -> Result<RealmTokens, ApiError> {
        let (session_id, presented_secret) =
            presented.split_once('.').ok_or_else(token_not_active)?;
        let settings = self.realm;
        let session = self
            .sessions
            .get_mut(session_id)
            .ok_or_else(token_not_active)?;
        if session.refresh_expires_at <= now {
            return Err(token_not_active());
        }
        if !session.active {
            return Err(session_not_active());
        }
        if let Subject::Device { auth_token_id } = &session.subject
            && !self.auth_tokens.contains_key(auth_token_id)
        {
            session.active = false;
            return Err(session_not_active());
        }
        if !secret::ct_eq(presented_secret, &session.refresh_secret) {
            session.active = false;
            return Err(ApiError::invalid_grant(
                "Maximum allowed refresh token reuse exceeded",
            ));
        }
        if settings.rotate {
            session.refresh_secret = secret::token();
        }
        session.refresh_expires_at = clock::after(now, settings.refresh_lifespan);
        let refresh_token = format!("{session_id}.{}", session.refresh_secret);
        let subject = session.subject.clone();
        let lifespan = match &subject {
            Subject::Device { auth_token_id } => {
                if let Some(auth) = self.auth_tokens.get_mut(auth_token_id) {
                    auth.last_refresh = Some(now);
                }
                settings.access_lifespan
            }
            Subject::Admin => ADMIN_TOKEN_LIFESPAN,
        };
        let access_token = self.mint_bearer(subject, lifespan, now);
        Ok(RealmTokens::new(
            access_token,
            lifespan,
            refresh_token,
            settings.refresh_lifespan,
        ))
    }

    /// Checks the admin credentials (constant time) and opens an admin session.
    pub(crate) fn admin_login(
        &mut self,
        username: &str,
        password: &str,
        now: OffsetDateTime,
    ) -> Result<RealmTokens, ApiError> {
        self.check_admin_password(username, password)?;
        let (_, refresh_token) = self.open_session(Subject::Admin, now);
        let access_token = self.mint_bearer(Subject::Admin, ADMIN_TOKEN_LIFESPAN, now);
        Ok(RealmTokens::new(
            access_token,
            ADMIN_TOKEN_LIFESPAN,
            refresh_token,
            self.realm.refresh_lifespan,
        ))
    }

    /// 401 `invalid_grant` "Invalid user credentials" unless both match.
    pub(crate) fn check_admin_password(
        &self,
        username: &str,
        password: &str,
    ) -> Result<(), ApiError> {
        let user_ok = secret::ct_eq(username, &self.admin_username);
        let password_ok = secret::ct_eq(password, &self.admin_password);
        if user_ok && password_ok {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_grant",
                "Invalid user credentials",
            ))
        }
    }
}
