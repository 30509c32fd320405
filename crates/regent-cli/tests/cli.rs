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

#[test]
fn token_help_reads_the_same_from_both_binaries() {
    // `regent token` is answered by the small binary on Unix, every other
    // command by `regentd`; both parse `token` with the same arguments.
    let lean = regent(&["token", "--help"]);
    let full = Command::new(env!("CARGO_BIN_EXE_regentd"))
        .args(["token", "--help"])
        .env_remove("REGENT_SOCKET")
        .output()
        .unwrap();
    assert!(lean.status.success() && full.status.success());
    let lean = String::from_utf8_lossy(&lean.stdout).to_string();
    let full = String::from_utf8_lossy(&full.stdout).to_string();
    for needle in ["Usage: regent", "--min-valid", "--format", "--socket"] {
        assert!(lean.contains(needle), "{needle} missing:\n{lean}");
    }
    // The usage line names the binary as invoked; the rest is identical.
    let body = |help: &str| {
        help.lines()
            .filter(|l| !l.starts_with("Usage:"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(body(&lean), body(&full));
    assert!(lean.starts_with("Print an access token"), "{lean}");
}

/// The small `regent` hands every command but `token` to `regentd` beside it;
/// alone, it says what is missing and what to do, and `token` still works.
#[cfg(unix)]
#[test]
fn regent_without_regentd_beside_it_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let alone = dir.path().join("regent");
    std::fs::copy(env!("CARGO_BIN_EXE_regent"), &alone).unwrap();
    let out = Command::new(&alone)
        .arg("status")
        .env_remove("REGENT_SOCKET")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(19), "{stderr}");
    assert!(
        stderr.contains(&dir.path().join("regentd").display().to_string())
            && stderr.contains("`regent status`")
            && stderr.contains("reinstall"),
        "{stderr}"
    );
    let socket = dir.path().join("nothing.sock");
    let out = Command::new(&alone)
        .args(["--socket", socket.to_str().unwrap(), "token"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(14));
}

/// The point of the split: `regent` carries no async runtime, TLS, HTTP
/// client or server, or D-Bus (its start-up is a `regent token` call's
/// cost); `regentd` does. Judged on the loaded code and data (`strip`ped
/// copies: debug information still names what the linker dropped), by the
/// source paths that panic locations embed.
#[cfg(unix)]
#[test]
fn the_small_regent_binary_carries_no_runtime_tls_or_server() {
    let dir = tempfile::tempdir().unwrap();
    let stripped = |bin: &str| {
        let out = dir.path().join(bin.rsplit('/').next().unwrap());
        let status = Command::new("strip")
            .arg("-o")
            .arg(&out)
            .arg(bin)
            .status()
            .expect("strip (binutils) runs");
        assert!(status.success(), "strip {bin}: {status}");
        std::fs::read(&out).unwrap()
    };
    let lean = stripped(env!("CARGO_BIN_EXE_regent"));
    let full = stripped(env!("CARGO_BIN_EXE_regentd"));
    let has = |bin: &[u8], needle: &str| bin.windows(needle.len()).any(|w| w == needle.as_bytes());
    for needle in [
        "/tokio-1.",
        "/rustls-",
        "/hyper-",
        "/reqwest-",
        "/axum-",
        "/zbus-",
    ] {
        assert!(has(&full, needle), "regentd should contain {needle}");
        assert!(!has(&lean, needle), "regent contains {needle}");
    }
    assert!(
        lean.len() * 4 < full.len(),
        "{} vs {} bytes",
        lean.len(),
        full.len()
    );
}
