//! The flow table and the frames aimed at it: random `replies:` and `flows:` settings, seeded
//! tables of every protocol and state, and replies, near misses and ICMP errors quoting the
//! host's packets of its flows.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use portfw::{loader::Loaded, policy::Policy};
use portfw_lab::{Rng, policies::port};

use crate::{
    MAX_FRAME,
    common::{
        builder::{
            Ext, Frame, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST,
            L4, TPID_8021AD, TPID_8021Q, V4_DST, V4_SRC, V6_DST, V6_SRC, echo, icmp_error, proto,
            tcp_flag,
        },
        flow_table::{self, state_byte, to_key},
        reference::{self, FlowId, FlowState, FlowTable},
    },
    differential::frames::{mutate, source4, source6},
};

/// Timeouts the policies draw. The shortest leaves a live flow at least 15 s of slack (a live
/// flow is seeded at most half its timeout ago), far more than a batch takes.
const TIMEOUTS: [&str; 10] = [
    "30s", "45s", "1m", "2m", "5m", "10m", "1h", "6h", "1d", "365d",
];

/// `replies:` and `flows:` lines for the front of a random policy.
pub fn replies_yaml(rng: &Rng) -> String {
    let mut y = String::new();
    match rng.weighted(&[60, 25, 15]) {
        0 => {} // the default, allow
        1 => y.push_str("replies: drop\n"),
        _ => y.push_str("replies: allow\n"),
    }
    if rng.percent(60) {
        y.push_str("flows:\n");
        for key in ["tcp-timeout", "tcp-closing", "udp-timeout", "icmp-timeout"] {
            if rng.percent(60) {
                y.push_str(&format!("  {key}: {}\n", rng.pick(&TIMEOUTS)));
            }
        }
        if rng.percent(20) {
            y.push_str(&format!("  max: {}\n", rng.pick(&[16, 1000, 262144])));
        }
    }
    y
}

/// One flow seeded into the table: its last packet was `idle` ago.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seeded {
    pub id: FlowId,
    pub state: FlowState,
    live: bool,
    idle: Duration,
}

fn icmp_proto(v6: bool) -> u8 {
    if v6 { proto::ICMPV6 } else { proto::ICMP }
}

/// A flow the host might have opened: mostly from its own address to the sources the main
/// stream sends from, to the ports it aims at, so that some of those frames are replies too.
fn random_flow_id(rng: &Rng) -> FlowId {
    let v6 = rng.percent(50);
    let protocol = match rng.weighted(&[35, 30, 8, 7, 20]) {
        0 => proto::TCP,
        1 => proto::UDP,
        2 => proto::SCTP,
        3 => proto::UDPLITE,
        _ => icmp_proto(v6),
    };
    let local: IpAddr = match (v6, rng.percent(85)) {
        (false, true) => V4_DST.into(),
        (false, false) => Ipv4Addr::new(198, 18, 0, rng.u8()).into(),
        (true, true) => V6_DST.into(),
        (true, false) => Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, rng.u16()).into(),
    };
    let remote: IpAddr = if v6 {
        source6(rng).into()
    } else {
        source4(rng).into()
    };
    let (local_port, remote_port) = if protocol == icmp_proto(v6) {
        // The main stream's ICMP messages carry identifier 1.
        (rng.pick(&[1, 1, rng.u16()]), 0)
    } else {
        let local_port = match rng.weighted(&[50, 30, 20]) {
            0 => port(rng),
            1 => rng.range(32768, 60999) as u16,
            _ => rng.u16(),
        };
        let remote_port = if rng.percent(45) { 40000 } else { port(rng) };
        (local_port, remote_port)
    };
    FlowId {
        protocol,
        local,
        remote,
        local_port,
        remote_port,
    }
}

/// A random flow table for `policy`: flows of every protocol and state, most of them live
/// (seeded at most half their timeout ago), the rest idle at least a minute past it.
pub fn random_flows(rng: &Rng, policy: &Policy) -> Vec<Seeded> {
    let count = rng.pick(&[0, 1, 3, 6, 12, 24]);
    (0..count)
        .map(|_| {
            let id = random_flow_id(rng);
            let state = if id.protocol == proto::TCP {
                rng.pick(&[
                    FlowState::SynSent,
                    FlowState::Established,
                    FlowState::Closing,
                ])
            } else {
                FlowState::Open
            };
            let timeout = reference::flow_timeout(policy, id.protocol, state);
            let live = rng.percent(80);
            let idle = if live {
                Duration::from_nanos(rng.below(timeout.as_nanos() as u64 / 2))
            } else {
                timeout + Duration::from_secs(60) + Duration::from_secs(rng.below(3600))
            };
            Seeded {
                id,
                state,
                live,
                idle,
            }
        })
        .collect()
}

/// The reference's table of the seeded flows (a later flow with the same key replaces an
/// earlier one, as an insert into the kernel's map does).
pub fn model(flows: &[Seeded]) -> FlowTable {
    let mut table = FlowTable::default();
    for f in flows {
        table.insert(f.id, f.state, f.live);
    }
    table
}

pub fn seed_table(loaded: &mut Loaded, flows: &[Seeded]) {
    flow_table::clear(loaded);
    for f in flows {
        flow_table::seed(loaded, to_key(&f.id), state_byte(f.state), f.idle);
    }
}

/// An address next to `a`: the last byte changed.
fn neighbour(rng: &Rng, a: IpAddr) -> IpAddr {
    let delta = rng.range(1, 255) as u8;
    match a {
        IpAddr::V4(a) => {
            let mut o = a.octets();
            o[3] ^= delta;
            Ipv4Addr::from(o).into()
        }
        IpAddr::V6(a) => {
            let mut o = a.octets();
            o[15] ^= delta;
            Ipv6Addr::from(o).into()
        }
    }
}

/// `id` with one field off.
fn near_miss(rng: &Rng, mut id: FlowId) -> FlowId {
    let nudge = |p: u16| {
        if rng.percent(50) {
            p.wrapping_add(1)
        } else {
            p.wrapping_sub(1)
        }
    };
    match rng.below(6) {
        0 => id.remote = neighbour(rng, id.remote),
        1 => id.local = neighbour(rng, id.local),
        2 => id.remote_port = nudge(id.remote_port),
        3 => id.local_port = nudge(id.local_port),
        4 => (id.local_port, id.remote_port) = (id.remote_port, id.local_port),
        _ => {
            id.protocol = match id.protocol {
                proto::TCP => proto::UDP,
                proto::UDP => rng.pick(&[proto::UDPLITE, proto::TCP]),
                proto::UDPLITE => proto::UDP,
                proto::SCTP => proto::TCP,
                // Echo: the identifier is the field to miss.
                other => {
                    id.local_port = nudge(id.local_port);
                    other
                }
            }
        }
    }
    id
}

/// A frame from `src` to `dst` (of one family) carrying `l4`.
fn between(src: IpAddr, dst: IpAddr, l4: L4) -> Frame {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => crate::common::builder::v4(l4).v4(|ip| {
            ip.src = s;
            ip.dst = d;
        }),
        (IpAddr::V6(s), IpAddr::V6(d)) => crate::common::builder::v6(l4).v6(|ip| {
            ip.src = s;
            ip.dst = d;
        }),
        _ => panic!("addresses of two families: {src} -> {dst}"),
    }
}

/// The transport header of a packet of flow `id` from `src_port` to `dst_port`; `request`
/// says which way an echo goes.
fn flow_l4(rng: &Rng, id: &FlowId, src_port: u16, dst_port: u16, request: bool) -> L4 {
    let v6 = id.local.is_ipv6();
    match id.protocol {
        proto::TCP => L4::Tcp {
            src: src_port,
            dst: dst_port,
            flags: rng.pick(&[
                tcp_flag::SYN_ACK,
                tcp_flag::ACK,
                tcp_flag::PSH_ACK,
                tcp_flag::RST,
                tcp_flag::RST_ACK,
                tcp_flag::FIN_ACK,
                tcp_flag::SYN,
                tcp_flag::FIN,
                0,
                rng.u8(),
            ]),
            doff: None,
            options: Vec::new(),
        },
        proto::UDP => L4::Udp {
            src: src_port,
            dst: dst_port,
        },
        proto::UDPLITE => L4::UdpLite {
            src: src_port,
            dst: dst_port,
        },
        proto::SCTP => L4::Sctp {
            src: src_port,
            dst: dst_port,
        },
        _ => {
            let (want, other) = match (v6, request) {
                (false, true) => (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY),
                (false, false) => (ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST),
                (true, true) => (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY),
                (true, false) => (ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST),
            };
            let kind = match rng.weighted(&[85, 10, 5]) {
                0 => want,
                1 => other,
                _ => rng.pick(&[3, 13, 1, 135]),
            };
            // The identifier is the flow's local "port".
            echo(v6, kind, id.local_port)
        }
    }
}

/// An ICMP error about a packet the host sent on flow `id`, its quote cut at or around the
/// bounds the kernel checks.
fn related_frame(rng: &Rng, id: &FlowId) -> Frame {
    let v6 = id.local.is_ipv6();
    let mut quoted = between(
        id.local,
        id.remote,
        flow_l4(rng, id, id.local_port, id.remote_port, true),
    );
    let mut header = if v6 { 40 } else { 20 };
    match rng.weighted(&[70, 12, 6, 6, 6]) {
        0 => {}
        1 if !v6 => {
            let words = rng.range(1, 4) as u8;
            quoted = quoted.options(words);
            header += usize::from(words) * 4;
        }
        1 => {
            quoted = quoted.ext(Ext::hop_by_hop());
            header += 8;
        }
        2 => quoted = quoted.fragment(rng.pick(&[1, 8, 185]), rng.percent(50)),
        3 if !v6 => quoted = quoted.v4(|ip| ip.total_len = Some(rng.u16())),
        3 => quoted = quoted.v6(|ip| ip.payload_len = Some(rng.u16())),
        // A quote of the other family.
        _ => {
            let (s, d): (IpAddr, IpAddr) = if v6 {
                (V4_DST.into(), V4_SRC.into())
            } else {
                (V6_DST.into(), V6_SRC.into())
            };
            quoted = between(
                s,
                d,
                L4::Udp {
                    src: id.local_port,
                    dst: id.remote_port,
                },
            );
            header = if v6 { 20 } else { 40 };
        }
    }
    let mut quote = quoted.datagram();
    let cut = match rng.weighted(&[35, 20, 10, 10, 25]) {
        0 => quote.len(),
        1 => header + 8,
        2 => header + 7,
        3 => header + rng.range(0, 6),
        _ => rng.range(0, quote.len()),
    };
    quote.truncate(cut);
    let (kind, code) = if v6 {
        rng.pick(&[
            (1, 0),
            (1, 3),
            (1, 4),
            (2, 0),
            (3, 0),
            (3, 1),
            (4, 0),
            (4, 1),
            (128, 0),
            (129, 0),
            (135, 0),
        ])
    } else {
        rng.pick(&[
            (3, 0),
            (3, 1),
            (3, 3),
            (3, 4),
            (3, 13),
            (11, 0),
            (11, 1),
            (12, 0),
            (0, 0),
            (8, 0),
            (5, 1),
            (4, 0),
        ])
    };
    // Errors come from the peer or from any router on the path.
    let from = if rng.percent(60) {
        id.remote
    } else if v6 {
        source6(rng).into()
    } else {
        source4(rng).into()
    };
    between(from, id.local, icmp_error(v6, kind, code, &quote))
}

/// A frame aimed at the flow table: a reply to one of its flows (or, now and then, to a flow
/// it does not hold), exactly or with one field off, or an ICMP error about one; sometimes
/// tagged, with IP options or extension headers, padded or mutated.
pub fn aimed_frame(rng: &Rng, flows: &[Seeded]) -> Vec<u8> {
    let target = if flows.is_empty() || rng.percent(5) {
        random_flow_id(rng)
    } else {
        rng.pick(flows).id
    };
    let id = if rng.percent(30) {
        near_miss(rng, target)
    } else {
        target
    };
    let v6 = id.local.is_ipv6();
    let mut frame = if rng.percent(70) {
        between(
            id.remote,
            id.local,
            flow_l4(rng, &id, id.remote_port, id.local_port, false),
        )
    } else {
        related_frame(rng, &id)
    };
    if rng.percent(10) {
        frame = frame.tag(rng.pick(&[TPID_8021Q, TPID_8021AD]), rng.u16());
    }
    if rng.percent(10) {
        frame = if v6 {
            frame.ext(rng.pick(&[
                Ext::hop_by_hop as fn() -> Ext,
                Ext::dest_opts,
                || Ext::fragment(0, true),
            ])())
        } else {
            frame.options(rng.range(1, 3) as u8)
        };
    }
    if rng.percent(5) {
        frame = frame.pad(rng.range(1, 20));
    }
    let mut bytes = frame.build();
    if rng.percent(8) {
        mutate(rng, &mut bytes);
    }
    if bytes.len() < 14 {
        bytes.resize(14, 0);
    }
    bytes.truncate(MAX_FRAME);
    bytes
}
