//! A browser stand-in for the sign-in tests, run as `$BROWSER` by
//! `regent login`: it fetches the authorization page, fills in and submits
//! its login form, and follows the redirect to regent's loopback listener,
//! exactly as a person's browser would (plain HTTP/1.1 over loopback).
//!
//! Environment: `REGENT_TEST_BROWSER_USER` and `REGENT_TEST_BROWSER_PASSWORD`
//! (typed into the form), `REGENT_TEST_BROWSER_ACTION` (`allow`, the
//! default, or `deny`), and `REGENT_TEST_BROWSER_TAMPER=state`: first
//! deliver the redirect with a wrong `state` (regent must refuse it and keep
//! waiting), then the real one; `REGENT_TEST_BROWSER_TAMPER=stall`: first
//! open 20 connections to regent's listener that send nothing. What
//! happened is appended to
//! `REGENT_TEST_BROWSER_LOG` when set.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test helper: any surprise must fail the test loudly"
)]

use std::io::Write as _;

use regent_tests::http1::{Answer, form, request};
use url::Url;

fn log(line: &str) {
    if let Ok(path) = std::env::var("REGENT_TEST_BROWSER_LOG") {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        writeln!(file, "{line}").unwrap();
    }
}

fn main() {
    let url = Url::parse(&std::env::args().next_back().unwrap()).unwrap();
    let env = |name: &str| std::env::var(name).unwrap_or_default();
    let page = request("GET", url.as_str(), &[], None);
    assert_eq!(page.status, 200, "the authorization page: {}", page.body);
    let hidden = regent_emulator::login_form_fields(&page.body);
    let action = match env("REGENT_TEST_BROWSER_ACTION").as_str() {
        "" => "allow".to_owned(),
        other => other.to_owned(),
    };
    let (user, password) = (
        env("REGENT_TEST_BROWSER_USER"),
        env("REGENT_TEST_BROWSER_PASSWORD"),
    );
    let mut pairs: Vec<(&str, &str)> = hidden
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    pairs.extend([
        ("username", user.as_str()),
        ("password", password.as_str()),
        ("action", action.as_str()),
    ]);
    let submit = url.join("/oauth/authorize").unwrap();
    let answer: Answer = request(
        "POST",
        submit.as_str(),
        &[],
        Some(("application/x-www-form-urlencoded", &form(&pairs))),
    );
    log(&format!("submitted: {}", answer.status));
    let Some(location) = answer.location else {
        log("no redirect");
        std::process::exit(3);
    };
    let redirect = Url::parse(&location).unwrap();
    if env("REGENT_TEST_BROWSER_TAMPER") == "state" {
        let mut forged = redirect.clone();
        let pairs: Vec<(String, String)> = redirect
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "state" {
                    format!("{v}x")
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        forged.query_pairs_mut().clear().extend_pairs(pairs);
        let refused = request("GET", forged.as_str(), &[], None);
        log(&format!("forged state: {}", refused.status));
    }
    // Idle connections to regent's listener first (a stalled local process,
    // or a browser's preconnects): the redirect must not wait behind them.
    let mut idle = Vec::new();
    if env("REGENT_TEST_BROWSER_TAMPER") == "stall" {
        let port = redirect.port_or_known_default().unwrap();
        for _ in 0..20 {
            idle.push(std::net::TcpStream::connect(("127.0.0.1", port)).unwrap());
        }
        log("stalled: 20 idle connections");
    }
    let landed = request("GET", redirect.as_str(), &[], None);
    drop(idle);
    log(&format!("redirect: {}", landed.status));
}
