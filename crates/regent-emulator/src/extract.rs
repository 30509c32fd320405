//! Request extractors whose rejections are RFC 6749 JSON errors, form-parameter
//! access with RFC 6749 §3.2 rules, `Authorization` parsing and the admin guard.

use axum::Form;
use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use serde::de::DeserializeOwned;

use crate::clock;
use crate::error::ApiError;
use crate::state::AppState;

/// `Json<T>` with JSON errors.
#[derive(Debug)]
pub(crate) struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::from_rejection(
                rejection.status(),
                rejection.body_text(),
            )),
        }
    }
}

/// A form body (`application/x-www-form-urlencoded`) kept as ordered pairs, so
/// that repeated parameters can be refused.
#[derive(Debug)]
pub(crate) struct FormParams(Vec<(String, String)>);

impl<S> FromRequest<S> for FormParams
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Form::<Vec<(String, String)>>::from_request(req, state).await {
            Ok(Form(pairs)) => Ok(Self(pairs)),
            Err(rejection) => Err(ApiError::from_rejection(
                rejection.status(),
                rejection.body_text(),
            )),
        }
    }
}

impl FormParams {
    /// The value of `name`; an empty value counts as absent and a repeated
    /// parameter is an error (RFC 6749 §3.2).
    pub(crate) fn get(&self, name: &str) -> Result<Option<&str>, ApiError> {
        let mut values = self.0.iter().filter(|(key, _)| key == name);
        let first = values.next();
        if values.next().is_some() {
            return Err(ApiError::invalid_request(format!(
                "form parameter {name} appears more than once"
            )));
        }
        Ok(first
            .map(|(_, value)| value.as_str())
            .filter(|v| !v.is_empty()))
    }

    /// Like [`FormParams::get`] but the parameter must be present.
    pub(crate) fn require(&self, name: &str) -> Result<&str, ApiError> {
        self.get(name)?
            .ok_or_else(|| ApiError::invalid_request(format!("missing form parameter: {name}")))
    }
}

/// `Query<T>` with JSON errors.
#[derive(Debug)]
pub(crate) struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::from_rejection(
                rejection.status(),
                rejection.body_text(),
            )),
        }
    }
}

/// `Path<T>` with JSON errors.
#[derive(Debug)]
pub(crate) struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::from_rejection(
                rejection.status(),
                rejection.body_text(),
            )),
        }
    }
}

/// The credentials after `Authorization: <scheme> `, if the scheme matches
/// (case-insensitively) and the header is valid text.
pub(crate) fn authorization<'h>(headers: &'h HeaderMap, scheme: &str) -> Option<&'h str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (given, rest) = value.trim().split_once(' ')?;
    given
        .eq_ignore_ascii_case(scheme)
        .then_some(rest.trim())
        .filter(|credentials| !credentials.is_empty())
}

/// Proof that the request carries an active admin bearer token.
#[derive(Debug)]
pub(crate) struct AdminAuth;

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(token) = authorization(&parts.headers, "Bearer") else {
            return Err(ApiError::invalid_token(
                "missing 'Authorization: Bearer <admin access token>'; get one from the realm \
                 token endpoint with grant_type=password and the admin credentials",
            ));
        };
        app.store().check_admin(token, clock::now())?;
        Ok(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn authorization_scheme_is_case_insensitive_and_trimmed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(authorization(&headers, "Bearer"), Some("abc"));
        assert_eq!(authorization(&headers, "Basic"), None);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(authorization(&headers, "Bearer"), None);
    }

    #[test]
    fn repeated_and_empty_form_parameters() {
        let form = FormParams(vec![
            ("a".into(), "1".into()),
            ("a".into(), "2".into()),
            ("b".into(), String::new()),
        ]);
        assert!(form.get("a").is_err());
        assert_eq!(form.get("b").unwrap(), None);
        assert_eq!(form.require("c").unwrap_err().code, "invalid_request");
    }
}
