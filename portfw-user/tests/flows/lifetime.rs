//! How long flows live and what happens without them: idle flows expire and busy ones are
//! refreshed, `replies: drop` ignores the table, and a full table evicts and fails closed.

use std::time::Duration;

use portfw_common::{
    counter::{ALLOW_REPLY, DROP_DEFAULT, FLOWS_CREATED, ICMP_DROP},
    flow_map_entries, flow_state,
};

use crate::{
    HOST, Rig, STATELESS,
    common::{
        builder::{
            ICMP_ECHO_REPLY, ICMPV6_ECHO_REPLY, echo, icmp_error, proto, tcp_flag, tcp_seg,
            udp_from,
        },
        flow_table::{CLOCK_TICK_NS, monotonic_ns},
        reference::xdp_name,
    },
    fam, icmp_proto, inbound, key, outbound, possible_cpus, unreachable,
};

#[test]
fn idle_flows_expire_and_busy_ones_are_refreshed() {
    let mut rig = Rig::new(HOST);
    let secs = Duration::from_secs;
    for v6 in [false, true] {
        let f = fam(v6);
        rig.clear();
        let udp = |port| key(v6, proto::UDP, port, 53);
        rig.seed(udp(45030), flow_state::OPEN, secs(57));
        rig.seed(udp(45031), flow_state::OPEN, secs(63));
        rig.passes(
            ALLOW_REPLY,
            &format!("{f} UDP idle 57 s of 60"),
            inbound(v6, udp_from(53, 45030)),
        );
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} UDP idle 63 s of 60"),
            inbound(v6, udp_from(53, 45031)),
        );
        let tcp = |port| key(v6, proto::TCP, port, 80);
        rig.seed(tcp(45032), flow_state::ESTABLISHED, secs(1800));
        rig.seed(tcp(45033), flow_state::CLOSING, secs(13));
        rig.seed(tcp(45034), flow_state::SYN_SENT, secs(13));
        rig.seed(tcp(45035), flow_state::SYN_SENT, secs(7));
        rig.seed(tcp(45036), flow_state::ESTABLISHED, secs(3603));
        let seg = |port, flags| inbound(v6, tcp_seg(80, port, flags));
        rig.passes(
            ALLOW_REPLY,
            &format!("{f} established idle 30 min of 1 h"),
            seg(45032, tcp_flag::ACK),
        );
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} established idle past 1 h"),
            seg(45036, tcp_flag::ACK),
        );
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} closing idle 13 s of 10"),
            seg(45033, tcp_flag::ACK),
        );
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} SYN sent 13 s ago, closing timeout 10 s"),
            seg(45034, tcp_flag::SYN_ACK),
        );
        rig.passes(
            ALLOW_REPLY,
            &format!("{f} SYN sent 7 s ago"),
            seg(45035, tcp_flag::SYN_ACK),
        );
        let (ping, pong) = (
            key(v6, icmp_proto(v6), 0x6161, 0),
            key(v6, icmp_proto(v6), 0x6262, 0),
        );
        rig.seed(ping, flow_state::OPEN, secs(27));
        rig.seed(pong, flow_state::OPEN, secs(33));
        let reply = if v6 {
            ICMPV6_ECHO_REPLY
        } else {
            ICMP_ECHO_REPLY
        };
        rig.passes(
            ALLOW_REPLY,
            &format!("{f} echo idle 27 s of 30"),
            inbound(v6, echo(v6, reply, 0x6161)),
        );
        rig.drops(
            ICMP_DROP,
            &format!("{f} echo idle 33 s of 30"),
            inbound(v6, echo(v6, reply, 0x6262)),
        );
        // A reply refreshes a stale timestamp, but not one younger than a second.
        rig.seed(udp(45037), flow_state::OPEN, Duration::from_millis(300));
        let young = rig.flow(&udp(45037)).expect("seeded").seen_ns;
        rig.passes(
            ALLOW_REPLY,
            &format!("{f} fresh flow"),
            inbound(v6, udp_from(53, 45037)),
        );
        assert_eq!(
            rig.flow(&udp(45037)).expect("seeded").seen_ns,
            young,
            "{f}: a timestamp younger than a second is left alone"
        );
        rig.seed(udp(45038), flow_state::OPEN, secs(5));
        let t0 = monotonic_ns();
        rig.passes(
            ALLOW_REPLY,
            &format!("{f} stale flow"),
            inbound(v6, udp_from(53, 45038)),
        );
        let seen = rig.flow(&udp(45038)).expect("seeded").seen_ns;
        assert!(
            seen + CLOCK_TICK_NS >= t0,
            "{f}: a reply refreshes a stale timestamp ({seen} < {t0})"
        );
        // The expired flow is not refreshed by the reply it dropped.
        let stale = rig.flow(&udp(45031)).expect("seeded").seen_ns;
        assert!(
            monotonic_ns() - stale > secs(60).as_nanos() as u64,
            "{f}: a dropped reply must not revive its flow"
        );
    }
    rig.finish();
}

#[test]
fn replies_drop_ignores_the_table() {
    let mut rig = Rig::new(STATELESS);
    let recent = Duration::from_secs(1);
    for v6 in [false, true] {
        let f = fam(v6);
        rig.clear();
        rig.seed(key(v6, proto::UDP, 45040, 53), flow_state::OPEN, recent);
        rig.seed(
            key(v6, proto::TCP, 45041, 80),
            flow_state::ESTABLISHED,
            recent,
        );
        rig.seed(key(v6, icmp_proto(v6), 0x7171, 0), flow_state::OPEN, recent);
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} UDP reply"),
            inbound(v6, udp_from(53, 45040)),
        );
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} TCP reply"),
            inbound(v6, tcp_seg(80, 45041, tcp_flag::PSH_ACK)),
        );
        let reply = if v6 {
            ICMPV6_ECHO_REPLY
        } else {
            ICMP_ECHO_REPLY
        };
        rig.drops(
            ICMP_DROP,
            &format!("{f} echo reply"),
            inbound(v6, echo(v6, reply, 0x7171)),
        );
        let (kind, code) = unreachable(v6);
        let quote = outbound(v6, udp_from(45040, 53)).datagram();
        rig.drops(
            ICMP_DROP,
            &format!("{f} unreachable about the flow"),
            inbound(v6, icmp_error(v6, kind, code, &quote)),
        );
    }
    rig.finish();
}

#[test]
fn a_full_table_evicts_and_fails_closed() {
    const MAX: u32 = 16;
    const FLOWS: u16 = 3000;
    let mut rig = Rig::sized(MAX, HOST);
    let capacity = flow_map_entries(MAX, possible_cpus()) as usize;
    let created = rig.counter(FLOWS_CREATED);
    for i in 0..FLOWS {
        let frame = outbound(false, udp_from(20000 + i, 53)).build();
        rig.loaded.test_run_egress(&frame).expect("egress test run");
    }
    assert_eq!(
        rig.counter(FLOWS_CREATED) - created,
        u64::from(FLOWS),
        "every new flow is counted, evicted or not"
    );
    let held = rig.table().len();
    assert!(
        held > 0 && held <= capacity,
        "{held} entries in a table of {capacity}"
    );
    // Which flows go is the kernel LRU's choice: a flow recorded on one CPU waits in that
    // CPU's pending list, out of reach of the others' evictions. Take one that went, and the
    // newest that stayed.
    let port = |i: u16| key(false, proto::UDP, 20000 + i, 53);
    let gone = (0..FLOWS)
        .find(|&i| rig.flow(&port(i)).is_none())
        .expect("a flow was evicted");
    let kept = (0..FLOWS)
        .rev()
        .find(|&i| rig.flow(&port(i)).is_some())
        .expect("a flow is held");
    rig.drops(
        DROP_DEFAULT,
        "a reply to an evicted flow",
        inbound(false, udp_from(53, 20000 + gone)),
    );
    rig.passes(
        ALLOW_REPLY,
        "a reply to a held flow",
        inbound(false, udp_from(53, 20000 + kept)),
    );
    rig.finish();
}

#[test]
fn a_busy_flow_outlives_a_one_second_timeout() {
    // docs/policy.md: a timeout is how long a flow lives after its last packet, and
    // durations start at 1s. Replies 600 ms apart keep a flow busy, so it must stay live.
    let mut rig = Rig::new(&HOST.replace("udp-timeout: 60s", "udp-timeout: 1s"));
    let flow = key(false, proto::UDP, 45050, 53);
    rig.seed(flow, flow_state::OPEN, Duration::from_millis(600));
    let reply = inbound(false, udp_from(53, 45050)).build();
    let mut verdicts = Vec::new();
    for _ in 0..3 {
        verdicts.push(xdp_name(rig.loaded.test_run(&reply).expect("test run")));
        std::thread::sleep(Duration::from_millis(600));
    }
    assert_eq!(
        verdicts,
        ["PASS", "PASS", "PASS"],
        "replies 600 ms apart under udp-timeout: 1s (the flow's timestamp is refreshed only \
         when more than FLOW_REFRESH_NS = 1 s stale, so with a 1 s timeout it expires first)"
    );
}
