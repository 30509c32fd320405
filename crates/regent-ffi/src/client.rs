//! `regent_client_options` (how to reach the agent) and `regent_client` (a
//! connection to it, shared between threads).

use std::time::Duration;

use ::regent_client::{ClientOptions, Error, ErrorCode, blocking};

use crate::boundary::{self, arg_mut, arg_opt_str, arg_out, arg_ref, arg_str, into_handle};
use crate::result::regent_result;
use crate::token::regent_token;

/// How to reach the agent (opaque builder). Defaults: the socket from
/// `$REGENT_SOCKET`, else `$XDG_RUNTIME_DIR/regent/agent.sock`, else
/// `/run/regent/agent.sock` (Windows: the pipe
/// `\\.\pipe\regent-agent-<user SID>` when it exists, else
/// `\\.\pipe\regent-agent`); the executable's name as the application name;
/// no instance id; 2 s to connect, 30 s per call.
///
/// Not thread-safe: build it on one thread. `regent_client_connect` copies
/// it, so it may be freed (`regent_client_options_free`) right after.
#[derive(Debug)]
pub struct regent_client_options {
    options: ClientOptions,
}

/// A connection to the agent (opaque), made by `regent_client_connect`.
///
/// Thread-safe: `regent_client_token` and `regent_client_subscribe` may be
/// called on the same client from any number of threads at once (requests
/// take turns on one connection). If the agent restarts, the next call
/// reconnects by itself. Free it once with `regent_client_free`, after every
/// other call on it has returned; subscriptions made from it live on.
#[derive(Debug)]
pub struct regent_client {
    pub(crate) inner: blocking::Client,
}

fn timeout(ms: u32, name: &str) -> Result<Duration, Error> {
    if ms == 0 {
        return Err(Error::new(
            ErrorCode::BadRequest,
            format!("the {name} must be at least 1 ms"),
        ));
    }
    Ok(Duration::from_millis(u64::from(ms)))
}

/// Makes options with the defaults (see `regent_client_options`). The caller
/// owns `*options_out` and frees it with `regent_client_options_free`.
///
/// Errors: `REGENT_BAD_REQUEST` when `options_out` is NULL.
///
/// # Safety
/// `options_out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn regent_client_options_new(
    options_out: *mut *mut regent_client_options,
) -> regent_result {
    ffi_boundary!("regent_client_options_new", {
        // SAFETY: the caller's contract.
        let out = unsafe { arg_out(options_out, "options_out") }?;
        out.write(into_handle(regent_client_options {
            options: ClientOptions::default(),
        }));
        Ok(())
    })
}

/// Sets the application's name, sent to the agent (its audit log and
/// status name it). UTF-8, not empty; copied.
///
/// Errors: `REGENT_BAD_REQUEST` for NULL, empty or non-UTF-8 arguments.
///
/// # Safety
/// `options` is NULL or live; `app` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn regent_client_options_set_app(
    options: *mut regent_client_options,
    app: *const std::ffi::c_char,
) -> regent_result {
    ffi_boundary!("regent_client_options_set_app", {
        // SAFETY: the caller's contract.
        let options = unsafe { arg_mut(options, "options") }?;
        // SAFETY: the caller's contract.
        let app = unsafe { arg_str(app, "app") }?;
        if app.is_empty() {
            return Err(Error::new(
                ErrorCode::BadRequest,
                "the application name must not be empty",
            ));
        }
        options.options.app = app.to_owned();
        Ok(())
    })
}

/// Sets the agent's socket path (UTF-8; copied). NULL restores the default
/// (`$REGENT_SOCKET`, …).
///
/// Errors: `REGENT_BAD_REQUEST` when `options` is NULL, `socket` is empty
/// or not UTF-8.
///
/// # Safety
/// `options` is NULL or live; `socket` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn regent_client_options_set_socket(
    options: *mut regent_client_options,
    socket: *const std::ffi::c_char,
) -> regent_result {
    ffi_boundary!("regent_client_options_set_socket", {
        // SAFETY: the caller's contract.
        let options = unsafe { arg_mut(options, "options") }?;
        // SAFETY: the caller's contract.
        let socket = unsafe { arg_opt_str(socket, "socket") }?;
        if socket == Some("") {
            return Err(Error::new(
                ErrorCode::BadRequest,
                "the socket path must not be empty (pass NULL for the default)",
            ));
        }
        options.options.socket = socket.map(Into::into);
        Ok(())
    })
}

/// Sets a stable instance id (UTF-8; copied), for agents that lease one
/// license slot per running instance. NULL clears it.
///
/// Errors: `REGENT_BAD_REQUEST` when `options` is NULL or `instance` is not UTF-8.
///
/// # Safety
/// `options` is NULL or live; `instance` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn regent_client_options_set_instance(
    options: *mut regent_client_options,
    instance: *const std::ffi::c_char,
) -> regent_result {
    ffi_boundary!("regent_client_options_set_instance", {
        // SAFETY: the caller's contract.
        let options = unsafe { arg_mut(options, "options") }?;
        // SAFETY: the caller's contract.
        let instance = unsafe { arg_opt_str(instance, "instance") }?;
        options.options.instance = instance.map(str::to_owned);
        Ok(())
    })
}

/// Sets how long `regent_client_token` waits for a free instance slot when
/// the agent leases one slot per instance and all are in use, in
/// milliseconds. 0 (the default) answers `REGENT_NO_FREE_INSTANCE` at once.
///
/// Errors: `REGENT_BAD_REQUEST` when `options` is NULL.
///
/// # Safety
/// `options` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn regent_client_options_set_wait_for_instance_ms(
    options: *mut regent_client_options,
    wait_ms: u32,
) -> regent_result {
    ffi_boundary!("regent_client_options_set_wait_for_instance_ms", {
        // SAFETY: the caller's contract.
        let options = unsafe { arg_mut(options, "options") }?;
        options.options.wait_for_instance =
            (wait_ms > 0).then(|| Duration::from_millis(u64::from(wait_ms)));
        Ok(())
    })
}

/// Sets how long connecting (and the `hello` exchange) may take, in
/// milliseconds (default 2000).
///
/// Errors: `REGENT_BAD_REQUEST` when `options` is NULL or `timeout_ms` is 0.
///
/// # Safety
/// `options` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn regent_client_options_set_connect_timeout_ms(
    options: *mut regent_client_options,
    timeout_ms: u32,
) -> regent_result {
    ffi_boundary!("regent_client_options_set_connect_timeout_ms", {
        // SAFETY: the caller's contract.
        let options = unsafe { arg_mut(options, "options") }?;
        options.options.connect_timeout = timeout(timeout_ms, "connect timeout")?;
        Ok(())
    })
}

/// Sets how long one call (`regent_client_token`, …, reconnecting included)
/// may take, in milliseconds (default 30000: a token request may wait for the
/// license server).
///
/// Errors: `REGENT_BAD_REQUEST` when `options` is NULL or `timeout_ms` is 0.
///
/// # Safety
/// `options` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn regent_client_options_set_request_timeout_ms(
    options: *mut regent_client_options,
    timeout_ms: u32,
) -> regent_result {
    ffi_boundary!("regent_client_options_set_request_timeout_ms", {
        // SAFETY: the caller's contract.
        let options = unsafe { arg_mut(options, "options") }?;
        options.options.request_timeout = timeout(timeout_ms, "request timeout")?;
        Ok(())
    })
}

/// Also accepts an agent running as `uid` (a system agent's dedicated user),
/// overriding `$REGENT_AGENT_UID`. Before sending anything, connecting checks
/// who listens on the socket: this process's uid, root, this uid, or the
/// owner of a private socket directory; any other server is refused with
/// `REGENT_AGENT_UNREACHABLE` (it may have taken the socket's name while the
/// agent was down). Unix only: on Windows the pipe's owner must be this
/// process's account, LocalSystem, the Administrators or the account
/// `$REGENT_AGENT_SID` names, and `uid` is ignored.
///
/// Errors: `REGENT_BAD_REQUEST` when `options` is NULL.
///
/// # Safety
/// `options` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn regent_client_options_set_agent_uid(
    options: *mut regent_client_options,
    uid: u32,
) -> regent_result {
    ffi_boundary!("regent_client_options_set_agent_uid", {
        // SAFETY: the caller's contract.
        let options = unsafe { arg_mut(options, "options") }?;
        options.options.agent_uid = Some(uid);
        Ok(())
    })
}

/// Frees options. NULL does nothing.
///
/// # Safety
/// `options` is NULL or live options, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn regent_client_options_free(options: *mut regent_client_options) {
    ffi_boundary!("regent_client_options_free", {
        // SAFETY: the caller's contract.
        unsafe { boundary::free_handle(options) }
    })
}

/// A copy of `options`, or the defaults for NULL.
///
/// # Safety
/// `options` is NULL or live.
unsafe fn options_or_default(options: *const regent_client_options) -> ClientOptions {
    // SAFETY: the caller's contract: NULL or a live handle.
    match unsafe { options.as_ref() } {
        Some(options) => options.options.clone(),
        None => ClientOptions::default(),
    }
}

/// Connects to the agent and says `hello`, within the connect timeout.
/// `options` may be NULL for the defaults (see `regent_client_options`); it
/// is copied. The caller owns `*client_out` and frees it with
/// `regent_client_free`.
///
/// Errors: `REGENT_AGENT_UNREACHABLE` (nothing listens on the socket, or
/// the server there runs as a user it should not — see
/// `regent_client_options_set_agent_uid`; the last error names the socket),
/// `REGENT_PERMISSION_DENIED`, `REGENT_TIMEOUT`,
/// `REGENT_UNSUPPORTED_VERSION`, `REGENT_BAD_REQUEST` when `client_out` is NULL.
///
/// Thread-safe; blocks for at most the connect timeout.
///
/// # Safety
/// `options` is NULL or live; `client_out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn regent_client_connect(
    options: *const regent_client_options,
    client_out: *mut *mut regent_client,
) -> regent_result {
    ffi_boundary!("regent_client_connect", {
        // SAFETY: the caller's contract.
        let out = unsafe { arg_out(client_out, "client_out") }?;
        // SAFETY: the caller's contract.
        let options = unsafe { options_or_default(options) };
        let inner = blocking::Client::connect(options)?;
        out.write(into_handle(regent_client { inner }));
        Ok(())
    })
}

/// Gets an access token that stays valid for at least `min_valid_secs`
/// seconds (the agent never hands out less; 0 accepts any unexpired token).
/// The caller owns `*token_out` and frees it with `regent_token_free`.
///
/// Errors: the agent's — `REGENT_NOT_ENROLLED`, `REGENT_REVOKED`,
/// `REGENT_UNAVAILABLE` (see `regent_last_error_retry_after_ms`), … — and
/// `REGENT_AGENT_UNREACHABLE`, `REGENT_TIMEOUT` past the request timeout,
/// `REGENT_BAD_REQUEST` for NULL arguments. On error `*token_out` is untouched.
///
/// Thread-safe: any number of threads may call this on one client at once.
///
/// # Safety
/// `client` is NULL or live; `token_out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn regent_client_token(
    client: *const regent_client,
    min_valid_secs: u32,
    token_out: *mut *mut regent_token,
) -> regent_result {
    ffi_boundary!("regent_client_token", {
        // SAFETY: the caller's contract.
        let client = unsafe { arg_ref(client, "client") }?;
        // SAFETY: the caller's contract.
        let out = unsafe { arg_out(token_out, "token_out") }?;
        let token = client
            .inner
            .token(Duration::from_secs(u64::from(min_valid_secs)))?;
        out.write(into_handle(regent_token::new(&token)?));
        Ok(())
    })
}

/// Gets one access token on a connection of its own: connects, sends `hello`
/// and `token` in one write, reads the token and closes — one round trip,
/// where `regent_client_connect` then `regent_client_token` wait for two.
/// For a program that asks once (a plug-in, a short-lived tool); a program
/// that asks again keeps a client instead.
///
/// `options` may be NULL for the defaults; it is only read. The caller owns
/// `*token_out` and frees it with `regent_token_free`.
///
/// Errors: those of `regent_client_connect` and of `regent_client_token`.
/// On error `*token_out` is untouched.
///
/// Thread-safe; blocks for at most the connect timeout plus the request
/// timeout.
///
/// # Safety
/// `options` is NULL or live; `token_out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn regent_token_once(
    options: *const regent_client_options,
    min_valid_secs: u32,
    token_out: *mut *mut regent_token,
) -> regent_result {
    ffi_boundary!("regent_token_once", {
        // SAFETY: the caller's contract.
        let out = unsafe { arg_out(token_out, "token_out") }?;
        // SAFETY: the caller's contract.
        let options = unsafe { options_or_default(options) };
        let token =
            blocking::Client::token_once(options, Duration::from_secs(u64::from(min_valid_secs)))?;
        out.write(into_handle(regent_token::new(&token)?));
        Ok(())
    })
}

/// Closes the connection and frees the client. NULL does nothing.
/// Subscriptions made from it keep running until freed themselves.
///
/// Must not run while another call on the same client is in progress.
///
/// # Safety
/// `client` is NULL or a live client, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn regent_client_free(client: *mut regent_client) {
    ffi_boundary!("regent_client_free", {
        // SAFETY: the caller's contract.
        unsafe { boundary::free_handle(client) }
    })
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::ffi::{CStr, c_char};
    use std::ptr;

    use super::*;
    use crate::boundary::{regent_last_error_message, regent_last_error_retry_after_ms};
    use crate::fake_agent::FakeAgent;
    use crate::result::regent_result::*;
    use crate::token::{regent_token_free, regent_token_type, regent_token_value};

    fn last_error() -> String {
        text(regent_last_error_message())
    }

    fn text(p: *const c_char) -> String {
        assert!(!p.is_null());
        unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_owned()
    }

    /// Options pointing at `socket`, with short timeouts.
    fn options(socket: &CStr) -> *mut regent_client_options {
        let mut options = ptr::null_mut();
        unsafe {
            assert_eq!(regent_client_options_new(&mut options), REGENT_OK);
            assert_eq!(
                regent_client_options_set_socket(options, socket.as_ptr()),
                REGENT_OK
            );
            assert_eq!(
                regent_client_options_set_app(options, c"ffi-test".as_ptr()),
                REGENT_OK
            );
            assert_eq!(
                regent_client_options_set_connect_timeout_ms(options, 2000),
                REGENT_OK
            );
            assert_eq!(
                regent_client_options_set_request_timeout_ms(options, 5000),
                REGENT_OK
            );
        }
        options
    }

    pub(crate) fn connect(agent: &FakeAgent) -> *mut regent_client {
        let options = options(&agent.c_path());
        let mut client = ptr::null_mut();
        unsafe {
            assert_eq!(regent_client_connect(options, &mut client), REGENT_OK);
            regent_client_options_free(options);
        }
        assert!(!client.is_null());
        client
    }

    #[test]
    fn options_check_every_argument() {
        unsafe {
            assert_eq!(
                regent_client_options_new(ptr::null_mut()),
                REGENT_BAD_REQUEST
            );
            assert!(
                last_error().contains("`options_out` is NULL"),
                "{}",
                last_error()
            );
            let options = options(c"/tmp/x.sock");
            let null = ptr::null_mut();
            for rc in [
                regent_client_options_set_app(null, c"a".as_ptr()),
                regent_client_options_set_socket(null, c"/s".as_ptr()),
                regent_client_options_set_instance(null, c"i".as_ptr()),
                regent_client_options_set_connect_timeout_ms(null, 1),
                regent_client_options_set_request_timeout_ms(null, 1),
            ] {
                assert_eq!(rc, REGENT_BAD_REQUEST);
            }
            assert!(last_error().contains("`options` is NULL"));

            assert_eq!(
                regent_client_options_set_app(options, ptr::null()),
                REGENT_BAD_REQUEST
            );
            assert!(last_error().contains("`app` is NULL"));
            assert_eq!(
                regent_client_options_set_app(options, c"".as_ptr()),
                REGENT_BAD_REQUEST
            );
            assert!(last_error().contains("must not be empty"));
            let not_utf8 = c"\xff\xfe";
            assert_eq!(
                regent_client_options_set_app(options, not_utf8.as_ptr()),
                REGENT_BAD_REQUEST
            );
            assert!(last_error().contains("not valid UTF-8"));
            assert_eq!(
                regent_client_options_set_socket(options, c"".as_ptr()),
                REGENT_BAD_REQUEST
            );
            assert_eq!(
                regent_client_options_set_socket(options, not_utf8.as_ptr()),
                REGENT_BAD_REQUEST
            );
            assert_eq!(
                regent_client_options_set_instance(options, not_utf8.as_ptr()),
                REGENT_BAD_REQUEST
            );
            assert_eq!(
                regent_client_options_set_connect_timeout_ms(options, 0),
                REGENT_BAD_REQUEST
            );
            assert_eq!(
                regent_client_options_set_request_timeout_ms(options, 0),
                REGENT_BAD_REQUEST
            );
            assert!(last_error().contains("at least 1 ms"));

            // Failures left the options as they were.
            let o = &(*options).options;
            assert_eq!(o.app, "ffi-test");
            assert_eq!(
                o.socket.as_deref(),
                Some(std::path::Path::new("/tmp/x.sock"))
            );
            assert_eq!(o.connect_timeout, Duration::from_secs(2));
            assert_eq!(o.request_timeout, Duration::from_secs(5));

            // NULL restores the defaults.
            assert_eq!(
                regent_client_options_set_instance(options, c"editor-1".as_ptr()),
                REGENT_OK
            );
            assert_eq!(last_error(), "");
            assert_eq!((*options).options.instance.as_deref(), Some("editor-1"));
            assert_eq!(
                regent_client_options_set_wait_for_instance_ms(options, 1500),
                REGENT_OK
            );
            assert_eq!(
                (*options).options.wait_for_instance,
                Some(Duration::from_millis(1500))
            );
            assert_eq!(
                regent_client_options_set_wait_for_instance_ms(options, 0),
                REGENT_OK
            );
            assert_eq!((*options).options.wait_for_instance, None);
            assert_eq!(
                regent_client_options_set_wait_for_instance_ms(ptr::null_mut(), 5),
                REGENT_BAD_REQUEST
            );
            assert_eq!(
                regent_client_options_set_instance(options, ptr::null()),
                REGENT_OK
            );
            assert_eq!(
                regent_client_options_set_socket(options, ptr::null()),
                REGENT_OK
            );
            assert_eq!((*options).options.instance, None);
            assert_eq!((*options).options.socket, None);
            regent_client_options_free(options);
            regent_client_options_free(ptr::null_mut());
        }
    }

    #[test]
    fn connect_and_get_tokens() {
        let agent = FakeAgent::start();
        let client = connect(&agent);
        unsafe {
            let mut token = ptr::null_mut();
            assert_eq!(regent_client_token(client, 30, &mut token), REGENT_OK);
            assert_eq!(text(regent_token_value(token)), "token-30");
            assert_eq!(text(regent_token_type(token)), "Bearer");
            assert_eq!(last_error(), "");
            regent_token_free(token);
            regent_client_free(client);
            regent_client_free(ptr::null_mut());
        }
    }

    #[test]
    fn token_errors_carry_code_message_and_retry_hint_and_leave_the_out_param() {
        let agent = FakeAgent::start();
        let client = connect(&agent);
        unsafe {
            let mut token = ptr::dangling_mut::<regent_token>();
            assert_eq!(
                regent_client_token(client, 100_000, &mut token),
                REGENT_UNAVAILABLE
            );
            assert_eq!(token, ptr::dangling_mut());
            assert_eq!(last_error(), "no such token yet");
            assert_eq!(regent_last_error_retry_after_ms(), 1500);

            assert_eq!(
                regent_client_token(ptr::null(), 30, &mut token),
                REGENT_BAD_REQUEST
            );
            assert!(last_error().contains("`client` is NULL"));
            assert_eq!(regent_last_error_retry_after_ms(), 0);
            assert_eq!(
                regent_client_token(client, 30, ptr::null_mut()),
                REGENT_BAD_REQUEST
            );
            assert!(last_error().contains("`token_out` is NULL"));
            assert_eq!(token, ptr::dangling_mut());
            regent_client_free(client);
        }
    }

    #[test]
    fn connect_failures_name_the_socket_and_leave_the_out_param() {
        let agent = FakeAgent::start();
        let dead = agent.c_dead_path();
        let options = options(&dead);
        unsafe {
            let mut client = ptr::dangling_mut::<regent_client>();
            assert_eq!(
                regent_client_connect(options, &mut client),
                REGENT_AGENT_UNREACHABLE
            );
            assert_eq!(client, ptr::dangling_mut());
            let message = last_error();
            assert!(message.contains(dead.to_str().unwrap()), "{message}");
            assert!(message.contains("REGENT_SOCKET"), "{message}");
            assert_eq!(
                regent_client_connect(options, ptr::null_mut()),
                REGENT_BAD_REQUEST
            );
            regent_client_options_free(options);
        }
    }

    #[test]
    fn connect_and_requests_time_out() {
        // A socket that accepts connections but never answers `hello`.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stuck.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let stuck = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        let stuck_options = options(&stuck);
        unsafe {
            assert_eq!(
                regent_client_options_set_connect_timeout_ms(stuck_options, 200),
                REGENT_OK
            );
            let mut client = ptr::null_mut();
            let started = std::time::Instant::now();
            assert_eq!(
                regent_client_connect(stuck_options, &mut client),
                REGENT_TIMEOUT
            );
            assert!(started.elapsed() < Duration::from_secs(2));
            assert!(client.is_null());
            regent_client_options_free(stuck_options);
        }

        let agent = FakeAgent::start();
        let options = options(&agent.c_path());
        unsafe {
            assert_eq!(
                regent_client_options_set_request_timeout_ms(options, 300),
                REGENT_OK
            );
            let mut client = ptr::null_mut();
            assert_eq!(regent_client_connect(options, &mut client), REGENT_OK);
            let mut token = ptr::null_mut();
            let started = std::time::Instant::now();
            assert_eq!(
                regent_client_token(client, 99_999, &mut token),
                REGENT_TIMEOUT
            );
            assert!(started.elapsed() < Duration::from_secs(2));
            assert!(last_error().contains("did not answer"), "{}", last_error());
            assert!(token.is_null());
            // The late answer never comes; the next call is answered normally.
            assert_eq!(regent_client_token(client, 7, &mut token), REGENT_OK);
            assert_eq!(text(regent_token_value(token)), "token-7");
            regent_token_free(token);
            regent_client_free(client);
            regent_client_options_free(options);
        }
    }

    #[test]
    fn the_client_reconnects_after_an_agent_restart() {
        let agent = FakeAgent::start();
        let client = connect(&agent);
        unsafe {
            let mut token = ptr::null_mut();
            agent.shut_down();
            assert_eq!(
                regent_client_token(client, 5, &mut token),
                REGENT_AGENT_UNREACHABLE
            );
            agent.restart();
            assert_eq!(regent_client_token(client, 5, &mut token), REGENT_OK);
            assert_eq!(text(regent_token_value(token)), "token-5");
            regent_token_free(token);
            regent_client_free(client);
        }
    }

    /// One client, many threads at once; each thread's last error is its own.
    #[test]
    fn one_client_serves_many_threads() {
        struct Shared(*mut regent_client);
        // SAFETY: the C API documents regent_client as thread-safe.
        unsafe impl Sync for Shared {}
        let agent = FakeAgent::start();
        let client = Shared(connect(&agent));
        std::thread::scope(|scope| {
            for t in 0..8u32 {
                let client = &client;
                scope.spawn(move || unsafe {
                    for i in 0..50 {
                        let min_valid = if (t + i) % 7 == 0 {
                            100_000
                        } else {
                            t * 100 + i
                        };
                        let mut token = ptr::null_mut();
                        let rc = regent_client_token(client.0, min_valid, &mut token);
                        if min_valid == 100_000 {
                            assert_eq!(rc, REGENT_UNAVAILABLE);
                            assert_eq!(last_error(), "no such token yet");
                        } else {
                            assert_eq!(rc, REGENT_OK);
                            assert_eq!(last_error(), "");
                            assert_eq!(
                                text(regent_token_value(token)),
                                format!("token-{min_valid}")
                            );
                            regent_token_free(token);
                        }
                    }
                });
            }
        });
        unsafe { regent_client_free(client.0) };
    }
}
