//! Upstream efficiency: 1 … 10,000 clients, each on its own connection,
//! keep asking one agent for tokens during five renewal periods of short
//! (3 s) tokens. The emulator counts the renewals; each client checks every
//! token it gets against its `min_valid`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use regent_client::ClientOptions;
use regent_emulator::EmulatorConfig;

use crate::lab::{Home, Lab, Server};
use crate::report::Row;

/// Token lifetime at the emulator.
const LIFETIME: Duration = Duration::from_secs(3);
/// What every client asks for.
const MIN_VALID: Duration = Duration::from_secs(1);
/// `expires_at_ms` is truncated to the millisecond on the wire.
const WIRE_ROUNDING: Duration = Duration::from_millis(1);

/// The renewal period the agent plans for these settings: the earlier of
/// 2/3 of the lifetime (± 10 % jitter) and `lifetime − (min_valid + margin)`,
/// where the margin is capped at a tenth of the lifetime (DESIGN §4, ARCHITECTURE).
fn renewal_period() -> Duration {
    let margin = Duration::from_secs(30).min(LIFETIME / 10);
    (LIFETIME.mul_f64(2.0 / 3.0 * 0.9)).min(LIFETIME - MIN_VALID - margin)
}

#[derive(Debug, Default)]
struct Tally {
    handouts: AtomicU64,
    below_min_valid: AtomicU64,
    errors: AtomicU64,
}

/// Runs the scenario.
///
/// # Errors
/// When the emulator, the agent or a client connection fails.
pub fn run(lab: &Lab) -> Result<Vec<Row>> {
    let server = lab.rt.block_on(Server::start(EmulatorConfig {
        access_token_lifespan: LIFETIME,
        ..EmulatorConfig::default()
    }))?;
    let home = Home::new(&lab.subdir("upstream")?, &server.url(), "")?;
    lab.enroll(&server, &home)?;
    let agent = lab.spawn_agent(&home)?;
    let periods = lab.size(5u32, 2);
    let period = renewal_period();
    let run_for = period * periods;
    let counts: Vec<usize> = if lab.quick {
        vec![1, 10, 100]
    } else {
        vec![1, 10, 100, 1000, 10_000]
    };
    let mut rows = Vec::new();
    for clients in counts {
        let tally = Arc::new(Tally::default());
        let renewals = lab.rt.block_on(async {
            let mut connected = Vec::with_capacity(clients);
            for _ in 0..clients {
                let options = ClientOptions::new("regent-bench").socket(&agent.socket);
                connected.push(regent_client::Client::connect(options).await?);
            }
            // Spread the load: at most ~10,000 requests/s in all.
            let interval =
                Duration::from_micros(100 * clients as u64).max(Duration::from_millis(10));
            server.reset_counters().await?;
            let deadline = Instant::now() + run_for;
            let tasks: Vec<_> = connected
                .into_iter()
                .map(|client| {
                    let tally = Arc::clone(&tally);
                    let phase = interval.mul_f64(rand::random::<f64>());
                    tokio::spawn(async move {
                        tokio::time::sleep(phase).await;
                        while Instant::now() < deadline {
                            let asked = SystemTime::now();
                            match client.token(MIN_VALID).await {
                                Ok(token) => {
                                    tally.handouts.fetch_add(1, Ordering::Relaxed);
                                    if token.expires_at + WIRE_ROUNDING < asked + MIN_VALID {
                                        tally.below_min_valid.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                                Err(_) => {
                                    tally.errors.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            tokio::time::sleep(interval).await;
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await?;
            }
            let counters = server.counters().await?;
            Ok::<_, anyhow::Error>(counters["refreshes"].as_u64().unwrap_or(0))
        })?;
        let below = tally.below_min_valid.load(Ordering::Relaxed);
        let errors = tally.errors.load(Ordering::Relaxed);
        let per_period = renewals as f64 / f64::from(periods);
        let pass = renewals <= u64::from(periods) + 1 && below == 0 && errors == 0;
        let mut row = Row::new(format!("upstream/clients_{clients}"))
            .figure("upstream_renewals", renewals as f64)
            .figure("renewal_periods", f64::from(periods))
            .figure("handouts", tally.handouts.load(Ordering::Relaxed) as f64)
            .figure("below_min_valid", below as f64)
            .figure("errors", errors as f64)
            .ratio("renewals_per_period", per_period)
            .target(
                "one upstream renewal per period whatever the client count (<= periods + 1), 0 tokens below min_valid, 0 errors",
                pass,
            );
        if clients == 1 {
            row = row.note(format!(
                "{}s tokens, min_valid {}s, period {:.2}s planned by the agent, {:.1}s per run; renewals counted at the emulator",
                LIFETIME.as_secs(),
                MIN_VALID.as_secs(),
                period.as_secs_f64(),
                run_for.as_secs_f64()
            ));
        }
        rows.push(row);
    }
    agent.terminate()?;
    Ok(rows)
}
