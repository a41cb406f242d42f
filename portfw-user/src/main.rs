//! The `portfw` binary: parse arguments, run, print errors with their whole context chain.
use std::process::ExitCode;

fn main() -> ExitCode {
    match portfw::cli::run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("portfw: error: {err:#}");
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                eprintln!(
                    "portfw: hint: loading, attaching and inspecting XDP programs needs root \
                     (or CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)"
                );
            }
            ExitCode::from(portfw::cli::EXIT_ERROR)
        }
    }
}
