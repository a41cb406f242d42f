//! The event stream: one ring-buffer record per logged verdict, written from the
//! [`Packet`] description, so a record shows only what the parser read.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::XdpContext};
use portfw_common::{Event, counter};

use crate::{
    judge::Judgement,
    maps::{PFW_COUNTERS, PFW_EVENTS, bump},
    parse::{IpHdr, L4, Packet},
};

/// Writes the event of `judgement`; a full ring loses it and counts the loss, and never
/// holds the packet up.
#[inline(always)]
pub fn emit(ctx: &XdpContext, packet: &Packet, judgement: &Judgement) {
    let Some(mut entry) = PFW_EVENTS.reserve::<Event>(0) else {
        bump(&PFW_COUNTERS, counter::EVENTS_LOST);
        return;
    };
    let mut event = Event {
        // SAFETY: a plain helper call with no arguments.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        ifindex: ctx.ingress_ifindex() as u32,
        rule: judgement.rule,
        verdict: judgement.action,
        ..Event::default()
    };
    if let Packet::Ip(ip) = packet {
        event.protocol = ip.protocol;
        match ip.hdr {
            IpHdr::V4(h) => {
                let h = h.get();
                event.ip_version = 4;
                event.src_addr[..4].copy_from_slice(&h.saddr);
                event.dst_addr[..4].copy_from_slice(&h.daddr);
            }
            IpHdr::V6(h) => {
                let h = h.get();
                event.ip_version = 6;
                event.src_addr = h.saddr;
                event.dst_addr = h.daddr;
            }
        }
        if let L4::Ports {
            src_port,
            dst_port,
            tcp_flags,
            ..
        } = ip.l4
        {
            event.src_port = src_port;
            event.dst_port = dst_port;
            event.tcp_flags = tcp_flags;
        }
    }
    entry.write(event);
    entry.submit(0);
}
