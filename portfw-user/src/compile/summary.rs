//! The human account of a compiled policy that `portfw check` prints.

use std::fmt::Write as _;

use portfw_common::{NO_SOURCE_GROUP, PortEntry, RULE_DEFAULT, port_flags};

use super::{CompiledPolicy, PortRun, entry};
use crate::policy::{Action, Policy, Protocol, format_duration};

/// A readable account of what `compiled` does, for `portfw check`.
///
/// Per protocol it lists the ports rules decide as merged ranges with the deciding rule,
/// then what everything else gets.
pub fn summary(policy: &Policy, compiled: &CompiledPolicy) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail, so the fmt::Results below are ignored.
    let rules = match compiled.rules.len() {
        1 => "1 rule".to_owned(),
        n => format!("{n} rules"),
    };
    let _ = writeln!(
        out,
        "{}: {rules}, first match wins; default {}, log {}",
        policy.file, policy.default, policy.log
    );
    if !policy.enforce {
        let _ = writeln!(
            out,
            "enforce: false: AUDIT MODE, nothing is dropped: what is listed as drop below passes \
             as a would-drop, counted (would_drop_*) and logged (verdict would-drop)"
        );
    }
    let interfaces = if policy.interfaces.is_empty() {
        "(none listed)".to_owned()
    } else {
        policy.interfaces.join(", ")
    };
    let _ = writeln!(out, "interfaces: {interfaces}");
    let _ = writeln!(
        out,
        "icmp: {}, fragments: {}, other-ip: {}, non-ip: {}",
        policy.icmp, policy.fragments, policy.other_ip, policy.non_ip
    );
    let _ = writeln!(out, "replies: {}", replies(policy));
    let runs = Protocol::ALL.map(|protocol| compiled.runs(protocol));
    // One width for every protocol keeps the rule column aligned down the whole listing.
    let width = runs
        .iter()
        .flatten()
        .filter(|run| run.entry.rule != RULE_DEFAULT || run.entry.group != NO_SOURCE_GROUP)
        .map(|run| port_span(run).len())
        .max()
        .unwrap_or(0);
    let default = entry(
        RULE_DEFAULT,
        policy.default,
        policy.log.logs(policy.default),
    );
    for (protocol, runs) in Protocol::ALL.into_iter().zip(&runs) {
        let _ = writeln!(out, "{protocol}:");
        let mut decided_any = false;
        // Source rules that come first for every port of the protocol (a blocklist, say)
        // are said once rather than on every line.
        let lists: Vec<Vec<u32>> = runs.iter().map(|run| source_rules(compiled, run)).collect();
        let common = common_prefix(&lists);
        if !common.is_empty() {
            let said: Vec<String> = common
                .iter()
                .map(|&rule| source_rule(policy, compiled, rule))
                .collect();
            let _ = writeln!(out, "  every port, first by source: {}", said.join("; "));
        }
        for (run, list) in runs.iter().zip(&lists) {
            let own = &list[common.len()..];
            if run.entry.rule == RULE_DEFAULT && own.is_empty() {
                continue;
            }
            decided_any = true;
            let label = if run.entry.rule == RULE_DEFAULT {
                "the default".to_owned()
            } else {
                rule_label(compiled, run.entry.rule)
            };
            let _ = writeln!(
                out,
                "  {:<5} {:<width$}  {label}{}",
                action_name(run.entry.action),
                port_span(run),
                logged(&run.entry)
            );
            if !own.is_empty() {
                let said: Vec<String> = own
                    .iter()
                    .map(|&rule| source_rule(policy, compiled, rule))
                    .collect();
                let _ = writeln!(
                    out,
                    "  {:<5} {:<width$}    unless first, by source: {}",
                    "",
                    "",
                    said.join("; ")
                );
            }
        }
        let allows_tcp_zero = protocol == Protocol::Tcp
            && runs
                .first()
                .is_some_and(|run| run.entry.action == Action::Allow.to_kernel());
        if allows_tcp_zero {
            let _ = writeln!(
                out,
                "  (tcp port 0 is dropped as malformed whatever the table says)"
            );
        }
        if runs
            .iter()
            .zip(&lists)
            .any(|(run, list)| run.entry.rule == RULE_DEFAULT && list.len() == common.len())
        {
            let everything = if decided_any {
                "everything else"
            } else {
                "everything"
            };
            let _ = writeln!(
                out,
                "  {everything}: {} (default){}",
                policy.default,
                logged(&default)
            );
        }
    }
    out
}

/// `allow (flows: max 262144, tcp 6h, closing 10s, udp 1m, icmp 30s)`, or `drop (stateless)`.
fn replies(policy: &Policy) -> String {
    let flows = &policy.flows;
    match policy.replies {
        Action::Allow => format!(
            "allow (flows: max {}, tcp {}, closing {}, udp {}, icmp {})",
            flows.max,
            format_duration(flows.tcp_timeout),
            format_duration(flows.tcp_closing),
            format_duration(flows.udp_timeout),
            format_duration(flows.icmp_timeout),
        ),
        Action::Drop => "drop (stateless)".to_owned(),
    }
}

/// The source rules tried before a run's own verdict, in order.
fn source_rules(compiled: &CompiledPolicy, run: &PortRun) -> Vec<u32> {
    [run.entry.group, run.entry.tail]
        .into_iter()
        .filter(|&g| g != NO_SOURCE_GROUP)
        .flat_map(|g| compiled.groups[usize::from(g) - 1].iter().copied())
        .collect()
}

fn common_prefix(lists: &[Vec<u32>]) -> Vec<u32> {
    let Some(first) = lists.first() else {
        return Vec::new();
    };
    let len = lists.iter().fold(first.len(), |len, list| {
        first[..len]
            .iter()
            .zip(list)
            .take_while(|(a, b)| a == b)
            .count()
    });
    first[..len].to_vec()
}

/// `rule 1 `ssh-admins` (line 5) allows from $admins`
fn source_rule(policy: &Policy, compiled: &CompiledPolicy, rule: u32) -> String {
    let verb = match compiled.rules.get(rule as usize).map(|r| r.action) {
        Some(Action::Allow) => "allows",
        _ => "drops",
    };
    let from = policy
        .rules
        .get(rule as usize)
        .and_then(|r| r.from_text.clone())
        .unwrap_or_default();
    format!("{} {verb} from {from}", rule_label(compiled, rule))
}

fn port_span(run: &PortRun) -> String {
    if run.low == run.high {
        run.low.to_string()
    } else {
        format!("{}-{}", run.low, run.high)
    }
}

fn action_name(kernel: u8) -> &'static str {
    if kernel == Action::Allow.to_kernel() {
        Action::Allow.name()
    } else {
        Action::Drop.name()
    }
}

fn rule_label(compiled: &CompiledPolicy, rule: u32) -> String {
    let number = rule as usize + 1;
    match compiled.rules.get(rule as usize) {
        Some(info) => {
            let name = info
                .name
                .as_ref()
                .map(|n| format!(" `{n}`"))
                .unwrap_or_default();
            format!("rule {number}{name} (line {})", info.line)
        }
        None => format!("rule {number}"),
    }
}

fn logged(entry: &PortEntry) -> &'static str {
    if entry.flags & port_flags::LOG != 0 {
        ", logged"
    } else {
        ""
    }
}
