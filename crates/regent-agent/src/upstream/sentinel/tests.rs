use super::outcome::{parse_redemption, redemption_refused, refresh_refused};
use std::time::Duration;

use reqwest::header::RETRY_AFTER;

use super::*;
use crate::secret::secret;
use crate::upstream::reply::tests::json_reply;

fn identity() -> DeviceIdentity {
    DeviceIdentity {
        identifier: "dev-1/0".into(),
        fqdn: "host.example".into(),
        mac_address: "aa:bb:cc:dd:ee:ff".into(),
        system_user_name: "alice".into(),
        ref_id1: Some("r1".into()),
        ref_id2: None,
    }
}

fn idp() -> IdpConfig {
    IdpConfig {
        realm: "regent".into(),
        client_id: "regent-agent".into(),
        token_url: Url::parse("http://127.0.0.1/realms/regent/protocol/openid-connect/token")
            .unwrap(),
    }
}

#[test]
fn wire_identity_uses_sentinel_field_names() {
    let id = identity();
    let body = serde_json::to_value(RedemptionRequest {
        auth_token: WireIdentity::from(&id),
    })
    .unwrap();
    assert_eq!(
        body,
        serde_json::json!({"authToken": {
            "identifier": "dev-1/0", "fqdn": "host.example", "macAddress": "aa:bb:cc:dd:ee:ff",
            "systemUserName": "alice", "refId1": "r1"
        }})
    );
}

#[test]
fn registration_token_goes_raw_and_sensitive() {
    let h = registration_authorization(&secret(" abc.DEF-123 \n".into())).unwrap();
    assert_eq!(h.to_str().unwrap(), "Basic abc.DEF-123");
    assert!(h.is_sensitive());
    for bad in ["", "  ", "two words", "line\nbreak", "nön-ascii"] {
        let e = registration_authorization(&secret(bad.into())).unwrap_err();
        assert_eq!(e.code, ErrorCode::RegistrationTokenInvalid, "{bad:?}");
        assert!(bad.trim().is_empty() || !e.message.contains(bad.trim()));
    }
}

#[test]
fn redemption_refusals_map_to_their_codes() {
    let token = secret("reg-token-value".into());
    for (status, error, code, needle) in [
        (
            401,
            "invalid_registration_token",
            ErrorCode::RegistrationTokenInvalid,
            "does not recognise it",
        ),
        (
            403,
            "registration_token_expired",
            ErrorCode::RegistrationTokenExpired,
            "it has expired",
        ),
        (
            403,
            "registration_token_exhausted",
            ErrorCode::RegistrationTokenExhausted,
            "no counts left",
        ),
        (
            403,
            "registration_token_disabled",
            ErrorCode::RegistrationTokenDisabled,
            "it is disabled",
        ),
        (
            401,
            "",
            ErrorCode::RegistrationTokenInvalid,
            "does not recognise it",
        ),
        (429, "too_many", ErrorCode::RateLimited, "rate-limiting"),
        (500, "server_error", ErrorCode::ServerError, "temporary"),
        (403, "forbidden", ErrorCode::ServerError, "refused"),
    ] {
        let body = if error.is_empty() {
            String::new()
        } else {
            format!(r#"{{"error":"{error}","error_description":"desc for reg-token-value"}}"#)
        };
        let e = redemption_refused(&json_reply(status, &body), &token);
        assert_eq!(e.code, code, "{status} {error}");
        assert!(e.message.contains(needle), "{}", e.message);
        assert!(!e.message.contains("reg-token-value"), "{}", e.message);
        if !error.is_empty() {
            assert!(e.message.contains("desc for [redacted]"), "{}", e.message);
        }
    }
    let e = redemption_refused(
        &json_reply(
            403,
            r#"{"error":"registration_token_exhausted","error_description":"count 5 used 5"}"#,
        ),
        &token,
    );
    assert_eq!(
        e.message,
        "registration token refused: it has no counts left (server: registration_token_exhausted: count 5 used 5); ask your administrator to raise its count or issue a new one"
    );
    assert!(!e.is_retryable());
}

#[test]
fn refresh_refusals_map_to_their_codes() {
    let rt = secret("refresh-secret".into());
    let e = refresh_refused(
        &json_reply(
            400,
            r#"{"error":"invalid_grant","error_description":"Session not active"}"#,
        ),
        &idp(),
        &rt,
    );
    assert_eq!(e.code, ErrorCode::Revoked);
    assert!(
        e.message
            .contains("ended this device's session (invalid_grant: Session not active)")
    );
    let e = refresh_refused(
        &json_reply(401, r#"{"error":"invalid_client"}"#),
        &idp(),
        &rt,
    );
    assert_eq!(e.code, ErrorCode::Config);
    assert!(e.message.contains("\"regent-agent\""));
    let mut r = json_reply(503, "{}");
    r.headers
        .insert(RETRY_AFTER, HeaderValue::from_static("12"));
    let e = refresh_refused(&r, &idp(), &rt);
    assert_eq!(e.code, ErrorCode::ServerError);
    assert_eq!(e.retry_after, Some(Duration::from_secs(12)));
}

#[test]
fn parses_redemptions_and_refuses_broken_ones() {
    let good = r#"{"authToken":{"id":"at-1","identifier":"dev-1/0","token":{
        "access_token":"A","refresh_token":"R","expires_in":300,"refresh_expires_in":0,"token_type":"Bearer"}}}"#;
    let r = parse_redemption(&json_reply(201, good), &identity()).unwrap();
    assert_eq!(r.auth_token_id, "at-1");
    assert_eq!(r.grant.access_token.expose_secret(), "A");
    assert_eq!(r.grant.refresh_token.as_ref().unwrap().expose_secret(), "R");
    assert_eq!(r.grant.lifetime(), Duration::from_secs(300));

    let numeric = r#"{"authToken":{"id":77,"token":{"access_token":"A","refresh_token":"R","expires_in":"60"}}}"#;
    assert_eq!(
        parse_redemption(&json_reply(200, numeric), &identity())
            .unwrap()
            .auth_token_id,
        "77"
    );

    for (body, needle) in [
        (r#"{}"#, "without an authToken"),
        (r#"{"authToken":[]}"#, "authToken an array"),
        (r#"{"authToken":{"token":{}}}"#, "without authToken.id"),
        (
            r#"{"authToken":{"id":"","token":{}}}"#,
            "unusable authToken.id",
        ),
        (
            r#"{"authToken":{"id":true,"token":{}}}"#,
            "authToken.id a boolean",
        ),
        (r#"{"authToken":{"id":"x"}}"#, "without authToken.token"),
        (
            r#"{"authToken":{"id":"x","token":"A"}}"#,
            "authToken.token a string",
        ),
        (
            r#"{"authToken":{"id":"x","token":{"access_token":"A","expires_in":60}}}"#,
            "without a refresh_token",
        ),
        (
            r#"{"authToken":{"id":"x","token":{"refresh_token":"R","expires_in":60}}}"#,
            "without an access_token",
        ),
        (
            r#"{"authToken":{"id":"x","token":{"access_token":"A","refresh_token":"R","expires_in":-1}}}"#,
            "expires_in",
        ),
        ("not json", "not valid JSON"),
    ] {
        let e = parse_redemption(&json_reply(201, body), &identity()).unwrap_err();
        assert_eq!(e.code, ErrorCode::ServerError, "{body}");
        assert!(e.message.contains(needle), "{body}: {}", e.message);
    }
}

/// Regression (fuzzing, upstream_reply): an auth-token id with a bidi
/// override (U+202E) passed the control-character check and reached
/// status output and terminals, where it can reorder text.
#[test]
fn auth_token_ids_with_bidi_controls_are_refused() {
    for id in ["at\u{202e}1", "at\u{200b}1", "at\u{2066}1", "at\u{feff}"] {
        let body = serde_json::json!({"authToken": {"id": id, "token": {
            "access_token": "A", "refresh_token": "R", "expires_in": 60}}})
        .to_string();
        let e = parse_redemption(&json_reply(201, &body), &identity()).unwrap_err();
        assert_eq!(e.code, ErrorCode::ServerError, "{id:?}");
        assert!(e.message.contains("unusable authToken.id"), "{}", e.message);
    }
}
