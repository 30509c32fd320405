//! What a Sentinel server's answers mean: a redemption, a refresh or the
//! discovery document parsed, or a refusal mapped to its code — without the
//! HTTP call, so the fuzz target (`crate::fuzzing::upstream`) runs exactly
//! the code the agent runs.

use super::*;

/// The outcome of a redemption answer: the auth token, or the refusal. Nothing
/// the server echoes of `registration_token` shows in an error.
pub(crate) fn redemption_outcome(
    reply: &Reply,
    identity: &DeviceIdentity,
    registration_token: &SecretString,
) -> Result<Redemption, Error> {
    let redact = Redact::new(&[registration_token]);
    if !reply.status.is_success() {
        return Err(redact.error(redemption_refused(reply, registration_token)));
    }
    parse_redemption_redacted(reply, identity, &redact).map_err(|e| redact.error(e))
}

/// The outcome of a refresh answer: the grant, or the refusal (`REVOKED`…).
pub(crate) fn refresh_outcome(
    reply: &Reply,
    idp: &IdpConfig,
    refresh_token: &SecretString,
) -> Result<Grant, Error> {
    let redact = Redact::new(&[refresh_token]);
    if !reply.status.is_success() {
        return Err(redact.error(refresh_refused(reply, idp, refresh_token)));
    }
    json_object_redacted(reply, REFRESH, &redact)
        .and_then(|mut obj| parse_grant(&mut obj, reply.received_at, &reply.server))
        .map_err(|e| redact.error(e))
}

/// The outcome of an `idpConfigurations` answer: where refresh tokens are
/// redeemed and as whom.
pub(crate) fn discovery_outcome(reply: &Reply) -> Result<IdpConfig, Error> {
    if !reply.status.is_success() {
        let says = ServerSays::from_reply(reply, &[]);
        return Err(unexpected_status(reply, &says, DISCOVERY));
    }
    let obj = json_object(reply, DISCOVERY)?;
    let server = &reply.server;
    let text = |key: &str, max: usize| -> Result<String, Error> {
        match obj.get(key) {
            // Sent with every refresh and shown in messages: short, and no
            // control or bidi characters.
            Some(Value::String(s))
                if !s.trim().is_empty()
                    && s.len() <= max
                    && !s.chars().any(|c| c.is_control() || is_format_char(c)) =>
            {
                Ok(s.trim().to_owned())
            }
            Some(Value::String(_)) => Err(Error::new(
                ErrorCode::ServerError,
                format!(
                    "the license server at {server} answered {DISCOVERY} with an unusable {key} (empty, longer than {max} bytes, or with control characters); is the URL pointing at a Sentinel-style server?"
                ),
            )),
            other => Err(Error::new(
                ErrorCode::ServerError,
                format!(
                    "the license server at {server} answered {DISCOVERY} without a usable {key} (found {}); is the URL pointing at a Sentinel-style server?",
                    other.map_or("nothing", kind)
                ),
            )),
        }
    };
    let realm = text("realm", MAX_IDP_NAME)?;
    let client_id = text("clientId", MAX_IDP_NAME)?;
    let endpoint = text("tokenEndpoint", MAX_IDP_URL)?;
    let mut endpoint = Url::parse(&endpoint).map_err(|e| {
        Error::new(
            ErrorCode::ServerError,
            format!(
                "the license server at {server} named a tokenEndpoint that is not a URL ({e}): {}",
                sanitize(&endpoint, 200)
            ),
        )
    })?;
    check_url(&endpoint).map_err(|e| {
        Error::new(
            e.code,
            format!(
                "the license server at {server} names a token endpoint regent refuses: {}",
                e.message
            ),
        )
    })?;
    endpoint.set_query(None);
    endpoint.set_fragment(None);
    let token_url = join_path(
        &endpoint,
        &["realms", &realm, "protocol", "openid-connect", "token"],
    );
    tracing::debug!(server = %server, realm, token_server = %server_name(&token_url), "discovered the token endpoint");
    Ok(IdpConfig {
        realm,
        client_id,
        token_url,
    })
}

/// `Basic <registration token>`: Sentinel sends the raw value, not base64(user:pass).
pub(super) fn registration_authorization(token: &SecretString) -> Result<HeaderValue, Error> {
    let value = token.expose_secret().trim();
    if value.is_empty() {
        return Err(Error::new(
            ErrorCode::RegistrationTokenInvalid,
            "the registration token is empty; paste the token your administrator issued",
        ));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::new(
            ErrorCode::RegistrationTokenInvalid,
            "the registration token contains spaces, control or non-ASCII characters, so it cannot be what the administrator issued; copy it again",
        ));
    }
    let header = Zeroizing::new(format!("Basic {value}"));
    let mut header = HeaderValue::from_str(&header).map_err(|_| {
        Error::new(
            ErrorCode::RegistrationTokenInvalid,
            "the registration token cannot be sent in an HTTP header; copy it again",
        )
    })?;
    header.set_sensitive(true);
    Ok(header)
}

pub(super) fn redemption_refused(reply: &Reply, token: &SecretString) -> Error {
    let says = ServerSays::from_reply(reply, &[token]);
    let server = &reply.server;
    let (code, message) = if says.is("registration_token_expired") {
        (
            ErrorCode::RegistrationTokenExpired,
            format!(
                "registration token refused: it has expired (server: {says}); ask your administrator for a new one"
            ),
        )
    } else if says.is("registration_token_exhausted") {
        (
            ErrorCode::RegistrationTokenExhausted,
            format!(
                "registration token refused: it has no counts left (server: {says}); ask your administrator to raise its count or issue a new one"
            ),
        )
    } else if says.is("registration_token_disabled") {
        (
            ErrorCode::RegistrationTokenDisabled,
            format!(
                "registration token refused: it is disabled (server: {says}); ask your administrator to enable it or issue a new one"
            ),
        )
    } else if says.is("invalid_registration_token")
        || reply.status == reqwest::StatusCode::UNAUTHORIZED
    {
        (
            ErrorCode::RegistrationTokenInvalid,
            format!(
                "registration token refused: the license server at {server} does not recognise it (server: {says}); check that it was copied whole, or ask your administrator for a new one"
            ),
        )
    } else {
        return unexpected_status(reply, &says, REDEMPTION);
    };
    tracing::debug!(server = %server, status = reply.status.as_u16(), code = %code, "registration token refused");
    with_retry_after(Error::new(code, message), reply)
}

pub(super) fn refresh_refused(
    reply: &Reply,
    idp: &IdpConfig,
    refresh_token: &SecretString,
) -> Error {
    let says = ServerSays::from_reply(reply, &[refresh_token]);
    let server = &reply.server;
    if says.is("invalid_grant") {
        return with_retry_after(
            Error::new(
                ErrorCode::Revoked,
                format!(
                    "the license server ended this device's session ({says}); enroll again with a registration token"
                ),
            ),
            reply,
        );
    }
    if says.is("invalid_client") || says.is("unauthorized_client") {
        return Error::new(
            ErrorCode::Config,
            format!(
                "the token endpoint at {server} refuses client id {:?}, which the server's own idpConfigurations named ({says}); check the license server URL or ask the vendor",
                idp.client_id
            ),
        );
    }
    unexpected_status(reply, &says, REFRESH)
}

#[cfg(test)]
pub(super) fn parse_redemption(
    reply: &Reply,
    identity: &DeviceIdentity,
) -> Result<Redemption, Error> {
    parse_redemption_redacted(reply, identity, &Redact::default())
}

/// [`parse_redemption`], showing nothing of the answer without `redact` (the
/// registration token must not come back through an echoed field).
pub(super) fn parse_redemption_redacted(
    reply: &Reply,
    identity: &DeviceIdentity,
    redact: &Redact,
) -> Result<Redemption, Error> {
    let server = &reply.server;
    let bad = |problem: String| {
        Error::new(
            ErrorCode::ServerError,
            format!("the license server at {server} answered {REDEMPTION} {problem}"),
        )
    };
    let mut obj = json_object_redacted(reply, REDEMPTION, redact)?;
    let mut auth = match obj.remove("authToken") {
        Some(Value::Object(auth)) => auth,
        Some(other) => {
            return Err(bad(format!(
                "with authToken {} instead of an object",
                kind(&other)
            )));
        }
        None => return Err(bad("without an authToken".to_owned())),
    };
    let auth_token_id = match auth.get("id") {
        Some(Value::String(s))
            if !s.trim().is_empty()
                && s.len() <= MAX_AUTH_TOKEN_ID
                // Shown in status output and terminals: no control or bidi
                // characters (found by fuzzing: U+202E passed `is_control`).
                && !s.chars().any(|c| c.is_control() || is_format_char(c)) =>
        {
            s.trim().to_owned()
        }
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(_)) => {
            return Err(bad(
                "with an unusable authToken.id (empty, too long or with control characters)"
                    .to_owned(),
            ));
        }
        Some(other) => {
            return Err(bad(format!(
                "with authToken.id {} instead of a string",
                kind(other)
            )));
        }
        None => return Err(bad("without authToken.id".to_owned())),
    };
    match auth.get("identifier").and_then(Value::as_str) {
        Some(echoed) if echoed != identity.identifier => tracing::warn!(
            server = %server,
            sent = %crate::secret::short_hash(&identity.identifier),
            echoed = %crate::secret::short_hash(echoed),
            "the license server echoed another identifier for this redemption"
        ),
        _ => {}
    }
    let mut token = match auth.remove("token") {
        Some(Value::Object(token)) => token,
        Some(other) => {
            return Err(bad(format!(
                "with authToken.token {} instead of an object",
                kind(&other)
            )));
        }
        None => return Err(bad("without authToken.token".to_owned())),
    };
    let grant = parse_grant(&mut token, reply.received_at, server)?;
    if grant.refresh_token.is_none() {
        return Err(bad(
            "without a refresh_token, so the device could not renew its access token".to_owned(),
        ));
    }
    tracing::debug!(server = %server, identifier = %crate::secret::short_hash(&identity.identifier), status = reply.status.as_u16(), "registration token redeemed");
    Ok(Redemption {
        auth_token_id,
        grant,
    })
}
