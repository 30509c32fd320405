//! End to end: libregent from C, C++ and Python against the real `regent
//! agent` and `regent emulator`. The C and C++ examples are compiled here with
//! warnings as errors and AddressSanitizer (LeakSanitizer included), then run.
//!
//! On Windows (under Wine in `scripts/test-windows.sh`) the C examples run as
//! Windows programs, linked with mingw-w64 against regent.dll (and
//! libregent.a), against an agent on a named pipe. They come prebuilt
//! ([`prebuilt`]): a test under Wine cannot run the Linux compiler (Wine
//! starts a Linux program but neither waits for it nor reports its status).
//! The `ignore` reasons say what stays Unix-only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use regent_tests::{AgentHome, AgentProc, EmulatorProc, code, repo_root, text};

/// The shared library: libregent.so, or on Windows regent.dll.
const SHARED_LIB: &str = if cfg!(windows) {
    "regent.dll"
} else {
    "libregent.so"
};

/// Where cargo put libregent.so / libregent.a (regent.dll on Windows):
/// `target/<profile>/deps`, built because this package dev-depends on regent-ffi.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap().to_owned();
    assert!(
        deps.join(SHARED_LIB).exists(),
        "{} has no {SHARED_LIB}: build it with `cargo build -p regent-ffi`",
        deps.display()
    );
    deps
}

fn include_dirs() -> [PathBuf; 2] {
    [
        repo_root().join("bindings/c/include"),
        repo_root().join("bindings/cpp"),
    ]
}

/// Sanitizers on every build: a leak, overflow or use-after-free fails the run.
#[cfg(unix)]
const SANITIZE: &str = "-fsanitize=address,undefined";

/// Windows: the program `scripts/test-windows.sh` built from `source` with
/// mingw-w64 (`-Wall -Wextra -Wpedantic -Werror`, no sanitizers: mingw-w64
/// has none) into `REGENT_TEST_C_PROGRAMS`, beside a copy of regent.dll:
/// `get_token.exe`, or `get_token-static.exe` when linked with libregent.a.
#[cfg(windows)]
fn prebuilt(source: &Path, extra: &[&str]) -> PathBuf {
    let dir = std::env::var_os("REGENT_TEST_C_PROGRAMS").unwrap_or_else(|| {
        panic!(
            "REGENT_TEST_C_PROGRAMS is not set: on Windows it names the directory of the C \
             examples built with mingw-w64 (scripts/test-windows.sh builds them)"
        )
    });
    let stem = source.file_stem().unwrap().to_string_lossy();
    let linked_statically = extra.iter().any(|a| a.ends_with(".a"));
    let name = if linked_statically {
        format!("{stem}-static.exe")
    } else {
        format!("{stem}.exe")
    };
    let exe = Path::new(&dir).join(name);
    assert!(exe.exists(), "{} was not built", exe.display());
    exe
}

/// On Windows: the [`prebuilt`] program.
#[cfg(windows)]
fn compile(_compiler: &str, source: &Path, _out_dir: &Path, extra: &[&str]) -> PathBuf {
    prebuilt(source, extra)
}

/// Compiles `source` with `compiler` and strict warnings into `out_dir`,
/// linking libregent (shared, found at run time through an rpath).
#[cfg(unix)]
fn compile(compiler: &str, source: &Path, out_dir: &Path, extra: &[&str]) -> PathBuf {
    let exe = out_dir.join(source.file_stem().unwrap());
    let lib = lib_dir();
    let mut cmd = Command::new(compiler);
    if compiler == "g++" {
        cmd.arg("-std=c++17");
    } else {
        cmd.arg("-std=c11");
    }
    cmd.args([
        "-Wall",
        "-Wextra",
        "-Wpedantic",
        "-Werror",
        "-g",
        SANITIZE,
        "-pthread",
    ]);
    for dir in include_dirs() {
        cmd.arg("-I").arg(dir);
    }
    cmd.arg(source).arg("-o").arg(&exe).args(extra);
    if !extra.iter().any(|a| a.ends_with(".a")) {
        cmd.arg("-L")
            .arg(&lib)
            .arg(format!("-Wl,-rpath,{}", lib.display()))
            .arg("-lregent");
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("{compiler}: {e}"));
    assert!(
        out.status.success(),
        "compiling {}: {}",
        source.display(),
        text(&out)
    );
    exe
}

/// Runs a compiled example against `socket` with sanitizer checks armed.
fn run(exe: &Path, args: &[&str], socket: &Path) -> Output {
    Command::new(exe)
        .args(args)
        .env("REGENT_SOCKET", socket)
        .env(
            "ASAN_OPTIONS",
            "detect_leaks=1:halt_on_error=1:abort_on_error=0",
        )
        .env("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A program's stdout, with Windows' `\r\n` line ends made `\n`.
fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n")
}

/// An emulator and an agent; enrolled unless asked not to.
struct Live {
    emulator: EmulatorProc,
    home: AgentHome,
    _agent: AgentProc,
}

impl Live {
    fn start(lifetime_secs: u64, enroll: bool) -> Live {
        let emulator = EmulatorProc::start(lifetime_secs);
        let home = AgentHome::new(&emulator.url, "");
        let agent = AgentProc::start(&home);
        let live = Live {
            emulator,
            home,
            _agent: agent,
        };
        if enroll {
            live.enroll();
        }
        live
    }

    fn enroll(&self) {
        let registration = self.emulator.mint(1);
        let out = self
            .home
            .regent(&["enroll"], Some(&format!("{registration}\n")));
        assert!(out.status.success(), "{}", text(&out));
    }

    /// The token the CLI gets (same agent, same cached token).
    fn cli_token(&self) -> String {
        let out = self.home.regent(&["token", "--min-valid", "1"], None);
        assert!(out.status.success(), "{}", text(&out));
        stdout(&out).trim().to_owned()
    }
}

/// "… valid for N s …" → N.
/// The example's `token: …` line, which describes `token` (a Bearer token
/// of its length) without printing it.
fn token_line<'a>(printed: &'a str, token: &str) -> &'a str {
    let line = printed
        .lines()
        .find(|l| l.starts_with("token: "))
        .expect(printed);
    assert!(
        line.starts_with(&format!("token: Bearer, {} bytes, ", token.len())),
        "{line}"
    );
    line
}

fn valid_for(line: &str) -> u64 {
    let rest = &line[line.find("valid for ").expect(line) + "valid for ".len()..];
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn c_get_token_example_against_a_live_agent() {
    let live = Live::start(300, false);
    let build = tempfile::tempdir().unwrap();
    let source = repo_root().join("bindings/c/examples/get_token.c");
    let exe = compile("cc", &source, build.path(), &[]);

    // Not enrolled yet: the exit status is the table's number, the message says why.
    let out = run(&exe, &["30"], &live.home.socket);
    assert_eq!(code(&out), 1, "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("NOT_ENROLLED (1)"), "{stderr}");

    live.enroll();
    let out = run(&exe, &["30"], &live.home.socket);
    assert!(out.status.success(), "{}", text(&out));
    let printed = stdout(&out);
    assert!(
        printed.starts_with(&format!("libregent {}\n", env!("CARGO_PKG_VERSION"))),
        "{printed}"
    );
    let token = live.cli_token();
    let line = token_line(&printed, &token);
    assert!((30..=300).contains(&valid_for(line)), "{line}");
    assert!(line.contains("(at least 30 asked)"), "{line}");
    assert!(
        !printed.contains(&token),
        "the example never prints the secret"
    );
    assert!(out.stderr.is_empty(), "{}", text(&out));

    // `regent_token_once`: a connection of its own per token (`hello` and
    // `token` in one write), three times over.
    let out = run(&exe, &["--once", "30", "3"], &live.home.socket);
    assert!(out.status.success(), "{}", text(&out));
    let printed = stdout(&out);
    let line = token_line(&printed, &token);
    assert!((30..=300).contains(&valid_for(line)), "{line}");
    assert!(printed.contains("cycles: 3"), "{printed}");
    assert!(out.stderr.is_empty(), "{}", text(&out));

    // The same program linked statically against libregent.a.
    let native = ["-lpthread", "-ldl", "-lm", "-lrt", "-lutil", "-lgcc_s"];
    let archive = lib_dir().join("libregent.a");
    let mut extra = vec![archive.to_str().unwrap()];
    extra.extend(native);
    let static_dir = build.path().join("static");
    std::fs::create_dir(&static_dir).unwrap();
    let exe = compile("cc", &source, &static_dir, &extra);
    let out = run(&exe, &["10"], &live.home.socket);
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("token: Bearer, "), "{}", text(&out));

    // Nothing listening: AGENT_UNREACHABLE (14), naming the socket (a pipe
    // name no one serves, on Windows).
    let nowhere = if cfg!(windows) {
        regent_tests::endpoint(build.path())
    } else {
        build.path().join("nobody.sock")
    };
    for args in [&[][..], &["--once"]] {
        let out = run(&exe, args, &nowhere);
        assert_eq!(code(&out), 14, "{args:?}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(nowhere.to_str().unwrap()),
            "{}",
            text(&out)
        );
    }
}

/// 10,000 get/free cycles under LeakSanitizer: no leak. A deliberately
/// leaking program shows that the detector works here.
#[test]
#[cfg_attr(windows, ignore = "LeakSanitizer: mingw-w64 has no sanitizers")]
fn c_get_token_leaks_nothing_over_10000_cycles() {
    let live = Live::start(300, true);
    let build = tempfile::tempdir().unwrap();
    let exe = compile(
        "cc",
        &repo_root().join("bindings/c/examples/get_token.c"),
        build.path(),
        &[],
    );
    let started = Instant::now();
    let out = run(&exe, &["30", "10000"], &live.home.socket);
    let took = started.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("cycles: 10000"), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("LeakSanitizer"), "{stderr}");
    assert!(!stderr.contains("ERROR"), "{stderr}");
    eprintln!("10000 get/free cycles under ASan+LSan: no leak ({took:?})");

    // The control: a token never freed is reported, so the check above can fail.
    let leaky = build.path().join("leaky.c");
    std::fs::write(
        &leaky,
        r#"#include <stdio.h>
#include "regent.h"
int main(void) {
  regent_client *client = NULL;
  regent_token *token = NULL;
  if (regent_client_connect(NULL, &client) != REGENT_OK) return 2;
  if (regent_client_token(client, 1, &token) != REGENT_OK) return 3;
  regent_client_free(client);
  token = NULL; /* leaked */
  return 0;
}
"#,
    )
    .unwrap();
    let exe = compile("cc", &leaky, build.path(), &[]);
    let out = run(&exe, &[], &live.home.socket);
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("LeakSanitizer: detected memory leaks"),
        "{stderr}"
    );
}

/// A process's stdout lines, read on a thread so the test can wait with a timeout.
struct Lines {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn new(stream: impl std::io::Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a line starting with `prefix`; returns it.
    fn wait_for(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| {
                    panic!(
                        "no line starting with {prefix:?} in {timeout:?}; saw {:?}",
                        self.seen
                    )
                });
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("output ended before {prefix:?}; saw {:?}", self.seen)
                }
            }
        }
    }

    /// Every remaining line until the stream closes.
    fn rest(&mut self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut rest = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(line) => rest.push(line),
                Err(_) => break,
            }
        }
        rest
    }
}

/// subscribe.c sees the first token, a renewal and the revocation; once the
/// subscription is freed nothing more arrives.
#[test]
fn c_subscribe_example_sees_renewals_and_revocation() {
    let live = Live::start(3, true);
    let build = tempfile::tempdir().unwrap();
    let exe = compile(
        "cc",
        &repo_root().join("bindings/c/examples/subscribe.c"),
        build.path(),
        &[],
    );
    let mut child = Command::new(&exe)
        .arg("1")
        .env("REGENT_SOCKET", &live.home.socket)
        .env("ASAN_OPTIONS", "detect_leaks=1:halt_on_error=1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Lines::new(child.stdout.take().unwrap());
    lines.wait_for("subscribed (min valid 1 s)", Duration::from_secs(10));
    let first = lines.wait_for("event: token", Duration::from_secs(10));
    assert!(valid_for(&first) <= 3, "{first}");
    // Tokens last 3 s: a renewal is pushed within one lifetime.
    lines.wait_for("event: token", Duration::from_secs(10));

    let id = live.emulator.auth_tokens()[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    live.emulator.revoke(&id);
    let revoked = lines.wait_for("event: state revoked", Duration::from_secs(15));
    assert!(revoked.contains("(REVOKED: "), "{revoked}");

    // Closing stdin makes it free the subscription and report.
    drop(child.stdin.take());
    let rest = lines.rest(Duration::from_secs(10));
    let status = regent_tests::wait_timeout(&mut child, Duration::from_secs(10));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        status.success(),
        "{status:?} {stderr} {:?} {rest:?}",
        lines.seen
    );
    let last = rest.last().expect("a final line");
    let events = lines
        .seen
        .iter()
        .chain(&rest)
        .filter(|l| l.starts_with("event: "))
        .count();
    assert_eq!(last, &format!("stopped after {events} events"), "{rest:?}");
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
#[cfg_attr(
    windows,
    ignore = "a test under Wine cannot run the compiler: scripts/test-windows.sh builds this example with mingw-w64 g++ and runs it end to end"
)]
fn cpp_wrapper_example_against_a_live_agent() {
    let live = Live::start(300, true);
    let build = tempfile::tempdir().unwrap();
    let exe = compile(
        "g++",
        &repo_root().join("bindings/cpp/examples/get_token.cpp"),
        build.path(),
        &[],
    );
    let out = run(&exe, &["45"], &live.home.socket);
    assert!(out.status.success(), "{}", text(&out));
    let printed = stdout(&out);
    let token = live.cli_token();
    let line = token_line(&printed, &token);
    assert!(valid_for(line) >= 45, "{line}");
    let pushed = printed
        .lines()
        .find(|l| l.starts_with("subscription: token"))
        .expect(&printed);
    assert!(valid_for(pushed) >= 45, "{pushed}");
    assert!(
        printed.contains("user: none\n"),
        "a device enrollment names no user: {printed}"
    );
    assert!(
        printed.contains("expected error: AGENT_UNREACHABLE (14), retryable: yes"),
        "{printed}"
    );
    assert!(out.stderr.is_empty(), "{}", text(&out));
}

/// After a user's sign-in the C library and Python name the user and the
/// granted scope; a device enrollment has none (the live tests above).
#[test]
#[cfg_attr(
    windows,
    ignore = "the sign-in fixtures run the emulator and agent as Linux processes; the Windows job covers the C API through get_token"
)]
fn c_and_python_name_the_signed_in_user() {
    let emu = regent_tests::signin::emulator(300);
    let home = regent_tests::signin::oauth2_home(&emu);
    let _agent = AgentProc::start(&home);
    let build = tempfile::tempdir().unwrap();
    let exe = compile(
        "cc",
        &repo_root().join("bindings/c/examples/get_token.c"),
        build.path(),
        &[],
    );
    let out = run(&exe, &["--user"], &home.socket);
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("user: none"), "{}", stdout(&out));

    let refresh = regent_tests::signin::refresh_token_of_alice(&emu);
    let out = home.regent(&["enroll", "--refresh-token-stdin"], Some(&refresh));
    assert_eq!(code(&out), 0, "{}", text(&out));

    let out = run(&exe, &["--user"], &home.socket);
    assert!(out.status.success(), "{}", text(&out));
    let printed = stdout(&out);
    assert!(
        printed.contains("user: alice, sub ")
            && printed.contains("email alice@example.com, scope openid profile"),
        "{printed}"
    );

    let cpp = compile(
        "g++",
        &repo_root().join("bindings/cpp/examples/get_token.cpp"),
        build.path(),
        &[],
    );
    let out = run(&cpp, &["60"], &home.socket);
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("user: alice\n"), "{}", stdout(&out));

    let script = "import regent\n\
                  with regent.Client(app='whoami') as c:\n\
                  \x20   u = c.user()\n\
                  \x20   print(u.preferred_username, u.email, u.scope, len(u.sub) > 0)\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .current_dir(repo_root().join("bindings/python"))
        .env("REGENT_LIBRARY", lib_dir().join("libregent.so"))
        .env("REGENT_SOCKET", &home.socket)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("python3");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "alice alice@example.com openid profile True",
        "{}",
        text(&out)
    );
}

#[test]
#[cfg_attr(windows, ignore = "needs a Windows Python, which Wine does not have")]
fn python_binding_tests_pass_against_a_live_agent() {
    let live = Live::start(300, true);
    let out = Command::new("python3")
        .args(["-m", "unittest", "discover", "-s", "tests", "-v"])
        .current_dir(repo_root().join("bindings/python"))
        .env("REGENT_LIBRARY", lib_dir().join("libregent.so"))
        .env("REGENT_SOCKET", &live.home.socket)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("python3");
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        report.contains("\nOK\n") || report.ends_with("\nOK\n"),
        "{report}"
    );
    assert!(!report.contains("skipped"), "every live test ran: {report}");
    let ran: usize = report
        .lines()
        .find_map(|l| {
            l.strip_prefix("Ran ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .expect(&report);
    assert!(ran >= 10, "{report}");
}

/// The shared library exports the C API and nothing else, and exactly what
/// the header declares.
#[test]
#[cfg_attr(windows, ignore = "reads the ELF symbol table (nm -D) of libregent.so")]
fn the_library_exports_only_regent_symbols() {
    let out = Command::new("nm")
        .args(["-D", "--defined-only", "--format=posix"])
        .arg(lib_dir().join("libregent.so"))
        .output()
        .expect("nm (binutils)");
    assert!(out.status.success(), "{}", text(&out));
    let exported: BTreeSet<String> = stdout(&out)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let strays: Vec<&String> = exported
        .iter()
        .filter(|s| !s.starts_with("regent_"))
        .collect();
    assert!(strays.is_empty(), "exported beyond regent_*: {strays:?}");

    let header = std::fs::read_to_string(repo_root().join("bindings/c/include/regent.h")).unwrap();
    let declared: BTreeSet<String> = header
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with("typedef") && !l.starts_with('#'))
        .flat_map(|l| {
            l.match_indices("regent_").filter_map(move |(at, _)| {
                let name: String = l[at..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                l[at + name.len()..].starts_with('(').then_some(name)
            })
        })
        .collect();
    assert!(declared.len() > 20, "{declared:?}");
    assert_eq!(exported, declared);
}

/// The header compiles as C and as C++ on its own (cbindgen's C++ guards).
#[test]
#[cfg_attr(
    windows,
    ignore = "compile-only (the same header everywhere), and no compiler runs under Wine"
)]
fn the_header_compiles_alone_in_c_and_cpp() {
    let build = tempfile::tempdir().unwrap();
    let probe = build.path().join("probe.c");
    let mut f = std::fs::File::create(&probe).unwrap();
    writeln!(
        f,
        "#include \"regent.h\"\nint main(void) {{ return REGENT_OK + (int)REGENT_ALREADY_ENROLLED - 21; }}"
    )
    .unwrap();
    drop(f);
    let include = repo_root().join("bindings/c/include");
    for (compiler, std) in [
        ("cc", "-std=c99"),
        ("cc", "-std=c11"),
        ("g++", "-std=c++17"),
    ] {
        let mut cmd = Command::new(compiler);
        if compiler == "g++" {
            cmd.args(["-x", "c++"]);
        }
        let out = cmd
            .args([
                std,
                "-Wall",
                "-Wextra",
                "-Wpedantic",
                "-Werror",
                "-fsyntax-only",
                "-I",
            ])
            .arg(&include)
            .arg(&probe)
            .output()
            .unwrap();
        assert!(out.status.success(), "{compiler} {std}: {}", text(&out));
    }
}

/// The C, C++ and Python examples in bindings/README.md compile (C and C++
/// with warnings as errors), so the documentation cannot rot.
#[test]
#[cfg_attr(
    windows,
    ignore = "compile-only (the same text everywhere), and no compiler runs under Wine"
)]
fn the_readme_examples_compile() {
    let readme = std::fs::read_to_string(repo_root().join("bindings/README.md")).unwrap();
    let build = tempfile::tempdir().unwrap();
    let mut checked = Vec::new();
    for (n, block) in readme.split("```").enumerate().skip(1).step_by(2) {
        let (lang, code_) = block.split_once('\n').unwrap();
        let (file, compiler): (&str, &[&str]) = match lang.trim() {
            "c" => ("example.c", &["cc", "-std=c11"]),
            "cpp" => ("example.cpp", &["g++", "-std=c++17"]),
            "python" => ("example.py", &["python3", "-m", "py_compile"]),
            _ => continue,
        };
        let path = build.path().join(format!("{n}-{file}"));
        std::fs::write(&path, code_).unwrap();
        let mut cmd = Command::new(compiler[0]);
        cmd.args(&compiler[1..]);
        if compiler[0] != "python3" {
            cmd.args(["-Wall", "-Wextra", "-Wpedantic", "-Werror", "-fsyntax-only"]);
            for dir in include_dirs() {
                cmd.arg("-I").arg(dir);
            }
        }
        let out = cmd
            .arg(&path)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "README {lang} example: {}",
            text(&out)
        );
        checked.push(lang.trim().to_owned());
    }
    checked.sort();
    checked.dedup();
    assert_eq!(checked, ["c", "cpp", "python"]);
}
