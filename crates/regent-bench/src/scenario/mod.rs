//! The scenarios of issue 8, each a function from the [`Lab`](crate::lab::Lab)
//! to result rows.

pub mod fleet;
pub mod latency;
pub mod memory;
pub mod startup;
pub mod throughput;
pub mod upstream;
