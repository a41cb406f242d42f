//! The portfw XDP program: parse the headers of each frame and judge it with O(1) table lookups.
//!
//! Flow: read the active generation, walk Ethernet → VLAN tags → IPv4/IPv6 (+ extension
//! headers) → transport ports, look the (protocol, destination port) up in the port table,
//! then count, optionally log, and return the verdict. Anything that cannot be parsed
//! safely is dropped and counted as malformed.
#![no_std]
#![no_main]

mod bench;
mod maps;
mod parse;

use aya_ebpf::btf_maps::lpm_trie::Key;
use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_ktime_get_ns, macros::xdp, programs::XdpContext,
};
use maps::{
    PFW_ACTIVE, PFW_COUNTERS, PFW_EVENTS, PFW_PORTS, PFW_SETTINGS, PFW_SRC4, PFW_SRC6, bump,
};
use parse::{
    ETH_HLEN, ETH_P_IPV4, ETH_P_IPV6, EthHdr, Frame, IPV4_MIN_HLEN, IPV6_HLEN, IcmpHdr, Ipv4Hdr,
    Ipv6ExtHdr, Ipv6FragHdr, Ipv6Hdr, MAX_IPV6_EXT, MAX_VLAN_TAGS, Ports, TcpHdr, VLAN_HLEN,
    VlanHdr, be16, is_vlan,
};
use portfw_common::{
    Event, MAX_RULES, NO_SOURCE_GROUP, PortEntry, RULE_MALFORMED, RULE_SETTING, SOURCE_GROUP_BITS,
    Settings, action, counter, ipproto, port_flags, port_index, proto, settings_log, source_key4,
    source_key6,
};

/// How a packet was judged.
#[derive(Clone, Copy)]
struct Judgement {
    action: u8,
    rule: u32,
    counter: u32,
    log: bool,
}

/// What the parser learned about the packet, for events.
#[derive(Clone, Copy, Default)]
struct Meta {
    ip_version: u8,
    l3: usize,
    protocol: u8,
    tcp_flags: u8,
    src_port: u16,
    dst_port: u16,
}

#[xdp]
pub fn portfw(ctx: XdpContext) -> u32 {
    let frame = Frame::new(&ctx);
    // Read once: every table lookup for this packet uses the same generation, so a policy
    // swap never mixes two policies within one packet.
    let generation = match PFW_ACTIVE.get(0) {
        Some(g) => *g & 1,
        None => 0,
    };
    let mut meta = Meta::default();
    let judgement = classify(frame, generation, &mut meta);

    bump(&PFW_COUNTERS, judgement.counter);
    if judgement.rule < MAX_RULES {
        maps::bump_rule(generation, judgement.rule);
    }
    if judgement.log {
        emit(&ctx, frame, &meta, &judgement);
    }
    if judgement.action == action::DROP {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// All-allow settings for a generation that was never written (the map always has both
/// slots, so this only guards the lookup's `None`).
static NO_SETTINGS: Settings = Settings {
    fragments: action::ALLOW,
    other_ip: action::ALLOW,
    non_ip: action::ALLOW,
    log: 0,
    icmp_frag_needed: action::ALLOW,
    _pad: [0; 3],
    icmp4_drop: [0; 32],
    icmp6_drop: [0; 32],
};

/// The generation's settings, by reference: copying the 72-byte struct at every use would
/// bloat each call site.
#[inline(always)]
fn settings(generation: u32) -> &'static Settings {
    PFW_SETTINGS.get(generation).unwrap_or(&NO_SETTINGS)
}

#[inline(always)]
fn malformed(generation: u32) -> Judgement {
    Judgement {
        action: action::DROP,
        rule: RULE_MALFORMED,
        counter: counter::MALFORMED,
        log: settings(generation).log & settings_log::DROP != 0,
    }
}

/// A verdict that comes from a policy setting rather than the port table.
#[inline(always)]
fn by_setting(verdict: u8, log_bits: u8, allow_counter: u32, drop_counter: u32) -> Judgement {
    let drop = verdict == action::DROP;
    let (counter, bit) = if drop {
        (drop_counter, settings_log::DROP)
    } else {
        (allow_counter, settings_log::ALLOW)
    };
    Judgement {
        action: if drop { action::DROP } else { action::ALLOW },
        rule: RULE_SETTING,
        counter,
        log: log_bits & bit != 0,
    }
}

#[inline(always)]
fn fragment(generation: u32) -> Judgement {
    let s = settings(generation);
    by_setting(
        s.fragments,
        s.log,
        counter::FRAGMENT_ALLOW,
        counter::FRAGMENT_DROP,
    )
}

#[inline(always)]
fn other_ip(generation: u32) -> Judgement {
    let s = settings(generation);
    by_setting(
        s.other_ip,
        s.log,
        counter::OTHER_IP_ALLOW,
        counter::OTHER_IP_DROP,
    )
}

#[inline(always)]
fn classify(f: Frame, generation: u32, m: &mut Meta) -> Judgement {
    let Some(eth) = f.read::<EthHdr>(0) else {
        return malformed(generation);
    };
    let mut ethertype = be16(eth.ethertype);
    let mut off = ETH_HLEN;
    let mut tags = 0;
    while tags < MAX_VLAN_TAGS {
        if !is_vlan(ethertype) {
            break;
        }
        let Some(tag) = f.read::<VlanHdr>(off) else {
            return malformed(generation);
        };
        ethertype = be16(tag.ethertype);
        off += VLAN_HLEN;
        tags += 1;
    }
    // A third tag is more than any legitimate access or QinQ port carries.
    if is_vlan(ethertype) {
        return malformed(generation);
    }
    match ethertype {
        ETH_P_IPV4 => ipv4(f, off, generation, m),
        ETH_P_IPV6 => ipv6(f, off, generation, m),
        _ => {
            let s = settings(generation);
            by_setting(s.non_ip, s.log, counter::NON_IP_ALLOW, counter::NON_IP_DROP)
        }
    }
}

#[inline(always)]
fn ipv4(f: Frame, off: usize, generation: u32, m: &mut Meta) -> Judgement {
    m.ip_version = 4;
    m.l3 = off;
    let Some(ip) = f.read::<Ipv4Hdr>(off) else {
        return malformed(generation);
    };
    if ip.version_ihl >> 4 != 4 {
        return malformed(generation);
    }
    let hlen = ((ip.version_ihl & 0x0f) as usize) * 4;
    if hlen < IPV4_MIN_HLEN {
        return malformed(generation);
    }
    // The datagram must fit in the frame; bytes past tot_len are link padding and are
    // never read as transport header.
    let tot_len = be16(ip.tot_len) as usize;
    if tot_len < hlen || off + tot_len > f.len() {
        return malformed(generation);
    }
    m.protocol = ip.protocol;
    let frag_offset = be16(ip.frag_off) & 0x1fff;
    if frag_offset != 0 {
        // RFC 1858: a TCP fragment at offset 8 bytes can rewrite the first fragment's flags.
        if ip.protocol == ipproto::TCP && frag_offset == 1 {
            return malformed(generation);
        }
        return fragment(generation);
    }
    transport(
        f,
        off + hlen,
        off + tot_len,
        ip.protocol,
        false,
        generation,
        m,
    )
}

#[inline(always)]
fn ipv6(f: Frame, off: usize, generation: u32, m: &mut Meta) -> Judgement {
    m.ip_version = 6;
    m.l3 = off;
    let Some(ip) = f.read::<Ipv6Hdr>(off) else {
        return malformed(generation);
    };
    if ip.vtc_flow[0] >> 4 != 6 {
        return malformed(generation);
    }
    let limit = off + IPV6_HLEN + be16(ip.payload_len) as usize;
    if limit > f.len() {
        return malformed(generation);
    }
    let mut next = ip.nexthdr;
    let mut pos = off + IPV6_HLEN;
    let mut walked = 0;
    while walked < MAX_IPV6_EXT {
        match next {
            ipproto::HOPOPTS | ipproto::ROUTING | ipproto::DSTOPTS | ipproto::MOBILITY => {
                let Some(h) = f.read::<Ipv6ExtHdr>(pos) else {
                    return malformed(generation);
                };
                next = h.nexthdr;
                pos += (h.hdrlen as usize + 1) * 8;
            }
            ipproto::AH => {
                let Some(h) = f.read::<Ipv6ExtHdr>(pos) else {
                    return malformed(generation);
                };
                next = h.nexthdr;
                pos += (h.hdrlen as usize + 2) * 4;
            }
            ipproto::FRAGMENT => {
                let Some(h) = f.read::<Ipv6FragHdr>(pos) else {
                    return malformed(generation);
                };
                next = h.nexthdr;
                pos += 8;
                // The fragment header itself must lie inside the payload length, or a header
                // sitting in link padding would decide the verdict.
                if pos > limit {
                    return malformed(generation);
                }
                if be16(h.frag_off) >> 3 != 0 {
                    m.protocol = next;
                    return fragment(generation);
                }
            }
            _ => break,
        }
        if pos > limit {
            return malformed(generation);
        }
        walked += 1;
    }
    m.protocol = next;
    if is_ipv6_ext(next) {
        return malformed(generation);
    }
    transport(f, pos, limit, next, true, generation, m)
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

#[inline(always)]
fn transport(
    f: Frame,
    l4: usize,
    limit: usize,
    protocol: u8,
    v6: bool,
    generation: u32,
    m: &mut Meta,
) -> Judgement {
    let (slot, min_len) = match protocol {
        ipproto::TCP => (proto::TCP, 20),
        ipproto::UDP => (proto::UDP, 8),
        ipproto::UDPLITE => (proto::UDPLITE, 8),
        ipproto::SCTP => (proto::SCTP, 12),
        ipproto::ICMP if !v6 => return icmp(f, l4, limit, false, generation),
        ipproto::ICMPV6 if v6 => return icmp(f, l4, limit, true, generation),
        _ => return other_ip(generation),
    };
    // The whole minimal transport header must be inside the datagram: this also catches a
    // first fragment too short to carry the ports (the tiny-fragment attack).
    if l4 + min_len > limit {
        return malformed(generation);
    }
    let Some(ports) = f.read::<Ports>(l4) else {
        return malformed(generation);
    };
    let src_port = be16(ports.source);
    let dst_port = be16(ports.dest);
    m.src_port = src_port;
    m.dst_port = dst_port;
    if protocol == ipproto::TCP {
        let Some(tcp) = f.read::<TcpHdr>(l4) else {
            return malformed(generation);
        };
        m.tcp_flags = tcp.flags;
        // Port 0 is reserved and a data offset under 5 words is not a TCP header.
        if src_port == 0 || dst_port == 0 || tcp.doff_res >> 4 < 5 {
            return malformed(generation);
        }
    }
    let Some(port_entry) = PFW_PORTS.get(port_index(generation, slot, dst_port)) else {
        return malformed(generation);
    };
    // Ports whose rules restrict sources: the longest prefix under the port's group decides,
    // then under its tail group; a miss in both leaves the port's own verdict (the first
    // rule without `from`, or the default).
    let mut entry = *port_entry;
    if port_entry.group != NO_SOURCE_GROUP {
        if let Some(hit) = source_lookup(f, m, generation, port_entry.group) {
            entry = hit;
        } else if port_entry.tail != NO_SOURCE_GROUP {
            if let Some(hit) = source_lookup(f, m, generation, port_entry.tail) {
                entry = hit;
            }
        }
    }
    let drop = entry.action == action::DROP;
    let counter = match (entry.rule < MAX_RULES, drop) {
        (true, false) => counter::ALLOW_RULE,
        (true, true) => counter::DROP_RULE,
        (false, false) => counter::ALLOW_DEFAULT,
        (false, true) => counter::DROP_DEFAULT,
    };
    Judgement {
        action: if drop { action::DROP } else { action::ALLOW },
        rule: entry.rule,
        counter,
        log: entry.flags & port_flags::LOG != 0,
    }
}

/// Looks the packet's source address up in the generation's trie of its family.
#[inline(always)]
fn source_lookup(f: Frame, m: &Meta, generation: u32, group: u16) -> Option<PortEntry> {
    let value = if m.ip_version == 4 {
        let ip = f.read::<Ipv4Hdr>(m.l3)?;
        let key = Key::new(SOURCE_GROUP_BITS + 32, source_key4(group, ip.saddr));
        PFW_SRC4.get_value_ptr_mut(generation, &key)?
    } else {
        let ip = f.read::<Ipv6Hdr>(m.l3)?;
        let key = Key::new(SOURCE_GROUP_BITS + 128, source_key6(group, ip.saddr));
        PFW_SRC6.get_value_ptr_mut(generation, &key)?
    };
    // SAFETY: a pointer to a trie value from a successful lookup; the trie outlives this
    // program run (RCU), and we only read it.
    Some(unsafe { *value })
}

#[inline(always)]
fn icmp(f: Frame, l4: usize, limit: usize, v6: bool, generation: u32) -> Judgement {
    // Type, code and checksum: an ICMP message shorter than that is not one.
    if l4 + 4 > limit {
        return malformed(generation);
    }
    let Some(h) = f.read::<IcmpHdr>(l4) else {
        return malformed(generation);
    };
    // Per type: the compiler has already let neighbour discovery and path-MTU messages
    // through a drop default, unless the policy named them.
    let s = settings(generation);
    let verdict = if s.icmp_drops(v6, h.kind, h.code) {
        action::DROP
    } else {
        action::ALLOW
    };
    by_setting(verdict, s.log, counter::ICMP_ALLOW, counter::ICMP_DROP)
}

#[inline(always)]
fn emit(ctx: &XdpContext, f: Frame, m: &Meta, j: &Judgement) {
    let Some(mut entry) = PFW_EVENTS.reserve::<Event>(0) else {
        bump(&PFW_COUNTERS, counter::EVENTS_LOST);
        return;
    };
    let mut src_addr = [0u8; 16];
    let mut dst_addr = [0u8; 16];
    if m.ip_version == 4 {
        if let Some(ip) = f.read::<Ipv4Hdr>(m.l3) {
            src_addr[..4].copy_from_slice(&ip.saddr);
            dst_addr[..4].copy_from_slice(&ip.daddr);
        }
    } else if m.ip_version == 6 {
        if let Some(ip) = f.read::<Ipv6Hdr>(m.l3) {
            src_addr = ip.saddr;
            dst_addr = ip.daddr;
        }
    }
    entry.write(Event {
        // SAFETY: a plain helper call with no arguments.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        ifindex: ctx.ingress_ifindex() as u32,
        rule: j.rule,
        verdict: j.action,
        ip_version: m.ip_version,
        protocol: m.protocol,
        tcp_flags: m.tcp_flags,
        src_port: m.src_port,
        dst_port: m.dst_port,
        src_addr,
        dst_addr,
    });
    entry.submit(0);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
