//! The property test: random policies and packets, the compiled tables against the
//! first-match reference.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use portfw_common::NO_SOURCE_GROUP;
use portfw_lab::Rng;

use super::{expected, got};
use crate::{
    compile::compile,
    policy::{Protocol, parse},
};

/// Ports crowd into a small window so that rules overlap, with a few wide ranges.
fn random_port_spec(rng: &Rng) -> String {
    let spec = match rng.below(6) {
        0 | 1 => format!("{}", rng.below(40)),
        2 | 3 => {
            let low = rng.below(40);
            format!("{low}-{}", low + rng.below(20))
        }
        4 => rng
            .pick(&["0-65535", "any", "well-known", "dynamic", "65535"])
            .to_string(),
        _ => {
            let low = rng.below(65536);
            format!("{low}-{}", (low + rng.below(5000)).min(65535))
        }
    };
    match rng.below(6) {
        0 | 1 => spec,
        2 => format!("{spec}/tcp"),
        3 => format!("{spec}/udp"),
        4 => format!("{spec}/sctp"),
        _ => format!("{spec}/udplite"),
    }
}

/// Prefixes packed into a small space of both families, so they nest and overlap.
fn random_cidr(rng: &Rng) -> String {
    if rng.percent(60) {
        let len = rng.pick(&[0u8, 8, 12, 16, 20, 24, 28, 30, 31, 32]);
        let addr = Ipv4Addr::new(
            10,
            rng.below(4) as u8,
            rng.below(4) as u8,
            rng.below(8) as u8 * 32,
        );
        format!("{addr}/{len}")
    } else {
        let len = rng.pick(&[0u8, 16, 32, 33, 48, 64, 100, 127, 128]);
        let addr = Ipv6Addr::new(
            0x2001,
            0xdb8,
            rng.below(4) as u16,
            0,
            0,
            0,
            0,
            rng.below(8) as u16,
        );
        format!("{addr}/{len}")
    }
}

fn random_source(rng: &Rng) -> IpAddr {
    if rng.percent(60) {
        IpAddr::V4(Ipv4Addr::new(
            rng.pick(&[10, 10, 10, 11, 0, 255]),
            rng.below(5) as u8,
            rng.below(5) as u8,
            rng.below(256) as u8,
        ))
    } else {
        IpAddr::V6(Ipv6Addr::new(
            rng.pick(&[0x2001, 0x2001, 0x2002, 0]),
            0xdb8,
            rng.below(5) as u16,
            0,
            0,
            0,
            0,
            rng.below(10) as u16,
        ))
    }
}

/// A random policy as YAML text, so the parser is exercised too.
fn random_policy(rng: &Rng) -> String {
    let mut y = String::new();
    let _ = writeln!(y, "default: {}", rng.pick(&["allow", "drop"]));
    let _ = writeln!(y, "log: {}", rng.pick(&["none", "drops", "all"]));
    let sets = rng.below(3);
    if sets > 0 {
        y.push_str("sets:\n");
        for s in 0..sets {
            // Now and then a set large enough to be split into its own head group.
            let size = if rng.percent(30) {
                crate::compile::LARGE_SET as u64 + rng.below(16)
            } else {
                1 + rng.below(4)
            };
            let cidrs: Vec<String> = (0..size)
                .map(|i| {
                    if size > 4 && i % 2 == 0 {
                        // Single hosts where the random sources fall, so that a large set
                        // stays large after duplicates are removed.
                        format!("10.{}.{}.{}", rng.below(5), rng.below(5), rng.below(256))
                    } else {
                        random_cidr(rng)
                    }
                })
                .collect();
            let _ = writeln!(y, "  s{s}: [{}]", cidrs.join(", "));
        }
    }
    y.push_str("rules:\n");
    for _ in 0..rng.below(12) {
        let ports: Vec<String> = (0..1 + rng.below(3))
            .map(|_| random_port_spec(rng))
            .collect();
        let _ = writeln!(
            y,
            "  - {}: [{}]",
            rng.pick(&["allow", "drop"]),
            ports.join(", ")
        );
        if rng.percent(55) {
            let from: Vec<String> = (0..1 + rng.below(4))
                .map(|_| {
                    if sets > 0 && rng.percent(40) {
                        format!("${}", format_args!("s{}", rng.below(sets)))
                    } else {
                        random_cidr(rng)
                    }
                })
                .collect();
            let _ = writeln!(y, "    from: [{}]", from.join(", "));
        }
        if rng.percent(20) {
            let _ = writeln!(y, "    log: {}", rng.pick(&["true", "false"]));
        }
    }
    if sets > 0 {
        // Sets no rule uses only draw a warning; make sure each is used.
        for s in 0..sets {
            let _ = writeln!(y, "  - allow: 65000/udplite\n    from: $s{s}");
        }
    }
    y
}

/// The property test: for random policies and random packets, the compiled tables (looked up
/// as the kernel does) give the same verdict and deciding rule as plain first match.
/// `PORTFW_PROPTEST_POLICIES` raises the number of policies (100 packets each).
#[test]
fn random_policies_and_packets_agree_with_the_reference() {
    let policies: u64 = std::env::var("PORTFW_PROPTEST_POLICIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let seed: u64 = std::env::var("PORTFW_PROPTEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x9057_F00D);
    const PACKETS: u64 = 100;
    let threads = std::thread::available_parallelism().map_or(1, usize::from) as u64;
    let started = Instant::now();
    let split = std::sync::atomic::AtomicU64::new(0);
    let split = &split;
    std::thread::scope(|scope| {
        for worker in 0..threads {
            scope.spawn(move || {
                for case in (worker..policies).step_by(threads as usize) {
                    let rng = Rng::new(seed ^ case.wrapping_mul(0x2545_F491_4F6C_DD1D));
                    let yaml = random_policy(&rng);
                    let policy = match parse(&yaml, "random.yaml") {
                        Ok(p) => p.policy,
                        Err(e) => panic!(
                            "seed {seed} case {case}: generated an invalid policy: {e}\n{yaml}"
                        ),
                    };
                    let compiled = compile(&policy).expect("compile");
                    if compiled.ports.iter().any(|e| e.tail != NO_SOURCE_GROUP) {
                        split.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    for _ in 0..PACKETS {
                        let protocol = rng.pick(&Protocol::ALL);
                        let port = if rng.percent(80) {
                            rng.below(64) as u16
                        } else {
                            rng.below(65536) as u16
                        };
                        let source = random_source(&rng);
                        assert_eq!(
                            got(compiled.lookup(protocol, port, source)),
                            expected(&policy, protocol, port, source),
                            "seed {seed} case {case}: {protocol} port {port} from {source}\n{yaml}"
                        );
                    }
                }
            });
        }
    });
    let split = split.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "{} random policies x {PACKETS} packets agreed with the reference in {:?} (seed {seed}); \
         {split} of them split source rules into head and tail groups",
        policies,
        started.elapsed()
    );
    assert!(
        policies < 100 || split >= policies / 50,
        "too few policies exercised the split"
    );
}
