//! `regent admin`: registration tokens and auth tokens on a license server
//! with the Sentinel-EMS-shaped admin API (DESIGN §9; the emulator speaks it).
//!
//! - Sizing follows the Sentinel document: one count per auth token, so a
//!   registration token for N devices running M instances each (per-instance
//!   licensing) needs `count = N × M` (`--devices N --instances-per-device M`).
//! - Admin credentials come from a `0600` file (`--credentials-file`), the
//!   environment (`REGENT_ADMIN_USER` + `REGENT_ADMIN_PASSWORD`) or the OS
//!   keychain (`regent admin login`), in that order — never from an argument.
//! - Authorisation: the server's `idpConfigurations` name its realm token
//!   endpoint; a `password` grant there yields the admin bearer token.
//! - Output: short tables for people, `--json` for scripts. Listings never
//!   print registration-token values; `token create` prints the new value
//!   alone on stdout (or writes it to a `0600` file with `--output`).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use regent_agent::upstream::ProxySetting;
use regent_agent::upstream::with_https_proxy;
use regent_proto::ErrorCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::failure::internal;
use regent_client::Error;

/// Keychain service under which `regent admin login` keeps credentials.
const KEYCHAIN_SERVICE: &str = "regent-admin";

#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The license server's base URL (https://; http:// only to a loopback IP).
    #[arg(long, global = true, env = "REGENT_ADMIN_URL")]
    pub url: Option<String>,
    /// The admin user (its password comes from the environment, a file or the
    /// keychain, never from an argument).
    #[arg(long, global = true, env = "REGENT_ADMIN_USER")]
    pub user: Option<String>,
    /// A file holding `user = "…"` and `password = "…"`; it must be mode 0600.
    #[arg(
        long,
        global = true,
        env = "REGENT_ADMIN_CREDENTIALS",
        value_name = "PATH"
    )]
    pub credentials_file: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Registration tokens: create (sized devices × instances), list, raise
    /// the count, disable, enable, delete.
    #[command(subcommand, visible_alias = "registration-token")]
    Token(TokenCommand),
    /// Auth tokens (one per redemption): who redeemed, and revoke.
    #[command(subcommand, name = "auth-token", visible_alias = "auth-tokens")]
    AuthToken(AuthTokenCommand),
    /// Store admin credentials in the OS keychain: the password is read from
    /// stdin, checked against the server, then stored.
    Login,
    /// Delete the keychain credentials for --url.
    Logout,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a registration token. Prints its value alone on stdout (a
    /// summary goes to stderr), or writes it to --output.
    Create {
        /// Devices that will redeem it.
        #[arg(long, required_unless_present = "count", conflicts_with = "count")]
        devices: Option<u32>,
        /// App instances per device that each need an auth token (the agent's
        /// `[instances] mode = "per-instance"`, `max`); 1 for shared mode.
        #[arg(long, default_value_t = 1, requires = "devices")]
        instances_per_device: u32,
        /// The count itself, instead of --devices × --instances-per-device.
        #[arg(long)]
        count: Option<u32>,
        /// Expiry: a duration (`30d`, `12h`), a date (`2026-12-31`, the end
        /// of that day, UTC) or an RFC 3339 instant.
        #[arg(long, default_value = "30d")]
        expires: String,
        /// Reference id recorded on the token (e.g. a site or order).
        #[arg(long)]
        ref_id1: Option<String>,
        /// Second reference id.
        #[arg(long)]
        ref_id2: Option<String>,
        /// Create it disabled (enable it later).
        #[arg(long)]
        disabled: bool,
        /// Write the value to this file (mode 0600) instead of stdout.
        #[arg(long, value_name = "PATH")]
        output: Option<PathBuf>,
        /// Print the computed size and expiry; contact no server.
        #[arg(long)]
        dry_run: bool,
    },
    /// List registration tokens (never their values).
    List,
    /// Show one registration token (not its value).
    Show {
        /// The registration token's id.
        id: String,
    },
    /// Change the count (e.g. raise it for more devices) or the expiry.
    #[command(visible_alias = "raise")]
    Update {
        /// The registration token's id.
        id: String,
        /// The new total count (at least the number already used).
        #[arg(long, required_unless_present = "expires")]
        count: Option<u32>,
        /// A new expiry (as for `create`).
        #[arg(long)]
        expires: Option<String>,
    },
    /// Disable: redemptions are refused (REGISTRATION_TOKEN_DISABLED); auth
    /// tokens already created keep working.
    Disable {
        /// The registration token's id.
        id: String,
    },
    /// Enable a disabled registration token.
    Enable {
        /// The registration token's id.
        id: String,
    },
    /// Delete a registration token; auth tokens created from it stay valid.
    Delete {
        /// The registration token's id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuthTokenCommand {
    /// List auth tokens with who redeemed them: identifier, host, user, MAC,
    /// created, last use.
    List {
        /// Only those created from this registration token.
        #[arg(long, value_name = "ID")]
        registration_token: Option<String>,
    },
    /// Delete (revoke) an auth token: the device's next refresh fails with
    /// REVOKED and its access tokens stop working; one count is not returned.
    #[command(visible_alias = "delete")]
    Revoke {
        /// The auth token's id.
        id: String,
    },
}

pub async fn run(args: AdminArgs) -> Result<(), Error> {
    let json = args.server.json;
    match args.command {
        AdminCommand::Token(TokenCommand::Create {
            devices,
            instances_per_device,
            count,
            expires,
            ref_id1,
            ref_id2,
            disabled,
            output,
            dry_run,
        }) => {
            let size = Size::new(devices, instances_per_device, count)?;
            let expiry = parse_expiry(&expires, OffsetDateTime::now_utc())?;
            if dry_run {
                print_size(&size, &expiry, json);
                return Ok(());
            }
            // Before anything is created: a taken name fails with no token minted.
            let mut out_file = output.as_deref().map(OutputFile::create).transpose()?;
            let session = Session::open(&args.server).await?;
            let mut body = json!({
                "count": size.count,
                "expiryDate": expiry,
                "isEnabled": !disabled,
            });
            if let Some(r) = ref_id1 {
                body["refId1"] = json!(r);
            }
            if let Some(r) = ref_id2 {
                body["refId2"] = json!(r);
            }
            let reply = session
                .call(
                    reqwest::Method::POST,
                    "/token/api/v5/registrationTokens",
                    Some(json!({ "registrationToken": body })),
                )
                .await?;
            let record = reply["registrationToken"].clone();
            let value = record["token"].as_str().unwrap_or_default().to_owned();
            if value.is_empty() {
                return Err(Error::new(
                    ErrorCode::ServerError,
                    "the server created a registration token but returned no value",
                ));
            }
            if let Some(file) = out_file.as_mut() {
                file.write(value.as_bytes())?;
            }
            if json {
                let mut shown = record.clone();
                if output.is_some() {
                    strip_secret(&mut shown);
                }
                shown["size"] = size.to_json();
                println!("{}", pretty(&shown));
            } else {
                eprintln!(
                    "created registration token {}: count {} ({}), {}, expires {}",
                    record["id"].as_str().unwrap_or("?"),
                    size.count,
                    size.describe(),
                    if disabled { "disabled" } else { "enabled" },
                    record["expiryDate"].as_str().unwrap_or("?")
                );
                if size.instances_per_device > 1 {
                    eprintln!(
                        "devices need [instances] mode = \"per-instance\" and max = {} in regent.toml",
                        size.instances_per_device
                    );
                }
                match &output {
                    Some(path) => eprintln!("value written to {} (mode 0600)", path.display()),
                    None => println!("{value}"),
                }
            }
            Ok(())
        }
        AdminCommand::Token(TokenCommand::List) => {
            let session = Session::open(&args.server).await?;
            let reply = session
                .call(
                    reqwest::Method::GET,
                    "/token/api/v5/registrationTokens",
                    None,
                )
                .await?;
            let mut records = reply["registrationTokens"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            records.iter_mut().for_each(strip_secret);
            if json {
                println!("{}", pretty(&Value::Array(records)));
            } else {
                print!("{}", registration_table(&records));
            }
            Ok(())
        }
        AdminCommand::Token(TokenCommand::Show { id }) => {
            let session = Session::open(&args.server).await?;
            let reply = session
                .call(reqwest::Method::GET, &registration_path(&id), None)
                .await?;
            show_registration(reply, json);
            Ok(())
        }
        AdminCommand::Token(TokenCommand::Update { id, count, expires }) => {
            let mut patch = json!({});
            if let Some(count) = count {
                patch["count"] = json!(count);
            }
            if let Some(expires) = expires {
                patch["expiryDate"] = json!(parse_expiry(&expires, OffsetDateTime::now_utc())?);
            }
            patch_registration(&args.server, &id, patch, json).await
        }
        AdminCommand::Token(TokenCommand::Disable { id }) => {
            patch_registration(&args.server, &id, json!({"isEnabled": false}), json).await
        }
        AdminCommand::Token(TokenCommand::Enable { id }) => {
            patch_registration(&args.server, &id, json!({"isEnabled": true}), json).await
        }
        AdminCommand::Token(TokenCommand::Delete { id }) => {
            let session = Session::open(&args.server).await?;
            session
                .call(reqwest::Method::DELETE, &registration_path(&id), None)
                .await?;
            if json {
                println!("{}", json!({"deleted": id}));
            } else {
                println!(
                    "registration token {id} deleted; auth tokens already created from it keep working"
                );
            }
            Ok(())
        }
        AdminCommand::AuthToken(AuthTokenCommand::List { registration_token }) => {
            let session = Session::open(&args.server).await?;
            let path = match &registration_token {
                Some(id) => format!(
                    "/token/api/v5/authTokens?registrationTokenId={}",
                    url_component(id)
                ),
                None => "/token/api/v5/authTokens".to_owned(),
            };
            let reply = session.call(reqwest::Method::GET, &path, None).await?;
            let records = reply["authTokens"].as_array().cloned().unwrap_or_default();
            if json {
                println!("{}", pretty(&Value::Array(records)));
            } else {
                print!("{}", auth_table(&records));
            }
            Ok(())
        }
        AdminCommand::AuthToken(AuthTokenCommand::Revoke { id }) => {
            let session = Session::open(&args.server).await?;
            session
                .call(
                    reqwest::Method::DELETE,
                    &format!("/token/api/v5/authTokens/{}", url_component(&id)),
                    None,
                )
                .await?;
            if json {
                println!("{}", json!({"revoked": id}));
            } else {
                println!("auth token {id} revoked; the device's next refresh fails with REVOKED");
            }
            Ok(())
        }
        AdminCommand::Login => login(&args.server).await,
        AdminCommand::Logout => {
            let base = base_url(&args.server)?;
            keychain()?.delete(&keychain_entry(&base)).await?;
            println!("admin credentials for {base} removed from the keychain");
            Ok(())
        }
    }
}

async fn patch_registration(
    server: &ServerArgs,
    id: &str,
    patch: Value,
    json: bool,
) -> Result<(), Error> {
    let session = Session::open(server).await?;
    let reply = session
        .call(
            reqwest::Method::PATCH,
            &registration_path(id),
            Some(json!({ "registrationToken": patch })),
        )
        .await?;
    show_registration(reply, json);
    Ok(())
}

fn show_registration(reply: Value, json: bool) {
    let mut record = reply["registrationToken"].clone();
    strip_secret(&mut record);
    if json {
        println!("{}", pretty(&record));
    } else {
        print!("{}", registration_table(std::slice::from_ref(&record)));
    }
}

fn registration_path(id: &str) -> String {
    format!("/token/api/v5/registrationTokens/{}", url_component(id))
}

/// Registration-token values are secrets: listings never show them.
fn strip_secret(record: &mut Value) {
    if let Some(map) = record.as_object_mut() {
        map.remove("token");
    }
}

/// How many auth tokens a registration token must allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Size {
    devices: Option<u32>,
    instances_per_device: u32,
    count: u32,
}

impl Size {
    fn new(
        devices: Option<u32>,
        instances_per_device: u32,
        count: Option<u32>,
    ) -> Result<Size, Error> {
        let size = match (devices, count) {
            (_, Some(count)) => Size {
                devices: None,
                instances_per_device: 1,
                count,
            },
            (Some(devices), None) => {
                let count = devices.checked_mul(instances_per_device).ok_or_else(|| {
                    Error::new(
                        ErrorCode::BadRequest,
                        format!("{devices} devices × {instances_per_device} instances does not fit a count"),
                    )
                })?;
                Size {
                    devices: Some(devices),
                    instances_per_device,
                    count,
                }
            }
            (None, None) => {
                return Err(Error::new(
                    ErrorCode::BadRequest,
                    "say how many auth tokens the registration token may create: --devices N [--instances-per-device M], or --count N",
                ));
            }
        };
        if size.count == 0 {
            return Err(Error::new(
                ErrorCode::BadRequest,
                "the count must be at least 1",
            ));
        }
        Ok(size)
    }

    fn describe(&self) -> String {
        match self.devices {
            Some(devices) => format!(
                "{devices} device{} × {} instance{} per device",
                plural(devices),
                self.instances_per_device,
                plural(self.instances_per_device)
            ),
            None => "explicit count".to_owned(),
        }
    }

    fn to_json(self) -> Value {
        json!({
            "devices": self.devices,
            "instancesPerDevice": self.instances_per_device,
            "count": self.count,
        })
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn print_size(size: &Size, expiry: &str, json: bool) {
    if json {
        let mut out = size.to_json();
        out["expiryDate"] = json!(expiry);
        println!("{}", pretty(&out));
    } else {
        println!(
            "count {} ({}), expires {expiry}",
            size.count,
            size.describe()
        );
    }
}

/// `30d` / `12h` / `90m` from now, a date (end of that day, UTC) or RFC 3339.
fn parse_expiry(text: &str, now: OffsetDateTime) -> Result<String, Error> {
    let text = text.trim();
    let bad = || {
        Error::new(
            ErrorCode::BadRequest,
            format!(
                "--expires {text:?}: use a duration such as 30d or 12h, a date such as 2026-12-31, or an RFC 3339 time"
            ),
        )
    };
    let relative = text
        .strip_suffix('d')
        .map(|n| (n, 86_400))
        .or_else(|| text.strip_suffix('h').map(|n| (n, 3_600)))
        .or_else(|| text.strip_suffix('m').map(|n| (n, 60)));
    if let Some((n, unit)) = relative
        && let Ok(n) = n.parse::<i64>()
    {
        if n <= 0 {
            return Err(bad());
        }
        let at = now + time::Duration::seconds(n.saturating_mul(unit));
        return at
            .replace_nanosecond(0)
            .map_err(|_| bad())?
            .format(&Rfc3339)
            .map_err(|_| bad());
    }
    if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        return at.format(&Rfc3339).map_err(|_| bad());
    }
    let date_format = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(date) = time::Date::parse(text, &date_format) {
        let end = date.with_hms(23, 59, 59).map_err(|_| bad())?.assume_utc();
        return end.format(&Rfc3339).map_err(|_| bad());
    }
    Err(bad())
}

// --- credentials ----------------------------------------------------------------

struct Credentials {
    user: String,
    password: SecretString,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    user: String,
    password: String,
}

fn base_url(server: &ServerArgs) -> Result<reqwest::Url, Error> {
    let Some(text) = server.url.as_deref().filter(|u| !u.is_empty()) else {
        return Err(Error::new(
            ErrorCode::Config,
            "which license server? pass --url or set REGENT_ADMIN_URL",
        ));
    };
    let url = reqwest::Url::parse(text.trim_end_matches('/')).map_err(|e| {
        Error::new(
            ErrorCode::Config,
            format!("--url {text:?} is not a URL: {e}"),
        )
    })?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        // A name (`localhost` too) goes through the resolver: IP literals only.
        Some(url::Host::Domain(_)) | None => false,
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        "http" => Err(Error::new(
            ErrorCode::Config,
            format!(
                "refusing to send admin credentials over plain http:// to {}; use https:// (http:// is only for loopback IP addresses such as http://127.0.0.1:PORT)",
                url.host_str().unwrap_or("?")
            ),
        )),
        other => Err(Error::new(
            ErrorCode::Config,
            format!("--url: unsupported scheme {other:?}; use https://"),
        )),
    }
}

/// File, then environment, then keychain.
async fn credentials(server: &ServerArgs, base: &reqwest::Url) -> Result<Credentials, Error> {
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
        return Ok(Credentials {
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
            Ok(Credentials {
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

fn read_credentials_file(path: &Path) -> Result<Credentials, Error> {
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
    Ok(Credentials {
        user: parsed.user,
        password: SecretString::from(parsed.password),
    })
}

fn keychain() -> Result<regent_agent::store::SecretStore, Error> {
    regent_agent::store::SecretStore::keychain(KEYCHAIN_SERVICE, Duration::from_secs(5))
}

fn keychain_entry(base: &reqwest::Url) -> String {
    format!(
        "{}://{}:{}",
        base.scheme(),
        base.host_str().unwrap_or(""),
        base.port_or_known_default().unwrap_or(0)
    )
}

async fn login(server: &ServerArgs) -> Result<(), Error> {
    let base = base_url(server)?;
    let Some(user) = server.user.clone().filter(|u| !u.is_empty()) else {
        return Err(Error::new(
            ErrorCode::Config,
            "which admin user? pass --user or set REGENT_ADMIN_USER",
        ));
    };
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| internal("cannot read the password from stdin", e))?;
    let password = SecretString::from(text.trim_end_matches(['\r', '\n']).to_owned());
    secrecy::zeroize::Zeroize::zeroize(&mut text);
    if password.expose_secret().is_empty() {
        return Err(Error::new(
            ErrorCode::BadRequest,
            "no password on stdin (e.g. `read -rs P; printf %s \"$P\" | regent admin login --user U`)",
        ));
    }
    let credentials = Credentials { user, password };
    Session::login(&base, &credentials).await?;
    let value = json!({"user": credentials.user, "password": credentials.password.expose_secret()})
        .to_string();
    keychain()?
        .set(&keychain_entry(&base), SecretString::from(value))
        .await?;
    println!(
        "admin credentials for {} at {base} checked and stored in the keychain",
        credentials.user
    );
    Ok(())
}

// --- the admin API session ------------------------------------------------------

/// An authorised session against the admin API.
pub struct Session {
    http: reqwest::Client,
    base: reqwest::Url,
    bearer: SecretString,
}

impl Session {
    async fn open(server: &ServerArgs) -> Result<Session, Error> {
        let base = base_url(server)?;
        let credentials = credentials(server, &base).await?;
        Session::login(&base, &credentials).await
    }

    /// Logs in to `url` as `user` (the emulator's admin actions and the demo).
    pub(crate) async fn with_password(
        url: &str,
        user: &str,
        password: SecretString,
    ) -> Result<Session, Error> {
        let base = reqwest::Url::parse(url).map_err(|e| {
            Error::new(
                ErrorCode::Config,
                format!("invalid server URL {url:?}: {e}"),
            )
        })?;
        let credentials = Credentials {
            user: user.to_owned(),
            password,
        };
        Session::login(&base, &credentials).await
    }

    /// Discovers the realm token endpoint and logs in with the password grant.
    async fn login(base: &reqwest::Url, credentials: &Credentials) -> Result<Session, Error> {
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            // A 307 would resend the password form to wherever it points.
            .redirect(reqwest::redirect::Policy::none());
        // Plain http:// (loopback only) never goes through a proxy: the admin
        // password would reach it in clear (issue 18, item 1).
        let (builder, _) = with_https_proxy(builder, &ProxySetting::Environment)?;
        let http = builder
            .build()
            .map_err(|e| internal("cannot build the HTTP client", e))?;
        let base_text = base.as_str().trim_end_matches('/').to_owned();
        let idp = http
            .get(format!("{base_text}/token/api/v5/idpConfigurations"))
            .send()
            .await
            .map_err(|e| unreachable(base, &e))?;
        let idp = read_reply(idp, "idpConfigurations").await?;
        let (Some(endpoint), Some(realm), Some(client_id)) = (
            idp["tokenEndpoint"].as_str(),
            idp["realm"].as_str(),
            idp["clientId"].as_str(),
        ) else {
            return Err(Error::new(
                ErrorCode::ServerError,
                format!(
                    "{base}: idpConfigurations names no tokenEndpoint, realm and clientId; is this a Sentinel-style server?"
                ),
            ));
        };
        let token_url = format!(
            "{}/realms/{}/protocol/openid-connect/token",
            endpoint.trim_end_matches('/'),
            url_component(realm)
        );
        // The password goes there: the same URL rule as the agent's (https://,
        // or http:// to a loopback IP literal).
        reqwest::Url::parse(&token_url)
            .map_err(|e| e.to_string())
            .and_then(|u| {
                regent_agent::upstream::check_url(&u).map_err(|e| e.message)
            })
            .map_err(|problem| {
                Error::new(
                    ErrorCode::ServerError,
                    format!("{base}: idpConfigurations names a token endpoint the admin password will not be sent to: {problem}"),
                )
            })?;
        let reply = http
            .post(&token_url)
            .form(&[
                ("grant_type", "password"),
                ("username", credentials.user.as_str()),
                ("password", credentials.password.expose_secret()),
                ("client_id", client_id),
            ])
            .send()
            .await
            .map_err(|e| unreachable(base, &e))?;
        let status = reply.status();
        let body: Value = reply.json().await.unwrap_or(Value::Null);
        let Some(bearer) = body["access_token"].as_str() else {
            return Err(Error::new(
                ErrorCode::PermissionDenied,
                format!(
                    "admin login as {} refused ({status}: {}); check the user and password",
                    credentials.user,
                    body["error_description"]
                        .as_str()
                        .unwrap_or("no description")
                ),
            ));
        };
        Ok(Session {
            http,
            base: base.clone(),
            bearer: SecretString::from(bearer.to_owned()),
        })
    }

    /// One admin call; a non-2xx answer is a failure carrying the server's message.
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Error> {
        let url = format!("{}{path}", self.base.as_str().trim_end_matches('/'));
        let mut request = self
            .http
            .request(method, url)
            .bearer_auth(self.bearer.expose_secret());
        if let Some(body) = body {
            request = request.json(&body);
        }
        let reply = request
            .send()
            .await
            .map_err(|e| unreachable(&self.base, &e))?;
        read_reply(reply, path).await
    }
}

async fn read_reply(reply: reqwest::Response, what: &str) -> Result<Value, Error> {
    let status = reply.status();
    let text = reply.text().await.unwrap_or_default();
    let body: Value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::Null)
    };
    if status.is_success() {
        return Ok(body);
    }
    let code = match status.as_u16() {
        400 | 404 | 409 | 422 => ErrorCode::BadRequest,
        401 | 403 => ErrorCode::PermissionDenied,
        429 => ErrorCode::RateLimited,
        500..=599 => ErrorCode::Unavailable,
        _ => ErrorCode::ServerError,
    };
    let detail = body["error_description"]
        .as_str()
        .or_else(|| body["message"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| text.chars().take(200).collect());
    Err(Error::new(
        code,
        format!(
            "{what}: the server answered {status}{}{}",
            body["error"]
                .as_str()
                .map(|e| format!(" {e}"))
                .unwrap_or_default(),
            if detail.is_empty() {
                String::new()
            } else {
                format!(": {detail}")
            }
        ),
    ))
}

fn unreachable(base: &reqwest::Url, e: &reqwest::Error) -> Error {
    let code = if e.is_timeout() {
        ErrorCode::Timeout
    } else {
        ErrorCode::Unavailable
    };
    Error::new(
        code,
        format!("cannot reach the license server at {base}: {e}"),
    )
}

/// Percent-encodes an id for a path segment or query value.
fn url_component(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

// --- output ---------------------------------------------------------------------

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) if s.is_empty() => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let mut text = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(c);
            } else {
                text.push_str(&format!("{c:<w$}  "));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(headers.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row.clone());
    }
    out
}

fn registration_table(records: &[Value]) -> String {
    if records.is_empty() {
        return "no registration tokens\n".to_owned();
    }
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                cell(&r["id"]),
                cell(&r["state"]),
                format!("{}/{}", cell(&r["usedCount"]), cell(&r["count"])),
                cell(&r["expiryDate"]),
                cell(&r["creationDate"]),
                cell(&r["refId1"]),
                cell(&r["refId2"]),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "STATE",
            "USED/COUNT",
            "EXPIRES",
            "CREATED",
            "REF1",
            "REF2",
        ],
        &rows,
    )
}

fn auth_table(records: &[Value]) -> String {
    if records.is_empty() {
        return "no auth tokens\n".to_owned();
    }
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                cell(&r["id"]),
                cell(&r["identifier"]),
                cell(&r["fqdn"]),
                cell(&r["systemUserName"]),
                cell(&r["macAddress"]),
                cell(&r["creationDate"]),
                cell(&r["lastRefreshDate"]),
                cell(&r["registrationTokenId"]),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "IDENTIFIER",
            "HOST",
            "USER",
            "MAC",
            "CREATED",
            "LAST USE",
            "REGISTRATION TOKEN",
        ],
        &rows,
    )
}

/// The `--output` file: created new (`O_EXCL|O_NOFOLLOW`, `0600`) before the
/// token exists, removed again unless the token was written to it.
struct OutputFile {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl OutputFile {
    fn create(path: &Path) -> Result<OutputFile, Error> {
        match regent_agent::store::atomic::create_new_private(path) {
            Ok(file) => Ok(OutputFile {
                path: path.to_path_buf(),
                file: Some(file),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(Error::new(
                ErrorCode::BadRequest,
                format!(
                    "{} already exists; --output writes the registration token only to a new file (mode 0600), never over an existing one or through a symlink: remove it or name another path",
                    path.display()
                ),
            )),
            Err(e) => Err(internal(&format!("cannot create {}", path.display()), e)),
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        use std::io::Write as _;
        let Some(mut file) = self.file.take() else {
            return Ok(());
        };
        file.write_all(bytes)
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| file.sync_all())
            .map_err(|e| internal(&format!("cannot write {}", self.path.display()), e))?;
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            // Nothing (or not all) was written: leave no empty or partial file.
            drop(self.file.take());
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_is_devices_times_instances() {
        let s = Size::new(Some(100), 2, None).unwrap();
        assert_eq!(s.count, 200);
        assert_eq!(s.describe(), "100 devices × 2 instances per device");
        assert_eq!(Size::new(None, 1, Some(7)).unwrap().count, 7);
        assert!(Size::new(Some(0), 2, None).is_err());
        assert!(Size::new(Some(u32::MAX), 2, None).is_err());
        assert!(Size::new(None, 1, None).is_err());
    }

    #[test]
    fn expiry_accepts_durations_dates_and_instants() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        assert_eq!(parse_expiry("1d", now).unwrap(), "2027-01-16T08:00:00Z");
        assert_eq!(parse_expiry("12h", now).unwrap(), "2027-01-15T20:00:00Z");
        assert_eq!(
            parse_expiry("2026-12-31", now).unwrap(),
            "2026-12-31T23:59:59Z"
        );
        assert_eq!(
            parse_expiry("2026-12-31T10:00:00Z", now).unwrap(),
            "2026-12-31T10:00:00Z"
        );
        for bad in ["soon", "0d", "-3d", "2026-13-01"] {
            assert!(parse_expiry(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn plain_http_only_to_loopback() {
        let args = |url: &str| ServerArgs {
            url: Some(url.to_owned()),
            user: None,
            credentials_file: None,
            json: false,
        };
        assert!(base_url(&args("http://127.0.0.1:8600")).is_ok());
        assert!(base_url(&args("http://[::1]:8600/")).is_ok());
        let e = base_url(&args("http://localhost:8600/")).unwrap_err();
        assert!(e.message.contains("http://127.0.0.1:PORT"), "{}", e.message);
        assert!(base_url(&args("https://ems.example.com")).is_ok());
        let e = base_url(&args("http://ems.example.com")).unwrap_err();
        assert_eq!(e.code, ErrorCode::Config);
        assert!(base_url(&args("ftp://x.example")).is_err());
    }

    #[test]
    fn tables_align_and_never_show_values() {
        let mut record =
            json!({"id": "a", "token": "SECRET", "state": "ENABLED", "count": 2, "usedCount": 1});
        strip_secret(&mut record);
        let out = registration_table(&[record]);
        assert!(!out.contains("SECRET"));
        assert!(
            out.lines().next().unwrap().starts_with("ID  STATE"),
            "{out}"
        );
        assert!(out.contains("1/2"), "{out}");
    }
}
