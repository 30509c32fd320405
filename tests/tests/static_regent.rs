//! The `regent` the packages ship is linked statically (scripts/package.sh):
//! no program interpreter, no shared library. `scripts/test.sh` builds it the
//! same way (debug) and names it in `REGENT_TEST_STATIC_REGENT`; this runs it
//! as a user would: `regent token` answered by itself, every other command by
//! `regentd` beside it.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use regent_tests::{
    AgentHome, AgentProc, EmulatorProc, code, link_or_copy, regentd_bin, run_program, text,
};

/// The statically linked `regent`, when this run built one.
fn static_regent() -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os("REGENT_TEST_STATIC_REGENT")?);
    assert!(
        path.exists(),
        "REGENT_TEST_STATIC_REGENT names {}, which does not exist",
        path.display()
    );
    Some(path)
}

/// Whether an ELF file asks for a program interpreter (`PT_INTERP`): a
/// dynamically linked executable does; a static(-pie) one does not.
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap());
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "a 64-bit ELF");
    let phoff = usize::try_from(u64_at(0x20)).unwrap();
    let phentsize = usize::from(u16_at(0x36));
    let phnum = usize::from(u16_at(0x38));
    (0..phnum).any(|i| u32_at(phoff + i * phentsize) == 3)
}

#[test]
fn the_statically_linked_regent_answers_token_and_runs_regentd_for_the_rest() {
    let Some(built) = static_regent() else {
        eprintln!(
            "skipped: REGENT_TEST_STATIC_REGENT is not set (scripts/test.sh builds the static regent and sets it)"
        );
        return;
    };
    assert!(
        !has_interpreter(&std::fs::read(&built).unwrap()),
        "{} has a program interpreter: it is not statically linked",
        built.display()
    );
    assert!(
        has_interpreter(&std::fs::read(regentd_bin()).unwrap()),
        "the check tells a dynamic binary apart"
    );
    // Installed as the packages install it: regent and regentd side by side.
    let bin = tempfile::tempdir().unwrap();
    let regent = bin.path().join("regent");
    std::fs::copy(&built, &regent).unwrap();
    link_or_copy(&regentd_bin(), &bin.path().join("regentd"));

    let emulator = EmulatorProc::start(300);
    let home = AgentHome::new(&emulator.url, "");
    let _agent = AgentProc::start(&home);
    let socket = home.socket.to_str().unwrap();
    let run = |args: &[&str], stdin: Option<&str>| {
        run_program(&regent, args, stdin, &[("REGENT_SOCKET", socket)])
    };
    // `enroll` and `status` are regentd's (exec'd beside it).
    let out = run(&["enroll"], Some(&emulator.mint(1)));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = run(&["status"], None);
    assert_eq!(code(&out), 0, "{}", text(&out));
    // `token` is its own.
    let out = run(&["token", "--min-valid", "60"], None);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty());
    let out = run(&["token", "--format", "json"], None);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        json["access_token"].is_string() && json["expires_in"].as_u64() >= Some(60),
        "{json}"
    );
}
