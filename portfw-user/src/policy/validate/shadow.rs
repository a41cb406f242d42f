//! The "never matches" warning: a rule whose every packet an earlier rule decides first.
//!
//! Rules are grouped by their `from` (rules without one form the unconditional group), and
//! each group keeps the port ranges its rules have named so far. An earlier rule counts as
//! deciding a port for rule R only if it names that port and either has no `from` or has, for
//! each prefix R admits, one prefix containing it. Sources covered only by several earlier
//! rules together are not recognised, so the warning is never raised wrongly, only sometimes
//! missed. The work follows the number of ranges and prefixes written, not their width.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use super::{Written, quote_items};
use crate::policy::{
    Cidr, Policy, Protocol, Rule,
    diag::Reporter,
    quickhash::{QuickMap, QuickSet},
};

/// How many earlier rules a warning names before saying "and others".
const SHADOWERS_SHOWN: usize = 3;

/// What a rule without `from` admits.
const EVERYWHERE: [Cidr; 2] = [
    Cidr {
        addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        len: 0,
    },
    Cidr {
        addr: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        len: 0,
    },
];

/// The group of rules without `from`.
const UNCONDITIONAL: usize = 0;

/// The end of a list in [`Groups::holders`].
const END: usize = usize::MAX;

/// Warns about every rule that can never match because, for every port it names and every
/// source it admits, earlier rules decide first.
pub(super) fn shadowed_rules(policy: &Policy, written: &[Written], reporter: &mut Reporter<'_>) {
    let mut groups = Groups::new(&policy.rules);
    let mut candidates = Vec::new();
    for (index, rule) in policy.rules.iter().enumerate() {
        let own = groups.rule_group[index];
        groups.candidates(index, own, &mut candidates);
        if !candidates.is_empty() && groups.cover(rule, &candidates) {
            let none = Written::default();
            let specs = written.get(index).unwrap_or(&none);
            let message = groups.warning(index, rule, specs, &candidates, policy);
            reporter.warning(rule.location, message);
        }
        groups.add(index, rule, own, index + 1 == policy.rules.len());
    }
}

/// Ports of one protocol named by one group's rules so far.
#[derive(Default)]
struct Ports {
    /// Disjoint, non-adjacent ranges `low => high`, for "is this covered" questions.
    merged: BTreeMap<u32, u32>,
    /// The same ports split by the group's first rule naming each: `low => (high, rule)`.
    first: BTreeMap<u32, (u32, usize)>,
}

impl Ports {
    /// The end of the merged range holding `port`.
    fn covering(&self, port: u32) -> Option<u32> {
        let (_, &high) = self.merged.range(..=port).next_back()?;
        (high >= port).then_some(high)
    }

    /// The range holding `port` that one rule decided first, as (high, rule).
    fn decider(&self, port: u32) -> Option<(u32, usize)> {
        let (_, &(high, rule)) = self.first.range(..=port).next_back()?;
        (high >= port).then_some((high, rule))
    }

    fn insert(&mut self, low: u32, high: u32, rule: usize) {
        let mut port = low;
        while port <= high {
            if let Some(end) = self.covering(port) {
                port = end + 1;
                continue;
            }
            // `port` is not covered, so the next range starts past it.
            let next = self.merged.range(port..).next().map(|(&start, _)| start);
            let end = next.map_or(high, |start| (start - 1).min(high));
            self.first.insert(port, (end, rule));
            port = end + 1;
        }
        let (mut start, mut end) = (low, high);
        if let Some((&before, &before_end)) = self.merged.range(..low).next_back()
            && before_end + 1 >= low
        {
            start = before;
        }
        let absorbed: Vec<u32> = self
            .merged
            .range(start..=high + 1)
            .map(|(&s, _)| s)
            .collect();
        for s in absorbed {
            if let Some(e) = self.merged.remove(&s) {
                end = end.max(e);
            }
        }
        self.merged.insert(start, end);
    }
}

struct Group<'p> {
    /// What the group's rules admit.
    sources: &'p [Cidr],
    /// `sources` as a set, with the prefix lengths it uses per family (IPv4, IPv6), so that
    /// "is this prefix inside one of ours" takes one lookup per length.
    members: QuickSet<Cidr>,
    lengths: [Vec<u8>; 2],
    ports: [Ports; 4],
    /// Whether a rule of the group has been passed yet.
    active: bool,
}

impl Group<'_> {
    /// Fills `members` and `lengths`, the first time [`Group::contains`] is needed.
    fn build_members(&mut self) {
        if !self.members.is_empty() {
            return;
        }
        self.members = self.sources.iter().copied().collect();
        let mut used = [[false; 129]; 2];
        for cidr in self.sources {
            used[family(cidr)][usize::from(cidr.len)] = true;
        }
        self.lengths = used.map(|lengths| {
            (0..=128u8)
                .filter(|&len| lengths[usize::from(len)])
                .collect()
        });
    }

    /// Whether one of the group's prefixes contains `cidr`; needs [`Group::build_members`].
    fn contains(&self, cidr: &Cidr) -> bool {
        self.lengths[family(cidr)]
            .iter()
            .take_while(|&&len| len <= cidr.len)
            .any(|&len| Cidr::new(cidr.addr, len).is_some_and(|c| self.members.contains(&c)))
    }
}

struct Groups<'p> {
    groups: Vec<Group<'p>>,
    rule_group: Vec<usize>,
    /// Every prefix of an active conditional group, with the first of the groups holding
    /// it in `holders`.
    index: QuickMap<Cidr, usize>,
    /// Lists of groups, as (group, next entry); [`END`] ends a list.
    holders: Vec<(usize, usize)>,
    /// Which prefix lengths `index` holds, per family.
    lengths_used: [[bool; 129]; 2],
    /// Whether group `.1` admits everything group `.0` does.
    covers: QuickMap<(usize, usize), bool>,
    /// The rule number (plus one) a group was last considered for, to list it once.
    seen: Vec<usize>,
}

impl<'p> Groups<'p> {
    fn new(rules: &'p [Rule]) -> Self {
        let mut groups = vec![Group::new(&EVERYWHERE)];
        let mut by_sources: QuickMap<&[Cidr], usize> = QuickMap::default();
        let rule_group = rules
            .iter()
            .map(|rule| match rule.from.as_deref() {
                None => UNCONDITIONAL,
                Some(sources) => *by_sources.entry(sources).or_insert_with(|| {
                    groups.push(Group::new(sources));
                    groups.len() - 1
                }),
            })
            .collect();
        let seen = vec![0; groups.len()];
        Self {
            groups,
            rule_group,
            index: QuickMap::default(),
            holders: Vec::new(),
            lengths_used: [[false; 129]; 2],
            covers: QuickMap::default(),
            seen,
        }
    }

    /// The active groups whose rules decide first for rule `index`, of group `own`, wherever
    /// they name the same ports.
    fn candidates(&mut self, index: usize, own: usize, out: &mut Vec<usize>) {
        out.clear();
        if self.groups[UNCONDITIONAL].active {
            out.push(UNCONDITIONAL);
        }
        // A group covering us contains our most specific prefix, so it is among the groups
        // holding one of that prefix's ancestors.
        let Some(pivot) = self.groups[own].sources.iter().max_by_key(|c| c.len) else {
            return;
        };
        let pivot = *pivot;
        for len in 0..=pivot.len {
            if !self.lengths_used[family(&pivot)][usize::from(len)] {
                continue;
            }
            let Some(ancestor) = Cidr::new(pivot.addr, len) else {
                continue;
            };
            let mut next = self.index.get(&ancestor).copied().unwrap_or(END);
            while let Some(&(group, after)) = self.holders.get(next) {
                next = after;
                if self.seen[group] == index + 1 {
                    continue;
                }
                self.seen[group] = index + 1;
                let covers = self.covers(own, group);
                if covers {
                    out.push(group);
                }
            }
        }
    }

    /// Whether group `group`, found holding an ancestor of `own`'s most specific prefix,
    /// has a prefix containing each of `own`'s.
    fn covers(&mut self, own: usize, group: usize) -> bool {
        if own == group || self.groups[own].sources.len() == 1 {
            return true;
        }
        if let Some(&known) = self.covers.get(&(own, group)) {
            return known;
        }
        self.groups[group].build_members();
        let holder = &self.groups[group];
        let covers = self.groups[own].sources.iter().all(|c| holder.contains(c));
        self.covers.insert((own, group), covers);
        covers
    }

    /// Whether the `candidates` together name every port `rule` names.
    fn cover(&self, rule: &Rule, candidates: &[usize]) -> bool {
        rule.ports.iter().all(|range| {
            let slot = range.protocol.slot() as usize;
            let mut port = u32::from(range.low);
            while port <= u32::from(range.high) {
                let end = candidates
                    .iter()
                    .filter_map(|&g| self.groups[g].ports[slot].covering(port))
                    .max();
                match end {
                    Some(end) => port = end + 1,
                    None => return false,
                }
            }
            true
        })
    }

    /// The warning for shadowed rule `index`, naming the earlier rules responsible.
    fn warning(
        &self,
        index: usize,
        rule: &Rule,
        specs: &Written,
        candidates: &[usize],
        policy: &Policy,
    ) -> String {
        let mut earlier = BTreeSet::new();
        let mut more = false;
        let mut by_source = false;
        'ranges: for range in &rule.ports {
            let slot = range.protocol.slot() as usize;
            let mut port = u32::from(range.low);
            while port <= u32::from(range.high) {
                // The earliest rule deciding this port among the candidate groups.
                let Some((first, end, group)) = candidates
                    .iter()
                    .filter_map(|&g| {
                        let (end, rule) = self.groups[g].ports[slot].decider(port)?;
                        Some((rule, end, g))
                    })
                    .min()
                else {
                    break;
                };
                by_source |= group != UNCONDITIONAL;
                earlier.insert(first);
                if earlier.len() > SHADOWERS_SHOWN {
                    more = true;
                    break 'ranges;
                }
                port = end + 1;
            }
        }
        let mut shown: Vec<String> = earlier
            .iter()
            .take(SHADOWERS_SHOWN)
            .filter_map(|&i| policy.rules.get(i).map(|r| (i, r)))
            .map(|(i, r)| format!("rule {} at line {}", i + 1, r.location.line))
            .collect();
        if more {
            shown.push("others".to_owned());
        }
        let shown = match shown.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
            _ => shown.join(""),
        };
        let sources = if by_source {
            " for every source it admits"
        } else {
            ""
        };
        format!(
            "{} never matches: every port it names is decided by earlier rules{sources} \
             ({shown})",
            rule_label(index, rule, specs)
        )
    }

    /// Records rule `index`'s ports in its group, making the group visible to later rules.
    fn add(&mut self, index: usize, rule: &Rule, own: usize, last: bool) {
        let group = &mut self.groups[own];
        for range in &rule.ports {
            group.ports[range.protocol.slot() as usize].insert(
                u32::from(range.low),
                u32::from(range.high),
                index,
            );
        }
        if group.active {
            return;
        }
        group.active = true;
        // No later rule will ask; a large set used by the last rule costs nothing.
        if own == UNCONDITIONAL || last {
            return;
        }
        for cidr in group.sources {
            self.lengths_used[family(cidr)][usize::from(cidr.len)] = true;
            let head = self.index.entry(*cidr).or_insert(END);
            self.holders.push((own, *head));
            *head = self.holders.len() - 1;
        }
    }
}

impl<'p> Group<'p> {
    fn new(sources: &'p [Cidr]) -> Self {
        Self {
            sources,
            members: QuickSet::default(),
            lengths: [Vec::new(), Vec::new()],
            ports: Protocol::ALL.map(|_| Ports::default()),
            active: false,
        }
    }
}

fn family(cidr: &Cidr) -> usize {
    usize::from(!cidr.is_ipv4())
}

/// "rule 3 (`drop: 80`)", "rule 3 `web` (`allow: [http, https]`)", or with a source
/// "rule 4 (`drop: ssh`, `from: $guests`)".
fn rule_label(index: usize, rule: &Rule, specs: &Written) -> String {
    let quoted = quote_items(specs);
    let value = if specs.count == 1 {
        quoted
    } else {
        format!("[{quoted}]")
    };
    let name = rule
        .name
        .as_ref()
        .map(|n| format!(" `{n}`"))
        .unwrap_or_default();
    let from = rule
        .from_text
        .as_ref()
        .map(|text| format!(", `from: {text}`"))
        .unwrap_or_default();
    format!(
        "rule {}{name} (`{}: {value}`{from})",
        index + 1,
        rule.action
    )
}
