//! Entry points for the fuzz targets in `fuzz/` and for the test that replays
//! their committed corpus (`tests/fuzz_corpus.rs`). Not part of the API.
//!
//! Each function takes the raw bytes a hostile peer or a damaged file could
//! present, runs the agent's real parser on them, and asserts properties of the
//! outcome, not just "no panic": a violated property panics, which the fuzzer
//! records as a crash. Inputs start with an optional mode line (`sentinel-redeem\n`,
//! `state.json\n`, …) so that seeds are readable and easy to write by hand.
//!
//! - [`ipc_request`]: framing and request decoding (what a local client sends).
//! - [`upstream_reply`]: an HTTP status, headers and body from the license server
//!   (token answers and the discovery documents of both profiles).
//! - [`config_toml`]: the configuration file.
//! - [`store_file`]: `state.json`, the secrets file and keychain entries.

// Panicking on a broken property is the point of this module. Nothing in the
// agent, the client or the C library calls it: only the fuzz targets and the
// corpus tests do, so none of these panics is reachable from a user or a server.
#![allow(clippy::panic, clippy::unwrap_used)]

mod config;
mod ipc;
mod store;
mod upstream;

pub use config::config_toml;
pub use ipc::ipc_request;
pub use store::store_file;
pub use upstream::{ENDPOINTS as UPSTREAM_ENDPOINTS, upstream_reply};

/// Splits off a leading `mode\n` line naming one of `modes`. Without one, the
/// mode is picked from the first byte and the whole input is the payload, so
/// that no fuzzer input is wasted.
fn mode<'a>(data: &'a [u8], modes: &[&str]) -> (usize, &'a [u8]) {
    for (i, name) in modes.iter().enumerate() {
        if let Some(rest) = data.strip_prefix(name.as_bytes())
            && let Some(rest) = rest.strip_prefix(b"\n")
        {
            return (i, rest);
        }
    }
    let pick = data.first().map_or(0, |b| usize::from(*b) % modes.len());
    (pick, data)
}

/// The same string with every ASCII letter and digit moved one place on
/// (`a`→`b`, `z`→`a`, `9`→`0`): same length, same character classes, so every
/// check on a token (length, visible ASCII, emptiness) gives the same answer. An
/// outcome that changes when a secret is rotated shows that secret's content.
fn rotate(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'z' => 'a',
            'Z' => 'A',
            '9' => '0',
            'a'..='y' | 'A'..='Y' | '0'..='8' => char::from(c as u8 + 1),
            other => other,
        })
        .collect()
}

/// Rotates the string at `path` in `value`; true when there was one with
/// something to rotate.
fn rotate_at(value: &mut serde_json::Value, path: &[&str]) -> bool {
    let mut at = value;
    for key in path {
        match at.get_mut(*key) {
            Some(next) => at = next,
            None => return false,
        }
    }
    match at {
        serde_json::Value::String(s) if s.chars().any(|c| c.is_ascii_alphanumeric()) => {
            *s = rotate(s);
            true
        }
        _ => false,
    }
}

/// True when `text` holds a character a terminal could act on or hide text with.
fn has_control(text: &str) -> bool {
    text.chars().any(|c| {
        c.is_control()
            || matches!(c,
                '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2069}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_length_and_classes() {
        assert_eq!(rotate("az AZ 09 é\n\"-"), "ba BA 10 é\n\"-");
        let mut v = serde_json::json!({"a": {"b": "x1"}, "c": 5});
        assert!(rotate_at(&mut v, &["a", "b"]));
        assert_eq!(v["a"]["b"], "y2");
        assert!(!rotate_at(&mut v, &["c"]));
        assert!(!rotate_at(&mut v, &["missing"]));
    }

    #[test]
    fn mode_lines_select_and_fall_back() {
        assert_eq!(mode(b"two\nrest", &["one", "two"]), (1, &b"rest"[..]));
        assert_eq!(mode(b"\x03abc", &["one", "two"]), (1, &b"\x03abc"[..]));
        assert_eq!(mode(b"", &["one", "two"]), (0, &b""[..]));
    }
}
