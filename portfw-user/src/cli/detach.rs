//! `portfw detach`: remove the filter from interfaces, and its pins when none remain.
use std::process::ExitCode;

use super::{DetachArgs, EXIT_OK};
use crate::loader;

pub fn run(args: DetachArgs) -> anyhow::Result<ExitCode> {
    let only = (!args.ifaces.is_empty()).then_some(args.ifaces.as_slice());
    let removed = loader::detach(only)?;
    if removed.is_empty() {
        println!("portfw: filter removed (it was attached to no interface)");
    } else {
        println!("portfw: detached from {}", removed.join(", "));
    }
    Ok(ExitCode::from(EXIT_OK))
}
