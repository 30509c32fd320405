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

mod args;
mod credentials;
mod output;
mod session;
mod sizing;
mod tables;

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

pub use self::args::{AdminArgs, AdminCommand, AuthTokenCommand, ServerArgs, TokenCommand};
use self::credentials::{Credentials, keychain, keychain_entry};
use self::output::OutputFile;
pub use self::session::Session;
use self::session::{base_url, url_component};
use self::sizing::{Size, parse_expiry, print_size};
use self::tables::{auth_table, pretty, registration_table};

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

// --- credentials ----------------------------------------------------------------

// --- the admin API session ------------------------------------------------------

// --- output ---------------------------------------------------------------------

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

#[cfg(test)]
mod tests;
