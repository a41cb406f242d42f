//! `portfw explain`: which rule decides a given packet, and why; from a policy file or from
//! the tables of the running filter.
use std::{net::IpAddr, process::ExitCode};

use anyhow::{Context as _, bail};
use portfw_common::{
    PortEntry, RULE_BLOCKED, RULE_DEFAULT, RULE_DOOR, RULE_KNOCK, RULE_REPLY, RULE_SPA, action,
    port_flags,
};

use super::{EXIT_ERROR, EXIT_OK, ExplainArgs, report_invalid, report_unfit};
use crate::{
    compile::{self, reference},
    loader,
    policy::{self, DoorKind, Policy, Protocol, escape, format_duration},
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
    let by = match entry.rule {
        RULE_DEFAULT => "the default".to_string(),
        RULE_KNOCK => "a knock port".to_string(),
        RULE_SPA => "a single-packet knock port".to_string(),
        RULE_DOOR => "an open knock door".to_string(),
        RULE_BLOCKED => "the block table".to_string(),
        RULE_REPLY => "the flow table".to_string(),
        rule => match rule_name(rule) {
            Some(name) => format!("rule {} ({name})", rule + 1),
            None => format!("rule {}", rule + 1),
        },
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
            let decision = reference::table_verdict(&policy, protocol, port, source);
            let name = |rule: u32| policy.rules.get(rule as usize).and_then(|r| r.name.clone());
            println!(
                "{}",
                verdict_line(protocol, source, port, &from_tables, name)
            );
            for line in trace(&policy, protocol, port, source) {
                println!("  {line}");
            }
            for line in defences(&policy, protocol, port, source, &from_tables) {
                println!("  {line}");
            }
            if from_tables.action == action::DROP && compiled.settings.replies == action::ALLOW {
                println!("  {REPLY_NOTE}");
            }
            let expected = decision.rule;
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

/// What the active defences add to a packet's verdict: knocks, doors, limits, the scan
/// guard. `entry` is what the tables say for it.
fn defences(
    policy: &Policy,
    protocol: Protocol,
    port: u16,
    source: IpAddr,
    entry: &PortEntry,
) -> Vec<String> {
    let mut lines = Vec::new();
    let target = format!("{port}/{protocol}");
    for door in &policy.doors {
        let name = &door.name;
        let (opens_proto, opens_port) = door.opens;
        let opened_for = format_duration(door.open_for);
        match &door.kind {
            DoorKind::Sequence { steps, within } => {
                if let Some(k) = steps.iter().position(|&s| s == (protocol, port)) {
                    let packet = if protocol == Protocol::Tcp {
                        "a SYN"
                    } else {
                        "a datagram"
                    };
                    lines.push(format!(
                        "{target} is knock {} of {} of door `{name}`: {packet} from {source} \
                         moves its sequence on (all within {}); the last knock opens \
                         {opens_port}/{opens_proto} to {source} for {opened_for}",
                        k + 1,
                        steps.len(),
                        format_duration(*within)
                    ));
                }
            }
            DoorKind::Spa { port: spa, .. } => {
                if protocol == Protocol::Udp && *spa == port {
                    lines.push(format!(
                        "ahead of the rules, {target} is the single-packet knock port of door \
                         `{name}`: datagrams pass to `portfw agent`, which opens {opens_port}/{opens_proto} to a \
                         source with a good signature for {opened_for} (without a running \
                         agent, nothing opens)"
                    ));
                }
            }
        }
        if door.opens == (protocol, port) {
            if entry.action == action::DROP {
                lines.push(format!(
                    "dropped unless {source} opened door `{name}` (then allowed for \
                     {opened_for}; a connection made meanwhile lives on in the flow table)"
                ));
            } else {
                lines.push(format!(
                    "door `{name}` opens {target}, but the rules already allow it here: the \
                     door changes nothing for {source}"
                ));
            }
        }
    }
    let limit = policy
        .rules
        .get(entry.rule as usize)
        .and_then(|r| r.limit.as_ref());
    if let Some(limit) = limit
        && entry.action == action::ALLOW
    {
        lines.push(format!(
            "rule {} limits new connections (TCP SYNs; every datagram of other protocols) to \
             {} per source (IPv6: per /64): over it they are dropped, counted as drop_limit",
            entry.rule + 1,
            limit.rate
        ));
    }
    if let Some(scan) = &policy.scan {
        if scan.all_except().any(|c| c.contains(source)) {
            lines.push(format!(
                "the scan guard never blocks {source}: it is in `scan: except`"
            ));
        } else if entry.action == action::DROP && entry.rule != RULE_KNOCK {
            lines.push(format!(
                "this drop counts for the scan guard: {} distinct dropped ports from {source} \
                 within {} block it for {} (unless the host depends on it: gateways, resolvers \
                 and own addresses are excepted when applied)",
                scan.ports,
                format_duration(scan.within),
                format_duration(scan.block)
            ));
        }
        lines.push(format!(
            "if {source} is blocked (by the scan guard or `portfw block`), every packet from it \
             is dropped first"
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::{defences, parse_target};
    use crate::{
        compile,
        policy::{self, Protocol},
    };

    #[test]
    fn defences_are_explained() {
        let source = "\
default: drop
scan: {ports: 8, except: [192.0.2.0/24]}
rules:
  - allow: 443/tcp
    limit: 5/10s
knock:
  - name: door
    sequence: [7001/udp, 7002/tcp]
    opens: 22/tcp
  - name: spa
    spa: {port: 62201/udp, key-file: k}
    opens: 22/tcp
";
        let policy = policy::parse(source, "p.yaml")
            .unwrap_or_else(|e| panic!("{e}"))
            .policy;
        let compiled = compile::compile(&policy).unwrap_or_else(|e| panic!("{e}"));
        let explain = |protocol, port, from: &str| {
            let from = from.parse().unwrap_or_else(|e| panic!("{e}"));
            let entry = compiled.lookup(protocol, port, from);
            defences(&policy, protocol, port, from, &entry).join("\n")
        };
        let text = explain(Protocol::Udp, 7001, "198.51.100.1");
        assert!(
            text.contains("7001/udp is knock 1 of 2 of door `door`"),
            "{text}"
        );
        assert!(!text.contains("counts for the scan guard"), "{text}");
        let text = explain(Protocol::Tcp, 22, "198.51.100.1");
        assert!(
            text.contains("dropped unless 198.51.100.1 opened door `door`"),
            "{text}"
        );
        assert!(
            text.contains("dropped unless 198.51.100.1 opened door `spa`"),
            "{text}"
        );
        assert!(
            text.contains("this drop counts for the scan guard"),
            "{text}"
        );
        let text = explain(Protocol::Tcp, 443, "192.0.2.7");
        assert!(text.contains("limits new connections (TCP SYNs; every datagram of other protocols) to 5/10s per source"), "{text}");
        assert!(text.contains("never blocks 192.0.2.7"), "{text}");
        let text = explain(Protocol::Udp, 62201, "198.51.100.1");
        assert!(
            text.contains("single-packet knock port of door `spa`"),
            "{text}"
        );
    }

    #[test]
    fn targets_parse_with_and_without_protocol() {
        assert_eq!(parse_target("22").ok(), Some((22, Protocol::Tcp)));
        assert_eq!(parse_target("53/udp").ok(), Some((53, Protocol::Udp)));
        assert!(parse_target("70000/tcp").is_err());
        assert!(parse_target("22/icmp").is_err());
    }
}
