//! Handout latency: sequential cached-token requests through the blocking
//! client, the async client and the C library, against the raw echo baseline
//! of the same size, interleaved in rounds so that drift (and the 2-vCPU
//! same-CPU / cross-CPU wake-up split) hits every case alike.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use regent_client::ClientOptions;

use crate::ffi;
use crate::lab::Lab;
use crate::raw::{self, RawAsync, RawBlocking};
use crate::report::Row;
use crate::stats::Latency;

const MIN_VALID: Duration = Duration::from_secs(60);

/// Runs the scenario twice: in a child process pinned with everything it
/// starts to one CPU (the rows that meet the targets: on a 2-vCPU VM a
/// cross-CPU wake-up costs ~50 µs against ~4 µs on the same CPU, so an
/// unpinned p50 lands in either mode from one run to the next), and here,
/// unpinned (`handout_latency_spread/…`, for information).
///
/// # Errors
/// When the agent, the echo server or a client fails.
pub fn run(lab: &Lab) -> Result<Vec<Row>> {
    if lab.pinned {
        return measure(lab, "handout_latency", true);
    }
    if !cfg!(target_os = "linux") {
        // No CPU pinning here (sched_setaffinity is Linux's): only the
        // unpinned spread, whose targets are not judged.
        return measure(lab, "handout_latency_spread", false);
    }
    let mut rows = Vec::new();
    for line in lab.run_pinned(&["latency"])?.lines() {
        let row: Row = serde_json::from_str(line)
            .with_context(|| format!("a row from the pinned run: {line}"))?;
        if row.name.ends_with("/error") {
            anyhow::bail!("the pinned run failed: {}", row.note.unwrap_or_default());
        }
        rows.push(row);
    }
    rows.extend(measure(lab, "handout_latency_spread", false)?);
    Ok(rows)
}

fn measure(lab: &Lab, scenario: &str, targets: bool) -> Result<Vec<Row>> {
    let enrolled = lab.enrolled()?;
    let agent = lab.spawn_agent(&enrolled.home)?;
    let socket = &agent.socket;

    // The echo server answers with as many bytes as the agent does.
    let mut probe = RawBlocking::connect(socket)?;
    probe.call(&raw::hello_frame()?)?;
    let reply_frame = probe.call(&raw::token_frame(2, MIN_VALID.as_secs())?)?;
    let request_frame = raw::token_frame(1_000_000, MIN_VALID.as_secs())?.len();
    drop(probe);
    let echo = lab.spawn_echo(reply_frame - regent_proto::frame::HEADER)?;

    let options = ClientOptions::new("regent-bench").socket(socket);
    let blocking = regent_client::blocking::Client::connect(options.clone())?;
    let async_client = lab.rt.block_on(regent_client::Client::connect(options))?;
    let mut raw_std = RawBlocking::connect(&echo.socket)?;
    let mut raw_tokio = Some(lab.rt.block_on(RawAsync::connect(&echo.socket))?);
    let request = raw::token_frame(1_000_000, MIN_VALID.as_secs())?;
    let mut c_client = ffi::CClient::connect(socket);

    let rounds = lab.size(40, 4);
    let per_round = lab.size(500, 100);
    let warmup = lab.size(2000, 100);

    let mut cases: Vec<Case> = vec![Case::RawStd, Case::Blocking, Case::RawTokio, Case::Async];
    if c_client.is_ok() {
        cases.push(Case::C);
    }
    let mut samples: Vec<Vec<u64>> = vec![Vec::with_capacity(rounds * per_round); cases.len()];
    for round in 0..=rounds {
        for k in 0..cases.len() {
            // Rotate the order each round.
            let i = (k + round) % cases.len();
            let n = if round == 0 { warmup } else { per_round };
            let got = match cases[i] {
                Case::RawStd => time_blocking(n, || raw_std.call(&request).map(drop))?,
                Case::Blocking => time_blocking(n, || blocking.token(MIN_VALID).map(drop))?,
                Case::C => match &mut c_client {
                    Ok(c) => time_blocking(n, || c.token(MIN_VALID))?,
                    Err(_) => Vec::new(),
                },
                Case::RawTokio => {
                    let mut client = raw_tokio
                        .take()
                        .ok_or_else(|| anyhow!("raw async client lost"))?;
                    let request = request.clone();
                    let (client, got) = lab.rt.block_on(async move {
                        tokio::spawn(async move {
                            let mut got = Vec::with_capacity(n);
                            for _ in 0..n {
                                let t = Instant::now();
                                client.call(&request).await?;
                                got.push(t.elapsed().as_nanos() as u64);
                            }
                            Ok::<_, std::io::Error>((client, got))
                        })
                        .await
                    })??;
                    raw_tokio = Some(client);
                    got
                }
                Case::Async => {
                    let client = async_client.clone();
                    lab.rt.block_on(async move {
                        tokio::spawn(async move {
                            let mut got = Vec::with_capacity(n);
                            for _ in 0..n {
                                let t = Instant::now();
                                client.token(MIN_VALID).await?;
                                got.push(t.elapsed().as_nanos() as u64);
                            }
                            Ok::<_, regent_client::Error>(got)
                        })
                        .await
                    })??
                }
            };
            if round > 0 {
                samples[i].extend(got);
            }
        }
    }
    let mut latency = |case: Case| -> Option<Latency> {
        cases
            .iter()
            .position(|c| *c == case)
            .map(|i| Latency::of(&mut samples[i]))
    };
    let raw_std = latency(Case::RawStd).context("raw baseline missing")?;
    let raw_tokio = latency(Case::RawTokio).context("raw async baseline missing")?;
    let blocking = latency(Case::Blocking).context("blocking samples missing")?;
    let async_l = latency(Case::Async).context("async samples missing")?;
    let c = latency(Case::C);

    let sizes = format!(
        "request {request_frame} B, reply {reply_frame} B (frames); {} samples per case in {rounds} interleaved rounds; {}",
        raw_std.n,
        if lab.pinned {
            "client, agent and echo server pinned to one CPU"
        } else {
            "unpinned: 2 vCPUs, wake-ups same-CPU or cross-CPU at the scheduler's whim"
        }
    );
    let mut rows = vec![
        figures(Row::new(format!("{scenario}/raw_std")), &raw_std).note(format!(
            "baseline: std UnixStream to the echo server; {sizes}"
        )),
        figures(Row::new(format!("{scenario}/raw_tokio")), &raw_tokio)
            .note("baseline: tokio UnixStream to the echo server"),
        compared(
            Row::new(format!("{scenario}/blocking")),
            &blocking,
            &raw_std,
            targets,
        )
        .note("regent_client::blocking::Client::token vs raw_std"),
        compared(
            Row::new(format!("{scenario}/async")),
            &async_l,
            &raw_tokio,
            targets,
        )
        .note("regent_client::Client::token (tokio) vs raw_tokio"),
    ];
    rows.push(match (c, &c_client) {
        (Some(c), _) => {
            let vs_blocking = c.p50 / blocking.p50;
            let mut row = figures(Row::new(format!("{scenario}/c")), &c)
                .baseline("blocking_p50_us", blocking.p50)
                .baseline("raw_p50_us", raw_std.p50)
                .ratio("p50_vs_blocking", vs_blocking)
                .ratio("p50_vs_raw", c.p50 / raw_std.p50)
                .ratio("p99_vs_raw", c.p99 / raw_std.p99)
                .note("regent_client_token() + regent_token_free() from libregent");
            if targets {
                row = row.target(
                    "C call p50 <= 1.2x the Rust blocking client",
                    vs_blocking <= 1.2,
                );
            }
            row
        }
        (None, Err(reason)) => {
            Row::new(format!("{scenario}/c")).note(format!("not available: {reason}"))
        }
        (None, Ok(_)) => Row::new(format!("{scenario}/c")).note("not measured"),
    });
    drop(echo);
    agent.terminate()?;
    Ok(rows)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    RawStd,
    RawTokio,
    Blocking,
    Async,
    C,
}

fn time_blocking<E>(n: usize, mut call: impl FnMut() -> Result<(), E>) -> Result<Vec<u64>>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let mut got = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        call()?;
        got.push(t.elapsed().as_nanos() as u64);
    }
    Ok(got)
}

fn figures(row: Row, l: &Latency) -> Row {
    row.figure("p50_us", l.p50)
        .figure("p90_us", l.p90)
        .figure("p99_us", l.p99)
        .figure("max_us", l.max)
}

fn compared(row: Row, l: &Latency, base: &Latency, targets: bool) -> Row {
    let p50 = l.p50 / base.p50;
    let p99 = l.p99 / base.p99;
    let row = figures(row, l)
        .baseline("p50_us", base.p50)
        .baseline("p90_us", base.p90)
        .baseline("p99_us", base.p99)
        .baseline("max_us", base.max)
        .ratio("p50", p50)
        .ratio("p90", l.p90 / base.p90)
        .ratio("p99", p99);
    if targets {
        row.target(
            "p50 <= 1.5x and p99 <= 2x the raw round trip",
            p50 <= 1.5 && p99 <= 2.0,
        )
    } else {
        row
    }
}
