//! Throughput: C concurrent clients (one connection each, one request in
//! flight each) send a fixed number of cached-token requests to the agent,
//! and the same number of same-size frames to the echo baseline. The load
//! generator is the same raw framed client for both, so the ratio compares
//! the servers.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;

use crate::lab::Lab;
use crate::raw::{self, RawAsync, RawBlocking};
use crate::report::Row;
use crate::stats::median;

/// Runs the scenario.
///
/// # Errors
/// When the agent, the echo server or a client fails.
pub fn run(lab: &Lab) -> Result<Vec<Row>> {
    let enrolled = lab.enrolled()?;
    let agent = lab.spawn_agent(&enrolled.home)?;
    let mut probe = RawBlocking::connect(&agent.socket)?;
    probe.call(&raw::hello_frame()?)?;
    let reply = probe.call(&raw::token_frame(2, 60)?)?;
    drop(probe);
    let echo = lab.spawn_echo(reply - regent_proto::frame::HEADER)?;

    let total = lab.size(20_000, 2_000);
    let rounds = lab.size(5, 1);
    let mut rows = Vec::new();
    for clients in [1usize, 8, 64, 512] {
        // Alternate the two servers and compare medians: on two shared cores
        // single runs swing by a third.
        let mut agent_runs = Vec::with_capacity(rounds);
        let mut echo_runs = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            echo_runs.push(lab.rt.block_on(load(&echo.socket, clients, total, false))?);
            agent_runs.push(lab.rt.block_on(load(&agent.socket, clients, total, true))?);
        }
        let agent_rate = median(&mut agent_runs);
        let echo_rate = median(&mut echo_runs);
        let ratio = agent_rate / echo_rate;
        let mut row = Row::new(format!("throughput/c{clients}"))
            .figure("req_per_s", agent_rate.round())
            .baseline("req_per_s", echo_rate.round())
            .ratio("agent_vs_raw", ratio);
        if clients == 64 {
            row = row.target(">= 0.8x the raw echo server at 64 clients", ratio >= 0.8);
        }
        if clients == 1 {
            row = row.note(format!(
                "{total} requests per run, median of {rounds} runs alternating with the echo server; one raw framed client per connection for both servers"
            ));
        }
        rows.push(row);
    }
    drop(echo);
    agent.terminate()?;
    Ok(rows)
}

/// `total` requests over `conns` connections; returns requests per second.
async fn load(socket: &Path, conns: usize, total: usize, hello: bool) -> Result<f64> {
    let per = total.div_ceil(conns);
    let hello_frame = raw::hello_frame()?;
    let request = raw::token_frame(3, 60)?;
    let mut clients = Vec::with_capacity(conns);
    for _ in 0..conns {
        let mut c = RawAsync::connect(socket).await?;
        if hello {
            c.call(&hello_frame).await?;
        }
        clients.push(c);
    }
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let request = request.clone();
            tokio::spawn(async move {
                for _ in 0..per {
                    c.call(&request).await?;
                }
                Ok::<_, std::io::Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok((per * conns) as f64 / start.elapsed().as_secs_f64())
}
