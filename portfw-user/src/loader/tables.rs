//! The policy tables in kernel memory: memory-mapped, written a whole generation at a time,
//! and switched with one atomic store.
use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::maps::{Array, ArrayOfMaps, LpmTrie, Map, MapData, lpm_trie::Key};
use portfw_common::{
    DefenceMaps, DoorDef, GENERATIONS, MAX_DOORS, MAX_LIMITS, MAX_RULES, MapNames,
    PORT_TABLE_GEN_ENTRIES, PortEntry, RULE_HIT_SLOTS, RuleLimit, SCAN_EXCEPT_GROUP,
    SOURCE_GROUP_BITS, SOURCE_TRIE_ENTRIES, Settings, SourceKey4, SourceKey6, guard, port_flags,
    rule_hit_index, source_key4, source_key6,
};

use super::{
    defences::{BlockNets, Blocks, Purge, required, typed},
    error::{LoaderError, io_err, map_err},
    object::monotonic_ns,
};
use crate::{
    compile::{CompiledPolicy, SourceEntry},
    policy::Cidr,
};

/// `BPF_F_NO_PREALLOC`: LPM tries must allocate as they grow.
const BPF_F_NO_PREALLOC: u32 = 1;

type Trie4 = LpmTrie<MapData, SourceKey4, PortEntry>;
type Trie6 = LpmTrie<MapData, SourceKey6, PortEntry>;

/// A shared, writable mapping of an mmapable BPF array of `len` values of `T`.
struct Mapped<T> {
    ptr: NonNull<T>,
    len: usize,
    bytes: usize,
}

impl<T> Mapped<T> {
    fn new(fd: BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        // The kernel lays array values out at 8-byte strides; a `T` of another size would
        // not line up with `[T]` past the first element.
        if len > 1 && !size_of::<T>().is_multiple_of(8) {
            return Err(io::Error::other(format!(
                "cannot map an array of {}-byte values as a slice",
                size_of::<T>()
            )));
        }
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let bytes = (len * size_of::<T>()).div_ceil(page) * page;
        // SAFETY: mapping a BPF array fd the kernel sized for at least `bytes` (array maps are
        // page-rounded); the result is checked before use.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(addr.cast::<T>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Self { ptr, len, bytes })
    }

    /// Copies `values` to `[start, start + values.len())`.
    fn write(&mut self, start: usize, values: &[T]) {
        assert!(
            start + values.len() <= self.len,
            "table write out of bounds"
        );
        // SAFETY: in bounds (checked above) of a live mapping; the kernel only reads the
        // other generation while we write this one, and `T` is plain data.
        unsafe {
            std::ptr::copy_nonoverlapping(
                values.as_ptr(),
                self.ptr.as_ptr().add(start),
                values.len(),
            )
        };
    }

    fn read(&self, index: usize) -> T
    where
        T: Copy,
    {
        assert!(index < self.len, "table read out of bounds");
        // SAFETY: in bounds of a live mapping of plain data.
        unsafe { std::ptr::read_volatile(self.ptr.as_ptr().add(index)) }
    }
}

impl<T> Mapped<T> {
    /// ORs `bits` into the byte at `offset` of element `index` with an atomic byte
    /// operation, leaving the rest of the element alone: the kernel may be reading it. A
    /// byte that has the bits already is not written, so its cache line stays clean.
    fn or_byte(&mut self, index: usize, offset: usize, bits: u8) {
        assert!(
            index < self.len && offset < size_of::<T>(),
            "table write out of bounds"
        );
        // SAFETY: in bounds of a live mapping; a byte is always aligned for AtomicU8, and
        // the kernel's concurrent accesses to it are single loads or stores too.
        let cell = unsafe {
            std::sync::atomic::AtomicU8::from_ptr(
                self.ptr.as_ptr().add(index).cast::<u8>().add(offset),
            )
        };
        if cell.load(Ordering::Relaxed) & bits != bits {
            cell.fetch_or(bits, Ordering::SeqCst);
        }
    }
}

impl<T> Drop for Mapped<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}

fn of_maps<K: aya::Pod>(
    data: MapData,
    map: &'static str,
) -> Result<ArrayOfMaps<MapData, LpmTrie<MapData, K, PortEntry>>, LoaderError> {
    ArrayOfMaps::try_from(Map::ArrayOfMaps(data)).map_err(map_err(map))
}

/// A new, unattached source trie holding `entries` and `extra`.
fn build_trie<K: aya::Pod>(
    map: &'static str,
    entries: &[SourceEntry<K>],
    extra: &[SourceEntry<K>],
) -> Result<LpmTrie<MapData, K, PortEntry>, LoaderError> {
    let mut trie = LpmTrie::<MapData, K, PortEntry>::create(SOURCE_TRIE_ENTRIES, BPF_F_NO_PREALLOC)
        .map_err(map_err(map))?;
    for entry in entries.iter().chain(extra) {
        trie.insert(&Key::new(entry.prefix_len, entry.key), entry.verdict, 0)
            .map_err(map_err(map))?;
    }
    Ok(trie)
}

/// The defence maps a generation is staged with, each `None` when the kernel object has
/// none: the definitions of its knock doors and limits, and the block tables, whose fill
/// decides whether it looks sources up in them.
#[derive(Default)]
pub struct StageMaps {
    door_defs: Option<Array<MapData, DoorDef>>,
    limit_defs: Option<Array<MapData, RuleLimit>>,
    blocks: Option<Blocks>,
    nets: Option<BlockNets>,
}

impl StageMaps {
    /// The maps `open` gives (an object's own, or a pinned filter's).
    pub(super) fn open(
        open: impl Fn(&'static str) -> Result<Option<MapData>, LoaderError>,
    ) -> Result<Self, LoaderError> {
        Ok(Self {
            door_defs: typed(open(DefenceMaps::DOOR_DEFS)?, DefenceMaps::DOOR_DEFS)?,
            limit_defs: typed(open(DefenceMaps::LIMIT_DEFS)?, DefenceMaps::LIMIT_DEFS)?,
            blocks: typed(open(DefenceMaps::BLOCKS)?, DefenceMaps::BLOCKS)?,
            nets: typed(open(DefenceMaps::BLOCK_NETS)?, DefenceMaps::BLOCK_NETS)?,
        })
    }
}

/// Whether the block tables hold an entry that `purge` keeps: the staged generation then
/// needs its block lookups.
pub(super) fn blocks_kept(
    blocks: Option<&Blocks>,
    nets: Option<&BlockNets>,
    purge: &Purge,
) -> (bool, bool) {
    let now = monotonic_ns();
    let hosts = blocks.is_some_and(|b| {
        b.iter()
            .filter_map(Result::ok)
            .any(|(_, v)| purge.keeps_block(&v, now))
    });
    let nets = nets.is_some_and(|n| {
        n.iter()
            .filter_map(Result::ok)
            .any(|(_, v)| purge.keeps_block(&v, now))
    });
    (hosts, nets)
}

/// The `guard` bits a generation is staged with: the policy's, plus a block lookup for each
/// block table that holds entries, and always the hash's when the scan guard may fill it.
pub(super) fn staged_guard(policy_guard: u8, hosts: bool, nets: bool) -> u8 {
    let mut bits = policy_guard;
    if hosts || policy_guard & guard::SCAN != 0 {
        bits |= guard::BLOCKS;
    }
    if nets {
        bits |= guard::NETS;
    }
    bits
}

/// Source-trie entries putting `cidrs` in the scan guard's except group, where any hit
/// means "never block" (the verdict is not read).
// The loader adds them at staging rather than through `policy::protect_except`, so that the
// compiled policy stays the file's, and `status` shows the addresses apart from it.
pub(super) fn except_entries(
    cidrs: &[Cidr],
) -> (Vec<SourceEntry<SourceKey4>>, Vec<SourceEntry<SourceKey6>>) {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for cidr in cidrs {
        let prefix_len = SOURCE_GROUP_BITS + u32::from(cidr.len);
        match cidr.addr {
            std::net::IpAddr::V4(a) => v4.push(SourceEntry {
                prefix_len,
                key: source_key4(SCAN_EXCEPT_GROUP, a.octets()),
                verdict: PortEntry::default(),
            }),
            std::net::IpAddr::V6(a) => v6.push(SourceEntry {
                prefix_len,
                key: source_key6(SCAN_EXCEPT_GROUP, a.octets()),
                verdict: PortEntry::default(),
            }),
        }
    }
    (v4, v6)
}

/// The maps a policy is written into.
pub struct Tables {
    active: Mapped<u32>,
    settings: Mapped<Settings>,
    ports: Mapped<PortEntry>,
    /// One region of `RULE_HIT_SLOTS` counters per possible CPU.
    rule_hits: Mapped<u64>,
    cpus: u32,
    /// Per generation, the IPv4 and IPv6 source tries.
    sources4: ArrayOfMaps<MapData, Trie4>,
    sources6: ArrayOfMaps<MapData, Trie6>,
    defences: StageMaps,
}

fn mmap_err(map: &'static str) -> impl FnOnce(io::Error) -> LoaderError {
    io_err(format!("memory-mapping map {map}"))
}

impl Tables {
    pub fn new(
        active: &MapData,
        settings: &MapData,
        ports: &MapData,
        rule_hits: &MapData,
        sources4: MapData,
        sources6: MapData,
        defences: StageMaps,
    ) -> Result<Self, LoaderError> {
        use std::os::fd::AsFd as _;
        let hit_slots = rule_hits
            .info()
            .map_err(map_err(MapNames::RULE_HITS))?
            .max_entries();
        if hit_slots == 0 || hit_slots % RULE_HIT_SLOTS != 0 {
            return Err(LoaderError::Internal(format!(
                "{} has {hit_slots} entries, not a multiple of {RULE_HIT_SLOTS}",
                MapNames::RULE_HITS
            )));
        }
        Ok(Self {
            active: Mapped::new(active.fd().as_fd(), 1).map_err(mmap_err(MapNames::ACTIVE))?,
            settings: Mapped::new(settings.fd().as_fd(), GENERATIONS as usize)
                .map_err(mmap_err(MapNames::SETTINGS))?,
            ports: Mapped::new(
                ports.fd().as_fd(),
                (GENERATIONS * PORT_TABLE_GEN_ENTRIES) as usize,
            )
            .map_err(mmap_err(MapNames::PORTS))?,
            rule_hits: Mapped::new(rule_hits.fd().as_fd(), hit_slots as usize)
                .map_err(mmap_err(MapNames::RULE_HITS))?,
            cpus: hit_slots / RULE_HIT_SLOTS,
            sources4: of_maps(sources4, MapNames::SOURCES4)?,
            sources6: of_maps(sources6, MapNames::SOURCES6)?,
            defences,
        })
    }

    /// The generation the kernel reads now.
    pub fn active(&self) -> u32 {
        // SAFETY: the mapping is live and 4-byte aligned (page aligned).
        let cell = unsafe { AtomicU32::from_ptr(self.active.ptr.as_ptr()) };
        cell.load(Ordering::Acquire) & 1
    }

    /// The generation `install` would write next.
    pub fn inactive(&self) -> u32 {
        self.active() ^ 1
    }

    /// Writes `policy` into the inactive generation without switching to it.
    pub fn stage(&mut self, policy: &CompiledPolicy) -> Result<u32, LoaderError> {
        self.stage_with(policy, &[])
    }

    /// [`Tables::stage`], with `host_except` (the addresses the host depends on) added to
    /// the scan guard's except group when the policy has `scan:`.
    ///
    /// Besides the policy's own tables, this writes the generation's knock doors and limits
    /// into `PFW_DOOR_DEFS` and `PFW_LIMIT_DEFS`, and turns the block lookups on (the
    /// `guard` bits, and `GUARD` on every port entry) when the block tables hold blocks the
    /// new policy keeps.
    pub fn stage_with(
        &mut self,
        policy: &CompiledPolicy,
        host_except: &[Cidr],
    ) -> Result<u32, LoaderError> {
        if policy.ports.len() != PORT_TABLE_GEN_ENTRIES as usize {
            return Err(LoaderError::Internal(format!(
                "compiled port table has {} entries, expected {PORT_TABLE_GEN_ENTRIES}",
                policy.ports.len()
            )));
        }
        if policy.rules.len() > MAX_RULES as usize {
            return Err(LoaderError::TooManyRules {
                rules: policy.rules.len(),
            });
        }
        if policy.doors.len() > MAX_DOORS as usize || policy.limits.len() > MAX_LIMITS as usize {
            return Err(LoaderError::Internal(format!(
                "compiled policy has {} doors and {} limits; at most {MAX_DOORS} and \
                 {MAX_LIMITS}",
                policy.doors.len(),
                policy.limits.len()
            )));
        }
        let scan = policy.settings.guard & guard::SCAN != 0;
        if scan {
            required(
                self.defences.blocks.as_ref(),
                DefenceMaps::BLOCKS,
                "`scan:`",
            )?;
        }
        let generation = self.inactive();
        self.stage_defs(generation, policy)?;
        let (hosts, nets) = blocks_kept(
            self.defences.blocks.as_ref(),
            self.defences.nets.as_ref(),
            &Purge::of(policy),
        );
        let mut settings = policy.settings;
        settings.guard = staged_guard(settings.guard, hosts, nets);
        self.stage_sources(generation, policy, if scan { host_except } else { &[] })?;
        self.reset_rule_hits(generation, policy.rules.len());
        self.settings
            .write(generation as usize, std::slice::from_ref(&settings));
        let first = (generation * PORT_TABLE_GEN_ENTRIES) as usize;
        self.ports.write(first, &policy.ports);
        if settings.guard != 0 {
            self.guard_ports(generation);
        }
        Ok(generation)
    }

    /// Writes the generation's knock doors (every slot: unused ones zeroed) and the limits
    /// of its rules. Slots past the policy's limits are never read: no entry points there.
    fn stage_defs(&mut self, generation: u32, policy: &CompiledPolicy) -> Result<(), LoaderError> {
        if !policy.doors.is_empty() {
            required(
                self.defences.door_defs.as_ref(),
                DefenceMaps::DOOR_DEFS,
                "`knock:`",
            )?;
        }
        if let Some(defs) = self.defences.door_defs.as_mut() {
            for slot in 0..MAX_DOORS {
                let def = policy
                    .doors
                    .get(slot as usize)
                    .map_or_else(DoorDef::default, |d| d.def);
                defs.set(generation * MAX_DOORS + slot, def, 0)
                    .map_err(map_err(DefenceMaps::DOOR_DEFS))?;
            }
        }
        if !policy.limits.is_empty() {
            let defs = required(
                self.defences.limit_defs.as_mut(),
                DefenceMaps::LIMIT_DEFS,
                "a rule's `limit:`",
            )?;
            for (i, limit) in policy.limits.iter().enumerate() {
                defs.set(generation * MAX_LIMITS + i as u32, limit, 0)
                    .map_err(map_err(DefenceMaps::LIMIT_DEFS))?;
            }
        }
        Ok(())
    }

    /// Sets `GUARD` on every port entry of `generation`.
    fn guard_ports(&mut self, generation: u32) {
        let flags = std::mem::offset_of!(PortEntry, flags);
        let first = (generation * PORT_TABLE_GEN_ENTRIES) as usize;
        for index in first..first + PORT_TABLE_GEN_ENTRIES as usize {
            self.ports.or_byte(index, flags, port_flags::GUARD);
        }
    }

    /// For `portfw block`: turns the block lookup `bits` ([`guard::BLOCKS`] or
    /// [`guard::NETS`]) on in both generations, in place, while the kernel reads them: the
    /// settings' bits first, then `GUARD` on every port entry, each one atomic byte.
    pub(super) fn guard_in_place(&mut self, bits: u8) {
        let guard_byte = std::mem::offset_of!(Settings, guard);
        for generation in 0..GENERATIONS {
            self.settings.or_byte(generation as usize, guard_byte, bits);
            self.guard_ports(generation);
        }
    }

    /// Fresh tries replace whatever the inactive generation held; the kernel frees the old
    /// ones once no program run can still see them.
    ///
    /// Each swap waits for an RCU grace period (the kernel makes map-in-map updates visible
    /// to every running program before returning), about 10 ms. A policy without source
    /// rules has no port entry naming a group, so the kernel never reads that generation's
    /// tries, and the swap is skipped.
    /// The scan guard reads the tries too (its except group), even without source rules.
    fn stage_sources(
        &mut self,
        generation: u32,
        policy: &CompiledPolicy,
        host_except: &[Cidr],
    ) -> Result<(), LoaderError> {
        let scan = policy.settings.guard & guard::SCAN != 0;
        if policy.groups.is_empty() && !scan {
            return Ok(());
        }
        let (extra4, extra6) = except_entries(host_except);
        let trie4: Trie4 = build_trie(MapNames::SOURCES4, &policy.sources4, &extra4)?;
        let trie6: Trie6 = build_trie(MapNames::SOURCES6, &policy.sources6, &extra6)?;
        self.sources4
            .set(generation, &trie4, 0)
            .map_err(map_err(MapNames::SOURCES4))?;
        self.sources6
            .set(generation, &trie6, 0)
            .map_err(map_err(MapNames::SOURCES6))?;
        Ok(())
    }

    /// Makes `generation` the one the kernel reads: one aligned store, so each packet sees
    /// either the old or the new policy, never a mix.
    pub fn switch_to(&mut self, generation: u32) {
        // SAFETY: as in `active`.
        let cell = unsafe { AtomicU32::from_ptr(self.active.ptr.as_ptr()) };
        cell.store(generation & 1, Ordering::SeqCst);
    }

    /// Writes `policy` into the inactive generation and switches to it.
    pub fn install(&mut self, policy: &CompiledPolicy) -> Result<u32, LoaderError> {
        let generation = self.stage(policy)?;
        self.switch_to(generation);
        Ok(generation)
    }

    /// The port entry of the active generation (for `explain`-style queries and tests).
    pub fn port_entry(&self, proto_slot: u32, port: u16) -> PortEntry {
        let generation = self.active();
        self.ports
            .read(portfw_common::port_index(generation, proto_slot, port) as usize)
    }

    /// The active generation's verdict for a packet, as the kernel computes it; `true` when
    /// the source trie rather than the port table decided.
    pub fn lookup(
        &self,
        proto_slot: u32,
        port: u16,
        source: std::net::IpAddr,
    ) -> Result<(PortEntry, bool), LoaderError> {
        let entry = self.port_entry(proto_slot, port);
        for group in [entry.group, entry.tail] {
            if group == portfw_common::NO_SOURCE_GROUP {
                break;
            }
            if let Some(hit) = self.source_lookup(group, source)? {
                return Ok((hit, true));
            }
        }
        Ok((entry, false))
    }

    /// The active generation's source trie entry for `source` under `group`, if any.
    fn source_lookup(
        &self,
        group: u16,
        source: std::net::IpAddr,
    ) -> Result<Option<PortEntry>, LoaderError> {
        let generation = self.active();
        let bits = portfw_common::SOURCE_GROUP_BITS;
        Ok(match source {
            std::net::IpAddr::V4(a) => {
                let trie = self
                    .sources4
                    .get(&generation, 0)
                    .map_err(map_err(MapNames::SOURCES4))?;
                let key = Key::new(bits + 32, portfw_common::source_key4(group, a.octets()));
                trie.get(&key, 0).ok()
            }
            std::net::IpAddr::V6(a) => {
                let trie = self
                    .sources6
                    .get(&generation, 0)
                    .map_err(map_err(MapNames::SOURCES6))?;
                let key = Key::new(bits + 128, portfw_common::source_key6(group, a.octets()));
                trie.get(&key, 0).ok()
            }
        })
    }

    /// Hits of each of the first `rules` rules of the active generation, summed over CPUs.
    pub fn rule_hits(&self, rules: usize) -> Vec<u64> {
        let generation = self.active();
        (0..rules.min(MAX_RULES as usize) as u32)
            .map(|rule| {
                (0..self.cpus)
                    .map(|cpu| {
                        self.rule_hits
                            .read(rule_hit_index(cpu, generation, rule) as usize)
                    })
                    .sum()
            })
            .collect()
    }

    /// Zeroes the first `rules` hit counters of `generation` on every CPU. Only done to the
    /// inactive generation, which no CPU is counting into.
    fn reset_rule_hits(&mut self, generation: u32, rules: usize) {
        let zeros = vec![0u64; rules.min(MAX_RULES as usize)];
        for cpu in 0..self.cpus {
            self.rule_hits
                .write(rule_hit_index(cpu, generation, 0) as usize, &zeros);
        }
    }
}
