use super::*;

#[test]
fn windows_service_accounts_take_the_system_pipe_users_their_own() {
    assert_eq!(pipe_for_account("S-1-5-18"), PathBuf::from(SYSTEM_PIPE));
    assert_eq!(pipe_for_account("S-1-5-20"), PathBuf::from(SYSTEM_PIPE));
    assert_eq!(
        pipe_for_account("S-1-5-80-1-2-3-4-5"),
        PathBuf::from(SYSTEM_PIPE)
    );
    let user = "S-1-5-21-1-2-3-1001";
    assert_eq!(
        pipe_for_account(user),
        PathBuf::from(r"\\.\pipe\regent-agent-S-1-5-21-1-2-3-1001")
    );
    // The client looks for the agent under the same names.
    assert_eq!(SYSTEM_PIPE, regent_client::SYSTEM_PIPE);
    assert_eq!(pipe_for_account(user), regent_client::user_pipe(user));
}

#[test]
fn the_pipe_admits_the_listed_accounts_as_clients_only() {
    assert_eq!(pipe_sddl(&[], &[]), PIPE_SDDL);
    let sddl = pipe_sddl(
        &["S-1-5-21-1-2-3-1001".to_owned()],
        &["S-1-5-32-545".to_owned(), "S-1-5-18)(A;;GA;;;WD".to_owned()],
    );
    assert_eq!(
        sddl,
        format!("{PIPE_SDDL}(A;;0x12019b;;;S-1-5-21-1-2-3-1001)(A;;0x12019b;;;S-1-5-32-545)")
    );
}

#[cfg(unix)]
#[test]
fn unix_allow_users_merge_into_allow_uids() {
    let config = Config::parse(
        "[server]\nprofile = \"sentinel\"\nurl = \"https://a.example\"\n[ipc]\nallow_uids = [5]\nallow_users = [\"root\", \"5\", \"77\"]\n",
        Path::new("test.toml"),
    )
    .unwrap();
    let (policy, _) = policy_with_warnings(&config).unwrap();
    assert_eq!(policy.allow_uids, vec![5, 0, 77]);
    let config = Config::parse(
        "[server]\nprofile = \"sentinel\"\nurl = \"https://a.example\"\n[ipc]\nallow_users = [\"no-such-user-xyz\"]\n",
        Path::new("test.toml"),
    )
    .unwrap();
    let e = policy_with_warnings(&config).unwrap_err();
    assert_eq!(e.code, ErrorCode::Config);
    assert!(e.message.contains("no-such-user-xyz"), "{}", e.message);
}

#[cfg(windows)]
#[test]
fn windows_allow_uids_is_refused_with_the_fix() {
    let config = Config::parse(
        "[server]\nprofile = \"sentinel\"\nurl = \"https://a.example\"\n[ipc]\nallow_uids = [1000]\n",
        Path::new("test.toml"),
    )
    .unwrap();
    let e = policy_with_warnings(&config).unwrap_err();
    assert_eq!(e.code, ErrorCode::Config);
    assert!(e.message.contains("allow_users"), "{}", e.message);
}

/// The first pipe instance carries `FILE_FLAG_FIRST_PIPE_INSTANCE`
/// (interprocess sets it), so a second agent on the name is refused; on
/// Unix a live socket is never taken over.
#[cfg_attr(
    windows,
    ignore = "Wine 8.0 does not honour FILE_FLAG_FIRST_PIPE_INSTANCE (a second server shares the name); needs a real Windows"
)]
#[tokio::test]
async fn a_second_agent_on_the_same_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let socket = if cfg!(windows) {
        format!(r"\\.\pipe\regent-test-second-{}", std::process::id())
    } else {
        dir.path().join("agent.sock").display().to_string()
    };
    let config = Config::parse(
        &format!(
            "[server]\nprofile = \"sentinel\"\nurl = \"https://a.example\"\n[ipc]\nsocket = '{socket}'\n"
        ),
        Path::new("test.toml"),
    )
    .unwrap();
    let settings = IpcSettings::from_config(&config).unwrap();
    let _first = bind(&settings).unwrap();
    let e = bind(&settings).unwrap_err();
    assert_eq!(e.code, ErrorCode::Config, "{}", e.message);
    assert!(e.message.contains(&socket), "{}", e.message);
}
