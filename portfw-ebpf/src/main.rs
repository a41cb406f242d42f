//! The portfw programs. XDP `portfw`: parse each arriving frame once, judge the description
//! with O(1) table lookups, then count, report and return the verdict. TC egress
//! `portfw_egress`: parse each leaving packet the same way and record the flow it opens.
//!
//! The stages live in their own files: `parse` (the header walk, which decides nothing),
//! `judge` (the table lookups), `flows` (the flow table), `emit` (the event record), with
//! the maps in `maps` and the wire formats in `headers`. Anything that cannot be parsed
//! safely is dropped and counted as malformed.
#![no_std]
#![no_main]

mod bench;
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
    parse::{Frame, parse},
};

#[xdp]
pub fn portfw(ctx: XdpContext) -> u32 {
    let packet = parse(Frame::new(&ctx));
    // Read once: every table lookup for this packet uses the same generation, so a policy
    // swap never mixes two policies within one packet.
    let generation = active_generation();
    let judgement = judge(&ctx, &packet, generation);

    bump(&PFW_COUNTERS, judgement.counter);
    if judgement.rule < MAX_RULES {
        bump_rule(generation, judgement.rule);
    }
    if judgement.log {
        emit(&ctx, &packet, &judgement);
    }
    if judgement.action == action::DROP {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// Records the flows the host opens (or forwards) through the interface. Never drops, and
/// hands the packet on to whatever else is attached (`TC_ACT_UNSPEC`, tcx's "next").
#[classifier]
pub fn portfw_egress(ctx: TcContext) -> i32 {
    let generation = active_generation();
    if settings(generation).replies == action::ALLOW {
        // Headers of locally built packets are linear; a forwarded skb may need pulling.
        let want = ctx.len().min(MAX_HEADERS_LEN);
        if ctx.data_end() - ctx.data() < want as usize {
            let _ = ctx.pull_data(want);
        }
        let packet = parse(Frame::of_skb(&ctx));
        // SAFETY: reading a field of the program's context.
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        flows::record(&packet, ifindex, generation);
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
