//! Bytes from a local client: framing and request decoding (`regent-proto`, as
//! the agent's connection loop drives it).
#![no_main]

use std::sync::atomic::{AtomicUsize, Ordering};

use libfuzzer_sys::fuzz_target;
use regent_fuzz::{Counting, peak_heap};

#[global_allocator]
static ALLOC: Counting = Counting;

/// Most heap decoding one request may hold at once: 64 × the 64 KiB frame cap.
const MAX_DECODE_HEAP: usize = 64 * 64 * 1024;

/// The largest peak seen, printed when it grows if REGENT_FUZZ_HEAP is set.
static WORST: AtomicUsize = AtomicUsize::new(0);

fuzz_target!(|data: &[u8]| {
    regent_agent::fuzzing::ipc_request(data);
    // The decoder alone, on an input taken as one payload (as the harness does
    // for inputs without a `stream` line).
    if !data.starts_with(b"stream\n") && data.len() <= 64 * 1024 + 8 {
        let payload = data.strip_prefix(b"payload\n").unwrap_or(data);
        let peak = peak_heap(|| drop(regent_proto::message::decode_request(payload)));
        assert!(
            peak <= MAX_DECODE_HEAP,
            "decoding {} bytes held {peak} bytes of heap",
            payload.len()
        );
        if WORST.fetch_max(peak, Ordering::Relaxed) < peak
            && std::env::var_os("REGENT_FUZZ_HEAP").is_some()
        {
            eprintln!(
                "heap peak {peak} bytes decoding a {}-byte payload",
                payload.len()
            );
        }
    }
});
