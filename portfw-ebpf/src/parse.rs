//! The header walk: one bounds-checked cursor over the frame, turned into a [`Packet`].
//!
//! Parsing decides nothing. It reads each header once, checks it, and describes what it
//! found; `judge` looks the description up in the tables, and `emit` reports it. Every read
//! goes through [`Frame::ptr`], which checks `offset + len` against `data_end` before it
//! forms the pointer, so no read can leave the packet. Loops are bounded by constants.

use aya_ebpf::programs::{TcContext, XdpContext};
use portfw_common::{ipproto, proto};

use crate::headers::{
    ETH_HLEN, ETH_P_IPV4, ETH_P_IPV6, EthHdr, ICMP_DEST_UNREACH, ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST, ICMP_HLEN, ICMP_PARAMETER_PROBLEM, ICMP_TIME_EXCEEDED, ICMPV6_DEST_UNREACH,
    ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, ICMPV6_PACKET_TOO_BIG, ICMPV6_PARAMETER_PROBLEM,
    ICMPV6_TIME_EXCEEDED, IPV4_MIN_HLEN, IPV6_HLEN, IcmpEcho, IcmpHdr, Ipv4Hdr, Ipv6ExtHdr,
    Ipv6FragHdr, Ipv6Hdr, MAX_IPV6_EXT, MAX_VLAN_TAGS, Ports as PortsHdr, TcpHdr, VLAN_HLEN,
    VlanHdr, be16, is_vlan,
};

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
        self.checked::<T>(offset).map(|h| h.get())
    }

    /// `T` at `offset`, bounds-checked once, to be read later.
    #[inline(always)]
    fn checked<T: Copy>(&self, offset: usize) -> Option<Checked<T>> {
        self.ptr::<T>(offset).map(Checked)
    }

    #[inline(always)]
    fn len(&self) -> usize {
        self.end - self.data
    }
}

/// A header that the cursor has bounds-checked: it lies wholly inside the packet, which
/// stays where it is for the whole program run (portfw never moves packet data). Keeping
/// the pointer rather than a copy lets the description carry the IPv6 addresses without
/// 32 bytes of stack per copy of the description.
#[derive(Clone, Copy)]
pub struct Checked<T>(*const T);

impl<T: Copy> Checked<T> {
    #[inline(always)]
    pub fn get(&self) -> T {
        // SAFETY: built only by `Frame::checked`, after the bounds check; `T` is a byte
        // array (alignment 1).
        unsafe { *self.0 }
    }
}

/// What the header walk found: the whole input of `judge` and `emit`.
#[derive(Clone, Copy)]
pub enum Packet {
    /// A frame whose EtherType is neither IPv4 nor IPv6 (ARP, LLDP, ...).
    NonIp,
    /// A frame that could not be walked up to a valid IP header (truncated Ethernet or VLAN
    /// header, a third VLAN tag, a broken IPv4 or IPv6 header). Nothing of it is reported.
    Malformed,
    /// An IPv4 or IPv6 datagram whose IP header was read and checked.
    Ip(Ip),
}

/// The IP layer of a packet, and what follows it.
#[derive(Clone, Copy)]
pub struct Ip {
    /// The checked IP header, for its addresses.
    pub hdr: IpHdr,
    /// The protocol the walk stopped at: the transport protocol, after any IPv6 extension
    /// headers (or the extension header that could not be walked).
    pub protocol: u8,
    pub l4: L4,
}

/// The IP header of either family.
#[derive(Clone, Copy)]
pub enum IpHdr {
    V4(Checked<Ipv4Hdr>),
    V6(Checked<Ipv6Hdr>),
}

impl Ip {
    #[inline(always)]
    pub fn is_v6(&self) -> bool {
        matches!(self.hdr, IpHdr::V6(_))
    }
}

/// The transport layer, as far as the walk could read it.
#[derive(Clone, Copy)]
pub enum L4 {
    /// TCP, UDP, UDP-Lite or SCTP: judged by the port table. `slot` is the protocol's slot
    /// in that table; `tcp_flags` is zero for the other protocols.
    Ports {
        slot: u32,
        src_port: u16,
        dst_port: u16,
        tcp_flags: u8,
    },
    /// ICMP in IPv4, ICMPv6 in IPv6.
    Icmp {
        kind: u8,
        code: u8,
        about: IcmpAbout,
    },
    /// A non-first fragment, which carries no transport header.
    Fragment,
    /// Any other IP protocol.
    OtherIp,
    /// A transport header (or IPv6 extension header chain) that is truncated, lies outside
    /// the datagram, or is invalid.
    Malformed,
}

/// What an ICMP message says about a flow, for the flow table.
#[derive(Clone, Copy)]
pub enum IcmpAbout {
    /// Neither an echo nor an error with a readable embedded header.
    Nothing,
    /// An echo request (`request`) or reply, with its identifier.
    Echo { request: bool, id: u16 },
    /// An error (destination unreachable, packet too big, time exceeded, parameter problem)
    /// whose embedded datagram starts with a readable IP header and eight transport bytes.
    Error(Embedded),
}

/// The start of the datagram an ICMP error quotes: a packet that went the other way, so
/// its source is our side.
#[derive(Clone, Copy)]
pub struct Embedded {
    pub hdr: IpHdr,
    pub protocol: u8,
    /// For a quoted echo request: its identifier, and 0.
    pub src_port: u16,
    pub dst_port: u16,
}

/// Walks the frame's headers once.
#[inline(always)]
pub fn parse(f: Frame) -> Packet {
    walk(f).unwrap_or(Packet::Malformed)
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
        ETH_P_IPV4 => ipv4(f, off).map(Packet::Ip),
        ETH_P_IPV6 => ipv6(f, off).map(Packet::Ip),
        _ => Some(Packet::NonIp),
    }
}

#[inline(always)]
fn ipv4(f: Frame, off: usize) -> Option<Ip> {
    let hdr = f.checked::<Ipv4Hdr>(off)?;
    let ip = hdr.get();
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
    let frag_offset = be16(ip.frag_off) & 0x1fff;
    let l4 = if frag_offset != 0 {
        // RFC 1858: a TCP fragment at offset 8 bytes can rewrite the first fragment's flags.
        if ip.protocol == ipproto::TCP && frag_offset == 1 {
            L4::Malformed
        } else {
            L4::Fragment
        }
    } else {
        transport(f, off + hlen, off + tot_len, ip.protocol, false)
    };
    Some(Ip {
        hdr: IpHdr::V4(hdr),
        protocol: ip.protocol,
        l4,
    })
}

#[inline(always)]
fn ipv6(f: Frame, off: usize) -> Option<Ip> {
    let hdr = f.checked::<Ipv6Hdr>(off)?;
    let ip = hdr.get();
    if ip.vtc_flow[0] >> 4 != 6 {
        return None;
    }
    let limit = off + IPV6_HLEN + be16(ip.payload_len) as usize;
    if limit > f.len() {
        return None;
    }
    let (protocol, l4) = ipv6_payload(f, off + IPV6_HLEN, limit, ip.nexthdr);
    Some(Ip {
        hdr: IpHdr::V6(hdr),
        protocol,
        l4,
    })
}

/// Walks the extension headers from `pos`, then the transport header. Returns the protocol
/// the walk stopped at and what it found there.
#[inline(always)]
fn ipv6_payload(f: Frame, mut pos: usize, limit: usize, mut next: u8) -> (u8, L4) {
    let mut walked = 0;
    while walked < MAX_IPV6_EXT {
        match next {
            ipproto::HOPOPTS | ipproto::ROUTING | ipproto::DSTOPTS | ipproto::MOBILITY => {
                let Some(h) = f.read::<Ipv6ExtHdr>(pos) else {
                    return (next, L4::Malformed);
                };
                next = h.nexthdr;
                pos += (h.hdrlen as usize + 1) * 8;
            }
            ipproto::AH => {
                let Some(h) = f.read::<Ipv6ExtHdr>(pos) else {
                    return (next, L4::Malformed);
                };
                next = h.nexthdr;
                pos += (h.hdrlen as usize + 2) * 4;
            }
            ipproto::FRAGMENT => {
                let Some(h) = f.read::<Ipv6FragHdr>(pos) else {
                    return (next, L4::Malformed);
                };
                next = h.nexthdr;
                pos += 8;
                // The fragment header itself must lie inside the payload length, or a header
                // sitting in link padding would decide the verdict.
                if pos > limit {
                    return (next, L4::Malformed);
                }
                if be16(h.frag_off) >> 3 != 0 {
                    return (next, L4::Fragment);
                }
            }
            _ => break,
        }
        if pos > limit {
            return (next, L4::Malformed);
        }
        walked += 1;
    }
    // A chain longer than MAX_IPV6_EXT headers.
    if is_ipv6_ext(next) {
        return (next, L4::Malformed);
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
#[inline(always)]
fn transport(f: Frame, l4: usize, limit: usize, protocol: u8, v6: bool) -> L4 {
    let (slot, min_len) = match protocol {
        ipproto::TCP => (proto::TCP, 20),
        ipproto::UDP => (proto::UDP, 8),
        ipproto::UDPLITE => (proto::UDPLITE, 8),
        ipproto::SCTP => (proto::SCTP, 12),
        ipproto::ICMP if !v6 => return icmp(f, l4, limit, false),
        ipproto::ICMPV6 if v6 => return icmp(f, l4, limit, true),
        _ => return L4::OtherIp,
    };
    // The whole minimal transport header must be inside the datagram: this also catches a
    // first fragment too short to carry the ports (the tiny-fragment attack).
    if l4 + min_len > limit {
        return L4::Malformed;
    }
    let Some(ports) = f.read::<PortsHdr>(l4) else {
        return L4::Malformed;
    };
    let src_port = be16(ports.source);
    let dst_port = be16(ports.dest);
    let mut tcp_flags = 0;
    if protocol == ipproto::TCP {
        let Some(tcp) = f.read::<TcpHdr>(l4) else {
            return L4::Malformed;
        };
        // Port 0 is reserved and a data offset under 5 words is not a TCP header.
        if src_port == 0 || dst_port == 0 || tcp.doff_res >> 4 < 5 {
            return L4::Malformed;
        }
        tcp_flags = tcp.flags;
    }
    L4::Ports {
        slot,
        src_port,
        dst_port,
        tcp_flags,
    }
}

#[inline(always)]
fn icmp(f: Frame, l4: usize, limit: usize, v6: bool) -> L4 {
    // Type, code and checksum: an ICMP message shorter than that is not one.
    if l4 + 4 > limit {
        return L4::Malformed;
    }
    let Some(h) = f.read::<IcmpHdr>(l4) else {
        return L4::Malformed;
    };
    // Both echo and errors have four more header bytes (identifier and sequence, or unused),
    // then the quoted datagram; a message too short for them is about nothing.
    let about = match f.read::<IcmpEcho>(l4) {
        Some(echo) if l4 + ICMP_HLEN <= limit => match (v6, h.kind) {
            (false, ICMP_ECHO_REQUEST) | (true, ICMPV6_ECHO_REQUEST) => IcmpAbout::Echo {
                request: true,
                id: be16(echo.id),
            },
            (false, ICMP_ECHO_REPLY) | (true, ICMPV6_ECHO_REPLY) => IcmpAbout::Echo {
                request: false,
                id: be16(echo.id),
            },
            (false, ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM)
            | (
                true,
                ICMPV6_DEST_UNREACH
                | ICMPV6_PACKET_TOO_BIG
                | ICMPV6_TIME_EXCEEDED
                | ICMPV6_PARAMETER_PROBLEM,
            ) => match embedded(f, l4 + ICMP_HLEN, limit, v6) {
                Some(inner) => IcmpAbout::Error(inner),
                None => IcmpAbout::Nothing,
            },
            _ => IcmpAbout::Nothing,
        },
        _ => IcmpAbout::Nothing,
    };
    L4::Icmp {
        kind: h.kind,
        code: h.code,
        about,
    }
}

/// The quoted datagram of an ICMP error at `at`: an IP header of the message's own family
/// and the first eight bytes after it, all before `limit`. Its length fields describe the
/// original datagram, which the error truncates, so they are not checked against the frame;
/// IPv6 extension headers in the quote are not walked (a quote that has them is about
/// nothing), nor are quoted non-first fragments.
#[inline(always)]
fn embedded(f: Frame, at: usize, limit: usize, v6: bool) -> Option<Embedded> {
    let (hdr, protocol, l4) = if v6 {
        let hdr = f.checked::<Ipv6Hdr>(at)?;
        let ip = hdr.get();
        if ip.vtc_flow[0] >> 4 != 6 {
            return None;
        }
        (IpHdr::V6(hdr), ip.nexthdr, at + IPV6_HLEN)
    } else {
        let hdr = f.checked::<Ipv4Hdr>(at)?;
        let ip = hdr.get();
        let hlen = ((ip.version_ihl & 0x0f) as usize) * 4;
        if ip.version_ihl >> 4 != 4 || hlen < IPV4_MIN_HLEN || be16(ip.frag_off) & 0x1fff != 0 {
            return None;
        }
        (IpHdr::V4(hdr), ip.protocol, at + hlen)
    };
    if l4 + ICMP_HLEN > limit {
        return None;
    }
    let quoted = f.read::<IcmpEcho>(l4)?;
    let (src_port, dst_port) = match protocol {
        ipproto::TCP | ipproto::UDP | ipproto::UDPLITE | ipproto::SCTP => {
            let ports = f.read::<PortsHdr>(l4)?;
            (be16(ports.source), be16(ports.dest))
        }
        ipproto::ICMP if !v6 && quoted.kind == ICMP_ECHO_REQUEST => (be16(quoted.id), 0),
        ipproto::ICMPV6 if v6 && quoted.kind == ICMPV6_ECHO_REQUEST => (be16(quoted.id), 0),
        _ => return None,
    };
    Some(Embedded {
        hdr,
        protocol,
        src_port,
        dst_port,
    })
}
