//! `regentd`: every `regent` command — the agent (what the service units run
//! through `regent agent`), the admin client, the emulator, the demo and the
//! client commands. `regent` runs it for everything but `regent token`.

use std::process::ExitCode;

fn main() -> ExitCode {
    regent_cli::main()
}
