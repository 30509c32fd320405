//! Memory: the agent's resident set (`VmRSS` from `/proc/PID/status`) idle,
//! and with 1,000 and 10,000 idle connections that have said `hello`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::lab::Lab;
use crate::machine::rss_kib;
use crate::raw;
use crate::report::Row;

/// Time for the agent to settle before a reading: an idle agent is one that
/// has had nothing to do for a while. It gives back its start-up code pages
/// a second after it is ready (regent_agent::trim), so the reading waits
/// two.
const SETTLE: Duration = Duration::from_secs(2);

/// Runs the scenario.
///
/// # Errors
/// When the agent cannot start, a connection fails, or RSS cannot be read.
pub fn run(lab: &Lab) -> Result<Vec<Row>> {
    let enrolled = lab.enrolled()?;
    let agent = lab.spawn_agent(&enrolled.home)?;
    let pid = agent.pid();
    {
        // Idle means started, with its stored token served once.
        let client = regent_client::blocking::Client::connect(
            regent_client::ClientOptions::new("regent-bench").socket(&agent.socket),
        )?;
        client.token(Duration::from_secs(60))?;
    }
    std::thread::sleep(SETTLE);
    let idle = rss_kib(pid)?;
    let (soft, hard) = lab.open_files;
    let mut rows = vec![
        Row::new("memory/idle")
            .figure("rss_kib", idle as f64)
            .figure("rss_mib", idle as f64 / 1024.0)
            .target("idle resident set <= 6 MiB", idle <= 6 * 1024)
            .note(format!(
                "agent: {}; open-file limit {soft} (hard {hard})",
                lab.agent_bin.describe()
            )),
    ];
    let hello = raw::hello_frame()?;
    let mut connections: Vec<UnixStream> = Vec::new();
    let steps: Vec<usize> = lab.size(vec![1000, 10_000], vec![100, 1000]);
    let last = steps.last().copied().unwrap_or(0);
    for target in steps {
        let from = connections.len();
        for _ in from..target {
            let mut c = UnixStream::connect(&agent.socket)
                .with_context(|| format!("connection {} of {target}", connections.len() + 1))?;
            c.write_all(&hello)?;
            connections.push(c);
        }
        // Every connection has been accepted and has said hello once its
        // reply arrived.
        let mut reply = [0u8; 512];
        for c in &mut connections[from..] {
            c.set_read_timeout(Some(Duration::from_secs(20)))?;
            let n = c.read(&mut reply)?;
            anyhow::ensure!(
                n > 0,
                "the agent closed a connection instead of answering hello"
            );
        }
        std::thread::sleep(SETTLE);
        let rss = rss_kib(pid)?;
        let per_conn = (rss.saturating_sub(idle)) as f64 / target as f64;
        let mut row = Row::new(format!("memory/conns_{target}"))
            .figure("rss_kib", rss as f64)
            .figure("rss_mib", rss as f64 / 1024.0)
            .figure("kib_per_conn", per_conn)
            .baseline("idle_rss_kib", idle as f64);
        if target == last {
            row = row.target(
                format!("<= 8 KiB per idle connection at {target} connections"),
                per_conn <= 8.0,
            );
        }
        rows.push(row);
    }
    drop(connections);
    agent.terminate()?;
    Ok(rows)
}
