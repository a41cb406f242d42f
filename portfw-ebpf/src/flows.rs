//! The flow table: flows the host opens are recorded where they leave (the TC egress
//! program), and replies to them are recognised on the way in (the XDP program).
//!
//! Only what leaves creates an entry; what arrives can at most move an existing entry's
//! state or refresh its timestamp. A reply must match the flow exactly: protocol, both
//! addresses and both ports (for ICMP echo, the identifier).

use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, BPF_NOEXIST, bpf_sock_tuple,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
    },
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_sk_release, bpf_skc_lookup_tcp},
    programs::XdpContext,
};
use portfw_common::{
    FLOW_CACHE_SLOTS, FlowCacheSlot, FlowKey, FlowValue, NO_SOURCE_GROUP, Settings, action,
    counter, flow_state, ipproto,
};

use crate::{
    headers::tcp_flag,
    judge::port_entry,
    maps::{PFW_CLOCK, PFW_COUNTERS, PFW_FLOW_CACHE, PFW_FLOWS, bump},
    parse::{Frame, IcmpSays, IpHdr, Kind, Packet, icmp_about},
};

/// The flow-table key of a packet: `outbound` packets have our side as their source.
#[inline(always)]
fn flow_key(hdr: IpHdr, protocol: u8, outbound: bool, src_port: u16, dst_port: u16) -> FlowKey {
    let (src, dst) = hdr.addr_words();
    let ((local, remote), (local_port, remote_port)) = if outbound {
        ((src, dst), (src_port, dst_port))
    } else {
        ((dst, src), (dst_port, src_port))
    };
    let key = KeyWords {
        family: if hdr.is_v6() { 6 } else { 4 },
        protocol,
        local_port,
        remote_port,
        pad: 0,
        local,
        remote,
    };
    // SAFETY: `KeyWords` is `FlowKey` with its addresses as words: the same 40 bytes, every
    // one of them set.
    unsafe { core::mem::transmute(key) }
}

/// [`FlowKey`] with its addresses as words, so the key is built with word stores and no
/// zero fill (see `IpHdr::addr_words`).
#[repr(C)]
struct KeyWords {
    family: u8,
    protocol: u8,
    local_port: u16,
    remote_port: u16,
    pad: u16,
    local: [u32; 4],
    remote: [u32; 4],
}

const _: () = assert!(core::mem::size_of::<KeyWords>() == core::mem::size_of::<FlowKey>());

/// [`FlowValue`] with its state and padding as one word, so no zero fill is needed.
#[repr(C)]
struct ValueWords {
    created_ns: u64,
    seen_ns: u64,
    ifindex: u32,
    state: u32,
}

const _: () = assert!(core::mem::size_of::<ValueWords>() == core::mem::size_of::<FlowValue>());

/// A reading of the flow clock, with the loader's epoch of the flow table.
#[derive(Clone, Copy)]
struct Now {
    ns: u64,
    epoch: u64,
}

#[inline(always)]
fn clock() -> Now {
    // Tick resolution is plenty for timeouts of seconds. Jiffies cost one load; the
    // coarse ktime helper, 15 ns of a reply's budget.
    match PFW_CLOCK.get(0) {
        Some(clock) if clock.ns_per_jiffy != 0 => {
            // SAFETY: a plain helper call with no arguments (inlined by the verifier).
            let jiffies = unsafe { bpf_jiffies64() };
            Now {
                ns: jiffies
                    .wrapping_mul(clock.ns_per_jiffy)
                    .wrapping_add(clock.offset_ns),
                epoch: clock.epoch,
            }
        }
        clock => Now {
            // SAFETY: a plain helper call with no arguments.
            ns: unsafe { bpf_ktime_get_coarse_ns() },
            epoch: clock.map_or(0, |c| c.epoch),
        },
    }
}

#[inline(always)]
pub fn now_ns() -> u64 {
    clock().ns
}

/// A flow key as the five words the cache compares.
#[inline(always)]
fn key_words(key: &FlowKey) -> [u64; 5] {
    // SAFETY: `FlowKey` is 40 bytes of plain integers with no padding (its pad is a field);
    // an unaligned read copies them as five words.
    unsafe { core::ptr::read_unaligned((key as *const FlowKey).cast::<[u64; 5]>()) }
}

/// The cache slot of a key: its ports, protocol and both addresses folded, then a
/// multiplicative hash's top bits. A collision only costs a table lookup.
#[inline(always)]
fn slot_of(w: &[u64; 5]) -> u32 {
    let h = w[0] ^ w[1] ^ w[2] ^ w[3].rotate_left(16) ^ w[4].rotate_left(16);
    let h = (h ^ (h >> 32)) as u32;
    h.wrapping_mul(0x9E37_79B1) >> (32 - FLOW_CACHE_SLOTS.trailing_zeros())
}

const _: () = assert!(FLOW_CACHE_SLOTS.is_power_of_two());

/// This CPU's cache slot for a key: looked up once per packet, then asked ([`cached`]) and
/// refilled ([`remember`]).
#[inline(always)]
fn cache_slot(w: &[u64; 5]) -> Option<&'static mut FlowCacheSlot> {
    let slot = PFW_FLOW_CACHE.get_ptr_mut(slot_of(w))?;
    // SAFETY: a pointer into this CPU's slots from a successful lookup; programs on one CPU
    // do not interleave (they run with bottom halves off).
    Some(unsafe { &mut *slot })
}

/// Whether the table vouched for this flow on this CPU under the current loader epoch, no
/// longer ago than the cache's trust and never past the flow's own expiry (see
/// [`remember`]). Only packets that cannot move a flow's state ask.
#[inline(always)]
fn cached(slot: Option<&FlowCacheSlot>, w: &[u64; 5], now: Now) -> bool {
    slot.is_some_and(|slot| same(&slot.key, w) && slot.epoch == now.epoch && now.ns < slot.until_ns)
}

/// Whether two keys are equal, compared as one OR of differences: a chain of `==` may
/// become a call to a byte-wise `bcmp`.
#[inline(always)]
fn same(a: &[u64; 5], b: &[u64; 5]) -> bool {
    (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) == 0
}

/// Puts a flow the table has just vouched for into this CPU's cache, or takes it out when
/// its state lets only some packets through. Trusted at most `cache_ns` (10 ms), never
/// past the flow's expiry: an entry evicted or moved by another CPU within that time is
/// the only thing the cache can miss, and it is a flow the host opened and used within it.
#[inline(always)]
fn remember(
    slot: Option<&mut FlowCacheSlot>,
    w: &[u64; 5],
    flow: &FlowValue,
    protocol: u8,
    now: Now,
    s: &Settings,
) {
    let Some(slot) = slot else {
        return;
    };
    let steady = flow.state == flow_state::ESTABLISHED || flow.state == flow_state::OPEN;
    if !steady || s.flow_timeouts.cache_ns == 0 {
        if same(&slot.key, w) {
            slot.until_ns = 0;
        }
        return;
    }
    let expires = flow
        .seen_ns
        .wrapping_add(s.flow_timeouts.for_flow(protocol, flow.state));
    let trusted = now.ns.wrapping_add(s.flow_timeouts.cache_ns);
    slot.until_ns = 0;
    slot.key = *w;
    slot.epoch = now.epoch;
    slot.until_ns = if expires < trusted { expires } else { trusted };
}

/// Whether a packet cannot move its flow's state: anything but TCP, and TCP segments
/// without SYN, FIN or RST.
#[inline(always)]
fn steady_packet(tcp: bool, flags: u8) -> bool {
    !tcp || flags & (tcp_flag::SYN | tcp_flag::FIN | tcp_flag::RST) == 0
}

/// Refreshes a flow's timestamp once it is `refresh_ns` stale (`FlowTimeouts::refresh_ns`).
#[inline(always)]
fn touch(flow: &mut FlowValue, now: u64, refresh_ns: u64) {
    if now.wrapping_sub(flow.seen_ns) > refresh_ns {
        flow.seen_ns = now;
    }
}

/// Moves a flow to `state`, stamping the change.
#[inline(always)]
fn set_state(flow: &mut FlowValue, state: u8, now: u64, refresh_ns: u64) {
    if flow.state != state {
        flow.state = state;
        flow.seen_ns = now;
    } else {
        touch(flow, now, refresh_ns);
    }
}

/// The live entry of `key`, or `None` when there is none or it has been idle past its
/// timeout (an expired entry is left for the LRU to reclaim).
#[inline(always)]
fn live(key: &FlowKey, s: &Settings, now: u64) -> Option<&'static mut FlowValue> {
    let flow = PFW_FLOWS.get_ptr_mut(key)?;
    // SAFETY: a pointer to a hash value from a successful lookup, valid for this program run
    // (RCU). Concurrent writers only store whole fields; a torn timestamp costs at most one
    // early or late expiry.
    let flow = unsafe { &mut *flow };
    let timeout = s.flow_timeouts.for_flow(key.protocol, flow.state);
    if now.wrapping_sub(flow.seen_ns) > timeout {
        return None;
    }
    Some(flow)
}

/// Whether an arriving TCP segment with `flags` belongs to `flow`, moving the flow's state.
/// While only our SYN has been seen, the remote may answer only with SYN-ACK or RST; after
/// that, anything but a new SYN.
#[inline(always)]
fn tcp_inbound(flow: &mut FlowValue, flags: u8, now: u64, refresh_ns: u64) -> bool {
    let syn = flags & tcp_flag::SYN != 0;
    let ack = flags & tcp_flag::ACK != 0;
    let closing = flags & (tcp_flag::FIN | tcp_flag::RST) != 0;
    let ok = match flow.state {
        flow_state::SYN_SENT => flags & tcp_flag::RST != 0 || (syn && ack),
        flow_state::ESTABLISHED | flow_state::CLOSING => !syn || ack,
        _ => false,
    };
    if ok {
        if closing {
            set_state(flow, flow_state::CLOSING, now, refresh_ns);
        } else {
            touch(flow, now, refresh_ns);
        }
    }
    ok
}

/// Whether an arriving packet on a port is a reply to a flow the host opened.
#[inline(always)]
pub fn is_reply(ctx: &XdpContext, packet: &Packet, s: &Settings) -> bool {
    let Some(hdr) = packet.ip() else {
        return false;
    };
    let tcp = packet.protocol() == ipproto::TCP;
    let flags = packet.tcp_flags();
    // A bare SYN opens a connection: it is never a reply, and a SYN flood at a dropped port
    // costs no lookup.
    if tcp && flags & (tcp_flag::SYN | tcp_flag::ACK) == tcp_flag::SYN {
        return false;
    }
    let (src_port, dst_port) = (packet.src_port(), packet.dst_port());
    let key = flow_key(hdr, packet.protocol(), false, src_port, dst_port);
    let words = key_words(&key);
    let steady = steady_packet(tcp, flags);
    let now = clock();
    let slot = cache_slot(&words);
    if steady && cached(slot.as_deref(), &words, now) {
        return true;
    }
    let refresh = s.flow_timeouts.refresh_ns;
    match live(&key, s, now.ns) {
        Some(flow) => {
            let ok = if tcp {
                tcp_inbound(flow, flags, now.ns, refresh)
            } else {
                touch(flow, now.ns, refresh);
                true
            };
            if ok {
                remember(slot, &words, flow, key.protocol, now, s);
            }
            ok
        }
        // A TCP connection older than the table (opened before `apply`, or before
        // `replies: allow`): the kernel's own socket for the exact four-tuple vouches for it.
        // A new SYN never takes this path.
        None => tcp && flags & tcp_flag::SYN == 0 && socket_vouches(ctx, hdr, src_port, dst_port),
    }
}

/// Whether an ICMP message is about a flow the host opened: an echo reply to our echo
/// request, or an error quoting a packet of one of our flows. Returns the counter to bump.
#[inline(always)]
pub fn is_related(f: Frame, packet: &Packet, s: &Settings) -> Option<u32> {
    let hdr = packet.ip()?;
    let about = icmp_about(f, packet);
    let now = now_ns();
    match about.says {
        IcmpSays::EchoReply => {
            let key = flow_key(hdr, packet.protocol(), false, 0, about.echo_id);
            let flow = live(&key, s, now)?;
            touch(flow, now, s.flow_timeouts.refresh_ns);
            Some(counter::ALLOW_REPLY)
        }
        IcmpSays::Error => {
            // The quote is of our own packet: its source is our side.
            let key = flow_key(
                about.quoted,
                about.quoted_protocol,
                true,
                about.quoted_src_port,
                about.quoted_dst_port,
            );
            live(&key, s, now)?;
            Some(counter::ALLOW_RELATED)
        }
        IcmpSays::EchoRequest | IcmpSays::Nothing => None,
    }
}

/// TCP states of `struct sock` (`include/net/tcp_states.h`) in which a socket of ours
/// exchanges segments with its peer: not listening, not in an inbound handshake, not closed.
#[inline(always)]
fn state_vouches(state: u32) -> bool {
    const ESTABLISHED: u32 = 1;
    const FIN_WAIT1: u32 = 4;
    const FIN_WAIT2: u32 = 5;
    const TIME_WAIT: u32 = 6;
    const CLOSE_WAIT: u32 = 8;
    const LAST_ACK: u32 = 9;
    const CLOSING: u32 = 11;
    matches!(
        state,
        ESTABLISHED | FIN_WAIT1 | FIN_WAIT2 | TIME_WAIT | CLOSE_WAIT | LAST_ACK | CLOSING
    )
}

/// Whether this namespace has a connected TCP socket for the arriving segment's exact
/// four-tuple.
#[inline(always)]
fn socket_vouches(ctx: &XdpContext, hdr: IpHdr, src_port: u16, dst_port: u16) -> bool {
    let (src, dst) = hdr.addr_words();
    let (sport, dport) = (src_port.to_be(), dst_port.to_be());
    // The helper reads only `size` bytes, the member for the family, so the tuple is built
    // member by member rather than zero-filled (see `IpHdr::addr_words`).
    let mut v4 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
        saddr: src[0],
        daddr: dst[0],
        sport,
        dport,
    };
    let mut v6 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
        saddr: src,
        daddr: dst,
        sport,
        dport,
    };
    let (tuple, size) = if hdr.is_v6() {
        (
            (&raw mut v6).cast::<bpf_sock_tuple>(),
            core::mem::size_of_val(&v6),
        )
    } else {
        (
            (&raw mut v4).cast::<bpf_sock_tuple>(),
            core::mem::size_of_val(&v4),
        )
    };
    // SAFETY: the helper reads `size` bytes at `tuple`, all written above; the socket it
    // returns, if any, is released before this function returns.
    unsafe {
        let sk = bpf_skc_lookup_tcp(
            ctx.ctx.cast(),
            tuple,
            size as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        );
        if sk.is_null() {
            return false;
        }
        let vouches = state_vouches((*sk).state);
        bpf_sk_release(sk.cast());
        vouches
    }
}

/// Whether the rules of `generation` may drop a packet arriving at local `port`: the port
/// entry drops, or source rules decide it.
#[inline(always)]
fn rules_may_drop(generation: u32, slot: u32, port: u16) -> bool {
    match port_entry(generation, slot, port) {
        Some(entry) => entry.action == action::DROP || entry.group != NO_SOURCE_GROUP,
        None => true,
    }
}

/// Records a packet the host sends out through `ifindex`: creates the flow it opens (a TCP
/// SYN, the first datagram of a UDP, UDP-Lite or SCTP flow, an echo request), or moves and
/// refreshes the flow it belongs to.
#[inline(always)]
pub fn record(f: Frame, packet: &Packet, ifindex: u32, generation: u32, s: &Settings) {
    let refresh = s.flow_timeouts.refresh_ns;
    let Some(hdr) = packet.ip() else {
        return;
    };
    let (key, flags) = match packet.kind() {
        Kind::Ports => (
            flow_key(
                hdr,
                packet.protocol(),
                true,
                packet.src_port(),
                packet.dst_port(),
            ),
            packet.tcp_flags(),
        ),
        Kind::Icmp => {
            let about = icmp_about(f, packet);
            if about.says != IcmpSays::EchoRequest {
                return;
            }
            (flow_key(hdr, packet.protocol(), true, about.echo_id, 0), 0)
        }
        _ => return,
    };
    let now = clock();
    let tcp = packet.protocol() == ipproto::TCP;
    let words = key_words(&key);
    // A busy flow's steady packets only refresh it, which the table's own lookup does at
    // least every `cache_ns`.
    let slot = cache_slot(&words);
    if steady_packet(tcp, flags) && cached(slot.as_deref(), &words, now) {
        return;
    }
    // A flow is worth an entry only where the rules would drop its replies: on a local port
    // the port table drops, or judges by source. Replies to a port the rules allow pass
    // anyway, so a busy server's answers from its open ports fill nothing and cost no table
    // lookup. (A flow recorded there while the rules dropped the port is no longer moved
    // on: it expires, and its replies pass by the rules meanwhile.)
    if packet.kind() == Kind::Ports && !rules_may_drop(generation, packet.slot(), packet.src_port())
    {
        return;
    }
    let syn = flags & tcp_flag::SYN != 0 && flags & tcp_flag::ACK == 0;
    if let Some(flow) = PFW_FLOWS.get_ptr_mut(&key) {
        // SAFETY: as in `live`.
        let flow = unsafe { &mut *flow };
        let now_ns = now.ns;
        if !tcp {
            touch(flow, now_ns, refresh);
        } else if syn {
            // A new connection on the same four-tuple starts over.
            flow.created_ns = now_ns;
            flow.ifindex = ifindex;
            set_state(flow, flow_state::SYN_SENT, now_ns, refresh);
        } else if flags & (tcp_flag::FIN | tcp_flag::RST) != 0 {
            set_state(flow, flow_state::CLOSING, now_ns, refresh);
        } else if flow.state == flow_state::SYN_SENT && flags & tcp_flag::ACK != 0 {
            set_state(flow, flow_state::ESTABLISHED, now_ns, refresh);
        } else {
            touch(flow, now_ns, refresh);
        }
        remember(slot, &words, flow, key.protocol, now, s);
        return;
    }
    // TCP flows start with our SYN. A segment without SYN or RST leaving a port the rules
    // drop belongs to a connection older than the table (opened before `apply`, or while
    // `replies: drop`): it is picked up as established. A SYN-ACK leaving answers someone
    // else's SYN and opens nothing.
    let state = if !tcp {
        flow_state::OPEN
    } else if syn {
        flow_state::SYN_SENT
    } else if flags & (tcp_flag::SYN | tcp_flag::RST | tcp_flag::FIN) == 0 {
        flow_state::ESTABLISHED
    } else {
        return;
    };
    let flow = ValueWords {
        created_ns: now.ns,
        seen_ns: now.ns,
        ifindex,
        state: u32::from(state),
    };
    // SAFETY: `ValueWords` is `FlowValue` with the state and its padding as one word (the
    // state is the first byte on this little-endian target): the same 24 bytes, all set.
    let flow: FlowValue = unsafe { core::mem::transmute(flow) };
    if PFW_FLOWS.insert(&key, &flow, BPF_NOEXIST as u64).is_ok() {
        bump(&PFW_COUNTERS, counter::FLOWS_CREATED);
    }
}
