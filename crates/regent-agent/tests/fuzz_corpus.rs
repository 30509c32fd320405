//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the
//! same entry points and property checks as the fuzz targets, so every input
//! that once found a bug, and every seed, is a regression test on stable Rust.
//! `scripts/fuzz.sh` does the fuzzing itself.
//!
//! The `*_mutations` tests are its quick, stable-Rust form: every seed is
//! mutated a bounded number of times (bit flips, byte changes, inserts,
//! deletions, duplicated runs, splices with another seed, truncation, lying
//! length prefixes) and fed to the same checks. The random seed is printed;
//! `REGENT_MUTATION_SEED=N` replays a run. Under `REGENT_LONG=1` each seed
//! gets ten times as many mutations.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// The entry points are behind the `fuzzing` feature (tests/Cargo.toml turns it on).
#![cfg(feature = "fuzzing")]

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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

/// Every endpoint of the upstream target, the discovery documents included,
/// has seeds of its own (named by their mode line).
#[test]
fn upstream_reply_corpus_covers_every_endpoint() {
    let files = corpus("upstream_reply");
    for endpoint in regent_agent::fuzzing::UPSTREAM_ENDPOINTS {
        let line = format!("{endpoint}\n");
        let seeds = files
            .iter()
            .filter(|f| std::fs::read(f).unwrap().starts_with(line.as_bytes()))
            .count();
        assert!(seeds >= 3, "only {seeds} seeds for {endpoint}");
    }
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

// ---------------------------------------------------------------------------
// Mutations of the corpus.

fn mutate(rng: &mut StdRng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = out.len();
        match rng.random_range(0..8) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                // Bytes that matter to the parsers more often than chance.
                const INTERESTING: &[u8] = b"\0\xff\x7f\x80\"\\{}[]:,=\n\r -0123456789eE.";
                out[i] = if rng.random_bool(0.5) {
                    INTERESTING[rng.random_range(0..INTERESTING.len())]
                } else {
                    rng.random()
                };
            }
            2 => {
                let i = rng.random_range(0..=len);
                let n = rng.random_range(1..=16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                out.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(32));
                out.drain(i..i + n);
            }
            4 if len > 0 => {
                // Duplicate a run (deep nesting, repeated keys, long strings).
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(64));
                let run = out[i..i + n].to_vec();
                for _ in 0..rng.random_range(1..=8) {
                    out.splice(i..i, run.iter().copied());
                }
            }
            5 if !other.is_empty() => {
                // Splice: our head, the other seed's tail.
                let cut = rng.random_range(0..=len);
                let from = rng.random_range(0..other.len());
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            6 if len > 0 => out.truncate(rng.random_range(0..len)),
            _ => {
                if len >= 4 {
                    // Frames: a length prefix that lies.
                    let fake: u32 = rng.random_range(0..=0x0002_0000);
                    out[..4].copy_from_slice(&fake.to_be_bytes());
                }
            }
        }
    }
    out
}

/// Mutates every seed of `target` and runs `check` on each mutant, naming the
/// seed, the iteration and the run's random seed when a property breaks.
fn mutations(target: &str, check: impl Fn(&[u8])) {
    let per_seed = if std::env::var("REGENT_LONG").is_ok_and(|v| !v.is_empty() && v != "0") {
        2_000
    } else {
        200
    };
    let run_seed: u64 = std::env::var("REGENT_MUTATION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(run_seed);
    let seeds: Vec<Vec<u8>> = corpus(target)
        .iter()
        .map(|f| std::fs::read(f).unwrap())
        .collect();
    let mut executions = 0usize;
    for (n, seed) in seeds.iter().enumerate() {
        let other = &seeds[rng.random_range(0..seeds.len())];
        for i in 0..per_seed {
            let input = mutate(&mut rng, seed, other);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&input)));
            assert!(
                outcome.is_ok(),
                "{target}: mutant {i} of seed {n} breaks a property (REGENT_MUTATION_SEED={run_seed}); input: {:?}",
                String::from_utf8_lossy(&input)
            );
            executions += 1;
        }
    }
    eprintln!(
        "{target}: {executions} mutants of {} seeds, all properties held (REGENT_MUTATION_SEED={run_seed})",
        seeds.len()
    );
}

#[test]
fn ipc_frame_mutations() {
    mutations("ipc_frame", regent_agent::fuzzing::ipc_request);
}

#[test]
fn client_frame_mutations() {
    mutations("client_frame", regent_client::fuzzing::client_frame);
}

#[test]
fn upstream_reply_mutations() {
    mutations("upstream_reply", regent_agent::fuzzing::upstream_reply);
}

#[test]
fn config_toml_mutations() {
    mutations("config_toml", regent_agent::fuzzing::config_toml);
}

#[test]
fn store_file_mutations() {
    let scratch = tempfile::tempdir().unwrap();
    mutations("store_file", |data| {
        regent_agent::fuzzing::store_file(data, scratch.path())
    });
}
