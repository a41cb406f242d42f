//! Tests of the defences' model: each step of the kernel's order on a given state.

use std::net::IpAddr;

use portfw_common::{
    BlockValue, DoorKey, RULE_BLOCKED, RULE_DEFAULT, RULE_DOOR, RULE_KNOCK, RULE_REPLY, RULE_SPA,
    action, block_reason, counter, door_id, opens_id, reason,
};

use super::{Change, DefenceState, Outcome, Packet, judge, judge_portless, source_key};
use crate::policy::{Policy, Protocol, parse};

const S: u64 = 1_000_000_000;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

fn policy(source: &str) -> Policy {
    match parse(source, "t.yaml") {
        Ok(p) => p.policy,
        Err(e) => panic!("{e}"),
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

fn tcp(port: u16, from: &str) -> Packet {
    Packet {
        protocol: Protocol::Tcp,
        port,
        source: ip(from),
        tcp_flags: SYN,
        reply: false,
    }
}

fn udp(port: u16, from: &str) -> Packet {
    Packet {
        protocol: Protocol::Udp,
        tcp_flags: 0,
        ..tcp(port, from)
    }
}

fn verdict(o: &Outcome) -> (u8, u32, u32, u8) {
    (o.action, o.rule, o.counter, o.reason)
}

const SCAN: &str = "\
default: drop
scan: {ports: 3, within: 5s, block: 10m, except: [192.0.2.0/24]}
rules:
  - allow: 80/tcp
";

#[test]
fn the_scan_guard_blocks_after_distinct_dropped_ports_and_the_block_expires() {
    let p = policy(SCAN);
    let mut state = DefenceState::default();
    let from = "198.51.100.7";
    // Allowed ports never count; the same port twice counts once.
    for port in [80, 1, 80, 1] {
        judge(&p, &mut state, &tcp(port, from), S);
    }
    assert_eq!(
        state.scan.get(&source_key(ip(from), true)).map(|w| w.ports),
        Some(1)
    );
    let o = judge(&p, &mut state, &tcp(2, from), 2 * S);
    assert_eq!(
        verdict(&o),
        (
            action::DROP,
            RULE_DEFAULT,
            counter::DROP_DEFAULT,
            reason::NONE
        )
    );
    let o = judge(&p, &mut state, &udp(2, from), 3 * S);
    // The packet that completes the count is an ordinary drop; the block is its side effect.
    assert_eq!((o.counter, o.reason), (counter::DROP_DEFAULT, reason::NONE));
    assert_eq!(
        o.bumped,
        [counter::SCAN_BLOCKS],
        "distinct ports are per protocol"
    );
    let block = state.blocks[&source_key(ip(from), true)];
    assert_eq!(
        (block.expires_ns, block.reason),
        (603 * S, block_reason::SCAN)
    );
    assert!(state.scan.is_empty());
    // Blocked: allowed ports too, and packets without ports.
    let o = judge(&p, &mut state, &tcp(80, from), 4 * S);
    assert_eq!(
        verdict(&o),
        (
            action::DROP,
            RULE_BLOCKED,
            counter::DROP_BLOCKED,
            reason::BLOCKED
        )
    );
    assert!(o.log, "log: drops logs blocked drops");
    assert!(judge_portless(&p, &mut state, ip(from), 4 * S).is_some());
    // Another source is not blocked; the block expires and is deleted.
    assert_eq!(
        judge(&p, &mut state, &tcp(80, "198.51.100.8"), 5 * S).action,
        action::ALLOW
    );
    let o = judge(&p, &mut state, &tcp(80, from), 604 * S);
    assert_eq!(o.action, action::ALLOW);
    assert_eq!(
        o.changes,
        [Change::BlockExpired(source_key(ip(from), true))]
    );
}

#[test]
fn the_window_restarts_and_excepted_sources_never_count() {
    let p = policy(SCAN);
    let mut state = DefenceState::default();
    for (i, port) in [1, 2].into_iter().enumerate() {
        judge(&p, &mut state, &tcp(port, "198.51.100.7"), i as u64 * S);
    }
    // Past `within` of the window's start, the count starts again.
    judge(&p, &mut state, &tcp(3, "198.51.100.7"), 10 * S);
    assert_eq!(state.scan[&source_key(ip("198.51.100.7"), true)].ports, 1);
    for port in 1..100 {
        let o = judge(&p, &mut state, &tcp(port, "192.0.2.9"), 11 * S);
        assert_eq!(o.reason, reason::NONE);
    }
    assert!(state.blocks.is_empty());
    assert!(!state.scan.contains_key(&source_key(ip("192.0.2.9"), true)));
}

#[test]
fn ipv6_sources_count_and_block_by_64() {
    let p = policy(SCAN);
    let mut state = DefenceState::default();
    for (port, from) in [(1, "2001:db8::1"), (2, "2001:db8::2"), (3, "2001:db8::3")] {
        judge(&p, &mut state, &tcp(port, from), S);
    }
    let o = judge(&p, &mut state, &tcp(80, "2001:db8::ffff"), 2 * S);
    assert_eq!(o.rule, RULE_BLOCKED);
    assert_eq!(
        judge(&p, &mut state, &tcp(80, "2001:db8:0:1::1"), 2 * S).action,
        action::ALLOW
    );
}

#[test]
fn manual_blocks_and_prefix_blocks_apply_without_a_scan_guard() {
    let p = policy("default: allow\n");
    let mut state = DefenceState::default();
    assert_eq!(
        judge(&p, &mut state, &tcp(22, "10.0.0.1"), S).action,
        action::ALLOW
    );
    state.block(ip("10.0.0.1"), 0, S);
    assert_eq!(
        judge(&p, &mut state, &tcp(22, "10.0.0.1"), 1000 * S).rule,
        RULE_BLOCKED
    );
    let net = BlockValue {
        expires_ns: 10 * S,
        reason: block_reason::MANUAL,
        ..BlockValue::default()
    };
    state
        .block_nets
        .push(("10.9.0.0/16".parse().expect("cidr"), net));
    assert_eq!(
        judge(&p, &mut state, &udp(53, "10.9.8.7"), 2 * S).rule,
        RULE_BLOCKED
    );
    assert_eq!(
        judge(&p, &mut state, &udp(53, "10.9.8.7"), 11 * S).action,
        action::ALLOW
    );
    // An expired prefix block is ignored, and left for `portfw` to remove.
    assert_eq!(state.block_nets.len(), 1);
}

const LIMIT: &str = "\
default: drop
rules:
  - allow: ssh
    limit: 3/30s
  - allow: 53/udp
    limit: 2/s
";

#[test]
fn limits_count_new_connections_per_source() {
    let p = policy(LIMIT);
    let mut state = DefenceState::default();
    let a = "198.51.100.1";
    for _ in 0..3 {
        let o = judge(&p, &mut state, &tcp(22, a), S);
        assert_eq!(
            verdict(&o),
            (action::ALLOW, 0, counter::ALLOW_RULE, reason::NONE)
        );
    }
    let o = judge(&p, &mut state, &tcp(22, a), S);
    assert_eq!(
        verdict(&o),
        (action::DROP, 0, counter::DROP_LIMIT, reason::LIMIT)
    );
    // Segments of established connections do not count.
    let ack = Packet {
        tcp_flags: ACK,
        ..tcp(22, a)
    };
    assert_eq!(judge(&p, &mut state, &ack, S).action, action::ALLOW);
    // Another source has its own bucket; 10 s later one more is allowed (3 per 30 s).
    assert_eq!(
        judge(&p, &mut state, &tcp(22, "198.51.100.2"), S).action,
        action::ALLOW
    );
    assert_eq!(
        judge(&p, &mut state, &tcp(22, a), 11 * S).action,
        action::ALLOW
    );
    assert_eq!(
        judge(&p, &mut state, &tcp(22, a), 11 * S).counter,
        counter::DROP_LIMIT
    );
    // UDP counts every datagram, in its own rule's bucket.
    let counters: Vec<u32> = (0..3)
        .map(|_| judge(&p, &mut state, &udp(53, a), S).counter)
        .collect();
    assert_eq!(
        counters,
        [
            counter::ALLOW_RULE,
            counter::ALLOW_RULE,
            counter::DROP_LIMIT
        ]
    );
    // A limit drop is final: a reply is not let through by it either.
    let reply = Packet {
        reply: true,
        ..udp(53, a)
    };
    assert_eq!(
        judge(&p, &mut state, &reply, S).counter,
        counter::DROP_LIMIT
    );
}

const KNOCK: &str = "\
default: drop
knock:
  - name: door
    sequence: [7001/udp, 7002/tcp, 7003/udp]
    within: 5s
    opens: 22/tcp
    for: 30s
  - name: spa
    spa: {port: 62201/udp, key-file: /etc/portfw/knock.key}
    opens: 2222/tcp
";

#[test]
fn a_knock_sequence_opens_the_door_for_the_knocker_alone() {
    let p = policy(KNOCK);
    let mut state = DefenceState::default();
    let a = "198.51.100.1";
    assert_eq!(judge(&p, &mut state, &tcp(22, a), 0).rule, RULE_DEFAULT);
    for (i, packet) in [udp(7001, a), tcp(7002, a), udp(7003, a)]
        .iter()
        .enumerate()
    {
        let o = judge(&p, &mut state, packet, i as u64 * S);
        assert_eq!(
            verdict(&o),
            (action::DROP, RULE_KNOCK, counter::DROP_KNOCK, reason::KNOCK)
        );
    }
    assert!(state.knocks.is_empty());
    let o = judge(&p, &mut state, &tcp(22, a), 3 * S);
    assert_eq!(
        verdict(&o),
        (action::ALLOW, RULE_DOOR, counter::ALLOW_DOOR, reason::DOOR)
    );
    assert!(!o.log, "door allows are logged under log: all");
    // The open door is keyed by the port it opens, and names the door.
    let open = state.doors[&DoorKey {
        id: opens_id(0, 22),
        source: source_key(ip(a), false),
    }];
    assert_eq!((open.door, open.expires_ns), (door_id(b"door"), 32 * S));
    // A bystander is still shut out; the door closes after `for`.
    assert_eq!(
        judge(&p, &mut state, &tcp(22, "198.51.100.2"), 3 * S).action,
        action::DROP
    );
    assert_eq!(
        judge(&p, &mut state, &tcp(22, a), 33 * S).action,
        action::DROP
    );
}

#[test]
fn wrong_order_slow_and_retransmitted_knocks() {
    let p = policy(KNOCK);
    let a = "198.51.100.1";
    let opened = |packets: &[(Packet, u64)]| {
        let mut state = DefenceState::default();
        let mut opened: Vec<u32> = Vec::new();
        for (packet, at) in packets {
            let o = judge(&p, &mut state, packet, *at);
            opened.extend(o.bumped.iter().filter(|&&c| c == counter::DOORS_OPENED));
        }
        !opened.is_empty() && judge(&p, &mut state, &tcp(22, a), 6 * S).rule == RULE_DOOR
    };
    assert!(opened(&[
        (udp(7001, a), 0),
        (tcp(7002, a), S),
        (udp(7003, a), 2 * S)
    ]));
    assert!(!opened(&[
        (udp(7001, a), 0),
        (udp(7003, a), S),
        (tcp(7002, a), 2 * S)
    ]));
    assert!(
        !opened(&[(udp(7001, a), 0), (tcp(7002, a), S), (udp(7003, a), 6 * S)]),
        "too slow"
    );
    // Too slow, the next knock removes the progress, unless it is a first knock.
    let mut state = DefenceState::default();
    judge(&p, &mut state, &udp(7001, a), 0);
    judge(&p, &mut state, &tcp(7002, a), 9 * S);
    assert!(state.knocks.is_empty());
    judge(&p, &mut state, &udp(7001, a), 10 * S);
    judge(&p, &mut state, &udp(7001, a), 20 * S);
    let progress: Vec<(u64, u8)> = state
        .knocks
        .values()
        .map(|k| (k.start_ns, k.step))
        .collect();
    assert_eq!(progress, [(20 * S, 1)]);
    assert!(
        opened(&[
            (udp(7001, a), 0),
            (tcp(7002, a), S),
            (tcp(7002, a), S),
            (udp(7003, a), 2 * S)
        ]),
        "a retransmission is ignored"
    );
    assert!(
        opened(&[
            (udp(7001, a), 0),
            (udp(7001, a), S),
            (tcp(7002, a), S),
            (udp(7003, a), 2 * S)
        ]),
        "a repeated first knock restarts"
    );
    // A TCP knock must be a SYN without ACK.
    let ack = Packet {
        tcp_flags: SYN | ACK,
        ..tcp(7002, a)
    };
    assert!(!opened(&[
        (udp(7001, a), 0),
        (ack, S),
        (udp(7003, a), 2 * S)
    ]));
    // Another source's knocks do not combine with ours.
    let b = "198.51.100.2";
    assert!(!opened(&[
        (udp(7001, a), 0),
        (tcp(7002, b), S),
        (udp(7003, a), 2 * S)
    ]));
}

#[test]
fn spa_ports_pass_to_the_agent_and_its_doors_open_by_hand() {
    let p = policy(KNOCK);
    let mut state = DefenceState::default();
    let a = "198.51.100.1";
    let o = judge(&p, &mut state, &udp(62201, a), 0);
    assert_eq!(
        verdict(&o),
        (action::ALLOW, RULE_SPA, counter::ALLOW_SPA, reason::SPA)
    );
    assert_eq!(judge(&p, &mut state, &tcp(2222, a), 0).action, action::DROP);
    state.open_door(&p.doors[1], ip(a), S);
    assert_eq!(judge(&p, &mut state, &tcp(2222, a), 2 * S).rule, RULE_DOOR);
    assert_eq!(
        judge(&p, &mut state, &tcp(2222, a), 32 * S).action,
        action::DROP
    );
}

#[test]
fn replies_and_audit_mode() {
    let p = policy(SCAN);
    let mut state = DefenceState::default();
    let reply = Packet {
        reply: true,
        tcp_flags: SYN | ACK,
        ..tcp(5, "198.51.100.7")
    };
    let o = judge(&p, &mut state, &reply, S);
    assert_eq!(
        verdict(&o),
        (
            action::ALLOW,
            RULE_REPLY,
            counter::ALLOW_REPLY,
            reason::NONE
        )
    );
    assert!(
        state.scan.is_empty(),
        "replies never count for the scan guard"
    );

    let audit = policy(&format!("{SCAN}enforce: false\n"));
    let mut state = DefenceState::default();
    let outcomes: Vec<Outcome> = (1..=4)
        .map(|port| judge(&audit, &mut state, &tcp(port, "198.51.100.7"), S))
        .collect();
    assert_eq!(outcomes[0].action, action::WOULD_DROP);
    assert_eq!(
        outcomes[0].counter,
        counter::would_drop(counter::DROP_DEFAULT)
    );
    assert_eq!(outcomes[2].bumped, [counter::SCAN_BLOCKS]);
    assert_eq!(
        outcomes[3].counter,
        counter::would_drop(counter::DROP_BLOCKED)
    );
}
