//! The kernel object: the embedded XDP program loaded as [`Loaded`], handles on its maps
//! (its own or pinned ones), and pinning them.
use std::io;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, RingBuf},
    programs::{ProgramError, SchedClassifier, TestRun as _, TestRunOptions, Xdp},
};
use portfw_common::{
    CLOCK_PROGRAM_NAME, Clock, EGRESS_PROGRAM_NAME, FLOWS_DEFAULT_MAX, FlowCacheSlot, FlowKey,
    FlowValue, GENERATIONS, L3_EGRESS_PROGRAM_NAME, L3_PROGRAM_NAME, MapNames, PROGRAM_NAME,
    RULE_HIT_SLOTS, counter, flow_map_entries,
};

use super::{
    attach::Programs,
    bpffs::Paths,
    defences::{Carried, DEFENCE_MAPS},
    error::{LoaderError, io_err, map_err, program_err},
    iface::Link,
    tables::{StageMaps, Tables},
};

/// The kernel program, built by build.rs for the bpf target.
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portfw"));

/// Maps pinned next to the program, in the order they are pinned.
const PINNED_MAPS: [&str; 10] = [
    MapNames::ACTIVE,
    MapNames::SETTINGS,
    MapNames::PORTS,
    MapNames::COUNTERS,
    MapNames::RULE_HITS,
    MapNames::EVENTS,
    MapNames::SOURCES4,
    MapNames::SOURCES6,
    MapNames::FLOWS,
    MapNames::CLOCK,
];

/// A loaded, not yet attached or pinned instance of the program with its tables.
/// `apply` pins one of these; tests drive one through `BPF_PROG_TEST_RUN`.
pub struct Loaded {
    ebpf: Ebpf,
    pub tables: Tables,
}

impl Loaded {
    /// Loads both programs with a flow table of the default size.
    pub fn load() -> Result<Self, LoaderError> {
        Self::load_sized(FLOWS_DEFAULT_MAX)
    }

    /// Loads both programs with a flow table that holds at least `flows_max` flows.
    pub fn load_sized(flows_max: u32) -> Result<Self, LoaderError> {
        if PROGRAM.is_empty() {
            return Err(LoaderError::NoProgram);
        }
        let cpus = possible_cpus()?;
        let hit_slots = cpus
            .checked_mul(RULE_HIT_SLOTS)
            .ok_or_else(|| LoaderError::Internal(format!("{cpus} CPUs is more than supported")))?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(MapNames::RULE_HITS, hit_slots)
            .map_max_entries(MapNames::FLOWS, flow_map_entries(flows_max, cpus))
            .load(PROGRAM)
            .map_err(|e| LoaderError::Load(Box::new(e)))?;
        // Both pairs: which an interface needs is known only when it is attached, and a
        // program loaded later from another object would not share these maps.
        for link in [Link::Ethernet, Link::Ip] {
            let (xdp_name, egress_name) = program_names(link);
            let xdp: &mut Xdp = as_program(ebpf.program_mut(xdp_name), xdp_name)?;
            xdp.load()
                .map_err(program_err(format!("verification and load of {xdp_name}")))?;
            let egress: &mut SchedClassifier =
                as_program(ebpf.program_mut(egress_name), egress_name)?;
            egress.load().map_err(program_err(format!(
                "verification and load of {egress_name}"
            )))?;
        }
        let clock: &mut Xdp = as_program(ebpf.program_mut(CLOCK_PROGRAM_NAME), CLOCK_PROGRAM_NAME)?;
        clock.load().map_err(program_err(format!(
            "verification and load of {CLOCK_PROGRAM_NAME}"
        )))?;
        let tables = Tables::new(
            map_data(&ebpf, MapNames::ACTIVE)?,
            map_data(&ebpf, MapNames::SETTINGS)?,
            map_data(&ebpf, MapNames::PORTS)?,
            map_data(&ebpf, MapNames::RULE_HITS)?,
            reopen(map_data(&ebpf, MapNames::SOURCES4)?, MapNames::SOURCES4)?,
            reopen(map_data(&ebpf, MapNames::SOURCES6)?, MapNames::SOURCES6)?,
            StageMaps::open(|name| optional_map(&ebpf, name))?,
        )?;
        Ok(Self { ebpf, tables })
    }

    /// Defence map `name` of this object (a handle of its own), `None` when the object has
    /// none (one built before the active defences).
    pub fn defence_map(&self, name: &'static str) -> Result<Option<MapData>, LoaderError> {
        optional_map(&self.ebpf, name)
    }

    /// Puts the defence state a fresh apply carries over into this object's (empty) maps.
    pub(super) fn restore_defences(&self, carried: &Carried) -> Result<(), LoaderError> {
        carried.restore(|name| self.defence_map(name))
    }

    /// The production program pair for devices of `link`, to attach or pin them.
    pub(super) fn programs_mut(&mut self, link: Link) -> Result<Programs<'_>, LoaderError> {
        let (xdp_name, egress_name) = program_names(link);
        let (mut xdp, mut egress) = (None, None);
        for (name, program) in self.ebpf.programs_mut() {
            if name == xdp_name {
                xdp = Some(program);
            } else if name == egress_name {
                egress = Some(program);
            }
        }
        Ok(Programs {
            xdp: as_program(xdp, xdp_name)?,
            egress: as_program(egress, egress_name)?,
        })
    }

    /// Runs the egress program once on `frame` through `BPF_PROG_TEST_RUN` and returns its
    /// TC action (it records the flow the frame opens).
    pub fn test_run_egress(&self, frame: &[u8]) -> Result<i32, LoaderError> {
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat: 1,
            ..Default::default()
        };
        let result = self
            .classifier(EGRESS_PROGRAM_NAME)?
            .test_run(opts)
            .map_err(program_err("test run of the egress program"))?;
        Ok(result.return_value as i32)
    }

    /// The flow table, to read or seed it (tests, and carrying flows over to a resized table).
    /// Whatever the caller writes, the flow cache forgets what it remembered first.
    pub fn flows(&mut self) -> Result<HashMap<&mut MapData, FlowKey, FlowValue>, LoaderError> {
        self.flows_changed()?;
        let map = self
            .ebpf
            .map_mut(MapNames::FLOWS)
            .ok_or(LoaderError::MissingMap(MapNames::FLOWS))?;
        HashMap::try_from(map).map_err(map_err(MapNames::FLOWS))
    }

    /// Every entry of the flow table, live or expired, read without telling the flow cache
    /// anything changed.
    pub fn flow_entries(&self) -> Result<Vec<(FlowKey, FlowValue)>, LoaderError> {
        let map = self
            .ebpf
            .map(MapNames::FLOWS)
            .ok_or(LoaderError::MissingMap(MapNames::FLOWS))?;
        HashMap::<_, FlowKey, FlowValue>::try_from(map)
            .map_err(map_err(MapNames::FLOWS))?
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(MapNames::FLOWS))
    }

    /// The flow table through a handle of its own whose writes are *not* announced to the
    /// flow cache, unlike [`Loaded::flows`]: for tests that show what the cache remembers.
    #[doc(hidden)]
    pub fn flows_unannounced(&self) -> Result<HashMap<MapData, FlowKey, FlowValue>, LoaderError> {
        let data = reopen(map_data(&self.ebpf, MapNames::FLOWS)?, MapNames::FLOWS)?;
        HashMap::try_from(Map::LruHashMap(data)).map_err(map_err(MapNames::FLOWS))
    }

    /// Every CPU's flow-cache slots, slot by slot.
    pub fn flow_cache(&self) -> Result<Vec<Vec<FlowCacheSlot>>, LoaderError> {
        let data = reopen(
            map_data(&self.ebpf, MapNames::FLOW_CACHE)?,
            MapNames::FLOW_CACHE,
        )?;
        let cache = PerCpuArray::<MapData, FlowCacheSlot>::try_from(Map::PerCpuArray(data))
            .map_err(map_err(MapNames::FLOW_CACHE))?;
        (0..cache.len())
            .map(|i| {
                cache
                    .get(&i, 0)
                    .map(|per_cpu| per_cpu.iter().copied().collect())
                    .map_err(map_err(MapNames::FLOW_CACHE))
            })
            .collect()
    }

    /// Puts `flows` into this object's (empty) flow table.
    pub(super) fn restore_flows(
        &mut self,
        flows: &[(FlowKey, FlowValue)],
    ) -> Result<(), LoaderError> {
        let mut table = self.flows()?;
        for (key, value) in flows {
            table
                .insert(key, value, 0)
                .map_err(map_err(MapNames::FLOWS))?;
        }
        Ok(())
    }

    /// The XDP program `name` of the object, for BPF_PROG_TEST_RUN with options of the
    /// caller's choosing (the benchmarks time runs and inject live frames with it).
    pub fn xdp(&self, name: &str) -> Result<&Xdp, LoaderError> {
        as_program(self.ebpf.program(name), name)
    }

    /// The XDP program `name` of the object, to load or attach it (the benchmarks keep every
    /// program they time attached to an idle veth, as in production).
    pub fn xdp_mut(&mut self, name: &str) -> Result<&mut Xdp, LoaderError> {
        as_program(self.ebpf.program_mut(name), name)
    }

    /// Verifies and loads one more XDP program of the embedded object: the benchmarks'
    /// floors, parse-only twin and injector (`portfw-ebpf/src/bench.rs`). `apply` never calls
    /// it, so in production only `portfw` is ever loaded.
    pub fn load_extra(&mut self, name: &str) -> Result<&Xdp, LoaderError> {
        self.xdp_mut(name)?
            .load()
            .map_err(program_err(format!("verification and load of {name}")))?;
        self.xdp(name)
    }

    /// The TC program `name` of the object (the egress program, or a benchmark's floor).
    pub fn classifier(&self, name: &str) -> Result<&SchedClassifier, LoaderError> {
        as_program(self.ebpf.program(name), name)
    }

    /// Verifies and loads one more TC program of the embedded object (a benchmark's floor);
    /// `apply` never calls it.
    pub fn load_extra_classifier(&mut self, name: &str) -> Result<&SchedClassifier, LoaderError> {
        let program: &mut SchedClassifier = as_program(self.ebpf.program_mut(name), name)?;
        program
            .load()
            .map_err(program_err(format!("verification and load of {name}")))?;
        self.classifier(name)
    }

    /// Map `name`'s size in entries and the bytes the kernel charges for it (`memlock` in
    /// its fdinfo).
    pub fn map_memory(&self, name: &'static str) -> Result<(u32, u64), LoaderError> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let data = map_data(&self.ebpf, name)?;
        let entries = data.info().map_err(map_err(name))?.max_entries();
        let path = format!("/proc/self/fdinfo/{}", data.fd().as_fd().as_raw_fd());
        let info = std::fs::read_to_string(&path).map_err(io_err(format!("reading {path}")))?;
        let bytes = info
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| LoaderError::Internal(format!("no memlock line in {path}")))?;
        Ok((entries, bytes))
    }

    /// Calibrates the flow table's clock ([`Clock`]): times two jiffy edges about 40 ms
    /// apart against CLOCK_MONOTONIC, which gives the kernel's HZ and the offset that makes
    /// `jiffies * ns_per_jiffy + offset` read as CLOCK_MONOTONIC. Until this runs the
    /// programs read the coarse ktime helper instead.
    pub fn calibrate_clock(&mut self) -> Result<(), LoaderError> {
        const SPAN_NS: u64 = 40_000_000;
        const GIVE_UP_NS: u64 = 2_000_000_000;
        let frame = [0u8; 64];
        let program = self.xdp(CLOCK_PROGRAM_NAME)?;
        let data = map_data(&self.ebpf, MapNames::CLOCK)?;
        let clock = Array::<MapData, Clock>::try_from(Map::Array(reopen(data, MapNames::CLOCK)?))
            .map_err(map_err(MapNames::CLOCK))?;
        let jiffies = || -> Result<u64, LoaderError> {
            program
                .test_run(TestRunOptions {
                    data_in: Some(&frame),
                    repeat: 1,
                    ..Default::default()
                })
                .map_err(program_err("test run of the clock program"))?;
            Ok(clock.get(&0, 0).map_err(map_err(MapNames::CLOCK))?.sample)
        };
        // The moment jiffies next changes, by CLOCK_MONOTONIC.
        let edge = |after: u64| -> Result<(u64, u64), LoaderError> {
            let started = monotonic_ns();
            let mut last = jiffies()?;
            loop {
                let j = jiffies()?;
                let now = monotonic_ns();
                if j != last && now >= after {
                    return Ok((j, now));
                }
                last = j;
                if now - started > GIVE_UP_NS {
                    return Err(LoaderError::Internal(
                        "jiffies did not advance in 2 s while calibrating the flow clock".into(),
                    ));
                }
            }
        };
        let (j1, t1) = edge(0)?;
        let (j2, t2) = edge(t1 + SPAN_NS)?;
        let hz = (j2 - j1) as f64 * 1e9 / (t2 - t1) as f64;
        // The kernel's HZ is one of a few values; snap to the nearest, so the clock does not
        // drift by the measurement's error.
        let hz = [100.0, 250.0, 300.0, 1000.0]
            .into_iter()
            .find(|known: &f64| (hz - known).abs() < known * 0.1)
            .unwrap_or(hz.round());
        let ns_per_jiffy = (1e9 / hz).round() as u64;
        let mut clock =
            Array::<MapData, Clock>::try_from(Map::Array(reopen(data, MapNames::CLOCK)?))
                .map_err(map_err(MapNames::CLOCK))?;
        let old = clock.get(&0, 0).map_err(map_err(MapNames::CLOCK))?;
        let calibrated = Clock {
            ns_per_jiffy,
            offset_ns: t2.wrapping_sub(j2.wrapping_mul(ns_per_jiffy)),
            sample: 0,
            // A new clock: what the flow cache remembered was timed by the old one.
            epoch: old.epoch.wrapping_add(1),
        };
        clock
            .set(0, calibrated, 0)
            .map_err(map_err(MapNames::CLOCK))
    }

    /// Tells the programs' flow cache that the flow table changed under it: nothing the
    /// cache remembered is trusted after this (see [`Clock::epoch`]).
    fn flows_changed(&self) -> Result<(), LoaderError> {
        let data = map_data(&self.ebpf, MapNames::CLOCK)?;
        let mut clock =
            Array::<MapData, Clock>::try_from(Map::Array(reopen(data, MapNames::CLOCK)?))
                .map_err(map_err(MapNames::CLOCK))?;
        let mut value = clock.get(&0, 0).map_err(map_err(MapNames::CLOCK))?;
        value.epoch = value.epoch.wrapping_add(1);
        clock.set(0, value, 0).map_err(map_err(MapNames::CLOCK))
    }

    /// The kernel's id of the `portfw` program.
    pub(super) fn program_id(&self) -> Result<u32, LoaderError> {
        self.xdp(PROGRAM_NAME)?
            .info()
            .map(|i| i.id())
            .map_err(program_err("info"))
    }

    /// Runs the program once on `frame` through `BPF_PROG_TEST_RUN` and returns the XDP action.
    pub fn test_run(&self, frame: &[u8]) -> Result<u32, LoaderError> {
        self.test_run_repeat(frame, 1).map(|(action, _)| action)
    }

    /// Runs the program `repeat` times on `frame`; returns the action and the mean ns per run.
    pub fn test_run_repeat(&self, frame: &[u8], repeat: u32) -> Result<(u32, f64), LoaderError> {
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        };
        let result = self
            .xdp(PROGRAM_NAME)?
            .test_run(opts)
            .map_err(program_err("test run"))?;
        Ok((result.return_value, result.duration.as_nanos() as f64))
    }

    /// Verdict counters summed over CPUs.
    pub fn counters(&self) -> Result<Vec<u64>, LoaderError> {
        let data = map_data(&self.ebpf, MapNames::COUNTERS)?;
        sum_counters(reopen(data, MapNames::COUNTERS)?)
    }

    /// The event ring buffer (tests read it directly).
    pub fn events(&mut self) -> Result<RingBuf<&mut MapData>, LoaderError> {
        let map = self
            .ebpf
            .map_mut(MapNames::EVENTS)
            .ok_or(LoaderError::MissingMap(MapNames::EVENTS))?;
        RingBuf::try_from(map).map_err(map_err(MapNames::EVENTS))
    }

    /// Pins the programs where `paths` says, and each map as `NAME` beside them.
    pub(super) fn pin_all(&mut self, paths: &Paths) -> Result<(), LoaderError> {
        let what = format!("pinning programs in {}", paths.pins.display());
        for link in [Link::Ethernet, Link::Ip] {
            let programs = self.programs_mut(link)?;
            programs
                .xdp
                .pin(paths.prog_for(link))
                .map_err(io::Error::other)
                .map_err(io_err(what.clone()))?;
            programs
                .egress
                .pin(paths.egress_prog_for(link))
                .map_err(io::Error::other)
                .map_err(io_err(what.clone()))?;
        }
        let dir = &paths.pins;
        for name in PINNED_MAPS {
            map_data(&self.ebpf, name)?
                .pin(dir.join(name))
                .map_err(io::Error::other)
                .map_err(io_err(format!("pinning map {name}")))?;
        }
        // The defences' maps, those the object has, beside the flow table.
        for name in DEFENCE_MAPS {
            if self.ebpf.map(name).is_some() {
                map_data(&self.ebpf, name)?
                    .pin(dir.join(name))
                    .map_err(io::Error::other)
                    .map_err(io_err(format!("pinning map {name}")))?;
            }
        }
        Ok(())
    }
}

/// Program `name`, as `Ebpf::program` or `Ebpf::program_mut` found it, as its program type
/// (XDP or TC): one lookup for the shared and the exclusive borrow alike.
fn as_program<P, X>(program: Option<P>, name: &str) -> Result<X, LoaderError>
where
    X: TryFrom<P, Error = ProgramError>,
{
    program
        .ok_or_else(|| LoaderError::Internal(format!("no program {name} in object")))?
        .try_into()
        .map_err(program_err(format!("lookup of {name}")))
}

/// The XDP and TC egress programs for devices of `link`.
fn program_names(link: Link) -> (&'static str, &'static str) {
    match link {
        Link::Ethernet => (PROGRAM_NAME, EGRESS_PROGRAM_NAME),
        Link::Ip => (L3_PROGRAM_NAME, L3_EGRESS_PROGRAM_NAME),
    }
}

/// CLOCK_MONOTONIC in nanoseconds, which the flow table's clock (and every timestamp of the
/// defence maps) follows.
pub fn monotonic_ns() -> u64 {
    // SAFETY: an all-zero timespec is valid and clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// The kernel's possible CPUs, which per-CPU structures are sized by.
fn possible_cpus() -> Result<u32, LoaderError> {
    let cpus = aya::util::nr_cpus()
        .map_err(|(what, source)| io_err(format!("counting CPUs ({what})"))(source))?;
    u32::try_from(cpus).map_err(|_| LoaderError::Internal(format!("{cpus} CPUs")))
}

/// Entries of the kernel flow map that holds `flows_max` flows on this machine.
pub(super) fn flow_map_size(flows_max: u32) -> Result<u32, LoaderError> {
    Ok(flow_map_entries(flows_max, possible_cpus()?))
}

fn map_data<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a MapData, LoaderError> {
    match ebpf.map(name) {
        Some(
            Map::Array(data)
            | Map::PerCpuArray(data)
            | Map::RingBuf(data)
            | Map::ArrayOfMaps(data)
            | Map::HashMap(data)
            | Map::LpmTrie(data)
            | Map::PerCpuHashMap(data)
            | Map::PerCpuLruHashMap(data)
            | Map::LruHashMap(data),
        ) => Ok(data),
        _ => Err(LoaderError::MissingMap(name)),
    }
}

/// A handle of its own on map `name` of `ebpf`; `None` when the object has no such map.
fn optional_map(ebpf: &Ebpf, name: &'static str) -> Result<Option<MapData>, LoaderError> {
    if ebpf.map(name).is_none() {
        return Ok(None);
    }
    reopen(map_data(ebpf, name)?, name).map(Some)
}

/// Whether the embedded kernel object defines map `name`: its name then sits in the
/// object's string table. Cheaper than parsing the object, for `apply` to tell whether a
/// running filter lacks maps that this portfw's program has.
pub(super) fn object_has_map(name: &str) -> bool {
    !name.is_empty()
        && PROGRAM
            .windows(name.len() + 1)
            .any(|w| w[..name.len()] == *name.as_bytes() && w[name.len()] == 0)
}

/// A second, owned handle on a map that `Ebpf` owns: aya's typed maps want ownership.
fn reopen(data: &MapData, name: &'static str) -> Result<MapData, LoaderError> {
    let info = data.info().map_err(map_err(name))?;
    MapData::from_id(info.id()).map_err(map_err(name))
}

/// Map `name` of the filter pinned at `paths`, `None` when it is not pinned there (a filter
/// whose kernel program lacks it).
pub(super) fn pinned_optional(
    paths: &Paths,
    name: &'static str,
) -> Result<Option<MapData>, LoaderError> {
    let path = paths.map(name);
    if !path.exists() {
        return Ok(None);
    }
    MapData::from_pin(path).map(Some).map_err(map_err(name))
}

/// Map `name` of the filter pinned at `paths`.
fn pinned_map(paths: &Paths, name: &'static str) -> Result<MapData, LoaderError> {
    MapData::from_pin(paths.map(name)).map_err(map_err(name))
}

fn sum_counters(data: MapData) -> Result<Vec<u64>, LoaderError> {
    let array = PerCpuArray::<MapData, u64>::try_from(Map::PerCpuArray(data))
        .map_err(map_err(MapNames::COUNTERS))?;
    (0..counter::COUNT)
        .map(|i| {
            array
                .get(&i, 0)
                .map(|v| v.iter().sum())
                .map_err(map_err(MapNames::COUNTERS))
        })
        .collect()
}

/// Opens the tables of the filter pinned at `paths`, memory-mapping them to write a
/// policy or to look packets up.
pub fn open_tables(paths: &Paths) -> Result<Tables, LoaderError> {
    Tables::new(
        &pinned_map(paths, MapNames::ACTIVE)?,
        &pinned_map(paths, MapNames::SETTINGS)?,
        &pinned_map(paths, MapNames::PORTS)?,
        &pinned_map(paths, MapNames::RULE_HITS)?,
        pinned_map(paths, MapNames::SOURCES4)?,
        pinned_map(paths, MapNames::SOURCES6)?,
        StageMaps::open(|name| pinned_optional(paths, name))?,
    )
}

/// The generation the filter pinned at `paths` reads now: one lookup in its PFW_ACTIVE,
/// without mapping any table.
pub(super) fn pinned_active(paths: &Paths) -> Result<u32, LoaderError> {
    let active = Array::<MapData, u32>::try_from(Map::Array(pinned_map(paths, MapNames::ACTIVE)?))
        .map_err(map_err(MapNames::ACTIVE))?;
    let generation = active.get(&0, 0).map_err(map_err(MapNames::ACTIVE))?;
    Ok(generation % GENERATIONS)
}

/// The verdict counters of the filter pinned at `paths`, summed over CPUs.
pub(super) fn pinned_counters(paths: &Paths) -> Result<Vec<u64>, LoaderError> {
    sum_counters(pinned_map(paths, MapNames::COUNTERS)?)
}

/// The event ring buffer of the filter pinned at `paths`.
pub(super) fn pinned_events(paths: &Paths) -> Result<RingBuf<MapData>, LoaderError> {
    RingBuf::try_from(Map::RingBuf(pinned_map(paths, MapNames::EVENTS)?))
        .map_err(map_err(MapNames::EVENTS))
}

/// The flow table of the filter pinned at `paths`.
pub(super) fn pinned_flow_table(
    paths: &Paths,
) -> Result<HashMap<MapData, FlowKey, FlowValue>, LoaderError> {
    HashMap::try_from(Map::LruHashMap(pinned_map(paths, MapNames::FLOWS)?))
        .map_err(map_err(MapNames::FLOWS))
}

/// Every entry of the pinned flow table, live or expired.
pub(super) fn pinned_flows(paths: &Paths) -> Result<Vec<(FlowKey, FlowValue)>, LoaderError> {
    pinned_flow_table(paths)?
        .iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(map_err(MapNames::FLOWS))
}

/// Entries of the pinned flow map (its size, not what it holds).
pub(super) fn pinned_flow_map_size(paths: &Paths) -> Result<u32, LoaderError> {
    let map = pinned_map(paths, MapNames::FLOWS)?;
    let info = map.info().map_err(map_err(MapNames::FLOWS))?;
    Ok(info.max_entries())
}

/// `generation`'s settings in the filter pinned at `paths`: one lookup, no mapping.
pub(super) fn pinned_settings(
    paths: &Paths,
    generation: u32,
) -> Result<portfw_common::Settings, LoaderError> {
    let settings = Array::<MapData, portfw_common::Settings>::try_from(Map::Array(pinned_map(
        paths,
        MapNames::SETTINGS,
    )?))
    .map_err(map_err(MapNames::SETTINGS))?;
    settings
        .get(&generation, 0)
        .map_err(map_err(MapNames::SETTINGS))
}

/// The machine's share of the flow map that is LRU slack, so `map_entries - slack` is the
/// configured `flows: max:`.
pub(super) fn flow_map_slack() -> Result<u32, LoaderError> {
    Ok(flow_map_entries(0, possible_cpus()?))
}

#[cfg(test)]
mod tests {
    use super::{PROGRAM, object_has_map};

    #[test]
    fn the_object_is_searched_for_whole_map_names() {
        // Built with AYA_BUILD_SKIP, there is no object to search.
        if PROGRAM.is_empty() {
            return;
        }
        assert!(object_has_map(portfw_common::MapNames::FLOWS));
        assert!(
            !object_has_map("PFW_FLOW"),
            "a prefix of a name is not a name"
        );
        assert!(!object_has_map("PFW_NO_SUCH_MAP"));
        assert!(!object_has_map(""));
    }
}
