//! Bytes from the agent, as the client library reads them (`regent-client`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| regent_client::fuzzing::client_frame(data));
