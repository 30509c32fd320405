//! The C API's instance id and NO_FREE_INSTANCE against a real per-instance
//! agent (issue: per-instance auth tokens), called from Rust through the same
//! exported functions C programs use.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Calling the C ABI is the point of this test.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::ptr;

use regent::regent_result::{REGENT_NO_FREE_INSTANCE, REGENT_OK};
use regent::*;
use regent_tests::{AgentHome, AgentProc, EmulatorProc, text};

/// Connects an instance with `regent_client_options_set_instance`.
unsafe fn connect(socket: &CStr, instance: &CStr, wait_ms: u32) -> *mut regent_client {
    let mut options = ptr::null_mut();
    unsafe {
        assert_eq!(regent_client_options_new(&mut options), REGENT_OK);
        assert_eq!(
            regent_client_options_set_socket(options, socket.as_ptr()),
            REGENT_OK
        );
        assert_eq!(
            regent_client_options_set_app(options, c"c-app".as_ptr()),
            REGENT_OK
        );
        assert_eq!(
            regent_client_options_set_instance(options, instance.as_ptr()),
            REGENT_OK
        );
        assert_eq!(
            regent_client_options_set_wait_for_instance_ms(options, wait_ms),
            REGENT_OK
        );
        let mut client = ptr::null_mut();
        assert_eq!(regent_client_connect(options, &mut client), REGENT_OK);
        regent_client_options_free(options);
        client
    }
}

#[test]
fn c_api_reports_no_free_instance_and_waits_for_a_slot() {
    let emulator = EmulatorProc::start(300);
    let home = AgentHome::new(
        &emulator.url,
        "[instances]\nmode = \"per-instance\"\nmax = 1\nlease_grace = 1",
    );
    let _agent = AgentProc::start(&home);
    let out = home.regent(&["enroll"], Some(&emulator.mint(2)));
    assert!(out.status.success(), "{}", text(&out));
    let socket = CString::new(home.socket.to_str().unwrap()).unwrap();

    unsafe {
        let first = connect(&socket, c"one", 0);
        let mut token = ptr::null_mut();
        assert_eq!(regent_client_token(first, 10, &mut token), REGENT_OK);
        regent_token_free(token);

        // The only slot is leased: the second instance is told so, by code.
        let second = connect(&socket, c"two", 0);
        let mut none = ptr::null_mut();
        let rc = regent_client_token(second, 10, &mut none);
        assert_eq!(rc, REGENT_NO_FREE_INSTANCE);
        assert!(none.is_null(), "out-parameter untouched on failure");
        let name = CStr::from_ptr(regent_result_name(rc as u32))
            .to_str()
            .unwrap();
        assert_eq!(name, "NO_FREE_INSTANCE");
        let message = CStr::from_ptr(regent_last_error_message())
            .to_str()
            .unwrap()
            .to_owned();
        assert!(message.contains("in use"), "{message}");
        assert!(regent_last_error_retry_after_ms() > 0);

        // With a wait, the second instance gets the slot once the first exits.
        let waiting = connect(&socket, c"two", 10_000);
        regent_client_free(first);
        let mut got = ptr::null_mut();
        assert_eq!(regent_client_token(waiting, 10, &mut got), REGENT_OK);
        assert!(regent_token_remaining_ms(got) >= 10_000);
        regent_token_free(got);
        regent_client_free(waiting);
        regent_client_free(second);
    }
    // One slot, one redemption.
    assert_eq!(emulator.auth_tokens().len(), 1);
}
