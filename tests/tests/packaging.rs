//! The `.deb` builds from the cargo-deb metadata and installs into a scratch
//! root (`dpkg -x`) with the right layout, permissions, conffile and
//! maintainer scripts.
//!
//! A release build is too slow for the test suite, so the package is built
//! with `cargo deb --no-build` from a scratch target directory whose
//! `release/regent` and `release/regentd` are hard links to the debug binaries
//! the tests already use (cargo-deb strips its own copies). `scripts/package.sh` builds the real one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};

use regent_tests::{have_tool, regent_bin, regentd_bin, repo_root, text};

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed:\n{}", text(&out));
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `dpkg-deb -c` line for `path`: (mode string, owner/group).
fn listed<'a>(listing: &'a str, path: &str) -> (&'a str, &'a str) {
    let line = listing
        .lines()
        .find(|l| l.ends_with(&format!(" .{path}")))
        .unwrap_or_else(|| panic!("{path} is not in the package:\n{listing}"));
    let mut fields = line.split_whitespace();
    (fields.next().unwrap(), fields.next().unwrap())
}

#[test]
fn the_deb_builds_and_installs_into_a_scratch_root() {
    if !have_tool("cargo-deb") || !have_tool("dpkg-deb") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let release = scratch.path().join("target/release");
    std::fs::create_dir_all(&release).unwrap();
    for (name, built) in [("regent", regent_bin()), ("regentd", regentd_bin())] {
        let binary = release.join(name);
        if std::fs::hard_link(&built, &binary).is_err() {
            std::fs::copy(&built, &binary).unwrap();
        }
    }
    let deb = scratch.path().join("regent.deb");
    run(Command::new("cargo")
        .args([
            "deb",
            "--no-build",
            "--strip",
            "--fast",
            "-p",
            "regent-cli",
            "-o",
        ])
        .arg(&deb)
        .env("CARGO_TARGET_DIR", scratch.path().join("target"))
        .current_dir(repo_root()));

    // Control data: name, dependencies, the conffile.
    let info = stdout(&run(Command::new("dpkg-deb").arg("-I").arg(&deb)));
    assert!(info.contains("Package: regent\n"), "{info}");
    assert!(info.contains("Depends: adduser"), "{info}");
    let control = scratch.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/regent/regent.toml");
    for script in ["postinst", "prerm", "postrm"] {
        let path = control.join(script);
        run(Command::new("sh").arg("-n").arg(&path));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o111, 0o111, "{script} is not executable");
    }
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(postinst.contains("adduser --system"), "{postinst}");
    assert!(
        postinst.contains("install -d -o regent -g regent -m 0700 /var/lib/regent/provisioning"),
        "{postinst}"
    );
    assert!(
        postinst.contains("deb-systemd-helper enable regent.service"),
        "{postinst}"
    );
    let prerm = std::fs::read_to_string(control.join("prerm")).unwrap();
    assert!(
        prerm.contains("deb-systemd-invoke stop regent.service"),
        "{prerm}"
    );
    let postrm = std::fs::read_to_string(control.join("postrm")).unwrap();
    assert!(postrm.contains("rm -rf /var/lib/regent"), "{postrm}");

    // Layout and permissions, as dpkg would install them.
    let listing = stdout(&run(Command::new("dpkg-deb").arg("-c").arg(&deb)));
    for (path, mode) in [
        ("/usr/bin/regent", "-rwxr-xr-x"),
        ("/usr/bin/regentd", "-rwxr-xr-x"),
        ("/etc/regent/regent.toml", "-rw-r--r--"),
        ("/usr/lib/systemd/system/regent.service", "-rw-r--r--"),
        ("/usr/lib/systemd/user/regent.service", "-rw-r--r--"),
        ("/usr/share/doc/regent/operations.md", "-rw-r--r--"),
        ("/usr/share/doc/regent/regent.example.toml", "-rw-r--r--"),
    ] {
        assert_eq!(
            listed(&listing, path),
            (mode, "0/0"),
            "{path}: mode, owner root"
        );
    }

    // Into a scratch root: the files are the ones in the tree.
    let root = scratch.path().join("root");
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root));
    let repo = repo_root();
    for (installed, source) in [
        ("etc/regent/regent.toml", "packaging/config/regent.toml"),
        (
            "usr/lib/systemd/system/regent.service",
            "packaging/systemd/regent.service",
        ),
        (
            "usr/lib/systemd/user/regent.service",
            "packaging/systemd/user/regent.service",
        ),
    ] {
        assert_eq!(
            std::fs::read(root.join(installed)).unwrap(),
            std::fs::read(repo.join(source)).unwrap(),
            "{installed}"
        );
    }
    // The installed binary runs, and the packaged config is valid for it.
    let config = root.join("etc/regent/regent.toml");
    let out = run(Command::new(root.join("usr/bin/regent"))
        .args(["agent", "--check", "--config"])
        .arg(&config));
    assert!(stdout(&out).contains("valid"), "{}", text(&out));
    let packaged = std::fs::read_to_string(&config).unwrap();
    for line in [
        "kind = \"file\"",
        "dir = \"/var/lib/regent\"",
        "socket = \"/run/regent/agent.sock\"",
        "dir = \"/var/lib/regent/provisioning\"",
    ] {
        assert!(
            packaged.contains(line),
            "{line} missing from the packaged config"
        );
    }
}

#[test]
fn the_operator_guide_covers_every_error_code() {
    let guide = std::fs::read_to_string(repo_root().join("docs/operations.md")).unwrap();
    for code in regent_proto::ErrorCode::ALL {
        let row = format!("| {} | {} |", code.number(), code.name());
        assert!(
            guide.contains(&row),
            "docs/operations.md has no troubleshooting row for {}",
            code.name()
        );
    }
}
