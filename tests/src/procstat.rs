//! Measuring a running process for the load and soak tests: open file
//! descriptors (`/proc/PID/fd`), resident memory (`/proc/PID/status`
//! `VmRSS`, and its peak `VmHWM`), the open-file limit, and how many calls
//! the emulator answered on each route (to count upstream renewals).
//!
//! Linux only for the `/proc` parts: elsewhere [`Sample::of`] returns `None`
//! and the tests that need it skip their measurements.

use std::fmt;
use std::io::{Read, Write};
use std::time::Duration;

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Open file descriptors (entries of `/proc/PID/fd`).
    pub fds: usize,
    /// Resident set now, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Its anonymous part, KiB (`RssAnon`): heap and stacks, where a leak
    /// shows. The rest is file pages (the binary's code), which the agent
    /// gives back when idle and faults in again when busy, so `VmRSS` swings
    /// by megabytes with no leak at all.
    pub anon_kib: u64,
    /// Highest resident set so far, KiB (`VmHWM`).
    pub hwm_kib: u64,
    /// Threads (`Threads`).
    pub threads: u64,
}

impl Sample {
    /// Reads `pid` now; `None` when `/proc/PID` cannot be read (not Linux,
    /// or the process is gone).
    pub fn of(pid: u32) -> Option<Sample> {
        let fds = fd_count(pid)?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        Some(Sample {
            fds,
            rss_kib: status_kib(&status, "VmRSS:")?,
            anon_kib: status_kib(&status, "RssAnon:")?,
            hwm_kib: status_kib(&status, "VmHWM:")?,
            threads: status_kib(&status, "Threads:").unwrap_or(0),
        })
    }
}

impl Sample {
    /// Reads `pid` `reads` times, 20 ms apart, keeping the smallest fd count
    /// and RSS: an fd opened for a moment (a renewal's connection, a store
    /// write) is not a leak, and a leaked one is there on every read.
    pub fn settled(pid: u32, reads: usize) -> Option<Sample> {
        let mut best = Sample::of(pid)?;
        for _ in 1..reads {
            std::thread::sleep(Duration::from_millis(20));
            let s = Sample::of(pid)?;
            best.fds = best.fds.min(s.fds);
            best.rss_kib = best.rss_kib.min(s.rss_kib);
            best.anon_kib = best.anon_kib.min(s.anon_kib);
            best.hwm_kib = s.hwm_kib;
            best.threads = s.threads;
        }
        Some(best)
    }
}

/// Open file descriptors of `pid`.
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// A numeric field of `/proc/PID/status` (the unit, if any, dropped).
fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A labelled sample, for the tables the tests print.
#[derive(Debug, Clone)]
pub struct Labelled {
    /// Where in the run it was taken.
    pub label: String,
    /// Seconds since the run began.
    pub at_s: f64,
    /// The reading.
    pub sample: Sample,
    /// Upstream renewals counted at the emulator so far.
    pub renewals: u64,
    /// Requests answered without error so far (client side).
    pub requests: u64,
}

/// Samples as a fixed-width table (printed with `--nocapture`, kept in the
/// test's output on failure).
#[derive(Debug)]
pub struct Table<'a>(pub &'a [Labelled]);

impl fmt::Display for Table<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<22} {:>8} {:>7} {:>10} {:>10} {:>10} {:>8} {:>9} {:>10}",
            "sample",
            "t (s)",
            "fds",
            "RSS KiB",
            "anon KiB",
            "HWM KiB",
            "threads",
            "renewals",
            "requests"
        )?;
        for s in self.0 {
            writeln!(
                f,
                "{:<22} {:>8.1} {:>7} {:>10} {:>10} {:>10} {:>8} {:>9} {:>10}",
                s.label,
                s.at_s,
                s.sample.fds,
                s.sample.rss_kib,
                s.sample.anon_kib,
                s.sample.hwm_kib,
                s.sample.threads,
                s.renewals,
                s.requests
            )?;
        }
        Ok(())
    }
}

/// Raises this process's soft open-file limit to `want` (capped at the hard
/// limit, which root may raise too); children started afterwards (the agent)
/// inherit it. Returns the soft limit now in force.
#[cfg(unix)]
pub fn raise_open_files(want: u64) -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    // Only a privileged process may raise the hard limit: try, then settle.
    if hard < want && setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
        return want;
    }
    let target = want.min(hard);
    if soft < target && setrlimit(Resource::RLIMIT_NOFILE, target, hard).is_ok() {
        return target;
    }
    soft
}

/// Calls the emulator answered, by route and outcome (`GET /_emulator/counters`).
#[derive(Debug, Clone, Default)]
pub struct UpstreamCounts {
    /// The whole counters document.
    pub raw: serde_json::Value,
}

impl UpstreamCounts {
    /// Fetches the counters from the emulator at `url` (plain HTTP on loopback).
    pub fn fetch(url: &str) -> UpstreamCounts {
        let body = http_get(url, "/_emulator/counters", crate::EMULATOR_KEY);
        UpstreamCounts {
            raw: serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("emulator counters are not JSON ({e}): {body}")),
        }
    }

    /// Requests on `route` (e.g. `realm_token`) answered with `outcome` (e.g. `ok`).
    pub fn requests(&self, route: &str, outcome: &str) -> u64 {
        self.raw["requests"][route][outcome].as_u64().unwrap_or(0)
    }

    /// Every request on `route`, whatever the outcome.
    pub fn all_requests(&self, route: &str) -> u64 {
        self.raw["requests"][route]
            .as_object()
            .map(|o| o.values().filter_map(serde_json::Value::as_u64).sum())
            .unwrap_or(0)
    }

    /// Successful refreshes: the upstream renewals of a Sentinel agent.
    pub fn refreshes(&self) -> u64 {
        self.raw["refreshes"].as_u64().unwrap_or(0)
    }

    /// Registration-token redemptions (each consumed a count).
    pub fn redemptions(&self) -> u64 {
        self.raw["redemptions"].as_u64().unwrap_or(0)
    }
}

/// The value of an unlabelled sample `name` in Prometheus text (the agent's
/// `metrics` answer), e.g. `regent_connections_open`.
pub fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Polls the agent's `regent_connections_open` through `probe` (itself one
/// of them) until it equals `expected` (the probe included); returns how
/// long that took. Panics after `timeout`.
pub async fn wait_for_open_connections(
    probe: &regent_client::Client,
    expected: u64,
    timeout: Duration,
) -> Duration {
    let start = std::time::Instant::now();
    loop {
        let text = probe.metrics().await.expect("metrics from the agent");
        let open = metric(&text, "regent_connections_open").expect("regent_connections_open");
        if open == expected {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "the agent still reports {open} open connections after {timeout:?}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A minimal HTTP/1.1 GET with the emulator's control key; returns the body.
fn http_get(url: &str, path: &str, key: &str) -> String {
    let authority = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let mut stream = std::net::TcpStream::connect(&authority)
        .unwrap_or_else(|e| panic!("cannot reach the emulator at {authority}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nX-Emulator-Key: {key}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "emulator answered {head}\n{body}"
    );
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        if !cfg!(target_os = "linux") {
            return;
        }
        let s = Sample::of(std::process::id()).unwrap();
        assert!(s.fds >= 3, "{s:?}");
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib, "{s:?}");
        let before = s.fds;
        let files: Vec<_> = (0..10)
            .map(|_| std::fs::File::open("/proc/self/status").unwrap())
            .collect();
        let during = fd_count(std::process::id()).unwrap();
        assert!(during >= before + 10, "{before} → {during}");
        drop(files);
    }

    #[test]
    fn metrics_are_read_by_name() {
        let text = "# HELP regent_connections_open x\nregent_connections_open 7\nregent_connections_total{outcome=\"accepted\"} 9\n";
        assert_eq!(metric(text, "regent_connections_open"), Some(7));
        assert_eq!(metric(text, "regent_connections"), None);
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
    }
}
