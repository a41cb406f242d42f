//! The `portfw` binary: parse arguments, run, print errors with their whole context chain.
use std::process::ExitCode;

fn main() -> ExitCode {
    match portfw::cli::run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("portfw: error: {err:#}");
            ExitCode::from(portfw::cli::EXIT_ERROR)
        }
    }
}
