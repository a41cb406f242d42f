//! The active defences: the block tables, the scan guard, connection limits and knock
//! doors. Each is reached only from port entries (or settings) that ask for it, so a policy
//! without them pays nothing, and each reads its own tables at most once per door.
//!
//! Each defence is a global BPF function taking a [`Who`], the packet's scalars copied off
//! the packet: the verifier checks a global function once, on its own, rather than once
//! for every path through the header walk that reaches it, which kept the program within
//! the verifier's budget. Keys are built from words, never zero-filled (see
//! `IpHdr::addr_words`): LLVM turns a zero fill of a byte array into a byte loop.

use aya_ebpf::{
    bindings::BPF_NOEXIST, btf_maps::lpm_trie::Key as SourceTrieKey, maps::lpm_trie::Key,
};
use portfw_common::{
    BLOCK_NET_PREFIX_BITS, BlockValue, DoorDef, DoorKey, DoorValue, KnockState, LimitKey,
    MAX_DOORS, MAX_KNOCK_STEPS, MAX_LIMITS, SCAN_EXCEPT_GROUP, SOURCE_GROUP_BITS, ScanPortKey,
    ScanValue, SourceKey, block_reason, counter, door_kind, guard, ipproto, opens_id, source_key4,
    source_key6,
};

use crate::{
    flows::now_ns,
    headers::tcp_flag,
    maps::{
        PFW_BLOCK_NETS, PFW_BLOCKS, PFW_COUNTERS, PFW_DOOR_DEFS, PFW_DOORS, PFW_KNOCKS,
        PFW_LIMIT_DEFS, PFW_LIMITS, PFW_SCAN, PFW_SCAN_PORTS, PFW_SETTINGS, PFW_SRC4, PFW_SRC6,
        bump,
    },
    parse::{IpHdr, Packet},
};

/// What the defences need to know of a packet, copied off it: no packet pointer crosses
/// into them.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Who {
    /// 4 or 6.
    family: u32,
    /// Source address words, network order; IPv4 in the first.
    src: [u32; 4],
    /// Destination port (low half), protocol slot (third byte), TCP flags (high byte).
    port_slot_flags: u32,
    /// IP protocol.
    protocol: u32,
}

impl Who {
    /// The description of a packet that has an IP header and ports.
    #[inline(always)]
    pub fn of(hdr: IpHdr, packet: &Packet) -> Self {
        let (src, _) = hdr.addr_words();
        Self {
            family: if hdr.is_v6() { 6 } else { 4 },
            src,
            port_slot_flags: u32::from(packet.dst_port())
                | (packet.slot() << 16)
                | (u32::from(packet.tcp_flags()) << 24),
            protocol: u32::from(packet.protocol()),
        }
    }

    #[inline(always)]
    fn port(&self) -> u16 {
        self.port_slot_flags as u16
    }

    #[inline(always)]
    fn slot(&self) -> u8 {
        (self.port_slot_flags >> 16) as u8
    }

    #[inline(always)]
    fn tcp_flags(&self) -> u8 {
        (self.port_slot_flags >> 24) as u8
    }

    /// The source as the state maps key it; IPv6 by its /64 when `by_64`.
    #[inline(always)]
    fn source(&self, by_64: bool) -> SourceWords {
        let s = self.src;
        let addr = if by_64 && self.family == 6 {
            [s[0], s[1], 0, 0]
        } else {
            s
        };
        SourceWords {
            family: self.family,
            addr,
        }
    }
}

/// [`SourceKey`] as words.
#[repr(C)]
#[derive(Clone, Copy)]
struct SourceWords {
    family: u32,
    addr: [u32; 4],
}

const _: () = assert!(core::mem::size_of::<SourceWords>() == core::mem::size_of::<SourceKey>());

#[inline(always)]
fn source_key(who: &Who, by_64: bool) -> SourceKey {
    // SAFETY: `SourceWords` is `SourceKey` with the family and its padding as one word (the
    // family is the first byte on this little-endian target): the same 20 bytes, all set.
    unsafe { core::mem::transmute(who.source(by_64)) }
}

/// The caller's [`Who`], or `None` for the null pointer a global function must expect.
#[inline(always)]
fn who<'a>(who: *const Who) -> Option<&'a Who> {
    // SAFETY: a global function's pointer argument is the caller's stack record or null.
    unsafe { who.as_ref() }
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
fn door_key(id: u32, who: &Who) -> DoorKey {
    let key = IdWords {
        id,
        source: who.source(false),
    };
    // SAFETY: the same 24 bytes, all set.
    unsafe { core::mem::transmute(key) }
}

/// Whether an entry that ends at `expires_ns` (0: never) is still in force.
#[inline(always)]
fn live(expires_ns: u64, now: u64) -> bool {
    expires_ns == 0 || expires_ns > now
}

/// Whether the packet's source is blocked (`guard`: `Settings::guard`). Expired blocks
/// are removed on the way.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn pfw_blocked(who_: *const Who, guard: u32) -> u32 {
    let Some(who) = who(who_) else {
        return 0;
    };
    let guard = guard as u8;
    // The scan guard writes this table, so a scan guard implies looking in it.
    if guard & (guard::BLOCKS | guard::SCAN) != 0 {
        let key = source_key(who, true);
        // SAFETY: a lookup of a value we only read.
        if let Some(block) = unsafe { PFW_BLOCKS.get(&key) } {
            if live(block.expires_ns, now_ns()) {
                return 1;
            }
            let _ = PFW_BLOCKS.remove(&key);
        }
    }
    if guard & guard::NETS != 0 {
        let key = Key::new(
            BLOCK_NET_PREFIX_BITS + 128,
            // SAFETY: `SourceKey` is 20 plain bytes.
            unsafe { core::mem::transmute::<SourceKey, [u8; 20]>(source_key(who, false)) },
        );
        if let Some(block) = PFW_BLOCK_NETS.get(&key) {
            // Manual blocks only; `portfw` removes the expired ones it finds.
            if live(block.expires_ns, now_ns()) {
                return 1;
            }
        }
    }
    0
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
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn pfw_within_limit(who_: *const Who, generation: u32, limit: u32) -> u32 {
    let Some(who) = who(who_) else {
        return 0;
    };
    if limit == 0 || limit > MAX_LIMITS {
        return 0;
    }
    let Some(def) = PFW_LIMIT_DEFS.get((generation & 1) * MAX_LIMITS + (limit - 1)) else {
        return 0;
    };
    let key = IdWords {
        id: def.id,
        source: who.source(true),
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
                return 0;
            }
            *tat = (*tat).max(now) + def.interval_ns;
            1
        }
        None => {
            let _ = PFW_LIMITS.insert(&key, &(now + def.interval_ns), 0);
            1
        }
    }
}

/// The generation's door `door`, if the slot is used.
#[inline(always)]
fn door_def(generation: u32, door: u32) -> Option<&'static DoorDef> {
    if door >= MAX_DOORS {
        return None;
    }
    let def = PFW_DOOR_DEFS.get((generation & 1) * MAX_DOORS + door)?;
    if def.kind == 0 { None } else { Some(def) }
}

/// Whether a knock door is open for the source at this (opened) port.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn pfw_door_open(who_: *const Who) -> u32 {
    let Some(who) = who(who_) else {
        return 0;
    };
    let key = door_key(opens_id(who.slot(), who.port()), who);
    // SAFETY: a lookup of a value we only read.
    match unsafe { PFW_DOORS.get(&key) } {
        Some(open) if open.expires_ns > now_ns() => 1,
        _ => 0,
    }
}

/// Feeds a knock to the sequence door `knocks - 1` (`PortEntry::knocks`). Only a new
/// connection knocks (a SYN, or a datagram), so a knock client's retransmissions or a
/// stray ACK move nothing.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn pfw_knock(who_: *const Who, generation: u32, knocks: u32) -> u32 {
    let Some(who) = who(who_) else {
        return 0;
    };
    if who.protocol == u32::from(ipproto::TCP)
        && who.tcp_flags() & (tcp_flag::SYN | tcp_flag::ACK) != tcp_flag::SYN
    {
        return 0;
    }
    if knocks == 0 {
        return 0;
    }
    let Some(def) = door_def(generation, knocks - 1) else {
        return 0;
    };
    if def.kind != door_kind::SEQUENCE {
        return 0;
    }
    knock_door(def, door_key(def.id, who), who, now_ns());
    0
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
fn knock_door(def: &DoorDef, key: DoorKey, who: &Who, now: u64) {
    let (port, slot) = (who.port(), who.slot());
    let first = is_step(def, 0, port, slot);
    // SAFETY: `KnockState` is a u64 then the step and its padding: the step is the low byte
    // of the second word on this little-endian target.
    let start: KnockState = unsafe { core::mem::transmute([now, 1u64]) };
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
                door: def.id,
                _pad: 0,
            };
            let opened = door_key(opens_id(def.opens_slot, def.opens_port), who);
            let _ = PFW_DOORS.insert(&opened, &open, 0);
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

const _: () = assert!(core::mem::size_of::<ScanPortWords>() == core::mem::size_of::<ScanPortKey>());

/// Counts a dropped port towards the source's scan, and blocks the source when it has
/// reached `scan.ports` distinct ports within `scan.within`. Excepted sources never count.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn pfw_scan(who_: *const Who, generation: u32) -> u32 {
    let Some(who) = who(who_) else {
        return 0;
    };
    let generation = generation & 1;
    if excepted(who, generation) {
        return 0;
    }
    let Some(s) = PFW_SETTINGS.get(generation) else {
        return 0;
    };
    let source = who.source(true);
    let now = now_ns();
    let within = s.scan.within_ns;
    let port_key = ScanPortWords {
        head: source.family | (u32::from(who.slot()) << 8) | (u32::from(who.port()) << 16),
        addr: source.addr,
    };
    // SAFETY: the same 20 bytes, all set (family, slot, port little-endian).
    let port_key: ScanPortKey = unsafe { core::mem::transmute(port_key) };
    match PFW_SCAN_PORTS.get_ptr_mut(&port_key) {
        Some(seen) => {
            // SAFETY: a pointer to a hash value from a successful lookup (RCU).
            let seen = unsafe { &mut *seen };
            if now.wrapping_sub(*seen) <= within {
                return 0;
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
        // SAFETY: `BlockValue` is two u64 then the reason and its padding, the reason in the
        // low byte of the third word on this little-endian target.
        let block: BlockValue = unsafe {
            core::mem::transmute([now + s.scan.block_ns, now, u64::from(block_reason::SCAN)])
        };
        match PFW_BLOCKS.insert(&key, &block, BPF_NOEXIST as u64) {
            Ok(()) => bump(&PFW_COUNTERS, counter::SCAN_BLOCKS),
            // Already blocked by another CPU (EEXIST), or the table is full.
            Err(e) if e == -17 => {}
            Err(_) => bump(&PFW_COUNTERS, counter::BLOCKS_FULL),
        }
        let _ = PFW_SCAN.remove(&key);
    }
    0
}

/// Whether the source is in the generation's scan except group.
#[inline(always)]
fn excepted(who: &Who, generation: u32) -> bool {
    // SAFETY: both are 16 plain bytes.
    let src: [u8; 16] = unsafe { core::mem::transmute(who.src) };
    if who.family == 6 {
        let key = SourceTrieKey::new(SOURCE_GROUP_BITS + 128, source_key6(SCAN_EXCEPT_GROUP, src));
        PFW_SRC6.get_value_ptr_mut(generation, &key).is_some()
    } else {
        let key = SourceTrieKey::new(
            SOURCE_GROUP_BITS + 32,
            source_key4(SCAN_EXCEPT_GROUP, [src[0], src[1], src[2], src[3]]),
        );
        PFW_SRC4.get_value_ptr_mut(generation, &key).is_some()
    }
}
