//! The tests' one random-policy generator: valid policies as YAML, drawn from a seeded
//! [`Rng`], shaped by a [`Profile`] for what each test needs to meet often: the differential
//! fuzzer's hot ports and wide prefixes, the compiler's crowded ports and large sets, the
//! shadowing check's tiny port and address spaces. YAML, because that text is what a failure
//! prints and what replays, and so that the parser is exercised too.

use std::{fmt::Write as _, ops::RangeInclusive};

use crate::Rng;

/// Ports that policies name and packets aim at, so that rules and packets meet often.
pub const HOT_PORTS: [u16; 20] = [
    0, 1, 7, 22, 23, 53, 80, 123, 443, 1023, 1024, 2905, 5001, 7000, 8000, 8080, 8999, 49151,
    49152, 65535,
];

/// A port drawn mostly from [`HOT_PORTS`] and next to them, sometimes anywhere.
pub fn port(rng: &Rng) -> u16 {
    match rng.weighted(&[60, 15, 25]) {
        0 => rng.pick(&HOT_PORTS),
        1 => rng.pick(&HOT_PORTS).wrapping_add(rng.range(0, 3) as u16),
        _ => rng.u16(),
    }
}

/// Prefixes around the addresses the differential fuzzer's frames come from, nested and
/// overlapping, of both families, so that `from:` rules meet members and strangers alike.
pub const WIDE_PREFIXES: [&str; 16] = [
    "198.18.0.2",
    "198.18.0.0/15",
    "10.0.0.0/8",
    "10.1.0.0/16",
    "10.1.128.0/17",
    "192.0.2.0/24",
    "192.0.2.128/25",
    "192.0.2.77",
    "0.0.0.0/0",
    "2001:2::2",
    "2001:db8::/32",
    "2001:db8:1::/48",
    "2001:db8:1::8000/113",
    "fd00::/8",
    "fd00:0:0:5::/64",
    "::/0",
];

/// Where the ports that rules name come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ports {
    /// Single ports and ranges around [`HOT_PORTS`], service names and port classes.
    Hot,
    /// Ports and ranges crowded into `0..below`, ranges up to `span - 1` ports past their
    /// start, so that rules overlap; with `wide`, now and then a wide range or a class.
    Window { below: u16, span: u16, wide: bool },
}

/// Where the prefixes of `from:` lists and sets come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addresses {
    /// [`WIDE_PREFIXES`]: real-looking networks, nested and of every size.
    Wide,
    /// Prefixes of any length packed into 10.0-3.0-3.0/24 and 2001:db8:0-3::/64, host bits
    /// and all, so that they nest and overlap; hosts in 10.0-4.0-4.0/24.
    Dense,
    /// Within 10.0.0.0/29 and 2001:db8::/125, /29 to /32 and /125 to /128, so that
    /// containment is frequent.
    Tiny,
}

/// Sets large enough for the compiler to give them their own group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LargeSets {
    /// The chance, in percent, that a set is large.
    pub percent: u64,
    /// The least members a large set has (up to 15 more); half of them single hosts, so it
    /// stays large once duplicates are removed.
    pub size: usize,
}

/// The knobs of [`random_policy`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    pub ports: Ports,
    /// A port specification's protocol suffix, drawn uniformly; `""` for none (every
    /// protocol). Repeat an entry to weigh it.
    pub protocols: &'static [&'static str],
    /// Port specifications per rule, `1..=ports_per_rule`.
    pub ports_per_rule: usize,
    pub addresses: Addresses,
    /// How many rules, uniformly (a rule for each set comes on top).
    pub rules: RangeInclusive<usize>,
    /// The chance, in percent, that a rule has a `from:`.
    pub from_percent: u64,
    /// Items per `from:` list, `1..=from_max`.
    pub from_max: usize,
    /// How many sets, `0..=sets`.
    pub sets: usize,
    /// The chance, in percent, that a `from:` item names a set rather than a prefix.
    pub set_percent: u64,
    pub large_sets: Option<LargeSets>,
    /// Whether to write the settings besides `default` and `log`: `icmp` (with named types),
    /// `fragments`, `other-ip`, `non-ip`.
    pub settings: bool,
}

impl Profile {
    /// For the differential fuzzer: hot ports, services and classes, wide prefixes, sets and
    /// every setting, so that rules and the generated frames meet often.
    pub fn differential() -> Profile {
        Profile {
            ports: Ports::Hot,
            protocols: &["", "", "", "tcp", "tcp", "udp", "udp", "sctp", "udplite"],
            ports_per_rule: 3,
            addresses: Addresses::Wide,
            rules: 0..=12,
            from_percent: 25,
            from_max: 3,
            sets: 2,
            set_percent: 25,
            large_sets: None,
            settings: true,
        }
    }

    /// For the compiler's property test: crowded ports, dense prefixes, and now and then a
    /// set of at least `large_set` members, which the compiler splits into its own group.
    pub fn compiler(large_set: usize) -> Profile {
        Profile {
            ports: Ports::Window {
                below: 40,
                span: 20,
                wide: true,
            },
            protocols: &["", "", "tcp", "udp", "sctp", "udplite"],
            ports_per_rule: 3,
            addresses: Addresses::Dense,
            rules: 0..=11,
            from_percent: 55,
            from_max: 4,
            sets: 2,
            set_percent: 40,
            large_sets: Some(LargeSets {
                percent: 30,
                size: large_set,
            }),
            settings: false,
        }
    }

    /// For the shadowing check: `count` rules over TCP and UDP ports below 15 and a tiny
    /// address space, so that rules cover each other often.
    pub fn shadowing(count: usize) -> Profile {
        Profile {
            ports: Ports::Window {
                below: 12,
                span: 4,
                wide: false,
            },
            protocols: &["tcp", "udp"],
            ports_per_rule: 2,
            addresses: Addresses::Tiny,
            rules: count..=count,
            from_percent: 67,
            from_max: 3,
            sets: 0,
            set_percent: 0,
            large_sets: None,
            settings: false,
        }
    }
}

fn action(rng: &Rng) -> &'static str {
    rng.pick(&["allow", "drop"])
}

fn port_spec(rng: &Rng, profile: &Profile) -> String {
    let target = match profile.ports {
        Ports::Hot => match rng.weighted(&[40, 35, 15, 10]) {
            0 => port(rng).to_string(),
            1 => {
                let a = port(rng);
                let b = if rng.percent(50) {
                    a.saturating_add(rng.range(0, 200) as u16)
                } else {
                    port(rng)
                };
                format!("{}-{}", a.min(b), a.max(b))
            }
            2 => rng
                .pick(&[
                    "ssh", "dns", "https", "http", "ntp", "snmp", "domain", "sip",
                ])
                .to_owned(),
            _ => rng
                .pick(&["well-known", "registered", "dynamic", "any"])
                .to_owned(),
        },
        Ports::Window { below, span, wide } => {
            if wide && rng.percent(33) {
                if rng.percent(50) {
                    rng.pick(&["0-65535", "any", "well-known", "dynamic", "65535"])
                        .to_owned()
                } else {
                    let low = rng.below(65536);
                    format!("{low}-{}", (low + rng.below(5000)).min(65535))
                }
            } else {
                let low = rng.below(u64::from(below));
                let high = low + rng.below(u64::from(span));
                if low == high {
                    low.to_string()
                } else {
                    format!("{low}-{high}")
                }
            }
        }
    };
    match rng.pick(profile.protocols) {
        "" => target,
        protocol => format!("{target}/{protocol}"),
    }
}

fn cidr(rng: &Rng, addresses: Addresses) -> String {
    match addresses {
        Addresses::Wide => rng.pick(&WIDE_PREFIXES).to_owned(),
        Addresses::Dense => {
            if rng.percent(60) {
                let len = rng.pick(&[0u8, 8, 12, 16, 20, 24, 28, 30, 31, 32]);
                format!(
                    "10.{}.{}.{}/{len}",
                    rng.below(4),
                    rng.below(4),
                    rng.below(8) * 32
                )
            } else {
                let len = rng.pick(&[0u8, 16, 32, 33, 48, 64, 100, 127, 128]);
                format!("2001:db8:{:x}::{:x}/{len}", rng.below(4), rng.below(8))
            }
        }
        Addresses::Tiny => {
            if rng.below(3) == 0 {
                format!("2001:db8::{}/{}", rng.below(8), 128 - rng.below(4))
            } else {
                format!("10.0.0.{}/{}", rng.below(8), 32 - rng.below(4))
            }
        }
    }
}

/// A single host of the address space, for the bulk of a large set.
fn host(rng: &Rng, addresses: Addresses) -> String {
    match addresses {
        Addresses::Wide => match rng.below(3) {
            0 => format!("10.1.{}.{}", rng.u8(), rng.u8()),
            1 => format!("192.0.2.{}", rng.u8()),
            _ => format!("2001:db8:1::{:x}", rng.u16()),
        },
        Addresses::Dense => format!("10.{}.{}.{}", rng.below(5), rng.below(5), rng.below(256)),
        Addresses::Tiny => format!("10.0.0.{}", rng.below(8)),
    }
}

fn settings(rng: &Rng, y: &mut String) {
    for key in ["icmp", "fragments", "other-ip", "non-ip"] {
        if key == "icmp" && rng.percent(30) {
            // Named types, essential ones among them, override the default.
            let names = [
                "echo-request",
                "echo-reply",
                "destination-unreachable",
                "frag-needed",
                "packet-too-big",
                "neighbor-solicitation",
                "router-advertisement",
                "icmp/13",
                "icmpv6/136",
                "icmpv6/200",
            ];
            let _ = writeln!(y, "icmp:\n  default: {}", action(rng));
            let mut used = Vec::new();
            for verb in ["allow", "drop"] {
                let picked: Vec<&str> = (0..rng.range(0, 3))
                    .map(|_| rng.pick(&names))
                    .filter(|n| !used.contains(n))
                    .collect();
                if !picked.is_empty() {
                    let _ = writeln!(y, "  {verb}: [{}]", picked.join(", "));
                    used.extend(picked);
                }
            }
        } else if rng.percent(60) {
            let _ = writeln!(y, "{key}: {}", action(rng));
        }
    }
}

/// A random valid policy, as YAML, shaped by `profile`.
pub fn random_policy(rng: &Rng, profile: &Profile) -> String {
    let mut y = String::new();
    let _ = writeln!(y, "default: {}", action(rng));
    if rng.percent(70) {
        let _ = writeln!(y, "log: {}", rng.pick(&["none", "drops", "all"]));
    }
    if profile.settings {
        settings(rng, &mut y);
    }
    let sets = rng.range(0, profile.sets);
    if sets > 0 {
        y.push_str("sets:\n");
        for index in 0..sets {
            let large = profile.large_sets.filter(|l| rng.percent(l.percent));
            let members: Vec<String> = match large {
                Some(large) => (0..large.size + rng.range(0, 15))
                    .map(|i| {
                        if i % 2 == 0 {
                            host(rng, profile.addresses)
                        } else {
                            cidr(rng, profile.addresses)
                        }
                    })
                    .collect(),
                None => (0..rng.range(1, 4))
                    .map(|_| cidr(rng, profile.addresses))
                    .collect(),
            };
            let _ = writeln!(y, "  s{index}: [{}]", members.join(", "));
        }
    }
    let mut body = String::new();
    let rules = rng.range(*profile.rules.start(), *profile.rules.end());
    for index in 0..rules {
        let specs: Vec<String> = (0..rng.range(1, profile.ports_per_rule))
            .map(|_| port_spec(rng, profile))
            .collect();
        let list = if specs.len() == 1 && rng.percent(50) {
            specs[0].clone()
        } else {
            format!("[{}]", specs.join(", "))
        };
        if rng.percent(40) {
            let _ = writeln!(body, "  - name: r{index}");
            let _ = writeln!(body, "    {}: {list}", action(rng));
        } else {
            let _ = writeln!(body, "  - {}: {list}", action(rng));
        }
        if rng.percent(profile.from_percent) {
            let item = || {
                if sets > 0 && rng.percent(profile.set_percent) {
                    format!("$s{}", rng.below(sets as u64))
                } else {
                    cidr(rng, profile.addresses)
                }
            };
            let from = if rng.percent(40) {
                item()
            } else {
                let items: Vec<String> = (0..rng.range(1, profile.from_max))
                    .map(|_| item())
                    .collect();
                format!("[{}]", items.join(", "))
            };
            let _ = writeln!(body, "    from: {from}");
        }
        if rng.percent(20) {
            let _ = writeln!(body, "    log: {}", rng.pick(&["true", "false"]));
        }
    }
    // A set no rule names only draws a warning: a last rule for each, all on one port the
    // others rarely name, so that sets also meet there (a large one next to others is split).
    for set in 0..sets {
        let _ = writeln!(body, "  - allow: 65000/udplite\n    from: $s{set}");
    }
    if !body.is_empty() || rng.percent(50) {
        y.push_str("rules:\n");
        y.push_str(&body);
    }
    y
}

#[cfg(test)]
mod tests {
    use super::{Profile, random_policy};
    use crate::Rng;

    #[test]
    fn a_seed_replays_and_the_profiles_differ() {
        for profile in [
            Profile::differential(),
            Profile::compiler(40),
            Profile::shadowing(5),
        ] {
            let draw = |seed| random_policy(&Rng::new(seed), &profile);
            assert_eq!(draw(3), draw(3));
            assert!((0..20).any(|seed| draw(seed) != draw(seed + 1)));
        }
        let rng = Rng::new(1);
        let shadowing = random_policy(&rng, &Profile::shadowing(7));
        assert_eq!(shadowing.matches("\n  - ").count(), 7, "{shadowing}");
        assert!(!shadowing.contains("icmp") && !shadowing.contains("sets:"));
    }

    #[test]
    fn the_compiler_profile_draws_large_sets() {
        let rng = Rng::new(2);
        let large = (0..200)
            .map(|_| random_policy(&rng, &Profile::compiler(40)))
            .filter(|y| {
                y.lines()
                    .any(|l| l.starts_with("  s") && l.matches(',').count() >= 39)
            })
            .count();
        assert!(large > 20, "{large}");
    }
}
