//! The active defences: the block tables, the scan guard, connection limits and knock
//! doors. Each is reached only from port entries (or settings) that ask for it, so a policy
//! without them pays nothing, and each reads its own tables at most once per door.
//!
//! Keys are built from words, never zero-filled (see `IpHdr::addr_words`): LLVM turns a
//! zero fill of a byte array into a byte loop.

use aya_ebpf::{bindings::BPF_NOEXIST, maps::lpm_trie::Key};
use portfw_common::{
    BLOCK_NET_PREFIX_BITS, BlockValue, DoorDef, DoorKey, DoorValue, KnockState, LimitKey,
    MAX_DOORS, MAX_KNOCK_STEPS, MAX_LIMITS, SCAN_EXCEPT_GROUP, ScanPortKey, ScanValue, Settings,
    SourceKey, block_reason, counter, door_kind, guard, ipproto,
};

use crate::{
    flows::now_ns,
    headers::tcp_flag,
    judge::source_lookup,
    maps::{
        PFW_BLOCK_NETS, PFW_BLOCKS, PFW_COUNTERS, PFW_DOOR_DEFS, PFW_DOORS, PFW_KNOCKS,
        PFW_LIMIT_DEFS, PFW_LIMITS, PFW_SCAN, PFW_SCAN_PORTS, bump,
    },
    parse::{IpHdr, Packet},
};

/// [`SourceKey`] as words.
#[repr(C)]
#[derive(Clone, Copy)]
struct SourceWords {
    family: u32,
    addr: [u32; 4],
}

const _: () = assert!(core::mem::size_of::<SourceWords>() == core::mem::size_of::<SourceKey>());

/// The packet's source as the state maps key it; IPv6 by its /64 when `by_64`.
#[inline(always)]
fn source_words(hdr: IpHdr, by_64: bool) -> SourceWords {
    let (src, _) = hdr.addr_words();
    if hdr.is_v6() {
        let addr = if by_64 { [src[0], src[1], 0, 0] } else { src };
        SourceWords { family: 6, addr }
    } else {
        SourceWords {
            family: 4,
            addr: src,
        }
    }
}

#[inline(always)]
pub fn source_key(hdr: IpHdr, by_64: bool) -> SourceKey {
    // SAFETY: `SourceWords` is `SourceKey` with the family and its padding as one word (the
    // family is the first byte on this little-endian target): the same 20 bytes, all set.
    unsafe { core::mem::transmute(source_words(hdr, by_64)) }
}

/// [`DoorKey`] and [`LimitKey`] as words.
#[repr(C)]
struct IdWords {
    id: u32,
    source: SourceWords,
}

const _: () = assert!(core::mem::size_of::<IdWords>() == core::mem::size_of::<DoorKey>());
const _: () = assert!(core::mem::size_of::<IdWords>() == core::mem::size_of::<LimitKey>());

#[inline(always)]
fn door_key(id: u32, hdr: IpHdr) -> DoorKey {
    let key = IdWords {
        id,
        source: source_words(hdr, false),
    };
    // SAFETY: the same 24 bytes, all set.
    unsafe { core::mem::transmute(key) }
}

/// Whether an entry that ends at `expires_ns` (0: never) is still in force.
#[inline(always)]
fn live(expires_ns: u64, now: u64) -> bool {
    expires_ns == 0 || expires_ns > now
}

/// Whether the packet's source is blocked. Expired blocks are removed on the way.
#[inline(always)]
pub fn blocked(packet: &Packet, s: &Settings) -> bool {
    let Some(hdr) = packet.ip() else {
        return false;
    };
    // The scan guard writes this table, so a scan guard implies looking in it.
    if s.guard & (guard::BLOCKS | guard::SCAN) != 0 {
        let key = source_key(hdr, true);
        // SAFETY: a lookup of a value we only read.
        if let Some(block) = unsafe { PFW_BLOCKS.get(&key) } {
            let now = now_ns();
            if live(block.expires_ns, now) {
                return true;
            }
            let _ = PFW_BLOCKS.remove(&key);
        }
    }
    if s.guard & guard::NETS != 0 {
        let key = Key::new(
            BLOCK_NET_PREFIX_BITS + 128,
            // SAFETY: `SourceKey` is 20 plain bytes.
            unsafe { core::mem::transmute::<SourceKey, [u8; 20]>(source_key(hdr, false)) },
        );
        if let Some(block) = PFW_BLOCK_NETS.get(&key) {
            // Manual blocks only; `portfw` removes the expired ones it finds.
            if live(block.expires_ns, now_ns()) {
                return true;
            }
        }
    }
    false
}

/// Whether the packet opens a connection, as limits and knocks count them: a TCP SYN
/// without ACK, or any datagram.
#[inline(always)]
pub fn opens_connection(packet: &Packet) -> bool {
    packet.protocol() != ipproto::TCP
        || packet.tcp_flags() & (tcp_flag::SYN | tcp_flag::ACK) == tcp_flag::SYN
}

/// Whether the source is within limit `limit` (`PortEntry::limit`) of `generation`, taking
/// one token from its bucket when it is.
#[inline(always)]
pub fn within_limit(packet: &Packet, generation: u32, limit: u16) -> bool {
    let Some(hdr) = packet.ip() else {
        return false;
    };
    let index = generation * MAX_LIMITS + (u32::from(limit) - 1);
    let Some(def) = PFW_LIMIT_DEFS.get(index) else {
        return false;
    };
    let key = IdWords {
        id: def.id,
        source: source_words(hdr, true),
    };
    // SAFETY: the same 24 bytes, all set.
    let key: LimitKey = unsafe { core::mem::transmute(key) };
    let now = now_ns();
    match PFW_LIMITS.get_ptr_mut(&key) {
        Some(tat) => {
            // SAFETY: a pointer to a hash value from a successful lookup (RCU). Two CPUs
            // racing on one bucket may both pass: at most one extra connection per race.
            let tat = unsafe { &mut *tat };
            if tat.saturating_sub(now) > def.tolerance_ns {
                return false;
            }
            *tat = (*tat).max(now) + def.interval_ns;
            true
        }
        None => {
            let _ = PFW_LIMITS.insert(&key, &(now + def.interval_ns), 0);
            true
        }
    }
}

/// The generation's door `door`, if the slot is used.
#[inline(always)]
fn door_def(generation: u32, door: u32) -> Option<&'static DoorDef> {
    let def = PFW_DOOR_DEFS.get(generation * MAX_DOORS + door)?;
    if def.kind == 0 { None } else { Some(def) }
}

/// Whether one of the doors in `opens` (`PortEntry::opens`) is open for the source.
#[inline(always)]
pub fn door_open(packet: &Packet, generation: u32, opens: u8) -> bool {
    let Some(hdr) = packet.ip() else {
        return false;
    };
    let now = now_ns();
    for door in 0..MAX_DOORS {
        if opens & (1 << door) == 0 {
            continue;
        }
        let Some(def) = door_def(generation, door) else {
            continue;
        };
        // SAFETY: a lookup of a value we only read.
        if let Some(open) = unsafe { PFW_DOORS.get(&door_key(def.id, hdr)) } {
            if open.expires_ns > now {
                return true;
            }
        }
    }
    false
}

/// Feeds a knock to the sequence doors in `knocks` (`PortEntry::knocks`). Only a new
/// connection knocks (a SYN, or a datagram), so a knock client's retransmissions or a
/// stray ACK move nothing.
#[inline(always)]
pub fn knock(packet: &Packet, generation: u32, knocks: u8) {
    if !opens_connection(packet) {
        return;
    }
    let Some(hdr) = packet.ip() else {
        return;
    };
    let (port, slot) = (packet.dst_port(), packet.slot() as u8);
    let now = now_ns();
    for door in 0..MAX_DOORS {
        if knocks & (1 << door) == 0 {
            continue;
        }
        let Some(def) = door_def(generation, door) else {
            continue;
        };
        if def.kind != door_kind::SEQUENCE {
            continue;
        }
        knock_door(def, door_key(def.id, hdr), port, slot, now);
    }
}

#[inline(always)]
fn is_step(def: &DoorDef, step: u8, port: u16, slot: u8) -> bool {
    let step = usize::from(step);
    if step >= MAX_KNOCK_STEPS {
        return false;
    }
    let knock = def.sequence[step];
    knock.port == port && knock.slot == slot
}

/// One knock at one door: advance, complete, restart or reset the source's sequence.
#[inline(always)]
fn knock_door(def: &DoorDef, key: DoorKey, port: u16, slot: u8, now: u64) {
    let first = is_step(def, 0, port, slot);
    let start = KnockState {
        start_ns: now,
        step: 1,
        _pad: [0; 7],
    };
    let Some(state) = PFW_KNOCKS.get_ptr_mut(&key) else {
        if first {
            let _ = PFW_KNOCKS.insert(&key, &start, 0);
        }
        return;
    };
    // SAFETY: a pointer to a hash value from a successful lookup (RCU).
    let state = unsafe { &mut *state };
    let step = state.step;
    if now.wrapping_sub(state.start_ns) > def.within_ns || step == 0 {
        // Too slow: only a first knock starts over.
        if first {
            *state = start;
        } else {
            let _ = PFW_KNOCKS.remove(&key);
        }
        return;
    }
    if is_step(def, step, port, slot) {
        if step + 1 >= def.steps {
            let open = DoorValue {
                opened_ns: now,
                expires_ns: now + def.open_ns,
            };
            let _ = PFW_DOORS.insert(&key, &open, 0);
            let _ = PFW_KNOCKS.remove(&key);
            bump(&PFW_COUNTERS, counter::DOORS_OPENED);
        } else {
            state.step = step + 1;
        }
    } else if is_step(def, step - 1, port, slot) {
        // The same knock again (a client's resend): neither progress nor a mistake.
    } else if first {
        *state = start;
    } else {
        let _ = PFW_KNOCKS.remove(&key);
    }
}

/// [`ScanPortKey`] as words.
#[repr(C)]
struct ScanPortWords {
    head: u32,
    addr: [u32; 4],
}

const _: () =
    assert!(core::mem::size_of::<ScanPortWords>() == core::mem::size_of::<ScanPortKey>());

/// Counts a dropped port towards the source's scan, and blocks the source when it has
/// reached `scan.ports` distinct ports within `scan.within`. Excepted sources never count.
#[inline(always)]
pub fn scan(packet: &Packet, generation: u32, s: &Settings) {
    let Some(hdr) = packet.ip() else {
        return;
    };
    if source_lookup(packet, generation, SCAN_EXCEPT_GROUP).is_some() {
        return;
    }
    let source = source_words(hdr, true);
    let now = now_ns();
    let within = s.scan.within_ns;
    let port_key = ScanPortWords {
        head: source.family | (packet.slot() << 8) | (u32::from(packet.dst_port()) << 16),
        addr: source.addr,
    };
    // SAFETY: the same 20 bytes, all set (family, slot, port little-endian).
    let port_key: ScanPortKey = unsafe { core::mem::transmute(port_key) };
    match PFW_SCAN_PORTS.get_ptr_mut(&port_key) {
        Some(seen) => {
            // SAFETY: a pointer to a hash value from a successful lookup (RCU).
            let seen = unsafe { &mut *seen };
            if now.wrapping_sub(*seen) <= within {
                return;
            }
            *seen = now;
        }
        None => {
            let _ = PFW_SCAN_PORTS.insert(&port_key, &now, 0);
        }
    }
    // SAFETY: as in `source_key`.
    let key: SourceKey = unsafe { core::mem::transmute(source) };
    let ports = match PFW_SCAN.get_ptr_mut(&key) {
        Some(window) => {
            // SAFETY: a pointer to a hash value from a successful lookup (RCU).
            let window = unsafe { &mut *window };
            if now.wrapping_sub(window.start_ns) > within {
                window.start_ns = now;
                window.ports = 1;
                1
            } else {
                // Two CPUs counting at once may count one port as one: the guard errs on
                // the side of not blocking.
                window.ports += 1;
                window.ports
            }
        }
        None => {
            let window = ScanValue {
                start_ns: now,
                ports: 1,
                _pad: 0,
            };
            let _ = PFW_SCAN.insert(&key, &window, 0);
            1
        }
    };
    if ports >= s.scan.ports {
        let block = BlockValue {
            expires_ns: now + s.scan.block_ns,
            created_ns: now,
            reason: block_reason::SCAN,
            _pad: [0; 7],
        };
        match PFW_BLOCKS.insert(&key, &block, BPF_NOEXIST as u64) {
            Ok(()) => bump(&PFW_COUNTERS, counter::SCAN_BLOCKS),
            // Already blocked by another CPU (EEXIST), or the table is full.
            Err(e) if e == -17 => {}
            Err(_) => bump(&PFW_COUNTERS, counter::BLOCKS_FULL),
        }
        let _ = PFW_SCAN.remove(&key);
    }
}
