//! `regent-bench`: parses arguments and runs the library (see `cli`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    regent_bench::cli::main(regent_bench::cli::Cli::parse())
}
