//! `portfw confirm`: keep the policy on trial (`apply --try`), so that it is not rolled back.
use std::process::ExitCode;

use super::EXIT_OK;
use crate::{events::datetime, loader};

pub fn run() -> anyhow::Result<ExitCode> {
    let confirmed = loader::confirm()?;
    println!(
        "portfw: confirmed {}: it stays in force (the rollback due at {} is cancelled)",
        confirmed.file,
        datetime(confirmed.trial.deadline)
    );
    Ok(ExitCode::from(EXIT_OK))
}
