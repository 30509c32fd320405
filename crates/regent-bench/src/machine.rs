//! The machine a run happened on, the open-file limit, and a process's
//! resident set.

use std::io;

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// What the report says about the machine.
#[derive(Debug, Clone)]
pub struct Machine {
    /// Logical CPUs this process may use.
    pub cpus: usize,
    /// `model name` from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// The kernel release.
    pub kernel: String,
}

impl Machine {
    /// Reads the machine's description; unknown parts say so.
    pub fn describe() -> Machine {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        Machine {
            cpus,
            cpu_model,
            kernel,
        }
    }
}

/// Raises the open-file limit to at least `want` where the hard limit (or,
/// for root, the kernel) allows; returns the (soft, hard) limits now in force.
/// Children inherit them, so the agent under test gets the same.
///
/// # Errors
/// When the limit cannot be read.
pub fn raise_open_files(want: u64) -> io::Result<(u64, u64)> {
    let current = getrlimit(Resource::Nofile);
    let hard = current.maximum.unwrap_or(u64::MAX);
    if hard < want {
        // Only a privileged process may raise the hard limit; try, then settle.
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(want),
                maximum: Some(want),
            },
        );
    }
    let now = getrlimit(Resource::Nofile);
    let hard = now.maximum.unwrap_or(u64::MAX);
    let soft = now.current.unwrap_or(u64::MAX);
    if soft < want.min(hard) {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(want.min(hard)),
                maximum: now.maximum,
            },
        )?;
    }
    let now = getrlimit(Resource::Nofile);
    Ok((
        now.current.unwrap_or(u64::MAX),
        now.maximum.unwrap_or(u64::MAX),
    ))
}

/// `VmRSS` of a process, in KiB.
///
/// # Errors
/// When `/proc/PID/status` cannot be read or has no `VmRSS` line.
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("no VmRSS in /proc/{pid}/status")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_rss_and_machine() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
        let m = Machine::describe();
        assert!(m.cpus >= 1);
    }
}
