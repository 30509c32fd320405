//! The `regent` binary on Unix: `regent token` answered by a small binary
//! (issue 15, item 4), every other command by `regentd`.
//!
//! A process per token is how scripts, sidecars and exec-credential plugins
//! call regent, so its start-up is the call's cost: this binary holds the
//! blocking client, clap and JSON, and nothing it does not use (no async
//! runtime, TLS, HTTP server, keychain or emulator), which halves what the
//! multi-tool binary paid in page faults and relocations before `main`.
//! Any other command is handed to `regentd`, installed in the same
//! directory, with `exec`: the same process (a service manager's main pid
//! stays the agent's), the same arguments (`argv[0]` included, so usage lines
//! still say `regent`), the same environment.

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use regent_proto::ErrorCode;

use crate::token::{self, Globals, TokenArgs, finish, usage};

/// The file name of the multi-tool binary, beside `regent`.
pub const REGENTD: &str = "regentd";

/// `regent token`'s parser: the same global options and arguments as
/// `regentd`'s, so help and errors read the same from either binary.
#[derive(Debug, Parser)]
#[command(name = "regent", version, propagate_version = true)]
struct TokenCli {
    #[command(flatten)]
    globals: Globals,
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print an access token valid for at least --min-valid seconds.
    Token(TokenArgs),
}

/// `regent`'s `main` on Unix.
pub fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let command = first_command(args.get(1..).unwrap_or_default());
    if command.is_none_or(|c| c != "token") {
        return exec_regentd(&args, command);
    }
    match TokenCli::try_parse_from(&args) {
        Ok(TokenCli {
            globals,
            command: TokenCommand::Token(token),
        }) => finish(token::token(&token, globals.socket)),
        Err(e) => usage(&e),
    }
}

/// The command: the first argument that is not the global `--socket PATH` /
/// `--socket=PATH` (`--help` or `--version` when that comes first); `None`
/// when there is none. Only `token` stays here; anything else is `regentd`'s
/// to answer.
fn first_command(args: &[OsString]) -> Option<&OsString> {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--socket") => {
                args.next()?;
            }
            Some(a) if a.starts_with("--socket=") => {}
            _ => return Some(arg),
        }
    }
    None
}

/// Replaces this process with `regentd` beside this binary; returns only
/// when that fails, with a message naming `command` and saying what to do.
fn exec_regentd(args: &[OsString], command: Option<&OsString>) -> ExitCode {
    let regentd = match regentd_path() {
        Ok(path) => path,
        Err(e) => {
            eprintln!(
                "regent: cannot find this program's own path ({e}) to run {REGENTD} beside it"
            );
            return ExitCode::from(ErrorCode::Internal.number());
        }
    };
    let mut process = std::process::Command::new(&regentd);
    if let Some(arg0) = args.first() {
        process.arg0(arg0);
    }
    let e = process.args(args.iter().skip(1)).exec();
    let command = command.map(|c| c.to_string_lossy()).unwrap_or_default();
    eprintln!(
        "regent: cannot run {} ({e}): `regent {command}` is carried out by {REGENTD}, which is \
         installed beside regent; reinstall regent (packages install both to /usr/bin)",
        regentd.display()
    );
    ExitCode::from(ErrorCode::Internal.number())
}

/// `regentd` in the directory of this process's executable (symbolic links
/// resolved, so a link to `regent` finds the real installation's).
fn regentd_path() -> std::io::Result<PathBuf> {
    Ok(std::env::current_exe()?.with_file_name(REGENTD))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn only_the_token_command_stays_in_the_small_binary() {
        for yes in [
            &["token"][..],
            &["token", "--min-valid", "5"],
            &["--socket", "/s", "token"],
            &["--socket=/s", "token", "--format", "json"],
        ] {
            assert!(
                first_command(&args(yes)).is_some_and(|c| c == "token"),
                "{yes:?}"
            );
        }
        for no in [
            &[][..],
            &["status"],
            &["agent", "token"],
            &["--help"],
            &["--version"],
            &["--socket"],
            &["--socket", "token"],
            &["tokens"],
            &["admin", "registration-token"],
        ] {
            assert!(
                first_command(&args(no)).is_none_or(|c| c != "token"),
                "{no:?}"
            );
        }
    }
}
