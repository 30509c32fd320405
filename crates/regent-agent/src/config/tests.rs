#[cfg(unix)]
use super::file::check_file_owner_and_mode;
use super::*;

fn parse(text: &str) -> Result<Config> {
    Config::parse(text, Path::new("/etc/regent/regent.toml"))
}

#[test]
fn minimal_sentinel_config_gets_defaults() {
    let c = parse("[server]\nprofile = \"sentinel\"\nurl = \"https://ems.example.com\"\n").unwrap();
    assert_eq!(c.server.profile, Profile::Sentinel);
    assert_eq!(c.store.kind, StoreKind::Keychain);
    assert_eq!(c.refresh, RefreshConfig::default());
    assert_eq!(c.instances.mode, InstanceMode::Shared);
    assert_eq!(c.ipc.socket_mode_bits(), Some(0o600));
}

/// Regression (issue 18, item 1): `http://localhost` was accepted as
/// loopback and resolved through the system resolver.
#[test]
fn server_urls_proxy_and_ca_file_are_checked_by_key() {
    let with = |line: &str| {
        parse(&format!(
            "[server]\nprofile = \"oauth2\"\nclient_id = \"c\"\n{line}\n"
        ))
    };
    let e =
        parse("[server]\nprofile = \"sentinel\"\nurl = \"http://localhost:8600/\"\n").unwrap_err();
    assert_eq!(e.code, ErrorCode::Config);
    assert!(
        e.message
            .contains("[server] url: refusing plain http:// to localhost")
            && e.message.contains("use http://127.0.0.1:8600/"),
        "{}",
        e.message
    );
    let e = with("token_url = \"http://localhost./t\"").unwrap_err();
    assert!(e.message.contains("[server] token_url: "), "{}", e.message);
    let e = with("issuer = \"http://auth.example\"").unwrap_err();
    assert!(e.message.contains("[server] issuer: "), "{}", e.message);
    assert!(with("token_url = \"http://127.0.0.1:9/t\"").is_ok());

    let ok = "token_url = \"https://a.example/t\"";
    let c = with(&format!("{ok}\nproxy = \"http://proxy.corp:3128\"")).unwrap();
    assert!(matches!(
        c.server.proxy_setting(),
        crate::upstream::ProxySetting::Url(_)
    ));
    let c = with(&format!("{ok}\nproxy = \"none\"")).unwrap();
    assert_eq!(
        c.server.proxy_setting(),
        crate::upstream::ProxySetting::Direct
    );
    let c = with(ok).unwrap();
    assert_eq!(
        c.server.proxy_setting(),
        crate::upstream::ProxySetting::Environment
    );
    let e = with(&format!("{ok}\nproxy = \"socks5://127.0.0.1:1\"")).unwrap_err();
    assert!(e.message.contains("[server] proxy: "), "{}", e.message);
    let e = with(&format!("{ok}\nproxy = \"http://u:pw-secret@p:1\"")).unwrap_err();
    assert!(!e.message.contains("pw-secret"), "{}", e.message);
    let e = with(&format!("{ok}\nca_file = \"\"")).unwrap_err();
    assert!(e.message.contains("[server] ca_file"), "{}", e.message);
    let c = with(&format!("{ok}\nca_file = \"/etc/regent/ca.pem\"")).unwrap();
    assert_eq!(
        c.server.ca_file.as_deref(),
        Some(Path::new("/etc/regent/ca.pem"))
    );
}

#[test]
fn unknown_key_names_key_line_and_file() {
    let e = parse("[server]\nprofile = \"sentinel\"\nurl = \"https://x.example\"\nurll = 1\n")
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Config);
    assert!(
        e.message.contains("/etc/regent/regent.toml"),
        "{}",
        e.message
    );
    assert!(e.message.contains("urll"), "{}", e.message);
    assert!(e.message.contains("line 4"), "{}", e.message);
}

#[test]
fn missing_required_key_gives_example() {
    let e = parse("[server]\nprofile = \"sentinel\"\n").unwrap_err();
    assert!(e.message.contains("url is required"), "{}", e.message);
    assert!(
        e.message.contains("profile = \"sentinel\""),
        "{}",
        e.message
    );
    let e =
        parse("[server]\nprofile = \"oauth2\"\ntoken_url = \"https://a.example/t\"\n").unwrap_err();
    assert!(e.message.contains("client_id is required"), "{}", e.message);
    let e = parse("[store]\nkind = \"file\"\n").unwrap_err();
    assert!(e.message.contains("server"), "{}", e.message);
}

#[test]
fn out_of_range_values_are_refused() {
    let base =
        "[server]\nprofile = \"oauth2\"\ntoken_url = \"https://a.example/t\"\nclient_id = \"c\"\n";
    assert!(parse(&format!("{base}max_active_tokens = 201\n")).is_err());
    assert!(parse(&format!("{base}max_active_tokens = 200\n")).is_ok());
    assert!(parse(&format!("{base}[refresh]\nahead = 1.5\n")).is_err());
    assert!(parse(&format!("{base}[ipc]\nmode = \"999\"\n")).is_err());
    for open in ["0666", "0606", "0601", "0o664"] {
        let e = parse(&format!("{base}[ipc]\nmode = \"{open}\"\n")).unwrap_err();
        assert!(
            e.message.contains("[ipc] socket_mode") && e.message.contains("every user"),
            "{open}: {}",
            e.message
        );
    }
    assert!(parse(&format!("{base}[ipc]\nmode = \"0660\"\n")).is_ok());
    // `socket_mode` is the name (issue 14: `[instances] mode` is the slot
    // mode); `mode`, the 0.1 name, still reads the same.
    let new = parse(&format!("{base}[ipc]\nsocket_mode = \"0660\"\n")).unwrap();
    let old = parse(&format!("{base}[ipc]\nmode = \"0660\"\n")).unwrap();
    assert_eq!(new.ipc.socket_mode_bits(), Some(0o660));
    assert_eq!(old.ipc.socket_mode_bits(), Some(0o660));
    assert!(parse(&format!("{base}[instances]\nmax = 3\n")).is_err());
    assert!(
        parse(&format!(
            "{base}[instances]\nmode = \"per-instance\"\nmax = 3\n"
        ))
        .is_ok()
    );
}

#[test]
fn absurd_durations_are_refused_by_key_value_and_range() {
    let base = "[server]\nprofile = \"sentinel\"\nurl = \"https://x.example\"\n";
    let cases = [
        (
            "[server]\nconnect_timeout = 0\n",
            "[server] connect_timeout = 0",
            "1 to 300 seconds",
        ),
        (
            "[server]\nrequest_timeout = 18446744073709551615\n",
            "[server] request_timeout = 18446744073709551615",
            "1 to 600 seconds",
        ),
        (
            "[store]\ntimeout = 0\n",
            "[store] timeout = 0",
            "1 to 300 seconds",
        ),
        (
            "[refresh]\nmargin = 3601\n",
            "[refresh] margin = 3601",
            "0 to 3600 seconds (1 hour)",
        ),
        (
            "[refresh]\ndemand_window = 0\n",
            "[refresh] demand_window = 0",
            "1 to 86400 seconds (1 day)",
        ),
        (
            "[refresh]\nbackoff_max = 18446744073709551615\n",
            "[refresh] backoff_max = 18446744073709551615",
            "1 to 86400",
        ),
        (
            "[refresh]\nbackoff_min = 0\n",
            "[refresh] backoff_min = 0",
            "1 to 3600",
        ),
        (
            "[refresh]\nkeepalive = 59\n",
            "[refresh] keepalive = 59",
            "60 to 31536000 seconds (365 days)",
        ),
        (
            "[instances]\nlease_grace = 86401\n",
            "[instances] lease_grace = 86401",
            "0 to 86400",
        ),
        (
            "[ipc]\nread_timeout = 0\n",
            "[ipc] read_timeout = 0",
            "1 to 3600",
        ),
    ];
    for (section, key_value, range) in cases {
        let text = if section.starts_with("[server]") {
            format!("{base}{}", section.trim_start_matches("[server]\n"))
        } else {
            format!("{base}{section}")
        };
        let e = parse(&text).unwrap_err();
        assert_eq!(e.code, ErrorCode::Config);
        assert!(e.message.contains(key_value), "{key_value}: {}", e.message);
        assert!(e.message.contains(range), "{range}: {}", e.message);
        assert!(e.message.contains("out of range"), "{}", e.message);
    }
    // The edges are accepted, and the defaults lie inside every range.
    let edges = format!(
        "{base}connect_timeout = 300\nrequest_timeout = 1\n[refresh]\nmargin = 0\nkeepalive = 60\nbackoff_min = 1\nbackoff_max = 86400\n[instances]\nlease_grace = 0\n"
    );
    let c = parse(&edges).unwrap();
    assert!(
        c.duration_keys()
            .iter()
            .all(|b| b.min <= b.value && b.value <= b.max)
    );
    let d = parse(base).unwrap();
    assert!(
        d.duration_keys()
            .iter()
            .all(|b| b.min <= b.value && b.value <= b.max)
    );
}

#[cfg(unix)]
#[test]
fn the_config_file_must_not_be_writable_by_others() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("regent.toml");
    std::fs::write(
        &path,
        "[server]\nprofile = \"sentinel\"\nurl = \"https://x.example\"\n",
    )
    .unwrap();
    for mode in [0o600, 0o644, 0o640, 0o444] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        Config::load(&path).unwrap_or_else(|e| panic!("{mode:o}: {e}"));
    }
    for (mode, who) in [
        (0o666, "group- and world-writable"),
        (0o664, "group-writable"),
        (0o646, "world-writable"),
    ] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = Config::load(&path).unwrap_err();
        assert_eq!(e.code, ErrorCode::Config);
        assert!(e.message.contains(&path.display().to_string()), "{e}");
        assert!(e.message.contains(who), "{e}");
        assert!(
            e.message
                .contains(&format!("chmod go-w {}", path.display())),
            "{e}"
        );
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let me = crate::ipc::peer::current_uid();
    if me == 0 {
        // Root's agent and a file of another user's.
        nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let e = Config::load(&path).unwrap_err();
        assert!(e.message.contains("belongs to uid 65534"), "{e}");
        assert!(e.message.contains("chown root"), "{e}");
    } else {
        // An agent under another uid and a file of ours.
        let meta = std::fs::metadata(&path).unwrap();
        let e = check_file_owner_and_mode(&path, &meta, me + 1).unwrap_err();
        assert!(e.message.contains(&format!("belongs to uid {me}")), "{e}");
    }
}

#[test]
fn allow_executables_must_be_absolute_paths() {
    // Absolute on this platform (a drive letter on Windows).
    let (app, other) = if cfg!(windows) {
        ("C:/usr/bin/app", "C:/opt/x/bin/y")
    } else {
        ("/usr/bin/app", "/opt/x/bin/y")
    };
    let base = "[server]\nprofile = \"sentinel\"\nurl = \"https://x.example\"\n[ipc]\n";
    let c = parse(&format!(
        "{base}allow_executables = [\"{app}\", \"{other}\"]\n"
    ))
    .unwrap();
    assert_eq!(
        c.ipc.allow_executables,
        vec![PathBuf::from(app), PathBuf::from(other)]
    );
    assert!(parse(base).unwrap().ipc.allow_executables.is_empty());
    let e = parse(&format!("{base}allow_executables = [\"bin/app\"]\n")).unwrap_err();
    assert_eq!(e.code, ErrorCode::Config);
    assert!(e.message.contains("allow_executables"), "{}", e.message);
    assert!(e.message.contains("not an absolute path"), "{}", e.message);
    assert!(e.message.contains("bin/app"), "{}", e.message);
}

#[test]
fn log_formats_include_journald() {
    let base = "[server]\nprofile = \"sentinel\"\nurl = \"https://x.example\"\n";
    let c = parse(&format!("{base}[log]\nformat = \"journald\"\n")).unwrap();
    assert_eq!(c.log.format, LogFormat::Journald);
    let e = parse(&format!("{base}[log]\nformat = \"syslog\"\n")).unwrap_err();
    assert!(e.message.contains("line 5"), "{}", e.message);
}

#[test]
fn the_example_file_parses() {
    let text = include_str!("../../../../regent.example.toml");
    let c = parse(text).unwrap();
    assert_eq!(c.server.profile, Profile::Sentinel);
}
