//! `portfw agent`: keep a policy file in force and serve metrics, until SIGTERM.
use std::process::ExitCode;

use super::{AgentArgs, EXIT_OK};
use crate::agent;

pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    agent::run(agent::Config {
        policy: args.policy,
        ifaces: args.ifaces,
        mode: args.mode.into(),
        metrics_listen: args.metrics_listen,
    })?;
    Ok(ExitCode::from(EXIT_OK))
}
