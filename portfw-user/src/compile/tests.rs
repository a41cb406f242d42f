//! Tests of the compiler: agreement with the first-match reference on every port and on
//! sampled sources, the source-trie encoding, limits, speed, and the summary.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use portfw_common::{
    FLOWS_DEFAULT_MAX, FlowTimeouts, NO_SOURCE_GROUP, PortEntry, RULE_DEFAULT, Settings, action,
    flow_state, ipproto, port_flags, settings_log,
};

use super::{CompileError, Limits, PortRun, compile, compile_with, reference, summary};
use crate::policy::{Policy, Protocol, parse};

mod defences;
mod property;

fn parsed(source: &str) -> Policy {
    match parse(source, "test.yaml") {
        Ok(p) => p.policy,
        Err(e) => panic!("{e}\n{source}"),
    }
}

/// The reference's answer in the kernel's terms.
fn expected(policy: &Policy, protocol: Protocol, port: u16, source: IpAddr) -> (u32, u8, bool) {
    let d = reference::evaluate(policy, protocol, port, source);
    (
        d.rule.map_or(RULE_DEFAULT, |r| r as u32),
        d.action.to_kernel(),
        d.log,
    )
}

fn got(entry: PortEntry) -> (u32, u8, bool) {
    (entry.rule, entry.action, entry.flags & port_flags::LOG != 0)
}

const ANY4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
const ANY6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));

/// Every (protocol, port) for two sources, when the policy has no source rules; sampled
/// sources otherwise.
fn assert_agrees(policy: &Policy, sources: &[IpAddr], context: &str) {
    let compiled = compile(policy).unwrap_or_else(|e| panic!("{e}\n{context}"));
    for protocol in Protocol::ALL {
        for port in 0..=u16::MAX {
            for &source in sources {
                assert_eq!(
                    got(compiled.lookup(protocol, port, source)),
                    expected(policy, protocol, port, source),
                    "{protocol} port {port} from {source}\n{context}"
                );
            }
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
        assert_agrees(&parsed(source), &[ANY4, ANY6], source);
    }
}

const WITH_SOURCES: &[&str] = &[
    // An earlier broad rule must win over a later narrow one, and the other way round.
    "\
default: drop
rules:
  - allow: ssh
    from: 10.0.0.0/8
  - drop: ssh
    from: 10.1.0.0/16
  - allow: ssh
    from: 10.1.2.0/24
  - allow: 80/tcp
",
    "\
default: allow
sets:
  admins: [10.0.0.0/8, 2001:db8::/32]
  app: [192.168.10.0/24, 10.9.0.0/16]
rules:
  - name: ssh-admins
    allow: ssh
    from: $admins
  - drop: ssh
  - allow: [http, https]
  - allow: 5432/tcp
    from: [$app]
  - drop: 5432/tcp
  - drop: 1000-2000
    from: [10.1.0.0/16, 0.0.0.0/0, 2001:db8:1::/48]
  - allow: 1500
    from: 10.1.2.3
",
    "\
default: drop
rules:
  - drop: any
    from: [10.66.0.0/16, 2001:db8:66::/48]
  - allow: 22/tcp
    from: 10.0.0.0/8
  - allow: [80/tcp, 443/tcp]
  - allow: 53
    from: [10.0.0.0/8, ::/0]
",
];

const PROBES: &[&str] = &[
    "10.0.0.1",
    "10.1.0.1",
    "10.1.2.3",
    "10.1.2.4",
    "10.9.1.1",
    "10.66.1.1",
    "11.0.0.1",
    "192.168.10.7",
    "192.168.11.7",
    "0.0.0.0",
    "255.255.255.255",
    "2001:db8::1",
    "2001:db8:1::1",
    "2001:db8:66::5",
    "2001:db9::1",
    "::",
    "::1",
];

#[test]
fn source_rules_agree_with_the_reference() {
    let sources: Vec<IpAddr> = PROBES.iter().filter_map(|s| s.parse().ok()).collect();
    for source in WITH_SOURCES {
        let policy = parsed(source);
        let compiled = compile(&policy).expect("compile");
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            for port in (0..=2100u16).chain([5432, 65535]) {
                for &src in &sources {
                    assert_eq!(
                        got(compiled.lookup(protocol, port, src)),
                        expected(&policy, protocol, port, src),
                        "{protocol} {port} from {src}\n{source}"
                    );
                }
            }
        }
    }
}

#[test]
fn ports_without_source_rules_need_no_trie() {
    let policy = parsed(WITH_SOURCES[1]);
    let compiled = compile(&policy).expect("compile");
    // http has no source rule before its terminal rule: direct verdict.
    assert_eq!(compiled.entry(Protocol::Tcp, 80).group, NO_SOURCE_GROUP);
    // ssh and postgres do, in two different groups.
    let ssh = compiled.entry(Protocol::Tcp, 22).group;
    let pg = compiled.entry(Protocol::Tcp, 5432).group;
    assert_ne!(ssh, NO_SOURCE_GROUP);
    assert_ne!(pg, NO_SOURCE_GROUP);
    assert_ne!(ssh, pg);
    // The terminal of ssh is `drop: ssh` (rule 2), held by the port entry itself.
    assert_eq!(compiled.entry(Protocol::Tcp, 22).rule, 1);
    assert_eq!(compiled.groups[usize::from(ssh) - 1], [0]);
}

#[test]
fn classes_with_the_same_source_rules_share_one_group() {
    // One blocklist rule over every port, then many port rules: one group, so the
    // blocklist's prefixes are stored once, not once per port class.
    let mut source = String::from("default: drop\nrules:\n  - drop: any\n    from: [");
    for i in 0..200 {
        let _ = write!(source, "10.{}.{}.0/24, ", i / 250, i % 250);
    }
    source.push_str("2001:db8::/32]\n");
    for port in 1..300 {
        let _ = writeln!(source, "  - allow: {}/tcp", port * 7);
    }
    let compiled = compile(&parsed(&source)).expect("compile");
    assert_eq!(compiled.groups.len(), 1);
    assert_eq!(compiled.sources4.len(), 200);
    assert_eq!(compiled.sources6.len(), 1);
}

#[test]
fn redundant_nested_prefixes_are_left_out() {
    let policy = parsed(
        "default: drop\nrules:\n  - allow: 22/tcp\n    from: [10.0.0.0/8, 10.1.0.0/16]\n  - drop: 22/tcp\n    from: 10.1.2.0/24\n",
    );
    let compiled = compile(&policy).expect("compile");
    // 10.1.0.0/16 and 10.1.2.0/24 decide like 10.0.0.0/8 (rule 1): one entry is enough.
    assert_eq!(compiled.sources4.len(), 1);
    assert_eq!(compiled.sources4[0].prefix_len, 32 + 8);
}

#[test]
fn settings_carry_the_policy_settings_and_log_bits() {
    let settings = |source: &str| compile(&parsed(source)).expect("compile").settings;
    let plain = settings("default: drop\n");
    assert_eq!(
        (plain.fragments, plain.other_ip, plain.non_ip, plain.log),
        (
            action::ALLOW,
            action::DROP,
            action::ALLOW,
            settings_log::DROP
        )
    );
    assert_eq!(plain.icmp4_drop, [0; 32]);
    assert_eq!(plain.icmp6_drop, [0; 32]);
    let strict = settings(
        "default: allow\nlog: all\nicmp: drop\nfragments: drop\nother-ip: drop\nnon-ip: drop\n",
    );
    assert_eq!(
        (strict.fragments, strict.other_ip, strict.non_ip, strict.log),
        (
            action::DROP,
            action::DROP,
            action::DROP,
            settings_log::ALLOW | settings_log::DROP
        )
    );
    // icmp: drop drops every type but the essential ones.
    assert!(strict.icmp_drops(false, 8, 0));
    assert!(strict.icmp_drops(false, 3, 1));
    assert!(!strict.icmp_drops(false, 3, 4));
    assert!(strict.icmp_drops(true, 128, 0));
    for kind in [2, 133, 134, 135, 136, 137] {
        assert!(
            !strict.icmp_drops(true, kind, 0),
            "ICMPv6 {kind} is essential"
        );
    }
    assert_eq!(strict.icmp_frag_needed, action::ALLOW);
    assert_eq!(settings("default: allow\nlog: none\n").log, 0);
    assert_eq!(settings("default: allow\n").other_ip, action::ALLOW);
}

#[test]
fn replies_and_flows_reach_the_kernel_settings() {
    let compiled = |source: &str| compile(&parsed(source)).expect("compile");
    let defaults = compiled("default: drop\n");
    assert_eq!(defaults.settings.replies, action::ALLOW);
    assert_eq!(
        defaults.settings.flow_timeouts,
        FlowTimeouts {
            tcp_ns: 6 * 3600 * 1_000_000_000,
            tcp_closing_ns: 10 * 1_000_000_000,
            udp_ns: 60 * 1_000_000_000,
            icmp_ns: 30 * 1_000_000_000,
            refresh_ns: 1_000_000_000,
            cache_ns: 10_000_000,
        }
    );
    assert_eq!(defaults.flows_max, FLOWS_DEFAULT_MAX);

    let tuned = compiled(
        "default: drop\nreplies: allow\nflows:\n  max: 4096\n  tcp-timeout: 1d\n  \
         tcp-closing: 2m\n  udp-timeout: 5s\n  icmp-timeout: 365d\n",
    );
    assert_eq!(tuned.settings.replies, action::ALLOW);
    assert_eq!(
        tuned.settings.flow_timeouts,
        FlowTimeouts {
            tcp_ns: 86_400 * 1_000_000_000,
            tcp_closing_ns: 120 * 1_000_000_000,
            udp_ns: 5 * 1_000_000_000,
            icmp_ns: 365 * 86_400 * 1_000_000_000,
            refresh_ns: 1_000_000_000,
            cache_ns: 10_000_000,
        }
    );
    // A timeout of a second refreshes busy flows twice as often, so they never expire.
    let short = compiled("default: drop\nflows:\n  udp-timeout: 1s\n");
    assert_eq!(short.settings.flow_timeouts.refresh_ns, 500_000_000);
    assert_eq!(short.settings.flow_timeouts.cache_ns, 10_000_000);
    // A refresh interval shorter than twice the cache's trust shortens it.
    assert_eq!(FlowTimeouts::cache_for(5_000_000), 2_500_000);
    assert_eq!(tuned.flows_max, 4096);
    // The kernel picks a timeout per flow state from these.
    let timeouts = tuned.settings.flow_timeouts;
    assert_eq!(
        timeouts.for_flow(ipproto::UDP, flow_state::OPEN),
        5 * 1_000_000_000
    );
    assert_eq!(
        timeouts.for_flow(ipproto::TCP, flow_state::SYN_SENT),
        120 * 1_000_000_000
    );

    let stateless = compiled("default: drop\nreplies: drop\n");
    assert_eq!(stateless.settings.replies, action::DROP);
    // Nothing else about the settings depends on `replies`.
    assert_eq!(
        Settings {
            replies: action::ALLOW,
            ..stateless.settings
        },
        defaults.settings
    );
}

#[test]
fn named_icmp_types_override_the_default_and_the_essentials() {
    let s = compile(&parsed(
        "default: drop\nicmp:\n  default: drop\n  allow: [echo-request, icmpv6/200]\n  drop: [neighbor-solicitation, frag-needed]\n",
    ))
    .expect("compile")
    .settings;
    assert!(!s.icmp_drops(false, 8, 0));
    assert!(!s.icmp_drops(true, 128, 0));
    assert!(!s.icmp_drops(true, 200, 0));
    assert!(s.icmp_drops(true, 135, 0), "named, so no longer essential");
    assert!(!s.icmp_drops(true, 136, 0), "still essential");
    assert!(s.icmp_drops(false, 3, 4), "frag-needed named");
    assert!(s.icmp_drops(false, 0, 0));
    let open = compile(&parsed(
        "default: drop\nicmp:\n  default: allow\n  drop: [redirect]\n",
    ))
    .expect("compile")
    .settings;
    assert!(open.icmp_drops(false, 5, 0) && open.icmp_drops(true, 137, 0));
    assert!(!open.icmp_drops(false, 8, 0));
}

#[test]
fn runs_merge_equal_neighbours() {
    let compiled = compile(&parsed(
        "default: drop\nlog: none\nrules:\n  - allow: [10-20/tcp, 21-30/tcp]\n  - allow: 31/tcp\n",
    ))
    .expect("compile");
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
fn going_over_a_table_limit_is_a_clear_error_not_a_truncation() {
    // A set shared by several groups repeats once per group.
    let policy = parsed(
        "default: drop\nsets:\n  big: [10.0.0.0/24, 10.0.1.0/24, 10.0.2.0/24]\nrules:\n  - allow: 22/tcp\n    from: $big\n  - allow: 80/tcp\n    from: [$big, 10.9.0.0/16]\n",
    );
    let fits = compile_with(
        &policy,
        Limits {
            source_groups: 10,
            source_entries: 7,
        },
    );
    assert!(fits.is_ok(), "{fits:?}");
    let over = compile_with(
        &policy,
        Limits {
            source_groups: 10,
            source_entries: 6,
        },
    );
    assert_eq!(
        over,
        Err(CompileError::TooManySourceEntries {
            family: "IPv4",
            entries: 7,
            max: 6
        })
    );
    let groups = compile_with(
        &policy,
        Limits {
            source_groups: 1,
            source_entries: 100,
        },
    );
    assert_eq!(
        groups,
        Err(CompileError::TooManyGroups { groups: 2, max: 1 })
    );
    let message = over.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains("7 IPv4 source entries; at most 6 fit"),
        "{message}"
    );
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
    let text = summary(&policy, &compile(&policy).expect("compile"));
    let expected = "\
test.yaml: 5 rules, first match wins; default drop, log drops
interfaces: eth0
icmp: allow, fragments: allow, other-ip: drop, non-ip: allow
replies: allow (flows: max 262144, tcp 6h, closing 10s, udp 1m, icmp 30s)
log-limit: 1000/s events, 250/s per source; beyond it packets are counted as suppressed
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
    let text = summary(&open, &compile(&open).expect("compile"));
    assert!(
        text.contains("tcp:\n  (tcp port 0 is dropped as malformed"),
        "{text}"
    );
    assert!(text.contains("  everything: allow (default)\n"), "{text}");

    let tuned = parsed(
        "default: drop\nflows:\n  max: 1000\n  tcp-timeout: 1d\n  tcp-closing: 90s\n  \
         udp-timeout: 5m\n  icmp-timeout: 2h\n",
    );
    let text = summary(&tuned, &compile(&tuned).expect("compile"));
    assert!(
        text.contains(
            "non-ip: allow\nreplies: allow (flows: max 1000, tcp 1d, closing 90s, udp 5m, \
             icmp 2h)\nlog-limit: 1000/s events, 250/s per source; beyond it packets are \
             counted as suppressed\ntcp:\n"
        ),
        "{text}"
    );
    let stateless = parsed("default: drop\nreplies: drop\n");
    let text = summary(&stateless, &compile(&stateless).expect("compile"));
    assert!(
        text.contains("non-ip: allow\nreplies: drop (stateless)\nlog-limit: 1000/s"),
        "{text}"
    );
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
    let text = summary(&demo, &compile(&demo).expect("compile"));
    let docs = include_str!("../../../docs/policy.md");
    assert!(
        docs.contains(&text),
        "docs/policy.md shows an outdated summary of policies/demo.yaml; it is now:\n{text}"
    );
}

#[test]
fn summary_names_source_rules_before_the_verdict() {
    let policy = parsed(WITH_SOURCES[2]);
    let text = summary(&policy, &compile(&policy).expect("compile"));
    assert!(
        text.contains("tcp:\n  every port, first by source: rule 1 (line 3) drops from [10.66.0.0/16, 2001:db8:66::/48]\n"),
        "{text}"
    );
    assert!(
        text.contains("  drop  22         the default, logged\n                     unless first, by source: rule 2 (line 5) allows from 10.0.0.0/8\n"),
        "{text}"
    );
    assert!(
        text.contains("  allow 80         rule 3 (line 7)\n"),
        "{text}"
    );
    assert!(
        text.contains("sctp:\n  everything: drop (default), logged\n"),
        "{text}"
    );
}

#[test]
fn audit_mode_marks_every_drop_and_nothing_else() {
    let source = "\
default: drop
enforce: false
rules:
  - drop: 22
    from: 203.0.113.0/24
  - allow: 22
  - allow: 80/tcp
    from: 198.51.100.0/24
  - drop: 8000-8999/tcp
";
    let audited = compile(&parsed(source)).expect("compile");
    assert_eq!(audited.settings.audit, 1);
    let drops = audited
        .ports
        .iter()
        .chain(audited.sources4.iter().map(|e| &e.verdict))
        .filter(|e| e.action == action::DROP)
        .count();
    assert!(drops > 0);
    for entry in audited
        .ports
        .iter()
        .chain(audited.sources4.iter().map(|e| &e.verdict))
    {
        let marked = entry.flags & port_flags::AUDIT != 0;
        assert_eq!(marked, entry.action == action::DROP, "{entry:?}");
    }
    // The same policy enforced compiles to the same tables without the marks.
    let enforced =
        compile(&parsed(&source.replace("enforce: false", "enforce: true"))).expect("compile");
    assert_eq!(enforced.settings.audit, 0);
    let unmark = |e: &PortEntry| PortEntry {
        flags: e.flags & !port_flags::AUDIT,
        ..*e
    };
    assert!(
        enforced
            .ports
            .iter()
            .chain(enforced.sources4.iter().map(|e| &e.verdict))
            .all(|e| e.flags & port_flags::AUDIT == 0)
    );
    assert_eq!(
        audited.ports.iter().map(unmark).collect::<Vec<_>>(),
        enforced.ports
    );
    assert_eq!(
        compile(&parsed("default: drop\n")).expect("compile"),
        compile(&parsed("default: drop\nenforce: true\n")).expect("compile"),
    );
}

#[test]
fn the_summary_says_audit_mode() {
    let audited = parsed("default: drop\nenforce: false\nrules:\n  - allow: 22\n");
    let text = summary(&audited, &compile(&audited).expect("compile"));
    assert!(
        text.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("enforce: false: AUDIT MODE, nothing is dropped")),
        "{text}"
    );
    let enforced = parsed("default: drop\nrules:\n  - allow: 22\n");
    let text = summary(&enforced, &compile(&enforced).expect("compile"));
    assert!(!text.contains("enforce"), "{text}");
}
