//! Benchmark-only XDP programs, built into the same object as `portfw` but never loaded by
//! `portfw apply`: two floors, a parse-only twin of `portfw`'s header walk, two cumulative
//! steps from it towards portfw, and a transmitter for live-frame injection
//! (`cargo xtask bench`, `portfw-user/benches/`).
//!
//! The floors and the parse-only program give the per-packet cost its reference points:
//! what BPF_PROG_TEST_RUN costs with no work at all, and what parsing alone costs; the steps
//! (table lookup, then the verdict counter) split the rest of portfw's cost. The loader loads
//! only the program named `portfw`, so these cost production nothing at run time: portfw's
//! own instructions (its tag) are the same with or without them.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use portfw_common::{PortEntry, action, counter, ipproto, port_index, proto};

use crate::maps::{PFW_ACTIVE, PFW_COUNTERS, PFW_PORTS, bump};
use crate::parse::{
    ETH_HLEN, ETH_P_IPV4, ETH_P_IPV6, EthHdr, Frame, IPV4_MIN_HLEN, IPV6_HLEN, IcmpHdr, Ipv4Hdr,
    Ipv6ExtHdr, Ipv6FragHdr, Ipv6Hdr, MAX_IPV6_EXT, MAX_VLAN_TAGS, Ports, TcpHdr, VLAN_HLEN,
    VlanHdr, be16, is_vlan,
};

/// The floor for packets portfw passes: no parsing, no maps, the same verdict.
#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The floor for packets portfw drops.
#[xdp]
pub fn bench_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// The load generator's program: run with BPF_F_TEST_XDP_LIVE_FRAMES, every frame it
/// returns `XDP_TX` for leaves through the interface named in the run's context, at the
/// rate of a driver's transmit path rather than a socket's.
#[xdp]
pub fn bench_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// Parses like `portfw` (same cursor, same bounds and sanity checks, in the same order) and
/// looks nothing up: malformed frames get `XDP_DROP`, everything else `XDP_PASS`. Its verdict
/// is not the policy's; only its cost is of interest.
#[xdp]
pub fn bench_parse(ctx: XdpContext) -> u32 {
    match parse(Frame::new(&ctx)) {
        Parsed::Malformed => xdp_action::XDP_DROP,
        Parsed::Other | Parsed::Ports { .. } => xdp_action::XDP_PASS,
    }
}

/// The parse-only program plus portfw's two table reads (the active generation, then the
/// port entry) and the verdict they give: what portfw costs without counters, rule hits,
/// source rules and events. Reads the maps of the object it is loaded with.
#[xdp]
pub fn bench_lookup(ctx: XdpContext) -> u32 {
    match parse(Frame::new(&ctx)) {
        Parsed::Malformed => xdp_action::XDP_DROP,
        Parsed::Other => xdp_action::XDP_PASS,
        Parsed::Ports { slot, dst_port } => match port_entry(slot, dst_port) {
            Some(e) if e.action == action::DROP => xdp_action::XDP_DROP,
            Some(_) => xdp_action::XDP_PASS,
            None => xdp_action::XDP_DROP,
        },
    }
}

/// `bench_lookup` plus portfw's per-CPU verdict counter.
#[xdp]
pub fn bench_count(ctx: XdpContext) -> u32 {
    let (verdict, kind) = match parse(Frame::new(&ctx)) {
        Parsed::Malformed => (xdp_action::XDP_DROP, counter::MALFORMED),
        Parsed::Other => (xdp_action::XDP_PASS, counter::OTHER_IP_ALLOW),
        Parsed::Ports { slot, dst_port } => match port_entry(slot, dst_port) {
            Some(e) if e.action == action::DROP => (xdp_action::XDP_DROP, counter::DROP_RULE),
            Some(_) => (xdp_action::XDP_PASS, counter::ALLOW_RULE),
            None => (xdp_action::XDP_DROP, counter::MALFORMED),
        },
    };
    bump(&PFW_COUNTERS, kind);
    verdict
}

#[inline(always)]
fn port_entry(slot: u32, dst_port: u16) -> Option<PortEntry> {
    let generation = match PFW_ACTIVE.get(0) {
        Some(g) => *g & 1,
        None => 0,
    };
    PFW_PORTS
        .get(port_index(generation, slot, dst_port))
        .copied()
}

/// What the header walk found.
#[derive(Clone, Copy)]
enum Parsed {
    Malformed,
    /// Judged by a setting in portfw (non-IP, ICMP, other protocols, fragments).
    Other,
    Ports {
        slot: u32,
        dst_port: u16,
    },
}

/// Mirrors `classify` in main.rs.
#[inline(always)]
fn parse(f: Frame) -> Parsed {
    let Some(eth) = f.read::<EthHdr>(0) else {
        return Parsed::Malformed;
    };
    let mut ethertype = be16(eth.ethertype);
    let mut off = ETH_HLEN;
    let mut tags = 0;
    while tags < MAX_VLAN_TAGS {
        if !is_vlan(ethertype) {
            break;
        }
        let Some(tag) = f.read::<VlanHdr>(off) else {
            return Parsed::Malformed;
        };
        ethertype = be16(tag.ethertype);
        off += VLAN_HLEN;
        tags += 1;
    }
    if is_vlan(ethertype) {
        return Parsed::Malformed;
    }
    match ethertype {
        ETH_P_IPV4 => ipv4(f, off),
        ETH_P_IPV6 => ipv6(f, off),
        _ => Parsed::Other,
    }
}

#[inline(always)]
fn ipv4(f: Frame, off: usize) -> Parsed {
    let Some(ip) = f.read::<Ipv4Hdr>(off) else {
        return Parsed::Malformed;
    };
    if ip.version_ihl >> 4 != 4 {
        return Parsed::Malformed;
    }
    let hlen = ((ip.version_ihl & 0x0f) as usize) * 4;
    if hlen < IPV4_MIN_HLEN {
        return Parsed::Malformed;
    }
    let tot_len = be16(ip.tot_len) as usize;
    if tot_len < hlen || off + tot_len > f.len() {
        return Parsed::Malformed;
    }
    let frag_offset = be16(ip.frag_off) & 0x1fff;
    if frag_offset != 0 {
        return if ip.protocol == ipproto::TCP && frag_offset == 1 {
            Parsed::Malformed
        } else {
            Parsed::Other
        };
    }
    transport(f, off + hlen, off + tot_len, ip.protocol, false)
}

#[inline(always)]
fn ipv6(f: Frame, off: usize) -> Parsed {
    let Some(ip) = f.read::<Ipv6Hdr>(off) else {
        return Parsed::Malformed;
    };
    if ip.vtc_flow[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let limit = off + IPV6_HLEN + be16(ip.payload_len) as usize;
    if limit > f.len() {
        return Parsed::Malformed;
    }
    let mut next = ip.nexthdr;
    let mut pos = off + IPV6_HLEN;
    let mut walked = 0;
    while walked < MAX_IPV6_EXT {
        match next {
            ipproto::HOPOPTS | ipproto::ROUTING | ipproto::DSTOPTS | ipproto::MOBILITY => {
                let Some(h) = f.read::<Ipv6ExtHdr>(pos) else {
                    return Parsed::Malformed;
                };
                next = h.nexthdr;
                pos += (h.hdrlen as usize + 1) * 8;
            }
            ipproto::AH => {
                let Some(h) = f.read::<Ipv6ExtHdr>(pos) else {
                    return Parsed::Malformed;
                };
                next = h.nexthdr;
                pos += (h.hdrlen as usize + 2) * 4;
            }
            ipproto::FRAGMENT => {
                let Some(h) = f.read::<Ipv6FragHdr>(pos) else {
                    return Parsed::Malformed;
                };
                next = h.nexthdr;
                pos += 8;
                if pos > limit {
                    return Parsed::Malformed;
                }
                if be16(h.frag_off) >> 3 != 0 {
                    return Parsed::Other;
                }
            }
            _ => break,
        }
        if pos > limit {
            return Parsed::Malformed;
        }
        walked += 1;
    }
    if matches!(
        next,
        ipproto::HOPOPTS
            | ipproto::ROUTING
            | ipproto::DSTOPTS
            | ipproto::MOBILITY
            | ipproto::AH
            | ipproto::FRAGMENT
    ) {
        return Parsed::Malformed;
    }
    transport(f, pos, limit, next, true)
}

#[inline(always)]
fn transport(f: Frame, l4: usize, limit: usize, protocol: u8, v6: bool) -> Parsed {
    let (slot, min_len) = match protocol {
        ipproto::TCP => (proto::TCP, 20),
        ipproto::UDP => (proto::UDP, 8),
        ipproto::UDPLITE => (proto::UDPLITE, 8),
        ipproto::SCTP => (proto::SCTP, 12),
        ipproto::ICMP if !v6 => return icmp(f, l4, limit),
        ipproto::ICMPV6 if v6 => return icmp(f, l4, limit),
        _ => return Parsed::Other,
    };
    if l4 + min_len > limit {
        return Parsed::Malformed;
    }
    let Some(ports) = f.read::<Ports>(l4) else {
        return Parsed::Malformed;
    };
    let src_port = be16(ports.source);
    let dst_port = be16(ports.dest);
    if protocol == ipproto::TCP {
        let Some(tcp) = f.read::<TcpHdr>(l4) else {
            return Parsed::Malformed;
        };
        if src_port == 0 || dst_port == 0 || tcp.doff_res >> 4 < 5 {
            return Parsed::Malformed;
        }
    }
    Parsed::Ports { slot, dst_port }
}

#[inline(always)]
fn icmp(f: Frame, l4: usize, limit: usize) -> Parsed {
    if l4 + 4 > limit {
        return Parsed::Malformed;
    }
    match f.read::<IcmpHdr>(l4) {
        Some(_) => Parsed::Other,
        None => Parsed::Malformed,
    }
}
