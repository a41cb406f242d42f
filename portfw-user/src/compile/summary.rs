//! The human account of a compiled policy that `portfw check` prints.

use std::fmt::Write as _;

use portfw_common::{NO_SOURCE_GROUP, PortEntry, RULE_DEFAULT, RULE_KNOCK, RULE_SPA, port_flags};

use super::{CompiledPolicy, PortRun, entry, log_limit};
use crate::policy::{Action, DoorKind, Policy, Protocol, Rate, format_duration};

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
    defences(&mut out, policy);
    let runs = Protocol::ALL.map(|protocol| compiled.runs(protocol));
    // One width for every protocol keeps the rule column aligned down the whole listing.
    let width = runs
        .iter()
        .flatten()
        .filter(|run| {
            run.entry.rule != RULE_DEFAULT
                || run.entry.group != NO_SOURCE_GROUP
                || run.entry.knocks | run.entry.opens != 0
        })
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
            let doors = run.entry.knocks | run.entry.opens;
            if run.entry.rule == RULE_DEFAULT && own.is_empty() && doors == 0 {
                continue;
            }
            decided_any = true;
            let label = entry_label(policy, compiled, &run.entry);
            let _ = writeln!(
                out,
                "  {:<5} {:<width$}  {label}{}{}",
                action_name(run.entry.action),
                port_span(run),
                logged(&run.entry),
                door_notes(policy, &run.entry)
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

/// What decides a run: a rule, the default, a knock port or a single-packet port.
fn entry_label(policy: &Policy, compiled: &CompiledPolicy, entry: &PortEntry) -> String {
    match entry.rule {
        RULE_DEFAULT => "the default".to_owned(),
        RULE_KNOCK => format!("a knock of {}", door_names(policy, knock_bit(entry))),
        RULE_SPA => "single-packet knocks, passed to `portfw agent`".to_owned(),
        rule => {
            let mut label = rule_label(compiled, rule);
            if let Some(limit) = policy
                .rules
                .get(rule as usize)
                .and_then(|r| r.limit.as_ref())
            {
                label.push_str(&format!(
                    ", limit {} new connections per source",
                    limit.rate
                ));
            }
            label
        }
    }
}

/// "; a knock of door `a`; opened by door `b`", for the door bits an entry carries
/// beyond its label.
fn door_notes(policy: &Policy, entry: &PortEntry) -> String {
    let mut notes = String::new();
    if entry.knocks != 0 && entry.rule != RULE_KNOCK {
        notes.push_str(&format!(
            "; also a knock of {}",
            door_names(policy, knock_bit(entry))
        ));
    }
    if entry.opens != 0 {
        let verb = if entry.action == Action::Allow.to_kernel() {
            "; allowed anyway, so opening it changes nothing:"
        } else {
            "; allowed for a source that opened"
        };
        notes.push_str(&format!("{verb} {}", door_names(policy, entry.opens)));
    }
    notes
}

/// The bit of the door an entry knocks for ([`PortEntry::knocks`] is `1 +` the door).
fn knock_bit(entry: &PortEntry) -> u8 {
    entry
        .knocks
        .checked_sub(1)
        .and_then(|d| 1u8.checked_shl(u32::from(d)))
        .unwrap_or(0)
}

/// "door `a`" or "doors `a`, `b`" for a door bit mask.
fn door_names(policy: &Policy, bits: u8) -> String {
    let names: Vec<String> = policy
        .doors
        .iter()
        .enumerate()
        .filter(|(d, _)| bits & (1 << d) != 0)
        .map(|(_, door)| format!("`{}`", door.name))
        .collect();
    let noun = if names.len() == 1 { "door" } else { "doors" };
    format!("{noun} {}", names.join(", "))
}

/// The scan guard, the event cap and the knock doors, one line each.
fn defences(out: &mut String, policy: &Policy) {
    if let Some(scan) = &policy.scan {
        let except = match scan.except_text.as_deref() {
            Some(text) if !scan.except.is_empty() => format!("{text}, and"),
            _ => "only".to_owned(),
        };
        let _ = writeln!(
            out,
            "scan guard: {} distinct dropped ports within {} block a source (IPv6: its /64) \
             for {}; except {except} the host's gateways, resolvers and own addresses \
             (added when applied){}",
            scan.ports,
            format_duration(scan.within),
            format_duration(scan.block),
            if scan.protected.is_empty() {
                String::new()
            } else {
                let list: Vec<String> = scan.protected.iter().map(|c| c.to_string()).collect();
                format!(": {}", list.join(", "))
            }
        );
    }
    match policy.log_limit {
        Some(rate) => {
            let bucket = log_limit(Some(rate));
            let per_source = Rate {
                count: (rate.count / 4).max(1),
                per: rate.per,
            };
            let _ = writeln!(
                out,
                "log-limit: {rate} events, {per_source} per source; beyond it packets are \
                 counted as suppressed{}",
                if bucket.interval_ns == 0 {
                    " (off)"
                } else {
                    ""
                }
            );
        }
        None => {
            let _ = writeln!(out, "log-limit: none (events are aggregated, not capped)");
        }
    }
    for door in &policy.doors {
        let (opens_proto, opens_port) = door.opens;
        let how = match &door.kind {
            DoorKind::Sequence { steps, within } => {
                let knocks: Vec<String> = steps.iter().map(|(p, n)| format!("{n}/{p}")).collect();
                format!(
                    "knocks [{}] within {}",
                    knocks.join(", "),
                    format_duration(*within)
                )
            }
            DoorKind::Spa { port, key_file } => format!(
                "a single-packet knock on {port}/udp, verified by `portfw agent` with {}",
                key_file.display()
            ),
        };
        let _ = writeln!(
            out,
            "knock door `{}` (line {}): {how}; opens {opens_port}/{opens_proto} for {} to the \
             knocking source",
            door.name,
            door.location.line,
            format_duration(door.open_for)
        );
    }
}
