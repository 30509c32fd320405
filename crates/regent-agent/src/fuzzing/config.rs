//! The configuration file: TOML into a validated [`Config`].
//!
//! Input: the file's bytes (read as UTF-8, invalid sequences replaced: the real
//! loader refuses a non-UTF-8 file before parsing).

use std::path::Path;

use regent_proto::ErrorCode;

use crate::config::{Config, InstanceMode, Profile};

const ORIGIN: &str = "/etc/regent/fuzz.toml";

/// Parses a configuration file and checks the outcome.
pub fn config_toml(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let result = Config::parse(&text, Path::new(ORIGIN));
    // Whether the TOML itself was readable decides what the error must say.
    let readable = toml::from_str::<Config>(&text);
    match (result, readable) {
        (Ok(config), Ok(read)) => {
            assert_eq!(config, read);
            valid(&config);
        }
        (Ok(_), Err(e)) => panic!("accepted a file toml refuses: {e}"),
        (Err(e), readable) => {
            assert_eq!(e.code, ErrorCode::Config);
            let prefix = format!("config file {ORIGIN}: ");
            let Some(problem) = e.message.strip_prefix(&prefix) else {
                panic!("the error does not name the file: {}", e.message);
            };
            match readable {
                // A TOML error names the line to look at, and that line exists.
                Err(toml_error) if toml_error.span().is_some() => {
                    let line = problem
                        .strip_prefix("line ")
                        .and_then(|r| r.split_once(": "))
                        .and_then(|(n, _)| n.parse::<usize>().ok());
                    let lines = text.matches('\n').count() + 1;
                    assert!(
                        line.is_some_and(|n| (1..=lines).contains(&n)),
                        "no usable line number in: {problem}"
                    );
                }
                Err(_) => {}
                // A validation error names the section it is about.
                Ok(_) => assert!(
                    problem.starts_with('['),
                    "a validation error without its section: {problem}"
                ),
            }
        }
    }
}

/// What validation promises about an accepted configuration.
fn valid(c: &Config) {
    let s = &c.server;
    match s.profile {
        Profile::Sentinel => assert!(s.url.is_some()),
        Profile::OAuth2 => {
            assert!(s.token_url.is_some() != s.issuer.is_some());
            assert!(s.client_id.as_deref().is_some_and(|id| !id.is_empty()));
        }
    }
    assert!(s.max_active_tokens.is_none_or(|m| (1..=200).contains(&m)));
    let r = &c.refresh;
    assert!((0.1..=0.95).contains(&r.ahead) && (0.0..=0.5).contains(&r.jitter));
    assert!(r.backoff_min >= 1 && r.backoff_max >= r.backoff_min);
    assert!(c.instances.max >= 1);
    assert!(c.instances.mode == InstanceMode::PerInstance || c.instances.max == 1);
    assert!(c.ipc.socket_mode_bits().is_some_and(|m| m <= 0o777));
    assert!(c.store.timeout >= 1);
    // Every duration lies in its key's range, and so far from saturating.
    for bound in c.duration_keys() {
        assert!(
            bound.min <= bound.value && bound.value <= bound.max && bound.max <= 31_536_000,
            "{bound:?}"
        );
    }
    // Derived values never fail on an accepted file.
    let _ = c.refresh.margin();
    let _ = crate::engine::EngineSettings::from(&c.refresh);
}
