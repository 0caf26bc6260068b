//! The `pipeline` binary: parse the command line, run it, print any error chain once.

use std::process::ExitCode;

// Tokenisation allocates many small strings from several threads; glibc malloc spent a third
// of `prepare` there (perf), mimalloc a fraction of that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match pipeline::cli::main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
