//! The property test: random policies and packets, the compiled tables against the
//! first-match reference.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use portfw_common::NO_SOURCE_GROUP;
use portfw_lab::{Profile, Rng, random_policy};

use super::{expected, got};
use crate::{
    compile::compile,
    policy::{Protocol, parse},
};

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
    let profile = &Profile::compiler(crate::compile::LARGE_SET);
    std::thread::scope(|scope| {
        for worker in 0..threads {
            scope.spawn(move || {
                for case in (worker..policies).step_by(threads as usize) {
                    let rng = Rng::new(seed ^ case.wrapping_mul(0x2545_F491_4F6C_DD1D));
                    let yaml = random_policy(&rng, profile);
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
