//! The policy compiler at scale: ten thousand rules and a hundred thousand CIDRs parse and
//! compile within a bound, into tables of the size the policy implies. Needs no root.

use std::{fmt::Write as _, net::IpAddr, time::Instant};

use portfw::{compile, policy};
use portfw_common::action;

/// Generous for a debug build on a loaded two-core machine (about 1 s when idle); a compiler
/// that went quadratic in the rules or the prefixes would take minutes.
const BOUND_SECS: f64 = if cfg!(debug_assertions) { 10.0 } else { 2.0 };

#[test]
fn ten_thousand_rules_and_a_hundred_thousand_cidrs_compile_within_a_bound() {
    let mut y = String::from("default: drop\nsets:\n  block:\n");
    for i in 0..100_000u32 {
        let _ = writeln!(
            y,
            "    - {}.{}.{}.0/24",
            20 + i / 65536,
            (i / 256) % 256,
            i % 256
        );
    }
    y.push_str("rules:\n  - drop: any\n    from: $block\n");
    // Every tenth rule is restricted to its own /16, the others are plain port ranges.
    for i in 0..9_999u32 {
        let port = 1 + (i * 6) % 65000;
        if i % 10 == 0 {
            let _ = writeln!(
                y,
                "  - allow: {port}/tcp\n    from: [10.{}.0.0/16]",
                i % 256
            );
        } else {
            let _ = writeln!(y, "  - allow: {port}-{}/tcp", port + 3);
        }
    }

    let started = Instant::now();
    let policy = match policy::parse(&y, "scale.yaml") {
        Ok(parsed) => parsed.policy,
        Err(d) => panic!("the generated policy is invalid:\n{d}"),
    };
    let parsed = started.elapsed();
    let compiled = compile::compile(&policy).expect("compile");
    let took = started.elapsed();
    println!(
        "10,000 rules, 100,000 CIDRs: parsed in {parsed:?}, parsed and compiled in {took:?}: \
         {} groups, {} IPv4 entries",
        compiled.groups.len(),
        compiled.sources4.len()
    );
    assert!(
        took.as_secs_f64() < BOUND_SECS,
        "parsing and compiling took {took:?}, over the {BOUND_SECS} s bound"
    );

    assert_eq!(policy.rules.len(), 10_000);
    assert_eq!(compiled.rules.len(), 10_000, "one record per rule");
    // One group for the blocklist, one for each of the 1,000 rules with their own /16.
    assert_eq!(compiled.groups.len(), 1 + 1_000);
    assert_eq!(compiled.sources4.len(), 100_000 + 1_000);
    assert!(compiled.sources6.is_empty(), "no IPv6 prefix was named");

    let lookup = |port: u16, source: &str| {
        let source: IpAddr = source.parse().expect("address");
        compiled.lookup(policy::Protocol::Tcp, port, source).action
    };
    // Port 7 is allowed by rule 3 (7-10/tcp), port 1 by rule 2 from 10.0.0.0/16 only.
    assert_eq!(lookup(7, "20.1.2.3"), action::DROP, "blocked source");
    assert_eq!(lookup(7, "192.0.2.1"), action::ALLOW);
    assert_eq!(lookup(1, "10.0.1.1"), action::ALLOW);
    assert_eq!(lookup(1, "192.0.2.1"), action::DROP, "the default");
}
