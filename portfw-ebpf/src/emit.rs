//! The event stream: one ring-buffer record per logged verdict, written from the
//! [`Packet`] description, so a record shows only what the parser read.
//!
//! Repeats are aggregated: within a second, the packets of one (source, destination port,
//! protocol, verdict, rule) after the first are counted, per CPU, into the key's next event
//! rather than written, and `log-limit` caps the events themselves, per source and in all. Every
//! logged packet ends up in an event's `count` or in the `events_suppressed` counter, which
//! the reader reports, so a flood costs a hash lookup per packet and cannot drown the log.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::XdpContext};
use portfw_common::{AGGREGATION_WINDOW_NS, AggKey, AggValue, Event, LogLimit, counter};

use crate::{
    flows::now_ns,
    judge::{Judgement, settings},
    maps::{
        PFW_COUNTERS, PFW_EVENTS, PFW_LOG_AGG, PFW_LOG_RATE, PFW_LOG_SRC, bump, bump_by,
    },
    parse::{Kind, Packet},
};

/// Writes the event of `judgement`, or counts it into an aggregate or as suppressed; a full
/// ring loses the record, counts the loss, and never holds the packet up.
#[inline(always)]
pub fn emit(ctx: &XdpContext, packet: &Packet, judgement: &Judgement, generation: u32) {
    let now = now_ns();
    let Some(count) = aggregate(packet, judgement, now) else {
        bump(&PFW_COUNTERS, counter::EVENTS_AGGREGATED);
        return;
    };
    let limit = &settings(generation).log_limit;
    if limit.interval_ns != 0 && !admitted(packet, limit, now) {
        bump_by(&PFW_COUNTERS, counter::EVENTS_SUPPRESSED, u64::from(count));
        return;
    }
    let Some(mut entry) = PFW_EVENTS.reserve::<Event>(0) else {
        bump(&PFW_COUNTERS, counter::EVENTS_LOST);
        bump_by(&PFW_COUNTERS, counter::EVENTS_SUPPRESSED, u64::from(count));
        return;
    };
    let mut event = Event {
        // SAFETY: a plain helper call with no arguments.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        ifindex: ctx.ingress_ifindex() as u32,
        rule: judgement.rule,
        verdict: judgement.action,
        generation: generation as u8,
        reason: judgement.reason,
        count,
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

/// [`AggKey`] as words.
#[repr(C)]
struct AggWords {
    rule: u32,
    port_protocol_verdict: u32,
    reason_family: u32,
    src: [u32; 4],
}

const _: () = assert!(core::mem::size_of::<AggWords>() == core::mem::size_of::<AggKey>());

/// The aggregation key of a logged packet.
#[inline(always)]
fn agg_key(packet: &Packet, judgement: &Judgement) -> AggKey {
    let (family, src, protocol, port) = match packet.ip() {
        Some(hdr) => {
            let port = if packet.kind() == Kind::Ports {
                packet.dst_port()
            } else {
                0
            };
            let family: u32 = if hdr.is_v6() { 6 } else { 4 };
            (family, hdr.addr_words().0, packet.protocol(), port)
        }
        None => (0, [0; 4], 0, 0),
    };
    let key = AggWords {
        rule: judgement.rule,
        port_protocol_verdict: u32::from(port)
            | (u32::from(protocol) << 16)
            | (u32::from(judgement.action) << 24),
        reason_family: u32::from(judgement.reason) | (family << 8),
        src,
    };
    // SAFETY: `AggWords` is `AggKey` with its small fields packed into words (little-endian,
    // in field order): the same 28 bytes, all set.
    unsafe { core::mem::transmute(key) }
}

/// How many packets the event about to be written stands for, or `None` when this packet
/// is folded into its key's next event.
#[inline(always)]
fn aggregate(packet: &Packet, judgement: &Judgement, now: u64) -> Option<u32> {
    let key = agg_key(packet, judgement);
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
fn admitted(packet: &Packet, limit: &LogLimit, now: u64) -> bool {
    if let Some(hdr) = packet.ip() {
        let key = crate::defence::source_key(hdr, true);
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
