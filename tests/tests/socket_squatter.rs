//! End to end (issue 18, item 11): a process of another user takes the
//! socket's name in a sticky world-writable directory (like `/tmp`) while no
//! agent runs, and answers `hello` and `token` with a fake token. Every
//! client — the `regent` CLI as root and as another uid, the C example, the
//! Python binding — refuses it with `AGENT_UNREACHABLE` before sending a
//! byte, naming the socket, the uid found and the fix; told the agent's uid
//! (`REGENT_AGENT_UID`, the Python `agent_uid`), they accept it, which shows
//! the squatter really speaks the protocol.
//!
//! Needs root (to run processes as uids 65533/65534), `cc` and `python3`.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use regent_proto::ErrorCode;
use regent_tests::{code, have_tool, regent_bin, regent_bin_for_any_user, repo_root, text};

const SQUATTER_UID: u32 = 65534;
const OTHER_UID: u32 = 65533;
const FAKE_TOKEN: &str = "FAKE-SQUATTER-TOKEN";
const WAIT: Duration = Duration::from_secs(20);

/// Answers `hello` and `token` like an agent would, and prints each request's
/// op name, one connection at a time.
const SQUATTER: &str = r#"
import json, os, socket, struct, sys, time
path = sys.argv[1]
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
os.chmod(path, 0o777)
server.listen(16)
print("listening", flush=True)
while True:
    conn, _ = server.accept()
    buf = b""
    while True:
        data = conn.recv(65536)
        if not data:
            break
        buf += data
        while len(buf) >= 4:
            n = struct.unpack(">I", buf[:4])[0]
            if len(buf) < 4 + n:
                break
            req = json.loads(buf[4:4 + n])
            buf = buf[4 + n:]
            op = req.get("op")
            print("got", op, flush=True)
            if op == "hello":
                ok = {"kind": "hello", "version": max(req.get("versions") or [1]), "agent": "squatter"}
            elif op == "token":
                ok = {"kind": "token", "access_token": "FAKE-SQUATTER-TOKEN", "token_type": "Bearer",
                      "expires_at_ms": int(time.time() * 1000) + 3600 * 1000}
            else:
                continue
            body = json.dumps({"id": req.get("id"), "ok": ok}).encode()
            conn.sendall(struct.pack(">I", len(body)) + body)
    conn.close()
"#;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The squatter process and the lines it printed.
struct Squatter {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Squatter {
    fn start(dir: &Path, socket: &Path) -> Squatter {
        let script = dir.join("squatter.py");
        std::fs::write(&script, SQUATTER).unwrap();
        chmod(&script, 0o644);
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(socket)
            .uid(SQUATTER_UID)
            .gid(SQUATTER_UID)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (ready, listening) = std::sync::mpsc::channel();
        let seen = Arc::clone(&lines);
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if line == "listening" {
                    let _ = ready.send(());
                } else {
                    seen.lock().unwrap().push(line);
                }
            }
        });
        listening
            .recv_timeout(WAIT)
            .expect("the squatter did not start listening");
        Squatter { child, lines }
    }

    fn seen(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for Squatter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The refusal: `AGENT_UNREACHABLE`, naming the socket, the uid and the fix.
#[track_caller]
fn assert_refused(out: &Output, socket: &Path, who: &str) {
    assert_eq!(
        code(out),
        i32::from(ErrorCode::AgentUnreachable.number()),
        "{who}: {}",
        text(out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        &socket.display().to_string(),
        &format!("runs as uid {SQUATTER_UID}"),
        &format!("REGENT_AGENT_UID={SQUATTER_UID}"),
    ] {
        assert!(
            stderr.contains(needle.as_str()),
            "{who}: {needle:?} missing: {stderr}"
        );
    }
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(FAKE_TOKEN),
        "{who}: {}",
        text(out)
    );
}

fn regent_as(bin: &Path, uid: u32, socket: &Path, agent_uid: Option<u32>) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(["token", "--min-valid", "1"])
        .env("REGENT_SOCKET", socket)
        .env_remove("REGENT_AGENT_UID")
        .stdin(Stdio::null());
    if let Some(agent_uid) = agent_uid {
        cmd.env("REGENT_AGENT_UID", agent_uid.to_string());
    }
    if uid != 0 {
        cmd.uid(uid).gid(uid);
    }
    cmd.output().unwrap()
}

/// libregent's directory (`target/<profile>/deps`).
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap().to_owned();
    assert!(
        deps.join("libregent.so").exists(),
        "{} has no libregent.so: build it with `cargo build -p regent-ffi`",
        deps.display()
    );
    deps
}

#[test]
fn every_client_refuses_a_squatter_of_another_uid() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this test as root"
        );
        eprintln!("skipped: needs root to run the squatter as another uid");
        return;
    }
    if !have_tool("cc") || !have_tool("python3") {
        return;
    }
    // /tmp/regent-squat-…/ (root, 0755) / shared (1777) / agent.sock
    let base = tempfile::Builder::new()
        .prefix("regent-squat-")
        .tempdir_in("/tmp")
        .unwrap();
    chmod(base.path(), 0o755);
    let shared = base.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o1777);
    let socket = shared.join("agent.sock");
    let squatter = Squatter::start(base.path(), &socket);

    // The CLI, as root and as another unprivileged uid.
    let out = regent_as(&regent_bin(), 0, &socket, None);
    assert_refused(&out, &socket, "regent token as root");
    let (_bin_dir, any_user_bin) = regent_bin_for_any_user();
    let out = regent_as(&any_user_bin, OTHER_UID, &socket, None);
    assert_refused(&out, &socket, "regent token as uid 65533");
    // Told to trust a different uid: still refused.
    let out = regent_as(&regent_bin(), 0, &socket, Some(OTHER_UID));
    assert_refused(&out, &socket, "regent token trusting 65533");

    // The C example.
    let build = tempfile::tempdir().unwrap();
    let exe = build.path().join("get_token");
    let lib = lib_dir();
    let compiled = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror"])
        .arg("-I")
        .arg(repo_root().join("bindings/c/include"))
        .arg(repo_root().join("bindings/c/examples/get_token.c"))
        .arg("-o")
        .arg(&exe)
        .arg("-L")
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lregent")
        .output()
        .unwrap();
    assert!(compiled.status.success(), "{}", text(&compiled));
    let c_example = |agent_uid: Option<u32>| {
        let mut cmd = Command::new(&exe);
        cmd.arg("1")
            .env("REGENT_SOCKET", &socket)
            .env_remove("REGENT_AGENT_UID")
            .stdin(Stdio::null());
        if let Some(uid) = agent_uid {
            cmd.env("REGENT_AGENT_UID", uid.to_string());
        }
        cmd.output().unwrap()
    };
    assert_refused(&c_example(None), &socket, "the C example");

    // The Python binding.
    let python = |agent_uid: &str| {
        let program = format!(
            "import regent, sys\n\
             try:\n\
             \x20   client = regent.Client(socket=sys.argv[1], connect_timeout=5{agent_uid})\n\
             except regent.RegentError as e:\n\
             \x20   sys.stderr.write(e.message + '\\n')\n\
             \x20   sys.exit(e.code)\n\
             print(client.token(1).value)\n"
        );
        Command::new("python3")
            .args(["-c", &program])
            .arg(&socket)
            .current_dir(repo_root().join("bindings/python"))
            .env("REGENT_LIBRARY", lib.join("libregent.so"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("REGENT_AGENT_UID")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    assert_refused(&python(""), &socket, "the Python binding");

    // Nothing reached the squatter. (Connections are served one at a time,
    // so the accepted run below is printed after anything sent before it.)
    // Told the agent's uid, each client accepts it: the squatter is real.
    let out = regent_as(&regent_bin(), 0, &socket, Some(SQUATTER_UID));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), FAKE_TOKEN);
    regent_tests::wait_until(WAIT, "the squatter to see the CLI's token request", || {
        squatter.seen().len() >= 2
    });
    assert_eq!(
        squatter.seen(),
        ["got hello", "got token"],
        "the refused clients sent nothing"
    );
    let out = c_example(Some(SQUATTER_UID));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("token: Bearer, "),
        "{}",
        text(&out)
    );
    let out = python(&format!(", agent_uid={SQUATTER_UID}"));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), FAKE_TOKEN);
}
