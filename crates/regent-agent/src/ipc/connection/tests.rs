#[cfg(windows)]
use super::admission::peer_of;
use super::*;
use crate::secret::secret;

fn grant(token: &str, scope: Option<&str>) -> Arc<Grant> {
    let now = SystemTime::now();
    Arc::new(Grant {
        access_token: secret(token.to_owned()),
        token_type: "Bearer".into(),
        received_at: now,
        expires_at: now + Duration::from_secs(300),
        refresh_token: None,
        refresh_expires_at: None,
        scope: scope.map(str::to_owned),
    })
}

#[test]
fn cached_token_frames_match_the_general_encoder() {
    for (token, scope) in [("abc", None), ("a\"b\\c\u{1}é", Some("read write"))] {
        let g = grant(token, scope);
        let cached = TokenFrame::new(&g).unwrap();
        for id in [0, 1, 9, 10, 12_345, u64::MAX] {
            let mut fast = Vec::new();
            cached.encode(id, &mut fast);
            let mut general = Vec::new();
            frame::encode(
                &Response {
                    id,
                    outcome: Outcome::Ok(Reply::Token(token_reply(&g))),
                },
                &mut general,
            )
            .unwrap();
            assert_eq!(fast, general, "id {id}");
        }
    }
}

#[tokio::test]
async fn the_shutdown_signal_fires_once_sent_and_not_before() {
    let (tx, mut rx) = broadcast::channel::<()>(1);
    let mut signal = ShutdownSignal::new(rx.recv());
    for _ in 0..3 {
        // Polled repeatedly while nothing was sent: pending.
        assert!(
            tokio::time::timeout(Duration::from_millis(10), &mut signal)
                .await
                .is_err()
        );
    }
    let send = async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        tx.send(()).unwrap();
    };
    tokio::time::timeout(Duration::from_secs(5), async {
        tokio::join!(&mut signal, send)
    })
    .await
    .expect("woken by the broadcast");
    // A dropped sender (the agent's drain) ends it too.
    let (tx, mut rx) = broadcast::channel::<()>(1);
    let mut signal = ShutdownSignal::new(rx.recv());
    assert!(
        tokio::time::timeout(Duration::from_millis(10), &mut signal)
            .await
            .is_err()
    );
    drop(tx);
    tokio::time::timeout(Duration::from_secs(5), signal)
        .await
        .expect("woken by the closed channel");
}

#[test]
fn hello_names_are_printable_and_short() {
    assert_eq!(name_problem("my-app 2.1 (é, 日本)"), None);
    assert_eq!(name_problem(&"x".repeat(MAX_NAME_CHARS)), None);
    let long = name_problem(&"x".repeat(MAX_NAME_CHARS + 1)).unwrap();
    assert!(long.contains("129 characters"), "{long}");
    for bad in [
        "a\nb",
        "a\rb",
        "\u{1b}[31m",
        "a\u{7}",
        "right\u{202e}left",
        "\u{200b}",
    ] {
        let problem = name_problem(bad).unwrap();
        assert!(
            problem.contains("non-printable character \\u{"),
            "{bad:?}: {problem}"
        );
        assert!(!problem.chars().any(char::is_control), "{problem:?}");
    }
}

#[test]
fn consumed_and_regrown_buffers_keep_what_remains() {
    // (What lies past the end cannot be read without unsafe code; this
    // checks that wiping keeps what must be kept.)
    let mut buf = b"SECRET-REGISTRATION-TOKEN|rest".to_vec();
    consume(&mut buf, 26);
    assert_eq!(buf, b"rest");
    consume(&mut buf, 10);
    assert!(buf.is_empty());
    let mut small = Vec::with_capacity(4);
    small.extend_from_slice(b"abcd");
    reserve_wiped(&mut small, 100);
    assert_eq!(small, b"abcd");
    assert!(small.capacity() >= 104);
}

#[test]
fn a_cached_frame_belongs_to_one_grant() {
    let first = grant("one", None);
    let cached = TokenFrame::new(&first).unwrap();
    assert!(cached.is_for(&first));
    assert!(cached.is_for(&Arc::clone(&first)));
    // Same token value, another grant (a re-issue or a renewal): not it.
    assert!(!cached.is_for(&grant("one", None)));
}

/// A real client on a real pipe: the agent reads its pid, its token's
/// user and enabled groups, and its image path. Under Wine (one
/// account) the client is this process, so the expected values are ours.
#[cfg(windows)]
#[tokio::test]
async fn a_pipe_client_is_identified_by_its_token_and_image() {
    use interprocess::local_socket::tokio::Stream as ClientStream;
    use interprocess::local_socket::traits::tokio::{Listener as _, Stream as _};
    use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
    let name = format!(r"\\.\pipe\regent-test-peer-{}", std::process::id());
    let listener = ListenerOptions::new()
        .name(name.as_str().to_fs_name::<GenericFilePath>().unwrap())
        .create_tokio()
        .unwrap();
    let connect_name = name.clone();
    let client = tokio::spawn(async move {
        let name = connect_name
            .as_str()
            .to_fs_name::<GenericFilePath>()
            .unwrap();
        ClientStream::connect(name).await.unwrap()
    });
    let server = listener.accept().await.unwrap();
    let _client = client.await.unwrap();
    let (peer, _) = peer_of(&server, false);
    eprintln!("identified: {peer:?}");
    assert_eq!(peer.pid, Some(std::process::id()));
    assert_eq!(
        peer.sid.as_deref(),
        Some(regent_client::win32::own_user().unwrap().as_str())
    );
    // Everyone (S-1-1-0) is enabled in every user's token.
    assert!(
        peer.group_sids.iter().any(|g| g == "S-1-1-0"),
        "{:?}",
        peer.group_sids
    );
    let image = peer.image.clone().unwrap();
    let own = super::super::peer::own_executable().unwrap();
    assert_eq!(
        super::super::peer::windows_path_key(&image.to_string_lossy()),
        super::super::peer::windows_path_key(&own.to_string_lossy()),
    );
    // The very file: its identity matches the running test binary's.
    match peer.lookup_executable(None) {
        super::super::peer::ExeLookup::Found(exe) => {
            assert_eq!(Some(exe.id), super::super::peer::file_id(&own));
        }
        other => panic!("{other:?}"),
    }
}
