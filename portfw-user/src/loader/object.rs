//! The kernel object: the embedded XDP program loaded as [`Loaded`], handles on its maps
//! (its own or pinned ones), and pinning them.
use std::{io, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, Map, MapData, PerCpuArray, RingBuf},
    programs::{ProgramError, TestRun as _, TestRunOptions, Xdp},
};
use portfw_common::{GENERATIONS, MapNames, PROGRAM_NAME, RULE_HIT_SLOTS, counter};

use super::{
    bpffs::Paths,
    error::{LoaderError, io_err, map_err, program_err},
    tables::Tables,
};

/// The kernel program, built by build.rs for the bpf target.
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portfw"));

/// Maps pinned next to the program, in the order they are pinned.
const PINNED_MAPS: [&str; 8] = [
    MapNames::ACTIVE,
    MapNames::SETTINGS,
    MapNames::PORTS,
    MapNames::COUNTERS,
    MapNames::RULE_HITS,
    MapNames::EVENTS,
    MapNames::SOURCES4,
    MapNames::SOURCES6,
];

/// A loaded, not yet attached or pinned instance of the program with its tables.
/// `apply` pins one of these; tests drive one through `BPF_PROG_TEST_RUN`.
pub struct Loaded {
    ebpf: Ebpf,
    pub tables: Tables,
}

impl Loaded {
    pub fn load() -> Result<Self, LoaderError> {
        if PROGRAM.is_empty() {
            return Err(LoaderError::NoProgram);
        }
        let cpus = aya::util::nr_cpus()
            .map_err(|(what, source)| io_err(format!("counting CPUs ({what})"))(source))?;
        let hit_slots = u32::try_from(cpus)
            .ok()
            .and_then(|cpus| cpus.checked_mul(RULE_HIT_SLOTS))
            .ok_or_else(|| LoaderError::Internal(format!("{cpus} CPUs is more than supported")))?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(MapNames::RULE_HITS, hit_slots)
            .load(PROGRAM)
            .map_err(|e| LoaderError::Load(Box::new(e)))?;
        let program: &mut Xdp = as_xdp(ebpf.program_mut(PROGRAM_NAME), PROGRAM_NAME)?;
        program
            .load()
            .map_err(program_err("verification and load"))?;
        let tables = Tables::new(
            map_data(&ebpf, MapNames::ACTIVE)?,
            map_data(&ebpf, MapNames::SETTINGS)?,
            map_data(&ebpf, MapNames::PORTS)?,
            map_data(&ebpf, MapNames::RULE_HITS)?,
            reopen(map_data(&ebpf, MapNames::SOURCES4)?, MapNames::SOURCES4)?,
            reopen(map_data(&ebpf, MapNames::SOURCES6)?, MapNames::SOURCES6)?,
        )?;
        Ok(Self { ebpf, tables })
    }

    /// The XDP program `name` of the object, for BPF_PROG_TEST_RUN with options of the
    /// caller's choosing (the benchmarks time runs and inject live frames with it).
    pub fn xdp(&self, name: &str) -> Result<&Xdp, LoaderError> {
        as_xdp(self.ebpf.program(name), name)
    }

    /// The XDP program `name` of the object, to load or attach it (the benchmarks keep every
    /// program they time attached to an idle veth, as in production).
    pub fn xdp_mut(&mut self, name: &str) -> Result<&mut Xdp, LoaderError> {
        as_xdp(self.ebpf.program_mut(name), name)
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

    /// Pins the program as `dir/prog` and each map as `dir/NAME`.
    pub(super) fn pin_all(&mut self, dir: &Path) -> Result<(), LoaderError> {
        let what = format!("pinning program in {}", dir.display());
        self.xdp_mut(PROGRAM_NAME)?
            .pin(dir.join("prog"))
            .map_err(io::Error::other)
            .map_err(io_err(what))?;
        for name in PINNED_MAPS {
            map_data(&self.ebpf, name)?
                .pin(dir.join(name))
                .map_err(io::Error::other)
                .map_err(io_err(format!("pinning map {name}")))?;
        }
        Ok(())
    }
}

/// Program `name`, as `Ebpf::program` or `Ebpf::program_mut` found it, as an XDP program:
/// one lookup for the shared and the exclusive borrow alike.
fn as_xdp<P, X>(program: Option<P>, name: &str) -> Result<X, LoaderError>
where
    X: TryFrom<P, Error = ProgramError>,
{
    program
        .ok_or_else(|| LoaderError::Internal(format!("no program {name} in object")))?
        .try_into()
        .map_err(program_err(format!("lookup of {name}")))
}

fn map_data<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a MapData, LoaderError> {
    match ebpf.map(name) {
        Some(
            Map::Array(data) | Map::PerCpuArray(data) | Map::RingBuf(data) | Map::ArrayOfMaps(data),
        ) => Ok(data),
        _ => Err(LoaderError::MissingMap(name)),
    }
}

/// A second, owned handle on a map that `Ebpf` owns: aya's typed maps want ownership.
fn reopen(data: &MapData, name: &'static str) -> Result<MapData, LoaderError> {
    let info = data.info().map_err(map_err(name))?;
    MapData::from_id(info.id()).map_err(map_err(name))
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
