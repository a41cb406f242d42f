//! A small frame builder for packet tests: Ethernet, VLAN tags, IPv4 (with options), IPv6
//! (with extension headers), and TCP/UDP/SCTP/ICMP. Checksums are left zero: XDP does not
//! verify them, and the tests only ask for a verdict.
#![allow(dead_code)]

use std::net::{Ipv4Addr, Ipv6Addr};

pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

#[derive(Clone, Debug)]
pub enum L3 {
    V4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        /// Option bytes (padded to a multiple of 4).
        options: Vec<u8>,
        /// Fragment offset in 8-byte units, and the more-fragments flag.
        frag_offset: u16,
        more_fragments: bool,
    },
    V6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        /// Extension headers as (type, body bytes excluding the next-header byte).
        ext: Vec<(u8, Vec<u8>)>,
    },
}

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        src: u16,
        dst: u16,
        flags: u8,
    },
    Udp {
        src: u16,
        dst: u16,
    },
    Sctp {
        src: u16,
        dst: u16,
    },
    UdpLite {
        src: u16,
        dst: u16,
    },
    Icmp {
        kind: u8,
        code: u8,
    },
    Icmpv6 {
        kind: u8,
        code: u8,
    },
    /// Any other protocol number with an opaque payload.
    Raw {
        protocol: u8,
        payload: Vec<u8>,
    },
}

impl L4 {
    pub fn protocol(&self) -> u8 {
        match self {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Sctp { .. } => 132,
            L4::UdpLite { .. } => 136,
            L4::Icmp { .. } => 1,
            L4::Icmpv6 { .. } => 58,
            L4::Raw { protocol, .. } => *protocol,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        match self {
            L4::Tcp { src, dst, flags } => {
                let mut b = vec![0u8; 20];
                b[0..2].copy_from_slice(&src.to_be_bytes());
                b[2..4].copy_from_slice(&dst.to_be_bytes());
                b[12] = 5 << 4;
                b[13] = *flags;
                b[14..16].copy_from_slice(&64240u16.to_be_bytes());
                b
            }
            L4::Udp { src, dst } | L4::UdpLite { src, dst } => {
                let mut b = vec![0u8; 8];
                b[0..2].copy_from_slice(&src.to_be_bytes());
                b[2..4].copy_from_slice(&dst.to_be_bytes());
                b[4..6].copy_from_slice(&8u16.to_be_bytes());
                b.extend_from_slice(b"payload!");
                b
            }
            L4::Sctp { src, dst } => {
                let mut b = vec![0u8; 12];
                b[0..2].copy_from_slice(&src.to_be_bytes());
                b[2..4].copy_from_slice(&dst.to_be_bytes());
                b
            }
            L4::Icmp { kind, code } | L4::Icmpv6 { kind, code } => {
                vec![*kind, *code, 0, 0, 0, 1, 0, 1]
            }
            L4::Raw { payload, .. } => payload.clone(),
        }
    }
}

/// A frame description; `build` renders it.
#[derive(Clone, Debug)]
pub struct Packet {
    /// VLAN tags outermost first, as (TPID, VLAN id).
    pub vlans: Vec<(u16, u16)>,
    pub l3: L3,
    pub l4: L4,
}

pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88a8;

pub fn v4(l4: L4) -> Packet {
    Packet {
        vlans: Vec::new(),
        l3: L3::V4 {
            src: Ipv4Addr::new(198, 18, 0, 2),
            dst: Ipv4Addr::new(198, 18, 0, 1),
            options: Vec::new(),
            frag_offset: 0,
            more_fragments: false,
        },
        l4,
    }
}

pub fn v6(l4: L4) -> Packet {
    Packet {
        vlans: Vec::new(),
        l3: L3::V6 {
            src: "2001:2::2".parse().expect("address"),
            dst: "2001:2::1".parse().expect("address"),
            ext: Vec::new(),
        },
        l4,
    }
}

pub fn tcp(dst: u16) -> L4 {
    L4::Tcp {
        src: 40000,
        dst,
        flags: 0x02,
    }
}

pub fn udp(dst: u16) -> L4 {
    L4::Udp { src: 40000, dst }
}

impl Packet {
    pub fn vlan(mut self, tpid: u16, id: u16) -> Self {
        self.vlans.push((tpid, id));
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&DST_MAC);
        f.extend_from_slice(&SRC_MAC);
        for (tpid, id) in &self.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&(id & 0x0fff).to_be_bytes());
        }
        let l4 = self.l4.bytes();
        match &self.l3 {
            L3::V4 {
                src,
                dst,
                options,
                frag_offset,
                more_fragments,
            } => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let mut opts = options.clone();
                while opts.len() % 4 != 0 {
                    opts.push(0);
                }
                let hlen = 20 + opts.len();
                let tot = (hlen + l4.len()) as u16;
                f.push(0x40 | (hlen / 4) as u8);
                f.push(0);
                f.extend_from_slice(&tot.to_be_bytes());
                f.extend_from_slice(&[0x12, 0x34]);
                let frag = (frag_offset & 0x1fff) | if *more_fragments { 0x2000 } else { 0 };
                f.extend_from_slice(&frag.to_be_bytes());
                f.push(64);
                f.push(self.l4.protocol());
                f.extend_from_slice(&[0, 0]);
                f.extend_from_slice(&src.octets());
                f.extend_from_slice(&dst.octets());
                f.extend_from_slice(&opts);
            }
            L3::V6 { src, dst, ext } => {
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                let mut chain = Vec::new();
                for (i, (_, body)) in ext.iter().enumerate() {
                    let next = ext.get(i + 1).map_or(self.l4.protocol(), |(t, _)| *t);
                    chain.push(next);
                    chain.extend_from_slice(body);
                }
                let first = ext.first().map_or(self.l4.protocol(), |(t, _)| *t);
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&((chain.len() + l4.len()) as u16).to_be_bytes());
                f.push(first);
                f.push(64);
                f.extend_from_slice(&src.octets());
                f.extend_from_slice(&dst.octets());
                f.extend_from_slice(&chain);
            }
        }
        f.extend_from_slice(&l4);
        f
    }
}

/// Body of a hop-by-hop / destination-options header of 8 bytes (hdrlen 0, PadN).
pub fn ext_opts8() -> Vec<u8> {
    vec![0, 1, 4, 0, 0, 0, 0]
}

/// Body of a fragment header with the given offset (8-byte units) and M flag.
pub fn ext_fragment(offset: u16, more: bool) -> Vec<u8> {
    let field = (offset << 3) | u16::from(more);
    let mut b = vec![0];
    b.extend_from_slice(&field.to_be_bytes());
    b.extend_from_slice(&[0, 0, 0, 7]);
    b
}
