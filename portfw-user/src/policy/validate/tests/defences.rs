//! Tests of `scan:`, `log-limit:`, `limit:` and `knock:`: every key, defaults, and the
//! position of every error.

use std::{path::PathBuf, time::Duration};

use super::{errors, policy, warnings};
use crate::policy::{Cidr, DoorKind, LOG_LIMIT_DEFAULT, Protocol, Rate, protect_except};

const ISSUE_EXAMPLE: &str = "\
default: drop
sets:
  admins: [198.51.100.0/24]
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

fn cidr(text: &str) -> Cidr {
    text.parse().expect("cidr")
}

#[test]
fn the_issue_example_parses() {
    let p = policy(ISSUE_EXAMPLE);
    let scan = p.scan.as_ref().expect("scan");
    assert_eq!(scan.ports, 8);
    assert_eq!(scan.within, Duration::from_secs(5));
    assert_eq!(scan.block, Duration::from_secs(600));
    assert_eq!(scan.except, [cidr("198.51.100.0/24"), cidr("192.0.2.0/24")]);
    assert_eq!(scan.except_text.as_deref(), Some("[$admins, 192.0.2.0/24]"));
    assert_eq!(
        p.log_limit,
        Some(Rate {
            count: 100,
            per: Duration::from_secs(1)
        })
    );
    let limit = p.rules[0].limit.as_ref().expect("limit");
    assert_eq!(limit.rate.to_string(), "5/10s");
    assert_eq!(limit.id, portfw_common::door_id(b"allow ssh limit 5/10s"));
    assert_eq!(p.rules[0].summary, "allow ssh limit 5/10s");
    assert_eq!(p.doors.len(), 2);
    let door = &p.doors[0];
    assert_eq!(door.name, "door");
    assert_eq!(door.opens, (Protocol::Tcp, 22));
    assert_eq!(door.open_for, Duration::from_secs(30));
    assert_eq!(
        door.kind,
        DoorKind::Sequence {
            steps: vec![
                (Protocol::Udp, 7001),
                (Protocol::Tcp, 7002),
                (Protocol::Udp, 7003)
            ],
            within: Duration::from_secs(5),
        }
    );
    assert_eq!(
        p.doors[1].kind,
        DoorKind::Spa {
            port: 62201,
            key_file: PathBuf::from("/etc/portfw/knock.key"),
        }
    );
    assert!(warnings(ISSUE_EXAMPLE).is_empty());
}

#[test]
fn defaults() {
    let p = policy("default: drop\n");
    assert_eq!(p.scan, None);
    assert_eq!(p.log_limit, Some(LOG_LIMIT_DEFAULT));
    assert_eq!(LOG_LIMIT_DEFAULT.to_string(), "1000/s");
    assert!(p.doors.is_empty());
    assert_eq!(policy("default: drop\nlog-limit: none\n").log_limit, None);
    let p = policy("default: drop\nscan: {ports: 3}\n");
    let scan = p.scan.expect("scan");
    assert_eq!(
        (scan.within, scan.block),
        (Duration::from_secs(5), Duration::from_secs(600))
    );
    assert!(scan.except.is_empty());
    let p = policy(
        "default: drop\nknock:\n  - name: d\n    sequence: [1/udp, 2/udp]\n    opens: ssh\n  \
         - name: s\n    spa: {key-file: k.key}\n    opens: 2222/tcp\n",
    );
    assert_eq!(p.doors[0].open_for, Duration::from_secs(30));
    assert_eq!(p.doors[0].opens, (Protocol::Tcp, 22));
    assert!(
        matches!(p.doors[0].kind, DoorKind::Sequence { within, .. } if within == Duration::from_secs(5))
    );
    // A relative key file is next to the policy, like set files.
    assert_eq!(
        p.doors[1].kind,
        DoorKind::Spa {
            port: 62201,
            key_file: PathBuf::from("k.key")
        }
    );
}

#[test]
fn scan_errors_have_positions() {
    assert_eq!(
        errors("default: drop\nscan:\n  ports: 0\n  within: 5\n  blok: 1m\n"),
        [
            "3:10: `ports` in `scan` must be a whole number of distinct ports from 1 to 65535, found `0`",
            "4:11: duration `5` has no unit; write `5s` for seconds, or use `m`, `h` or `d`",
            "5:3: unknown key `blok` in `scan`; expected one of: ports, within, block, except",
        ]
    );
    assert_eq!(
        errors("default: drop\nscan: {within: 5s}\n"),
        [
            "2:1: `scan` needs `ports`: how many distinct dropped ports from one source within `within` block it"
        ]
    );
    assert_eq!(
        errors("default: drop\nscan: 8\n"),
        ["2:7: `scan` must be a mapping of ports, within, block, except, found `8`"]
    );
    assert_eq!(
        errors("default: drop\nscan: {ports: 8, except: [$nope, 10.0.0.300]}\n"),
        [
            "2:27: unknown set `$nope`; the policy defines no sets (they go under the top-level `sets:` key)",
            "2:34: `10.0.0.300` is not an IP address or CIDR",
        ]
    );
}

#[test]
fn scan_warnings() {
    assert_eq!(
        warnings("default: drop\nscan: {ports: 8, block: 1d}\n"),
        [
            "2:25: `scan` blocks for 1d with an empty `except`: spoofed scans could shut out any \
          source for that long; list the networks you must never lose (your admins, \
          monitoring) under `except`"
        ]
    );
    assert!(warnings("default: drop\nscan: {ports: 8, block: 1h}\n").is_empty());
    assert!(
        warnings("default: drop\nscan: {ports: 8, block: 1d, except: 10.0.0.0/8}\n").is_empty()
    );
    assert_eq!(
        warnings("default: drop\nscan: {ports: 8, except: ['2001:db8::1']}\n"),
        [
            "2:26: `except` holds 2001:db8::1/128, but the scan guard blocks IPv6 sources by /64: \
          another address of its /64 scanning would block it anyway; except the whole /64"
        ]
    );
    // A set used only by `except` is used.
    assert!(
        warnings("default: drop\nsets: {a: [10.0.0.0/8]}\nscan: {ports: 8, except: $a}\n")
            .is_empty()
    );
}

#[test]
fn log_limit_and_limit_errors() {
    assert_eq!(
        errors("default: drop\nlog-limit: 100\n"),
        [
            "2:12: cannot read rate `100`; expected COUNT/PERIOD, as in `100/s`, `6/30s`, `10/m` or `50/h`"
        ]
    );
    assert_eq!(
        errors("default: drop\nlog-limit: [1]\n"),
        ["2:12: `log-limit` must be a rate such as `1000/s`, or `none`, found a list"]
    );
    assert_eq!(
        errors(
            "default: drop\nrules:\n  - drop: 80\n    limit: 5/s\n  - allow: 81\n    limit: 0/s\n  - allow: 82\n    limt: 1/s\n"
        ),
        [
            "4:5: `limit` applies to `allow` rules, and rule 1 drops: a limit caps the new connections a rule lets through",
            "6:12: the count of rate `0/s` must be a whole number from 1 to 4294967295",
            "8:5: unknown key `limt` in rule 3; expected one of: name, allow, drop, from, log, limit",
        ]
    );
    let p = policy(
        "default: drop\nrules:\n  - allow: 80\n    limit: 6/30s\n    from: 10.0.0.0/8\n  - allow: 80\n    limit: 6/30s\n    from: 10.0.0.0/8\n",
    );
    let ids: Vec<u32> = p
        .rules
        .iter()
        .filter_map(|r| r.limit.as_ref().map(|l| l.id))
        .collect();
    assert_eq!(p.rules[0].summary, "allow 80 from 10.0.0.0/8 limit 6/30s");
    assert_ne!(
        ids[0], ids[1],
        "rules written alike get buckets of their own"
    );
}

#[test]
fn knock_errors_have_positions() {
    let door = |body: &str| format!("default: drop\nknock:\n  - {body}\n");
    assert_eq!(
        errors(&door(
            "name: d\n    sequence: [7001/udp]\n    opens: 22/tcp"
        )),
        ["4:15: the `sequence` of knock door 1 has 1 knocks; it takes 2 to 8"]
    );
    assert_eq!(
        errors(&door(
            "name: d\n    sequence: [7001, 7002/sctp, 7003-7004/udp, 9/udp, 9/udp]\n    opens: 22"
        )),
        [
            "4:16: a knock in knock door 1 must name one protocol: write `7001/tcp` or `7001/udp`",
            "4:22: a knock in knock door 1 must be tcp or udp, not `7002/sctp`",
            "4:33: a knock in knock door 1 must be one port, as in `22/tcp`, not `7003-7004/udp`",
            "4:55: knock 9/udp repeats the one before it; a repeated knock is taken for a retransmission and ignored, so the sequence could never complete",
            "5:12: `opens` in knock door 1 must name one protocol: write `22/tcp`",
        ]
    );
    assert_eq!(
        errors(&door(
            "name: d\n    sequence: [1/udp, 2/udp]\n    spa: {key-file: k}\n    opens: 22/tcp\n    colour: red"
        )),
        [
            "5:5: knock door 1 has both `sequence` and `spa`; a door is either a knock sequence or a single-packet knock",
            "7:5: unknown key `colour` in knock door 1; expected one of: name, sequence, within, spa, opens, for",
        ]
    );
    assert_eq!(
        errors(&door("opens: 22/tcp")),
        ["3:5: knock door 1 needs a `name`"]
    );
    assert_eq!(
        errors(&door("name: d\n    opens: 22/tcp")),
        [
            "3:5: knock door `d` needs `sequence:` (a list of knocks, as in [7001/udp, 7002/tcp]) or `spa:` (a single-packet knock, as in {port: 62201/udp, key-file: PATH})"
        ]
    );
    assert_eq!(
        errors(&door("name: d\n    sequence: [1/udp, 2/udp]")),
        ["3:5: knock door `d` needs `opens`: the port it opens, as in `22/tcp`"]
    );
    assert_eq!(
        errors(&door(
            "name: d\n    spa: {port: 9/tcp, key: k}\n    opens: 22/tcp"
        )),
        [
            "4:17: `port` of `spa` in knock door 1 must be udp, not `9/tcp`",
            "4:24: unknown key `key` in `spa` of knock door 1; expected one of: port, key-file",
        ]
    );
    assert_eq!(
        errors(&door(
            "name: d\n    spa: {port: 9}\n    within: 5s\n    opens: 22/tcp"
        )),
        ["4:5: `spa` in knock door 1 needs `key-file`: the key `portfw knock-key` wrote"]
    );
    assert_eq!(
        errors(&door(
            "name: d\n    spa: {key-file: k}\n    within: 5s\n    opens: 22/tcp"
        )),
        [
            "5:5: `within` applies to knock sequences; knock door `d` is a single-packet knock, whose timestamp the agent checks instead"
        ]
    );
    assert_eq!(
        errors(&door(
            "name: d\n    sequence: [1/udp, 22/tcp]\n    opens: 22/tcp"
        )),
        ["4:23: knock door `d` opens 22/tcp, which is also one of its knocks"]
    );
    assert_eq!(
        errors(
            "default: drop\nknock:\n  - {name: a, sequence: [1/udp, 2/udp], opens: 22/tcp}\n  - {name: a, spa: {port: 2, key-file: k}, opens: 22/tcp}\n"
        ),
        ["4:12: door name `a` is already used (line 3)",]
    );
    assert_eq!(
        errors(
            "default: drop\nknock:\n  - {name: a, sequence: [1/udp, 2/udp], opens: 22/tcp}\n  - {name: b, spa: {port: 2, key-file: k}, opens: 22/tcp}\n"
        ),
        [
            "4:27: SPA port 2/udp of door `b` is also a knock of door `a`; a single-packet port is passed to `portfw agent` and can be nothing else",
        ]
    );
    let many: String = (0..9)
        .map(|i| {
            format!(
                "  - {{name: d{i}, sequence: [{}/udp, {}/udp], opens: {}/tcp}}\n",
                2 * i + 1,
                2 * i + 2,
                100 + i
            )
        })
        .collect();
    assert_eq!(
        errors(&format!("default: drop\nknock:\n{many}")),
        ["2:1: the policy has 9 knock doors; at most 8 are supported"]
    );
}

#[test]
fn a_knock_port_a_rule_allows_is_warned_about() {
    assert_eq!(
        warnings(
            "default: drop\nrules:\n  - allow: 7000-7010/udp\nknock:\n  - name: d\n    sequence: [7001/udp, 8/tcp]\n    opens: 22/tcp\n"
        ),
        [
            "6:16: knock 7001/udp of door `d` is also allowed by rule 1 (line 3): the knock reaches \
          a service there, and a scan shows the port open; pick a port no rule allows"
        ]
    );
}

#[test]
fn protect_except_adds_host_prefixes() {
    let mut p = policy("default: drop\nscan: {ports: 8}\n");
    let addrs = ["192.0.2.1", "2001:db8:1:2::53", "192.0.2.1"].map(|a| a.parse().expect("ip"));
    protect_except(&mut p, &addrs);
    let scan = p.scan.as_ref().expect("scan");
    assert_eq!(
        scan.protected,
        [cidr("192.0.2.1/32"), cidr("2001:db8:1:2::/64")]
    );
    assert_eq!(scan.all_except().count(), 2);
    let mut none = policy("default: drop\n");
    protect_except(&mut none, &addrs);
    assert_eq!(none.scan, None);
}

#[test]
fn shapes_and_counts() {
    assert_eq!(
        errors("default: drop\nknock: 7001\n"),
        ["2:8: `knock` must be a list of doors, found `7001`"]
    );
    assert_eq!(
        errors("default: drop\nknock: [door]\n"),
        [
            "2:9: knock door 1 must be a mapping with `name`, `opens` and `sequence` or `spa`, found `door`"
        ]
    );
    let rules: String = (0..1025)
        .map(|i| format!("  - allow: {i}/tcp\n    limit: 5/s\n"))
        .collect();
    let found = errors(&format!("default: drop\nrules:\n{rules}"));
    assert_eq!(
        found,
        [format!(
            "{}:5: more than 1024 rules have a `limit`; at most 1024 are supported",
            3 + 2 * 1024 + 1
        )]
    );
}

#[test]
fn a_port_knocks_for_one_door_only() {
    assert_eq!(
        errors(
            "default: drop\nknock:\n  - {name: a, sequence: [1/udp, 2/udp, 1/udp], opens: 22/tcp}\n  \
             - {name: b, sequence: [3/udp, 2/udp], opens: 23/tcp}\n"
        ),
        [
            "4:33: knock 2/udp of door `b` is also a knock of door `a`; a port can be a knock of one door only"
        ]
    );
    // The same port of another protocol is another knock.
    assert!(
        policy(
            "default: drop\nknock:\n  - {name: a, sequence: [1/udp, 2/udp], opens: 22/tcp}\n  \
         - {name: b, sequence: [2/tcp, 3/udp], opens: 22/tcp}\n"
        )
        .doors
        .len()
            == 2
    );
}
