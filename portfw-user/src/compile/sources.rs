//! Source groups to longest-prefix-match entries.
//!
//! Within a group, the rule that decides a source address is the first of the group's rules
//! whose `from` contains it. Every collected prefix containing an address is an ancestor of
//! (or equal to) the longest such prefix, so the decision depends only on that longest
//! prefix: for each prefix Q, it is the first rule owning Q or one of Q's ancestors. Emitting
//! that decision under Q, and nothing for addresses outside every prefix (the port entry then
//! decides), makes the kernel's longest-prefix match return exactly first-match order.
//! A prefix whose decision equals its nearest ancestor's is left out: the ancestor answers
//! for it.

use std::{collections::HashMap, net::IpAddr};

use portfw_common::{
    PortEntry, RULE_SETTING, SCAN_EXCEPT_GROUP, SOURCE_GROUP_BITS, SourceKey4, SourceKey6, action,
    source_key4, source_key6,
};

use super::{DoorBits, RuleEntries, SourceEntry};
use crate::policy::{Action, ScanGuard};

/// An address prefix as (bits, length); IPv4 lives in the low 32 bits.
type Prefix = (u128, u8);

fn mask(bits: u128, len: u8, max: u8) -> u128 {
    if len == 0 {
        return 0;
    }
    let keep = u128::MAX << (128 - u32::from(len));
    // Align the family's address to the top of the u128, mask, and align it back.
    let shift = 128 - u32::from(max);
    ((bits << shift) & keep) >> shift
}

/// One address family's view of a group: each prefix with the first rule owning it.
struct FamilyPrefixes {
    max: u8,
    owners: HashMap<Prefix, u32>,
    /// Distinct prefix lengths present, ascending: the only ancestors worth probing.
    lengths: Vec<u8>,
}

impl FamilyPrefixes {
    fn new(max: u8) -> Self {
        Self {
            max,
            owners: HashMap::new(),
            lengths: Vec::new(),
        }
    }

    fn add(&mut self, prefix: Prefix, rule: u32) {
        // Rules arrive in order, so the first owner is kept.
        self.owners.entry(prefix).or_insert(rule);
    }

    fn finish(&mut self) {
        let mut lengths: Vec<u8> = self.owners.keys().map(|&(_, len)| len).collect();
        lengths.sort_unstable();
        lengths.dedup();
        self.lengths = lengths;
    }

    /// The first rule owning `prefix` or an ancestor, and the same for the nearest proper
    /// ancestor present (if any).
    fn decide(&self, (bits, len): Prefix) -> (u32, Option<u32>) {
        let mut best: Option<u32> = None;
        let mut parent: Option<u32> = None;
        for &l in self.lengths.iter().take_while(|&&l| l <= len) {
            if let Some(&owner) = self.owners.get(&(mask(bits, l, self.max), l)) {
                if l < len {
                    parent = Some(best.map_or(owner, |b| b.min(owner)));
                }
                best = Some(best.map_or(owner, |b| b.min(owner)));
            }
        }
        // `prefix` itself is in `owners`, so `best` is set.
        (best.unwrap_or(u32::MAX), parent)
    }

    /// The prefixes worth an entry, each with its deciding rule, in a stable order.
    fn entries(&self) -> Vec<(Prefix, u32)> {
        let mut out: Vec<(Prefix, u32)> = self
            .owners
            .keys()
            .filter_map(|&prefix| {
                let (decision, parent) = self.decide(prefix);
                (parent != Some(decision)).then_some((prefix, decision))
            })
            .collect();
        out.sort_unstable();
        out
    }
}

/// The source-trie entries of every group, IPv4 and IPv6.
/// `bits[g]` are group `g + 1`'s door bits: a knock port's drops are knocks, and an opens
/// port's entries name the doors that open it.
pub(super) fn compile(
    entries: &RuleEntries<'_>,
    groups: &[Vec<u32>],
    bits: &[DoorBits],
) -> (Vec<SourceEntry<SourceKey4>>, Vec<SourceEntry<SourceKey6>>) {
    let policy = entries.policy;
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for ((index, rules), bits) in groups.iter().enumerate().zip(bits) {
        let verdict = |rule: u32| {
            let mut verdict = entries.rule(rule as usize);
            if bits.knocks != 0 && verdict.action == Action::Drop.to_kernel() {
                verdict = entries.knock();
            }
            verdict.opens = bits.opens;
            verdict
        };
        // Group ids start at 1 and were checked to fit u16 when interned.
        let group = (index + 1) as u16;
        let mut fam4 = FamilyPrefixes::new(32);
        let mut fam6 = FamilyPrefixes::new(128);
        for &rule in rules {
            for cidr in policy.rules[rule as usize].from.iter().flatten() {
                match cidr.addr {
                    IpAddr::V4(a) => fam4.add((u128::from(u32::from(a)), cidr.len), rule),
                    IpAddr::V6(a) => fam6.add((u128::from(a), cidr.len), rule),
                }
            }
        }
        fam4.finish();
        fam6.finish();
        for ((bits, len), rule) in fam4.entries() {
            let addr = (bits as u32).to_be_bytes();
            v4.push(SourceEntry {
                prefix_len: SOURCE_GROUP_BITS + u32::from(len),
                key: source_key4(group, addr),
                verdict: verdict(rule),
            });
        }
        for ((bits, len), rule) in fam6.entries() {
            v6.push(SourceEntry {
                prefix_len: SOURCE_GROUP_BITS + u32::from(len),
                key: source_key6(group, bits.to_be_bytes()),
                verdict: verdict(rule),
            });
        }
    }
    (v4, v6)
}

/// The scan guard's except list under [`SCAN_EXCEPT_GROUP`]: any hit means excepted, so the
/// verdict is a placeholder.
pub(super) fn except(
    scan: &ScanGuard,
    v4: &mut Vec<SourceEntry<SourceKey4>>,
    v6: &mut Vec<SourceEntry<SourceKey6>>,
) {
    let verdict = PortEntry {
        rule: RULE_SETTING,
        action: action::ALLOW,
        ..PortEntry::default()
    };
    let mut seen = std::collections::HashSet::new();
    for cidr in scan.all_except() {
        if !seen.insert(*cidr) {
            continue;
        }
        let prefix_len = SOURCE_GROUP_BITS + u32::from(cidr.len);
        match cidr.addr {
            IpAddr::V4(a) => v4.push(SourceEntry {
                prefix_len,
                key: source_key4(SCAN_EXCEPT_GROUP, a.octets()),
                verdict,
            }),
            IpAddr::V6(a) => v6.push(SourceEntry {
                prefix_len,
                key: source_key6(SCAN_EXCEPT_GROUP, a.octets()),
                verdict,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::mask;

    #[test]
    fn masks_keep_the_prefix_bits_of_each_family() {
        let v4 = u128::from(u32::from_be_bytes([10, 1, 2, 3]));
        assert_eq!(
            mask(v4, 8, 32),
            u128::from(u32::from_be_bytes([10, 0, 0, 0]))
        );
        assert_eq!(mask(v4, 32, 32), v4);
        assert_eq!(mask(v4, 0, 32), 0);
        let v6 = u128::MAX;
        assert_eq!(mask(v6, 1, 128), 1 << 127);
        assert_eq!(mask(v6, 128, 128), u128::MAX);
    }
}
