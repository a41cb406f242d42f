//! The pure policy compiler: a [`Policy`] in, the kernel's tables out, no I/O.
//!
//! The kernel never walks rules. Per protocol, ports fall into classes of ports that the
//! same rules name; each class compiles to one port-table entry. A class whose first
//! matching rule ignores the source gets its verdict directly. A class whose leading rules
//! restrict sources also names a *group*: the ordered list of those source rules, shared by
//! every class with the same list. Each group compiles to longest-prefix-match entries
//! keyed by (group, prefix) that encode first-match order among its rules; a source matching
//! none of them falls back to the port entry. Per packet that is one array lookup, plus one
//! trie lookup for ports with source rules, whatever the number of rules.

mod sources;
mod summary;

pub mod reference;

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::Duration,
};

use portfw_common::{
    DoorDef, FlowTimeouts, MAX_SOURCE_GROUPS, NO_SOURCE_GROUP, PORT_TABLE_GEN_ENTRIES,
    PORTS_PER_PROTO, PortEntry, RULE_DEFAULT, RuleLimit, SOURCE_TRIE_ENTRIES, Settings, SourceKey4,
    SourceKey6, port_flags, settings_log, source_key4, source_key6,
};
pub use summary::summary;

use crate::policy::{Action, LogMode, Policy, Protocol};

/// One generation of the kernel tables, ready for the loader to place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// [`PORT_TABLE_GEN_ENTRIES`] entries, indexed by `slot * PORTS_PER_PROTO + port`.
    pub ports: Vec<PortEntry>,
    pub settings: Settings,
    /// How many flows the flow table should hold (`flows: max`). The loader sizes the kernel
    /// map a little above it, with [`portfw_common::flow_map_entries`], because an LRU hash
    /// starts evicting before it is full.
    pub flows_max: u32,
    /// The verdict of a packet no rule decides (the port table holds it per port; user
    /// space names it).
    pub default: Action,
    /// What user space needs to name a rule index found in an event or counter.
    pub rules: Vec<RuleInfo>,
    /// Source groups: `groups[g - 1]` lists the rule indices of group `g`, in order.
    pub groups: Vec<Vec<u32>>,
    /// Entries of the IPv4 source trie.
    pub sources4: Vec<SourceEntry<SourceKey4>>,
    /// Entries of the IPv6 source trie.
    pub sources6: Vec<SourceEntry<SourceKey6>>,
    /// Knock doors, in policy order: door `d` is `PFW_DOOR_DEFS` slot `d` and bit `d` of
    /// [`PortEntry::knocks`] and [`PortEntry::opens`].
    pub doors: Vec<DoorInfo>,
    /// Limits of the rules with `limit:`: `limits[i]` is [`PortEntry::limit`] `== i + 1`.
    pub limits: Vec<RuleLimit>,
}

/// A knock door as compiled: the kernel's definition, and what user space needs to name it
/// and (for a single-packet door) verify its knocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DoorInfo {
    pub name: String,
    pub line: usize,
    pub def: DoorDef,
    /// The single-packet knock's UDP port and key file (`spa:`); `None` for a sequence.
    pub spa: Option<SpaInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpaInfo {
    pub port: u16,
    pub key_file: std::path::PathBuf,
}

/// One (group, prefix) entry of a source trie, in the kernel's key format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceEntry<K> {
    /// Bits of `key` that must match: the group's 32 bits plus the address prefix length.
    pub prefix_len: u32,
    pub key: K,
    pub verdict: PortEntry,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleInfo {
    pub name: Option<String>,
    pub summary: String,
    pub line: usize,
    pub action: Action,
}

/// A policy that is valid but does not fit the kernel's tables.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error(
        "the policy needs {groups} distinct source-rule groups (orderings of rules with `from` \
         sharing ports); at most {max} fit"
    )]
    TooManyGroups { groups: usize, max: u32 },
    #[error(
        "the policy compiles to {entries} {family} source entries; at most {max} fit. Large \
         address sets repeat once per distinct group of source rules sharing ports: put a big \
         blocklist in one rule that names every port it should cover"
    )]
    TooManySourceEntries {
        family: &'static str,
        entries: usize,
        max: u32,
    },
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

impl CompiledPolicy {
    /// What the kernel program decides for a packet, computed the way it does from these
    /// tables: the port entry, then for a source group the longest matching prefix.
    /// A plain model for tests and `portfw explain`; linear in the source entries.
    pub fn lookup(&self, protocol: Protocol, port: u16, source: IpAddr) -> PortEntry {
        let port_entry = self.entry(protocol, port);
        let in_group = |group: u16| {
            if group == NO_SOURCE_GROUP {
                return None;
            }
            match source {
                IpAddr::V4(a) => longest_match(&self.sources4, &source_key4(group, a.octets())),
                IpAddr::V6(a) => longest_match(&self.sources6, &source_key6(group, a.octets())),
            }
        };
        in_group(port_entry.group)
            .or_else(|| in_group(port_entry.tail))
            .unwrap_or(port_entry)
    }
}

/// The verdict of the longest entry whose first `prefix_len` bits equal `key`'s.
fn longest_match<const N: usize>(
    entries: &[SourceEntry<[u8; N]>],
    key: &[u8; N],
) -> Option<PortEntry> {
    entries
        .iter()
        .filter(|e| prefix_matches(&e.key, key, e.prefix_len))
        .max_by_key(|e| e.prefix_len)
        .map(|e| e.verdict)
}

fn prefix_matches(a: &[u8], b: &[u8], bits: u32) -> bool {
    let full = (bits / 8) as usize;
    if a[..full] != b[..full] {
        return false;
    }
    let rest = bits % 8;
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[full] & mask == b[full] & mask
    }
}

fn index(protocol: Protocol, port: u16) -> usize {
    (protocol.slot() * PORTS_PER_PROTO) as usize + usize::from(port)
}

fn entry(rule: u32, action: Action, log: bool) -> PortEntry {
    PortEntry {
        rule,
        group: NO_SOURCE_GROUP,
        tail: NO_SOURCE_GROUP,
        action: action.to_kernel(),
        flags: if log { port_flags::LOG } else { 0 },
        ..PortEntry::default()
    }
}

/// The entry a rule gives the packets it decides.
fn rule_entry(policy: &Policy, index: usize) -> PortEntry {
    let rule = &policy.rules[index];
    // Rule indices fit u32: parsing caps rules at MAX_RULES.
    entry(index as u32, rule.action, rule.logs(policy.log))
}

/// Capacities of the kernel tables the compiler must fit.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub source_groups: u32,
    pub source_entries: u32,
}

impl Limits {
    /// The kernel program's capacities.
    pub const KERNEL: Limits = Limits {
        source_groups: MAX_SOURCE_GROUPS,
        source_entries: SOURCE_TRIE_ENTRIES,
    };
}

/// Compiles `policy` into one generation of kernel tables.
///
/// Cost: sorting the rules' range boundaries, then one pass over the port classes; each
/// class walks only its leading source rules. Ports are written once each.
pub fn compile(policy: &Policy) -> Result<CompiledPolicy, CompileError> {
    compile_with(policy, Limits::KERNEL)
}

/// [`compile`] against explicit capacities.
pub fn compile_with(policy: &Policy, limits: Limits) -> Result<CompiledPolicy, CompileError> {
    let default = entry(
        RULE_DEFAULT,
        policy.default,
        policy.log.logs(policy.default),
    );
    let mut ports = vec![default; PORT_TABLE_GEN_ENTRIES as usize];
    let mut groups = Groups {
        max: limits.source_groups,
        ..Groups::default()
    };

    for protocol in Protocol::ALL {
        let base = index(protocol, 0);
        for class in classes(policy, protocol) {
            let mut port_entry = match class.terminal {
                Some(rule) => rule_entry(policy, rule),
                None => default,
            };
            let (head, tail) = split_at_large_sets(policy, &class.source_rules);
            port_entry.group = groups.intern(head)?;
            port_entry.tail = groups.intern(tail)?;
            let (low, high) = (usize::from(class.low), usize::from(class.high));
            ports[base + low..=base + high].fill(port_entry);
        }
    }

    let groups = groups.into_lists();
    let (mut sources4, mut sources6) = sources::compile(policy, &groups);
    if !policy.enforce {
        // Audit mode: every drop the tables hold passes as a would-drop. The flag rides on
        // the entry the kernel already reads, so enforcing costs nothing extra per packet.
        ports.iter_mut().for_each(audit);
        sources4.iter_mut().for_each(|e| audit(&mut e.verdict));
        sources6.iter_mut().for_each(|e| audit(&mut e.verdict));
    }
    for (family, entries) in [("IPv4", sources4.len()), ("IPv6", sources6.len())] {
        if entries > limits.source_entries as usize {
            return Err(CompileError::TooManySourceEntries {
                family,
                entries,
                max: limits.source_entries,
            });
        }
    }

    Ok(CompiledPolicy {
        ports,
        settings: settings(policy),
        flows_max: policy.flows.max,
        default: policy.default,
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
        groups,
        sources4,
        sources6,
        doors: Vec::new(),
        limits: Vec::new(),
    })
}

/// Marks a drop as audited (`enforce: false`): the kernel passes it as a would-drop.
fn audit(entry: &mut PortEntry) {
    if entry.action == Action::Drop.to_kernel() {
        entry.flags |= port_flags::AUDIT;
    }
}

/// Ports `low..=high` of one protocol that the same rules name.
struct Class {
    low: u16,
    high: u16,
    /// Rules with `from` that name these ports, in order, before `terminal`.
    source_rules: Vec<u32>,
    /// The first rule without `from` that names these ports: it decides every source the
    /// source rules leave. `None`: the default does.
    terminal: Option<usize>,
}

/// The classes of one protocol, by a sweep over the rules' range boundaries.
fn classes(policy: &Policy, protocol: Protocol) -> Vec<Class> {
    // (port where a rule's range starts or ends + 1, rule, +1 start / -1 end)
    let mut edges: Vec<(u32, usize, i32)> = Vec::new();
    for (index, rule) in policy.rules.iter().enumerate() {
        for range in rule.ports.iter().filter(|r| r.protocol == protocol) {
            edges.push((u32::from(range.low), index, 1));
            edges.push((u32::from(range.high) + 1, index, -1));
        }
    }
    edges.sort_unstable_by_key(|&(port, _, _)| port);

    // Active rules with the number of their ranges covering the current port (a rule may
    // list overlapping ranges), ordered by rule index.
    let mut active: BTreeMap<usize, i32> = BTreeMap::new();
    let mut classes = Vec::new();
    let mut at = 0usize;
    let mut start = 0u32;
    while start < PORTS_PER_PROTO {
        while at < edges.len() && edges[at].0 == start {
            let (_, rule, delta) = edges[at];
            let count = active.entry(rule).or_insert(0);
            *count += delta;
            if *count == 0 {
                active.remove(&rule);
            }
            at += 1;
        }
        let end = edges.get(at).map_or(PORTS_PER_PROTO, |&(port, _, _)| port);
        let mut source_rules = Vec::new();
        let mut terminal = None;
        for &rule in active.keys() {
            if policy.rules[rule].from.is_some() {
                source_rules.push(rule as u32);
            } else {
                terminal = Some(rule);
                break;
            }
        }
        // Both bounds are below 65536 here.
        classes.push(Class {
            low: start as u16,
            high: (end - 1) as u16,
            source_rules,
            terminal,
        });
        start = end;
    }
    classes
}

/// A rule with at least this many prefixes holds a "large set" (a blocklist, say).
pub const LARGE_SET: usize = 64;

/// Splits a class's source rules after the last rule with a large set.
///
/// First match is preserved by any split (the kernel tries the head, then the tail), but the
/// split decides what is stored: a group's entries include every prefix of every rule in it,
/// so a large set shared by many classes, each with other source rules after it, would be
/// repeated once per class. Ending the head at the last large set makes those classes share
/// one head group, and the set is stored once.
fn split_at_large_sets<'a>(policy: &Policy, rules: &'a [u32]) -> (&'a [u32], &'a [u32]) {
    let is_large = |&rule: &u32| {
        policy.rules[rule as usize]
            .from
            .as_ref()
            .is_some_and(|from| from.len() >= LARGE_SET)
    };
    match rules.iter().rposition(is_large) {
        Some(last) => rules.split_at(last + 1),
        None => (rules, &[]),
    }
}

/// Interns source-rule lists as group ids `1..`.
#[derive(Default)]
struct Groups {
    max: u32,
    ids: HashMap<Vec<u32>, u16>,
    lists: Vec<Vec<u32>>,
}

impl Groups {
    fn intern(&mut self, rules: &[u32]) -> Result<u16, CompileError> {
        if rules.is_empty() {
            return Ok(NO_SOURCE_GROUP);
        }
        if let Some(&id) = self.ids.get(rules) {
            return Ok(id);
        }
        let id = u16::try_from(self.lists.len() + 1)
            .ok()
            .filter(|&id| u32::from(id) <= self.max)
            .ok_or(CompileError::TooManyGroups {
                groups: self.lists.len() + 1,
                max: self.max,
            })?;
        self.ids.insert(rules.to_vec(), id);
        self.lists.push(rules.to_vec());
        Ok(id)
    }

    fn into_lists(self) -> Vec<Vec<u32>> {
        self.lists
    }
}

fn settings(policy: &Policy) -> Settings {
    let log = match policy.log {
        LogMode::None => 0,
        LogMode::Drops => settings_log::DROP,
        LogMode::All => settings_log::ALLOW | settings_log::DROP,
    };
    let mut icmp4_drop = [0u8; 32];
    let mut icmp6_drop = [0u8; 32];
    for kind in 0..=u8::MAX {
        // Code 0 stands for every code but IPv4 fragmentation-needed, stored on its own.
        for (v6, bits) in [(false, &mut icmp4_drop), (true, &mut icmp6_drop)] {
            if policy.icmp_verdict(v6, kind, 0) == Action::Drop {
                bits[usize::from(kind >> 3)] |= 1 << (kind & 7);
            }
        }
    }
    Settings {
        fragments: policy.fragments.to_kernel(),
        other_ip: policy.other_ip.to_kernel(),
        non_ip: policy.non_ip.to_kernel(),
        log,
        icmp_frag_needed: policy.icmp_verdict(false, 3, 4).to_kernel(),
        replies: policy.replies.to_kernel(),
        // Drops decided by settings (and malformed packets) pass in audit mode too.
        audit: u8::from(!policy.enforce),
        icmp4_drop,
        icmp6_drop,
        flow_timeouts: flow_timeouts(&policy.flows),
        ..Settings::default()
    }
}

fn flow_timeouts(flows: &crate::policy::Flows) -> FlowTimeouts {
    let (tcp_ns, tcp_closing_ns, udp_ns, icmp_ns) = (
        nanos(flows.tcp_timeout),
        nanos(flows.tcp_closing),
        nanos(flows.udp_timeout),
        nanos(flows.icmp_timeout),
    );
    FlowTimeouts {
        tcp_ns,
        tcp_closing_ns,
        udp_ns,
        icmp_ns,
        refresh_ns: FlowTimeouts::refresh_for(tcp_ns, tcp_closing_ns, udp_ns, icmp_ns),
    }
}

/// A timeout in the kernel's nanoseconds. Policy durations are at most a year, far below
/// the 584 years a u64 holds; anything longer would saturate rather than wrap.
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
