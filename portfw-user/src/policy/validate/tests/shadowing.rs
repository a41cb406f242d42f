//! Tests of the "never matches" warning with sources: exact cases, a brute-force cross-check
//! and speed.

use std::time::Instant;

use portfw_lab::{Profile, Rng};

use super::{
    super::{Written, shadow::shadowed_rules},
    range, warnings,
};
use crate::policy::{
    Action, Cidr, Location, Policy,
    Protocol::{self, Tcp, Udp},
    Rule,
    diag::Reporter,
    parse,
};

fn rules(body: &str) -> String {
    format!("default: drop\nrules:\n{body}")
}

#[test]
fn a_narrower_source_after_a_wider_one_is_shadowed() {
    let source =
        rules("  - allow: ssh\n    from: 10.0.0.0/8\n  - drop: ssh\n    from: 10.1.0.0/16\n");
    assert_eq!(
        warnings(&source),
        [
            "5:5: rule 2 (`drop: ssh`, `from: 10.1.0.0/16`) never matches: every port it names \
             is decided by earlier rules for every source it admits (rule 1 at line 3)"
        ]
    );
}

#[test]
fn a_wider_source_after_a_narrower_one_is_not() {
    let source =
        rules("  - drop: ssh\n    from: 10.1.0.0/16\n  - allow: ssh\n    from: 10.0.0.0/8\n");
    assert!(warnings(&source).is_empty());
    // Nor is a rule for every source after one for some.
    let source = rules("  - drop: ssh\n    from: 10.1.0.0/16\n  - allow: ssh\n");
    assert!(warnings(&source).is_empty());
}

#[test]
fn an_earlier_rule_without_from_shadows_any_source() {
    let source = rules(
        "  - allow: ssh\n  - name: admins\n    drop: ssh\n    from: [10.0.0.0/8, 2001:db8::/32]\n",
    );
    assert_eq!(
        warnings(&source),
        [
            "4:5: rule 2 `admins` (`drop: ssh`, `from: [10.0.0.0/8, 2001:db8::/32]`) never \
             matches: every port it names is decided by earlier rules (rule 1 at line 3)"
        ]
    );
}

#[test]
fn families_do_not_cover_each_other() {
    // 0.0.0.0/0 is every IPv4 source, not every source.
    let source = rules("  - allow: ssh\n    from: 0.0.0.0/0\n  - drop: ssh\n");
    assert!(warnings(&source).is_empty());
    let source = rules("  - allow: ssh\n    from: 0.0.0.0/0\n  - drop: ssh\n    from: ::1\n");
    assert!(warnings(&source).is_empty());
    let source = rules("  - allow: ssh\n    from: [0.0.0.0/0, ::/0]\n  - drop: ssh\n");
    assert_eq!(
        warnings(&source),
        [
            "5:5: rule 2 (`drop: ssh`) never matches: every port it names is decided by earlier \
             rules for every source it admits (rule 1 at line 3)"
        ]
    );
}

#[test]
fn every_source_must_fit_in_one_earlier_prefix() {
    // Both sources inside 10.0.0.0/8.
    let source = rules(
        "  - allow: 22\n    from: 10.0.0.0/8\n  - drop: 22/tcp\n    from: [10.1.0.0/16, \
         10.2.0.0/16]\n",
    );
    assert_eq!(warnings(&source).len(), 1);
    // One source outside it.
    let source = rules(
        "  - allow: 22\n    from: 10.0.0.0/8\n  - drop: 22/tcp\n    from: [10.1.0.0/16, \
         192.0.2.0/24]\n",
    );
    assert!(warnings(&source).is_empty());
    // Covered only by two earlier prefixes together: not recognised, by design.
    let source = rules(
        "  - allow: 22\n    from: [10.0.0.0/9, 10.128.0.0/9]\n  - drop: 22\n    from: \
         10.0.0.0/8\n",
    );
    assert!(warnings(&source).is_empty());
    // Two earlier rules with different sources, each covering one part of the ports.
    let source = rules(
        "  - allow: 22\n    from: 10.0.0.0/8\n  - allow: 23\n    from: 10.1.0.0/16\n  - allow: \
         24\n  - drop: 22-24/udp\n    from: 10.1.2.0/24\n",
    );
    assert_eq!(
        warnings(&source),
        [
            "8:5: rule 4 (`drop: 22-24/udp`, `from: 10.1.2.0/24`) never matches: every port it \
             names is decided by earlier rules for every source it admits (rule 1 at line 3, \
             rule 2 at line 5 and rule 3 at line 7)"
        ]
    );
    // A port no earlier rule for these sources names.
    let source = rules(
        "  - allow: 22\n    from: 10.0.0.0/8\n  - allow: 23\n    from: 192.0.2.0/24\n  - drop: \
         22-23\n    from: 10.1.2.0/24\n",
    );
    assert!(warnings(&source).is_empty());
}

#[test]
fn rules_sharing_a_set_shadow_each_other() {
    let source = "\
default: drop
sets:
  admins: [10.0.0.0/8, 2001:db8::/32]
rules:
  - allow: [ssh, https]
    from: $admins
  - drop: ssh
    from: $admins
  - drop: https
";
    assert_eq!(
        warnings(source),
        [
            "7:5: rule 2 (`drop: ssh`, `from: $admins`) never matches: every port it names is \
             decided by earlier rules for every source it admits (rule 1 at line 5)"
        ]
    );
}

/// `count` random rules over a tiny space of ports and sources, where rules often cover each
/// other, parsed from the tests' one generator.
fn random_policy(rng: &Rng, count: usize) -> Policy {
    let yaml = portfw_lab::random_policy(rng, &Profile::shadowing(count));
    match parse(&yaml, "r.yaml") {
        Ok(parsed) => parsed.policy,
        Err(e) => panic!("generated an invalid policy: {e}\n{yaml}"),
    }
}

/// The rules the warning is about, by index (a warning points at its rule).
fn warned(policy: &Policy) -> Vec<usize> {
    let written = vec![Written::default(); policy.rules.len()];
    let mut reporter = Reporter::new("", "r.yaml");
    shadowed_rules(policy, &written, &mut reporter);
    let (_, warnings) = reporter.finish();
    warnings
        .iter()
        .map(|w| {
            policy
                .rules
                .iter()
                .position(|rule| rule.location == w.location)
                .unwrap_or_else(|| panic!("a warning at no rule: {w:?}"))
        })
        .collect()
}

/// The definition, port by port: every (protocol, port) of the rule is named by one earlier
/// rule that has no `from` or has one prefix containing each of the rule's sources.
fn shadowed_by_definition(policy: &Policy) -> Vec<usize> {
    let everywhere = ["0.0.0.0/0", "::/0"].map(|t| t.parse::<Cidr>().expect("cidr"));
    let admits = |rule: &Rule| rule.from.clone().unwrap_or_else(|| everywhere.to_vec());
    let covers = |earlier: &Rule, rule: &Rule| match &earlier.from {
        None => true,
        Some(list) => admits(rule)
            .iter()
            .all(|c| list.iter().any(|e| e.contains_cidr(c))),
    };
    (0..policy.rules.len())
        .filter(|&index| {
            let rule = &policy.rules[index];
            rule.ports.iter().all(|range| {
                (range.low..=range.high).all(|port| {
                    policy.rules[..index].iter().any(|earlier| {
                        earlier
                            .ports
                            .iter()
                            .any(|r| r.contains(range.protocol, port))
                            && covers(earlier, rule)
                    })
                })
            })
        })
        .collect()
}

#[test]
fn agrees_with_the_definition_on_random_policies() {
    let rng = Rng::new(7);
    let mut seen = 0;
    for _ in 0..2_000 {
        let count = 1 + rng.below(12) as usize;
        let policy = random_policy(&rng, count);
        let expected = shadowed_by_definition(&policy);
        seen += expected.len();
        assert_eq!(warned(&policy), expected, "{:#?}", policy.rules);
    }
    println!("{seen} shadowed rules in 2,000 random policies");
    assert!(seen > 500, "the random policies shadow too rarely ({seen})");
}

fn timed(label: &str, policy: &Policy) -> usize {
    let start = Instant::now();
    let count = warned(policy).len();
    let took = start.elapsed();
    println!(
        "shadow check, {label}: {} rules in {took:?}, {count} warnings",
        policy.rules.len()
    );
    let limit = if cfg!(debug_assertions) { 10_000 } else { 500 };
    assert!(took.as_millis() < limit, "{label} took {took:?}");
    count
}

#[test]
fn ten_thousand_rules_check_quickly() {
    let base = random_policy(&Rng::new(1), 0);
    let with_rules = |rules: Vec<Rule>| Policy {
        rules,
        ..base.clone()
    };
    let rule =
        |index: usize, protocol: Protocol, low: u16, high: u16, from: Option<Vec<Cidr>>| Rule {
            name: None,
            action: Action::Allow,
            ports: vec![range(protocol, low, high)],
            from_text: from.as_ref().map(|_| "x".to_owned()),
            from,
            log: None,
            limit: None,
            location: Location::new(index + 1, 1),
            summary: String::new(),
        };
    let host = |i: usize| -> Cidr {
        let [_, b, c, d] = (i as u32).to_be_bytes();
        format!("10.{b}.{c}.{d}").parse().expect("cidr")
    };

    // Wide overlapping ranges, no sources: the plain first-match case.
    let plain = (0..10_000)
        .map(|i| {
            let low = (i * 7 % 60_000) as u16;
            rule(i, Protocol::ALL[i % 4], low, low + 5_000, None)
        })
        .collect();
    timed("wide ranges, no from", &with_rules(plain));

    // A distinct host per rule over the whole port space: no rule covers another.
    let hosts = (0..10_000)
        .map(|i| rule(i, Tcp, 0, 65_535, Some(vec![host(i)])))
        .collect();
    assert_eq!(timed("a host each, every port", &with_rules(hosts)), 0);

    // Nested sources: a /8 first, then hosts inside it on every port; all are shadowed.
    let nested = (0..10_000)
        .map(|i| {
            let from = if i == 0 {
                "10.0.0.0/8".parse().expect("cidr")
            } else {
                host(i)
            };
            rule(i, Udp, 0, 65_535, Some(vec![from]))
        })
        .collect();
    assert_eq!(
        timed("hosts inside an earlier /8", &with_rules(nested)),
        9_999
    );

    // A 2,000-prefix set on every 20th rule (a million prefixes in all), the rest plain
    // rules over single ports.
    let set: Vec<Cidr> = (0..2_000).map(host).collect();
    let shared = (0..10_000)
        .map(|i| {
            let from = (i % 20 == 0).then(|| set.clone());
            rule(i, Tcp, (i / 2) as u16, (i / 2) as u16, from)
        })
        .collect();
    timed("a 2,000-prefix set on every 20th rule", &with_rules(shared));
}
