//! What the events reader reads beside the ring buffer: the `events_suppressed` counter,
//! whose growth it reports, and the kernel's event aggregation table (`PFW_LOG_AGG`), whose
//! quiet keys it flushes so that no aggregated packet goes unreported.
//!
//! Both are optional: a filter loaded from an older kernel object has neither, and the
//! reader then only reads the ring.
use std::{
    io,
    os::fd::{AsFd as _, BorrowedFd},
};

use aya::maps::{HashMap, IterableMap as _, Map, MapData, PerCpuArray, PerCpuHashMap};
use portfw_common::{AGGREGATION_WINDOW_NS, AggKey, AggValue, DefenceMaps, MapNames, counter};

use crate::loader::{
    Paths,
    bpfsys::{map_delete, map_lookup_and_delete_percpu},
};

/// The `events_suppressed` counter, summed over CPUs, and how much of it was reported.
pub struct Suppressed {
    counters: Option<PerCpuArray<MapData, u64>>,
    reported: u64,
}

impl Suppressed {
    /// Opens the counters of the filter pinned at `paths`; what was suppressed before now
    /// counts as reported.
    pub fn open(paths: &Paths) -> Self {
        let counters = MapData::from_pin(paths.map(MapNames::COUNTERS))
            .ok()
            .and_then(|data| PerCpuArray::try_from(Map::PerCpuArray(data)).ok());
        let mut suppressed = Self {
            counters,
            reported: 0,
        };
        suppressed.reported = suppressed.total().unwrap_or(0);
        suppressed
    }

    /// The counter now; `None` when the filter has no such counter.
    fn total(&self) -> Option<u64> {
        let counters = self.counters.as_ref()?;
        counters
            .get(&counter::EVENTS_SUPPRESSED, 0)
            .ok()
            .map(|values| values.iter().sum())
    }

    /// What was suppressed since the last call, now reported.
    pub fn take(&mut self) -> u64 {
        let Some(total) = self.total() else {
            return 0;
        };
        // A counter that went down was reloaded (a fresh program): start over from it.
        let grown = total.saturating_sub(self.reported);
        self.reported = total;
        grown
    }
}

/// The kernel's event aggregation table: per CPU (each CPU aggregates the packets of a key
/// it sees), or one value per key as in the first kernels with it.
enum Table {
    PerCpu(PerCpuHashMap<MapData, AggKey, AggValue>),
    Shared(HashMap<MapData, AggKey, AggValue>),
}

/// The kernel's event aggregation table.
pub struct Aggregation {
    table: Option<Table>,
    /// Possible CPUs: the per-CPU values of a key, as the kernel hands them over.
    cpus: usize,
    /// BPF_MAP_LOOKUP_AND_DELETE_ELEM works on hash maps from Linux 5.14; before it, a
    /// lookup then a delete (which may lose a packet counted between the two).
    atomic: bool,
}

/// A flushed key: what its pending packets were (summed over CPUs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flushed {
    pub key: AggKey,
    pub pending: u32,
}

/// Whether a key with these values (one per CPU) is due: some CPU holds packets in no event
/// yet, in a window older than two windows at `now_ns` (any window, when `all`).
fn due(values: &[AggValue], now_ns: u64, all: bool) -> bool {
    values.iter().any(|v| {
        v.pending > 0 && (all || now_ns.saturating_sub(v.window_ns) > 2 * AGGREGATION_WINDOW_NS)
    })
}

fn pending(values: &[AggValue]) -> u32 {
    values
        .iter()
        .fold(0u32, |sum, v| sum.saturating_add(v.pending))
}

impl Aggregation {
    /// The table of the filter pinned at `paths`, if it has one.
    pub fn open(paths: &Paths) -> Self {
        // The kernel writes one value per possible CPU into a lookup's buffer: without that
        // number, a per-CPU table is left alone rather than read into a buffer too small.
        let cpus = aya::util::nr_cpus().ok();
        let table = MapData::from_pin(paths.map(DefenceMaps::LOG_AGG))
            .ok()
            .and_then(|data| Map::from_map_data(data).ok())
            .and_then(|map| match map {
                Map::PerCpuHashMap(_) | Map::PerCpuLruHashMap(_) if cpus.is_some() => {
                    PerCpuHashMap::try_from(map).ok().map(Table::PerCpu)
                }
                Map::HashMap(_) | Map::LruHashMap(_) => {
                    HashMap::try_from(map).ok().map(Table::Shared)
                }
                _ => None,
            });
        Self {
            table,
            cpus: cpus.unwrap_or(1),
            atomic: true,
        }
    }

    pub fn exists(&self) -> bool {
        self.table.is_some()
    }

    /// Removes the keys holding packets in no event yet whose window is older than two
    /// windows at `now_ns` (CLOCK_MONOTONIC), or every key holding packets when `all`
    /// (the reader is stopping), and returns what they held. A key is removed whole, with
    /// what every CPU holds of it: a CPU still in its window then starts a new one.
    pub fn flush(&mut self, now_ns: u64, all: bool) -> Vec<Flushed> {
        let Some(table) = &self.table else {
            return Vec::new();
        };
        // Collected first: deleting while walking the keys would restart the walk.
        let (due_keys, fd, slots): (Vec<AggKey>, BorrowedFd<'_>, usize) = match table {
            Table::PerCpu(map) => (
                map.iter()
                    .filter_map(Result::ok)
                    .filter(|(_, values)| due(values, now_ns, all))
                    .map(|(key, _)| key)
                    .collect(),
                map.map().fd().as_fd(),
                self.cpus,
            ),
            Table::Shared(map) => (
                map.iter()
                    .filter_map(Result::ok)
                    .filter(|(_, value)| due(std::slice::from_ref(value), now_ns, all))
                    .map(|(key, _)| key)
                    .collect(),
                map.map().fd().as_fd(),
                1,
            ),
        };
        let mut flushed = Vec::new();
        for key in due_keys {
            let taken = if self.atomic {
                match map_lookup_and_delete_percpu::<AggKey, AggValue>(fd, &key, slots.max(1)) {
                    Err(e) if unsupported(&e) => {
                        self.atomic = false;
                        lookup_then_delete(table, fd, &key)
                    }
                    other => other.ok().flatten(),
                }
            } else {
                lookup_then_delete(table, fd, &key)
            };
            // Taken as it was at the delete: the kernel may have emitted it meanwhile.
            if let Some(values) = taken {
                let pending = pending(&values);
                if pending > 0 {
                    flushed.push(Flushed { key, pending });
                }
            }
        }
        flushed
    }
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::ENOTSUP) | Some(524 /* ENOTSUPP */)
    )
}

fn lookup_then_delete(table: &Table, fd: BorrowedFd<'_>, key: &AggKey) -> Option<Vec<AggValue>> {
    let values = match table {
        Table::PerCpu(map) => map.get(key, 0).ok()?.iter().copied().collect(),
        Table::Shared(map) => vec![map.get(key, 0).ok()?],
    };
    // Through the raw call: aya's remove needs the map mutably, for no reason here.
    map_delete(fd, key).ok()?;
    Some(values)
}

/// The generation the kernel reads now, to name the rules of flushed keys (which, unlike
/// events, do not say which generation judged them).
pub fn active_generation(paths: &Paths) -> Option<u8> {
    let data = MapData::from_pin(paths.map(MapNames::ACTIVE)).ok()?;
    let active = aya::maps::Array::<MapData, u32>::try_from(Map::Array(data)).ok()?;
    active.get(&0, 0).ok().and_then(|g| u8::try_from(g).ok())
}

/// The running policy's `log-limit` in events per second (at least 1), or `None` without a
/// cap: the reader holds its flushed events to it too, so that a flood of keys that each go
/// quiet cannot flood the stream through the flush.
pub fn log_rate(paths: &Paths) -> Option<u64> {
    let generation = u32::from(active_generation(paths)?);
    let data = MapData::from_pin(paths.map(MapNames::SETTINGS)).ok()?;
    let settings =
        aya::maps::Array::<MapData, portfw_common::Settings>::try_from(Map::Array(data)).ok()?;
    let interval = settings.get(&generation, 0).ok()?.log_limit.interval_ns;
    (interval != 0).then(|| (1_000_000_000 / interval).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(window_ns: u64, pending: u32) -> AggValue {
        AggValue {
            window_ns,
            pending,
            _pad: 0,
        }
    }

    #[test]
    fn a_key_is_due_when_a_cpu_holds_packets_past_two_windows() {
        let w = AGGREGATION_WINDOW_NS;
        let now = 10 * w;
        // Nothing pending anywhere: never due.
        assert!(!due(&[value(0, 0), value(0, 0)], now, true));
        // Pending in a recent window: due only when stopping.
        assert!(!due(&[value(now - w, 3)], now, false));
        assert!(due(&[value(now - w, 3)], now, true));
        // Pending on one CPU past two windows, while another CPU is busy.
        assert!(due(&[value(now, 0), value(now - 3 * w, 2)], now, false));
        assert!(!due(
            &[value(now - 3 * w, 0), value(now - 2 * w, 2)],
            now,
            false
        ));
        assert_eq!(pending(&[value(0, 2), value(0, 0), value(0, 5)]), 7);
    }
}
