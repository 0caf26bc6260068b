//! The `pipeline` binary: parse the command line, run it, print any error chain once.

use std::process::ExitCode;

fn main() -> ExitCode {
    match pipeline::cli::main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
