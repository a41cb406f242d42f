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
    DoorDef, FlowTimeouts, KnockStep, LogLimit, MAX_DOORS, MAX_SOURCE_GROUPS, NO_SOURCE_GROUP,
    PORT_TABLE_GEN_ENTRIES, PORTS_PER_PROTO, PortEntry, RULE_DEFAULT, RULE_KNOCK, RULE_SPA,
    RuleLimit, SOURCE_TRIE_ENTRIES, ScanSettings, Settings, SourceKey4, SourceKey6, door_kind,
    guard, port_flags, settings_log, source_key4, source_key6,
};
pub use summary::summary;

use crate::policy::{Action, DoorKind, LogMode, Policy, Protocol, Rate};

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

/// The entries rules give the packets they decide.
struct RuleEntries<'p> {
    policy: &'p Policy,
    /// Per rule, its [`PortEntry::limit`]: `1 +` its index among the limited rules, or 0.
    limit_of: Vec<u16>,
}

impl<'p> RuleEntries<'p> {
    fn new(policy: &'p Policy) -> Self {
        let mut next = 0u16;
        let limit_of = policy
            .rules
            .iter()
            .map(|rule| {
                if rule.limit.is_some() {
                    // Parsing caps limited rules at MAX_LIMITS, far below u16::MAX.
                    next = next.saturating_add(1);
                    next
                } else {
                    0
                }
            })
            .collect();
        Self { policy, limit_of }
    }

    /// The entry rule `index` gives the packets it decides.
    fn rule(&self, index: usize) -> PortEntry {
        let rule = &self.policy.rules[index];
        // Rule indices fit u32: parsing caps rules at MAX_RULES.
        PortEntry {
            limit: self.limit_of[index],
            ..entry(index as u32, rule.action, rule.logs(self.policy.log))
        }
    }

    /// A knock port's own verdict, standing in for any drop there: the port stays closed,
    /// and its drops count as knocks, never towards the scan guard.
    fn knock(&self) -> PortEntry {
        entry(RULE_KNOCK, Action::Drop, self.policy.log.logs(Action::Drop))
    }
}

/// What the knock doors add to one port: the door it is a knock of ([`PortEntry::knocks`]:
/// `1 +` the door), the doors that open it (bit `d`: door `d`; the kernel only asks whether
/// it is non-zero), and whether it is a single-packet knock port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct DoorBits {
    knocks: u8,
    opens: u8,
    spa: bool,
}

/// The door bits of every port that has any, by (protocol, port).
fn door_ports(policy: &Policy) -> BTreeMap<(Protocol, u16), DoorBits> {
    let mut ports: BTreeMap<(Protocol, u16), DoorBits> = BTreeMap::new();
    for (d, door) in policy.doors.iter().take(MAX_DOORS as usize).enumerate() {
        // One bit each: parsing caps doors at MAX_DOORS (8).
        let bit = 1u8 << d;
        match &door.kind {
            DoorKind::Sequence { steps, .. } => {
                for &step in steps {
                    // Parsing lets a port knock for one door only.
                    ports.entry(step).or_default().knocks = d as u8 + 1;
                }
            }
            DoorKind::Spa { port, .. } => {
                ports.entry((Protocol::Udp, *port)).or_default().spa = true
            }
        }
        ports.entry(door.opens).or_default().opens |= bit;
    }
    ports
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
    let rules = RuleEntries::new(policy);
    let door_ports = door_ports(policy);

    for protocol in Protocol::ALL {
        let base = index(protocol, 0);
        for class in classes(policy, protocol) {
            let port_entry = match class.terminal {
                Some(rule) => rules.rule(rule),
                None => default,
            };
            let (head, tail) = split_at_large_sets(policy, &class.source_rules);
            let plain = PortEntry {
                group: groups.intern(head, DoorBits::default())?,
                tail: groups.intern(tail, DoorBits::default())?,
                ..port_entry
            };
            let (low, high) = (usize::from(class.low), usize::from(class.high));
            ports[base + low..=base + high].fill(plain);
            // Knock, opens and single-packet ports get entries (and groups) of their own.
            for (&(_, port), &bits) in
                door_ports.range((protocol, class.low)..=(protocol, class.high))
            {
                let special = if bits.spa {
                    entry(RULE_SPA, Action::Allow, policy.log.logs(Action::Allow))
                } else {
                    let mut special = port_entry;
                    if bits.knocks != 0 && special.action == Action::Drop.to_kernel() {
                        special = rules.knock();
                    }
                    special.group = groups.intern(head, bits)?;
                    special.tail = groups.intern(tail, bits)?;
                    special.knocks = bits.knocks;
                    special.opens = bits.opens;
                    special
                };
                ports[base + usize::from(port)] = special;
            }
        }
    }

    let (groups, bits) = groups.into_lists();
    let (mut sources4, mut sources6) = sources::compile(&rules, &groups, &bits);
    if let Some(scan) = &policy.scan {
        sources::except(scan, &mut sources4, &mut sources6);
        // Every entry carries GUARD, so that a policy without defences reads nothing more.
        ports.iter_mut().for_each(|e| e.flags |= port_flags::GUARD);
        sources4
            .iter_mut()
            .for_each(|e| e.verdict.flags |= port_flags::GUARD);
        sources6
            .iter_mut()
            .for_each(|e| e.verdict.flags |= port_flags::GUARD);
    }
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
        doors: doors(policy),
        limits: policy
            .rules
            .iter()
            .filter_map(|rule| rule.limit.as_ref())
            .map(|limit| RuleLimit {
                id: limit.id,
                _pad: 0,
                interval_ns: limit.rate.interval_ns(),
                tolerance_ns: limit.rate.tolerance_ns(),
            })
            .collect(),
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

/// Interns source-rule lists as group ids `1..`. A knock or opens port's group is its own
/// (the list with the port's door bits), because its entries carry those bits and every
/// port sharing a group shares its entries.
#[derive(Default)]
struct Groups {
    max: u32,
    /// Groups of ports without door bits: almost all, looked up without an allocation.
    ids: HashMap<Vec<u32>, u16>,
    door_ids: HashMap<(Vec<u32>, DoorBits), u16>,
    lists: Vec<Vec<u32>>,
    bits: Vec<DoorBits>,
}

impl Groups {
    fn intern(&mut self, rules: &[u32], bits: DoorBits) -> Result<u16, CompileError> {
        if rules.is_empty() {
            return Ok(NO_SOURCE_GROUP);
        }
        let plain = bits == DoorBits::default();
        let known = if plain {
            self.ids.get(rules)
        } else {
            self.door_ids.get(&(rules.to_vec(), bits))
        };
        if let Some(&id) = known {
            return Ok(id);
        }
        let id = u16::try_from(self.lists.len() + 1)
            .ok()
            .filter(|&id| u32::from(id) <= self.max)
            .ok_or(CompileError::TooManyGroups {
                groups: self.lists.len() + 1,
                max: self.max,
            })?;
        if plain {
            self.ids.insert(rules.to_vec(), id);
        } else {
            self.door_ids.insert((rules.to_vec(), bits), id);
        }
        self.lists.push(rules.to_vec());
        self.bits.push(bits);
        Ok(id)
    }

    fn into_lists(self) -> (Vec<Vec<u32>>, Vec<DoorBits>) {
        (self.lists, self.bits)
    }
}

/// The knock doors' kernel definitions, in policy order.
fn doors(policy: &Policy) -> Vec<DoorInfo> {
    policy
        .doors
        .iter()
        .map(|door| {
            let mut def = DoorDef {
                id: door.id(),
                open_ns: nanos(door.open_for),
                opens_port: door.opens.1,
                // Slots are 0..4.
                opens_slot: door.opens.0.slot() as u8,
                ..DoorDef::default()
            };
            let spa = match &door.kind {
                DoorKind::Sequence { steps, within } => {
                    def.kind = door_kind::SEQUENCE;
                    // Parsing caps sequences at MAX_KNOCK_STEPS.
                    def.steps = steps.len() as u8;
                    def.within_ns = nanos(*within);
                    for (slot, &(protocol, port)) in def.sequence.iter_mut().zip(steps) {
                        *slot = KnockStep {
                            port,
                            slot: protocol.slot() as u8,
                            _pad: 0,
                        };
                    }
                    None
                }
                DoorKind::Spa { port, key_file } => {
                    def.kind = door_kind::SPA;
                    Some(SpaInfo {
                        port: *port,
                        key_file: key_file.clone(),
                    })
                }
            };
            DoorInfo {
                name: door.name.clone(),
                line: door.location.line,
                def,
                spa,
            }
        })
        .collect()
}

/// `log-limit:` as two GCRA buckets: the global rate, and a quarter of it per source (at
/// least one event per period), so that one flooding source cannot take the whole budget.
pub fn log_limit(rate: Option<Rate>) -> LogLimit {
    let Some(rate) = rate else {
        return LogLimit::default();
    };
    let per_source = Rate {
        count: (rate.count / 4).max(1),
        per: rate.per,
    };
    LogLimit {
        interval_ns: rate.interval_ns(),
        tolerance_ns: rate.tolerance_ns(),
        src_interval_ns: per_source.interval_ns(),
        src_tolerance_ns: per_source.tolerance_ns(),
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
        // The scan guard writes blocks, so it reads them too; the loader adds BLOCKS and NETS
        // when `portfw block` has filled the tables.
        guard: if policy.scan.is_some() {
            guard::SCAN | guard::BLOCKS
        } else {
            0
        },
        scan: policy
            .scan
            .as_ref()
            .map_or(ScanSettings::default(), |scan| ScanSettings {
                ports: scan.ports,
                _pad: 0,
                within_ns: nanos(scan.within),
                block_ns: nanos(scan.block),
            }),
        log_limit: log_limit(policy.log_limit),
    }
}

fn flow_timeouts(flows: &crate::policy::Flows) -> FlowTimeouts {
    let (tcp_ns, tcp_closing_ns, udp_ns, icmp_ns) = (
        nanos(flows.tcp_timeout),
        nanos(flows.tcp_closing),
        nanos(flows.udp_timeout),
        nanos(flows.icmp_timeout),
    );
    let refresh_ns = FlowTimeouts::refresh_for(tcp_ns, tcp_closing_ns, udp_ns, icmp_ns);
    FlowTimeouts {
        tcp_ns,
        tcp_closing_ns,
        udp_ns,
        icmp_ns,
        refresh_ns,
        cache_ns: FlowTimeouts::cache_for(refresh_ns),
    }
}

/// A timeout in the kernel's nanoseconds. Policy durations are at most a year, far below
/// the 584 years a u64 holds; anything longer would saturate rather than wrap.
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
