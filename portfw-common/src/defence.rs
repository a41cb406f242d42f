//! The active defences' kernel ABI: the block table, the scan guard, connection limits,
//! knock doors and the event aggregation of the log.
//!
//! Definitions that come from a policy (`DoorDef`, `RuleLimit`, the scan and log-limit
//! settings) live in each generation, like the port table. The state they build up (blocks,
//! scan counts, buckets, knock progress, open doors, pending event counts) lives in maps
//! outside the generations, so it survives a re-apply, and is removed by `detach`. Times are
//! nanoseconds of the flow table's clock ([`crate::Clock`], CLOCK_MONOTONIC at tick
//! resolution), which user space reads as `clock_gettime(CLOCK_MONOTONIC)`.

/// Bits of [`crate::Settings::guard`].
pub mod guard {
    /// `scan:` is configured: dropped ports count towards a block.
    pub const SCAN: u8 = 1 << 0;
    /// The block table may hold entries: look the source up in `PFW_BLOCKS`.
    pub const BLOCKS: u8 = 1 << 1;
    /// The prefix block table may hold entries: look the source up in `PFW_BLOCK_NETS`.
    pub const NETS: u8 = 1 << 2;
}

/// Scan guard settings of one generation (`scan:`). `ports == 0`: no scan guard.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanSettings {
    /// Distinct dropped ports from one source within `within_ns` that block it.
    pub ports: u32,
    pub _pad: u32,
    pub within_ns: u64,
    /// How long a block lasts.
    pub block_ns: u64,
}

/// The event rate cap of one generation (`log-limit:`), as two GCRA buckets: the global
/// one, and a per-source one (a quarter of the global rate, at least one event per period)
/// so that one flooding source cannot take the whole budget. `interval_ns == 0`: no cap.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogLimit {
    /// Nanoseconds per event at the capped rate.
    pub interval_ns: u64,
    /// How far ahead of its schedule the bucket may run: `(burst - 1) * interval_ns`.
    pub tolerance_ns: u64,
    pub src_interval_ns: u64,
    pub src_tolerance_ns: u64,
}

/// Events of one (source, destination port, protocol, verdict, rule) are aggregated over
/// this window: the first packet of a window is an event, the rest are counted into the
/// next one (or flushed by the reader when the key goes quiet).
pub const AGGREGATION_WINDOW_NS: u64 = 1_000_000_000;

/// Most knock doors (sequences and single-packet) a policy may have.
pub const MAX_DOORS: u32 = 8;
/// Most knocks in one sequence.
pub const MAX_KNOCK_STEPS: usize = 8;
/// Most rules with `limit:` in a policy.
pub const MAX_LIMITS: u32 = 1024;

/// Kinds of [`DoorDef`].
pub mod door_kind {
    /// A knock sequence, followed by the kernel.
    pub const SEQUENCE: u8 = 1;
    /// A single-packet knock, verified by `portfw agent`, which opens the door itself.
    pub const SPA: u8 = 2;
}

/// One knock of a sequence: a (protocol slot, port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KnockStep {
    pub port: u16,
    /// [`crate::proto`] slot.
    pub slot: u8,
    pub _pad: u8,
}

/// A knock door of one generation: `PFW_DOOR_DEFS[generation * MAX_DOORS + door]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DoorDef {
    /// [`door_id`] of the door's name: stable across re-applies, so open doors carry over.
    pub id: u32,
    /// [`door_kind`]; 0 for an unused slot.
    pub kind: u8,
    /// Knocks in `sequence` (SEQUENCE doors).
    pub steps: u8,
    /// The opened port's protocol slot.
    pub opens_slot: u8,
    pub _pad: u8,
    /// The whole sequence must arrive within this of its first knock.
    pub within_ns: u64,
    /// How long the door stays open for the knocking source (`for:`).
    pub open_ns: u64,
    pub opens_port: u16,
    pub _pad2: [u8; 6],
    pub sequence: [KnockStep; MAX_KNOCK_STEPS],
}

const _: () = assert!(core::mem::size_of::<DoorDef>() == 64);

/// A rule's connection limit (`limit: N/D`), as a GCRA bucket:
/// `PFW_LIMIT_DEFS[generation * MAX_LIMITS + PortEntry::limit - 1]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleLimit {
    /// Stable id of the limited rule ([`door_id`] of its canonical text), keying its
    /// buckets, so that they carry over a re-apply that keeps the rule.
    pub id: u32,
    pub _pad: u32,
    /// `D / N`.
    pub interval_ns: u64,
    /// `(N - 1) * interval_ns`: N new connections may arrive at once.
    pub tolerance_ns: u64,
}

/// A source address as the state maps key it: family 4 or 6, then the address in network
/// order (IPv4 in the first 4 bytes). The block table, the scan guard and the limits key
/// IPv6 sources by their /64 (the rest zeroed), since one host commonly holds a whole /64;
/// doors and the log aggregation use the full address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey {
    pub family: u8,
    pub _pad: [u8; 3],
    pub addr: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<SourceKey>() == 20);

impl SourceKey {
    /// The key of `addr`; with `by_64`, an IPv6 address by its /64 (blocks, the scan guard,
    /// limits). An IPv4 address mapped into IPv6, as a dual-stack socket reports one, is
    /// keyed as the IPv4 address the kernel sees.
    pub fn of(addr: core::net::IpAddr, by_64: bool) -> Self {
        let mut key = Self::default();
        match addr.to_canonical() {
            core::net::IpAddr::V4(a) => {
                key.family = 4;
                key.addr[..4].copy_from_slice(&a.octets());
            }
            core::net::IpAddr::V6(a) => {
                key.family = 6;
                key.addr = a.octets();
                if by_64 {
                    key.addr[8..].fill(0);
                }
            }
        }
        key
    }

    /// The address the key names (the /64's first address for a masked IPv6 key).
    pub fn addr(&self) -> core::net::IpAddr {
        if self.family == 6 {
            core::net::IpAddr::V6(core::net::Ipv6Addr::from(self.addr))
        } else {
            let a = self.addr;
            core::net::IpAddr::V4(core::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]))
        }
    }
}

/// Why a source is blocked.
pub mod block_reason {
    /// The scan guard blocked it.
    pub const SCAN: u8 = 1;
    /// `portfw block`.
    pub const MANUAL: u8 = 2;
}

/// Value of the block tables.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockValue {
    /// When the block ends; 0: never (until `portfw unblock`).
    pub expires_ns: u64,
    pub created_ns: u64,
    /// [`block_reason`].
    pub reason: u8,
    pub _pad: [u8; 7],
}

const _: () = assert!(core::mem::size_of::<BlockValue>() == 24);

/// Key data of the prefix block trie (`PFW_BLOCK_NETS`), laid out as a [`SourceKey`]: the
/// trie's prefix length is `BLOCK_NET_PREFIX_BITS + ` the address prefix length.
pub type BlockNetKey = [u8; 20];
/// Bits of a [`BlockNetKey`] in front of the address (family and padding).
pub const BLOCK_NET_PREFIX_BITS: u32 = 32;

/// Most entries of `PFW_BLOCKS` (a plain hash: a full table refuses new blocks, counted as
/// `blocks_full`, and never evicts a block).
pub const BLOCKS_MAX: u32 = 131_072;
/// Most entries of `PFW_BLOCK_NETS` (manual blocks of prefixes other than /32 and /64).
pub const BLOCK_NETS_MAX: u32 = 16_384;
/// Sources the scan guard follows at once (LRU). LRU maps are preallocated whether or not a
/// policy uses them, so these stay modest: about 11 MiB for all the defence state.
pub const SCAN_SOURCES_MAX: u32 = 16_384;
/// (source, port) pairs the scan guard remembers (LRU).
pub const SCAN_PORTS_MAX: u32 = 65_536;
/// (rule, source) buckets (LRU).
pub const LIMIT_STATE_MAX: u32 = 16_384;
/// (door, source) knock progress and open doors (LRU each).
pub const DOOR_STATE_MAX: u32 = 4_096;
/// Keys of the event aggregation (LRU).
pub const LOG_AGG_MAX: u32 = 16_384;
/// Sources of the per-source event buckets (LRU).
pub const LOG_SOURCES_MAX: u32 = 4_096;

/// Value of the scan guard's per-source map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanValue {
    /// Start of the current window.
    pub start_ns: u64,
    /// Distinct dropped ports in the window.
    pub ports: u32,
    pub _pad: u32,
}

/// Key of the scan guard's (source, port) map, whose value is when the port was last
/// counted for the source (`u64`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ScanPortKey {
    pub family: u8,
    /// [`crate::proto`] slot.
    pub slot: u8,
    pub port: u16,
    pub addr: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<ScanPortKey>() == 20);

/// Key of the limit buckets (value: the bucket's theoretical arrival time, `u64`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LimitKey {
    /// [`RuleLimit::id`].
    pub id: u32,
    pub source: SourceKey,
}

const _: () = assert!(core::mem::size_of::<LimitKey>() == 24);

/// Key of the knock progress map (`id`: the door's [`DoorDef::id`]) and of the open-door
/// map (`id`: [`opens_id`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DoorKey {
    /// [`DoorDef::id`].
    pub id: u32,
    pub source: SourceKey,
}

const _: () = assert!(core::mem::size_of::<DoorKey>() == 24);

/// Value of the knock progress map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KnockState {
    /// When the sequence's first knock arrived.
    pub start_ns: u64,
    /// Knocks done so far (1 after the first).
    pub step: u8,
    pub _pad: [u8; 7],
}

/// Value of the open-door map, whose key is a [`DoorKey`] with `id` = [`opens_id`] of the
/// opened port (not the door's id): a port opened by several doors is checked with one
/// lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DoorValue {
    pub opened_ns: u64,
    pub expires_ns: u64,
    /// [`DoorDef::id`] of the door that opened it.
    pub door: u32,
    pub _pad: u32,
}

/// The open-door map's key id for an opened (protocol slot, port).
pub const fn opens_id(slot: u8, port: u16) -> u32 {
    (1 << 24) | ((slot as u32) << 16) | port as u32
}

/// Key of the event aggregation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AggKey {
    pub rule: u32,
    pub dst_port: u16,
    pub protocol: u8,
    pub verdict: u8,
    /// [`crate::Event::reason`].
    pub reason: u8,
    pub family: u8,
    pub _pad: [u8; 2],
    pub src: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<AggKey>() == 28);

/// Value of the event aggregation, per CPU (`LruPerCpuHashMap`): each CPU aggregates the
/// packets of a key it sees, so a key yields at most one event per CPU per window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AggValue {
    /// When this CPU's current window for the key started (its last event).
    pub window_ns: u64,
    /// Packets of the key on this CPU since its last event, not yet in any event.
    pub pending: u32,
    pub _pad: u32,
}

/// Why an event's verdict was reached, beyond its rule ([`crate::Event::reason`]).
pub mod reason {
    pub const NONE: u8 = 0;
    /// The source is in the block table.
    pub const BLOCKED: u8 = 1;
    /// Over the rule's `limit:`.
    pub const LIMIT: u8 = 2;
    /// A knock port.
    pub const KNOCK: u8 = 3;
    /// Allowed because the source opened a knock door.
    pub const DOOR: u8 = 4;
    /// A single-packet knock, passed to `portfw agent`.
    pub const SPA: u8 = 5;
    /// The scan guard blocked the source with this packet.
    pub const SCAN: u8 = 6;
}

/// The stable id of a door name or rule text: 32-bit FNV-1a, never 0.
pub const fn door_id(name: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    let mut i = 0;
    while i < name.len() {
        hash ^= name[i] as u32;
        hash = hash.wrapping_mul(0x0100_0193);
        i += 1;
    }
    if hash == 0 { 1 } else { hash }
}

/// The UDP payload of a single-packet knock (`portfw knock`), all integers big-endian:
/// `SPA_MAGIC`, a version byte, the sender's UNIX time in seconds (u64), a random nonce,
/// the door name's length (u8) and bytes, then HMAC-SHA256 over everything before it.
pub const SPA_MAGIC: [u8; 4] = *b"PFWK";
pub const SPA_VERSION: u8 = 1;
pub const SPA_NONCE_LEN: usize = 16;
pub const SPA_MAC_LEN: usize = 32;
/// How far a single-packet knock's timestamp may be from the agent's clock.
pub const SPA_WINDOW_SECS: u64 = 30;
/// Default `spa: port:` (fwknop's).
pub const SPA_DEFAULT_PORT: u16 = 62201;

/// Names of the defence maps (also their pin names).
pub struct DefenceMaps;

impl DefenceMaps {
    /// `Array<DoorDef>` of `GENERATIONS * MAX_DOORS`.
    pub const DOOR_DEFS: &'static str = "PFW_DOOR_DEFS";
    /// `Array<RuleLimit>` of `GENERATIONS * MAX_LIMITS`.
    pub const LIMIT_DEFS: &'static str = "PFW_LIMIT_DEFS";
    /// `HashMap<SourceKey, BlockValue>` of [`BLOCKS_MAX`].
    pub const BLOCKS: &'static str = "PFW_BLOCKS";
    /// `LpmTrie<BlockNetKey, BlockValue>` of [`BLOCK_NETS_MAX`].
    pub const BLOCK_NETS: &'static str = "PFW_BLOCK_NETS";
    /// `LruHashMap<SourceKey, ScanValue>`.
    pub const SCAN: &'static str = "PFW_SCAN";
    /// `LruHashMap<ScanPortKey, u64>`.
    pub const SCAN_PORTS: &'static str = "PFW_SCAN_PORTS";
    /// `LruHashMap<LimitKey, u64>`.
    pub const LIMITS: &'static str = "PFW_LIMITS";
    /// `LruHashMap<DoorKey, KnockState>`.
    pub const KNOCKS: &'static str = "PFW_KNOCKS";
    /// `LruHashMap<DoorKey, DoorValue>`.
    pub const DOORS: &'static str = "PFW_DOORS";
    /// `LruPerCpuHashMap<AggKey, AggValue>`.
    pub const LOG_AGG: &'static str = "PFW_LOG_AGG";
    /// `LruHashMap<SourceKey, u64>`: per-source event buckets.
    pub const LOG_SOURCES: &'static str = "PFW_LOG_SRC";
    /// `Array<u64>`, one entry: the global event bucket.
    pub const LOG_RATE: &'static str = "PFW_LOG_RATE";
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, `#[repr(C)]`, every bit pattern valid, padding explicit.
    unsafe impl aya::Pod for super::DoorDef {}
    unsafe impl aya::Pod for super::RuleLimit {}
    unsafe impl aya::Pod for super::SourceKey {}
    unsafe impl aya::Pod for super::BlockValue {}
    unsafe impl aya::Pod for super::ScanValue {}
    unsafe impl aya::Pod for super::ScanPortKey {}
    unsafe impl aya::Pod for super::LimitKey {}
    unsafe impl aya::Pod for super::DoorKey {}
    unsafe impl aya::Pod for super::KnockState {}
    unsafe impl aya::Pod for super::DoorValue {}
    unsafe impl aya::Pod for super::AggKey {}
    unsafe impl aya::Pod for super::AggValue {}
}
