//! The machine a run happened on, the open-file limit, and a process's
//! resident set.

use std::io;

/// What the report says about the machine.
#[derive(Debug, Clone)]
pub struct Machine {
    /// Logical CPUs this process may use.
    pub cpus: usize,
    /// `model name` from `/proc/cpuinfo` (Linux), `machdep.cpu.brand_string`
    /// (macOS).
    pub cpu_model: String,
    /// The kernel release (Linux, macOS); the OS name elsewhere.
    pub kernel: String,
}

impl Machine {
    /// Reads the machine's description; unknown parts say so.
    pub fn describe() -> Machine {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let cpu_model = if cfg!(target_os = "macos") {
            command_output("sysctl", &["-n", "machdep.cpu.brand_string"])
        } else {
            std::fs::read_to_string("/proc/cpuinfo")
                .ok()
                .and_then(|text| {
                    text.lines()
                        .find(|l| l.starts_with("model name"))
                        .and_then(|l| l.split_once(':'))
                        .map(|(_, v)| v.trim().to_owned())
                })
        }
        .unwrap_or_else(|| "unknown".to_owned());
        let kernel = if cfg!(target_os = "macos") {
            command_output("uname", &["-r"]).map(|r| format!("Darwin {r}"))
        } else if cfg!(target_os = "linux") {
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|s| s.trim().to_owned())
        } else {
            Some(std::env::consts::OS.to_owned())
        }
        .unwrap_or_else(|| "unknown".to_owned());
        Machine {
            cpus,
            cpu_model,
            kernel,
        }
    }
}

/// A command's trimmed standard output, when it ran and printed something.
fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    (output.status.success() && !text.is_empty()).then_some(text)
}

/// A limit for the report: `u64::MAX` (no limit) shows as "none".
pub fn limit_text(limit: u64) -> String {
    if limit == u64::MAX {
        "none".to_owned()
    } else {
        limit.to_string()
    }
}

/// Raises the open-file limit to at least `want` where the hard limit (or,
/// for root, the kernel) allows; returns the (soft, hard) limits now in force.
/// Children inherit them, so the agent under test gets the same. Windows has
/// no such limit: both are `u64::MAX`.
///
/// # Errors
/// When the limit cannot be read.
#[cfg(not(unix))]
pub fn raise_open_files(_want: u64) -> io::Result<(u64, u64)> {
    Ok((u64::MAX, u64::MAX))
}

/// Raises the open-file limit to at least `want` where the hard limit (or,
/// for root, the kernel) allows; returns the (soft, hard) limits now in force.
/// Children inherit them, so the agent under test gets the same.
///
/// # Errors
/// When the limit cannot be read.
#[cfg(unix)]
pub fn raise_open_files(want: u64) -> io::Result<(u64, u64)> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
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

/// The resident set of a process, in KiB: `ps -o rss=` (macOS and other
/// Unixes without `/proc`).
///
/// # Errors
/// When `ps` cannot run or prints no number.
#[cfg(all(unix, not(target_os = "linux")))]
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let output = std::process::Command::new("ps")
        .args(["-o", "rss=", "-p", &pid.to_string()])
        .output()?;
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|_| io::Error::other(format!("`ps -o rss= -p {pid}` printed no size")))
}

/// The resident set of a process: not measured on this platform.
///
/// # Errors
/// Always: there is no portable way here.
#[cfg(not(unix))]
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        format!("the resident set of process {pid} is measured on Linux and macOS only"),
    ))
}

/// `VmRSS` of a process, in KiB.
///
/// # Errors
/// When `/proc/PID/status` cannot be read or has no `VmRSS` line.
#[cfg(target_os = "linux")]
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("no VmRSS in /proc/{pid}/status")))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn reads_own_rss_and_machine() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
        let m = Machine::describe();
        assert!(m.cpus >= 1);
    }
}
