//! Tests of the compiler: agreement with the reference evaluator, speed, and the summary.

use std::time::Instant;

use portfw_common::{
    PORT_TABLE_GEN_ENTRIES, PORTS_PER_PROTO, PortEntry, RULE_DEFAULT, Settings, action, port_flags,
    settings_log,
};

use super::{PortRun, Unassigned, compile, reference, summary};
use crate::policy::{Action, Location, LogMode, Policy, PortRange, Protocol, Rule, parse};

fn parsed(source: &str) -> Policy {
    match parse(source, "test.yaml") {
        Ok(p) => p.policy,
        Err(e) => panic!("{e}"),
    }
}

/// The table the reference evaluator implies, entry by entry.
fn reference_table(policy: &Policy) -> Vec<PortEntry> {
    let mut table = Vec::with_capacity(PORT_TABLE_GEN_ENTRIES as usize);
    for protocol in Protocol::ALL {
        for port in 0..=u16::MAX {
            let decision = reference::evaluate(policy, protocol, port);
            table.push(PortEntry {
                rule: decision.rule.map_or(RULE_DEFAULT, |r| r as u32),
                action: decision.action.to_kernel(),
                flags: if decision.log { port_flags::LOG } else { 0 },
                _pad: 0,
            });
        }
    }
    table
}

/// Fails with the first (protocol, port) where the compiled table and the reference differ.
fn assert_agrees_with_reference(policy: &Policy) {
    let compiled = compile(policy);
    let expected = reference_table(policy);
    assert_eq!(compiled.ports.len(), expected.len());
    if compiled.ports == expected {
        return;
    }
    for protocol in Protocol::ALL {
        for port in 0..=u16::MAX {
            let index = (protocol.slot() * PORTS_PER_PROTO) as usize + usize::from(port);
            assert_eq!(
                compiled.entry(protocol, port),
                expected[index],
                "{protocol} port {port} differs from the reference for {policy:#?}"
            );
        }
    }
}

const HAND_WRITTEN: &[&str] = &[
    "default: drop\n",
    "default: allow\nlog: all\n",
    "default: drop\nlog: none\nrules:\n  - allow: 0-65535\n",
    "\
default: drop
log: drops
rules:
  - allow: [ssh, 80/tcp, https/tcp]
  - allow: 53
  - drop: 8000-8999/tcp
  - allow: dynamic/udp
  - name: web
    allow: [http, https]
    log: true
",
    "\
default: allow
log: all
rules:
  - drop: [well-known/tcp, 5000-6000/sctp]
    log: false
  - allow: [22/tcp, 1000-2000]
  - drop: [registered, 65535/udplite, 0/udplite]
  - allow: 0-65535/udplite
",
    "\
default: drop
rules:
  - allow: 100-200/tcp
  - drop: 150-250/tcp
  - allow: [50-160/tcp, 240-300/tcp, 0/tcp, 65535/tcp]
  - drop: 0-65535/tcp
",
];

#[test]
fn hand_written_policies_agree_with_the_reference() {
    for source in HAND_WRITTEN {
        assert_agrees_with_reference(&parsed(source));
    }
}

#[test]
fn first_match_wins_and_flags_follow_the_log_mode() {
    let policy = parsed(HAND_WRITTEN[3]);
    let compiled = compile(&policy);
    let allow = |rule, flags| PortEntry {
        rule,
        action: action::ALLOW,
        flags,
        _pad: 0,
    };
    let drop = |rule, flags| PortEntry {
        rule,
        action: action::DROP,
        flags,
        _pad: 0,
    };
    let log = port_flags::LOG;
    assert_eq!(compiled.entry(Protocol::Tcp, 22), allow(0, 0));
    assert_eq!(compiled.entry(Protocol::Udp, 22), drop(RULE_DEFAULT, log));
    assert_eq!(compiled.entry(Protocol::Udp, 53), allow(1, 0));
    assert_eq!(compiled.entry(Protocol::Tcp, 8500), drop(2, log));
    assert_eq!(compiled.entry(Protocol::Udp, 60000), allow(3, 0));
    // https/tcp went to rule 1, so the `web` rule only decides udp 443, and logs it.
    assert_eq!(compiled.entry(Protocol::Tcp, 443), allow(0, 0));
    assert_eq!(compiled.entry(Protocol::Udp, 443), allow(4, log));
    assert_eq!(compiled.entry(Protocol::Sctp, 80), drop(RULE_DEFAULT, log));
    assert_eq!(compiled.rules.len(), 5);
    assert_eq!(compiled.rules[4].name.as_deref(), Some("web"));
    assert_eq!(compiled.rules[4].line, 8);
    assert_eq!(compiled.rules[2].summary, "drop 8000-8999/tcp");
    assert_eq!(compiled.rules[2].action, Action::Drop);
}

#[test]
fn settings_carry_the_policy_settings_and_log_bits() {
    let settings = |source: &str| compile(&parsed(source)).settings;
    assert_eq!(
        settings("default: drop\n"),
        Settings {
            icmp: action::ALLOW,
            fragments: action::ALLOW,
            other_ip: action::DROP,
            non_ip: action::ALLOW,
            log: settings_log::DROP,
            _pad: [0; 3],
        }
    );
    assert_eq!(
        settings(
            "default: allow\nlog: all\nicmp: drop\nfragments: drop\nother-ip: drop\nnon-ip: drop\n"
        ),
        Settings {
            icmp: action::DROP,
            fragments: action::DROP,
            other_ip: action::DROP,
            non_ip: action::DROP,
            log: settings_log::ALLOW | settings_log::DROP,
            _pad: [0; 3],
        }
    );
    assert_eq!(settings("default: allow\nlog: none\n").log, 0);
    assert_eq!(settings("default: allow\n").other_ip, action::ALLOW);
}

#[test]
fn runs_merge_equal_neighbours() {
    let compiled = compile(&parsed(
        "default: drop\nlog: none\nrules:\n  - allow: [10-20/tcp, 21-30/tcp]\n  - allow: 31/tcp\n",
    ));
    let runs = compiled.runs(Protocol::Tcp);
    let spans: Vec<(u16, u16, u32)> = runs.iter().map(|r| (r.low, r.high, r.entry.rule)).collect();
    assert_eq!(
        spans,
        [
            (0, 9, RULE_DEFAULT),
            (10, 30, 0),
            (31, 31, 1),
            (32, 65535, RULE_DEFAULT)
        ]
    );
    let udp: Vec<PortRun> = compiled.runs(Protocol::Udp);
    assert_eq!(udp.len(), 1);
    assert_eq!((udp[0].low, udp[0].high), (0, u16::MAX));
}

#[test]
fn unassigned_ports_are_claimed_once() {
    let mut free = Unassigned::new();
    let mut claimed = Vec::new();
    free.take_each(5, 10, |p| claimed.push(p));
    free.take_each(0, 7, |p| claimed.push(p));
    free.take_each(3, 12, |p| claimed.push(p));
    free.take_each(0, 12, |p| claimed.push(p));
    assert_eq!(claimed, [5, 6, 7, 8, 9, 10, 0, 1, 2, 3, 4, 11, 12]);
    let mut last = Vec::new();
    free.take_each(65535, 65535, |p| last.push(p));
    free.take_each(0, 65535, |_| {});
    free.take_each(0, 65535, |p| last.push(p));
    assert_eq!(last, [65535]);
}

/// splitmix64: a tiny, well-mixed deterministic generator, so failures reproduce.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n` for tests.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn port_below(&mut self, n: u32) -> u16 {
        u16::try_from(self.below(u64::from(n))).unwrap_or(u16::MAX)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

fn random_range(rng: &mut SplitMix64) -> (u16, u16) {
    match rng.below(5) {
        // Small ports crowd together, so rules overlap a lot.
        0 => {
            let low = rng.port_below(64);
            (low, low.saturating_add(rng.port_below(16)))
        }
        1 => {
            let port = rng.port_below(64);
            (port, port)
        }
        2 => {
            let low = rng.port_below(65536);
            let high = low.saturating_add(rng.port_below(4096));
            (low, high)
        }
        3 => rng.pick(&[
            (0, 0),
            (65535, 65535),
            (0, 65535),
            (0, 1023),
            (49152, 65535),
        ]),
        _ => {
            let a = rng.port_below(65536);
            let b = rng.port_below(65536);
            (a.min(b), a.max(b))
        }
    }
}

fn random_policy(rng: &mut SplitMix64) -> Policy {
    let actions = [Action::Allow, Action::Drop];
    let rules = (0..rng.below(10))
        .map(|index| {
            let mut ports = Vec::new();
            for _ in 0..1 + rng.below(3) {
                let (low, high) = random_range(rng);
                // Like a spec without a protocol, some ranges cover several protocols.
                let protocols: Vec<Protocol> = if rng.chance(30) {
                    vec![Protocol::Tcp, Protocol::Udp]
                } else {
                    vec![rng.pick(&Protocol::ALL)]
                };
                ports.extend(protocols.into_iter().map(|protocol| PortRange {
                    protocol,
                    low,
                    high,
                }));
            }
            Rule {
                name: None,
                action: rng.pick(&actions),
                ports,
                log: rng.pick(&[None, None, Some(true), Some(false)]),
                location: Location::new(index as usize + 3, 5),
                summary: String::new(),
            }
        })
        .collect();
    Policy {
        file: "random.yaml".to_owned(),
        default: rng.pick(&actions),
        log: rng.pick(&[LogMode::None, LogMode::Drops, LogMode::All]),
        interfaces: Vec::new(),
        icmp: Action::Allow,
        fragments: Action::Allow,
        other_ip: Action::Drop,
        non_ip: Action::Allow,
        rules,
    }
}

#[test]
fn random_policies_agree_with_the_reference() {
    const POLICIES: u64 = 300;
    let threads = std::thread::available_parallelism().map_or(1, usize::from) as u64;
    std::thread::scope(|scope| {
        for worker in 0..threads {
            scope.spawn(move || {
                for seed in (worker..POLICIES).step_by(threads as usize) {
                    let mut rng = SplitMix64(seed);
                    assert_agrees_with_reference(&random_policy(&mut rng));
                }
            });
        }
    });
}

#[test]
fn ten_thousand_wide_rules_compile_quickly() {
    let mut rng = SplitMix64(0x5EED);
    let rules: Vec<Rule> = (0..10_000)
        .map(|index| Rule {
            name: None,
            action: if index % 2 == 0 {
                Action::Allow
            } else {
                Action::Drop
            },
            ports: (0..3)
                .map(|_| {
                    let low = rng.port_below(32768);
                    PortRange {
                        protocol: rng.pick(&Protocol::ALL),
                        low,
                        high: low.saturating_add(20_000 + rng.port_below(12_000)),
                    }
                })
                .collect(),
            log: None,
            location: Location::new(index + 1, 1),
            summary: String::new(),
        })
        .collect();
    let policy = Policy {
        file: "wide.yaml".to_owned(),
        default: Action::Drop,
        log: LogMode::Drops,
        interfaces: Vec::new(),
        icmp: Action::Allow,
        fragments: Action::Allow,
        other_ip: Action::Drop,
        non_ip: Action::Allow,
        rules,
    };
    let start = Instant::now();
    let compiled = compile(&policy);
    println!(
        "compiled 10,000 wide rules (30,000 ranges) in {:?}",
        start.elapsed()
    );
    for _ in 0..200 {
        let protocol = rng.pick(&Protocol::ALL);
        let port = rng.port_below(65536);
        let decision = reference::evaluate(&policy, protocol, port);
        let entry = compiled.entry(protocol, port);
        assert_eq!(entry.rule, decision.rule.map_or(RULE_DEFAULT, |r| r as u32));
    }
}

#[test]
fn ten_thousand_rule_file_parses_with_shadow_analysis() {
    let mut source = String::from("default: drop\nrules:\n");
    for i in 0..10_000u32 {
        let low = (i * 7) % 60_000;
        // Once `low` wraps around, every range lies inside earlier ones.
        source.push_str(&format!("  - allow: {low}-{}/tcp\n", low + 5000));
    }
    let start = Instant::now();
    let parsed = parse(&source, "big.yaml").unwrap_or_else(|e| panic!("{e}"));
    println!(
        "parsed and checked 10,000 rules in {:?} ({} warnings)",
        start.elapsed(),
        parsed.warnings.len()
    );
    assert_eq!(parsed.policy.rules.len(), 10_000);
    assert_eq!(parsed.warnings.len(), 1428);
}

#[test]
fn summary_lists_merged_ranges_and_the_default() {
    let policy = parsed(
        "\
default: drop
log: drops
interfaces: [eth0]
rules:
  - allow: [ssh, 80/tcp]
  - name: dns
    allow: 53
  - allow: [81/tcp, 82/tcp]
  - name: dev-ports
    drop: 8000-8999/tcp
  - allow: 0-65535/sctp
    log: true
",
    );
    let text = summary(&policy, &compile(&policy));
    let expected = "\
test.yaml: 5 rules, first match wins; default drop, log drops
interfaces: eth0
icmp: allow, fragments: allow, other-ip: drop, non-ip: allow
tcp:
  allow 22         rule 1 (line 5)
  allow 53         rule 2 `dns` (line 6)
  allow 80         rule 1 (line 5)
  allow 81-82      rule 3 (line 8)
  drop  8000-8999  rule 4 `dev-ports` (line 9), logged
  everything else: drop (default), logged
udp:
  allow 53         rule 2 `dns` (line 6)
  everything else: drop (default), logged
sctp:
  allow 0-65535    rule 5 (line 11), logged
udplite:
  everything: drop (default), logged
";
    assert_eq!(text, expected, "\n{text}");

    let open = parsed("default: allow\n");
    let text = summary(&open, &compile(&open));
    assert!(
        text.contains("tcp:\n  (tcp port 0 is dropped as malformed"),
        "{text}"
    );
    assert!(text.contains("  everything: allow (default)\n"), "{text}");
}

#[test]
fn docs_show_the_demo_summary() {
    let demo = match parse(
        include_str!("../../../policies/demo.yaml"),
        "policies/demo.yaml",
    ) {
        Ok(p) => p.policy,
        Err(e) => panic!("{e}"),
    };
    let text = summary(&demo, &compile(&demo));
    let docs = include_str!("../../../docs/policy.md");
    assert!(
        docs.contains(&text),
        "docs/policy.md shows an outdated summary of policies/demo.yaml; it is now:\n{text}"
    );
}
