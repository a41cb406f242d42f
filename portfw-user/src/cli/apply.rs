//! `portfw apply`: validate, compile and put a policy in force, on trial with `--try`.
use std::{process::ExitCode, time::Instant};

use anyhow::Context as _;

use super::{ApplyArgs, EXIT_OK, EXIT_USAGE, report_invalid, report_unfit, watchdog};
use crate::{
    compile,
    events::datetime,
    loader::{self, ApplyRequest, TrialRequest},
    policy,
};

const UNCHANGED: &str = "nothing was changed, the running filter (if any) keeps its policy";

pub fn run(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let file = args.policy.display().to_string();
    // A regular file within the size limit, in UTF-8; /dev/zero or a FIFO fail at once.
    let source = policy::read_source(&args.policy)?;
    let parsed = match policy::parse(&source, &file) {
        Ok(parsed) => parsed,
        Err(diagnostics) => return Ok(report_invalid(&file, &diagnostics, UNCHANGED)),
    };
    for warning in &parsed.warnings {
        eprintln!("{warning}");
    }
    let policy = parsed.policy;
    let interfaces = if args.ifaces.is_empty() {
        policy.interfaces.clone()
    } else {
        args.ifaces.clone()
    };
    if interfaces.is_empty() {
        eprintln!(
            "portfw: error: no interface to filter: name one with --iface, or list them under \
             `interfaces:` in {file}"
        );
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let compiled = match compile::compile(&policy) {
        Ok(compiled) => compiled,
        Err(e) => return Ok(report_unfit(&file, &e, UNCHANGED)),
    };
    let compiled_at = started.elapsed();

    // The watchdog starts first, so that no moment exists when the trial is in force and
    // nothing waits for its deadline; it acts only once the trial is on file.
    let trial = match args.try_secs {
        Some(secs) => Some(watchdog::start(secs)?),
        None => None,
    };
    let outcome = loader::apply(ApplyRequest {
        compiled: &compiled,
        file: &args.policy,
        source: source.as_bytes(),
        set_files: &policy.set_files,
        interfaces: &interfaces,
        mode: args.mode.into(),
        trial: trial.clone(),
    });
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(e) => {
            if let Some(trial) = &trial {
                watchdog::abandon(trial);
            }
            return Err(e).with_context(|| format!("applying {file} failed"));
        }
    };
    let sha = &outcome.policy.sha256;
    let sha_short = sha.get(..12).unwrap_or(sha);

    for note in &outcome.notes {
        eprintln!("portfw: note: {note}");
    }
    let ifaces: Vec<String> = outcome
        .attachments
        .iter()
        .map(|a| match a.egress.mode() {
            loader::EgressMode::Tcx => format!("{} ({})", a.iface, a.mode),
            loader::EgressMode::Clsact => format!("{} ({}, egress clsact)", a.iface, a.mode),
        })
        .collect();
    println!(
        "portfw: applied {file} (sha256 {sha_short}…): {} rule{}, default {}{}, on {}",
        compiled.rules.len(),
        if compiled.rules.len() == 1 { "" } else { "s" },
        policy.default,
        if policy.enforce {
            ""
        } else {
            ", AUDIT MODE (enforce: false: nothing is dropped)"
        },
        ifaces.join(", "),
    );
    if !outcome.detached.is_empty() {
        println!("portfw: detached from {}", outcome.detached.join(", "));
    }
    println!(
        "portfw: {} program {}, generation {}; compiled in {:.1} ms, in force after {:.1} ms",
        if outcome.fresh { "loaded" } else { "updated" },
        outcome.program_id,
        outcome.generation,
        compiled_at.as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64() * 1e3,
    );
    if let (Some(trial), Some(secs)) = (&trial, args.try_secs) {
        print_trial(trial, secs, &outcome)?;
    }
    Ok(ExitCode::from(EXIT_OK))
}

fn print_trial(
    trial: &TrialRequest,
    secs: u64,
    outcome: &loader::ApplyOutcome,
) -> anyhow::Result<()> {
    let rollback = if outcome.fresh {
        "the filter is removed (there was none before)".to_string()
    } else {
        format!(
            "the previous policy (generation {}) is switched back in",
            outcome.generation ^ 1
        )
    };
    let netns = loader::netns_inode()?;
    println!(
        "portfw: ON TRIAL for {secs} s: at {} {rollback}, unless confirmed before then.",
        datetime(trial.deadline)
    );
    println!(
        "portfw: to keep this policy, run `portfw confirm` from any shell in this network \
         namespace (inode {netns}); `portfw status` shows the time left."
    );
    Ok(())
}
