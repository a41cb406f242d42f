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

/// The first of the addresses `bench_tx_spoof` sends from (198.19.0.0, outside every lab's
/// own 198.18.X.0/24), and how many there are.
const SPOOF_BASE: u32 = 0xc613_0000;
const SPOOF_SOURCES: u32 = 10_000;
/// Bytes `bench_tx_spoof` reads: Ethernet, an IPv4 header without options, and TCP up to
/// the end of its checksum.
const SPOOF_SPAN: usize = 14 + 20 + 18;

/// The load generator for floods from many sources: `bench_tx`, after giving each IPv4 TCP
/// frame a source drawn at random from SPOOF_SOURCES addresses from SPOOF_BASE on, with the
/// IPv4 and TCP checksums updated (the stack checks them on what the filter lets through).
/// Live frames may or may not be reset between runs, so the old address is read from the
/// frame each time and the checksums are adjusted from it.
#[xdp]
pub fn bench_tx_spoof(ctx: XdpContext) -> u32 {
    spoof(&ctx);
    xdp_action::XDP_TX
}

#[inline(always)]
fn spoof(ctx: &XdpContext) {
    let start = ctx.data();
    if start + SPOOF_SPAN > ctx.data_end() {
        return;
    }
    let p = start as *mut u8;
    // SAFETY: every offset below is inside the SPOOF_SPAN bytes checked above; the
    // address is read and written bytewise (a frame's IPv4 header is not 4-byte aligned).
    unsafe {
        if *p.add(12) != 0x08 || *p.add(13) != 0x00 || *p.add(14) != 0x45 || *p.add(23) != 6 {
            return;
        }
        let old = u32::from_be_bytes([*p.add(26), *p.add(27), *p.add(28), *p.add(29)]);
        let new = SPOOF_BASE + aya_ebpf::helpers::bpf_get_prandom_u32() % SPOOF_SOURCES;
        let bytes = new.to_be_bytes();
        for (i, b) in bytes.iter().enumerate() {
            *p.add(26 + i) = *b;
        }
        refold(p.add(24), old, new);
        refold(p.add(14 + 20 + 16), old, new);
    }
}

/// RFC 1624's incremental update of the big-endian checksum at `at` for a 32-bit word of
/// the summed data changed from `old` to `new`: HC' = ~(~HC + ~m + m').
///
/// # Safety
/// `at` and `at + 1` must be inside the packet.
#[inline(always)]
unsafe fn refold(at: *mut u8, old: u32, new: u32) {
    // SAFETY: the caller's bounds.
    let sum = unsafe { u16::from_be_bytes([*at, *at.add(1)]) };
    let mut acc = u32::from(!sum) + (!old >> 16) + (!old & 0xffff) + (new >> 16) + (new & 0xffff);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    let out = !(acc as u16);
    // SAFETY: the caller's bounds.
    unsafe {
        *at = (out >> 8) as u8;
        *at.add(1) = out as u8;
    }
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
