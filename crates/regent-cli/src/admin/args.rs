//! The command line of `regent admin` (clap).

use super::*;

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
    #[command(subcommand, name = "registration-token", visible_alias = "token")]
    RegistrationToken(RegistrationTokenCommand),
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
pub enum RegistrationTokenCommand {
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
