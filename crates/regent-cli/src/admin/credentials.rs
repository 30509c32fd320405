//! The admin's credentials: a `0600` file, the environment or the OS
//! keychain (`regent admin login`), never an argument.

use regent_agent::upstream::AdminCredentials;

use super::*;

/// Keychain service under which `regent admin login` keeps credentials.
pub(super) const KEYCHAIN_SERVICE: &str = "regent-admin";

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CredentialsFile {
    user: String,
    password: String,
}

/// File, then environment, then keychain.
pub(super) async fn credentials(
    server: &ServerArgs,
    base: &reqwest::Url,
) -> Result<AdminCredentials, Error> {
    if let Some(path) = &server.credentials_file {
        return read_credentials_file(path);
    }
    if let Ok(password) = std::env::var("REGENT_ADMIN_PASSWORD") {
        let Some(user) = server.user.clone().filter(|u| !u.is_empty()) else {
            return Err(Error::new(
                ErrorCode::Config,
                "REGENT_ADMIN_PASSWORD is set but no user: set REGENT_ADMIN_USER (or --user)",
            ));
        };
        return Ok(AdminCredentials {
            user,
            password: SecretString::from(password),
        });
    }
    let stored = keychain()?.get(&keychain_entry(base)).await;
    match stored {
        Ok(Some(value)) => {
            let parsed: CredentialsFile = serde_json::from_str(value.expose_secret())
                .map_err(|_| {
                    Error::new(
                        ErrorCode::StoreUnavailable,
                        "the admin credentials in the keychain are unreadable; run `regent admin login` again",
                    )
                })?;
            Ok(AdminCredentials {
                user: parsed.user,
                password: SecretString::from(parsed.password),
            })
        }
        Ok(None) | Err(_) => Err(Error::new(
            ErrorCode::Config,
            format!(
                "no admin credentials for {base}: use --credentials-file PATH (mode 0600, user = \"…\", password = \"…\"), \
                 set REGENT_ADMIN_USER and REGENT_ADMIN_PASSWORD, or store them with `regent admin login`"
            ),
        )),
    }
}

pub(super) fn read_credentials_file(path: &Path) -> Result<AdminCredentials, Error> {
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::new(
            ErrorCode::Config,
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(Error::new(
                ErrorCode::Config,
                format!(
                    "{} has mode {mode:04o}: others may read the admin password; `chmod 600` it (and change the password if it was exposed)",
                    path.display()
                ),
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        Error::new(
            ErrorCode::Config,
            format!("cannot read {}: {e}", path.display()),
        )
    })?);
    let parsed: CredentialsFile = toml::from_str(&text).map_err(|e| {
        // toml's message quotes the offending line, which may hold the
        // password: say only where the problem is.
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
            .unwrap_or(0);
        Error::new(
            ErrorCode::Config,
            format!(
                "{} line {line}: expected exactly `user = \"…\"` and `password = \"…\"`",
                path.display()
            ),
        )
    })?;
    Ok(AdminCredentials {
        user: parsed.user,
        password: SecretString::from(parsed.password),
    })
}

pub(super) fn keychain() -> Result<regent_agent::store::SecretStore, Error> {
    regent_agent::store::SecretStore::keychain(KEYCHAIN_SERVICE, Duration::from_secs(5))
}

pub(super) fn keychain_entry(base: &reqwest::Url) -> String {
    format!(
        "{}://{}:{}",
        base.scheme(),
        base.host_str().unwrap_or(""),
        base.port_or_known_default().unwrap_or(0)
    )
}
