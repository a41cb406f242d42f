//! The egress program records the flows the host opens, keyed by the host's side with zeroed
//! padding.

use portfw_common::{counter::FLOWS_CREATED, flow_state};

use crate::{
    HOST, Rig, STATELESS,
    common::{
        builder::{
            Ext, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, L4,
            TPID_8021Q, V4_DST, V4_SRC, arp, echo, proto, tcp_flag, tcp_seg, udp_from,
        },
        flow_table::{CLOCK_TICK_NS, monotonic_ns},
    },
    fam, icmp_proto, key, outbound,
};

#[test]
fn the_egress_program_records_the_flows_the_host_opens() {
    let mut rig = Rig::new(HOST);
    for v6 in [false, true] {
        let f = fam(v6);
        rig.clear();
        let created = rig.counter(FLOWS_CREATED);
        let udp = key(v6, proto::UDP, 45000, 53);
        rig.send(
            &format!("{f} first UDP datagram"),
            &outbound(v6, udp_from(45000, 53)),
        );
        rig.expect_table(&format!("{f} a UDP flow opens"), &[(udp, flow_state::OPEN)]);
        rig.send(
            &format!("{f} second UDP datagram"),
            &outbound(v6, udp_from(45000, 53)),
        );
        rig.expect_table(&format!("{f} the same flow"), &[(udp, flow_state::OPEN)]);
        assert_eq!(
            rig.counter(FLOWS_CREATED),
            created + 1,
            "{f}: one flow created for two datagrams"
        );

        let web = key(v6, proto::TCP, 45001, 80);
        let mut want = vec![(udp, flow_state::OPEN)];
        rig.send(
            &format!("{f} SYN"),
            &outbound(v6, tcp_seg(45001, 80, tcp_flag::SYN)),
        );
        want.push((web, flow_state::SYN_SENT));
        rig.expect_table(&format!("{f} our SYN opens a TCP flow"), &want);
        rig.send(
            &format!("{f} ACK"),
            &outbound(v6, tcp_seg(45001, 80, tcp_flag::ACK)),
        );
        want[1].1 = flow_state::ESTABLISHED;
        rig.expect_table(&format!("{f} our ACK establishes it"), &want);
        rig.send(
            &format!("{f} FIN"),
            &outbound(v6, tcp_seg(45001, 80, tcp_flag::FIN_ACK)),
        );
        want[1].1 = flow_state::CLOSING;
        rig.expect_table(&format!("{f} our FIN closes it"), &want);
        rig.send(
            &format!("{f} SYN again"),
            &outbound(v6, tcp_seg(45001, 80, tcp_flag::SYN)),
        );
        want[1].1 = flow_state::SYN_SENT;
        rig.expect_table(
            &format!("{f} a new SYN on the four-tuple starts over"),
            &want,
        );

        // A connection older than the table is picked up by a segment without SYN/RST/FIN.
        let old = key(v6, proto::TCP, 45002, 443);
        rig.send(
            &format!("{f} mid-stream"),
            &outbound(v6, tcp_seg(45002, 443, tcp_flag::PSH_ACK)),
        );
        want.push((old, flow_state::ESTABLISHED));
        rig.expect_table(
            &format!("{f} a mid-stream segment picks up an old connection"),
            &want,
        );
        for (port, flags, name) in [
            (45003, tcp_flag::SYN_ACK, "SYN-ACK"),
            (45004, tcp_flag::RST, "RST"),
            (45005, tcp_flag::FIN_ACK, "FIN-ACK"),
        ] {
            rig.send(
                &format!("{f} {name}"),
                &outbound(v6, tcp_seg(port, 5000, flags)),
            );
        }
        rig.expect_table(
            &format!("{f} a SYN-ACK, RST or FIN without a flow opens nothing"),
            &want,
        );

        let ping = key(v6, icmp_proto(v6), 0x4242, 0);
        let request = if v6 {
            ICMPV6_ECHO_REQUEST
        } else {
            ICMP_ECHO_REQUEST
        };
        rig.send(
            &format!("{f} echo request"),
            &outbound(v6, echo(v6, request, 0x4242)),
        );
        want.push((ping, flow_state::OPEN));
        let sctp = key(v6, proto::SCTP, 45006, 2905);
        rig.send(
            &format!("{f} SCTP"),
            &outbound(
                v6,
                L4::Sctp {
                    src: 45006,
                    dst: 2905,
                },
            ),
        );
        want.push((sctp, flow_state::OPEN));
        let lite = key(v6, proto::UDPLITE, 45007, 7000);
        rig.send(
            &format!("{f} UDP-Lite"),
            &outbound(
                v6,
                L4::UdpLite {
                    src: 45007,
                    dst: 7000,
                },
            ),
        );
        want.push((lite, flow_state::OPEN));
        rig.expect_table(&format!("{f} echo, SCTP and UDP-Lite flows"), &want);

        // Replies to a port the rules allow pass anyway: nothing is recorded for it. A port
        // with source rules, or the same port of another protocol, may drop: recorded.
        rig.send(
            &format!("{f} SYN from ssh"),
            &outbound(v6, tcp_seg(22, 40000, tcp_flag::SYN)),
        );
        rig.expect_table(&format!("{f} nothing for an allowed port"), &want);
        rig.send(
            &format!("{f} UDP from 22"),
            &outbound(v6, udp_from(22, 40000)),
        );
        want.push((key(v6, proto::UDP, 22, 40000), flow_state::OPEN));
        rig.send(
            &format!("{f} SYN from 8080"),
            &outbound(v6, tcp_seg(8080, 40000, tcp_flag::SYN)),
        );
        want.push((key(v6, proto::TCP, 8080, 40000), flow_state::SYN_SENT));
        rig.expect_table(&format!("{f} ports the rules may drop are recorded"), &want);

        // Through a VLAN tag and (IPv6) an extension header, the same key.
        rig.send(
            &format!("{f} tagged"),
            &outbound(v6, udp_from(45008, 53)).tag(TPID_8021Q, 10),
        );
        want.push((key(v6, proto::UDP, 45008, 53), flow_state::OPEN));
        if v6 {
            rig.send(
                "v6 after a hop-by-hop header",
                &outbound(true, udp_from(45009, 53)).ext(Ext::hop_by_hop()),
            );
            want.push((key(true, proto::UDP, 45009, 53), flow_state::OPEN));
        }
        // What opens nothing: a non-first fragment, a truncated header, ARP, an echo reply.
        rig.send(
            &format!("{f} fragment"),
            &outbound(v6, udp_from(45010, 53)).fragment(8, false),
        );
        rig.send(
            &format!("{f} cut"),
            &outbound(v6, udp_from(45011, 53).cut(6)),
        );
        rig.send("arp", &arp());
        let reply = if v6 {
            ICMPV6_ECHO_REPLY
        } else {
            ICMP_ECHO_REPLY
        };
        rig.send(
            &format!("{f} echo reply"),
            &outbound(v6, echo(v6, reply, 0x4343)),
        );
        rig.expect_table(
            &format!("{f} tagged and extension-header flows, nothing else"),
            &want,
        );
    }

    // Stateless: the egress program records nothing.
    rig.install(STATELESS);
    rig.clear();
    let created = rig.counter(FLOWS_CREATED);
    rig.send("stateless UDP", &outbound(false, udp_from(45000, 53)));
    rig.send(
        "stateless SYN",
        &outbound(true, tcp_seg(45001, 80, tcp_flag::SYN)),
    );
    rig.expect_table("replies: drop records nothing", &[]);
    assert_eq!(
        rig.counter(FLOWS_CREATED),
        created,
        "replies: drop creates no flow"
    );
    rig.finish();
}

#[test]
fn flow_keys_name_the_host_side_with_zeroed_padding() {
    let mut rig = Rig::new(HOST);
    let before = monotonic_ns();
    rig.send("v4 UDP", &outbound(false, udp_from(45000, 53)));
    let after = monotonic_ns();
    let table = rig.table();
    assert_eq!(table.len(), 1, "one entry: {table:?}");
    let (k, v) = table[0];
    assert_eq!((k.family, k.protocol), (4, 17), "{k:?}");
    assert_eq!((k.local_port, k.remote_port), (45000, 53), "{k:?}");
    assert_eq!(k._pad, [0; 2], "{k:?}");
    assert_eq!(&k.local[..4], &V4_DST.octets(), "local is the host: {k:?}");
    assert_eq!(
        &k.remote[..4],
        &V4_SRC.octets(),
        "remote is the peer: {k:?}"
    );
    assert_eq!(k.local[4..], [0; 12], "IPv4 leaves the rest zero: {k:?}");
    assert_eq!(k.remote[4..], [0; 12], "{k:?}");
    assert_eq!(v.state, flow_state::OPEN, "{v:?}");
    assert_eq!(v.created_ns, v.seen_ns, "{v:?}");
    assert!(
        (before.saturating_sub(CLOCK_TICK_NS)..=after).contains(&v.seen_ns),
        "stamped with CLOCK_MONOTONIC (to a tick) during the run: {before} <= {} <= {after}",
        v.seen_ns
    );
    assert_eq!(v._pad, [0; 3], "{v:?}");
    // The lookup by an independently built key (zero padding) finds it: equal flows hash
    // equally.
    assert!(rig.flow(&key(false, proto::UDP, 45000, 53)).is_some());
    rig.finish();
}
