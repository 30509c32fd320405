//! Start-up: from spawning the agent process to its socket accepting, and to
//! the first token served from the stored credential; median of 20 starts.

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::lab::{ChildProc, Lab};
use crate::report::Row;
use crate::stats::median;

/// Runs the scenario.
///
/// # Errors
/// When the agent does not start or serve a token.
pub fn run(lab: &Lab) -> Result<Vec<Row>> {
    let enrolled = lab.enrolled()?;
    let home = &enrolled.home;
    let runs = lab.size(20, 3);
    let mut ready_ms = Vec::with_capacity(runs);
    let mut token_ms = Vec::with_capacity(runs);
    for i in 0..runs {
        let log = home.dir.join(format!("startup-{i}.log"));
        let start = Instant::now();
        let child = ChildProc::spawn(
            lab.agent_bin.command(&home.config),
            &log,
            home.socket.clone(),
            "agent",
        )?;
        loop {
            if UnixStream::connect(&home.socket).is_ok() {
                break;
            }
            if start.elapsed() > Duration::from_secs(20) {
                bail!("the agent did not listen within 20 s: {}", child.log_tail());
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        ready_ms.push(start.elapsed().as_secs_f64() * 1000.0);
        let client = regent_client::blocking::Client::connect(
            regent_client::ClientOptions::new("regent-bench").socket(&home.socket),
        )?;
        client.token(Duration::from_secs(60))?;
        token_ms.push(start.elapsed().as_secs_f64() * 1000.0);
        drop(client);
        child.terminate()?;
    }
    let min = token_ms.iter().copied().fold(f64::INFINITY, f64::min);
    let max = token_ms.iter().copied().fold(0.0, f64::max);
    let ready = median(&mut ready_ms);
    let token = median(&mut token_ms);
    Ok(vec![
        Row::new("startup/stored_token")
            .figure("ready_ms_median", ready)
            .figure("first_token_ms_median", token)
            .figure("first_token_ms_min", min)
            .figure("first_token_ms_max", max)
            .figure("runs", runs as f64)
            .target(
                "process start to first token <= 50 ms (median)",
                token <= 50.0,
            )
            .note(format!(
                "spawn → socket accepts → blocking client hello + token; agent: {}",
                lab.agent_bin.describe()
            )),
    ])
}
