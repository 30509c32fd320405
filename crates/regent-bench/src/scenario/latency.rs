//! Handout latency as apps really call the agent, each case against its floor
//! taken in the same run, interleaved in rounds so that drift (and the 2-vCPU
//! same-CPU / cross-CPU wake-up split) hits every case alike:
//!
//! - **persistent connection**: the blocking client, the C library and the
//!   async client, one cached-token request at a time, against the floor — a
//!   blocking std client and a blocking, single-thread std server
//!   ([`raw::serve_floor`]) exchanging frames of the same sizes — and the
//!   async client also against the raw tokio round trip;
//! - **connect per call**: connect, one token, close
//!   (`blocking::Client::token_once`: `hello` and `token` in one write)
//!   against connect, one round trip, close to a floor server;
//! - **a whole process**: `regent token` spawned and waited for, against
//!   `true` spawned the same way.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use regent_client::ClientOptions;

use crate::ffi;
use crate::lab::Lab;
use crate::raw::{self, RawAsync, RawBlocking};
use crate::report::Row;
use crate::stats::Latency;

const MIN_VALID: Duration = Duration::from_secs(60);

/// Runs the scenario twice: in a child process pinned with everything it
/// starts to one CPU (`handout_latency/…`: on a 2-vCPU VM a cross-CPU wake-up
/// costs ~50 µs against ~4 µs on the same CPU), and here, unpinned
/// (`handout_latency_spread/…`), as apps really run. Both are judged, the
/// unpinned rows with the looser persistent-connection target.
///
/// # Errors
/// When the agent, a baseline server or a client fails.
pub fn run(lab: &Lab) -> Result<Vec<Row>> {
    if lab.pinned {
        return measure(lab, "handout_latency");
    }
    if !cfg!(target_os = "linux") {
        // No CPU pinning here (sched_setaffinity is Linux's): only the
        // unpinned rows.
        return measure(lab, "handout_latency_spread");
    }
    let mut rows = Vec::new();
    for line in lab.run_pinned(&["latency"])?.lines() {
        let row: Row = serde_json::from_str(line)
            .with_context(|| format!("a row from the pinned run: {line}"))?;
        if row.name.ends_with("/error") {
            bail!("the pinned run failed: {}", row.note.unwrap_or_default());
        }
        rows.push(row);
    }
    rows.extend(measure(lab, "handout_latency_spread")?);
    Ok(rows)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Floor,
    Blocking,
    C,
    RawTokio,
    Async,
    FloorConnect,
    Connect,
}

fn measure(lab: &Lab, scenario: &str) -> Result<Vec<Row>> {
    let enrolled = lab.enrolled()?;
    let agent = lab.spawn_agent(&enrolled.home)?;
    let socket = &agent.socket;

    // The baselines answer with as many bytes as the agent does.
    let mut probe = RawBlocking::connect(socket)?;
    probe.call(&raw::hello_frame()?)?;
    let reply_frame = probe.call(&raw::token_frame(2, MIN_VALID.as_secs())?)?;
    let request = raw::token_frame(1_000_000, MIN_VALID.as_secs())?;
    drop(probe);
    let payload = reply_frame - regent_proto::frame::HEADER;
    let echo = lab.spawn_echo(payload)?;
    // One floor server per client: it serves one connection at a time.
    let floor = lab.spawn_floor("-persistent", payload)?;
    let floor_connect = lab.spawn_floor("-connect", payload)?;

    let options = ClientOptions::new("regent-bench").socket(socket);
    let blocking = regent_client::blocking::Client::connect(options.clone())?;
    let async_client = lab
        .rt
        .block_on(regent_client::Client::connect(options.clone()))?;
    let mut floor_client = RawBlocking::connect(&floor.socket)?;
    let mut raw_tokio = Some(lab.rt.block_on(RawAsync::connect(&echo.socket))?);
    let mut c_client = ffi::CClient::connect(socket);

    let rounds = lab.size(40, 4);
    let per_round = lab.size(500, 100);
    let warmup = lab.size(2000, 100);

    let mut cases = vec![
        Case::Floor,
        Case::Blocking,
        Case::RawTokio,
        Case::Async,
        Case::FloorConnect,
        Case::Connect,
    ];
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
                Case::Floor => time_blocking(n, || floor_client.call(&request).map(drop))?,
                Case::Blocking => time_blocking(n, || blocking.token(MIN_VALID).map(drop))?,
                Case::C => match &mut c_client {
                    Ok(c) => time_blocking(n, || c.token(MIN_VALID))?,
                    Err(_) => Vec::new(),
                },
                Case::FloorConnect => time_blocking(n, || {
                    RawBlocking::connect(&floor_connect.socket)?
                        .call(&request)
                        .map(drop)
                })?,
                Case::Connect => time_blocking(n, || {
                    regent_client::blocking::Client::token_once(options.clone(), MIN_VALID)
                        .map(drop)
                })?,
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
                                got.push(elapsed_ns(t));
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
                                got.push(elapsed_ns(t));
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
    let floor_l = latency(Case::Floor).context("floor samples missing")?;
    let raw_tokio_l = latency(Case::RawTokio).context("raw async samples missing")?;
    let blocking_l = latency(Case::Blocking).context("blocking samples missing")?;
    let async_l = latency(Case::Async).context("async samples missing")?;
    let floor_connect_l = latency(Case::FloorConnect).context("connect floor missing")?;
    let connect_l = latency(Case::Connect).context("connect samples missing")?;
    let c = latency(Case::C);

    // Persistent handouts: 1.3× the floor pinned, 1.5× unpinned; p99 2×.
    let persistent = if lab.pinned { 1.3 } else { 1.5 };
    let persistent_target = format!("p50 <= {persistent}x and p99 <= 2x the floor");
    let sizes = format!(
        "request {} B, reply {reply_frame} B (frames); {} samples per case in {rounds} interleaved rounds; {}",
        request.len(),
        floor_l.n,
        if lab.pinned {
            "client, agent and baselines pinned to one CPU"
        } else {
            "unpinned: 2 vCPUs, wake-ups same-CPU or cross-CPU at the scheduler's whim"
        }
    );
    let mut rows = vec![
        figures(Row::new(format!("{scenario}/floor")), &floor_l).note(format!(
            "the floor: a blocking std client and a blocking, single-thread std server; {sizes}"
        )),
        compared(
            Row::new(format!("{scenario}/blocking")),
            &blocking_l,
            &floor_l,
            Some((persistent_target.as_str(), persistent, 2.0)),
        )
        .note("regent_client::blocking::Client::token vs the floor"),
    ];
    rows.push(match (c, &c_client) {
        (Some(c), _) => {
            let vs_blocking = c.p50 / blocking_l.p50;
            let pass = c.p50 / floor_l.p50 <= persistent
                && c.p99 / floor_l.p99 <= 2.0
                && vs_blocking <= 1.2;
            compared(Row::new(format!("{scenario}/c")), &c, &floor_l, None)
                .baseline("blocking_p50_us", blocking_l.p50)
                .ratio("p50_vs_blocking", vs_blocking)
                .target(
                    format!("{persistent_target}; p50 <= 1.2x the Rust blocking client"),
                    pass,
                )
                .note("regent_client_token() + regent_token_free() from libregent vs the floor")
        }
        (None, Err(reason)) => {
            Row::new(format!("{scenario}/c")).note(format!("not available: {reason}"))
        }
        (None, Ok(_)) => Row::new(format!("{scenario}/c")).note("not measured"),
    });
    rows.push(
        figures(Row::new(format!("{scenario}/raw_tokio")), &raw_tokio_l)
            .note("baseline: tokio UnixStream to a tokio echo server"),
    );
    rows.push(
        compared(
            Row::new(format!("{scenario}/async")),
            &async_l,
            &raw_tokio_l,
            Some(("p50 <= 1.5x the raw tokio round trip", 1.5, f64::INFINITY)),
        )
        .ratio("p50_vs_floor", async_l.p50 / floor_l.p50)
        .note("regent_client::Client::token (tokio) vs raw_tokio"),
    );
    rows.push(
        figures(
            Row::new(format!("{scenario}/connect_floor")),
            &floor_connect_l,
        )
        .note("the floor: connect, one round trip, close (std, to a floor server)"),
    );
    rows.push(
        compared(
            Row::new(format!("{scenario}/connect_token")),
            &connect_l,
            &floor_connect_l,
            Some((
                "p50 <= 1.5x the floor's connect + round trip",
                1.5,
                f64::INFINITY,
            )),
        )
        .note("blocking::Client::token_once (connect, hello and token in one write, close) vs connect_floor"),
    );
    rows.extend(processes(lab, scenario, socket)?);
    drop(echo);
    drop(floor);
    drop(floor_connect);
    agent.terminate()?;
    Ok(rows)
}

/// `regent token` as a whole process against `true`, both spawned and waited
/// for the same way, interleaved.
fn processes(lab: &Lab, scenario: &str, socket: &Path) -> Result<Vec<Row>> {
    let Some(regent) = lab.regent_bin() else {
        return Ok(vec![Row::new(format!("{scenario}/process_token")).note(
            "not available: the bench plays the agent (no `regent` binary beside it)",
        )]);
    };
    let Some(truth) = ["/bin/true", "/usr/bin/true"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
    else {
        return Ok(vec![Row::new(format!("{scenario}/process_token")).note(
            "not available: no /bin/true or /usr/bin/true to compare with",
        )]);
    };
    let mut token = Command::new(regent);
    token
        .arg("token")
        .arg("--socket")
        .arg(socket)
        .arg("--min-valid")
        .arg(MIN_VALID.as_secs().to_string());
    let mut baseline = Command::new(truth);
    let rounds = lab.size(10, 2);
    let per_round = lab.size(30, 3);
    let mut floor = Vec::new();
    let mut regent_samples = Vec::new();
    for round in 0..=rounds {
        let a = time_process(&mut baseline, per_round)?;
        let b = time_process(&mut token, per_round)?;
        if round > 0 {
            floor.extend(a);
            regent_samples.extend(b);
        }
    }
    let floor = Latency::of(&mut floor);
    let regent_l = Latency::of(&mut regent_samples);
    Ok(vec![
        figures(Row::new(format!("{scenario}/process_true")), &floor).note(format!(
            "the floor: {} spawned and waited for (std::process::Command, output to /dev/null)",
            truth.display()
        )),
        compared(
            Row::new(format!("{scenario}/process_token")),
            &regent_l,
            &floor,
            Some((
                "p50 <= 1.6x `true` spawned the same way",
                1.6,
                f64::INFINITY,
            )),
        )
        .note("`regent token --socket S --min-valid 60` spawned and waited for"),
    ])
}

fn time_process(cmd: &mut Command, n: usize) -> Result<Vec<u64>> {
    let mut got = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let status = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .with_context(|| format!("cannot run {cmd:?}"))?;
        got.push(elapsed_ns(t));
        if !status.success() {
            bail!("{cmd:?} failed: {status}");
        }
    }
    Ok(got)
}

fn elapsed_ns(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn time_blocking<E>(n: usize, mut call: impl FnMut() -> Result<(), E>) -> Result<Vec<u64>>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let mut got = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        call()?;
        got.push(elapsed_ns(t));
    }
    Ok(got)
}

fn figures(row: Row, l: &Latency) -> Row {
    row.figure("p50_us", l.p50)
        .figure("p90_us", l.p90)
        .figure("p99_us", l.p99)
        .figure("max_us", l.max)
}

/// `l` against `base`; `target` is (text, p50 limit, p99 limit).
fn compared(row: Row, l: &Latency, base: &Latency, target: Option<(&str, f64, f64)>) -> Row {
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
    match target {
        Some((text, p50_limit, p99_limit)) => {
            row.target(text, p50 <= p50_limit && p99 <= p99_limit)
        }
        None => row,
    }
}
