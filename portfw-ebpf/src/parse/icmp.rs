//! What an ICMP message says about a flow: an echo's identifier, or the quoted datagram of
//! an error, read with the header walk's cursor for the flow table.

use portfw_common::ipproto;

use super::{Frame, IpHdr, Kind, Packet};
use crate::headers::{
    ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP_HLEN, ICMP_PARAMETER_PROBLEM,
    ICMP_TIME_EXCEEDED, ICMPV6_DEST_UNREACH, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST,
    ICMPV6_PACKET_TOO_BIG, ICMPV6_PARAMETER_PROBLEM, ICMPV6_TIME_EXCEEDED, IPV4_MIN_HLEN,
    IPV6_HLEN, IcmpEcho, Ipv4Hdr, Ipv6Hdr, Ports as PortsHdr, be16,
};

/// What an ICMP message says about a flow, for the flow table.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum IcmpSays {
    /// Neither an echo nor an error with a readable quoted header.
    Nothing,
    EchoRequest,
    EchoReply,
    /// An error (destination unreachable, packet too big, time exceeded, parameter problem)
    /// whose quoted datagram starts with a readable IP header and eight transport bytes.
    Error,
}

/// [`IcmpSays`] with its details; every field set on every path, as in [`Packet`].
#[derive(Clone, Copy)]
pub struct IcmpAbout {
    pub says: IcmpSays,
    /// Echo: the identifier.
    pub echo_id: u16,
    /// Error: the quoted datagram, a packet that went the other way, so its source is our
    /// side; for a quoted echo request the ports are its identifier and 0.
    pub quoted: IpHdr,
    pub quoted_protocol: u8,
    pub quoted_src_port: u16,
    pub quoted_dst_port: u16,
}

impl IcmpAbout {
    const NOTHING: Self = Self {
        says: IcmpSays::Nothing,
        echo_id: 0,
        quoted: IpHdr::NONE,
        quoted_protocol: 0,
        quoted_src_port: 0,
        quoted_dst_port: 0,
    };
}

/// What the ICMP message of `p` (a [`Kind::Icmp`] packet of frame `f`) says about a flow,
/// read with the same cursor: an echo's identifier, or the quoted header of an error.
#[inline(always)]
pub fn icmp_about(f: Frame, p: &Packet) -> IcmpAbout {
    let mut about = IcmpAbout::NOTHING;
    let Some(hdr) = p.ip() else {
        return about;
    };
    let (l4, limit, v6) = (p.l4_at(), p.end(), hdr.is_v6());
    // Both echo and errors have four more header bytes (identifier and sequence, or unused),
    // then the quoted datagram; a message too short for them is about nothing.
    if p.kind() != Kind::Icmp || l4 + ICMP_HLEN > limit {
        return about;
    }
    let Some(echo) = f.read::<IcmpEcho>(l4) else {
        return about;
    };
    match (v6, echo.kind) {
        (false, ICMP_ECHO_REQUEST) | (true, ICMPV6_ECHO_REQUEST) => {
            about.says = IcmpSays::EchoRequest;
            about.echo_id = be16(echo.id);
        }
        (false, ICMP_ECHO_REPLY) | (true, ICMPV6_ECHO_REPLY) => {
            about.says = IcmpSays::EchoReply;
            about.echo_id = be16(echo.id);
        }
        (false, ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM)
        | (
            true,
            ICMPV6_DEST_UNREACH
            | ICMPV6_PACKET_TOO_BIG
            | ICMPV6_TIME_EXCEEDED
            | ICMPV6_PARAMETER_PROBLEM,
        ) => quoted(f, l4 + ICMP_HLEN, limit, v6, &mut about),
        _ => {}
    }
    about
}

/// The quoted datagram of an ICMP error at `at`: an IP header of the message's own family
/// and the first eight bytes after it, all before `limit`. Its length fields describe the
/// original datagram, which the error truncates, so they are not checked against the frame;
/// IPv6 extension headers in the quote are not walked (a quote that has them is about
/// nothing), nor are quoted non-first fragments. Leaves `about` as it was unless the quote
/// is readable.
#[inline(always)]
fn quoted(f: Frame, at: usize, limit: usize, v6: bool, about: &mut IcmpAbout) {
    let (hdr, protocol, l4) = if v6 {
        let Some(ptr) = f.ptr::<Ipv6Hdr>(at) else {
            return;
        };
        // SAFETY: `ptr` checked the bounds; a byte array, alignment 1.
        let ip = unsafe { *ptr };
        if ip.vtc_flow[0] >> 4 != 6 {
            return;
        }
        let hdr = IpHdr {
            v6: true,
            at: ptr as usize,
        };
        (hdr, ip.nexthdr, at + IPV6_HLEN)
    } else {
        let Some(ptr) = f.ptr::<Ipv4Hdr>(at) else {
            return;
        };
        // SAFETY: as above.
        let ip = unsafe { *ptr };
        let hlen = ((ip.version_ihl & 0x0f) as usize) * 4;
        if ip.version_ihl >> 4 != 4 || hlen < IPV4_MIN_HLEN || be16(ip.frag_off) & 0x1fff != 0 {
            return;
        }
        let hdr = IpHdr {
            v6: false,
            at: ptr as usize,
        };
        (hdr, ip.protocol, at + hlen)
    };
    if l4 + ICMP_HLEN > limit {
        return;
    }
    let Some(first) = f.read::<IcmpEcho>(l4) else {
        return;
    };
    let (src_port, dst_port) = match protocol {
        ipproto::TCP | ipproto::UDP | ipproto::UDPLITE | ipproto::SCTP => {
            let Some(ports) = f.read::<PortsHdr>(l4) else {
                return;
            };
            (be16(ports.source), be16(ports.dest))
        }
        ipproto::ICMP if !v6 && first.kind == ICMP_ECHO_REQUEST => (be16(first.id), 0),
        ipproto::ICMPV6 if v6 && first.kind == ICMPV6_ECHO_REQUEST => (be16(first.id), 0),
        _ => return,
    };
    *about = IcmpAbout {
        says: IcmpSays::Error,
        echo_id: 0,
        quoted: hdr,
        quoted_protocol: protocol,
        quoted_src_port: src_port,
        quoted_dst_port: dst_port,
    };
}
