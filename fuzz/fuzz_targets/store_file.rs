//! What the agent reads back at start: state.json, the secrets file, keychain
//! entries and the stored credential.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| regent_agent::fuzzing::store_file(data, regent_fuzz::scratch()));
