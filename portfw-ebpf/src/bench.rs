//! Benchmark-only XDP programs, built into the same object as `portfw` but never loaded by
//! `portfw apply`: two XDP floors and a TC one, portfw's own stages cut short at three
//! points, and a transmitter for live-frame injection (`cargo xtask bench`, `portfw-user/benches/`).
//!
//! The floors give the per-packet cost its reference point: what BPF_PROG_TEST_RUN costs with
//! no work at all. The cut-short programs call the very `parse` and `judge` code that
//! `portfw` runs, so each step (parsing, then the table lookup, then the verdict counter)
//! measures the production code as it is. The loader loads only the program named `portfw`,
//! so these cost production nothing at run time: portfw's own instructions (its tag) are the
//! same with or without them.

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use portfw_common::{action, counter};

use crate::{
    judge::port_entry,
    maps::{PFW_COUNTERS, active_generation, bump},
    parse::{Frame, Kind, Link, parse},
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

/// The floor of the egress program: a TC classifier that does nothing and hands the packet
/// on, as `portfw_egress` does.
#[classifier]
pub fn bench_tc_pass(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

/// The load generator's program: run with BPF_F_TEST_XDP_LIVE_FRAMES, every frame it
/// returns `XDP_TX` for leaves through the interface named in the run's context, at the
/// rate of a driver's transmit path rather than a socket's.
#[xdp]
pub fn bench_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// portfw's header walk and nothing else: malformed frames get `XDP_DROP`, everything else
/// `XDP_PASS`. Its verdict is not the policy's; only its cost is of interest.
#[xdp]
pub fn bench_parse(ctx: XdpContext) -> u32 {
    match step(&ctx) {
        Step::Malformed => xdp_action::XDP_DROP,
        Step::Other | Step::Ports { .. } => xdp_action::XDP_PASS,
    }
}

/// The walk plus portfw's two table reads (the active generation, then the port entry) and
/// the verdict they give: what portfw costs without counters, rule hits, source rules and
/// events. Reads the maps of the object it is loaded with.
#[xdp]
pub fn bench_lookup(ctx: XdpContext) -> u32 {
    lookup(&ctx).0
}

/// `bench_lookup` plus portfw's per-CPU verdict counter.
#[xdp]
pub fn bench_count(ctx: XdpContext) -> u32 {
    let (verdict, kind) = lookup(&ctx);
    bump(&PFW_COUNTERS, kind);
    verdict
}

/// What the walk found, reduced to what the cut-short programs act on.
#[derive(Clone, Copy)]
enum Step {
    Malformed,
    /// Judged by a setting in portfw (non-IP, ICMP, other protocols, fragments).
    Other,
    Ports {
        slot: u32,
        dst_port: u16,
    },
}

#[inline(always)]
fn step(ctx: &XdpContext) -> Step {
    let p = parse(Frame::new(ctx), Link::Ethernet);
    match p.kind() {
        Kind::Ports => Step::Ports {
            slot: p.slot(),
            dst_port: p.dst_port(),
        },
        Kind::Malformed | Kind::BadTransport => Step::Malformed,
        Kind::NonIp | Kind::Icmp | Kind::Fragment | Kind::OtherIp => Step::Other,
    }
}

/// The verdict and counter of the port-table step.
#[inline(always)]
fn lookup(ctx: &XdpContext) -> (u32, u32) {
    match step(ctx) {
        Step::Malformed => (xdp_action::XDP_DROP, counter::MALFORMED),
        Step::Other => (xdp_action::XDP_PASS, counter::OTHER_IP_ALLOW),
        Step::Ports { slot, dst_port } => match port_entry(active_generation(), slot, dst_port) {
            Some(e) if e.action == action::DROP => (xdp_action::XDP_DROP, counter::DROP_RULE),
            Some(_) => (xdp_action::XDP_PASS, counter::ALLOW_RULE),
            None => (xdp_action::XDP_DROP, counter::MALFORMED),
        },
    }
}
