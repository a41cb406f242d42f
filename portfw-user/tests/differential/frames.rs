//! Random frames: VLAN tags, IPv4 and IPv6 headers with options, extension headers and
//! fragments, transports, and byte-level mutations of them.

use std::net::{Ipv4Addr, Ipv6Addr};

use portfw_lab::{Rng, policies::port};

use crate::{
    MAX_FRAME,
    common::builder::{
        ETH_ARP, ETH_IPV4, ETH_IPV6, ETH_LLDP, Ext, Frame, Ipv4, Ipv6, L4, Net, TPID_8021AD,
        TPID_8021Q, TPID_9100, V4_DST, V4_SRC, V6_DST, V6_SRC, proto,
    },
};

fn tags(rng: &Rng) -> Vec<(u16, u16)> {
    let count = rng.weighted(&[55, 20, 17, 6, 2]);
    (0..count)
        .map(|_| {
            let tpid = if rng.percent(88) {
                rng.pick(&[TPID_8021Q, TPID_8021AD, TPID_9100])
            } else {
                // Near misses and strangers: none of these is a VLAN tag to portfw.
                rng.pick(&[0x9200, 0x88e7, 0x8a88, 0x8101, 0x0081, rng.u16()])
            };
            (tpid, rng.u16())
        })
        .collect()
}

fn transport(rng: &Rng, v6: bool) -> L4 {
    let (icmp, wrong_icmp) = if v6 {
        (proto::ICMPV6, proto::ICMP)
    } else {
        (proto::ICMP, proto::ICMPV6)
    };
    let src = match rng.weighted(&[80, 6, 14]) {
        0 => 40000,
        1 => 0,
        _ => port(rng),
    };
    let dst = port(rng);
    let l4 = match rng.weighted(&[30, 18, 8, 7, 12, 2, 9, 6]) {
        0 => {
            let options = if rng.percent(15) {
                rng.bytes(4 * rng.range(1, 10))
            } else {
                Vec::new()
            };
            L4::Tcp {
                src,
                dst,
                flags: rng.u8(),
                doff: rng.percent(10).then(|| rng.range(0, 15) as u8),
                options,
            }
        }
        1 => L4::Udp { src, dst },
        2 => L4::Sctp { src, dst },
        3 => L4::UdpLite { src, dst },
        4 => {
            let kind = rng.pick(&[
                0, 2, 3, 3, 3, 4, 8, 11, 128, 129, 130, 133, 134, 135, 136, 137, 138, 139, 1,
            ]);
            let code = rng.pick(&[0, 0, 3, 4, 4, rng.u8()]);
            if v6 {
                L4::Icmpv6 { kind, code }
            } else {
                L4::Icmp { kind, code }
            }
        }
        5 => L4::Raw {
            protocol: wrong_icmp,
            bytes: rng.bytes(rng.range(0, 12)),
        },
        6 => {
            let protocol = rng.pick(&[
                proto::GRE,
                proto::ESP,
                proto::NONE,
                proto::OSPF,
                proto::AH,
                4,
                41,
                139,
                255,
                rng.u8(),
            ]);
            L4::Raw {
                protocol,
                bytes: rng.bytes(rng.range(0, 40)),
            }
        }
        _ => {
            // A transport header cut short, or random bytes under a transport protocol.
            let protocol = rng.pick(&[proto::TCP, proto::UDP, proto::SCTP, proto::UDPLITE, icmp]);
            let bytes = rng.bytes(rng.range(0, 24));
            L4::Raw { protocol, bytes }
        }
    };
    if rng.percent(5) {
        let n = rng.range(0, 24);
        return l4.cut(n);
    }
    l4
}

/// Source addresses from a few networks, so that rules restricted by source meet both
/// members and strangers.
pub fn source4(rng: &Rng) -> Ipv4Addr {
    match rng.weighted(&[40, 20, 20, 20]) {
        0 => V4_SRC,
        1 => Ipv4Addr::new(10, 1, rng.u8(), rng.u8()),
        2 => Ipv4Addr::new(192, 0, 2, rng.u8()),
        _ => Ipv4Addr::from(rng.next() as u32),
    }
}

pub fn source6(rng: &Rng) -> Ipv6Addr {
    match rng.weighted(&[40, 20, 20, 20]) {
        0 => V6_SRC,
        1 => Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, rng.u16()),
        2 => Ipv6Addr::new(0xfd00, 0, 0, rng.u16(), 0, 0, 0, 1),
        _ => Ipv6Addr::from(u128::from(rng.next()) << 64 | u128::from(rng.next())),
    }
}

fn ipv4(rng: &Rng) -> Ipv4 {
    let options = if rng.percent(30) {
        let words = rng.range(1, 10);
        if rng.percent(50) {
            rng.bytes(words * 4)
        } else {
            vec![1; words * 4]
        }
    } else {
        Vec::new()
    };
    let (frag_offset, more_fragments) = match rng.weighted(&[70, 10, 14, 6]) {
        0 => (0, false),
        1 => (0, true),
        2 => (
            rng.pick(&[2, 3, 185, 0x1fff, rng.u16() & 0x1fff]),
            rng.percent(50),
        ),
        _ => (1, rng.percent(50)),
    };
    let mut ip = Ipv4 {
        src: source4(rng),
        dst: V4_DST,
        version: 4,
        ihl: None,
        options,
        total_len: None,
        dont_fragment: rng.percent(50),
        more_fragments,
        frag_offset,
        protocol: None,
        l4: transport(rng, false),
    };
    if rng.percent(4) {
        ip.ihl = Some(rng.range(0, 15) as u8);
    }
    if rng.percent(6) {
        let natural = 20 + ip.options.len() + ip.l4.bytes().len();
        ip.total_len = Some(match rng.below(4) {
            0 => rng.u16(),
            1 => rng.range(0, 24) as u16,
            2 => (natural + rng.range(1, 8)) as u16,
            _ => natural.saturating_sub(rng.range(1, 12)) as u16,
        });
    }
    if rng.percent(2) {
        ip.version = rng.range(0, 15) as u8;
    }
    if rng.percent(2) {
        ip.protocol = Some(rng.u8());
    }
    ip
}

fn extension(rng: &Rng) -> Ext {
    let hdrlen = |rng: &Rng| match rng.weighted(&[60, 32, 8]) {
        0 => 0,
        1 => rng.range(1, 4) as u8,
        _ => rng.u8(),
    };
    let mut ext = match rng.weighted(&[20, 15, 20, 8, 12, 25]) {
        0 => Ext::opts(proto::HOPOPTS, hdrlen(rng)),
        1 => Ext::opts(proto::ROUTING, hdrlen(rng)),
        2 => Ext::opts(proto::DSTOPTS, hdrlen(rng)),
        3 => Ext::opts(proto::MOBILITY, hdrlen(rng)),
        4 => Ext::ah(match rng.weighted(&[15, 70, 15]) {
            0 => 0,
            1 => rng.range(1, 6) as u8,
            _ => rng.u8(),
        }),
        _ => {
            let offset = if rng.percent(55) {
                0
            } else {
                rng.pick(&[1, 2, 0x1fff, rng.u16() & 0x1fff])
            };
            Ext::fragment(offset, rng.percent(50))
        }
    };
    if rng.percent(10) {
        // Random option bytes: the walk must not care what is inside.
        for b in ext.bytes.iter_mut().skip(2) {
            *b = rng.u8();
        }
    }
    ext
}

fn ipv6(rng: &Rng) -> Ipv6 {
    let count = match rng.weighted(&[40, 35, 15, 10]) {
        0 => 0,
        1 => rng.range(1, 3),
        2 => rng.range(4, 8),
        _ => rng.range(9, 11),
    };
    let mut ip = Ipv6 {
        src: source6(rng),
        dst: V6_DST,
        version: 6,
        payload_len: None,
        ext: (0..count).map(|_| extension(rng)).collect(),
        l4: transport(rng, true),
    };
    if rng.percent(10) {
        // Mostly a little short, so the datagram ends inside an extension or transport
        // header while the frame goes on: those bytes are padding, never a header.
        let natural: usize =
            ip.ext.iter().map(|e| e.bytes.len()).sum::<usize>() + ip.l4.bytes().len();
        ip.payload_len = Some(match rng.weighted(&[15, 20, 65]) {
            0 => rng.u16(),
            1 => (natural + rng.range(1, 8)) as u16,
            _ => natural.saturating_sub(rng.range(1, 24)) as u16,
        });
    }
    if rng.percent(2) {
        ip.version = rng.range(0, 15) as u8;
    }
    ip
}

/// Values that sit on decision boundaries, for byte mutations.
const INTERESTING_BYTES: [u8; 14] = [
    0x00, 0x01, 0x04, 0x05, 0x06, 0x11, 0x2c, 0x3b, 0x3c, 0x45, 0x4f, 0x60, 0x84, 0xff,
];
const INTERESTING_WORDS: [u16; 10] = [
    0x0800, 0x86dd, 0x8100, 0x88a8, 0x9100, 0x0806, 0x0000, 0xffff, 0x2000, 0x0001,
];

/// Bit flips, byte and word overwrites, truncation and extension, mostly in the headers.
pub fn mutate(rng: &Rng, frame: &mut Vec<u8>) {
    for _ in 0..rng.range(1, 4) {
        let len = frame.len();
        // Headers sit in the first 100 bytes or so: aim there most of the time.
        let at = if rng.percent(80) {
            rng.range(0, len.min(100) - 1)
        } else {
            rng.range(0, len - 1)
        };
        match rng.weighted(&[35, 25, 15, 15, 10]) {
            0 => frame[at] ^= 1 << rng.below(8),
            1 => frame[at] = rng.pick(&INTERESTING_BYTES),
            2 => {
                let word = rng.pick(&INTERESTING_WORDS).to_be_bytes();
                frame[at] = word[0];
                if at + 1 < len {
                    frame[at + 1] = word[1];
                }
            }
            3 => frame.truncate(rng.range(14, len.max(14))),
            _ => {
                let extra = rng.bytes(rng.range(1, 16));
                frame.extend_from_slice(&extra);
            }
        }
    }
}

/// One random frame, at least 14 bytes (BPF_PROG_TEST_RUN refuses shorter ones).
pub fn random_frame(rng: &Rng) -> Vec<u8> {
    if rng.percent(2) {
        return rng.bytes(rng.range(14, 120));
    }
    let net = match rng.weighted(&[44, 44, 12]) {
        0 => Net::V4(ipv4(rng)),
        1 => Net::V6(ipv6(rng)),
        _ => {
            let ethertype = rng.pick(&[
                ETH_ARP,
                ETH_LLDP,
                0x8847,
                0x88e5,
                0x8863,
                0x0040,
                ETH_IPV4,
                ETH_IPV6,
                rng.u16(),
            ]);
            let n = rng.range(0, 64);
            Net::Other {
                ethertype,
                payload: rng.bytes(n),
            }
        }
    };
    let padding = if rng.percent(10) {
        rng.bytes(rng.range(1, 30))
    } else {
        Vec::new()
    };
    let frame = Frame {
        tags: tags(rng),
        net,
        padding,
    };
    let mut bytes = frame.build();
    if rng.percent(30) {
        mutate(rng, &mut bytes);
    }
    if bytes.len() < 14 {
        bytes.resize(14, 0);
    }
    bytes.truncate(MAX_FRAME);
    bytes
}
