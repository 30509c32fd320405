//! The processes the bench starts from its own binary: the agent (the same
//! daemon as `regent agent`), the echo baseline, the floor, and a load driver for
//! profiling an agent from outside.

use std::path::Path;
#[cfg(unix)]
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use regent_agent::config::Config;
use regent_agent::daemon::DaemonOptions;

#[cfg(unix)]
use crate::raw;
use crate::stats::Latency;

/// `regent-bench agent --config PATH`: runs the agent like `regent agent`
/// (config watch on, logs to stderr at the configured level) until SIGTERM.
///
/// # Errors
/// Config, runtime or daemon failures.
pub fn agent(config_path: &Path) -> Result<()> {
    let config = Config::load(config_path)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let rt = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    let options = DaemonOptions {
        config_path: Some(config_path.to_owned()),
        ..DaemonOptions::default()
    };
    rt.block_on(regent_agent::daemon::run_with(
        config,
        options,
        terminated(),
    ))?;
    Ok(())
}

/// `regent-bench echo --socket PATH --reply-bytes N`: the raw baseline server,
/// on the same kind of runtime as the agent, until SIGTERM.
///
/// # Errors
/// Runtime or bind failures.
#[cfg(unix)]
pub fn echo(socket: &Path, reply_bytes: usize) -> Result<()> {
    let rt = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    rt.block_on(async {
        let listener = tokio::net::UnixListener::bind(socket)
            .with_context(|| format!("cannot listen on {}", socket.display()))?;
        let reply: Arc<[u8]> = raw::reply_frame(reply_bytes).into();
        tokio::select! {
            () = raw::serve_echo(listener, reply) => {}
            () = terminated() => {}
        }
        let _ = std::fs::remove_file(socket);
        Ok(())
    })
}

/// The raw baseline server needs Unix sockets.
///
/// # Errors
/// Always, naming the platform's limit.
#[cfg(not(unix))]
pub fn echo(socket: &Path, reply_bytes: usize) -> Result<()> {
    let _ = reply_bytes;
    anyhow::bail!(
        "the raw echo baseline ({}) needs Unix sockets, which this platform's bench does not use",
        socket.display()
    )
}

/// `regent-bench floor --socket PATH --reply-bytes N`: the floor server (one
/// thread, blocking calls, one connection at a time) until it is killed.
///
/// # Errors
/// Bind or accept failures.
#[cfg(unix)]
pub fn floor(socket: &Path, reply_bytes: usize) -> Result<()> {
    let listener = std::os::unix::net::UnixListener::bind(socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    raw::serve_floor(&listener, &raw::reply_frame(reply_bytes))
        .with_context(|| format!("the floor server on {} stopped", socket.display()))
}

/// The floor server needs Unix sockets.
///
/// # Errors
/// Always, naming the platform's limit.
#[cfg(not(unix))]
pub fn floor(socket: &Path, reply_bytes: usize) -> Result<()> {
    let _ = reply_bytes;
    anyhow::bail!(
        "the floor server ({}) needs Unix sockets, which this platform's bench does not use",
        socket.display()
    )
}

/// `regent-bench drive --socket PATH --requests N`: N sequential cached-token
/// requests through the blocking client, then their percentiles (for running
/// the agent under a profiler).
///
/// # Errors
/// Connection or request failures.
pub fn drive(socket: &Path, requests: usize) -> Result<()> {
    let client = regent_client::blocking::Client::connect(
        regent_client::ClientOptions::new("regent-bench-drive").socket(socket),
    )?;
    let mut samples = Vec::with_capacity(requests);
    let start = Instant::now();
    for _ in 0..requests {
        let t = Instant::now();
        client.token(Duration::from_secs(60))?;
        samples.push(t.elapsed().as_nanos() as u64);
    }
    let elapsed = start.elapsed();
    let l = Latency::of(&mut samples);
    println!(
        "{requests} handouts in {:.2} s: p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        elapsed.as_secs_f64(),
        l.p50,
        l.p90,
        l.p99,
        l.max
    );
    Ok(())
}

/// `regent-bench emulator`: the emulator on `127.0.0.1:0` with default
/// settings and the control key from `$REGENT_BENCH_EMULATOR_KEY`; prints its
/// URL on the first line of stdout, then serves until SIGTERM.
///
/// # Errors
/// Runtime, bind or configuration failures.
pub fn emulator() -> Result<()> {
    use std::io::Write as _;
    let mut config = regent_emulator::EmulatorConfig::default();
    if let Ok(key) = std::env::var(crate::lab::EMULATOR_KEY_ENV) {
        config.admin_key = key;
    }
    let rt = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let mut out = std::io::stdout().lock();
        writeln!(out, "{url}")?;
        out.flush()?;
        drop(out);
        regent_emulator::run(listener, config, terminated()).await?;
        Ok(())
    })
}

/// Resolves on SIGTERM or SIGINT.
#[cfg(unix)]
async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without handlers the parent's SIGKILL still ends us.
        _ => std::future::pending::<()>().await,
    }
}

/// Resolves on Ctrl-C (Ctrl-Break and console close end the process).
#[cfg(not(unix))]
async fn terminated() {
    if tokio::signal::ctrl_c().await.is_err() {
        // Without a handler the parent's kill still ends us.
        std::future::pending::<()>().await;
    }
}
