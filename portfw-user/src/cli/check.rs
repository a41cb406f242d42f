//! `portfw check`: validate a policy and print what it compiles to.
use std::process::ExitCode;

use super::{CheckArgs, EXIT_INVALID, EXIT_OK, report_invalid, report_unfit};
use crate::{compile, policy};

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let file = args.policy.display().to_string();
    let parsed = match policy::load(&args.policy) {
        Ok(parsed) => parsed,
        Err(policy::LoadError::Invalid(diagnostics)) => {
            return Ok(report_invalid(&file, &diagnostics, "the policy is invalid"));
        }
        Err(err) => return Err(err.into()),
    };
    for warning in &parsed.warnings {
        eprintln!("{warning}");
    }
    if args.strict && !parsed.warnings.is_empty() {
        eprintln!(
            "portfw: {file}: {} warning{} (--strict makes them errors)",
            parsed.warnings.len(),
            if parsed.warnings.len() == 1 { "" } else { "s" }
        );
        return Ok(ExitCode::from(EXIT_INVALID));
    }
    let compiled = match compile::compile(&parsed.policy) {
        Ok(compiled) => compiled,
        Err(e) => return Ok(report_unfit(&file, &e, "the policy is invalid")),
    };
    println!("{}", compile::summary(&parsed.policy, &compiled).trim_end());
    Ok(ExitCode::from(EXIT_OK))
}
