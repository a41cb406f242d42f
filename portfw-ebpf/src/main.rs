//! The portfw programs. XDP `portfw`: parse each arriving frame once, judge the description
//! with O(1) table lookups, then count, report and return the verdict. TC egress
//! `portfw_egress`: parse each leaving packet the same way and record the flow it opens.
//! `portfw_l3` and `portfw_egress_l3` are the same for devices whose frames start at the IP
//! header.
//!
//! The stages live in their own files: `parse` (the header walk, which decides nothing),
//! `judge` (the table lookups), `flows` (the flow table), `emit` (the event record), with
//! the maps in `maps` and the wire formats in `headers`. Anything that cannot be parsed
//! safely is dropped and counted as malformed.
#![no_std]
#![no_main]

mod bench;
mod defence;
mod emit;
mod flows;
mod headers;
mod judge;
mod maps;
mod parse;

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use portfw_common::{MAX_RULES, action};

use crate::{
    emit::emit,
    headers::MAX_HEADERS_LEN,
    judge::{judge, settings},
    maps::{PFW_COUNTERS, active_generation, bump, bump_rule},
    parse::{Frame, Link, parse},
};

/// The filter on an Ethernet device.
#[xdp]
pub fn portfw(ctx: XdpContext) -> u32 {
    filter(&ctx, Link::Ethernet)
}

/// The filter on a device without a link-layer header (tun, WireGuard, ipip, gre, sit, ppp).
/// A program of its own rather than a branch per packet, so Ethernet devices pay nothing.
#[xdp]
pub fn portfw_l3(ctx: XdpContext) -> u32 {
    filter(&ctx, Link::Ip)
}

/// Records the flows the host opens (or forwards) through an Ethernet device.
#[classifier]
pub fn portfw_egress(ctx: TcContext) -> i32 {
    record(&ctx, Link::Ethernet)
}

/// Records the flows the host opens (or forwards) through a device without a link-layer
/// header.
#[classifier]
pub fn portfw_egress_l3(ctx: TcContext) -> i32 {
    record(&ctx, Link::Ip)
}

/// Samples jiffies for the loader, which calibrates the flow table's clock with it. Never
/// attached.
#[xdp]
pub fn portfw_clock(_ctx: XdpContext) -> u32 {
    maps::sample_jiffies();
    xdp_action::XDP_PASS
}

#[inline(always)]
fn filter(ctx: &XdpContext, link: Link) -> u32 {
    let packet = parse(Frame::new(ctx), link);
    // Read once: every table lookup for this packet uses the same generation, so a policy
    // swap never mixes two policies within one packet.
    let generation = active_generation();
    let judgement = judge(ctx, &packet, generation);

    bump(&PFW_COUNTERS, judgement.counter);
    if judgement.rule < MAX_RULES {
        bump_rule(generation, judgement.rule);
    }
    if judgement.log {
        emit(ctx, &packet, &judgement, generation);
    }
    if judgement.action == action::DROP {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// Never drops, and hands the packet on to whatever else is attached (`TC_ACT_UNSPEC`,
/// tcx's "next").
#[inline(always)]
fn record(ctx: &TcContext, link: Link) -> i32 {
    let generation = active_generation();
    let s = settings(generation);
    if s.replies == action::ALLOW {
        // Headers of locally built packets are linear; a forwarded skb may need pulling.
        let want = ctx.len().min(MAX_HEADERS_LEN);
        if ctx.data_end() - ctx.data() < want as usize {
            let _ = ctx.pull_data(want);
        }
        let frame = Frame::of_skb(ctx);
        let packet = parse(frame, link);
        // SAFETY: reading a field of the program's context.
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        flows::record(frame, &packet, ifindex, generation, s);
    }
    TC_ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
