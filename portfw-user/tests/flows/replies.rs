//! Replies that match a recorded flow pass and near misses drop; TCP replies follow the
//! handshake.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use portfw_common::{
    counter::{ALLOW_REPLY, ALLOW_RULE, DROP_DEFAULT},
    flow_state,
};

use crate::{
    HOST, Rig,
    common::builder::{Ext, L4, TPID_8021Q, proto, tcp_flag, tcp_seg, udp_from},
    fam, from, inbound, key, outbound, stranger, to,
};

#[test]
fn replies_pass_and_near_misses_drop() {
    let mut rig = Rig::new(HOST);
    for v6 in [false, true] {
        let f = fam(v6);
        rig.clear();
        rig.send(&format!("{f} query"), &outbound(v6, udp_from(45000, 53)));
        rig.passes(
            ALLOW_REPLY,
            &format!("{f} the reply"),
            inbound(v6, udp_from(53, 45000)),
        );
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} right port from another address"),
            from(inbound(v6, udp_from(53, 45000)), stranger(v6)),
        );
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} right address from another port"),
            inbound(v6, udp_from(54, 45000)),
        );
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} to another local port"),
            inbound(v6, udp_from(53, 45001)),
        );
        let elsewhere: IpAddr = if v6 {
            Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 9).into()
        } else {
            Ipv4Addr::new(198, 18, 0, 9).into()
        };
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} to another local address"),
            to(inbound(v6, udp_from(53, 45000)), elsewhere),
        );
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} UDP-Lite on the UDP flow's ports"),
            inbound(
                v6,
                L4::UdpLite {
                    src: 53,
                    dst: 45000,
                },
            ),
        );
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} TCP on the UDP flow's ports"),
            inbound(v6, tcp_seg(53, 45000, tcp_flag::ACK)),
        );
        rig.passes(
            ALLOW_REPLY,
            &format!("{f} the reply behind a VLAN tag"),
            inbound(v6, udp_from(53, 45000)).tag(TPID_8021Q, 10),
        );
        if v6 {
            rig.passes(
                ALLOW_REPLY,
                "v6 the reply after a destination-options header",
                inbound(true, udp_from(53, 45000)).ext(Ext::dest_opts()),
            );
        }
        // Replies to a port the rules allow are the rule's: the table is not read.
        rig.send(
            &format!("{f} from ssh"),
            &outbound(v6, tcp_seg(22, 40000, tcp_flag::SYN)),
        );
        rig.passes(
            ALLOW_RULE,
            &format!("{f} SYN-ACK to an allowed port"),
            inbound(v6, tcp_seg(40000, 22, tcp_flag::SYN_ACK)),
        );
        // SCTP and UDP-Lite flows pass their replies the same way.
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
        rig.passes(
            ALLOW_REPLY,
            &format!("{f} SCTP reply"),
            inbound(
                v6,
                L4::Sctp {
                    src: 2905,
                    dst: 45006,
                },
            ),
        );
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} SCTP reply from another port"),
            inbound(
                v6,
                L4::Sctp {
                    src: 2906,
                    dst: 45006,
                },
            ),
        );
    }
    rig.finish();
}

#[test]
fn tcp_replies_follow_the_handshake() {
    let mut rig = Rig::new(HOST);
    for v6 in [false, true] {
        let f = fam(v6);
        rig.clear();
        let web = key(v6, proto::TCP, 45010, 80);
        let seg = |flags| inbound(v6, tcp_seg(80, 45010, flags));
        rig.send(
            &format!("{f} SYN"),
            &outbound(v6, tcp_seg(45010, 80, tcp_flag::SYN)),
        );
        for (flags, name) in [
            (tcp_flag::ACK, "ACK"),
            (tcp_flag::FIN_ACK, "FIN-ACK"),
            (tcp_flag::PSH_ACK, "data"),
            (tcp_flag::SYN, "a bare SYN"),
        ] {
            rig.drops(
                DROP_DEFAULT,
                &format!("{f} {name} before the SYN-ACK"),
                seg(flags),
            );
        }
        rig.state(&format!("{f} still waiting"), &web, flow_state::SYN_SENT);
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} SYN-ACK from another address"),
            from(seg(tcp_flag::SYN_ACK), stranger(v6)),
        );
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} SYN-ACK from another port"),
            inbound(v6, tcp_seg(81, 45010, tcp_flag::SYN_ACK)),
        );
        rig.passes(
            ALLOW_REPLY,
            &format!("{f} the SYN-ACK"),
            seg(tcp_flag::SYN_ACK),
        );
        rig.state(
            &format!("{f} our ACK is what establishes"),
            &web,
            flow_state::SYN_SENT,
        );
        rig.send(
            &format!("{f} ACK"),
            &outbound(v6, tcp_seg(45010, 80, tcp_flag::ACK)),
        );
        rig.state(&format!("{f} established"), &web, flow_state::ESTABLISHED);
        rig.passes(ALLOW_REPLY, &format!("{f} data"), seg(tcp_flag::PSH_ACK));
        rig.passes(ALLOW_REPLY, &format!("{f} ACK"), seg(tcp_flag::ACK));
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} a bare SYN on the flow"),
            seg(tcp_flag::SYN),
        );
        rig.passes(
            ALLOW_REPLY,
            &format!("{f} the remote's FIN"),
            seg(tcp_flag::FIN_ACK),
        );
        rig.state(&format!("{f} FIN closes"), &web, flow_state::CLOSING);
        rig.passes(
            ALLOW_REPLY,
            &format!("{f} the last ACK"),
            seg(tcp_flag::ACK),
        );

        // A refused connection: the RST answers our SYN and closes the flow.
        let refused = key(v6, proto::TCP, 45011, 81);
        rig.send(
            &format!("{f} SYN to 81"),
            &outbound(v6, tcp_seg(45011, 81, tcp_flag::SYN)),
        );
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} RST from another port"),
            inbound(v6, tcp_seg(82, 45011, tcp_flag::RST_ACK)),
        );
        rig.passes(
            ALLOW_REPLY,
            &format!("{f} RST answering our SYN"),
            inbound(v6, tcp_seg(81, 45011, tcp_flag::RST_ACK)),
        );
        rig.state(&format!("{f} RST closes"), &refused, flow_state::CLOSING);

        // No flow, no connected socket (nothing in this namespace has one for these
        // addresses): a SYN-ACK or ACK to a port that sent no SYN is dropped.
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} SYN-ACK without our SYN"),
            inbound(v6, tcp_seg(80, 45012, tcp_flag::SYN_ACK)),
        );
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} ACK without a flow"),
            inbound(v6, tcp_seg(80, 45012, tcp_flag::ACK)),
        );
        rig.expect_table(
            &format!("{f} nothing arriving created a flow"),
            &[(web, flow_state::CLOSING), (refused, flow_state::CLOSING)],
        );
    }
    rig.finish();
}
