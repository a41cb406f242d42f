//! `portfw apply`: validate, compile and put a policy in force.
use std::{fs, process::ExitCode, time::Instant};

use anyhow::Context as _;

use super::{ApplyArgs, EXIT_OK, EXIT_USAGE, report_invalid, report_unfit};
use crate::{
    compile,
    loader::{self, ApplyRequest},
    policy,
};

const UNCHANGED: &str = "nothing was changed, the running filter (if any) keeps its policy";

pub fn run(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let file = args.policy.display().to_string();
    let bytes = fs::read(&args.policy).with_context(|| format!("cannot read policy {file}"))?;
    let source = String::from_utf8(bytes.clone())
        .with_context(|| format!("policy {file} is not valid UTF-8"))?;
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

    let outcome = loader::apply(ApplyRequest {
        compiled: &compiled,
        file: &args.policy,
        source: &bytes,
        interfaces: &interfaces,
        mode: args.mode.into(),
        trial: None,
    })
    .with_context(|| format!("applying {file} failed"))?;
    let sha = &outcome.policy.sha256;
    let sha_short = sha.get(..12).unwrap_or(sha);

    for note in &outcome.notes {
        eprintln!("portfw: note: {note}");
    }
    let ifaces: Vec<String> = outcome
        .attachments
        .iter()
        .map(|a| format!("{} ({})", a.iface, a.mode))
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
    Ok(ExitCode::from(EXIT_OK))
}
