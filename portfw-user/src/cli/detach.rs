//! `portfw detach`: remove the filter from interfaces, and its pins when none remain.
use std::process::ExitCode;

use super::{DetachArgs, EXIT_OK};
use crate::loader;

pub fn run(args: DetachArgs) -> anyhow::Result<ExitCode> {
    let only = (!args.ifaces.is_empty()).then_some(args.ifaces.as_slice());
    let outcome = loader::detach(only)?;
    for dir in &outcome.half_built {
        println!(
            "portfw: removed the half-built filter an interrupted apply left in {}",
            dir.display()
        );
    }
    if !outcome.detached.is_empty() {
        println!("portfw: detached from {}", outcome.detached.join(", "));
    } else if outcome.half_built.is_empty() {
        println!("portfw: filter removed (it was attached to no interface)");
    }
    Ok(ExitCode::from(EXIT_OK))
}
