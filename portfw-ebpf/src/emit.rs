//! The event stream: one ring-buffer record per logged verdict, written from the
//! [`Packet`] description, so a record shows only what the parser read.
//!
//! Repeats are aggregated: within a second, the packets of one (source, destination port,
//! protocol, verdict, rule) after the first are counted, per CPU, into the key's next event
//! rather than written, and `log-limit` caps the events themselves, per source and in all. Every
//! logged packet ends up in an event's `count` or in the `events_suppressed` counter, which
//! the reader reports, so a flood costs a hash lookup per packet and cannot drown the log.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::XdpContext};
use portfw_common::{AGGREGATION_WINDOW_NS, AggKey, AggValue, Event, LogLimit, SourceKey, counter};

use crate::{
    flows::now_ns,
    judge::{Judgement, settings},
    maps::{PFW_COUNTERS, PFW_EVENTS, PFW_LOG_AGG, PFW_LOG_RATE, PFW_LOG_SRC, bump, bump_by},
    parse::{Kind, Packet},
};

/// Writes the event of `judgement`, or counts it into an aggregate or as suppressed; a full
/// ring loses the record, counts the loss, and never holds the packet up.
///
/// The record is built first, from the packet; everything after reads only the record, so
/// the verifier sees the same state here whatever path through the parser and the judge
/// led to it, and checks the aggregation once rather than once per path.
#[inline(always)]
pub fn emit(ctx: &XdpContext, packet: &Packet, judgement: &Judgement, generation: u32) {
    let (family, protocol, ports, tcp_flags, src, dst) = match packet.ip() {
        Some(hdr) => {
            let (src, dst) = hdr.addr_words();
            let (ports, flags) = if packet.kind() == Kind::Ports {
                (
                    u32::from(packet.src_port()) | (u32::from(packet.dst_port()) << 16),
                    packet.tcp_flags(),
                )
            } else {
                (0, 0)
            };
            let family: u8 = if hdr.is_v6() { 6 } else { 4 };
            (family, packet.protocol(), ports, flags, src, dst)
        }
        None => (0, 0, 0, 0, [0; 4], [0; 4]),
    };
    let mut event = EventWords {
        // Stamped only if the event is written: a repeat folded into an aggregate needs no
        // clock read but the coarse one.
        timestamp_ns: 0,
        ifindex: ctx.ingress_ifindex() as u32,
        rule: judgement.rule,
        verdict_version_protocol_flags: u32::from(judgement.action)
            | (u32::from(family) << 8)
            | (u32::from(protocol) << 16)
            | (u32::from(tcp_flags) << 24),
        ports,
        src,
        dst,
        generation_reason: (generation & 0xff) | (u32::from(judgement.reason) << 8),
        count: 1,
    };
    portfw_log(&raw mut event, generation);
}

/// Aggregates, rate-caps and writes one event. A global function: the verifier checks it
/// once, on its own, instead of once for every path through the parser and the judge that
/// logs.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn portfw_log(event: *mut EventWords, generation: u32) -> u32 {
    if event.is_null() {
        return 0;
    }
    // SAFETY: the caller's record on its stack, checked for null above.
    let event = unsafe { &mut *event };
    let now = now_ns();
    let Some(count) = aggregate(event, now) else {
        bump(&PFW_COUNTERS, counter::EVENTS_AGGREGATED);
        return 0;
    };
    let limit = &settings(generation).log_limit;
    if limit.interval_ns != 0 && !admitted(event, limit, now) {
        bump_by(&PFW_COUNTERS, counter::EVENTS_SUPPRESSED, u64::from(count));
        return 0;
    }
    let Some(mut entry) = PFW_EVENTS.reserve::<EventWords>(0) else {
        bump(&PFW_COUNTERS, counter::EVENTS_LOST);
        bump_by(&PFW_COUNTERS, counter::EVENTS_SUPPRESSED, u64::from(count));
        return 0;
    };
    event.count = count;
    // SAFETY: a plain helper call with no arguments.
    event.timestamp_ns = unsafe { bpf_ktime_get_ns() };
    entry.write(*event);
    entry.submit(0);
    1
}

/// [`Event`] as words, so the record is built with word stores and no zero fill (LLVM
/// turns a zero fill of its byte arrays into a byte loop, which the verifier then walks
/// on every path).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EventWords {
    timestamp_ns: u64,
    ifindex: u32,
    rule: u32,
    /// `verdict`, `ip_version`, `protocol`, `tcp_flags`.
    verdict_version_protocol_flags: u32,
    /// `src_port`, `dst_port`.
    ports: u32,
    src: [u32; 4],
    dst: [u32; 4],
    /// `generation`, `reason`, then the reserved bytes.
    generation_reason: u32,
    count: u32,
}

const _: () = assert!(core::mem::size_of::<EventWords>() == core::mem::size_of::<Event>());
const _: () = assert!(core::mem::offset_of!(Event, generation) == 56);
const _: () = assert!(core::mem::offset_of!(Event, count) == 60);

/// [`AggKey`] as words.
#[repr(C)]
struct AggWords {
    rule: u32,
    port_protocol_verdict: u32,
    reason_family: u32,
    src: [u32; 4],
}

const _: () = assert!(core::mem::size_of::<AggWords>() == core::mem::size_of::<AggKey>());

/// The aggregation key of a logged packet: its source, destination port, protocol,
/// verdict, rule and reason.
#[inline(always)]
fn agg_key(event: &EventWords) -> AggKey {
    let v = event.verdict_version_protocol_flags;
    let key = AggWords {
        rule: event.rule,
        port_protocol_verdict: (event.ports >> 16) | ((v >> 16 & 0xff) << 16) | ((v & 0xff) << 24),
        reason_family: (event.generation_reason >> 8 & 0xff) | (v & 0xff00),
        src: event.src,
    };
    // SAFETY: `AggWords` is `AggKey` with its small fields packed into words (little-endian,
    // in field order): the same 28 bytes, all set.
    unsafe { core::mem::transmute(key) }
}

/// How many packets the event about to be written stands for, or `None` when this packet
/// is folded into its key's next event.
#[inline(always)]
fn aggregate(event: &EventWords, now: u64) -> Option<u32> {
    let key = agg_key(event);
    let Some(value) = PFW_LOG_AGG.get_ptr_mut(&key) else {
        let value = AggValue {
            window_ns: now,
            pending: 0,
            _pad: 0,
        };
        let _ = PFW_LOG_AGG.insert(&key, &value, 0);
        return Some(1);
    };
    // SAFETY: a pointer to this CPU's value of the key, from a successful lookup (RCU);
    // XDP runs with migration disabled, so no other CPU writes it.
    let value = unsafe { &mut *value };
    if now.wrapping_sub(value.window_ns) < AGGREGATION_WINDOW_NS {
        value.pending += 1;
        return None;
    }
    value.window_ns = now;
    let count = value.pending + 1;
    value.pending = 0;
    Some(count)
}

/// [`SourceKey`] as words.
#[repr(C)]
struct SourceWords {
    family: u32,
    addr: [u32; 4],
}

/// The per-source bucket's key: IPv6 sources by their /64, like the other defences.
#[inline(always)]
fn source_key(event: &EventWords) -> SourceKey {
    let family = event.verdict_version_protocol_flags >> 8 & 0xff;
    let s = event.src;
    let addr = if family == 6 { [s[0], s[1], 0, 0] } else { s };
    // SAFETY: `SourceWords` is `SourceKey` with the family and its padding as one word: the
    // same 20 bytes, all set.
    unsafe { core::mem::transmute(SourceWords { family, addr }) }
}

/// One GCRA bucket: admits when no more than `tolerance` ahead of schedule.
#[inline(always)]
fn take(tat: &mut u64, now: u64, interval: u64, tolerance: u64) -> bool {
    if tat.saturating_sub(now) > tolerance {
        return false;
    }
    *tat = (*tat).max(now) + interval;
    true
}

/// Whether `log-limit` lets one more event through: the source's share first, so that a
/// flooding source spends only its own budget, then the global one. Concurrent CPUs may
/// each pass a bucket at once: the cap is exceeded by at most one event per CPU.
#[inline(always)]
fn admitted(event: &EventWords, limit: &LogLimit, now: u64) -> bool {
    if event.verdict_version_protocol_flags & 0xff00 != 0 {
        let key = source_key(event);
        match PFW_LOG_SRC.get_ptr_mut(&key) {
            // SAFETY: a pointer to a hash value from a successful lookup (RCU).
            Some(tat) => {
                if !take(
                    unsafe { &mut *tat },
                    now,
                    limit.src_interval_ns,
                    limit.src_tolerance_ns,
                ) {
                    return false;
                }
            }
            None => {
                let _ = PFW_LOG_SRC.insert(&key, &(now + limit.src_interval_ns), 0);
            }
        }
    }
    match PFW_LOG_RATE.get_ptr_mut(0) {
        // SAFETY: a pointer into a one-entry array.
        Some(tat) => take(
            unsafe { &mut *tat },
            now,
            limit.interval_ns,
            limit.tolerance_ns,
        ),
        None => true,
    }
}
