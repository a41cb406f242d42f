//! `portfw check`: validate a policy and print what it compiles to.
use std::{
    io::{self, Write as _},
    process::ExitCode,
};

use super::{CheckArgs, EXIT_INVALID, EXIT_OK, report_invalid, report_unfit};
use crate::{
    compile,
    policy::{self, Diagnostic, escape},
};

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let file = args.policy.display().to_string();
    let parsed = match policy::load(&args.policy) {
        Ok(parsed) => parsed,
        Err(policy::LoadError::Invalid(diagnostics)) => {
            return Ok(report_invalid(&file, &diagnostics, "the policy is invalid"));
        }
        Err(err) => return Err(err.into()),
    };
    let warnings: usize = parsed.warnings.iter().map(|w| w.count).sum();
    if args.strict && warnings > 0 {
        // Errors now, so on stderr with the errors of an invalid policy, and nothing on
        // stdout: a rejected policy has no summary.
        for warning in &parsed.warnings {
            eprintln!("{warning}");
        }
        eprintln!(
            "portfw: {}: {warnings} warning{} found; --strict makes them errors, so the policy \
             is rejected",
            escape(&file),
            if warnings == 1 { "" } else { "s" }
        );
        return Ok(ExitCode::from(EXIT_INVALID));
    }
    let compiled = match compile::compile(&parsed.policy) {
        Ok(compiled) => compiled,
        Err(e) => return Ok(report_unfit(&file, &e, "the policy is invalid")),
    };
    let summary = compile::summary(&parsed.policy, &compiled);
    let mut out = io::stdout().lock();
    match write_report(&mut out, &parsed.warnings, &summary).and_then(|()| out.flush()) {
        // The reader went away (for example `| head`): not an error.
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::from(EXIT_OK)),
    }
}

/// The warnings, each once, then the summary: one stream, so that they arrive in order and
/// `portfw check p.yaml | less` shows them. Every line is escaped: interface names and the
/// file name come from the user and may hold control characters.
fn write_report(
    out: &mut impl io::Write,
    warnings: &[Diagnostic],
    summary: &str,
) -> io::Result<()> {
    for warning in warnings {
        writeln!(out, "{warning}")?;
    }
    for line in summary.trim_end().lines() {
        writeln!(out, "{}", escape(line))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(source: &str) -> String {
        let parsed = policy::parse(source, "p\u{1b}.yaml").unwrap_or_else(|e| panic!("{e}"));
        let compiled = compile::compile(&parsed.policy).unwrap_or_else(|e| panic!("{e}"));
        let summary = compile::summary(&parsed.policy, &compiled);
        let mut out = Vec::new();
        write_report(&mut out, &parsed.warnings, &summary).unwrap_or_else(|e| panic!("{e}"));
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn warnings_come_once_before_the_summary() {
        let text = report(
            "default: drop\nrules:\n  - allow: 1000-2000/tcp\n  - drop: 1500/tcp\n    from: \
             [10.0.0.0/8]\n",
        );
        assert_eq!(text.matches("never matches").count(), 1, "{text}");
        assert!(
            text.starts_with(
                "p\\u{1b}.yaml:4:5: warning: rule 2 (`drop: 1500/tcp`, `from: [10.0.0.0/8]`) \
                 never matches"
            ),
            "{text}"
        );
        assert!(
            text.contains("\np\\u{1b}.yaml: 2 rules, first match wins"),
            "{text}"
        );
    }

    #[test]
    fn defences_show_in_the_warnings_and_the_summary() {
        let text = report(
            "default: drop\nscan: {ports: 8, block: 2h}\nrules:\n  - allow: 7000-7100/udp\n    \
             limit: 10/m\nknock:\n  - {name: d, sequence: [7001/udp, 7002/tcp], opens: 22/tcp}\n",
        );
        assert!(
            text.contains(
                "p\\u{1b}.yaml:2:25: warning: `scan` blocks for 2h with an empty `except`"
            ),
            "{text}"
        );
        assert!(
            text.contains(":7:26: warning: knock 7001/udp of door `d` is also allowed by rule 1"),
            "{text}"
        );
        assert!(
            text.contains("\nscan guard: 8 distinct dropped ports within 5s"),
            "{text}"
        );
        assert!(
            text.contains("\nknock door `d` (line 7): knocks [7001/udp, 7002/tcp]"),
            "{text}"
        );
        assert!(
            text.contains("limit 10/m new connections per source; also a knock of door `d`"),
            "{text}"
        );
        assert!(
            text.contains(
                "  drop  22         the default, logged; allowed for a source that opened door `d`"
            ),
            "{text}"
        );
    }

    #[test]
    fn the_summary_is_escaped() {
        let text = report("default: drop\ninterfaces: [\"e\\e]0;PWNED\\a\"]\n");
        assert!(
            text.contains("interfaces: e\\u{1b}]0;PWNED\\u{7}\n"),
            "{text}"
        );
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{text:?}"
        );
    }
}
