use super::*;

fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
    Peer {
        uid: Some(uid),
        gid: Some(gid),
        pid: Some(1),
        groups: groups.to_vec(),
        ..Peer::default()
    }
}

#[test]
fn own_uid_and_root_are_admins_others_need_a_list() {
    let policy = Policy {
        own_uid: 1000,
        allow_uids: vec![1001],
        allow_gids: vec![50],
        own_sid: None,
        allow_sids: Vec::new(),
        allow_group_sids: Vec::new(),
        allow_executables: Vec::new(),
        own_exe: None,
    };
    assert_eq!(policy.access(&peer(1000, 1000, &[])), Access::Admin);
    assert_eq!(policy.access(&peer(0, 0, &[])), Access::Admin);
    assert_eq!(policy.access(&peer(1001, 1001, &[])), Access::Tokens);
    assert_eq!(policy.access(&peer(1002, 50, &[])), Access::Tokens);
    assert_eq!(policy.access(&peer(1003, 1003, &[50])), Access::Tokens);
    assert_eq!(policy.access(&peer(1004, 1004, &[51])), Access::Denied);
    assert_eq!(policy.access(&Peer::default()), Access::Denied);
}

/// Real files, so that identities can be compared: `app`, `other`,
/// `regent` (the agent's own executable) and a copy of `app` (same
/// bytes, another file) in a temporary directory.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        for name in ["app", "other", "regent", "app-copy"] {
            std::fs::write(dir.path().join(name), b"#!/bin/sh\n").unwrap();
        }
        Files { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn listing(&self, exes: &[&str]) -> Policy {
        Policy {
            own_uid: 1000,
            allow_uids: vec![1001],
            allow_gids: Vec::new(),
            own_sid: None,
            allow_sids: Vec::new(),
            allow_group_sids: Vec::new(),
            allow_executables: exes.iter().map(|e| self.path(e)).collect(),
            own_exe: Some(self.path("regent")),
        }
    }

    /// The process runs `name`, shown at the path of `shown_as`.
    fn runs(&self, name: &str, shown_as: &str) -> impl FnOnce() -> ExeLookup + use<> {
        let exe = Executable {
            path: self.path(shown_as),
            id: file_id(&self.path(name)).unwrap(),
        };
        move || ExeLookup::Found(exe)
    }

    fn found(&self, name: &str) -> impl FnOnce() -> ExeLookup + use<> {
        self.runs(name, name)
    }
}

fn admitted(access: Access) -> Result<Access, &'static str> {
    Ok(access)
}

fn outcome(decided: Result<Admitted, Refusal>) -> Result<Access, &'static str> {
    decided.map(|a| a.access).map_err(|r| r.reason)
}

#[test]
fn without_a_list_the_executable_is_never_looked_up() {
    let files = Files::new();
    let policy = files.listing(&[]);
    let decided = policy.decide(&peer(1000, 1000, &[]), || unreachable!());
    assert_eq!(
        decided,
        Ok(Admitted {
            access: Access::Admin,
            exe: None
        })
    );
}

#[test]
fn a_listed_executable_is_served_others_are_refused_by_name() {
    let files = Files::new();
    let policy = files.listing(&["app"]);
    let decided = policy.decide(&peer(1000, 1000, &[]), files.found("app"));
    assert_eq!(
        decided,
        Ok(Admitted {
            access: Access::Admin,
            exe: Some(files.path("app"))
        })
    );
    assert_eq!(
        outcome(policy.decide(&peer(1001, 1001, &[]), files.found("app"))),
        admitted(Access::Tokens)
    );
    let refusal = policy
        .decide(&peer(1000, 1000, &[]), files.found("other"))
        .unwrap_err();
    assert_eq!(refusal.reason, "connection refused: executable not allowed");
    let other = files.path("other").display().to_string();
    assert!(refusal.message.contains(&other), "{}", refusal.message);
    assert!(
        refusal.message.contains("[ipc] allow_executables"),
        "{}",
        refusal.message
    );
    assert!(refusal.message.contains("pid 1"), "{}", refusal.message);
}

#[test]
fn a_listed_path_must_be_the_very_file_the_process_runs() {
    // A bind mount (or a replaced file) shows the listed path for
    // another file: same name, same bytes, another inode.
    let files = Files::new();
    let policy = files.listing(&["app"]);
    let refusal = policy
        .decide(&peer(1001, 1001, &[]), files.runs("app-copy", "app"))
        .unwrap_err();
    assert_eq!(
        refusal.reason,
        "connection refused: executable is another file"
    );
    assert!(
        refusal.message.contains("bind mount"),
        "{}",
        refusal.message
    );
    // The agent's own path, too.
    assert_eq!(
        outcome(policy.decide(&peer(1000, 1000, &[]), files.runs("app-copy", "regent"))),
        Err("connection refused: executable is another file")
    );
}

#[test]
fn the_agents_own_executable_administers_but_fetches_no_tokens() {
    let files = Files::new();
    let policy = files.listing(&["app"]);
    let decided = outcome(policy.decide(&peer(1000, 1000, &[]), files.found("regent")));
    assert_eq!(decided, admitted(Access::Manage));
    assert!(Access::Manage.administers() && !Access::Manage.fetches_tokens());
    // Listed, the CLI is a program like any other: tokens too.
    let policy = files.listing(&["app", "regent"]);
    assert_eq!(
        outcome(policy.decide(&peer(1000, 1000, &[]), files.found("regent"))),
        admitted(Access::Admin)
    );
    // Another allowed uid running the CLI must be listed like any program.
    let policy = files.listing(&["app"]);
    assert!(
        policy
            .decide(&peer(1001, 1001, &[]), files.found("regent"))
            .is_err()
    );
    // A uid that is not allowed at all is refused before any lookup.
    let refusal = policy
        .decide(&peer(1002, 1002, &[]), || unreachable!())
        .unwrap_err();
    assert_eq!(refusal.reason, "connection refused: uid not allowed");
}

#[test]
fn root_is_never_restricted_by_the_list() {
    let files = Files::new();
    let policy = files.listing(&["app"]);
    assert_eq!(
        outcome(policy.decide(&peer(0, 0, &[]), || unreachable!())),
        admitted(Access::Admin)
    );
}

#[test]
fn deleted_unknown_or_foreign_executables_fail_closed() {
    let files = Files::new();
    let policy = files.listing(&["app"]);
    let app = files.path("app");
    let refusal = policy
        .decide(&peer(1000, 1000, &[]), || ExeLookup::Deleted(app.clone()))
        .unwrap_err();
    assert_eq!(
        refusal.reason,
        "connection refused: executable deleted or replaced"
    );
    assert!(
        refusal.message.contains(&app.display().to_string()),
        "{}",
        refusal.message
    );
    assert!(refusal.message.contains("restart"), "{}", refusal.message);
    let refusal = policy
        .decide(&peer(1000, 1000, &[]), || {
            ExeLookup::Unknown("this platform has no /proc/PID/exe".into())
        })
        .unwrap_err();
    assert_eq!(refusal.reason, "connection refused: executable unknown");
    assert!(
        refusal.message.contains("no /proc/PID/exe")
            && refusal.message.contains("allow_executables"),
        "{}",
        refusal.message
    );
    let refusal = policy
        .decide(&peer(1000, 1000, &[]), || ExeLookup::ForeignNamespace {
            path: app.clone(),
            namespace: "mnt:[1]".into(),
        })
        .unwrap_err();
    assert_eq!(
        refusal.reason,
        "connection refused: another mount namespace"
    );
    assert!(refusal.message.contains("mnt:[1]"), "{}", refusal.message);
}

#[test]
fn paths_are_shown_with_control_characters_escaped() {
    let forged = Path::new("/tmp/x\n2026-01-01 INFO forged\u{1b}[2J");
    let text = shown(forged);
    assert!(!text.chars().any(char::is_control), "{text:?}");
    assert!(text.contains("\\n") && text.contains("\\u{1b}"), "{text}");
    // Invisible reordering is escaped too; a Windows path stays readable.
    assert_eq!(shown(Path::new("a\u{202e}b")), "a\\u{202e}b");
    assert_eq!(
        shown(Path::new(r"C:\Program Files\app.exe")),
        r"C:\Program Files\app.exe"
    );
}

#[test]
fn the_kernels_deleted_marker_is_recognised() {
    assert_eq!(
        split_deleted(PathBuf::from("/usr/bin/app (deleted)")),
        (PathBuf::from("/usr/bin/app"), true)
    );
    assert_eq!(
        split_deleted(PathBuf::from("/usr/bin/app")),
        (PathBuf::from("/usr/bin/app"), false)
    );
}

#[cfg(unix)]
#[test]
fn configured_paths_are_canonicalised_through_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real-app");
    std::fs::write(&real, b"#!/bin/sh\n").unwrap();
    let link = dir.path().join("app");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let missing = dir.path().join("./not-installed-yet");
    let (resolved, warnings) = resolve_executables(&[link, missing]);
    assert_eq!(resolved[0], std::fs::canonicalize(&real).unwrap());
    assert_eq!(resolved[1], dir.path().join("not-installed-yet"));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("not-installed-yet"), "{warnings:?}");
}

#[cfg(target_os = "linux")]
#[test]
fn this_process_is_found_through_proc() {
    let me = Peer {
        uid: Some(current_uid()),
        gid: None,
        pid: Some(std::process::id()),
        ..Peer::default()
    };
    // Deleted too: another build may replace the test binary mid-run.
    match me.lookup_executable(None) {
        ExeLookup::Found(Executable { path, .. }) | ExeLookup::Deleted(path) => {
            assert_eq!(path, own_executable().unwrap());
        }
        other => panic!("{other:?}"),
    }
    let gone = Peer {
        pid: Some(u32::MAX / 2),
        ..me
    };
    assert!(matches!(
        gone.lookup_executable(None),
        ExeLookup::Unknown(_)
    ));
}

// --- Windows accounts: pure logic with synthetic SIDs (runs everywhere) ---

const AGENT: &str = "S-1-5-21-1-2-3-1000";
const ALICE: &str = "S-1-5-21-1-2-3-1001";
const BOB: &str = "S-1-5-21-1-2-3-1002";
const APPS: &str = "S-1-5-21-1-2-3-2001";

fn account(sid: &str, groups: &[&str]) -> Peer {
    Peer {
        pid: Some(7),
        sid: Some(sid.to_owned()),
        group_sids: groups.iter().map(|g| (*g).to_owned()).collect(),
        ..Peer::default()
    }
}

fn windows_policy() -> Policy {
    Policy {
        own_uid: 0,
        allow_uids: Vec::new(),
        allow_gids: Vec::new(),
        own_sid: Some(AGENT.to_owned()),
        allow_sids: vec![ALICE.to_owned()],
        allow_group_sids: vec![APPS.to_owned()],
        allow_executables: Vec::new(),
        own_exe: None,
    }
}

#[test]
fn windows_own_account_system_and_elevated_admins_administer() {
    let policy = windows_policy();
    assert_eq!(policy.access(&account(AGENT, &[])), Access::Admin);
    // SIDs compare case-insensitively (`s-1-…` is the same SID).
    assert_eq!(
        policy.access(&account(&AGENT.to_lowercase(), &[])),
        Access::Admin
    );
    assert_eq!(
        policy.access(&account(LOCAL_SYSTEM_SID, &[])),
        Access::Admin
    );
    assert_eq!(
        policy.access(&account(BOB, &["S-1-1-0", ADMINISTRATORS_SID])),
        Access::Admin
    );
    // The uid rules never apply to a Windows peer: no uid 0 shortcut.
    let mut with_uid = account(BOB, &[]);
    with_uid.uid = Some(0);
    assert_eq!(policy.access(&with_uid), Access::Denied);
}

#[test]
fn windows_allow_users_and_enabled_groups_fetch_tokens_others_are_refused() {
    let policy = windows_policy();
    assert_eq!(policy.access(&account(ALICE, &[])), Access::Tokens);
    assert_eq!(
        policy.access(&account(BOB, &["S-1-1-0", APPS])),
        Access::Tokens
    );
    // Bob's token without the group enabled (a deny-only group is never
    // in `group_sids`): refused, named, with the keys to change.
    let refusal = policy
        .decide(&account(BOB, &["S-1-1-0", "S-1-5-11"]), || unreachable!())
        .unwrap_err();
    assert_eq!(refusal.reason, "connection refused: account not allowed");
    assert!(refusal.message.contains(BOB), "{}", refusal.message);
    assert!(
        refusal.message.contains("[ipc] allow_users") && refusal.message.contains("allow_groups"),
        "{}",
        refusal.message
    );
}

#[test]
fn windows_a_client_whose_account_cannot_be_read_is_refused() {
    let policy = windows_policy();
    let unread = Peer {
        pid: Some(7),
        ..Peer::default()
    };
    assert_eq!(policy.access(&unread), Access::Denied);
    assert!(policy.decide(&unread, || unreachable!()).is_err());
}

#[test]
fn windows_allow_executables_rules_match_unix() {
    let files = Files::new();
    let mut policy = windows_policy();
    policy.allow_executables = vec![files.path("app")];
    policy.own_exe = Some(files.path("regent"));
    let runs = |peer: &Peer, name: &str| outcome(policy.decide(peer, files.found(name)));
    // Listed: served with the account's access.
    assert_eq!(runs(&account(ALICE, &[]), "app"), admitted(Access::Tokens));
    assert_eq!(runs(&account(AGENT, &[]), "app"), admitted(Access::Admin));
    // The agent's own regent.exe administers for the agent's account only.
    assert_eq!(
        runs(&account(AGENT, &[]), "regent"),
        admitted(Access::Manage)
    );
    assert!(runs(&account(ALICE, &[]), "regent").is_err());
    // Anything else is refused by name.
    assert_eq!(
        runs(&account(AGENT, &[]), "other"),
        Err("connection refused: executable not allowed")
    );
    // LocalSystem is never restricted, like root.
    assert_eq!(
        outcome(policy.decide(&account(LOCAL_SYSTEM_SID, &[]), || unreachable!())),
        admitted(Access::Admin)
    );
    // An image that cannot be read fails closed.
    let refusal = policy
        .decide(&account(AGENT, &[]), || {
            ExeLookup::Unknown("the image path of process 7 could not be read".into())
        })
        .unwrap_err();
    assert_eq!(refusal.reason, "connection refused: executable unknown");
}

#[test]
fn windows_paths_compare_as_windows_does() {
    let key = windows_path_key;
    assert_eq!(
        key(r"\\?\C:\Program Files\App\app.exe"),
        key(r"c:\program files\app\APP.EXE")
    );
    assert_eq!(key("C:/Tools/app.exe"), key(r"C:\Tools\app.exe"));
    assert_eq!(
        key(r"\\?\UNC\server\share\app.exe"),
        key(r"\\SERVER\share\app.exe")
    );
    assert_ne!(key(r"C:\Tools\app.exe"), key(r"C:\Tools\app2.exe"));
    // One character to one: `ß` is not widened to `SS`.
    assert_ne!(key(r"C:\straße.exe"), key(r"C:\STRASSE.EXE"));
}

#[test]
fn sids_are_recognised_by_their_syntax() {
    for sid in [AGENT, "S-1-5-18", "s-1-5-32-544", "S-1-1-0"] {
        assert!(is_sid(sid), "{sid}");
    }
    for text in [
        "S-1-",
        "S-1-5-",
        "S-1-5--18",
        "S-1-5-x",
        "alice",
        "S-1-5-18)(A;;GA;;;WD",
    ] {
        assert!(!is_sid(text), "{text}");
    }
}

#[test]
fn windows_account_names_resolve_to_sids_of_the_right_kind() {
    let lookup = |name: &str| match name {
        "alice" | r"HOST\alice" => Ok((ALICE.to_owned(), AccountKind::User)),
        "licensed-apps" => Ok((APPS.to_owned(), AccountKind::Group)),
        "HOST" => Ok(("S-1-5-21-1-2-3".to_owned(), AccountKind::Other)),
        _ => Err(
            "No mapping between account names and security IDs was done. (os error 1332)"
                .to_owned(),
        ),
    };
    let users = [
        "alice".to_owned(),
        r"HOST\alice".to_owned(),
        "s-1-5-21-9-9-9-1500".to_owned(),
    ];
    assert_eq!(
        resolve_accounts(&users, AccountList::Users, lookup).unwrap(),
        vec![ALICE, ALICE, "S-1-5-21-9-9-9-1500"]
    );
    assert_eq!(
        resolve_accounts(&["licensed-apps".to_owned()], AccountList::Groups, lookup).unwrap(),
        vec![APPS]
    );
    let unknown =
        resolve_accounts(&["mallory".to_owned()], AccountList::Users, lookup).unwrap_err();
    assert!(
        unknown.contains("[ipc] allow_users")
            && unknown.contains("\"mallory\"")
            && unknown.contains("SID"),
        "{unknown}"
    );
    let group_as_user =
        resolve_accounts(&["licensed-apps".to_owned()], AccountList::Users, lookup).unwrap_err();
    assert!(group_as_user.contains("allow_groups"), "{group_as_user}");
    let user_as_group =
        resolve_accounts(&["alice".to_owned()], AccountList::Groups, lookup).unwrap_err();
    assert!(user_as_group.contains("allow_users"), "{user_as_group}");
    assert!(resolve_accounts(&["HOST".to_owned()], AccountList::Users, lookup).is_err());
    let bad_sid =
        resolve_accounts(&["S-1-5-x".to_owned()], AccountList::Users, lookup).unwrap_err();
    assert!(bad_sid.contains("not a valid SID"), "{bad_sid}");
}

#[cfg(unix)]
#[test]
fn unix_users_resolve_by_name_and_number() {
    assert_eq!(
        resolve_users(&["root".into(), "4242".into()]).unwrap(),
        vec![0, 4242]
    );
    let e = resolve_users(&["no-such-user-xyz".into()]).unwrap_err();
    assert!(
        e.contains("[ipc] allow_users") && e.contains("no-such-user-xyz"),
        "{e}"
    );
}

#[cfg(unix)]
#[test]
fn groups_resolve_by_number_and_name() {
    assert_eq!(resolve_groups(&["42".into()]).unwrap(), vec![42]);
    assert_eq!(resolve_groups(&["root".into()]).unwrap(), vec![0]);
    let e = resolve_groups(&["no-such-group-xyz".into()]).unwrap_err();
    assert!(e.contains("no-such-group-xyz"));
}
