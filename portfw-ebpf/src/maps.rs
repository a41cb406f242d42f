//! The kernel program's maps. Layouts and names come from portfw-common.
use aya_ebpf::{
    btf_maps::{ArrayOfMaps, LpmTrie},
    macros::{btf_map, map},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
};
use portfw_common::{
    BPF_F_MMAPABLE, Clock, EVENT_RING_BYTES, Event, FLOWS_DEFAULT_MAX, FlowKey, FlowValue,
    GENERATIONS, PORT_TABLE_GEN_ENTRIES, PortEntry, RULE_HIT_SLOTS, SOURCE_TRIE_ENTRIES, Settings,
    SourceKey4, SourceKey6, counter, rule_hit_index,
};

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

/// The flow table's clock, calibrated by the loader (see [`Clock`]).
#[map(name = "PFW_CLOCK")]
pub static PFW_CLOCK: Array<Clock> = Array::with_max_entries(1, 0);

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
    if let Some(slot) = map.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a successful lookup and is this CPU's slot.
        unsafe { *slot += 1 };
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
