//! The pure policy compiler: a [`Policy`] in, the kernel's port table and settings out.
//!
//! The kernel looks up one entry per (protocol, port) and never walks rules, so first-match
//! semantics are settled here, once, when the policy is loaded.

use std::fmt::Write as _;

use portfw_common::{
    PORT_TABLE_GEN_ENTRIES, PORTS_PER_PROTO, PortEntry, RULE_DEFAULT, Settings, port_flags,
    settings_log,
};

use crate::policy::{Action, LogMode, Policy, Protocol};

pub mod reference;

/// One generation of the kernel tables, ready for the loader to place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// [`PORT_TABLE_GEN_ENTRIES`] entries, indexed by `slot * PORTS_PER_PROTO + port`.
    pub ports: Vec<PortEntry>,
    pub settings: Settings,
    /// What user space needs to name a rule index found in an event or counter.
    pub rules: Vec<RuleInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleInfo {
    pub name: Option<String>,
    pub summary: String,
    pub line: usize,
    pub action: Action,
}

/// Consecutive ports of one protocol that share the same entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRun {
    pub low: u16,
    pub high: u16,
    pub entry: PortEntry,
}

impl CompiledPolicy {
    /// The entry for `(protocol, port)`.
    pub fn entry(&self, protocol: Protocol, port: u16) -> PortEntry {
        self.ports[index(protocol, port)]
    }

    /// The table of one protocol as maximal runs of equal entries, in port order.
    pub fn runs(&self, protocol: Protocol) -> Vec<PortRun> {
        let start = index(protocol, 0);
        let table = &self.ports[start..start + PORTS_PER_PROTO as usize];
        let mut runs: Vec<PortRun> = Vec::new();
        for (port, entry) in (0..=u16::MAX).zip(table) {
            match runs.last_mut() {
                Some(run) if run.entry == *entry => run.high = port,
                _ => runs.push(PortRun {
                    low: port,
                    high: port,
                    entry: *entry,
                }),
            }
        }
        runs
    }
}

fn index(protocol: Protocol, port: u16) -> usize {
    (protocol.slot() * PORTS_PER_PROTO) as usize + usize::from(port)
}

fn entry(rule: u32, action: Action, log: bool) -> PortEntry {
    PortEntry {
        rule,
        action: action.to_kernel(),
        flags: if log { port_flags::LOG } else { 0 },
        _pad: 0,
    }
}

/// Compiles `policy`: for every (protocol, port) the first rule naming it, else the default.
///
/// Runs in O(rules' ranges + table size): each port is written once, and ports already
/// decided are skipped in near-constant time rather than visited again.
pub fn compile(policy: &Policy) -> CompiledPolicy {
    let default = entry(
        RULE_DEFAULT,
        policy.default,
        policy.log.logs(policy.default),
    );
    let mut ports = vec![default; PORT_TABLE_GEN_ENTRIES as usize];
    let mut undecided = Protocol::ALL.map(|_| Unassigned::new());
    for (index, rule) in policy.rules.iter().enumerate() {
        // Rule indices above u32::MAX cannot exist: parsing caps rules at MAX_RULES.
        let rule_entry = entry(index as u32, rule.action, rule.logs(policy.log));
        for range in &rule.ports {
            let base = (range.protocol.slot() * PORTS_PER_PROTO) as usize;
            let free = &mut undecided[range.protocol.slot() as usize];
            free.take_each(range.low, range.high, |port| {
                ports[base + usize::from(port)] = rule_entry;
            });
        }
    }
    CompiledPolicy {
        ports,
        settings: settings(policy),
        rules: policy
            .rules
            .iter()
            .map(|rule| RuleInfo {
                name: rule.name.clone(),
                summary: rule.summary.clone(),
                line: rule.location.line,
                action: rule.action,
            })
            .collect(),
    }
}

fn settings(policy: &Policy) -> Settings {
    let log = match policy.log {
        LogMode::None => 0,
        LogMode::Drops => settings_log::DROP,
        LogMode::All => settings_log::ALLOW | settings_log::DROP,
    };
    Settings {
        icmp: policy.icmp.to_kernel(),
        fragments: policy.fragments.to_kernel(),
        other_ip: policy.other_ip.to_kernel(),
        non_ip: policy.non_ip.to_kernel(),
        log,
        _pad: [0; 3],
    }
}

/// The ports of one protocol no rule has claimed yet, as a "next free port" forest.
///
/// `next[p]` leads towards the smallest free port `>= p`; a free port points at itself and
/// the sentinel 65536 stands for "none left". Claiming a port links it to its successor,
/// and path compression keeps later searches short, so a rule whose range is already
/// decided costs next to nothing however wide it is.
struct Unassigned {
    next: Vec<u32>,
}

const NONE_LEFT: u32 = PORTS_PER_PROTO;

impl Unassigned {
    fn new() -> Self {
        Self {
            next: (0..=NONE_LEFT).collect(),
        }
    }

    /// The smallest free port `>= port`, or [`NONE_LEFT`].
    fn find(&mut self, port: u32) -> u32 {
        let mut root = port;
        while self.next[root as usize] != root {
            root = self.next[root as usize];
        }
        let mut at = port;
        while at != root {
            let up = self.next[at as usize];
            self.next[at as usize] = root;
            at = up;
        }
        root
    }

    /// Claims every free port in `low..=high`, calling `claim` once for each.
    fn take_each(&mut self, low: u16, high: u16, mut claim: impl FnMut(u16)) {
        let high = u32::from(high);
        let mut port = self.find(u32::from(low));
        while port <= high {
            // `port <= high <= u16::MAX`, so the conversion cannot fail.
            if let Ok(p) = u16::try_from(port) {
                claim(p);
            }
            self.next[port as usize] = port + 1;
            port = self.find(port + 1);
        }
    }
}

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
    let runs = Protocol::ALL.map(|protocol| compiled.runs(protocol));
    // One width for every protocol keeps the rule column aligned down the whole listing.
    let width = runs
        .iter()
        .flatten()
        .filter(|run| run.entry.rule != RULE_DEFAULT)
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
        for run in runs.iter().filter(|run| run.entry.rule != RULE_DEFAULT) {
            decided_any = true;
            let _ = writeln!(
                out,
                "  {:<5} {:<width$}  {}{}",
                action_name(run.entry.action),
                port_span(run),
                rule_label(compiled, run.entry.rule),
                logged(&run.entry)
            );
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
        if runs.iter().any(|run| run.entry.rule == RULE_DEFAULT) {
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

#[cfg(test)]
mod tests;
