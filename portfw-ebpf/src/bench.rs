//! Benchmark-only XDP programs, built into the same object as `portfw` but never loaded by
//! `portfw apply`: two floors, a parse-only twin of `portfw`'s header walk, and a transmitter
//! for live-frame injection (`cargo xtask bench`, `portfw-user/benches/`).
//!
//! The floors and the parse-only program give the per-packet cost its reference points:
//! what BPF_PROG_TEST_RUN costs with no work at all, and what parsing alone costs, so the
//! price of portfw's lookups, counters and events can be told apart from both. The loader
//! loads only the program named `portfw`, so these cost production nothing at run time; they
//! add a few hundred bytes to the embedded object.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use portfw_common::ipproto;

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
    if parse(Frame::new(&ctx)) {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

/// `true` when the frame parses; mirrors `classify` in main.rs.
#[inline(always)]
fn parse(f: Frame) -> bool {
    let Some(eth) = f.read::<EthHdr>(0) else {
        return false;
    };
    let mut ethertype = be16(eth.ethertype);
    let mut off = ETH_HLEN;
    let mut tags = 0;
    while tags < MAX_VLAN_TAGS {
        if !is_vlan(ethertype) {
            break;
        }
        let Some(tag) = f.read::<VlanHdr>(off) else {
            return false;
        };
        ethertype = be16(tag.ethertype);
        off += VLAN_HLEN;
        tags += 1;
    }
    if is_vlan(ethertype) {
        return false;
    }
    match ethertype {
        ETH_P_IPV4 => ipv4(f, off),
        ETH_P_IPV6 => ipv6(f, off),
        _ => true,
    }
}

#[inline(always)]
fn ipv4(f: Frame, off: usize) -> bool {
    let Some(ip) = f.read::<Ipv4Hdr>(off) else {
        return false;
    };
    if ip.version_ihl >> 4 != 4 {
        return false;
    }
    let hlen = ((ip.version_ihl & 0x0f) as usize) * 4;
    if hlen < IPV4_MIN_HLEN {
        return false;
    }
    let tot_len = be16(ip.tot_len) as usize;
    if tot_len < hlen || off + tot_len > f.len() {
        return false;
    }
    let frag_offset = be16(ip.frag_off) & 0x1fff;
    if frag_offset != 0 {
        return !(ip.protocol == ipproto::TCP && frag_offset == 1);
    }
    transport(f, off + hlen, off + tot_len, ip.protocol, false)
}

#[inline(always)]
fn ipv6(f: Frame, off: usize) -> bool {
    let Some(ip) = f.read::<Ipv6Hdr>(off) else {
        return false;
    };
    if ip.vtc_flow[0] >> 4 != 6 {
        return false;
    }
    let limit = off + IPV6_HLEN + be16(ip.payload_len) as usize;
    if limit > f.len() {
        return false;
    }
    let mut next = ip.nexthdr;
    let mut pos = off + IPV6_HLEN;
    let mut walked = 0;
    while walked < MAX_IPV6_EXT {
        match next {
            ipproto::HOPOPTS | ipproto::ROUTING | ipproto::DSTOPTS | ipproto::MOBILITY => {
                let Some(h) = f.read::<Ipv6ExtHdr>(pos) else {
                    return false;
                };
                next = h.nexthdr;
                pos += (h.hdrlen as usize + 1) * 8;
            }
            ipproto::AH => {
                let Some(h) = f.read::<Ipv6ExtHdr>(pos) else {
                    return false;
                };
                next = h.nexthdr;
                pos += (h.hdrlen as usize + 2) * 4;
            }
            ipproto::FRAGMENT => {
                let Some(h) = f.read::<Ipv6FragHdr>(pos) else {
                    return false;
                };
                next = h.nexthdr;
                pos += 8;
                if pos > limit {
                    return false;
                }
                if be16(h.frag_off) >> 3 != 0 {
                    return true;
                }
            }
            _ => break,
        }
        if pos > limit {
            return false;
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
        return false;
    }
    transport(f, pos, limit, next, true)
}

#[inline(always)]
fn transport(f: Frame, l4: usize, limit: usize, protocol: u8, v6: bool) -> bool {
    let min_len = match protocol {
        ipproto::TCP => 20,
        ipproto::UDP | ipproto::UDPLITE => 8,
        ipproto::SCTP => 12,
        ipproto::ICMP if !v6 => return icmp(f, l4, limit),
        ipproto::ICMPV6 if v6 => return icmp(f, l4, limit),
        _ => return true,
    };
    if l4 + min_len > limit {
        return false;
    }
    let Some(ports) = f.read::<Ports>(l4) else {
        return false;
    };
    let src_port = be16(ports.source);
    let dst_port = be16(ports.dest);
    if protocol == ipproto::TCP {
        let Some(tcp) = f.read::<TcpHdr>(l4) else {
            return false;
        };
        return !(src_port == 0 || dst_port == 0 || tcp.doff_res >> 4 < 5);
    }
    // portfw indexes its table with the destination port; depending on it here keeps the
    // load (and its byte swap) in the program, as in portfw, instead of letting LLVM drop it.
    dst_port != 0 || src_port != 0
}

#[inline(always)]
fn icmp(f: Frame, l4: usize, limit: usize) -> bool {
    if l4 + 4 > limit {
        return false;
    }
    f.read::<IcmpHdr>(l4).is_some()
}
