//! The header walk: one bounds-checked cursor over the frame, turned into a [`Packet`].
//!
//! Parsing decides nothing. It reads each header once, checks it, and describes what it
//! found; `judge` looks the description up in the tables, and `emit` reports it. Every read
//! goes through [`Frame::ptr`], which checks `offset + len` against `data_end` before it
//! forms the pointer, so no read can leave the packet. Loops are bounded by constants.

use aya_ebpf::programs::{TcContext, XdpContext};
use portfw_common::{ipproto, proto};

use crate::headers::{
    ETH_HLEN, ETH_P_IPV4, ETH_P_IPV6, EthHdr, IPV4_MIN_HLEN, IPV6_HLEN, IcmpHdr, Ipv4Hdr,
    Ipv6ExtHdr, Ipv6FragHdr, Ipv6Hdr, MAX_IPV6_EXT, MAX_VLAN_TAGS, Ports as PortsHdr, TcpHdr,
    VLAN_HLEN, VlanHdr, be16, is_vlan,
};

mod icmp;

pub use icmp::{IcmpSays, icmp_about};

/// The packet bytes `[data, data_end)` of an XDP frame or of the linear part of an skb.
#[derive(Clone, Copy)]
pub struct Frame {
    /// The context's `data_end` field, which the verifier rewrites into the real bound.
    data_end: *const u32,
    data: usize,
    end: usize,
}

impl Frame {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Self {
            // SAFETY: the program's context pointer, valid for the whole run.
            data_end: unsafe { &raw const (*ctx.ctx).data_end },
            data: ctx.data(),
            end: ctx.data_end(),
        }
    }

    /// The linear part of a socket buffer (the headers of anything the host sends).
    #[inline(always)]
    pub fn of_skb(ctx: &TcContext) -> Self {
        Self {
            // SAFETY: the program's context pointer, valid for the whole run.
            data_end: unsafe { &raw const (*ctx.skb.skb).data_end },
            data: ctx.data(),
            end: ctx.data_end(),
        }
    }

    /// `data_end`, loaded afresh. LLVM may otherwise prove a packet bounds check redundant
    /// from earlier scalar length checks (`l4 + 4 <= tot_len <= len`) and delete it, and the
    /// verifier, which only trusts pointer comparisons against `data_end`, then rejects the
    /// read. A volatile load cannot be reasoned about, so every check survives.
    #[inline(always)]
    fn data_end(&self) -> usize {
        // SAFETY: a field of the program's context, valid for the whole run.
        unsafe { core::ptr::read_volatile(self.data_end) as usize }
    }

    /// A pointer to `T` at `offset`, or `None` if `T` does not fit before the end.
    #[inline(always)]
    fn ptr<T>(&self, offset: usize) -> Option<*const T> {
        let start = self.data + offset;
        if start + core::mem::size_of::<T>() > self.data_end() {
            return None;
        }
        Some(start as *const T)
    }

    /// Reads `T` at `offset`; `T` must be a plain byte-array header.
    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        // SAFETY: `ptr` checked the bounds, and `T` is a byte array (alignment 1).
        self.ptr::<T>(offset).map(|p| unsafe { *p })
    }

    #[inline(always)]
    fn len(&self) -> usize {
        self.end - self.data
    }
}

/// How far the walk got, and what it found there.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A frame whose EtherType is neither IPv4 nor IPv6 (ARP, LLDP, ...).
    NonIp,
    /// A frame that could not be walked up to a valid IP header (truncated Ethernet or VLAN
    /// header, a third VLAN tag, a broken IPv4 or IPv6 header). Nothing of it is reported.
    Malformed,
    /// TCP, UDP, UDP-Lite or SCTP, judged by the port table.
    Ports,
    /// ICMP in IPv4, ICMPv6 in IPv6.
    Icmp,
    /// A non-first fragment, which carries no transport header.
    Fragment,
    /// Any other IP protocol.
    OtherIp,
    /// The IP header is valid, but the transport header (or the IPv6 extension header
    /// chain) is truncated, lies outside the datagram, or is invalid.
    BadTransport,
}

/// What the header walk found: the whole input of `judge` and `emit`.
///
/// Every field is set on every path, rather than an enum with payloads: LLVM is free to
/// compute with a payload field on a path where the variant does not hold it (its value is
/// undefined there, so any value will do), and the verifier rejects a program that reads a
/// register nothing wrote. And the fields are packed into four words: each value the
/// description carries must outlive the map lookups (helper calls, which clobber r1-r5),
/// and BPF has four callee-saved registers; a description of a dozen scalars was spilled to
/// the stack and back on every packet, which cost the common path a third of its time.
/// Fields that the kind gives no meaning hold zero. Read them through the accessors.
#[derive(Clone, Copy)]
pub struct Packet {
    /// Address of the checked IP header, or 0 before the walk reached one.
    hdr: usize,
    /// kind | v6 << 8 | protocol << 16 | slot << 24 | tcp_flags << 32 | icmp_type << 40 |
    /// icmp_code << 48.
    meta: u64,
    /// src_port << 16 | dst_port.
    ports: u32,
    /// Offset of the transport header << 32 | the end of the datagram (its length, not the
    /// frame's, bounds every read behind the IP header).
    span: u64,
}

impl Packet {
    #[inline(always)]
    const fn new(kind: Kind) -> Self {
        Self {
            hdr: 0,
            meta: kind as u64,
            ports: 0,
            span: 0,
        }
    }

    #[inline(always)]
    fn field(&self, shift: u32) -> u8 {
        (self.meta >> shift) as u8
    }

    /// How far the walk got, and what it found there.
    #[inline(always)]
    pub fn kind(&self) -> Kind {
        match self.field(0) {
            k if k == Kind::NonIp as u8 => Kind::NonIp,
            k if k == Kind::Ports as u8 => Kind::Ports,
            k if k == Kind::Icmp as u8 => Kind::Icmp,
            k if k == Kind::Fragment as u8 => Kind::Fragment,
            k if k == Kind::OtherIp as u8 => Kind::OtherIp,
            k if k == Kind::BadTransport as u8 => Kind::BadTransport,
            _ => Kind::Malformed,
        }
    }

    /// The protocol the walk stopped at: the transport protocol, after any IPv6 extension
    /// headers (or the extension header that could not be walked).
    #[inline(always)]
    pub fn protocol(&self) -> u8 {
        self.field(16)
    }

    /// [`Kind::Ports`]: the protocol's slot in the port table.
    #[inline(always)]
    pub fn slot(&self) -> u32 {
        u32::from(self.field(24))
    }

    /// [`Kind::Ports`]: TCP's flags byte; zero for the other protocols.
    #[inline(always)]
    pub fn tcp_flags(&self) -> u8 {
        self.field(32)
    }

    /// [`Kind::Icmp`]: the message's type.
    #[inline(always)]
    pub fn icmp_type(&self) -> u8 {
        self.field(40)
    }

    /// [`Kind::Icmp`]: the message's code.
    #[inline(always)]
    pub fn icmp_code(&self) -> u8 {
        self.field(48)
    }

    #[inline(always)]
    pub fn src_port(&self) -> u16 {
        (self.ports >> 16) as u16
    }

    #[inline(always)]
    pub fn dst_port(&self) -> u16 {
        self.ports as u16
    }

    /// The checked IP header, unless the walk stopped before it.
    #[inline(always)]
    pub fn ip(&self) -> Option<IpHdr> {
        match self.kind() {
            Kind::NonIp | Kind::Malformed => None,
            _ => Some(IpHdr {
                v6: self.field(8) != 0,
                at: self.hdr,
            }),
        }
    }

    #[inline(always)]
    fn set_ip(&mut self, hdr: IpHdr, protocol: u8) {
        self.hdr = hdr.at;
        self.meta |= u64::from(hdr.v6) << 8 | u64::from(protocol) << 16;
    }

    #[inline(always)]
    fn ports(slot: u32, src_port: u16, dst_port: u16, tcp_flags: u8) -> Self {
        let mut p = Self::new(Kind::Ports);
        p.meta |= u64::from(slot as u8) << 24 | u64::from(tcp_flags) << 32;
        p.ports = u32::from(src_port) << 16 | u32::from(dst_port);
        p
    }

    #[inline(always)]
    fn icmp(kind: u8, code: u8, l4_at: usize, end: usize) -> Self {
        let mut p = Self::new(Kind::Icmp);
        p.meta |= u64::from(kind) << 40 | u64::from(code) << 48;
        p.span = (l4_at as u64) << 32 | end as u64;
        p
    }

    #[inline(always)]
    fn l4_at(&self) -> usize {
        (self.span >> 32) as usize
    }

    #[inline(always)]
    fn end(&self) -> usize {
        self.span as u32 as usize
    }
}

/// An IP header of either family that the cursor has bounds-checked: it lies wholly inside
/// the packet, which stays where it is for the whole program run (portfw never moves
/// packet data). Keeping its address rather than a copy keeps the IPv6 addresses off the
/// 512-byte stack until they are needed.
#[derive(Clone, Copy)]
pub struct IpHdr {
    v6: bool,
    /// Address of the header, or 0 in [`IpHdr::NONE`].
    at: usize,
}

impl IpHdr {
    /// The placeholder of packets without one; [`Packet::ip`] never hands it out.
    const NONE: Self = Self { v6: false, at: 0 };

    #[inline(always)]
    pub fn is_v6(&self) -> bool {
        self.v6
    }

    /// Source and destination address as four network-order words each (IPv4 in the first),
    /// built word by word: LLVM turns a zero-filled byte array into a call of compiler_builtins' byte-at-a-time `memset`,
    /// which cost a reply dozens of nanoseconds.
    #[inline(always)]
    pub fn addr_words(&self) -> ([u32; 4], [u32; 4]) {
        if self.v6 {
            let h = self.v6_hdr();
            (bytes_to_words(h.saddr), bytes_to_words(h.daddr))
        } else {
            let h = self.v4_hdr();
            (
                [u32::from_ne_bytes(h.saddr), 0, 0, 0],
                [u32::from_ne_bytes(h.daddr), 0, 0, 0],
            )
        }
    }

    /// The IPv4 source address (of an IPv4 header).
    #[inline(always)]
    pub fn src4(&self) -> [u8; 4] {
        self.v4_hdr().saddr
    }

    /// The IPv6 source address (of an IPv6 header).
    #[inline(always)]
    pub fn src6(&self) -> [u8; 16] {
        self.v6_hdr().saddr
    }

    #[inline(always)]
    fn v4_hdr(&self) -> Ipv4Hdr {
        // SAFETY: `at` was bounds-checked for an `Ipv4Hdr` by `Frame::ptr` when the header
        // was found (only `Frame`-built values leave this module); byte arrays, alignment 1.
        unsafe { *(self.at as *const Ipv4Hdr) }
    }

    #[inline(always)]
    fn v6_hdr(&self) -> Ipv6Hdr {
        // SAFETY: as in `v4_hdr`, for an `Ipv6Hdr`.
        unsafe { *(self.at as *const Ipv6Hdr) }
    }
}

#[inline(always)]
fn bytes_to_words(a: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

/// Which header a frame starts with: the device's link type, fixed per program.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Ethernet (and loopback, whose header is an all-zero Ethernet header).
    Ethernet,
    /// Devices without a link-layer header (tun, WireGuard, ipip, gre, sit, ppp): the frame
    /// starts at the IP header, and its version nibble says which.
    Ip,
}

/// Walks the frame's headers once.
#[inline(always)]
pub fn parse(f: Frame, link: Link) -> Packet {
    let walked = match link {
        Link::Ethernet => walk(f),
        Link::Ip => walk_ip(f),
    };
    walked.unwrap_or(Packet::new(Kind::Malformed))
}

/// A frame that starts at its IP header; anything but version 4 or 6 is malformed (an L3
/// device carries nothing else, and there is no EtherType to say "not IP").
#[inline(always)]
fn walk_ip(f: Frame) -> Option<Packet> {
    // Read as much as the smallest IP header, not one byte: a one-byte check compiles to
    // `data >= data_end`, from which the verifier grants no readable range. Anything shorter
    // is malformed anyway.
    let head = f.read::<[u8; IPV4_MIN_HLEN]>(0)?;
    match head[0] >> 4 {
        4 => ipv4(f, 0),
        6 => ipv6(f, 0),
        _ => None,
    }
}

/// Ethernet and VLAN tags, then the IP header; `None` means malformed.
#[inline(always)]
fn walk(f: Frame) -> Option<Packet> {
    let eth = f.read::<EthHdr>(0)?;
    let mut ethertype = be16(eth.ethertype);
    let mut off = ETH_HLEN;
    let mut tags = 0;
    while tags < MAX_VLAN_TAGS {
        if !is_vlan(ethertype) {
            break;
        }
        let tag = f.read::<VlanHdr>(off)?;
        ethertype = be16(tag.ethertype);
        off += VLAN_HLEN;
        tags += 1;
    }
    // A third tag is more than any legitimate access or QinQ port carries.
    if is_vlan(ethertype) {
        return None;
    }
    match ethertype {
        ETH_P_IPV4 => ipv4(f, off),
        ETH_P_IPV6 => ipv6(f, off),
        _ => Some(Packet::new(Kind::NonIp)),
    }
}

#[inline(always)]
fn ipv4(f: Frame, off: usize) -> Option<Packet> {
    let at = f.ptr::<Ipv4Hdr>(off)?;
    // SAFETY: `ptr` checked the bounds; a byte array, alignment 1.
    let ip = unsafe { *at };
    if ip.version_ihl >> 4 != 4 {
        return None;
    }
    let hlen = ((ip.version_ihl & 0x0f) as usize) * 4;
    if hlen < IPV4_MIN_HLEN {
        return None;
    }
    // The datagram must fit in the frame; bytes past tot_len are link padding and are
    // never read as transport header.
    let tot_len = be16(ip.tot_len) as usize;
    if tot_len < hlen || off + tot_len > f.len() {
        return None;
    }
    let hdr = IpHdr {
        v6: false,
        at: at as usize,
    };
    let frag_offset = be16(ip.frag_off) & 0x1fff;
    let mut p = if frag_offset != 0 {
        // RFC 1858: a TCP fragment at offset 8 bytes can rewrite the first fragment's flags.
        if ip.protocol == ipproto::TCP && frag_offset == 1 {
            Packet::new(Kind::BadTransport)
        } else {
            Packet::new(Kind::Fragment)
        }
    } else {
        transport(f, off + hlen, off + tot_len, ip.protocol, false)
    };
    p.set_ip(hdr, ip.protocol);
    Some(p)
}

#[inline(always)]
fn ipv6(f: Frame, off: usize) -> Option<Packet> {
    let at = f.ptr::<Ipv6Hdr>(off)?;
    // SAFETY: `ptr` checked the bounds; a byte array, alignment 1.
    let ip = unsafe { *at };
    if ip.vtc_flow[0] >> 4 != 6 {
        return None;
    }
    let limit = off + IPV6_HLEN + be16(ip.payload_len) as usize;
    if limit > f.len() {
        return None;
    }
    let (protocol, mut p) = ipv6_payload(f, off + IPV6_HLEN, limit, ip.nexthdr);
    p.set_ip(
        IpHdr {
            v6: true,
            at: at as usize,
        },
        protocol,
    );
    Some(p)
}

/// Walks the extension headers from `pos`, then the transport header. Returns the protocol
/// the walk stopped at and what it found there.
#[inline(always)]
fn ipv6_payload(f: Frame, mut pos: usize, limit: usize, mut next: u8) -> (u8, Packet) {
    let bad = Packet::new(Kind::BadTransport);
    let mut walked = 0;
    while walked < MAX_IPV6_EXT {
        match next {
            ipproto::HOPOPTS | ipproto::ROUTING | ipproto::DSTOPTS | ipproto::MOBILITY => {
                let Some(h) = f.read::<Ipv6ExtHdr>(pos) else {
                    return (next, bad);
                };
                next = h.nexthdr;
                pos += (h.hdrlen as usize + 1) * 8;
            }
            ipproto::AH => {
                let Some(h) = f.read::<Ipv6ExtHdr>(pos) else {
                    return (next, bad);
                };
                next = h.nexthdr;
                pos += (h.hdrlen as usize + 2) * 4;
            }
            ipproto::FRAGMENT => {
                let Some(h) = f.read::<Ipv6FragHdr>(pos) else {
                    return (next, bad);
                };
                next = h.nexthdr;
                pos += 8;
                // The fragment header itself must lie inside the payload length, or a header
                // sitting in link padding would decide the verdict.
                if pos > limit {
                    return (next, bad);
                }
                if be16(h.frag_off) >> 3 != 0 {
                    return (next, Packet::new(Kind::Fragment));
                }
            }
            _ => break,
        }
        if pos > limit {
            return (next, bad);
        }
        walked += 1;
    }
    // A chain longer than MAX_IPV6_EXT headers.
    if is_ipv6_ext(next) {
        return (next, bad);
    }
    (next, transport(f, pos, limit, next, true))
}

#[inline(always)]
fn is_ipv6_ext(next: u8) -> bool {
    matches!(
        next,
        ipproto::HOPOPTS
            | ipproto::ROUTING
            | ipproto::DSTOPTS
            | ipproto::MOBILITY
            | ipproto::AH
            | ipproto::FRAGMENT
    )
}

/// The transport header at `l4`, which must end by `limit` (the end of the datagram).
/// Leaves the IP fields to the caller.
#[inline(always)]
fn transport(f: Frame, l4: usize, limit: usize, protocol: u8, v6: bool) -> Packet {
    let (slot, min_len) = match protocol {
        ipproto::TCP => (proto::TCP, 20),
        ipproto::UDP => (proto::UDP, 8),
        ipproto::UDPLITE => (proto::UDPLITE, 8),
        ipproto::SCTP => (proto::SCTP, 12),
        ipproto::ICMP if !v6 => return icmp(f, l4, limit),
        ipproto::ICMPV6 if v6 => return icmp(f, l4, limit),
        _ => return Packet::new(Kind::OtherIp),
    };
    let bad = Packet::new(Kind::BadTransport);
    // The whole minimal transport header must be inside the datagram: this also catches a
    // first fragment too short to carry the ports (the tiny-fragment attack).
    if l4 + min_len > limit {
        return bad;
    }
    let Some(ports) = f.read::<PortsHdr>(l4) else {
        return bad;
    };
    let (src_port, dst_port) = (be16(ports.source), be16(ports.dest));
    let mut tcp_flags = 0;
    if protocol == ipproto::TCP {
        let Some(tcp) = f.read::<TcpHdr>(l4) else {
            return bad;
        };
        // Port 0 is reserved and a data offset under 5 words is not a TCP header.
        if src_port == 0 || dst_port == 0 || tcp.doff_res >> 4 < 5 {
            return bad;
        }
        tcp_flags = tcp.flags;
    }
    Packet::ports(slot, src_port, dst_port, tcp_flags)
}

#[inline(always)]
fn icmp(f: Frame, l4: usize, limit: usize) -> Packet {
    let bad = Packet::new(Kind::BadTransport);
    // Type, code and checksum: an ICMP message shorter than that is not one.
    if l4 + 4 > limit {
        return bad;
    }
    let Some(h) = f.read::<IcmpHdr>(l4) else {
        return bad;
    };
    Packet::icmp(h.kind, h.code, l4, limit)
}
