//! The kernel program's maps. Layouts and names come from portfw-common.
use aya_ebpf::{
    btf_maps::{ArrayOfMaps, LpmTrie},
    macros::{btf_map, map},
    maps::{
        Array, HashMap, LpmTrie as PlainLpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf,
    },
};
use portfw_common::{
    AggKey, AggValue, BLOCK_NETS_MAX, BLOCKS_MAX, BPF_F_MMAPABLE, BlockNetKey, BlockValue, Clock,
    DOOR_STATE_MAX, DoorDef, DoorKey, DoorValue, EVENT_RING_BYTES, Event, FLOW_CACHE_SLOTS,
    FLOWS_DEFAULT_MAX, FlowCacheSlot, FlowKey, FlowValue, GENERATIONS, KnockState, LIMIT_STATE_MAX,
    LOG_AGG_MAX, LOG_SOURCES_MAX, LimitKey, MAX_DOORS, MAX_LIMITS, PORT_TABLE_GEN_ENTRIES,
    PortEntry, RULE_HIT_SLOTS, RuleLimit, SCAN_PORTS_MAX, SCAN_SOURCES_MAX, SOURCE_TRIE_ENTRIES,
    ScanPortKey, ScanValue, Settings, SourceKey, SourceKey4, SourceKey6, counter, rule_hit_index,
};

/// `BPF_F_NO_PREALLOC`: entries are allocated as they are added (required by tries).
const NO_PREALLOC: u32 = 1;

// The generation index, the settings and the port table are memory-mapped by the loader,
// which writes a whole generation in place and then flips PFW_ACTIVE with one store.

#[map(name = "PFW_ACTIVE")]
pub static PFW_ACTIVE: Array<u32> = Array::with_max_entries(1, BPF_F_MMAPABLE);

#[map(name = "PFW_SETTINGS")]
pub static PFW_SETTINGS: Array<Settings> = Array::with_max_entries(GENERATIONS, BPF_F_MMAPABLE);

#[map(name = "PFW_PORTS")]
pub static PFW_PORTS: Array<PortEntry> =
    Array::with_max_entries(GENERATIONS * PORT_TABLE_GEN_ENTRIES, BPF_F_MMAPABLE);

#[map(name = "PFW_COUNTERS")]
pub static PFW_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// One region of `RULE_HIT_SLOTS` counters per CPU; the loader sets the real size
/// (possible CPUs × `RULE_HIT_SLOTS`) at load time. Only the owning CPU writes a region.
#[map(name = "PFW_RULE_HITS")]
pub static PFW_RULE_HITS: Array<u64> = Array::with_max_entries(RULE_HIT_SLOTS, BPF_F_MMAPABLE);

#[map(name = "PFW_EVENTS")]
pub static PFW_EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);

/// Flows the host opened. Not double-buffered: it outlives re-applies. The loader sizes it
/// from `flows: max:` at load time.
#[map(name = "PFW_FLOWS")]
pub static PFW_FLOWS: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(FLOWS_DEFAULT_MAX, 0);

/// The exact-match cache in front of [`PFW_FLOWS`], one direct-mapped set of slots per CPU
/// (see `flows::cached`). Not pinned: a new object starts with an empty cache.
#[map(name = "PFW_FLOW_CACHE")]
pub static PFW_FLOW_CACHE: PerCpuArray<FlowCacheSlot> =
    PerCpuArray::with_max_entries(FLOW_CACHE_SLOTS, 0);

/// The flow table's clock, calibrated by the loader (see [`Clock`]).
#[map(name = "PFW_CLOCK")]
pub static PFW_CLOCK: Array<Clock> = Array::with_max_entries(1, 0);

// The active defences (see portfw-common's `defence`). Definitions are per generation,
// like the port table; the state they build up is outside the generations, so it survives
// a re-apply.

#[map(name = "PFW_DOOR_DEFS")]
pub static PFW_DOOR_DEFS: Array<DoorDef> = Array::with_max_entries(GENERATIONS * MAX_DOORS, 0);

#[map(name = "PFW_LIMIT_DEFS")]
pub static PFW_LIMIT_DEFS: Array<RuleLimit> = Array::with_max_entries(GENERATIONS * MAX_LIMITS, 0);

/// Blocked sources. A plain hash rather than an LRU: a full table refuses new blocks and
/// never silently lifts an old one.
#[map(name = "PFW_BLOCKS")]
pub static PFW_BLOCKS: HashMap<SourceKey, BlockValue> =
    HashMap::with_max_entries(BLOCKS_MAX, NO_PREALLOC);

#[map(name = "PFW_BLOCK_NETS")]
pub static PFW_BLOCK_NETS: PlainLpmTrie<BlockNetKey, BlockValue> =
    PlainLpmTrie::with_max_entries(BLOCK_NETS_MAX, NO_PREALLOC);

#[map(name = "PFW_SCAN")]
pub static PFW_SCAN: LruHashMap<SourceKey, ScanValue> =
    LruHashMap::with_max_entries(SCAN_SOURCES_MAX, 0);

#[map(name = "PFW_SCAN_PORTS")]
pub static PFW_SCAN_PORTS: LruHashMap<ScanPortKey, u64> =
    LruHashMap::with_max_entries(SCAN_PORTS_MAX, 0);

#[map(name = "PFW_LIMITS")]
pub static PFW_LIMITS: LruHashMap<LimitKey, u64> = LruHashMap::with_max_entries(LIMIT_STATE_MAX, 0);

#[map(name = "PFW_KNOCKS")]
pub static PFW_KNOCKS: LruHashMap<DoorKey, KnockState> =
    LruHashMap::with_max_entries(DOOR_STATE_MAX, 0);

#[map(name = "PFW_DOORS")]
pub static PFW_DOORS: LruHashMap<DoorKey, DoorValue> =
    LruHashMap::with_max_entries(DOOR_STATE_MAX, 0);

/// Per CPU, so that counting a repeat is a plain add: the generic BPF target has no
/// atomic exchange, and each CPU aggregates its own share of a key's packets.
#[map(name = "PFW_LOG_AGG")]
pub static PFW_LOG_AGG: LruPerCpuHashMap<AggKey, AggValue> =
    LruPerCpuHashMap::with_max_entries(LOG_AGG_MAX, 0);

#[map(name = "PFW_LOG_SRC")]
pub static PFW_LOG_SRC: LruHashMap<SourceKey, u64> =
    LruHashMap::with_max_entries(LOG_SOURCES_MAX, 0);

#[map(name = "PFW_LOG_RATE")]
pub static PFW_LOG_RATE: Array<u64> = Array::with_max_entries(1, 0);

/// The source tries, one per generation: the loader builds a fresh trie for each policy and
/// swaps it into the inactive slot, and the kernel frees the old one once no packet uses it.
pub type SourceTrie4 = LpmTrie<SourceKey4, PortEntry, { SOURCE_TRIE_ENTRIES as usize }>;
pub type SourceTrie6 = LpmTrie<SourceKey6, PortEntry, { SOURCE_TRIE_ENTRIES as usize }>;

#[btf_map(name = "PFW_SRC4")]
pub static PFW_SRC4: ArrayOfMaps<SourceTrie4, { GENERATIONS as usize }> = ArrayOfMaps::new();

#[btf_map(name = "PFW_SRC6")]
pub static PFW_SRC6: ArrayOfMaps<SourceTrie6, { GENERATIONS as usize }> = ArrayOfMaps::new();

/// The generation the kernel reads (0 or 1). A missing slot, which the verifier must see
/// handled, reads as generation 0.
#[inline(always)]
pub fn active_generation() -> u32 {
    match PFW_ACTIVE.get(0) {
        Some(g) => *g & 1,
        None => 0,
    }
}

/// Adds one to a per-CPU counter. Per-CPU slots need no atomics.
#[inline(always)]
pub fn bump(map: &PerCpuArray<u64>, index: u32) {
    bump_by(map, index, 1);
}

/// Adds `n` to a per-CPU counter.
#[inline(always)]
pub fn bump_by(map: &PerCpuArray<u64>, index: u32, n: u64) {
    if let Some(slot) = map.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a successful lookup and is this CPU's slot.
        unsafe { *slot += n };
    }
}

/// Adds one to this CPU's hit counter of `rule` in `generation`.
#[inline(always)]
pub fn bump_rule(generation: u32, rule: u32) {
    // SAFETY: a helper without arguments.
    let cpu = unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() };
    if let Some(slot) = PFW_RULE_HITS.get_ptr_mut(rule_hit_index(cpu, generation, rule)) {
        // SAFETY: a pointer from a successful lookup into this CPU's own region; XDP runs
        // with migration disabled, so no other CPU writes it.
        unsafe { *slot += 1 };
    }
}

/// Size check: the event record must keep the 8-byte alignment the ring buffer gives.
const _: () = assert!(core::mem::size_of::<Event>() % 8 == 0);

/// Writes jiffies into the clock's sample, for the loader's calibration.
#[inline(always)]
pub fn sample_jiffies() {
    if let Some(clock) = PFW_CLOCK.get_ptr_mut(0) {
        // SAFETY: a pointer from a successful lookup; a plain helper call.
        unsafe { (*clock).sample = aya_ebpf::helpers::bpf_jiffies64() };
    }
}
