//! RFC 6749 §5.2 error bodies (`{"error","error_description"}`) for every
//! refusal the emulator sends, and the outcome label counters record.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The outcome label a response carries to the counters (`ok`, `replay`, an
/// error code, `fault`, …). Stored as a response extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Outcome(pub &'static str);

/// A refusal: HTTP status, stable error code and a description written for the
/// person who has to act on it.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {description}")]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub description: String,
    retry_after: Option<u64>,
    challenge: Option<&'static str>,
    outcome: Option<&'static str>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    error_description: &'a str,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        description: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            description: description.into(),
            retry_after: None,
            challenge: None,
            outcome: None,
        }
    }

    /// Adds a `Retry-After` header (seconds, at least 1).
    pub(crate) fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }

    /// Records a different outcome label than the error code.
    pub(crate) fn with_outcome(mut self, outcome: &'static str) -> Self {
        self.outcome = Some(outcome);
        self
    }

    pub(crate) fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    pub(crate) fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
    }

    pub(crate) fn invalid_client(description: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", description)
    }

    pub(crate) fn unauthorized_client(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unauthorized_client", description)
    }

    pub(crate) fn unsupported_grant_type(grant: &str, supported: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            format!("grant_type '{grant}' is not supported here; use one of: {supported}"),
        )
    }

    pub(crate) fn invalid_scope(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_scope", description)
    }

    pub(crate) fn not_found(description: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", description)
    }

    /// 401 for a missing, unknown or expired bearer token (RFC 6750 §3.1).
    pub(crate) fn invalid_token(description: impl Into<String>) -> Self {
        let mut err = Self::new(StatusCode::UNAUTHORIZED, "invalid_token", description);
        err.challenge = Some("Bearer error=\"invalid_token\"");
        err
    }

    /// 403 for a valid bearer token that lacks admin rights (RFC 6750 §3.1).
    pub(crate) fn insufficient_scope(description: impl Into<String>) -> Self {
        let mut err = Self::new(StatusCode::FORBIDDEN, "insufficient_scope", description);
        err.challenge = Some("Bearer error=\"insufficient_scope\"");
        err
    }

    pub(crate) fn rate_limited(retry_after: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "too many token requests from this address; retry after {} s",
                retry_after.max(1)
            ),
        )
        .with_retry_after(retry_after)
    }

    pub(crate) fn server_error(description: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            description,
        )
    }

    /// Maps an axum extractor rejection (malformed body, wrong content type,
    /// body over the limit, bad path or query) onto a JSON error.
    pub(crate) fn from_rejection(status: StatusCode, text: String) -> Self {
        match status {
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
                Self::invalid_request(format!("malformed request: {text}"))
            }
            StatusCode::PAYLOAD_TOO_LARGE => Self::new(
                status,
                "invalid_request",
                format!(
                    "request body is larger than the {} byte limit",
                    crate::BODY_LIMIT
                ),
            ),
            s if s.is_server_error() => Self::server_error(text),
            s => Self::new(s, "invalid_request", text),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody {
            error: self.code,
            error_description: &self.description,
        });
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(challenge) = self.challenge {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
            .extensions_mut()
            .insert(Outcome(self.outcome.unwrap_or(self.code)));
        response
    }
}

/// A successful token response: JSON plus the RFC 6749 §5.1 cache headers.
pub(crate) fn token_response<T: Serialize>(status: StatusCode, body: T) -> Response {
    let mut response = (status, Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_become_rfc6749_codes() {
        let e = ApiError::from_rejection(StatusCode::UNPROCESSABLE_ENTITY, "missing field".into());
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "invalid_request")
        );
        let e = ApiError::from_rejection(StatusCode::PAYLOAD_TOO_LARGE, String::new());
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(e.description.contains("65536"));
        let e = ApiError::from_rejection(StatusCode::UNSUPPORTED_MEDIA_TYPE, "json".into());
        assert_eq!(
            (e.status, e.code),
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "invalid_request")
        );
    }

    #[test]
    fn responses_carry_headers_and_outcome() {
        let r = ApiError::rate_limited(0).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        assert_eq!(
            r.extensions().get::<Outcome>(),
            Some(&Outcome("rate_limited"))
        );
        let r = ApiError::server_error("x")
            .with_outcome("fault")
            .into_response();
        assert_eq!(r.extensions().get::<Outcome>(), Some(&Outcome("fault")));
    }
}
