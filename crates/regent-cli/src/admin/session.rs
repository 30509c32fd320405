//! Opening an admin session: the URL and credentials of the command line,
//! logged in through the one admin client ([`AdminClient`]), which shares the
//! agent's HTTP rules (no redirects, `https://` except to loopback IPs).

use regent_agent::upstream::{AdminClient, AdminCredentials, HttpSettings, admin_url};

use super::credentials::credentials;
use super::*;

/// The largest admin answer read (a listing of many thousands of auth tokens).
const MAX_ADMIN_BODY: usize = 64 * 1024 * 1024;

/// `--url` / `REGENT_ADMIN_URL`, checked.
pub(super) fn base_url(server: &ServerArgs) -> Result<reqwest::Url, Error> {
    admin_url(server.url.as_deref().unwrap_or_default())
        .map_err(|e| Error::new(e.code, format!("--url: {}", e.message)))
}

/// Logs in with the command line's URL and credentials.
pub(super) async fn open(server: &ServerArgs) -> Result<AdminClient, Error> {
    let base = base_url(server)?;
    let credentials = credentials(server, &base).await?;
    login(&base, &credentials).await
}

/// Logs in to `base` as `credentials`.
pub(crate) async fn login(
    base: &reqwest::Url,
    credentials: &AdminCredentials,
) -> Result<AdminClient, Error> {
    let settings = HttpSettings {
        max_body_bytes: MAX_ADMIN_BODY,
        ..HttpSettings::default()
    };
    AdminClient::login(base, credentials, settings).await
}
