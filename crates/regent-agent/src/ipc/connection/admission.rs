//! Who is connecting (peer credentials, the pinned process) and whether the
//! policy admits them; a refused peer is told why.

use super::*;

#[cfg(target_os = "linux")]
pub(super) type PeerPidfd = std::os::fd::OwnedFd;

#[cfg(target_os = "macos")]
pub(super) type PeerPidfd = crate::ipc::macos::Stamp;

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub(super) type PeerPidfd = ();

/// A peer that passed the policy, ready for [`handle`].
pub(crate) struct Admission {
    pub(super) peer: Peer,
    pub(super) pidfd: Option<PeerPidfd>,
    /// Linux: a pidfd was asked for (the policy checked executables when the
    /// peer connected). Without one, a reload that starts checking
    /// executables closes the connection (see `recheck_policy`).
    pub(super) pinned_for_executables: bool,
    pub(super) admitted: Admitted,
    pub(super) generation: u64,
}

/// Reads the peer's credentials from the kernel: uid, gid, pid, and on
/// Linux its supplementary groups and, when `pin` (the policy checks
/// executables), a pidfd: it is only needed to check a program again after a
/// reload, and it would double the descriptors every connection holds.
#[cfg(not(windows))]
pub(super) fn peer_of(stream: &Stream, pin: bool) -> (Peer, Option<PeerPidfd>) {
    let _ = pin;
    match stream.peer_creds() {
        #[cfg(unix)]
        Ok(creds) => {
            let peer = Peer {
                uid: creds.euid(),
                gid: creds.egid(),
                pid: creds.pid().and_then(|p| u32::try_from(p).ok()),
                groups: creds.groups().map(<[u32]>::to_vec).unwrap_or_default(),
                ..Peer::default()
            };
            #[cfg(target_os = "linux")]
            {
                use std::os::fd::AsFd;
                let mut peer = peer;
                let Stream::UdSocket(socket) = stream;
                let fd = socket.as_fd();
                match crate::ipc::creds::peer_groups(fd) {
                    Ok(Some(groups)) => peer.groups = groups,
                    Ok(None) => {
                        // Kernels before 4.13: the account's groups.
                        if let Some(uid) = peer.uid {
                            peer.groups = crate::ipc::creds::groups_of_user(uid);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, uid = peer.uid, "cannot read the peer's supplementary groups; only its primary group counts for [ipc] allow_groups");
                    }
                }
                let pidfd = if pin {
                    crate::ipc::creds::peer_pidfd(fd)
                } else {
                    None
                };
                (peer, pidfd)
            }
            #[cfg(target_os = "macos")]
            {
                use std::os::fd::AsFd;
                let mut peer = peer;
                if creds.groups_truncated() {
                    tracing::warn!(
                        uid = peer.uid,
                        "the peer belongs to more groups than macOS reports (16); a group beyond those does not count for [ipc] allow_groups: allow its uid instead"
                    );
                }
                let Stream::UdSocket(socket) = stream;
                let (pid, stamp) = crate::ipc::macos::identify(socket.as_fd(), peer.uid);
                peer.pid = pid;
                (peer, stamp)
            }
            #[cfg(not(any(target_os = "linux", target_os = "macos")))]
            (peer, None)
        }
        #[cfg(not(unix))]
        Ok(creds) => (
            Peer {
                pid: creds.pid(),
                ..Peer::default()
            },
            None,
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read peer credentials; refusing the connection");
            (Peer::default(), None)
        }
    }
}

/// Identifies a named pipe's client: its pid (`GetNamedPipeClientProcessId`
/// on the server end), then, with the process held open
/// (`PROCESS_QUERY_LIMITED_INFORMATION`, so its pid cannot pass to another
/// process meanwhile), its creation time (a process started after the
/// connection only reused the pid of a client that exited), its token's user
/// and enabled groups and its image path. A client whose account cannot be
/// read has no `sid` and is refused.
#[cfg(windows)]
pub(super) fn peer_of(stream: &Stream, _pin: bool) -> (Peer, Option<PeerPidfd>) {
    let Stream::NamedPipe(pipe) = stream;
    // The client connected before now: a process created later only has its
    // pid (the client exited and the pid was reused before it was opened).
    let connected_by = regent_client::win32::filetime_now();
    let pid = match pipe.inner().client_process_id() {
        Ok(pid) => pid,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the pipe client's process id; refusing the connection");
            return (Peer::default(), None);
        }
    };
    let mut peer = Peer {
        pid: Some(pid),
        ..Peer::default()
    };
    let process = match regent_client::win32::Process::open(pid) {
        Ok(process) => process,
        Err(e) => {
            tracing::warn!(error = %e, pid, "cannot open the pipe client's process; refusing the connection");
            return (peer, None);
        }
    };
    match process.created() {
        Ok(created) if created <= connected_by => {}
        Ok(_) => {
            tracing::warn!(
                pid,
                "the pipe client's process id now names a process started after it connected (the client exited and its pid was reused); refusing the connection"
            );
            return (peer, None);
        }
        Err(e) => {
            tracing::warn!(error = %e, pid, "cannot read when the pipe client's process started; refusing the connection");
            return (peer, None);
        }
    }
    match process.account() {
        Ok((sid, groups)) => {
            peer.sid = Some(sid);
            peer.group_sids = groups;
        }
        Err(e) => {
            tracing::warn!(error = %e, pid, "cannot read the pipe client's account from its token; refusing the connection");
            return (peer, None);
        }
    }
    match process.image_path() {
        Ok(path) => peer.image = Some(path),
        // Checked (and refused) only when allow_executables is set.
        Err(e) => tracing::debug!(error = %e, pid, "cannot read the pipe client's image path"),
    }
    (peer, None)
}

/// Decides under the current policy; `pidfd` pins the process on Linux.
pub(super) fn decide(
    shared: &Shared,
    peer: &Peer,
    pidfd: Option<&PeerPidfd>,
) -> (u64, Result<Admitted, Refusal>) {
    #[cfg(target_os = "linux")]
    let pinned = {
        use std::os::fd::AsFd;
        pidfd.map(|fd| crate::ipc::peer::PinnedProcess::new(fd.as_fd()))
    };
    #[cfg(target_os = "macos")]
    let pinned = pidfd.map(|stamp| crate::ipc::peer::PinnedProcess::stamped(*stamp));
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    let pinned: Option<crate::ipc::peer::PinnedProcess<'_>> = {
        let _ = pidfd;
        None
    };
    shared
        .settings
        .policy
        .decide(peer, || peer.lookup_executable(pinned))
}

/// Reads who the peer is and decides whether it is served. A refusal is
/// counted and logged here; the caller sends it.
pub(crate) fn admit(stream: &Stream, shared: &Shared) -> Result<Admission, Refusal> {
    let policy = &shared.settings.policy;
    let mut pin = policy.checks_executables();
    let (mut peer, mut pidfd) = peer_of(stream, pin);
    let (mut generation, mut decided) = decide(shared, &peer, pidfd.as_ref());
    if !pin && policy.checks_executables() {
        // A reload that started checking executables landed meanwhile:
        // decide again with the process pinned.
        pin = true;
        (peer, pidfd) = peer_of(stream, pin);
        (generation, decided) = decide(shared, &peer, pidfd.as_ref());
    }
    match decided {
        Ok(admitted) => Ok(Admission {
            peer,
            pidfd,
            pinned_for_executables: pin,
            admitted,
            generation,
        }),
        Err(refusal) => {
            shared.stats.refused.fetch_add(1, Ordering::Relaxed);
            let exe = refusal.exe.clone().or_else(|| peer.executable());
            tracing::warn!(
                target: AUDIT_TARGET,
                uid = peer.uid,
                sid = peer.sid.as_deref(),
                pid = peer.pid,
                exe = ?exe,
                detail = %refusal.message,
                "{}",
                refusal.reason
            );
            Err(refusal)
        }
    }
}

/// Answers one error frame and closes (connection limit, permission).
/// With a `drain` permit, what the client sends is read and discarded for a
/// moment first, so that its own first write (its hello) does not fail with
/// `EPIPE` before it reads the refusal; without one (too many refusals at
/// once) the frame is written if the socket takes it at once and the
/// connection closes, so refused peers can hold no more than a bounded number
/// of descriptors, and never a connection slot.
pub(crate) async fn refuse(
    mut stream: Stream,
    code: ErrorCode,
    message: &str,
    drain: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let mut out = Vec::new();
    let response = Response {
        id: 0,
        outcome: Outcome::Error(WireError::new(code, message)),
    };
    if frame::encode(&response, &mut out).is_err() {
        return;
    }
    let Some(_permit) = drain else {
        // A fresh socket's buffer takes a small frame at once.
        let _ = tokio::time::timeout(Duration::ZERO, stream.write_all(&out)).await;
        return;
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&out)).await;
    let mut sink = Zeroizing::new([0u8; 1024]);
    let drain = async {
        let mut total = 0usize;
        while let Ok(n) = stream.read(&mut sink[..]).await {
            total += n;
            if n == 0 || total > 64 * 1024 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
}
