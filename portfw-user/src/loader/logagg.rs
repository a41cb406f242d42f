//! The event aggregation table (`PFW_LOG_AGG`) as the events reader uses it: its keys with
//! their per-CPU values merged, and taking quiet keys out without losing a packet.
use std::os::fd::AsFd as _;

use aya::maps::{Map, MapData};
use portfw_common::{AGGREGATION_WINDOW_NS, AggKey, AggValue, DefenceMaps};

use super::{
    bpffs::Paths,
    bpfsys,
    error::{LoaderError, map_err},
    object::pinned_optional,
};

/// The event aggregation map (`PFW_LOG_AGG`, an LRU per-CPU hash: each CPU aggregates the
/// packets of a key it sees), for the events reader.
pub struct LogAggregation {
    map: Map,
    cpus: usize,
}

/// For the events reader: the event aggregation of the filter pinned at `paths` (the
/// `Paths` that [`super::open_events`] returns); `None` when its kernel program has none.
pub fn log_agg_map(paths: &Paths) -> Result<Option<LogAggregation>, LoaderError> {
    let name = DefenceMaps::LOG_AGG;
    let Some(data) = pinned_optional(paths, name)? else {
        return Ok(None);
    };
    let map = Map::from_map_data(data).map_err(map_err(name))?;
    let cpus = aya::util::nr_cpus().map_err(|(what, source)| {
        super::error::io_err(format!("counting CPUs ({what})"))(source)
    })?;
    match map {
        Map::PerCpuHashMap(_) | Map::PerCpuLruHashMap(_) => Ok(Some(LogAggregation { map, cpus })),
        _ => Err(LoaderError::Internal(format!(
            "{name} is not a per-CPU hash map"
        ))),
    }
}

/// One key's per-CPU values as one: the packets pending on every CPU, and the latest
/// window any CPU started.
fn merged(values: &[AggValue]) -> AggValue {
    AggValue {
        window_ns: values.iter().map(|v| v.window_ns).max().unwrap_or(0),
        pending: values.iter().map(|v| v.pending).sum(),
        _pad: 0,
    }
}

impl LogAggregation {
    /// Every key with its per-CPU values merged ([`AggValue::pending`] summed over CPUs,
    /// the latest window); entries the kernel deletes meanwhile are left out.
    pub fn entries(&self) -> Result<Vec<(AggKey, AggValue)>, LoaderError> {
        let view = aya::maps::PerCpuHashMap::<&MapData, AggKey, AggValue>::try_from(&self.map)
            .map_err(map_err(DefenceMaps::LOG_AGG))?;
        Ok(view
            .iter()
            .filter_map(Result::ok)
            .map(|(key, values)| (key, merged(&values)))
            .collect())
    }

    /// Takes `key` out with `BPF_MAP_LOOKUP_AND_DELETE_ELEM` (Linux 5.14+), so that no
    /// packet the kernel counts into it is lost, and returns its values merged over CPUs;
    /// `None` if the key is gone.
    pub fn take(&self, key: &AggKey) -> Result<Option<AggValue>, LoaderError> {
        let (Map::PerCpuHashMap(data) | Map::PerCpuLruHashMap(data)) = &self.map else {
            return Ok(None);
        };
        let values = bpfsys::map_lookup_and_delete_percpu::<AggKey, AggValue>(
            data.fd().as_fd(),
            key,
            self.cpus,
        )
        .map_err(super::error::io_err(format!(
            "taking an entry out of map {}",
            DefenceMaps::LOG_AGG
        )))?;
        Ok(values.map(|v| merged(&v)))
    }

    /// The quiet keys at `now_ns` (CLOCK_MONOTONIC, [`monotonic_ns`]): those with pending
    /// packets whose every CPU's window started more than two windows ago. Each is taken
    /// out of the map and returned with its final, merged value, to print as a flushed event
    /// whose count is `pending`.
    pub fn flush_quiet(&self, now_ns: u64) -> Result<Vec<(AggKey, AggValue)>, LoaderError> {
        let mut flushed = Vec::new();
        for (key, value) in self.entries()? {
            let quiet = now_ns.saturating_sub(value.window_ns) > 2 * AGGREGATION_WINDOW_NS;
            if value.pending == 0 || !quiet {
                continue;
            }
            if let Some(value) = self.take(&key)?
                && value.pending > 0
            {
                flushed.push((key, value));
            }
        }
        Ok(flushed)
    }
}
