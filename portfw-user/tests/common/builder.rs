//! A byte-exact frame builder for the fixture and fuzzing tests: every header is spelled out,
//! and every length, count and next-header field is computed from what follows unless a test
//! overrides it, so a test builds a consistent frame and then breaks exactly one field.
//!
//! Checksums stay zero: XDP does not verify them and the tests only ask for a verdict.
#![allow(dead_code, reason = "each test crate uses a different part")]

use std::net::{Ipv4Addr, Ipv6Addr};

pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_IPV6: u16 = 0x86dd;
pub const ETH_ARP: u16 = 0x0806;
pub const ETH_LLDP: u16 = 0x88cc;
pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88a8;
pub const TPID_9100: u16 = 0x9100;

/// IPv6 extension header types (and the IPv4/IPv6 protocol numbers used in tests).
///
/// Written out here rather than taken from `portfw_common::ipproto` on purpose: frames built
/// from the kernel's own constants would agree with it even if a constant were wrong.
pub mod proto {
    pub const HOPOPTS: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const GRE: u8 = 47;
    pub const ESP: u8 = 50;
    pub const AH: u8 = 51;
    pub const ICMPV6: u8 = 58;
    pub const NONE: u8 = 59;
    pub const DSTOPTS: u8 = 60;
    pub const OSPF: u8 = 89;
    pub const SCTP: u8 = 132;
    pub const MOBILITY: u8 = 135;
    pub const UDPLITE: u8 = 136;
}

/// A frame: Ethernet, VLAN tags, a network layer, and link padding.
#[derive(Clone, Debug)]
pub struct Frame {
    /// VLAN tags outermost first, as (TPID, TCI).
    pub tags: Vec<(u16, u16)>,
    pub net: Net,
    /// Bytes after the datagram, as Ethernet padding would be: never part of a header.
    pub padding: Vec<u8>,
}

#[derive(Clone, Debug)]
pub enum Net {
    V4(Ipv4),
    V6(Ipv6),
    /// Any other EtherType, followed by `payload` as is.
    Other {
        ethertype: u16,
        payload: Vec<u8>,
    },
}

#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// The version nibble; 4 unless a test breaks it.
    pub version: u8,
    /// IHL in 32-bit words; `None` means `(20 + options.len()) / 4`.
    pub ihl: Option<u8>,
    /// Option bytes as written; a length that is not a multiple of 4 makes IHL disagree.
    pub options: Vec<u8>,
    /// `None` means header plus transport bytes.
    pub total_len: Option<u16>,
    pub dont_fragment: bool,
    pub more_fragments: bool,
    /// Fragment offset in 8-byte units (13 bits).
    pub frag_offset: u16,
    /// `None` means the transport's own protocol number.
    pub protocol: Option<u8>,
    pub l4: L4,
}

#[derive(Clone, Debug)]
pub struct Ipv6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub version: u8,
    /// `None` means extension headers plus transport bytes.
    pub payload_len: Option<u16>,
    pub ext: Vec<Ext>,
    pub l4: L4,
}

/// One IPv6 extension header: its type and all of its bytes. The builder overwrites byte 0
/// with the type of whatever follows.
#[derive(Clone, Debug)]
pub struct Ext {
    pub kind: u8,
    pub bytes: Vec<u8>,
}

impl Ext {
    /// A hop-by-hop, destination-options, routing or mobility header of `(hdrlen + 1) * 8`
    /// bytes; the body is PadN options, or for routing a type-4 (segment routing) stub.
    pub fn opts(kind: u8, hdrlen: u8) -> Ext {
        let len = (usize::from(hdrlen) + 1) * 8;
        let mut bytes = vec![0; len];
        bytes[1] = hdrlen;
        if kind == proto::ROUTING {
            bytes[2] = 4;
        } else {
            bytes[2] = 1; // PadN over the rest
            bytes[3] = (len - 4) as u8;
        }
        Ext { kind, bytes }
    }

    pub fn hop_by_hop() -> Ext {
        Ext::opts(proto::HOPOPTS, 0)
    }

    pub fn dest_opts() -> Ext {
        Ext::opts(proto::DSTOPTS, 0)
    }

    pub fn routing() -> Ext {
        Ext::opts(proto::ROUTING, 0)
    }

    pub fn mobility() -> Ext {
        Ext::opts(proto::MOBILITY, 0)
    }

    /// An authentication header of `(payload_len + 2) * 4` bytes (its length unit is 4, not 8).
    pub fn ah(payload_len: u8) -> Ext {
        let len = (usize::from(payload_len) + 2) * 4;
        let mut bytes = vec![0; len];
        bytes[1] = payload_len;
        // The SPI; the smallest header (payload_len 0) is 8 bytes, so it always fits.
        bytes[4..8].copy_from_slice(&0x1001u32.to_be_bytes());
        Ext {
            kind: proto::AH,
            bytes,
        }
    }

    /// A fragment header: `offset` in 8-byte units, and the more-fragments flag.
    pub fn fragment(offset: u16, more: bool) -> Ext {
        let field = ((offset & 0x1fff) << 3) | u16::from(more);
        let mut bytes = vec![0; 8];
        bytes[2..4].copy_from_slice(&field.to_be_bytes());
        bytes[4..8].copy_from_slice(&0x0bad_cafe_u32.to_be_bytes());
        Ext {
            kind: proto::FRAGMENT,
            bytes,
        }
    }
}

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        src: u16,
        dst: u16,
        flags: u8,
        /// Data offset in words; `None` means `(20 + options.len()) / 4`.
        doff: Option<u8>,
        options: Vec<u8>,
    },
    Udp {
        src: u16,
        dst: u16,
    },
    UdpLite {
        src: u16,
        dst: u16,
    },
    Sctp {
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
    /// Any protocol number with these exact bytes, e.g. a transport header cut short.
    Raw {
        protocol: u8,
        bytes: Vec<u8>,
    },
}

impl L4 {
    pub fn protocol(&self) -> u8 {
        match self {
            L4::Tcp { .. } => proto::TCP,
            L4::Udp { .. } => proto::UDP,
            L4::UdpLite { .. } => proto::UDPLITE,
            L4::Sctp { .. } => proto::SCTP,
            L4::Icmp { .. } => proto::ICMP,
            L4::Icmpv6 { .. } => proto::ICMPV6,
            L4::Raw { protocol, .. } => *protocol,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        match self {
            L4::Tcp {
                src,
                dst,
                flags,
                doff,
                options,
            } => {
                let mut b = vec![0u8; 20];
                b[0..2].copy_from_slice(&src.to_be_bytes());
                b[2..4].copy_from_slice(&dst.to_be_bytes());
                b[4..8].copy_from_slice(&1000u32.to_be_bytes());
                let words = doff.unwrap_or(((20 + options.len()) / 4) as u8);
                b[12] = words << 4;
                b[13] = *flags;
                b[14..16].copy_from_slice(&64240u16.to_be_bytes());
                b.extend_from_slice(options);
                b
            }
            L4::Udp { src, dst } | L4::UdpLite { src, dst } => {
                let mut b = vec![0u8; 8];
                b[0..2].copy_from_slice(&src.to_be_bytes());
                b[2..4].copy_from_slice(&dst.to_be_bytes());
                b[4..6].copy_from_slice(&16u16.to_be_bytes());
                b.extend_from_slice(b"portfw!\n");
                b
            }
            L4::Sctp { src, dst } => {
                let mut b = vec![0u8; 12];
                b[0..2].copy_from_slice(&src.to_be_bytes());
                b[2..4].copy_from_slice(&dst.to_be_bytes());
                b[4..8].copy_from_slice(&0x5c7a_0001u32.to_be_bytes());
                b
            }
            L4::Icmp { kind, code } | L4::Icmpv6 { kind, code } => {
                vec![*kind, *code, 0, 0, 0, 1, 0, 1]
            }
            L4::Raw { bytes, .. } => bytes.clone(),
        }
    }

    /// The same protocol with only its first `n` bytes (fewer if it is shorter).
    pub fn cut(&self, n: usize) -> L4 {
        let mut bytes = self.bytes();
        bytes.truncate(n);
        L4::Raw {
            protocol: self.protocol(),
            bytes,
        }
    }
}

pub fn tcp(dst: u16) -> L4 {
    tcp_from(40000, dst)
}

/// A TCP SYN from `src` to `dst`.
pub fn tcp_from(src: u16, dst: u16) -> L4 {
    L4::Tcp {
        src,
        dst,
        flags: 0x02,
        doff: None,
        options: Vec::new(),
    }
}

pub fn udp(dst: u16) -> L4 {
    L4::Udp { src: 40000, dst }
}

pub fn udplite(dst: u16) -> L4 {
    L4::UdpLite { src: 40000, dst }
}

pub fn sctp(dst: u16) -> L4 {
    L4::Sctp { src: 40000, dst }
}

pub fn icmp(kind: u8, code: u8) -> L4 {
    L4::Icmp { kind, code }
}

pub fn icmp6(kind: u8, code: u8) -> L4 {
    L4::Icmpv6 { kind, code }
}

pub fn raw(protocol: u8, bytes: &[u8]) -> L4 {
    L4::Raw {
        protocol,
        bytes: bytes.to_vec(),
    }
}

/// TCP flag bits, written out (as the protocol numbers above are).
pub mod tcp_flag {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const SYN_ACK: u8 = SYN | ACK;
    pub const FIN_ACK: u8 = FIN | ACK;
    pub const RST_ACK: u8 = RST | ACK;
    pub const PSH_ACK: u8 = PSH | ACK;
}

/// A TCP segment from `src` to `dst` with these flags.
pub fn tcp_seg(src: u16, dst: u16, flags: u8) -> L4 {
    L4::Tcp {
        src,
        dst,
        flags,
        doff: None,
        options: Vec::new(),
    }
}

/// A UDP datagram from `src` to `dst`.
pub fn udp_from(src: u16, dst: u16) -> L4 {
    L4::Udp { src, dst }
}

/// ICMP echo types of each family.
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// An ICMP (`v6 == false`) or ICMPv6 echo message of `kind` with identifier `id`, sequence 1
/// and a short payload.
pub fn echo(v6: bool, kind: u8, id: u16) -> L4 {
    let mut bytes = vec![kind, 0, 0, 0];
    bytes.extend_from_slice(&id.to_be_bytes());
    bytes.extend_from_slice(&1u16.to_be_bytes());
    bytes.extend_from_slice(b"portfw-ping");
    L4::Raw {
        protocol: if v6 { proto::ICMPV6 } else { proto::ICMP },
        bytes,
    }
}

/// An ICMP (`v6 == false`) or ICMPv6 error of `kind` and `code` quoting `quoted` (an IP
/// datagram, usually cut short as routers cut it): type, code, checksum, four unused (or MTU)
/// bytes, then the quote.
pub fn icmp_error(v6: bool, kind: u8, code: u8, quoted: &[u8]) -> L4 {
    let mut bytes = vec![kind, code, 0, 0, 0, 0, 0, 0];
    bytes.extend_from_slice(quoted);
    L4::Raw {
        protocol: if v6 { proto::ICMPV6 } else { proto::ICMP },
        bytes,
    }
}

pub const V4_SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const V4_DST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const V6_SRC: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2);
pub const V6_DST: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1);

/// An untagged IPv4 frame carrying `l4`, with no options and no fragmentation.
pub fn v4(l4: L4) -> Frame {
    Frame {
        tags: Vec::new(),
        net: Net::V4(Ipv4 {
            src: V4_SRC,
            dst: V4_DST,
            version: 4,
            ihl: None,
            options: Vec::new(),
            total_len: None,
            dont_fragment: true,
            more_fragments: false,
            frag_offset: 0,
            protocol: None,
            l4,
        }),
        padding: Vec::new(),
    }
}

/// An untagged IPv6 frame carrying `l4`, with no extension headers.
pub fn v6(l4: L4) -> Frame {
    Frame {
        tags: Vec::new(),
        net: Net::V6(Ipv6 {
            src: V6_SRC,
            dst: V6_DST,
            version: 6,
            payload_len: None,
            ext: Vec::new(),
            l4,
        }),
        padding: Vec::new(),
    }
}

/// A frame of any other EtherType.
pub fn ether(ethertype: u16, payload: &[u8]) -> Frame {
    Frame {
        tags: Vec::new(),
        net: Net::Other {
            ethertype,
            payload: payload.to_vec(),
        },
        padding: Vec::new(),
    }
}

/// An ARP request for 198.18.0.1.
pub fn arp() -> Frame {
    let mut p = vec![0, 1, 8, 0, 6, 4, 0, 1];
    p.extend_from_slice(&SRC_MAC);
    p.extend_from_slice(&V4_SRC.octets());
    p.extend_from_slice(&[0; 6]);
    p.extend_from_slice(&V4_DST.octets());
    ether(ETH_ARP, &p)
}

impl Frame {
    /// Adds a VLAN tag inside the ones already there.
    pub fn tag(mut self, tpid: u16, vid: u16) -> Self {
        self.tags.push((tpid, vid & 0x0fff));
        self
    }

    /// Changes the IPv4 header; panics on another network layer (a test bug).
    pub fn v4(mut self, change: impl FnOnce(&mut Ipv4)) -> Self {
        match &mut self.net {
            Net::V4(ip) => change(ip),
            other => panic!("not an IPv4 frame: {other:?}"),
        }
        self
    }

    /// Changes the IPv6 header; panics on another network layer (a test bug).
    pub fn v6(mut self, change: impl FnOnce(&mut Ipv6)) -> Self {
        match &mut self.net {
            Net::V6(ip) => change(ip),
            other => panic!("not an IPv6 frame: {other:?}"),
        }
        self
    }

    /// IPv4 options of `words` 32-bit words (IHL 5 + `words`): NOPs ending in End of List.
    pub fn options(self, words: u8) -> Self {
        self.v4(|ip| {
            let mut opts = vec![1u8; usize::from(words) * 4];
            if let Some(last) = opts.last_mut() {
                *last = 0;
            }
            ip.options = opts;
        })
    }

    /// An IPv4 fragment (offset in 8-byte units), or an IPv6 one through a fragment header.
    pub fn fragment(self, offset: u16, more: bool) -> Self {
        match &self.net {
            Net::V4(_) => self.v4(|ip| {
                ip.frag_offset = offset;
                ip.more_fragments = more;
                ip.dont_fragment = false;
            }),
            Net::V6(_) => self.ext(Ext::fragment(offset, more)),
            Net::Other { .. } => panic!("fragment of a non-IP frame"),
        }
    }

    /// Appends an IPv6 extension header after those already there.
    pub fn ext(self, ext: Ext) -> Self {
        self.v6(|ip| ip.ext.push(ext))
    }

    /// Appends `n` bytes of link padding after the datagram.
    pub fn pad(mut self, n: usize) -> Self {
        self.padding.extend(std::iter::repeat_n(0u8, n));
        self
    }

    /// Swaps the IP source and destination addresses: a frame from the host (the builder's
    /// destination) to its peer, as the egress program sees it. Ports are the caller's.
    pub fn swapped(self) -> Self {
        match &self.net {
            Net::V4(_) => self.v4(|ip| std::mem::swap(&mut ip.src, &mut ip.dst)),
            Net::V6(_) => self.v6(|ip| std::mem::swap(&mut ip.src, &mut ip.dst)),
            Net::Other { .. } => self,
        }
    }

    /// The IP datagram alone, without the link header, the tags or the padding: what an ICMP
    /// error quotes.
    pub fn datagram(&self) -> Vec<u8> {
        let frame = self.build();
        frame[self.l3_offset()..frame.len() - self.padding.len()].to_vec()
    }

    /// Offset of the network header: after Ethernet and the tags.
    pub fn l3_offset(&self) -> usize {
        14 + 4 * self.tags.len()
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(128);
        f.extend_from_slice(&DST_MAC);
        f.extend_from_slice(&SRC_MAC);
        for (tpid, tci) in &self.tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        match &self.net {
            Net::V4(ip) => {
                f.extend_from_slice(&ETH_IPV4.to_be_bytes());
                let l4 = ip.l4.bytes();
                let hlen = 20 + ip.options.len();
                let ihl = ip.ihl.unwrap_or((hlen / 4) as u8);
                let total = ip.total_len.unwrap_or((hlen + l4.len()) as u16);
                f.push((ip.version << 4) | (ihl & 0x0f));
                f.push(0);
                f.extend_from_slice(&total.to_be_bytes());
                f.extend_from_slice(&0x1234u16.to_be_bytes());
                let flags =
                    (u16::from(ip.dont_fragment) << 14) | (u16::from(ip.more_fragments) << 13);
                f.extend_from_slice(&(flags | (ip.frag_offset & 0x1fff)).to_be_bytes());
                f.push(64);
                f.push(ip.protocol.unwrap_or(ip.l4.protocol()));
                f.extend_from_slice(&[0, 0]);
                f.extend_from_slice(&ip.src.octets());
                f.extend_from_slice(&ip.dst.octets());
                f.extend_from_slice(&ip.options);
                f.extend_from_slice(&l4);
            }
            Net::V6(ip) => {
                f.extend_from_slice(&ETH_IPV6.to_be_bytes());
                let l4 = ip.l4.bytes();
                let mut chain = Vec::new();
                for (i, ext) in ip.ext.iter().enumerate() {
                    let next = ip.ext.get(i + 1).map_or(ip.l4.protocol(), |e| e.kind);
                    let start = chain.len();
                    chain.extend_from_slice(&ext.bytes);
                    if let Some(b) = chain.get_mut(start) {
                        *b = next;
                    }
                }
                let first = ip.ext.first().map_or(ip.l4.protocol(), |e| e.kind);
                let plen = ip.payload_len.unwrap_or((chain.len() + l4.len()) as u16);
                f.extend_from_slice(&[ip.version << 4, 0, 0, 0]);
                f.extend_from_slice(&plen.to_be_bytes());
                f.push(first);
                f.push(64);
                f.extend_from_slice(&ip.src.octets());
                f.extend_from_slice(&ip.dst.octets());
                f.extend_from_slice(&chain);
                f.extend_from_slice(&l4);
            }
            Net::Other { ethertype, payload } => {
                f.extend_from_slice(&ethertype.to_be_bytes());
                f.extend_from_slice(payload);
            }
        }
        f.extend_from_slice(&self.padding);
        f
    }
}

/// Hex dump, 16 bytes a line with offsets, for failure messages.
pub fn hex(frame: &[u8]) -> String {
    let mut out = String::new();
    for (i, chunk) in frame.chunks(16).enumerate() {
        out.push_str(&format!("  {:04x}:", i * 16));
        for b in chunk {
            out.push_str(&format!(" {b:02x}"));
        }
        out.push('\n');
    }
    out
}

/// The frame as one hex string, which [`unhex`] reads back (for fixtures from fuzz findings).
pub fn hex_line(frame: &[u8]) -> String {
    frame.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes from a hex string; whitespace is ignored. Panics on bad input (a test bug).
pub fn unhex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(
        digits.len().is_multiple_of(2),
        "odd number of hex digits in {text:?}"
    );
    digits
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).expect("ascii hex");
            u8::from_str_radix(s, 16).unwrap_or_else(|_| panic!("bad hex {s:?} in {text:?}"))
        })
        .collect()
}
