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
use regent_agent::upstream::AdminCredentials;
use regent_proto::ErrorCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::failure::internal;
use regent_client::Error;

pub use self::args::{
    AdminArgs, AdminCommand, AuthTokenCommand, RegistrationTokenCommand, ServerArgs,
};
use self::credentials::{keychain, keychain_entry};
use self::output::OutputFile;
pub(crate) use self::session::login as session_login;
use self::session::{base_url, open};
use self::sizing::{Size, parse_expiry, print_size};
use self::tables::{auth_table, pretty, registration_table};

pub async fn run(args: AdminArgs) -> Result<(), Error> {
    let json = args.server.json;
    match args.command {
        AdminCommand::RegistrationToken(RegistrationTokenCommand::Create {
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
            let session = open(&args.server).await?;
            let mut fields = json!({
                "count": size.count,
                "expiryDate": expiry,
                "isEnabled": !disabled,
            });
            if let Some(r) = ref_id1 {
                fields["refId1"] = json!(r);
            }
            if let Some(r) = ref_id2 {
                fields["refId2"] = json!(r);
            }
            let created = session.create_registration_token(fields).await?;
            let record = created.record;
            let value = created.value.expose_secret();
            if let Some(file) = out_file.as_mut() {
                file.write(value.as_bytes())?;
            }
            if json {
                let mut shown = record.clone();
                if output.is_none() {
                    shown["token"] = json!(value);
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
        AdminCommand::RegistrationToken(RegistrationTokenCommand::List) => {
            let records = open(&args.server).await?.registration_tokens().await?;
            if json {
                println!("{}", pretty(&Value::Array(records)));
            } else {
                print!("{}", registration_table(&records));
            }
            Ok(())
        }
        AdminCommand::RegistrationToken(RegistrationTokenCommand::Show { id }) => {
            let record = open(&args.server).await?.registration_token(&id).await?;
            show_registration(&record, json);
            Ok(())
        }
        AdminCommand::RegistrationToken(RegistrationTokenCommand::Update {
            id,
            count,
            expires,
        }) => {
            let mut patch = json!({});
            if let Some(count) = count {
                patch["count"] = json!(count);
            }
            if let Some(expires) = expires {
                patch["expiryDate"] = json!(parse_expiry(&expires, OffsetDateTime::now_utc())?);
            }
            patch_registration(&args.server, &id, patch, json).await
        }
        AdminCommand::RegistrationToken(RegistrationTokenCommand::Disable { id }) => {
            patch_registration(&args.server, &id, json!({"isEnabled": false}), json).await
        }
        AdminCommand::RegistrationToken(RegistrationTokenCommand::Enable { id }) => {
            patch_registration(&args.server, &id, json!({"isEnabled": true}), json).await
        }
        AdminCommand::RegistrationToken(RegistrationTokenCommand::Delete { id }) => {
            open(&args.server)
                .await?
                .delete_registration_token(&id)
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
            let records = open(&args.server)
                .await?
                .auth_tokens(registration_token.as_deref())
                .await?;
            if json {
                println!("{}", pretty(&Value::Array(records)));
            } else {
                print!("{}", auth_table(&records));
            }
            Ok(())
        }
        AdminCommand::AuthToken(AuthTokenCommand::Revoke { id }) => {
            open(&args.server).await?.revoke_auth_token(&id).await?;
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
    let record = open(server)
        .await?
        .update_registration_token(id, patch)
        .await?;
    show_registration(&record, json);
    Ok(())
}

fn show_registration(record: &Value, json: bool) {
    if json {
        println!("{}", pretty(record));
    } else {
        print!("{}", registration_table(std::slice::from_ref(record)));
    }
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
    let credentials = AdminCredentials { user, password };
    session::login(&base, &credentials).await?;
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
