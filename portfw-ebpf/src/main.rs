//! The portfw XDP program: parse each frame once, judge the description with O(1) table
//! lookups, then count, report and return the verdict.
//!
//! The stages live in their own files: `parse` (the header walk, which decides nothing),
//! `judge` (the table lookups), `emit` (the event record), with the maps in `maps` and the
//! wire formats in `headers`. Anything that cannot be parsed safely is dropped and counted
//! as malformed.
#![no_std]
#![no_main]

mod bench;
mod emit;
mod headers;
mod judge;
mod maps;
mod parse;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use portfw_common::{MAX_RULES, action};

use crate::{
    emit::emit,
    judge::judge,
    maps::{PFW_COUNTERS, active_generation, bump, bump_rule},
    parse::{Frame, parse},
};

#[xdp]
pub fn portfw(ctx: XdpContext) -> u32 {
    let packet = parse(Frame::new(&ctx));
    // Read once: every table lookup for this packet uses the same generation, so a policy
    // swap never mixes two policies within one packet.
    let generation = active_generation();
    let judgement = judge(&packet, generation);

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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
