//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the
//! same entry points and property checks as the fuzz targets, so every input
//! that once found a bug, and every seed, is a regression test on stable Rust.
//! `scripts/fuzz.sh` does the fuzzing itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    files
}

/// Runs `check` on every file of the target's corpus, naming the file that fails.
fn replay(target: &str, check: impl Fn(&[u8])) -> usize {
    let files = corpus(target);
    for file in &files {
        let data = std::fs::read(file).unwrap();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&data)));
        assert!(
            outcome.is_ok(),
            "{target}: {} breaks a property",
            file.display()
        );
    }
    files.len()
}

#[test]
fn ipc_frame_corpus() {
    replay("ipc_frame", regent_agent::fuzzing::ipc_request);
}

#[test]
fn client_frame_corpus() {
    replay("client_frame", regent_client::fuzzing::client_frame);
}

#[test]
fn upstream_reply_corpus() {
    replay("upstream_reply", regent_agent::fuzzing::upstream_reply);
}

#[test]
fn config_toml_corpus() {
    replay("config_toml", regent_agent::fuzzing::config_toml);
}

#[test]
fn store_file_corpus() {
    let scratch = tempfile::tempdir().unwrap();
    replay("store_file", |data| {
        regent_agent::fuzzing::store_file(data, scratch.path())
    });
}
