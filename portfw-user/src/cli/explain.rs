//! `portfw explain`: which rule decides a given packet, and why; from a policy file or from
//! the tables of the running filter.
use std::{net::IpAddr, process::ExitCode};

use anyhow::{Context as _, bail};
use portfw_common::{PortEntry, RULE_DEFAULT, action, port_flags};

use super::{EXIT_ERROR, EXIT_OK, ExplainArgs, report_invalid, report_unfit};
use crate::{
    compile::{self, reference},
    loader,
    policy::{self, Policy, Protocol, escape},
};

/// `PORT[/PROTO]`, protocol tcp when absent.
fn parse_target(text: &str) -> anyhow::Result<(u16, Protocol)> {
    let (port, protocol) = match text.split_once('/') {
        Some((port, proto)) => (port, proto),
        None => (text, "tcp"),
    };
    let protocol = Protocol::ALL
        .into_iter()
        .find(|p| p.name() == protocol)
        .with_context(|| {
            format!(
                "--to {text}: unknown protocol `{protocol}`; expected tcp, udp, sctp or udplite"
            )
        })?;
    let port = port
        .parse::<u16>()
        .with_context(|| format!("--to {text}: `{port}` is not a port number (0-65535)"))?;
    Ok((port, protocol))
}

/// What `replies: allow` adds to a drop.
const REPLY_NOTE: &str = "unless it is a reply to a flow the host opened (replies: allow): \
                          those pass as `reply to a flow the host opened`";

/// The one line both modes print, so their answers compare as text.
fn verdict_line(
    protocol: Protocol,
    source: IpAddr,
    port: u16,
    entry: &PortEntry,
    rule_name: impl Fn(u32) -> Option<String>,
) -> String {
    let verdict = match (entry.action, entry.flags & port_flags::AUDIT != 0) {
        (action::DROP, true) => "would-drop (audit mode: passes)",
        (action::DROP, false) => "drop",
        _ => "allow",
    };
    let by = if entry.rule == RULE_DEFAULT {
        "the default".to_string()
    } else {
        match rule_name(entry.rule) {
            Some(name) => format!("rule {} ({name})", entry.rule + 1),
            None => format!("rule {}", entry.rule + 1),
        }
    };
    format!("{protocol} {source} -> port {port}: {verdict} by {by}")
}

pub fn run(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let (port, protocol) = parse_target(&args.to)?;
    let source = args.from;
    match &args.policy {
        Some(path) => {
            let file = path.display().to_string();
            let parsed = match policy::load(path) {
                Ok(parsed) => parsed,
                Err(policy::LoadError::Invalid(diagnostics)) => {
                    return Ok(report_invalid(&file, &diagnostics, "the policy is invalid"));
                }
                Err(err) => return Err(err.into()),
            };
            let policy = parsed.policy;
            let compiled = match compile::compile(&policy) {
                Ok(compiled) => compiled,
                Err(e) => return Ok(report_unfit(&file, &e, "the policy is invalid")),
            };
            let from_tables = compiled.lookup(protocol, port, source);
            let decision = reference::evaluate(&policy, protocol, port, source);
            let name = |rule: u32| policy.rules.get(rule as usize).and_then(|r| r.name.clone());
            println!(
                "{}",
                verdict_line(protocol, source, port, &from_tables, name)
            );
            for line in trace(&policy, protocol, port, source) {
                println!("  {line}");
            }
            if from_tables.action == action::DROP && compiled.settings.replies == action::ALLOW {
                println!("  {REPLY_NOTE}");
            }
            let expected = decision.rule.map_or(RULE_DEFAULT, |r| r as u32);
            if from_tables.rule != expected || from_tables.action != decision.action.to_kernel() {
                eprintln!(
                    "portfw: internal error: the compiled tables say rule {} but first-match says \
                     rule {}; please report this with the policy",
                    from_tables.rule, expected
                );
                return Ok(ExitCode::from(EXIT_ERROR));
            }
        }
        None => {
            let verdict = loader::explain_running(protocol.slot(), port, source)?;
            let running = &verdict.running;
            let name = |rule: u32| {
                running
                    .policy
                    .as_ref()
                    .and_then(|p| p.rules.get(rule as usize))
                    .and_then(|r| r.name.clone())
            };
            println!(
                "{}",
                verdict_line(protocol, source, port, &verdict.entry, name)
            );
            let via = if verdict.by_source {
                "source trie"
            } else {
                "port table"
            };
            match running.policy.as_ref() {
                Some(p) => {
                    if let Some(rule) = p.rules.get(verdict.entry.rule as usize) {
                        println!(
                            "  {} (line {}), from the {via}",
                            escape(&rule.summary),
                            rule.line
                        );
                    }
                    println!(
                        "  running filter: {} (generation {})",
                        escape(&p.file),
                        running.generation
                    );
                }
                None => bail!("the running filter has no record of its policy"),
            }
            if verdict.entry.action == action::DROP && verdict.replies {
                let flows: Vec<_> = loader::flows()?
                    .into_iter()
                    .filter(|f| {
                        f.protocol == protocol.name()
                            && f.remote_addr == source
                            && f.local_port == Some(port)
                    })
                    .collect();
                match flows.as_slice() {
                    [] => println!("  {REPLY_NOTE}; none is tracked now"),
                    flows => {
                        for f in flows {
                            println!(
                                "  but from {}: allow, a reply to a flow the host opened ({} {} -> {}, {})",
                                f.remote, f.protocol, f.local, f.remote, f.state
                            );
                        }
                    }
                }
            }
        }
    }
    Ok(ExitCode::from(EXIT_OK))
}

/// The first-match walk for one packet, one line per rule that names the port.
fn trace(policy: &Policy, protocol: Protocol, port: u16, source: IpAddr) -> Vec<String> {
    let mut lines = Vec::new();
    for (index, rule) in policy.rules.iter().enumerate() {
        if !rule
            .ports
            .iter()
            .any(|r| r.protocol == protocol && r.low <= port && port <= r.high)
        {
            continue;
        }
        let label = match &rule.name {
            Some(name) => format!("rule {} `{name}` (line {})", index + 1, rule.location.line),
            None => format!("rule {} (line {})", index + 1, rule.location.line),
        };
        match &rule.from {
            None => {
                lines.push(format!(
                    "{label}: `{}` names {port}/{protocol} and admits any source: it decides",
                    rule.summary
                ));
                return lines;
            }
            Some(cidrs) => match cidrs.iter().filter(|c| c.contains(source)).max_by_key(|c| c.len) {
                Some(cidr) => {
                    lines.push(format!(
                        "{label}: `{}` names {port}/{protocol} and {source} is inside {cidr}: it decides",
                        rule.summary
                    ));
                    return lines;
                }
                None => lines.push(format!(
                    "{label}: `{}` names {port}/{protocol}, but {source} is in none of its {} prefixes",
                    rule.summary,
                    cidrs.len()
                )),
            },
        }
    }
    lines.push(format!(
        "no rule decides {port}/{protocol} from {source}: the default ({}) applies",
        policy.default
    ));
    lines
}

#[cfg(test)]
mod tests {
    use super::parse_target;
    use crate::policy::Protocol;

    #[test]
    fn targets_parse_with_and_without_protocol() {
        assert_eq!(parse_target("22").ok(), Some((22, Protocol::Tcp)));
        assert_eq!(parse_target("53/udp").ok(), Some((53, Protocol::Udp)));
        assert!(parse_target("70000/tcp").is_err());
        assert!(parse_target("22/icmp").is_err());
    }
}
