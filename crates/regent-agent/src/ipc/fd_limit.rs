//! Open-file headroom for the IPC server. Every client connection holds a
//! file descriptor, so `[ipc] max_connections` means nothing above the
//! process's open-file limit: past it `accept()` fails with `EMFILE`, new
//! clients stall in the listen backlog, and the server must neither spin nor
//! give up (issue 9, load tests).
//!
//! - [`connection_limit`] raises the soft `RLIMIT_NOFILE` as far as
//!   `max_connections` needs (the hard limit allows it: systemd's default is
//!   1024 soft, 524288 hard) and otherwise lowers the connection limit to fit,
//!   with a warning, so extra clients get a prompt `UNAVAILABLE` refusal
//!   instead of a silent stall.
//! - [`is_exhaustion`] tells such a passing shortage apart from a broken
//!   listener: the accept loop waits on the former and never exits on it.

/// Descriptors kept free for everything that is not a client connection: the
/// listener, the store, the license server's connections, the config watch,
/// logs, and refusals being sent.
pub const RESERVED_FDS: u64 = 64;

/// Descriptors one client connection holds: its socket, and on Linux, while
/// the policy checks executables (`allow_executables`), the pidfd that pins
/// the peer's process for checking it again after a reload.
pub fn fds_per_connection(checks_executables: bool) -> u64 {
    if cfg!(target_os = "linux") && checks_executables {
        2
    } else {
        1
    }
}

/// The most connections the open-file limit allows, at most `max_connections`,
/// after raising the soft limit toward what they need (`per_connection`
/// descriptors each: [`fds_per_connection`]).
pub fn connection_limit(max_connections: usize, per_connection: u64) -> usize {
    #[cfg(not(unix))]
    let _ = per_connection;
    #[cfg(unix)]
    {
        let per_connection = per_connection.max(1);
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let want = (max_connections as u64)
            .saturating_mul(per_connection)
            .saturating_add(RESERVED_FDS);
        let before = getrlimit(Resource::Nofile);
        let soft = before.current.unwrap_or(u64::MAX);
        if soft < want {
            let hard = before.maximum.unwrap_or(u64::MAX);
            let raised = Rlimit {
                current: Some(want.min(hard)),
                maximum: before.maximum,
            };
            if let Err(e) = setrlimit(Resource::Nofile, raised) {
                tracing::debug!(error = %e, "cannot raise the open-file limit");
            }
        }
        let now = getrlimit(Resource::Nofile);
        let soft = now.current.unwrap_or(u64::MAX);
        let fits = usize::try_from((soft.saturating_sub(RESERVED_FDS) / per_connection).max(1))
            .unwrap_or(usize::MAX);
        if fits < max_connections {
            tracing::warn!(
                max_connections,
                open_file_limit = soft,
                hard_limit = now.maximum.unwrap_or(u64::MAX),
                serving = fits,
                "[ipc] max_connections needs more open files than this process may have: \
                 serving at most {fits} connections; raise the limit (systemd: LimitNOFILE=)"
            );
            return fits;
        }
    }
    max_connections
}

/// Whether an `accept()` error is a shortage that clears as connections close
/// (out of descriptors, buffers or memory, or a client that gave up first).
pub fn is_exhaustion(error: &std::io::Error) -> bool {
    #[cfg(unix)]
    {
        use rustix::io::Errno;
        if let Some(errno) = Errno::from_io_error(error) {
            return [
                Errno::MFILE,
                Errno::NFILE,
                Errno::NOBUFS,
                Errno::NOMEM,
                Errno::CONNABORTED,
                Errno::INTR,
            ]
            .contains(&errno);
        }
    }
    matches!(
        error.kind(),
        std::io::ErrorKind::OutOfMemory
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_shortages_are_passing_and_a_broken_listener_is_not() {
        #[cfg(unix)]
        {
            use rustix::io::Errno;
            for passing in [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM] {
                let e = std::io::Error::from_raw_os_error(passing.raw_os_error());
                assert!(is_exhaustion(&e), "{e}");
            }
            for broken in [Errno::BADF, Errno::INVAL, Errno::NOTSOCK] {
                let e = std::io::Error::from_raw_os_error(broken.raw_os_error());
                assert!(!is_exhaustion(&e), "{e}");
            }
        }
        assert!(!is_exhaustion(&std::io::Error::other("listener gone")));
    }

    #[test]
    fn the_limit_fits_the_open_file_limit() {
        // Whatever this process's limit, the answer never exceeds what was
        // asked, and a small request is granted in full.
        for per_connection in [fds_per_connection(false), fds_per_connection(true)] {
            assert_eq!(connection_limit(8, per_connection), 8);
            let huge = connection_limit(usize::MAX / 2, per_connection);
            assert!((1..=usize::MAX / 2).contains(&huge));
            #[cfg(unix)]
            {
                let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
                    .current
                    .unwrap_or(u64::MAX);
                assert!(huge as u64 <= (soft.saturating_sub(RESERVED_FDS) / per_connection).max(1));
            }
        }
        // One descriptor a connection, unless a Linux agent checks programs.
        assert_eq!(fds_per_connection(false), 1);
        assert_eq!(
            fds_per_connection(true),
            if cfg!(target_os = "linux") { 2 } else { 1 }
        );
    }
}
