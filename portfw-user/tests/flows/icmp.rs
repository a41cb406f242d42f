//! ICMP through the flow table: related errors pass under `icmp: drop` unless their quote is
//! truncated, and echo replies must match the identifier.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use portfw_common::{
    counter::{ALLOW_RELATED, ALLOW_REPLY, ICMP_ALLOW, ICMP_DROP},
    flow_state,
};

use crate::{
    HOST, Rig,
    common::builder::{
        Ext, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, echo,
        icmp_error, proto, tcp_flag, tcp_seg, udp_from,
    },
    fam, from, inbound, key, outbound, stranger, unreachable,
};

#[test]
fn related_icmp_errors_pass_under_icmp_drop_but_not_truncated_quotes() {
    let mut rig = Rig::new(HOST);
    for v6 in [false, true] {
        let f = fam(v6);
        rig.clear();
        let query = outbound(v6, udp_from(45020, 53));
        rig.send(&format!("{f} query"), &query);
        let quote = query.datagram();
        let hlen = if v6 { 40 } else { 20 };
        let (kind, code) = unreachable(v6);
        let error = |quoted: &[u8]| inbound(v6, icmp_error(v6, kind, code, quoted));
        rig.passes(
            ALLOW_RELATED,
            &format!("{f} port unreachable"),
            error(&quote),
        );
        rig.passes(
            ALLOW_RELATED,
            &format!("{f} quote cut to the header and 8 bytes"),
            error(&quote[..hlen + 8]),
        );
        for cut in [hlen + 7, hlen + 4, hlen, hlen - 1, 12, 0] {
            rig.drops(
                ICMP_DROP,
                &format!("{f} quote cut to {cut} bytes is about nothing"),
                error(&quote[..cut]),
            );
        }
        let router: IpAddr = if v6 {
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into()
        } else {
            Ipv4Addr::new(192, 0, 2, 1).into()
        };
        let exceeded = if v6 { 3 } else { 11 };
        rig.passes(
            ALLOW_RELATED,
            &format!("{f} time exceeded from a router on the path"),
            from(inbound(v6, icmp_error(v6, exceeded, 0, &quote)), router),
        );
        let problem = if v6 { 4 } else { 12 };
        rig.passes(
            ALLOW_RELATED,
            &format!("{f} parameter problem"),
            inbound(v6, icmp_error(v6, problem, 0, &quote)),
        );
        let other_port = outbound(v6, udp_from(45020, 54)).datagram();
        rig.drops(
            ICMP_DROP,
            &format!("{f} quote of another flow"),
            error(&other_port),
        );
        let reversed = inbound(v6, udp_from(53, 45020)).datagram();
        rig.drops(
            ICMP_DROP,
            &format!("{f} quote of the reply direction"),
            error(&reversed),
        );
        let fragment = outbound(v6, udp_from(45020, 53))
            .fragment(8, false)
            .datagram();
        rig.drops(
            ICMP_DROP,
            &format!("{f} quote of a non-first fragment"),
            error(&fragment),
        );
        let other_family = outbound(!v6, udp_from(45020, 53)).datagram();
        rig.drops(
            ICMP_DROP,
            &format!("{f} quote of the other IP version"),
            error(&other_family),
        );
        // Shorter than the 8-byte ICMP header: about nothing.
        rig.drops(
            ICMP_DROP,
            &format!("{f} error cut inside its header"),
            inbound(v6, icmp_error(v6, kind, code, &[]).cut(6)),
        );
        if v6 {
            let with_ext = outbound(true, udp_from(45020, 53))
                .ext(Ext::hop_by_hop())
                .datagram();
            rig.drops(
                ICMP_DROP,
                "v6 quote with an extension header is about nothing",
                error(&with_ext),
            );
            rig.passes(
                ALLOW_RELATED,
                "v6 error after an outer hop-by-hop header",
                error(&quote).ext(Ext::hop_by_hop()),
            );
            // Packet too big is essential: the setting passes it, not the table.
            rig.passes(
                ICMP_ALLOW,
                "v6 packet too big",
                inbound(true, icmp_error(true, 2, 0, &quote)),
            );
        } else {
            let optioned = outbound(false, udp_from(45020, 53)).options(1);
            let optioned_quote = optioned.datagram();
            rig.passes(
                ALLOW_RELATED,
                "v4 quote with IP options",
                error(&optioned_quote),
            );
            rig.passes(
                ALLOW_RELATED,
                "v4 quote with IP options cut to its header and 8 bytes",
                error(&optioned_quote[..24 + 8]),
            );
            rig.drops(
                ICMP_DROP,
                "v4 quote with IP options cut a byte short",
                error(&optioned_quote[..24 + 7]),
            );
            let lying = outbound(false, udp_from(45020, 53))
                .v4(|ip| ip.total_len = Some(1500))
                .datagram();
            rig.passes(
                ALLOW_RELATED,
                "v4 quote whose total length is the original datagram's",
                error(&lying),
            );
            // Fragmentation needed is essential: the setting passes it, not the table.
            rig.passes(
                ICMP_ALLOW,
                "v4 fragmentation needed",
                inbound(false, icmp_error(false, 3, 4, &quote)),
            );
        }
        // A TCP flow still waiting for its SYN-ACK, and our echo request.
        let syn = outbound(v6, tcp_seg(45021, 80, tcp_flag::SYN));
        rig.send(&format!("{f} SYN"), &syn);
        rig.passes(
            ALLOW_RELATED,
            &format!("{f} unreachable about our SYN"),
            error(&syn.datagram()),
        );
        let request = if v6 {
            ICMPV6_ECHO_REQUEST
        } else {
            ICMP_ECHO_REQUEST
        };
        let ping = outbound(v6, echo(v6, request, 0x4444));
        rig.send(&format!("{f} ping"), &ping);
        rig.passes(
            ALLOW_RELATED,
            &format!("{f} unreachable about our ping"),
            error(&ping.datagram()),
        );
        let other_ping = outbound(v6, echo(v6, request, 0x4445)).datagram();
        rig.drops(
            ICMP_DROP,
            &format!("{f} unreachable about another ping"),
            error(&other_ping),
        );
        // An expired flow has nothing related.
        rig.seed(
            key(v6, proto::UDP, 45020, 53),
            flow_state::OPEN,
            Duration::from_secs(65),
        );
        rig.drops(
            ICMP_DROP,
            &format!("{f} about an expired flow"),
            error(&quote),
        );
    }
    rig.finish();
}

#[test]
fn echo_replies_match_the_identifier() {
    let mut rig = Rig::new(HOST);
    for v6 in [false, true] {
        let f = fam(v6);
        rig.clear();
        let (request, reply) = if v6 {
            (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY)
        } else {
            (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY)
        };
        rig.send(
            &format!("{f} ping"),
            &outbound(v6, echo(v6, request, 0x5151)),
        );
        rig.passes(
            ALLOW_REPLY,
            &format!("{f} echo reply"),
            inbound(v6, echo(v6, reply, 0x5151)),
        );
        rig.drops(
            ICMP_DROP,
            &format!("{f} echo reply with another identifier"),
            inbound(v6, echo(v6, reply, 0x5152)),
        );
        rig.drops(
            ICMP_DROP,
            &format!("{f} echo reply from another address"),
            from(inbound(v6, echo(v6, reply, 0x5151)), stranger(v6)),
        );
        rig.drops(
            ICMP_DROP,
            &format!("{f} an echo request is no reply"),
            inbound(v6, echo(v6, request, 0x5151)),
        );
        rig.drops(
            ICMP_DROP,
            &format!("{f} echo reply cut before its identifier"),
            inbound(v6, echo(v6, reply, 0x5151).cut(6)),
        );
    }
    rig.finish();
}
