//! The scenarios of issue 8, each a function from the [`Lab`]
//! to result rows, and which of them this platform can run ([`table`]).

use anyhow::Result;

use crate::lab::Lab;
use crate::report::Row;

pub mod fleet;
#[cfg(unix)]
pub mod latency;
#[cfg(unix)]
pub mod memory;
#[cfg(unix)]
pub mod startup;
#[cfg(unix)]
pub mod throughput;
#[cfg(unix)]
pub mod upstream;

/// A scenario: the lab in, result rows out.
pub type Scenario = fn(&Lab) -> Result<Vec<Row>>;

/// A scenario this platform can run, or why it cannot.
pub type Availability = std::result::Result<Scenario, &'static str>;

/// Why the Unix-socket scenarios do not run on Windows.
#[cfg(not(unix))]
const NEEDS_UNIX_SOCKETS: &str = "not available on this platform: it starts the agent and talks to it (and to the raw echo baseline) over Unix sockets, and the bench has no named-pipe port yet; `regent-bench fleet` runs here";

/// Every scenario in run order, by name, with whether it runs here.
#[cfg(unix)]
pub fn table() -> [(&'static str, Availability); 6] {
    [
        ("handout_latency", Ok(latency::run)),
        ("throughput", Ok(throughput::run)),
        ("memory", Ok(memory::run)),
        ("startup", Ok(startup::run)),
        ("upstream", Ok(upstream::run)),
        ("fleet", Ok(fleet::run)),
    ]
}

/// Every scenario in run order, by name, with whether it runs here.
#[cfg(not(unix))]
pub fn table() -> [(&'static str, Availability); 6] {
    [
        ("handout_latency", Err(NEEDS_UNIX_SOCKETS)),
        ("throughput", Err(NEEDS_UNIX_SOCKETS)),
        ("memory", Err(NEEDS_UNIX_SOCKETS)),
        ("startup", Err(NEEDS_UNIX_SOCKETS)),
        ("upstream", Err(NEEDS_UNIX_SOCKETS)),
        ("fleet", Ok(fleet::run)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_is_listed_once_and_unavailable_ones_say_why() {
        let table = table();
        let mut names: Vec<&str> = table.iter().map(|(name, _)| *name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), table.len());
        for (name, availability) in &table {
            match availability {
                Ok(_) => assert!(cfg!(unix) || *name == "fleet", "{name} runs here"),
                Err(why) => {
                    let unix = cfg!(unix);
                    assert!(!unix, "{name} is unavailable on Unix: {why}");
                    assert!(why.contains("not available on this platform"), "{why}");
                }
            }
        }
        assert!(table.iter().any(|(n, a)| *n == "fleet" && a.is_ok()));
    }
}
