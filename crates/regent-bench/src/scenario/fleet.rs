//! The fleet simulation: thousands of devices — each a real token engine
//! (`regent_agent::engine::Engine`) renewing through the real OAuth2 profile
//! — in one process, against one emulator, with Reltio-like one-hour tokens
//! scaled down in time.
//!
//! Three cases:
//! - `staggered`: devices boot at random moments across one renewal period
//!   (a fleet whose machines start whenever people start them: after the
//!   first period, each device's renewal phase is uniformly random);
//! - `synchronised`, with and without jitter: every device boots in the same
//!   instant (a mass restart, or the license server coming back after an
//!   outage) — the case jitter exists for.
//!
//! Renewals (every upstream token request after a device's first) are binned
//! per fleet-minute, measured from one lifetime after the start (when every
//! device has booted) to the end. The emulator runs in its own process; it
//! counts the requests and the active tokens per client (sampled during the
//! run).
//!
//! Scaling down time cannot scale down the emulator's service time: a burst
//! of 10,000 requests takes it about a second of real time, which smears a
//! herd over several fleet-minutes. The figures therefore understate how
//! sharp an unjittered herd is against a fast server; the comparison between
//! the cases still shows what jitter buys.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use regent_agent::engine::{BoxFuture, DemandGuard, Engine, EngineSettings, Renewer};
use regent_agent::grant::Grant;
use regent_agent::secret::{SecretString, secret};
use regent_agent::upstream::{Http, HttpSettings, OAuth2, OAuth2Endpoint};
use serde_json::{Value, json};

use crate::lab::{Lab, Server, total};
use crate::report::Row;
use crate::stats::{histogram, peak_and_mean};

/// The real lifetime being simulated (Reltio access tokens: one hour).
const REAL_LIFETIME_S: f64 = 3600.0;
/// Clients per admin call (the emulator takes bodies up to 64 KiB).
const CLIENTS_PER_CALL: usize = 400;
/// Clients per customer record (the same limit).
const CLIENTS_PER_CUSTOMER: usize = 2000;
/// The multi-token cap each client gets (Reltio allows up to 200).
const MAX_ACTIVE_TOKENS: u32 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    Staggered,
    Synchronised,
}

/// Upstream requests as the devices made them.
#[derive(Debug)]
struct FleetLog {
    start: Instant,
    /// (device, when it asked, whether it got a token)
    requests: Mutex<Vec<(u32, Duration, bool)>>,
    /// Failure codes and how often each occurred.
    failures: Mutex<std::collections::BTreeMap<String, u64>>,
}

struct Device {
    oauth2: OAuth2,
    secret: SecretString,
    index: u32,
    log: Arc<FleetLog>,
}

impl Renewer for Device {
    fn renew(&self) -> BoxFuture<'_, regent_agent::Result<Grant>> {
        Box::pin(async move {
            let at = self.log.start.elapsed();
            let result = self.oauth2.client_credentials(&self.secret).await;
            self.log
                .requests
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((self.index, at, result.is_ok()));
            if let Err(e) = &result {
                *self
                    .log
                    .failures
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry(e.code.name().to_owned())
                    .or_default() += 1;
            }
            result
        })
    }
}

/// Runs the scenario.
///
/// # Errors
/// When the emulator or the setup calls fail.
pub fn run(lab: &Lab) -> Result<Vec<Row>> {
    let devices = lab.size(10_000usize, 200);
    let lifetime = lab.size(Duration::from_secs(9), Duration::from_secs(1));
    let log = lab.subdir("fleet")?.join("emulator.log");
    let server = lab.rt.block_on(Server::start_child(&log))?;
    // The staggered fleet is in its steady state from the start: three
    // periods show it. A synchronised herd needs five to see it spread.
    let cases = [
        ("staggered_jitter", Start::Staggered, 0.1, lab.size(3u32, 2)),
        (
            "synchronised_jitter",
            Start::Synchronised,
            0.1,
            lab.size(5, 2),
        ),
        (
            "synchronised_no_jitter",
            Start::Synchronised,
            0.0,
            lab.size(5, 2),
        ),
    ];
    let mut rows = Vec::new();
    for (case, (name, start, jitter, periods)) in cases.into_iter().enumerate() {
        let prefix = format!("fleet{case}-device-");
        lab.rt
            .block_on(register(&server, &prefix, devices, lifetime))
            .with_context(|| format!("registering the {name} fleet"))?;
        let outcome = lab
            .rt
            .block_on(simulate(
                &server, &prefix, devices, lifetime, periods, start, jitter,
            ))
            .with_context(|| format!("simulating the {name} fleet"))?;
        rows.push(outcome.row(name, devices, lifetime, start));
    }
    Ok(rows)
}

/// Creates the fleet's OAuth2 clients and puts them in multi-token customers
/// (replacing the previous case's customers, so the emulator's per-request
/// customer scan stays the size of one fleet).
async fn register(server: &Server, prefix: &str, devices: usize, lifetime: Duration) -> Result<()> {
    let ids: Vec<String> = (0..devices).map(|i| format!("{prefix}{i}")).collect();
    for chunk in ids.chunks(CLIENTS_PER_CALL) {
        let clients: Vec<Value> = chunk
            .iter()
            .map(|id| {
                json!({
                    "clientId": id,
                    "clientSecret": format!("{id}-secret"),
                    "accessTokenValidity": lifetime.as_secs(),
                    "authorizedGrantTypes": ["client_credentials"],
                })
            })
            .collect();
        server
            .admin(
                reqwest::Method::POST,
                "/oauth/clients",
                Value::Array(clients),
            )
            .await?;
    }
    for (k, chunk) in ids.chunks(CLIENTS_PER_CUSTOMER).enumerate() {
        server
            .admin(
                reqwest::Method::PUT,
                &format!("/oauth/customers/fleet-{k}"),
                json!({
                    "applicationClients": chunk,
                    "multitokenConfig": {"clientCredentialsMultiTokenConfig": {
                        "maxActiveTokensAllowed": MAX_ACTIVE_TOKENS
                    }},
                }),
            )
            .await?;
    }
    Ok(())
}

struct Outcome {
    requests: Vec<(u32, Duration, bool)>,
    failed: usize,
    failures: std::collections::BTreeMap<String, u64>,
    upstream_at_emulator: u64,
    max_active_tokens: u64,
    window: (Duration, Duration),
    scale: f64,
    settings_jitter: f64,
    boot_spread: Duration,
}

async fn simulate(
    server: &Server,
    prefix: &str,
    devices: usize,
    lifetime: Duration,
    periods: u32,
    start: Start,
    jitter: f64,
) -> Result<Outcome> {
    let scale = REAL_LIFETIME_S / lifetime.as_secs_f64();
    let http = Http::new(HttpSettings {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(20),
        ..HttpSettings::default()
    })?;
    let token_url = url::Url::parse(&format!("{}/oauth/token", server.url()))?;
    let settings = EngineSettings {
        ahead: 2.0 / 3.0,
        jitter,
        margin: Duration::from_secs(30),
        demand_window: Duration::from_secs(600),
        backoff_min: lifetime / 50,
        backoff_max: lifetime,
        keepalive: Duration::from_secs(86_400),
        ..EngineSettings::default()
    };
    // An app on each device wants a minute of validity (scaled).
    let min_valid = Duration::from_secs_f64(60.0 / scale);
    server.reset_counters().await?;
    let log = Arc::new(FleetLog {
        start: Instant::now(),
        requests: Mutex::new(Vec::with_capacity(devices * (periods as usize + 3))),
        failures: Mutex::new(std::collections::BTreeMap::new()),
    });
    let mut engines: Vec<(Engine, DemandGuard)> = Vec::with_capacity(devices);
    let mut boots = Vec::with_capacity(devices);
    for i in 0..devices {
        let id = format!("{prefix}{i}");
        let oauth2 = OAuth2::new(
            http.clone(),
            OAuth2Endpoint::TokenUrl(token_url.clone()),
            id.clone(),
            None,
        )?;
        let device = Arc::new(Device {
            oauth2,
            secret: secret(format!("{id}-secret")),
            index: i as u32,
            log: Arc::clone(&log),
        });
        let engine = Engine::start(settings.clone());
        let demand = engine.hold_demand(min_valid);
        let offset = match start {
            Start::Staggered => lifetime.mul_f64(settings.ahead * rand::random::<f64>()),
            Start::Synchronised => Duration::ZERO,
        };
        let booting = engine.clone();
        boots.push(tokio::spawn(async move {
            tokio::time::sleep(offset).await;
            booting.activate(device, None).await;
        }));
        engines.push((engine, demand));
    }
    // Sample the emulator's active tokens per client while the fleet runs.
    let end = lifetime + lifetime.mul_f64(2.0 / 3.0) * periods;
    let deadline = log.start + end;
    let mut max_active = 0u64;
    while Instant::now() < deadline {
        tokio::time::sleep((lifetime / 8).min(Duration::from_millis(500))).await;
        let counters = server.counters().await?;
        if let Some(map) = counters["activeTokens"].as_object() {
            let top = map
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .filter_map(|(_, v)| v.as_u64())
                .max()
                .unwrap_or(0);
            max_active = max_active.max(top);
        }
    }
    for (engine, _) in &engines {
        engine.shutdown();
    }
    for boot in boots {
        boot.abort();
    }
    let counters = server.counters().await?;
    drop(engines);
    let requests = std::mem::take(
        &mut *log
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let failed = requests.iter().filter(|r| !r.2).count();
    let failures = std::mem::take(
        &mut *log
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    // How long the boot burst took to be served: the spread of first requests.
    let mut first = vec![None; devices];
    for (device, at, _) in &requests {
        first[*device as usize].get_or_insert(*at);
    }
    let firsts: Vec<Duration> = first.into_iter().flatten().collect();
    let boot_spread = match (firsts.iter().min(), firsts.iter().max()) {
        (Some(a), Some(b)) => *b - *a,
        _ => Duration::ZERO,
    };
    Ok(Outcome {
        requests,
        failed,
        failures,
        upstream_at_emulator: total(&counters, "oauth_token"),
        max_active_tokens: max_active,
        window: (lifetime, end),
        scale,
        settings_jitter: jitter,
        boot_spread,
    })
}

impl Outcome {
    fn row(&self, name: &str, devices: usize, lifetime: Duration, start: Start) -> Row {
        // Renewals: every request after a device's first.
        let mut seen = vec![false; devices];
        let mut renewals = Vec::with_capacity(self.requests.len());
        for (device, at, _) in &self.requests {
            let slot = &mut seen[*device as usize];
            if *slot {
                renewals.push(*at);
            }
            *slot = true;
        }
        // One fleet-minute per bin.
        let bin = Duration::from_secs_f64(60.0 / self.scale);
        let counts = histogram(&renewals, self.window.0, self.window.1, bin);
        let (peak, mean) = peak_and_mean(&counts);
        let ratio = if mean > 0.0 {
            peak as f64 / mean
        } else {
            f64::NAN
        };
        // The last renewal period alone: is the herd still there?
        let period_bins = ((lifetime.as_secs_f64() * 2.0 / 3.0) / bin.as_secs_f64()) as usize;
        let tail = &counts[counts.len().saturating_sub(period_bins)..];
        let (tail_peak, tail_mean) = peak_and_mean(tail);
        let per_s = |per_bin: f64| per_bin / 60.0;
        let mut row = Row::new(format!("fleet/{name}"))
            .figure("devices", devices as f64)
            .figure("peak_renewals_per_s", per_s(peak as f64))
            .figure("mean_renewals_per_s", per_s(mean))
            .figure("upstream_requests", self.upstream_at_emulator as f64)
            .figure("failed_requests", self.failed as f64)
            .figure(
                "max_active_tokens_per_client",
                self.max_active_tokens as f64,
            )
            .figure("boot_spread_ms", self.boot_spread.as_secs_f64() * 1000.0)
            .ratio("peak_vs_mean", ratio)
            .ratio(
                "last_period_peak_vs_mean",
                tail_peak as f64 / tail_mean.max(f64::MIN_POSITIVE),
            )
            .series(
                "renewals_per_fleet_minute",
                counts.iter().map(|c| *c as f64).collect(),
            );
        let what = match start {
            Start::Staggered => "devices boot at random times over one renewal period",
            Start::Synchronised => "every device boots at once",
        };
        let mut note = format!(
            "{what}; jitter ±{:.0} %; 1 h tokens scaled {:.0}× ({} ms); rates per fleet-second in fleet-minute bins, from one lifetime after start to the end",
            self.settings_jitter * 100.0,
            self.scale,
            lifetime.as_millis()
        );
        if !self.failures.is_empty() {
            let list: Vec<String> = self
                .failures
                .iter()
                .map(|(code, n)| format!("{code} ×{n}"))
                .collect();
            note.push_str(&format!(
                "; failed requests: {} (retried by the engines)",
                list.join(", ")
            ));
        }
        row = row.note(note);
        // Issue 15's targets: a fleet of unrelated starts is flat, and one
        // that started (or recovered) together is flat from its second
        // period on (the bins begin one lifetime after the start). Without
        // jitter only the first renewal is spread: informational.
        if start == Start::Staggered {
            row = row.target("peak renewals per second <= 1.2x the mean", ratio <= 1.2);
        } else if self.settings_jitter > 0.0 {
            row = row.target(
                "peak renewals per second <= 1.5x the mean from the second period on",
                ratio <= 1.5,
            );
        }
        row
    }
}
