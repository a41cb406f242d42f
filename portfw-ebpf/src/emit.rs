//! The event stream: one ring-buffer record per logged verdict, written from the
//! [`Packet`] description, so a record shows only what the parser read.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::XdpContext};
use portfw_common::{Event, counter};

use crate::{
    judge::Judgement,
    maps::{PFW_COUNTERS, PFW_EVENTS, bump},
    parse::{Kind, Packet},
};

/// Writes the event of `judgement`; a full ring loses it and counts the loss, and never
/// holds the packet up.
#[inline(always)]
pub fn emit(ctx: &XdpContext, packet: &Packet, judgement: &Judgement, generation: u32) {
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
        generation: generation as u8,
        ..Event::default()
    };
    if let Some(hdr) = packet.ip() {
        event.ip_version = if hdr.is_v6() { 6 } else { 4 };
        event.protocol = packet.protocol();
        (event.src_addr, event.dst_addr) = hdr.addrs();
        if packet.kind() == Kind::Ports {
            event.src_port = packet.src_port();
            event.dst_port = packet.dst_port();
            event.tcp_flags = packet.tcp_flags();
        }
    }
    entry.write(event);
    entry.submit(0);
}
