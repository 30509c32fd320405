//! The configuration file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| regent_agent::fuzzing::config_toml(data));
