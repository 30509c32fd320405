//! The license server's answers: status, headers and body into a grant or an
//! error, for both profiles.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| regent_agent::fuzzing::upstream_reply(data));
