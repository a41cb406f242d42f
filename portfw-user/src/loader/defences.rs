//! The active defences' state in the kernel, as user space handles it: the block tables
//! (`portfw block`, the scan guard), open knock doors, what an apply carries over and
//! purges, and the two entry points other parts call, [`open_door`] (`portfw agent`'s
//! single-packet knocks).
//!
//! The state maps are pinned beside the flow table, outside the generations, so an in-place
//! apply keeps them as they are; a fresh load copies them over (see [`Carried`]); `detach`
//! removes them with the other pins. A kernel object without them (one built before the
//! defences) still loads: each handle is an `Option`, and only a policy or a command that
//! needs a missing map fails, with [`LoaderError::DefenceMapMissing`].
use std::{collections::BTreeSet, net::IpAddr, time::Duration};

use aya::maps::{HashMap, LpmTrie, Map, MapData, MapError, lpm_trie::Key};
use portfw_common::{
    BLOCK_NET_PREFIX_BITS, BLOCK_NETS_MAX, BLOCKS_MAX, BlockNetKey, BlockValue, DefenceMaps,
    DoorDef, DoorKey, DoorValue, KnockState, LimitKey, SourceKey, block_reason, guard, opens_id,
};
use serde::Serialize;

use super::{
    bpffs::Paths,
    error::{LoaderError, map_err},
    object::{monotonic_ns, open_tables, pinned_optional},
    query::loaded_state,
    state::{DoorRecord, State},
};
use crate::{compile::CompiledPolicy, policy::Cidr};

/// The state maps, in the order they are pinned. Definitions (`PFW_DOOR_DEFS`,
/// `PFW_LIMIT_DEFS`) belong to the generations and are written by `Tables::stage`.
pub(super) const DEFENCE_MAPS: [&str; 12] = [
    DefenceMaps::DOOR_DEFS,
    DefenceMaps::LIMIT_DEFS,
    DefenceMaps::BLOCKS,
    DefenceMaps::BLOCK_NETS,
    DefenceMaps::SCAN,
    DefenceMaps::SCAN_PORTS,
    DefenceMaps::LIMITS,
    DefenceMaps::KNOCKS,
    DefenceMaps::DOORS,
    DefenceMaps::LOG_AGG,
    DefenceMaps::LOG_SOURCES,
    DefenceMaps::LOG_RATE,
];

pub(super) type Blocks = HashMap<MapData, SourceKey, BlockValue>;
pub(super) type BlockNets = LpmTrie<MapData, BlockNetKey, BlockValue>;
type Doors = HashMap<MapData, DoorKey, DoorValue>;
type Scan = HashMap<MapData, SourceKey, portfw_common::ScanValue>;

/// A typed handle on `data`, whatever kind of map (hash or LRU hash) the kernel declared.
pub(super) fn typed<T>(data: Option<MapData>, name: &'static str) -> Result<Option<T>, LoaderError>
where
    T: TryFrom<Map, Error = MapError>,
{
    data.map(|d| {
        Map::from_map_data(d)
            .and_then(T::try_from)
            .map_err(map_err(name))
    })
    .transpose()
}

/// `map`, or the error saying that `needs` needs it.
pub(super) fn required<T>(
    map: Option<T>,
    name: &'static str,
    needs: &str,
) -> Result<T, LoaderError> {
    map.ok_or_else(|| LoaderError::DefenceMapMissing {
        map: name,
        needs: needs.to_string(),
    })
}

/// `map` of the filter pinned at `paths`, typed; `None` when it is not pinned.
fn pinned<T>(paths: &Paths, name: &'static str) -> Result<Option<T>, LoaderError>
where
    T: TryFrom<Map, Error = MapError>,
{
    typed(pinned_optional(paths, name)?, name)
}

/// The state maps key a source by its full address (doors, events).
pub fn source_key(addr: IpAddr) -> SourceKey {
    SourceKey::of(addr, false)
}

/// The block table, the scan guard and the limits key an IPv6 source by its /64.
pub fn masked_source_key(addr: IpAddr) -> SourceKey {
    SourceKey::of(addr, true)
}

/// The address a key names.
pub fn key_addr(key: &SourceKey) -> IpAddr {
    key.addr()
}

/// Where a block of a prefix goes: IPv4 /32 and IPv6 /64 to /128 into the hash of sources
/// (IPv6 as its /64, as the kernel looks sources up), any other prefix into the trie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockTarget {
    Source(SourceKey),
    Net(BlockNetKey, u8),
}

impl BlockTarget {
    /// The target of blocking `cidr`; a /0 (every source) is refused.
    pub fn of(cidr: Cidr) -> Result<Self, LoaderError> {
        if cidr.len == 0 {
            return Err(LoaderError::BlockEverything(cidr.to_string()));
        }
        let full = cidr.len == cidr.max_len();
        Ok(match cidr.addr {
            IpAddr::V4(_) if full => Self::Source(source_key(cidr.addr)),
            IpAddr::V6(_) if cidr.len >= 64 => Self::Source(masked_source_key(cidr.addr)),
            _ => {
                let key = source_key(cidr.addr);
                let mut data: BlockNetKey = [0; 20];
                data[0] = key.family;
                data[4..].copy_from_slice(&key.addr);
                Self::Net(data, cidr.len)
            }
        })
    }

    /// The prefix the kernel really blocks (an IPv6 host is blocked as its /64).
    pub fn cidr(&self) -> Cidr {
        match self {
            Self::Source(key) => {
                let len = if key.family == 6 { 64 } else { 32 };
                Cidr::new(key_addr(key), len).unwrap_or_else(|| Cidr::host(key_addr(key)))
            }
            Self::Net(data, len) => net_cidr(data, u32::from(*len) + BLOCK_NET_PREFIX_BITS),
        }
    }

    fn guard_bit(&self) -> u8 {
        match self {
            Self::Source(_) => guard::BLOCKS,
            Self::Net(..) => guard::NETS,
        }
    }
}

/// The prefix of a block trie entry (key data and trie prefix length).
fn net_cidr(data: &BlockNetKey, prefix_len: u32) -> Cidr {
    let mut key = SourceKey {
        family: data[0],
        ..SourceKey::default()
    };
    key.addr.copy_from_slice(&data[4..]);
    let len = prefix_len.saturating_sub(BLOCK_NET_PREFIX_BITS) as u8;
    Cidr::new(key_addr(&key), len).unwrap_or_else(|| Cidr::host(key_addr(&key)))
}

/// Seconds from `now` to `expires_ns`, rounded down to the millisecond, so a block of N
/// seconds never shows more than N.
fn seconds_left(expires_ns: u64, now: u64) -> f64 {
    (expires_ns.saturating_sub(now) / 1_000_000) as f64 / 1e3
}

/// An entry of the block tables, as `status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BlockStatus {
    /// The blocked prefix: `198.51.100.7/32`, `2001:db8:1:2::/64`, `10.0.0.0/8`.
    pub address: String,
    /// `scan` or `manual`.
    pub reason: &'static str,
    /// Seconds until the block ends; `null`: until `portfw unblock`.
    pub expires_in: Option<f64>,
}

fn reason_name(reason: u8) -> &'static str {
    match reason {
        block_reason::SCAN => "scan",
        block_reason::MANUAL => "manual",
        _ => "other",
    }
}

/// A block is live at `now` while it has no expiry or its expiry is ahead.
fn live(value: &BlockValue, now: u64) -> bool {
    value.expires_ns == 0 || value.expires_ns > now
}

fn block_status(cidr: Cidr, value: &BlockValue, now: u64) -> BlockStatus {
    BlockStatus {
        address: cidr.to_string(),
        reason: reason_name(value.reason),
        expires_in: (value.expires_ns != 0).then(|| seconds_left(value.expires_ns, now)),
    }
}

/// An open knock door, as `status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OpenDoor {
    /// The door's name in the policy that opened it.
    pub door: String,
    /// The address the door is open for.
    pub source: String,
    pub expires_in: f64,
}

/// The live blocks of the filter pinned at `paths`, by address; expired ones are left out.
pub(super) fn live_blocks(paths: &Paths, now: u64) -> Result<Vec<BlockStatus>, LoaderError> {
    let mut found = Vec::new();
    if let Some(blocks) = pinned::<Blocks>(paths, DefenceMaps::BLOCKS)? {
        // An entry the kernel deletes while we walk the table is simply not shown.
        for (key, value) in blocks.iter().filter_map(Result::ok) {
            if live(&value, now) {
                let target = BlockTarget::Source(key);
                found.push((target.cidr(), value));
            }
        }
    }
    if let Some(nets) = pinned::<BlockNets>(paths, DefenceMaps::BLOCK_NETS)? {
        for (key, value) in nets.iter().filter_map(Result::ok) {
            if live(&value, now) {
                found.push((net_cidr(&key.data(), key.prefix_len()), value));
            }
        }
    }
    found.sort_by_key(|(cidr, _)| *cidr);
    Ok(found
        .iter()
        .map(|(cidr, value)| block_status(*cidr, value, now))
        .collect())
}

/// The open doors of the filter pinned at `paths`, named from `state`'s records.
pub(super) fn live_doors(
    paths: &Paths,
    state: &State,
    now: u64,
) -> Result<Vec<OpenDoor>, LoaderError> {
    let Some(doors) = pinned::<Doors>(paths, DefenceMaps::DOORS)? else {
        return Ok(Vec::new());
    };
    let name = |id: u32| {
        state
            .defences
            .iter()
            .flatten()
            .flat_map(|record| &record.knock_doors)
            .find(|door| door.id == id)
            .map_or_else(|| format!("#{id:08x}"), |door| door.name.clone())
    };
    let mut open: Vec<OpenDoor> = doors
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, value)| value.expires_ns > now)
        .map(|(key, value)| OpenDoor {
            door: name(value.door),
            source: key_addr(&key.source).to_string(),
            expires_in: seconds_left(value.expires_ns, now),
        })
        .collect();
    open.sort_by(|a, b| (&a.door, &a.source).cmp(&(&b.door, &b.source)));
    Ok(open)
}

/// What a re-apply keeps of the defence state (the spec's "state across re-apply"): doors
/// and knock progress of doors the new policy still has, manual blocks always, scan blocks
/// while the new policy has `scan:`, and never an expired block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Purge {
    doors: BTreeSet<u32>,
    scan: bool,
}

impl Purge {
    pub(super) fn of(policy: &CompiledPolicy) -> Self {
        Self {
            doors: policy.doors.iter().map(|d| d.def.id).collect(),
            scan: policy.settings.guard & guard::SCAN != 0,
        }
    }

    /// Knock progress is keyed by its door's id.
    pub(super) fn keeps_knock(&self, key: &DoorKey) -> bool {
        self.doors.contains(&key.id)
    }

    /// An open door is keyed by the port it opens; its value names the door.
    pub(super) fn keeps_door(&self, value: &DoorValue) -> bool {
        self.doors.contains(&value.door)
    }

    pub(super) fn keeps_block(&self, value: &BlockValue, now: u64) -> bool {
        live(value, now) && (self.scan || value.reason != block_reason::SCAN)
    }
}

/// What a re-apply removed, for its notes.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Purged {
    pub doors: usize,
    pub scan_blocks: usize,
}

impl Purged {
    pub(super) fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.doors > 0 {
            notes.push(format!(
                "closed {} open knock door{} of doors the new policy no longer has",
                self.doors,
                if self.doors == 1 { "" } else { "s" }
            ));
        }
        if self.scan_blocks > 0 {
            notes.push(format!(
                "lifted {} scan block{}: the new policy has no `scan:` (manual blocks stay)",
                self.scan_blocks,
                if self.scan_blocks == 1 { "" } else { "s" }
            ));
        }
        notes
    }
}

/// Deletes from the maps pinned at `paths` what `purge` does not keep, once the new policy
/// is in force. Knock progress is deleted silently; expired blocks go too.
pub(super) fn purge_pinned(paths: &Paths, purge: &Purge) -> Result<Purged, LoaderError> {
    let now = monotonic_ns();
    let mut purged = Purged::default();
    if let Some(mut doors) = pinned::<Doors>(paths, DefenceMaps::DOORS)? {
        let gone: Vec<DoorKey> = doors
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| !purge.keeps_door(v))
            .map(|(k, _)| k)
            .collect();
        for key in &gone {
            if doors.remove(key).is_ok() {
                purged.doors += 1;
            }
        }
    }
    if let Some(mut knocks) =
        pinned::<HashMap<MapData, DoorKey, KnockState>>(paths, DefenceMaps::KNOCKS)?
    {
        let gone: Vec<DoorKey> = knocks
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !purge.keeps_knock(k))
            .collect();
        for key in &gone {
            let _ = knocks.remove(key);
        }
    }
    if let Some(mut blocks) = pinned::<Blocks>(paths, DefenceMaps::BLOCKS)? {
        let gone: Vec<(SourceKey, BlockValue)> = blocks
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| !purge.keeps_block(v, now))
            .collect();
        for (key, value) in &gone {
            if blocks.remove(key).is_ok() && live(value, now) {
                purged.scan_blocks += 1;
            }
        }
    }
    if let Some(mut nets) = pinned::<BlockNets>(paths, DefenceMaps::BLOCK_NETS)? {
        let gone: Vec<Key<BlockNetKey>> = nets
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| !purge.keeps_block(v, now))
            .map(|(k, _)| k)
            .collect();
        for key in &gone {
            let _ = nets.remove(key);
        }
    }
    Ok(purged)
}

/// The defence state a fresh load copies from the filter it replaces, as the flow table's
/// flows are copied: the kernel cannot hand a new program an old program's maps.
#[derive(Default)]
pub(super) struct Carried {
    blocks: Vec<(SourceKey, BlockValue)>,
    nets: Vec<(Key<BlockNetKey>, BlockValue)>,
    doors: Vec<(DoorKey, DoorValue)>,
    knocks: Vec<(DoorKey, KnockState)>,
    limits: Vec<(LimitKey, u64)>,
}

fn entries<K: aya::Pod, V: aya::Pod>(paths: &Paths, name: &'static str) -> Vec<(K, V)> {
    match pinned::<HashMap<MapData, K, V>>(paths, name) {
        Ok(Some(map)) => map.iter().filter_map(Result::ok).collect(),
        _ => Vec::new(),
    }
}

impl Carried {
    /// What the filter pinned at `paths` holds that `purge` keeps. Best effort, as for the
    /// flows: a map that cannot be read carries nothing.
    pub(super) fn read(paths: &Paths, purge: &Purge) -> Self {
        let now = monotonic_ns();
        let mut carried = Self {
            blocks: entries(paths, DefenceMaps::BLOCKS),
            nets: match pinned::<BlockNets>(paths, DefenceMaps::BLOCK_NETS) {
                Ok(Some(nets)) => nets.iter().filter_map(Result::ok).collect(),
                _ => Vec::new(),
            },
            doors: entries(paths, DefenceMaps::DOORS),
            knocks: entries(paths, DefenceMaps::KNOCKS),
            limits: entries(paths, DefenceMaps::LIMITS),
        };
        carried.blocks.retain(|(_, v)| purge.keeps_block(v, now));
        carried.nets.retain(|(_, v)| purge.keeps_block(v, now));
        carried.doors.retain(|(_, v)| purge.keeps_door(v));
        carried.knocks.retain(|(k, _)| purge.keeps_knock(k));
        carried
    }

    pub(super) fn is_empty(&self) -> bool {
        self.blocks.is_empty()
            && self.nets.is_empty()
            && self.doors.is_empty()
            && self.knocks.is_empty()
            && self.limits.is_empty()
    }

    /// Puts the carried state into a freshly loaded object's maps (`open` gives them).
    pub(super) fn restore(
        &self,
        open: impl Fn(&'static str) -> Result<Option<MapData>, LoaderError>,
    ) -> Result<(), LoaderError> {
        fn put<K: aya::Pod, V: aya::Pod>(
            open: &impl Fn(&'static str) -> Result<Option<MapData>, LoaderError>,
            name: &'static str,
            items: &[(K, V)],
        ) -> Result<(), LoaderError> {
            if items.is_empty() {
                return Ok(());
            }
            // A kernel object without the map (an older portfw's) cannot hold the state.
            let Some(mut map) = typed::<HashMap<MapData, K, V>>(open(name)?, name)? else {
                return Ok(());
            };
            for (key, value) in items {
                map.insert(key, value, 0).map_err(map_err(name))?;
            }
            Ok(())
        }
        put(&open, DefenceMaps::BLOCKS, &self.blocks)?;
        put(&open, DefenceMaps::DOORS, &self.doors)?;
        put(&open, DefenceMaps::KNOCKS, &self.knocks)?;
        put(&open, DefenceMaps::LIMITS, &self.limits)?;
        if !self.nets.is_empty() {
            let name = DefenceMaps::BLOCK_NETS;
            let Some(mut nets) = typed::<BlockNets>(open(name)?, name)? else {
                return Ok(());
            };
            for (key, value) in &self.nets {
                nets.insert(key, value, 0).map_err(map_err(name))?;
            }
        }
        Ok(())
    }
}

/// What `portfw block` did.
#[derive(Debug)]
pub struct BlockOutcome {
    /// The prefix now blocked (an IPv6 host as its /64).
    pub blocked: Cidr,
    /// It replaced an entry (a scan block, or an earlier manual block).
    pub replaced: Option<BlockStatus>,
    /// Seconds until it ends; `None`: until `portfw unblock`.
    pub expires_in: Option<f64>,
}

fn full_or(name: &'static str, max: u32) -> impl Fn(MapError) -> LoaderError {
    move |e| match &e {
        MapError::SyscallError(aya::sys::SyscallError { io_error, .. })
            if io_error.raw_os_error() == Some(libc::E2BIG) =>
        {
            LoaderError::BlockTableFull { map: name, max }
        }
        _ => map_err(name)(e),
    }
}

/// `portfw block`: blocks `cidr` in this network namespace's filter, for `duration` or
/// until unblocked. The first block also turns the block lookup on in both generations, in
/// place, so that the running policy and a trial's rollback target both enforce it.
pub fn block(cidr: Cidr, duration: Option<Duration>) -> Result<BlockOutcome, LoaderError> {
    let paths = Paths::current()?;
    paths.check()?;
    let _lock = paths.lock()?;
    loaded_state(&paths)?;
    let target = BlockTarget::of(cidr)?;
    let now = monotonic_ns();
    let value = BlockValue {
        expires_ns: duration.map_or(0, |d| {
            now.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        }),
        created_ns: now,
        reason: block_reason::MANUAL,
        _pad: [0; 7],
    };
    let needs = "`portfw block`";
    let previous = match target {
        BlockTarget::Source(key) => {
            let name = DefenceMaps::BLOCKS;
            let mut blocks: Blocks = required(pinned(&paths, name)?, name, needs)?;
            let previous = blocks.get(&key, 0).ok();
            blocks
                .insert(key, value, 0)
                .map_err(full_or(name, BLOCKS_MAX))?;
            previous
        }
        BlockTarget::Net(data, len) => {
            let name = DefenceMaps::BLOCK_NETS;
            let mut nets: BlockNets = required(pinned(&paths, name)?, name, needs)?;
            let key = Key::new(u32::from(len) + BLOCK_NET_PREFIX_BITS, data);
            let previous = nets
                .iter()
                .filter_map(Result::ok)
                .find(|(k, _)| k.prefix_len() == key.prefix_len() && k.data() == data)
                .map(|(_, v)| v);
            nets.insert(&key, value, 0)
                .map_err(full_or(name, BLOCK_NETS_MAX))?;
            previous
        }
    };
    open_tables(&paths)?.guard_in_place(target.guard_bit());
    let blocked = target.cidr();
    Ok(BlockOutcome {
        blocked,
        replaced: previous
            .filter(|v| live(v, now))
            .map(|v| block_status(blocked, &v, now)),
        expires_in: (value.expires_ns != 0).then(|| seconds_left(value.expires_ns, now)),
    })
}

/// What `portfw unblock` did.
#[derive(Debug)]
pub struct UnblockOutcome {
    /// The prefix looked for (an IPv6 host as its /64).
    pub target: Cidr,
    /// The block removed; `None` when there was none (or only an expired one).
    pub removed: Option<BlockStatus>,
    /// For a host without a block of its own: it lies in a blocked prefix, which still
    /// blocks it.
    pub still_blocked_by_net: bool,
}

/// `portfw unblock`: removes the block of `cidr` (whatever made it) and, for a source, its
/// scan guard count. Unblocking what is not blocked changes nothing and is not an error.
pub fn unblock(cidr: Cidr) -> Result<UnblockOutcome, LoaderError> {
    let paths = Paths::current()?;
    paths.check()?;
    let _lock = paths.lock()?;
    loaded_state(&paths)?;
    let target = BlockTarget::of(cidr)?;
    let now = monotonic_ns();
    let needs = "`portfw unblock`";
    let shown = target.cidr();
    let mut still_blocked_by_net = false;
    let removed = match target {
        BlockTarget::Source(key) => {
            let name = DefenceMaps::BLOCKS;
            let mut blocks: Blocks = required(pinned(&paths, name)?, name, needs)?;
            let previous = blocks.get(&key, 0).ok();
            if previous.is_some() {
                blocks.remove(&key).map_err(map_err(name))?;
            }
            if let Some(mut scan) = pinned::<Scan>(&paths, DefenceMaps::SCAN)? {
                let _ = scan.remove(&key);
            }
            if let Some(nets) = pinned::<BlockNets>(&paths, DefenceMaps::BLOCK_NETS)? {
                let mut data: BlockNetKey = [0; 20];
                data[0] = key.family;
                data[4..].copy_from_slice(&source_key(cidr.addr).addr);
                let bits = if key.family == 6 { 128 } else { 32 };
                still_blocked_by_net = nets
                    .get(&Key::new(bits + BLOCK_NET_PREFIX_BITS, data), 0)
                    .is_ok_and(|v| live(&v, now));
            }
            previous
        }
        BlockTarget::Net(data, len) => {
            let name = DefenceMaps::BLOCK_NETS;
            let mut nets: BlockNets = required(pinned(&paths, name)?, name, needs)?;
            let key = Key::new(u32::from(len) + BLOCK_NET_PREFIX_BITS, data);
            let previous = nets
                .iter()
                .filter_map(Result::ok)
                .find(|(k, _)| k.prefix_len() == key.prefix_len() && k.data() == data)
                .map(|(_, v)| v);
            if previous.is_some() {
                nets.remove(&key).map_err(map_err(name))?;
            }
            previous
        }
    };
    Ok(UnblockOutcome {
        target: shown,
        removed: removed
            .filter(|v| live(v, now))
            .map(|v| block_status(shown, &v, now)),
        still_blocked_by_net,
    })
}

/// For `portfw agent`: opens `door` (a [`DoorDef`] of the running policy, as
/// [`applied_doors`] or the compiled policy gives it) for `source` for `for_ns` nanoseconds
/// (normally [`DoorDef::open_ns`]), in the filter pinned at `paths` (`Paths::current()` for
/// this namespace's). The entry is keyed by the opened port ([`opens_id`]) and the full
/// source address, and names the door; opening an open door again extends it. Connections
/// it lets in outlive it through the flow table. Returns what was written
/// (CLOCK_MONOTONIC nanoseconds, [`monotonic_ns`]).
pub fn open_door(
    paths: &Paths,
    door: &DoorDef,
    source: IpAddr,
    for_ns: u64,
) -> Result<DoorValue, LoaderError> {
    let name = DefenceMaps::DOORS;
    let mut doors: Doors = required(pinned(paths, name)?, name, "opening a knock door")?;
    let now = monotonic_ns();
    let value = DoorValue {
        opened_ns: now,
        expires_ns: now.saturating_add(for_ns),
        door: door.id,
        _pad: 0,
    };
    let key = DoorKey {
        id: opens_id(door.opens_slot, door.opens_port),
        source: source_key(source),
    };
    doors.insert(key, value, 0).map_err(map_err(name))?;
    Ok(value)
}

/// For `portfw agent`: the knock doors of the policy the filter pinned at `paths` runs now
/// (name, id, kind, `for:`, and a single-packet door's port and key file), as `apply`
/// recorded them.
pub fn applied_doors(paths: &Paths) -> Result<Vec<DoorRecord>, LoaderError> {
    let state = loaded_state(paths)?;
    let generation = super::object::pinned_active(paths)?;
    Ok(state
        .defences(generation)
        .map(|r| r.knock_doors.clone())
        .unwrap_or_default())
}

#[cfg(test)]
#[path = "defences/tests.rs"]
mod tests;
