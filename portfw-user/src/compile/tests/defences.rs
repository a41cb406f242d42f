//! Tests of what the defences compile to: settings, door bits, limits, knock and SPA entries,
//! the scan guard's except group, and agreement with the reference's table verdicts.

use std::net::IpAddr;

use portfw_common::{
    DoorDef, KnockStep, LogLimit, NO_SOURCE_GROUP, PortEntry, RULE_KNOCK, RULE_SETTING, RULE_SPA,
    RuleLimit, SCAN_EXCEPT_GROUP, SOURCE_GROUP_BITS, ScanSettings, action, door_id, door_kind,
    guard, port_flags, source_key4, source_key6,
};

use super::{ANY4, ANY6, parsed};
use crate::{
    compile::{SourceEntry, compile, reference},
    policy::{Protocol, protect_except},
};

const MS: u64 = 1_000_000;
const S: u64 = 1_000 * MS;

const ISSUE: &str = "\
default: drop
sets:
  admins: [198.51.100.0/24, 2001:db8:a::/48]
scan:
  ports: 8
  within: 5s
  block: 10m
  except: [$admins, 192.0.2.0/24]
log: drops
log-limit: 100/s
rules:
  - allow: ssh
    limit: 5/10s
knock:
  - name: door
    sequence: [7001/udp, 7002/tcp, 7003/udp]
    within: 5s
    opens: 22/tcp
    for: 30s
  - name: spa
    spa: {port: 62201/udp, key-file: /etc/portfw/knock.key}
    opens: 22/tcp
    for: 30s
";

#[test]
fn the_issue_example_compiles_to_the_documented_tables() {
    let compiled = compile(&parsed(ISSUE)).expect("compile");
    let s = compiled.settings;
    assert_eq!(s.guard, guard::SCAN | guard::BLOCKS);
    assert_eq!(
        s.scan,
        ScanSettings {
            ports: 8,
            _pad: 0,
            within_ns: 5 * S,
            block_ns: 600 * S
        }
    );
    assert_eq!(
        s.log_limit,
        LogLimit {
            interval_ns: 10 * MS,
            tolerance_ns: 99 * 10 * MS,
            src_interval_ns: 40 * MS,
            src_tolerance_ns: 24 * 40 * MS,
        }
    );
    assert!(
        compiled
            .ports
            .iter()
            .all(|e| e.flags & port_flags::GUARD != 0)
    );
    let ssh = compiled.entry(Protocol::Tcp, 22);
    assert_eq!(
        (ssh.rule, ssh.action, ssh.limit, ssh.opens, ssh.knocks),
        (0, action::ALLOW, 1, 0b11, 0)
    );
    for (protocol, port) in [
        (Protocol::Udp, 7001),
        (Protocol::Tcp, 7002),
        (Protocol::Udp, 7003),
    ] {
        let e = compiled.entry(protocol, port);
        assert_eq!(
            (e.rule, e.action, e.knocks),
            (RULE_KNOCK, action::DROP, 1),
            "{port}"
        );
        assert_ne!(e.flags & port_flags::LOG, 0, "knocks log under log: drops");
    }
    // The same port of the other protocol is no knock.
    assert_eq!(compiled.entry(Protocol::Tcp, 7001).knocks, 0);
    let spa = compiled.entry(Protocol::Udp, 62201);
    assert_eq!(
        (spa.rule, spa.action, spa.group),
        (RULE_SPA, action::ALLOW, NO_SOURCE_GROUP)
    );
    assert_eq!(
        compiled.limits,
        [RuleLimit {
            id: door_id(b"allow ssh limit 5/10s"),
            _pad: 0,
            interval_ns: 2 * S,
            tolerance_ns: 8 * S,
        }]
    );
    let door = &compiled.doors[0];
    assert_eq!(
        (door.name.as_str(), door.line, door.spa.is_none()),
        ("door", 15, true)
    );
    let step = |port, slot| KnockStep {
        port,
        slot,
        _pad: 0,
    };
    let mut sequence = [KnockStep::default(); 8];
    sequence[..3].copy_from_slice(&[step(7001, 1), step(7002, 0), step(7003, 1)]);
    assert_eq!(
        door.def,
        DoorDef {
            id: door_id(b"door"),
            kind: door_kind::SEQUENCE,
            steps: 3,
            opens_slot: 0,
            within_ns: 5 * S,
            open_ns: 30 * S,
            opens_port: 22,
            sequence,
            ..DoorDef::default()
        }
    );
    let spa_door = &compiled.doors[1];
    assert_eq!(spa_door.def.kind, door_kind::SPA);
    assert_eq!(
        (
            spa_door.def.steps,
            spa_door.def.within_ns,
            spa_door.def.open_ns
        ),
        (0, 0, 30 * S)
    );
    let info = spa_door.spa.as_ref().expect("spa");
    assert_eq!(
        (info.port, info.key_file.to_str()),
        (62201, Some("/etc/portfw/knock.key"))
    );
    // The except list, under its own group.
    let except4: Vec<&SourceEntry<[u8; 8]>> = compiled
        .sources4
        .iter()
        .filter(|e| e.key[..4] == u32::from(SCAN_EXCEPT_GROUP).to_be_bytes())
        .collect();
    assert_eq!(except4.len(), 2);
    assert_eq!(
        except4[0].key,
        source_key4(SCAN_EXCEPT_GROUP, [198, 51, 100, 0])
    );
    assert_eq!(except4[0].prefix_len, SOURCE_GROUP_BITS + 24);
    assert_eq!(except4[0].verdict.rule, RULE_SETTING);
    let mut v6 = [0u8; 16];
    v6[..6].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0x0a]);
    assert_eq!(
        compiled
            .sources6
            .iter()
            .map(|e| (e.prefix_len, e.key))
            .collect::<Vec<_>>(),
        [(SOURCE_GROUP_BITS + 48, source_key6(SCAN_EXCEPT_GROUP, v6))]
    );
}

#[test]
fn without_defences_nothing_changes_but_the_log_cap() {
    let compiled = compile(&parsed("default: drop\nrules:\n  - allow: ssh\n")).expect("compile");
    assert_eq!(compiled.settings.guard, 0);
    assert_eq!(compiled.settings.scan, ScanSettings::default());
    assert!(
        compiled
            .ports
            .iter()
            .all(|e| e.flags & port_flags::GUARD == 0
                && e.knocks == 0
                && e.opens == 0
                && e.limit == 0)
    );
    assert!(compiled.doors.is_empty() && compiled.limits.is_empty());
    // The default cap: 1000/s, a quarter of it per source.
    assert_eq!(
        compiled.settings.log_limit,
        LogLimit {
            interval_ns: MS,
            tolerance_ns: 999 * MS,
            src_interval_ns: 4 * MS,
            src_tolerance_ns: 249 * 4 * MS,
        }
    );
    let none = compile(&parsed("default: drop\nlog-limit: none\n")).expect("compile");
    assert_eq!(none.settings.log_limit, LogLimit::default());
    // A tiny cap still lets each source one event per period.
    let tiny = compile(&parsed("default: drop\nlog-limit: 2/m\n")).expect("compile");
    assert_eq!(tiny.settings.log_limit.src_interval_ns, 60 * S);
}

const MIXED: &str = "\
default: drop
sets:
  office: [10.1.0.0/16, 2001:db8:1::/48]
scan: {ports: 4, except: [10.9.0.0/16]}
rules:
  - allow: [20-30/tcp, 7005/udp]
    from: $office
    limit: 10/m
  - drop: 7001/udp
    from: 10.1.2.0/24
  - allow: 443/tcp
    limit: 100/s
  - allow: 8000-9000/tcp
    from: 10.2.0.0/16
knock:
  - name: a
    sequence: [7001/udp, 7002/udp, 7005/udp]
    opens: 22/tcp
  - name: b
    sequence: [7012/udp, 7011/tcp]
    opens: 8080/tcp
";

#[test]
fn tables_agree_with_the_reference_on_every_port() {
    let policy = parsed(MIXED);
    let compiled = compile(&policy).expect("compile");
    let sources: Vec<IpAddr> = ["10.1.2.3", "10.1.9.9", "10.2.0.1", "2001:db8:1::5"]
        .iter()
        .map(|a| a.parse().expect("ip"))
        .chain([ANY4, ANY6])
        .collect();
    for protocol in Protocol::ALL {
        for port in 0..=u16::MAX {
            let knocks = compiled.entry(protocol, port).knocks;
            for &source in &sources {
                let e = compiled.lookup(protocol, port, source);
                let want = reference::table_verdict(&policy, protocol, port, source);
                assert_eq!(
                    (
                        e.rule,
                        e.action,
                        e.flags & port_flags::LOG != 0,
                        knocks,
                        e.opens,
                        e.limit
                    ),
                    (
                        want.rule,
                        want.action.to_kernel(),
                        want.log,
                        want.knocks,
                        want.opens,
                        want.limit
                    ),
                    "{protocol} {port} from {source}"
                );
                assert_ne!(e.flags & port_flags::GUARD, 0);
            }
        }
    }
}

#[test]
fn door_ports_get_groups_of_their_own() {
    let compiled = compile(&parsed(MIXED)).expect("compile");
    let group = |protocol, port| compiled.entry(protocol, port).group;
    // 22/tcp shares rule 1's source list with 20-30, but its entries carry door a's bit.
    assert_ne!(group(Protocol::Tcp, 22), group(Protocol::Tcp, 21));
    assert_eq!(group(Protocol::Tcp, 21), group(Protocol::Tcp, 30));
    assert_eq!(
        compiled.groups[usize::from(group(Protocol::Tcp, 22)) - 1],
        compiled.groups[usize::from(group(Protocol::Tcp, 21)) - 1]
    );
    let from_office: IpAddr = "10.1.9.9".parse().expect("ip");
    let on22 = compiled.lookup(Protocol::Tcp, 22, from_office);
    let on21 = compiled.lookup(Protocol::Tcp, 21, from_office);
    assert_eq!((on22.rule, on22.opens, on22.limit), (0, 0b01, 1));
    assert_eq!((on21.rule, on21.opens, on21.limit), (0, 0, 1));
    // A knock port's drops by source rules are knocks too; its allows stay.
    let at_7001 = compiled.lookup(Protocol::Udp, 7001, "10.1.2.3".parse().expect("ip"));
    assert_eq!((at_7001.rule, at_7001.action), (RULE_KNOCK, action::DROP));
    let at_7005 = compiled.lookup(Protocol::Udp, 7005, from_office);
    assert_eq!((at_7005.rule, at_7005.action), (0, action::ALLOW));
    assert_eq!(compiled.entry(Protocol::Udp, 7002).knocks, 1);
    assert_eq!(compiled.entry(Protocol::Tcp, 7011).knocks, 2);
    assert_eq!(compiled.entry(Protocol::Udp, 7005).knocks, 1);
}

#[test]
fn protected_addresses_join_the_except_group() {
    let mut policy = parsed(MIXED);
    let addrs: Vec<IpAddr> = ["192.0.2.1", "2001:db8:5:6::1"]
        .iter()
        .map(|a| a.parse().expect("ip"))
        .collect();
    protect_except(&mut policy, &addrs);
    let compiled = compile(&policy).expect("compile");
    let except = |e: &PortEntry| e.rule == RULE_SETTING;
    let v4: Vec<(u32, [u8; 8])> = compiled
        .sources4
        .iter()
        .filter(|e| except(&e.verdict))
        .map(|e| (e.prefix_len, e.key))
        .collect();
    assert_eq!(
        v4,
        [
            (
                SOURCE_GROUP_BITS + 16,
                source_key4(SCAN_EXCEPT_GROUP, [10, 9, 0, 0])
            ),
            (
                SOURCE_GROUP_BITS + 32,
                source_key4(SCAN_EXCEPT_GROUP, [192, 0, 2, 1])
            ),
        ]
    );
    let v6 = compiled
        .sources6
        .iter()
        .filter(|e| except(&e.verdict))
        .count();
    assert_eq!(v6, 1);
}

#[test]
fn audit_mode_marks_knock_drops() {
    let compiled = compile(&parsed(&format!("{MIXED}enforce: false\n"))).expect("compile");
    let e = compiled.entry(Protocol::Udp, 7002);
    assert_eq!(e.rule, RULE_KNOCK);
    assert_ne!(e.flags & port_flags::AUDIT, 0);
}

#[test]
fn the_summary_says_the_defences() {
    let policy = parsed(ISSUE);
    let text = crate::compile::summary(&policy, &compile(&policy).expect("compile"));
    println!("{text}");
    for line in [
        "scan guard: 8 distinct dropped ports within 5s block a source (IPv6: its /64) for 10m; \
         except [$admins, 192.0.2.0/24], and the host's gateways, resolvers and own addresses \
         (added when applied)\n",
        "log-limit: 100/s events, 25/s per source; beyond it packets are counted as suppressed\n",
        "knock door `door` (line 15): knocks [7001/udp, 7002/tcp, 7003/udp] within 5s; opens \
         22/tcp for 30s to the knocking source\n",
        "knock door `spa` (line 20): a single-packet knock on 62201/udp, verified by `portfw \
         agent` with /etc/portfw/knock.key; opens 22/tcp for 30s to the knocking source\n",
        "  allow 22     rule 1 (line 12), limit 5/10s new connections per source; allowed \
         anyway, so opening it changes nothing: doors `door`, `spa`\n",
        "  drop  7002   a knock of door `door`, logged\n",
        "  allow 62201  single-packet knocks, passed to `portfw agent`\n",
    ] {
        assert!(text.contains(line), "{line}\nnot in\n{text}");
    }
}

/// Random policies from the tests' generator with random knock doors on the ports its rules
/// use: the compiled tables agree with the reference's table verdicts.
#[test]
fn random_policies_with_doors_agree_with_the_reference() {
    use portfw_lab::{Profile, Rng, random_policy};
    let profile = &Profile::compiler(crate::compile::LARGE_SET);
    let mut checked = 0;
    for case in 0..300u64 {
        let rng = Rng::new(0xD00B ^ case.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let base = random_policy(&rng, profile);
        let knock = |rng: &Rng| {
            let protocol = rng.pick(&["tcp", "udp"]);
            format!("{}/{protocol}", rng.below(64))
        };
        let mut yaml = format!("{base}\nknock:\n");
        for d in 0..1 + rng.below(3) {
            let steps: Vec<String> = (0..2 + rng.below(3)).map(|_| knock(&rng)).collect();
            let opens = format!("{}/{}", rng.below(64), rng.pick(&["tcp", "udp", "sctp"]));
            yaml.push_str(&format!(
                "  - {{name: d{d}, sequence: [{}], opens: {opens}}}\n",
                steps.join(", ")
            ));
        }
        yaml.push_str(&format!(
            "  - {{name: s, spa: {{port: {}, key-file: k}}, opens: {}/tcp}}\n",
            60_000 + rng.below(10),
            rng.below(64)
        ));
        // Random doors may break the rules on knocks (a repeat, a port two doors share, a
        // knock that is the door's own `opens`): those are skipped.
        let Ok(parsed) = crate::policy::parse(&yaml, "random.yaml") else {
            continue;
        };
        let policy = parsed.policy;
        let compiled = compile(&policy).expect("compile");
        for _ in 0..200 {
            let protocol = rng.pick(&Protocol::ALL);
            let port = if rng.percent(90) {
                rng.below(64) as u16
            } else {
                60_000 + rng.below(10) as u16
            };
            let source: IpAddr = if rng.percent(60) {
                format!("10.{}.{}.{}", rng.below(5), rng.below(5), rng.below(256))
            } else {
                format!("2001:db8:{}::{}", rng.below(5), rng.below(10))
            }
            .parse()
            .expect("ip");
            let e = compiled.lookup(protocol, port, source);
            let want = reference::table_verdict(&policy, protocol, port, source);
            assert_eq!(
                (
                    e.rule,
                    e.action,
                    e.flags & port_flags::LOG != 0,
                    compiled.entry(protocol, port).knocks,
                    e.opens
                ),
                (
                    want.rule,
                    want.action.to_kernel(),
                    want.log,
                    want.knocks,
                    want.opens
                ),
                "case {case}: {protocol} {port} from {source}\n{yaml}"
            );
        }
        checked += 1;
    }
    assert!(
        checked > 150,
        "only {checked} random policies with doors were valid"
    );
}
