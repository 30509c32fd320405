//! The command line: which scenarios to run, how to print them, and the
//! hidden modes the bench runs in its child processes.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::lab::{AgentBin, Lab};
use crate::report::{self, Row};
use crate::scenario::{self, Availability};

/// regent's benchmarks: every figure next to a baseline measured in the
/// same run, with pass/fail against DESIGN §13.
#[derive(Debug, Parser)]
#[command(name = "regent-bench", version, about)]
pub struct Cli {
    /// Print one JSON object per result row instead of the table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Smoke mode: tiny sizes, seconds instead of minutes; checks that the
    /// scenarios run, not that targets are met.
    #[arg(long, global = true)]
    pub quick: bool,
    /// Exit with status 1 when a target is missed (default: only when a
    /// scenario cannot run).
    #[arg(long, global = true)]
    pub strict: bool,
    /// The agent binary to measure [default: `regent` beside this binary
    /// when it is at least as new, else this binary's agent mode].
    #[arg(long, global = true)]
    pub agent_bin: Option<PathBuf>,
    /// Also print the results as a Markdown table (for docs/performance.md).
    #[arg(long, global = true)]
    pub markdown: bool,
    /// (set by a parent run) This process is pinned to one CPU.
    #[arg(long, global = true, hide = true)]
    pub pinned: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// What to run.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every scenario (under 5 minutes on 2 cores; `--quick`: seconds).
    All,
    /// Cached-token handout latency: async, blocking and C clients vs raw.
    Latency,
    /// Requests/s at 1, 8, 64 and 512 concurrent clients vs raw echo.
    Throughput,
    /// Upstream renewals for 1 … 10,000 clients, tokens below min_valid.
    Upstream,
    /// Agent RSS idle and with 1,000 / 10,000 idle connections.
    Memory,
    /// Process start → socket ready → first token from a stored token.
    Startup,
    /// 10,000 simulated devices: renewals per second, with and without jitter.
    Fleet,
    /// (child mode) Run the agent like `regent agent`.
    #[command(hide = true)]
    Agent {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// (child mode) Run the raw echo baseline server.
    #[command(hide = true)]
    Echo {
        /// Where to listen.
        #[arg(long)]
        socket: PathBuf,
        /// Payload bytes of every reply.
        #[arg(long)]
        reply_bytes: usize,
    },
    /// (child mode) Run the floor: a blocking, single-thread echo server.
    #[command(hide = true)]
    Floor {
        /// Where to listen.
        #[arg(long)]
        socket: PathBuf,
        /// Payload bytes of every reply.
        #[arg(long)]
        reply_bytes: usize,
    },
    /// (child mode) Run the emulator on a free loopback port; print its URL.
    #[command(hide = true)]
    Emulator,
    /// Send N cached-token requests to an agent (for profiling it).
    #[command(hide = true)]
    Drive {
        /// The agent's socket.
        #[arg(long)]
        socket: PathBuf,
        /// How many requests.
        #[arg(long, default_value_t = 100_000)]
        requests: usize,
    },
}

/// Runs the command; the exit status says whether everything ran.
pub fn main(cli: Cli) -> ExitCode {
    let result = match &cli.command {
        Command::Agent { config } => crate::child::agent(config).map(|()| ExitCode::SUCCESS),
        Command::Echo {
            socket,
            reply_bytes,
        } => crate::child::echo(socket, *reply_bytes).map(|()| ExitCode::SUCCESS),
        Command::Floor {
            socket,
            reply_bytes,
        } => crate::child::floor(socket, *reply_bytes).map(|()| ExitCode::SUCCESS),
        Command::Emulator => crate::child::emulator().map(|()| ExitCode::SUCCESS),
        Command::Drive { socket, requests } => {
            crate::child::drive(socket, *requests).map(|()| ExitCode::SUCCESS)
        }
        _ => run(&cli),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("regent-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<ExitCode> {
    let all = scenario::table();
    let chosen: Vec<(&str, Availability)> = match cli.command {
        Command::All => all.to_vec(),
        Command::Latency => vec![all[0]],
        Command::Throughput => vec![all[1]],
        Command::Memory => vec![all[2]],
        Command::Startup => vec![all[3]],
        Command::Upstream => vec![all[4]],
        Command::Fleet => vec![all[5]],
        Command::Agent { .. }
        | Command::Echo { .. }
        | Command::Floor { .. }
        | Command::Emulator
        | Command::Drive { .. } => Vec::new(),
    };
    let lab = Lab::new(
        cli.quick,
        AgentBin::resolve(cli.agent_bin.clone())?,
        cli.pinned,
    )?;
    let started = Instant::now();
    if !cli.json && !cli.pinned {
        println!(
            "regent-bench{}: {} CPUs ({}), kernel {}, open-file limit {} (hard {})\nagent under test: {}\n",
            if cli.quick { " --quick" } else { "" },
            lab.machine.cpus,
            lab.machine.cpu_model,
            lab.machine.kernel,
            crate::machine::limit_text(lab.open_files.0),
            crate::machine::limit_text(lab.open_files.1),
            lab.agent_bin.describe()
        );
    }
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    let mut unavailable = 0usize;
    let everything = matches!(cli.command, Command::All);
    for (name, scenario) in chosen {
        let scenario = match scenario {
            Ok(scenario) => scenario,
            Err(why) => {
                // `all` skips it with the reason; asked for by name, it fails.
                let row = Row::new(format!("{name}/unavailable")).note(why);
                emit(cli, std::slice::from_ref(&row), name, 0.0);
                if everything {
                    unavailable += 1;
                } else {
                    failed.push(name);
                }
                continue;
            }
        };
        let t = Instant::now();
        let got = scenario(&lab);
        let took = t.elapsed().as_secs_f64();
        match got {
            Ok(got) => {
                emit(cli, &got, name, took);
                rows.extend(got);
            }
            Err(e) => {
                let row = Row::new(format!("{name}/error")).note(format!("{e:#}"));
                emit(cli, std::slice::from_ref(&row), name, took);
                failed.push(name);
            }
        }
    }
    if cli.markdown && !cli.pinned {
        println!("{}", report::markdown(&rows));
    }
    if !cli.json && !cli.pinned {
        let missed = rows.iter().filter(|r| r.pass == Some(false)).count();
        let met = rows.iter().filter(|r| r.pass == Some(true)).count();
        let skipped = if unavailable > 0 {
            format!(", {unavailable} not available on this platform")
        } else {
            String::new()
        };
        println!(
            "{met} targets met, {missed} missed, {} scenarios failed to run{skipped}; {:.1} s",
            failed.len(),
            started.elapsed().as_secs_f64()
        );
    }
    let missed = rows.iter().any(|r| r.pass == Some(false));
    Ok(if !failed.is_empty() || (cli.strict && missed) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn emit(cli: &Cli, rows: &[Row], name: &str, seconds: f64) {
    let mut out = std::io::stdout().lock();
    if cli.pinned {
        // For the parent run: rows as they are, one per line.
        for row in rows {
            if let Ok(line) = serde_json::to_string(row) {
                let _ = writeln!(out, "{line}");
            }
        }
    } else if cli.json {
        for row in rows {
            let _ = writeln!(out, "{}", row.to_json());
        }
    } else {
        let _ = writeln!(out, "== {name} ({seconds:.1} s)\n{}", report::table(rows));
    }
    let _ = out.flush();
}
