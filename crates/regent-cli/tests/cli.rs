//! The `regent` command's own surface: help, completions, exit codes.
//! (Having an integration test here also makes `cargo test` build the binary
//! that the end-to-end tests in `tests/` run.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn regent(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_regent"))
        .args(args)
        .env_remove("REGENT_SOCKET")
        .output()
        .unwrap()
}

#[test]
fn help_teaches_and_exits_zero() {
    let out = regent(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "agent",
        "enroll",
        "token",
        "status",
        "unenroll",
        "emulator",
        "demo",
        "completions",
    ] {
        assert!(help.contains(cmd), "--help lacks {cmd}:\n{help}");
    }
    let enroll = String::from_utf8_lossy(&regent(&["enroll", "--help"]).stdout).to_string();
    assert!(enroll.contains("never from an argument"), "{enroll}");
}

#[test]
fn usage_errors_exit_with_bad_request() {
    let out = regent(&["no-such-command"]);
    assert_eq!(out.status.code(), Some(12));
    let out = regent(&["token", "--format", "yaml"]);
    assert_eq!(out.status.code(), Some(12));
}

#[test]
fn no_agent_means_agent_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nothing.sock");
    let out = regent(&["--socket", socket.to_str().unwrap(), "token"]);
    assert_eq!(
        out.status.code(),
        Some(14),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nothing.sock"), "{stderr}");
}

#[test]
fn completions_are_generated() {
    let out = regent(&["completions", "bash"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("regent"));
}

#[test]
fn agent_with_a_broken_config_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("regent.toml");
    std::fs::write(&config, "[server]\nprofile = \"sentinel\"\nurll = \"x\"\n").unwrap();
    let out = regent(&["agent", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(17));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("urll") && stderr.contains("regent.toml"),
        "{stderr}"
    );
}
