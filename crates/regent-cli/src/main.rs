//! `regent`: on Unix the small binary that answers `regent token` itself and
//! runs `regentd` (beside it) for every other command; it compiles the two
//! modules it needs instead of linking the `regent_cli` library, so that
//! nothing else is linked in (see `lean.rs`). On Windows the whole command
//! line, as `regentd`.

use std::process::ExitCode;

#[cfg(unix)]
mod lean;
#[cfg(unix)]
mod token;

fn main() -> ExitCode {
    #[cfg(unix)]
    {
        lean::main()
    }
    #[cfg(not(unix))]
    {
        regent_cli::main()
    }
}
