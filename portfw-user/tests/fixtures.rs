//! Packet-path fixtures: one table row per line of the README's "How it judges a packet"
//! table and per header layout, each a {description, verdict, counter, frame} run through the
//! kernel program with BPF_PROG_TEST_RUN, plus every truncation of five representative frames
//! and the rule hit counters. Each row is also held against the reference classifier, so a row
//! and the reference cannot drift apart. Needs root (or CAP_BPF + CAP_NET_ADMIN) to load the
//! program. The rows live in `tests/fixtures/`, one file per layer of the frame.
mod common;

/// The tables of rows, one module per layer of the frame.
mod fixtures {
    pub mod findings;
    pub mod ipv4;
    pub mod ipv6;
    pub mod other;
    pub mod ports;
    pub mod transport;
    pub mod vlan;
}

use common::{
    builder::{Ext, Frame, L4, TPID_8021AD, TPID_8021Q, hex, tcp, udp, unhex, v4, v6},
    reference::{self, XDP_DROP, XDP_PASS, xdp_name},
};
use fixtures::{
    findings::fuzz_findings,
    ipv4::{ipv4_fixtures, ipv4_fragment_fixtures},
    ipv6::{ipv6_ext_fixtures, ipv6_fragment_fixtures},
    other::{non_ip_fixtures, other_ip_fixtures},
    ports::{open_port_fixtures, port_fixtures},
    transport::{icmp_allow_fixtures, icmp_drop_fixtures, tcp_header_fixtures},
    vlan::vlan_fixtures,
};
use portfw::{
    compile,
    loader::Loaded,
    policy::{self, Policy},
};
use portfw_common::counter::{
    self, ALLOW_DEFAULT, ALLOW_RULE, DROP_DEFAULT, DROP_RULE, MALFORMED, NAMES, NON_IP_ALLOW,
    NON_IP_DROP, OTHER_IP_ALLOW, OTHER_IP_DROP,
};

/// An allow-list with the settings left at their defaults: icmp, fragments and non-ip allow,
/// other-ip follows `default` (drop).
const STRICT: &str = "\
default: drop
log: drops
rules:
  - allow: [ssh, 80/tcp, https/tcp]
  - name: dns
    allow: 53
  - drop: 8000-8999/tcp
  - allow: 5001/udp
  - allow: 2905/sctp
  - allow: 7000/udplite
  - allow: 9000-9100
";

/// A block-list whose settings all say drop, the opposite of their defaults.
const LOCKED: &str = "\
default: allow
log: all
icmp: drop
fragments: drop
other-ip: drop
non-ip: drop
rules:
  - drop: [23, 8000-8100/udp]
  - drop: 2905/sctp
  - drop: 7000/udplite
";

/// Everything allowed except a few ports; other-ip follows `default` (allow).
const OPEN: &str = "\
default: allow
log: none
rules:
  - drop: [23, 8000-8100/udp]
";

/// Settings only, against the default: other IP protocols allowed under `default: drop`, and
/// ICMP dropped but for the essential messages.
const SETTINGS: &str = "\
default: drop
other-ip: allow
icmp: drop
";

/// One row of the table.
struct Fixture {
    description: String,
    /// `XDP_PASS` or `XDP_DROP`.
    verdict: u32,
    /// The verdict counter that must move by exactly one.
    counter: u32,
    frame: Vec<u8>,
}

/// What a row's frame is given as: a built frame, or raw bytes (fuzz findings).
trait IntoBytes {
    fn into_bytes(self) -> Vec<u8>;
}

impl IntoBytes for Frame {
    fn into_bytes(self) -> Vec<u8> {
        self.build()
    }
}

impl IntoBytes for Vec<u8> {
    fn into_bytes(self) -> Vec<u8> {
        self
    }
}

fn passes(counter: u32, description: impl Into<String>, frame: impl IntoBytes) -> Fixture {
    Fixture {
        description: description.into(),
        verdict: XDP_PASS,
        counter,
        frame: frame.into_bytes(),
    }
}

fn drops(counter: u32, description: impl Into<String>, frame: impl IntoBytes) -> Fixture {
    Fixture {
        description: description.into(),
        verdict: XDP_DROP,
        counter,
        frame: frame.into_bytes(),
    }
}

/// Builds an untagged frame of one IP version around a transport header.
type IpBuilder = fn(L4) -> Frame;

/// The two IP versions, to build each port fixture over both.
const IP_VERSIONS: [(&str, IpBuilder); 2] = [("v4", v4), ("v6", v6)];

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "fixture tests load an XDP program and need root; run `cargo xtask test` as root"
    );
}

fn parse(yaml: &str) -> Policy {
    match policy::parse(yaml, "fixture.yaml") {
        Ok(parsed) => parsed.policy,
        Err(d) => panic!("fixture policy invalid:\n{d}"),
    }
}

fn load() -> Loaded {
    require_root();
    Loaded::load().unwrap_or_else(|e| panic!("loading the XDP program: {e:#?}"))
}

/// Compiles `yaml` and puts it in force; returns the policy for the reference.
fn install(loaded: &mut Loaded, yaml: &str) -> Policy {
    let policy = parse(yaml);
    loaded
        .tables
        .install(&compile::compile(&policy).expect("compile policy"))
        .expect("install policy");
    policy
}

/// Runs every row against the kernel under `yaml` and checks the verdict, that exactly the
/// row's counter moved, and that the reference classifier agrees. Returns the failures.
fn run(loaded: &mut Loaded, yaml: &str, fixtures: &[Fixture]) -> Vec<String> {
    let policy = install(loaded, yaml);
    let mut failures = Vec::new();
    for f in fixtures {
        let before = loaded.counters().expect("counters");
        let got = loaded.test_run(&f.frame).expect("test run");
        let after = loaded.counters().expect("counters");
        // Logging counters move with aggregation (the same frame again within a second),
        // not with the frame's fate.
        let moved: Vec<usize> = (0..before.len())
            .filter(|&i| after[i] != before[i] && !counter::is_event_log(i as u32))
            .collect();
        let expected = reference::classify(&f.frame, &policy);
        let mut problems = Vec::new();
        if got != f.verdict {
            problems.push(format!(
                "kernel said {}, expected {}",
                xdp_name(got),
                xdp_name(f.verdict)
            ));
        }
        let one = moved.len() == 1 && after[f.counter as usize] == before[f.counter as usize] + 1;
        if !one {
            let names: Vec<&str> = moved.iter().map(|&i| NAMES[i]).collect();
            problems.push(format!(
                "counters moved: {names:?}, expected only {}",
                NAMES[f.counter as usize]
            ));
        }
        if expected.xdp() != f.verdict || !expected.tally().counters().contains(&f.counter) {
            problems.push(format!(
                "reference says {} ({:?}), the row says {} ({})",
                xdp_name(expected.xdp()),
                expected.class,
                xdp_name(f.verdict),
                NAMES[f.counter as usize]
            ));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {}\n{}",
                f.description,
                problems.join("; "),
                hex(&f.frame)
            ));
        }
    }
    failures
}

#[test]
fn every_fixture_gets_its_documented_verdict() {
    let mut loaded = load();
    let groups: Vec<(&str, &str, Vec<Fixture>)> = vec![
        ("ports", STRICT, port_fixtures()),
        ("ports, default allow", OPEN, open_port_fixtures()),
        ("vlan", STRICT, vlan_fixtures()),
        ("ipv4 headers", STRICT, ipv4_fixtures()),
        ("ipv4 fragments", STRICT, ipv4_fragment_fixtures(false)),
        (
            "ipv4 fragments, dropped",
            LOCKED,
            ipv4_fragment_fixtures(true),
        ),
        ("ipv6 extension headers", STRICT, ipv6_ext_fixtures()),
        ("ipv6 fragments", STRICT, ipv6_fragment_fixtures(false)),
        (
            "ipv6 fragments, dropped",
            LOCKED,
            ipv6_fragment_fixtures(true),
        ),
        ("tcp headers", STRICT, tcp_header_fixtures()),
        ("icmp allowed", STRICT, icmp_allow_fixtures()),
        ("icmp dropped", LOCKED, icmp_drop_fixtures()),
        ("icmp dropped, default drop", SETTINGS, icmp_drop_fixtures()),
        (
            "other ip: default drop",
            STRICT,
            other_ip_fixtures(OTHER_IP_DROP, false),
        ),
        (
            "other ip: drop",
            LOCKED,
            other_ip_fixtures(OTHER_IP_DROP, false),
        ),
        (
            "other ip: default allow",
            OPEN,
            other_ip_fixtures(OTHER_IP_ALLOW, true),
        ),
        (
            "other ip: allow, default drop",
            SETTINGS,
            other_ip_fixtures(OTHER_IP_ALLOW, true),
        ),
        ("non-ip: allow", STRICT, non_ip_fixtures(NON_IP_ALLOW, true)),
        ("non-ip: drop", LOCKED, non_ip_fixtures(NON_IP_DROP, false)),
        ("fuzz findings", STRICT, fuzz_findings()),
    ];
    let mut failures = Vec::new();
    let mut total = 0;
    for (name, yaml, fixtures) in &groups {
        total += fixtures.len();
        for failure in run(&mut loaded, yaml, fixtures) {
            failures.push(format!("[{name}] {failure}"));
        }
    }
    println!("fixtures: {total} run, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {total} fixtures failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        total >= 200,
        "only {total} fixtures; the table must cover the README's verdicts"
    );
}

#[test]
fn every_truncation_of_a_representative_frame_is_malformed() {
    let mut loaded = load();
    let policy = install(&mut loaded, OPEN);
    let frames = [
        ("tcp/ipv4", v4(tcp(80))),
        ("udp/ipv6", v6(udp(80))),
        ("tcp/ipv4 with options", v4(tcp(80)).options(3)),
        (
            "tcp/ipv6 with hop-by-hop, routing, destination options and a fragment header",
            v6(tcp(80))
                .ext(Ext::hop_by_hop())
                .ext(Ext::routing())
                .ext(Ext::dest_opts())
                .fragment(0, false),
        ),
        (
            "tcp/ipv4 in two vlan tags",
            v4(tcp(80)).tag(TPID_8021AD, 5).tag(TPID_8021Q, 6),
        ),
    ];
    let mut failures = Vec::new();
    let mut cuts = 0u64;
    let before = loaded.counters().expect("counters");
    for (what, frame) in &frames {
        let full = frame.build();
        assert_eq!(
            loaded.test_run(&full).expect("test run"),
            XDP_PASS,
            "{what}: the whole frame must pass"
        );
        assert_eq!(
            reference::classify(&full, &policy).xdp(),
            XDP_PASS,
            "{what}"
        );
        // The kernel's test run refuses frames shorter than an Ethernet header, and no
        // driver delivers one.
        for len in 14..full.len() {
            let cut = &full[..len];
            cuts += 1;
            let got = loaded.test_run(cut).expect("test run");
            let expected = reference::classify(cut, &policy);
            if got != XDP_DROP || !matches!(expected.class, reference::Class::Malformed(_)) {
                failures.push(format!(
                    "{what} cut to {len} bytes: kernel {}, reference {:?}\n{}",
                    xdp_name(got),
                    expected,
                    hex(cut)
                ));
            }
        }
    }
    let after = loaded.counters().expect("counters");
    println!("truncations: {cuts} run");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let malformed = after[MALFORMED as usize] - before[MALFORMED as usize];
    // Plus the whole frames, allowed by default.
    let allowed = after[ALLOW_DEFAULT as usize] - before[ALLOW_DEFAULT as usize];
    assert_eq!(malformed, cuts, "every truncation counts as malformed");
    assert_eq!(
        allowed,
        frames.len() as u64,
        "the whole frames count as allowed by default"
    );
}

#[test]
fn rule_hits_count_the_deciding_rule() {
    let mut loaded = load();
    let policy = install(&mut loaded, STRICT);
    let before = loaded.counters().expect("counters");
    for frame in [v4(tcp(22)), v4(tcp(8080)), v4(tcp(9999)), v4(tcp(0))] {
        loaded.test_run(&frame.build()).expect("test run");
    }
    let after = loaded.counters().expect("counters");
    let delta = |i: u32| after[i as usize] - before[i as usize];
    assert_eq!(delta(ALLOW_RULE), 1);
    assert_eq!(delta(DROP_RULE), 1);
    assert_eq!(delta(DROP_DEFAULT), 1);
    assert_eq!(delta(MALFORMED), 1);
    let hits = loaded.tables.rule_hits(policy.rules.len());
    assert_eq!(hits[0], 1, "rule 1 (ssh) hit once: {hits:?}");
    assert_eq!(hits[2], 1, "rule 3 (8000-8999) hit once: {hits:?}");
}

#[test]
fn fixture_hex_round_trips() {
    // Fuzz findings are pasted as hex; make sure what is pasted is what is run.
    let frame = v6(tcp(22)).ext(Ext::hop_by_hop()).build();
    assert_eq!(unhex(&common::builder::hex_line(&frame)), frame);
}
