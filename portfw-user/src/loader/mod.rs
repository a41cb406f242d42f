//! The loader: owns the kernel objects. Loads the XDP program, pins it per network namespace,
//! attaches it to interfaces, writes compiled policies into its tables, and detaches it.
mod bpffs;
mod state;
mod tables;

use std::{
    ffi::CString,
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        ProgramError, TestRun as _, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use aya_obj::programs::XdpAttachType;
pub use bpffs::{BPFFS, PIN_ROOT, Paths, STATE_ROOT, ensure_mounted, netns_inode};
use portfw_common::{ABI_VERSION, MapNames, PROGRAM_NAME, RULE_HIT_SLOTS, counter};
pub use state::{Attachment, PolicyRecord, RuleRecord, State};
pub use tables::Tables;

use crate::compile::CompiledPolicy;

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

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("this portfw binary was built without its kernel program (AYA_BUILD_SKIP); rebuild it")]
    NoProgram,
    #[error("loading the XDP program into the kernel failed")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("kernel program {what} failed")]
    Program {
        what: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("map {0} is missing from the kernel object")]
    MissingMap(&'static str),
    #[error("interface `{0}` does not exist in this network namespace")]
    UnknownInterface(String),
    #[error("cannot attach to `{iface}` in {mode} mode: {reason}")]
    Attach {
        iface: String,
        mode: &'static str,
        reason: String,
        #[source]
        source: Option<Box<ProgramError>>,
    },
    #[error(
        "/sys/fs/bpf is not a bpf filesystem in this mount namespace (as under `ip netns exec`, \
         which remounts /sys). Pins made here would vanish with this command and the filter \
         with them. Run portfw with `nsenter --net=/run/netns/NAME portfw ...` instead, which \
         keeps the host's /sys/fs/bpf"
    )]
    BpffsPrivate,
    #[error("no portfw filter is loaded in this network namespace (nothing under {0})")]
    NotLoaded(PathBuf),
    #[error("portfw is not attached to `{iface}` (attached: {attached}); nothing was changed")]
    NotAttached { iface: String, attached: String },
    #[error("state file {path} is unreadable: {message}")]
    State { path: PathBuf, message: String },
    #[error(
        "policy has {rules} rules; at most {} are supported",
        portfw_common::MAX_RULES
    )]
    TooManyRules { rules: usize },
    #[error("internal error: {0}")]
    Internal(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> LoaderError {
    let what = what.into();
    move |source| LoaderError::Io { what, source }
}

/// How to attach: native (driver) XDP, generic (skb) XDP, or native with generic fallback.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    #[default]
    Auto,
    Native,
    Generic,
}

fn ifindex(iface: &str) -> Result<u32, LoaderError> {
    let c = CString::new(iface).map_err(|_| LoaderError::UnknownInterface(iface.to_string()))?;
    // SAFETY: a valid C string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        Err(LoaderError::UnknownInterface(iface.to_string()))
    } else {
        Ok(index)
    }
}

/// The name of interface `index` in this namespace, if it still exists.
pub fn ifname(index: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: `buf` has IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr().cast()) };
    if p.is_null() {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

fn map_data<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a MapData, LoaderError> {
    match ebpf.map(name) {
        Some(
            Map::Array(data) | Map::PerCpuArray(data) | Map::RingBuf(data) | Map::ArrayOfMaps(data),
        ) => Ok(data),
        _ => Err(LoaderError::MissingMap(name)),
    }
}

fn per_cpu_array(map: Map, name: &'static str) -> Result<PerCpuArray<MapData, u64>, LoaderError> {
    PerCpuArray::try_from(map).map_err(|source| LoaderError::Map {
        map: name,
        source: Box::new(source),
    })
}

fn pinned_map(paths: &Paths, name: &'static str) -> Result<MapData, LoaderError> {
    MapData::from_pin(paths.map(name)).map_err(|source| LoaderError::Map {
        map: name,
        source: Box::new(source),
    })
}

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
        let cpus = aya::util::nr_cpus().map_err(|(what, source)| LoaderError::Io {
            what: format!("counting CPUs ({what})"),
            source,
        })?;
        let hit_slots = u32::try_from(cpus)
            .ok()
            .and_then(|cpus| cpus.checked_mul(RULE_HIT_SLOTS))
            .ok_or_else(|| LoaderError::Internal(format!("{cpus} CPUs is more than supported")))?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(MapNames::RULE_HITS, hit_slots)
            .load(PROGRAM)
            .map_err(|e| LoaderError::Load(Box::new(e)))?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| LoaderError::Internal(format!("no program {PROGRAM_NAME} in object")))?
            .try_into()
            .map_err(|source| LoaderError::Program {
                what: "lookup".into(),
                source: Box::new(source),
            })?;
        program.load().map_err(|source| LoaderError::Program {
            what: "verification and load".into(),
            source: Box::new(source),
        })?;
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

    fn program(&self) -> Result<&Xdp, LoaderError> {
        self.xdp(PROGRAM_NAME)
    }

    /// The XDP program `name` of the object, for BPF_PROG_TEST_RUN with options of the
    /// caller's choosing (the benchmarks time runs and inject live frames with it).
    pub fn xdp(&self, name: &str) -> Result<&Xdp, LoaderError> {
        self.ebpf
            .program(name)
            .ok_or_else(|| LoaderError::Internal(format!("no program {name} in object")))?
            .try_into()
            .map_err(|source| LoaderError::Program {
                what: format!("lookup of {name}"),
                source: Box::new(source),
            })
    }

    /// The XDP program `name` of the object, to attach it (the benchmarks keep every program
    /// they time attached to an idle veth, as in production).
    pub fn xdp_mut(&mut self, name: &str) -> Result<&mut Xdp, LoaderError> {
        self.ebpf
            .program_mut(name)
            .ok_or_else(|| LoaderError::Internal(format!("no program {name} in object")))?
            .try_into()
            .map_err(|source| LoaderError::Program {
                what: format!("lookup of {name}"),
                source: Box::new(source),
            })
    }

    /// Verifies and loads one more XDP program of the embedded object: the benchmarks'
    /// floors, parse-only twin and injector (`portfw-ebpf/src/bench.rs`). `apply` never calls
    /// it, so in production only `portfw` is ever loaded.
    pub fn load_extra(&mut self, name: &str) -> Result<&Xdp, LoaderError> {
        self.xdp_mut(name)?
            .load()
            .map_err(|source| LoaderError::Program {
                what: format!("verification and load of {name}"),
                source: Box::new(source),
            })?;
        self.xdp(name)
    }

    fn program_mut(&mut self) -> Result<&mut Xdp, LoaderError> {
        self.xdp_mut(PROGRAM_NAME)
    }

    /// Runs the program once on `frame` through `BPF_PROG_TEST_RUN` and returns the XDP action.
    pub fn test_run(&self, frame: &[u8]) -> Result<u32, LoaderError> {
        self.test_run_repeat(frame, 1).map(|(action, _)| action)
    }

    /// Runs the program `repeat` times on `frame`; returns the action and the mean ns per run.
    pub fn test_run_repeat(&self, frame: &[u8], repeat: u32) -> Result<(u32, f64), LoaderError> {
        let opts = aya::programs::TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        };
        let result = self
            .program()?
            .test_run(opts)
            .map_err(|source| LoaderError::Program {
                what: "test run".into(),
                source: Box::new(source),
            })?;
        Ok((result.return_value, result.duration.as_nanos() as f64))
    }

    /// Verdict counters summed over CPUs.
    pub fn counters(&self) -> Result<Vec<u64>, LoaderError> {
        let data = map_data(&self.ebpf, MapNames::COUNTERS)?;
        read_counters(data)
    }

    /// The event ring buffer (tests read it directly).
    pub fn events(&mut self) -> Result<RingBuf<&mut MapData>, LoaderError> {
        let map = self
            .ebpf
            .map_mut(MapNames::EVENTS)
            .ok_or(LoaderError::MissingMap(MapNames::EVENTS))?;
        RingBuf::try_from(map).map_err(|source| LoaderError::Map {
            map: MapNames::EVENTS,
            source: Box::new(source),
        })
    }

    fn pin_all(&mut self, dir: &Path) -> Result<(), LoaderError> {
        let pin_err = |what: String| {
            move |e: aya::pin::PinError| LoaderError::Io {
                what,
                source: io::Error::other(e),
            }
        };
        self.program_mut()?
            .pin(dir.join("prog"))
            .map_err(pin_err(format!("pinning program in {}", dir.display())))?;
        for name in PINNED_MAPS {
            map_data(&self.ebpf, name)?
                .pin(dir.join(name))
                .map_err(pin_err(format!("pinning map {name}")))?;
        }
        Ok(())
    }
}

/// A second, owned handle on a map that `Ebpf` owns: aya's typed maps want ownership.
fn reopen(data: &MapData, name: &'static str) -> Result<MapData, LoaderError> {
    let info = data.info().map_err(|source| LoaderError::Map {
        map: name,
        source: Box::new(source),
    })?;
    MapData::from_id(info.id()).map_err(|source| LoaderError::Map {
        map: name,
        source: Box::new(source),
    })
}

fn read_counters(data: &MapData) -> Result<Vec<u64>, LoaderError> {
    sum_counters(reopen(data, MapNames::COUNTERS)?)
}

fn sum_counters(data: MapData) -> Result<Vec<u64>, LoaderError> {
    let array = per_cpu_array(Map::PerCpuArray(data), MapNames::COUNTERS)?;
    (0..counter::COUNT)
        .map(|i| {
            array
                .get(&i, 0)
                .map(|v| v.iter().sum())
                .map_err(|source| LoaderError::Map {
                    map: MapNames::COUNTERS,
                    source: Box::new(source),
                })
        })
        .collect()
}

/// What one `apply` asks for.
pub struct ApplyRequest<'a> {
    pub compiled: &'a CompiledPolicy,
    pub record: PolicyRecord,
    pub interfaces: &'a [String],
    pub mode: Mode,
}

/// What one `apply` did.
#[derive(Debug)]
pub struct ApplyOutcome {
    /// A new program was loaded (rather than an in-place table update).
    pub fresh: bool,
    pub generation: u32,
    pub program_id: u32,
    pub attachments: Vec<Attachment>,
    pub detached: Vec<String>,
    pub notes: Vec<String>,
}

/// Removes a half-built pin directory unless disarmed, so a failed fresh apply leaves
/// nothing attached or pinned behind.
struct TempPins(Option<PathBuf>);

impl Drop for TempPins {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = remove_pins(&dir);
        }
    }
}

/// Unpins everything under `dir` (links first, so the program stops judging packets before
/// its maps go) and removes the directory.
fn remove_pins(dir: &Path) -> Result<(), LoaderError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(io_err(format!("reading {}", dir.display()))(source)),
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort_by_key(|p| {
        !p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("link-"))
    });
    for path in paths {
        fs::remove_file(&path).map_err(io_err(format!("unpinning {}", path.display())))?;
    }
    fs::remove_dir(dir).map_err(io_err(format!("removing {}", dir.display())))
}

/// Removes the temporary pin directories of applies in this namespace that were killed
/// before they could finish: their links may still hold a half-set-up program on an
/// interface. Best effort: a failure here must not stop the apply that found it.
fn remove_abandoned_temp_pins(paths: &Paths) {
    let prefix = format!("tmp-{}-", paths.netns);
    let Ok(entries) = fs::read_dir(PIN_ROOT) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            let _ = remove_pins(&entry.path());
        }
    }
}

fn xdp_mode_name(mode: XdpMode) -> &'static str {
    match mode {
        XdpMode::Skb => "generic",
        XdpMode::Driver => "native",
        XdpMode::Hardware => "offload",
        XdpMode::Default => "default",
    }
}

/// Attaches `program` to `iface` and pins the link at `pin`.
fn attach_and_pin(
    program: &mut Xdp,
    iface: &str,
    mode: Mode,
    pin: &Path,
) -> Result<Attachment, LoaderError> {
    let index = ifindex(iface)?;
    let tries: &[XdpMode] = match mode {
        Mode::Auto => &[XdpMode::Driver, XdpMode::Skb],
        Mode::Native => &[XdpMode::Driver],
        Mode::Generic => &[XdpMode::Skb],
    };
    let mut last_err = None;
    for &xdp_mode in tries {
        match program.attach_to_if_index(index, xdp_mode) {
            Ok(link_id) => {
                let link: XdpLink =
                    program
                        .take_link(link_id)
                        .map_err(|source| LoaderError::Program {
                            what: "taking the XDP link".into(),
                            source: Box::new(source),
                        })?;
                let fd_link = FdLink::try_from(link).map_err(|_| LoaderError::Attach {
                    iface: iface.to_string(),
                    mode: xdp_mode_name(xdp_mode),
                    reason: "the kernel attached without a bpf_link (needs Linux 5.9 or newer), \
                             so the filter could not outlive this command"
                        .into(),
                    source: None,
                })?;
                fd_link.pin(pin).map_err(|e| LoaderError::Io {
                    what: format!("pinning the link of {iface} at {}", pin.display()),
                    source: io::Error::other(e),
                })?;
                return Ok(Attachment {
                    iface: iface.to_string(),
                    ifindex: index,
                    mode: xdp_mode_name(xdp_mode).to_string(),
                });
            }
            Err(e) => last_err = Some((xdp_mode, e)),
        }
    }
    let (xdp_mode, source) =
        last_err.ok_or_else(|| LoaderError::Internal("no attach mode".into()))?;
    let busy = matches!(&source, ProgramError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::EBUSY));
    let reason = if busy {
        format!(
            "another XDP program is already attached; remove it first (for example `ip link set dev {iface} xdp off`)"
        )
    } else {
        "the kernel refused".to_string()
    };
    Err(LoaderError::Attach {
        iface: iface.to_string(),
        mode: xdp_mode_name(xdp_mode),
        reason,
        source: Some(Box::new(source)),
    })
}

fn link_alive(attachment: &Attachment) -> bool {
    ifname(attachment.ifindex).as_deref() == Some(attachment.iface.as_str())
}

/// Compiles nothing, validates nothing: puts an already compiled policy in force.
///
/// When a compatible filter is already loaded in this namespace, the new policy is written
/// into the inactive table generation and switched to atomically; interfaces are then
/// attached or detached to match the request. Otherwise a fresh program is loaded, filled,
/// pinned under a temporary name, attached, and moved into place.
pub fn apply(req: ApplyRequest<'_>) -> Result<ApplyOutcome, LoaderError> {
    // Resolve every interface first: a typo must not leave anything half-changed.
    for iface in req.interfaces {
        ifindex(iface)?;
    }
    ensure_mounted()?;
    let paths = Paths::current()?;
    let _lock = paths.lock()?;
    remove_abandoned_temp_pins(&paths);
    let state = State::read(&paths.state)?;
    let loaded = paths.prog().exists();
    match state {
        Some(state) if loaded && state.abi == ABI_VERSION => update(&paths, state, req),
        previous => {
            let mut notes = Vec::new();
            if loaded {
                notes.push(format!(
                    "replaced an incompatible or incomplete portfw filter found in {}",
                    paths.pins.display()
                ));
            }
            // Pins without a record, or a record without pins (left by a namespace that was
            // deleted, whose inode this one reuses): start clean.
            if loaded || previous.is_some() || paths.pins.exists() {
                remove_pins(&paths.pins)?;
                State::remove(&paths.state)?;
            }
            let mut outcome = fresh(&paths, req)?;
            outcome.notes.extend(notes);
            Ok(outcome)
        }
    }
}

fn fresh(paths: &Paths, req: ApplyRequest<'_>) -> Result<ApplyOutcome, LoaderError> {
    fs::create_dir_all(PIN_ROOT).map_err(io_err(format!("creating {PIN_ROOT}")))?;
    let tmp_dir = Path::new(PIN_ROOT).join(format!("tmp-{}-{}", paths.netns, std::process::id()));
    let _ = remove_pins(&tmp_dir);
    fs::create_dir(&tmp_dir).map_err(io_err(format!("creating {}", tmp_dir.display())))?;
    // bpffs reserves names with dots, hence no hidden ".tmp" name.
    let mut guard = TempPins(Some(tmp_dir.clone()));

    let mut loaded = Loaded::load()?;
    let generation = loaded.tables.stage(req.compiled)?;
    loaded.tables.switch_to(generation);
    loaded.pin_all(&tmp_dir)?;

    let program_id =
        loaded
            .program()?
            .info()
            .map(|i| i.id())
            .map_err(|source| LoaderError::Program {
                what: "info".into(),
                source: Box::new(source),
            })?;
    let mut attachments = Vec::new();
    for iface in req.interfaces {
        let link_pin = tmp_dir.join(format!("link-{iface}"));
        attachments.push(attach_and_pin(
            loaded.program_mut()?,
            iface,
            req.mode,
            &link_pin,
        )?);
    }
    let mut state = State {
        abi: ABI_VERSION,
        program_id,
        attachments: attachments.clone(),
        generations: [None, None],
    };
    state.generations[generation as usize] = Some(req.record);
    state.write(&paths.state)?;
    fs::rename(&tmp_dir, &paths.pins).map_err(io_err(format!(
        "moving {} to {}",
        tmp_dir.display(),
        paths.pins.display()
    )))?;
    guard.0 = None;
    Ok(ApplyOutcome {
        fresh: true,
        generation,
        program_id,
        attachments,
        detached: Vec::new(),
        notes: Vec::new(),
    })
}

/// Opens the tables of the filter pinned at `paths`.
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

fn update(
    paths: &Paths,
    mut state: State,
    req: ApplyRequest<'_>,
) -> Result<ApplyOutcome, LoaderError> {
    let mut tables = open_tables(paths)?;
    let generation = tables.stage(req.compiled)?;
    // Record the new generation before switching: whichever generation is active, its
    // description is on file.
    state.generations[generation as usize] = Some(req.record);
    state.write(&paths.state)?;
    tables.switch_to(generation);

    // Interfaces: keep live links that are still wanted, drop the rest, attach new ones.
    let mut attachments = Vec::new();
    let mut detached = Vec::new();
    for old in std::mem::take(&mut state.attachments) {
        let wanted = req.interfaces.contains(&old.iface);
        let mode_ok = match req.mode {
            Mode::Auto => true,
            Mode::Native => old.mode == "native",
            Mode::Generic => old.mode == "generic",
        };
        if wanted && mode_ok && link_alive(&old) && paths.link(&old.iface).exists() {
            attachments.push(old);
        } else {
            unpin_link(&paths.link(&old.iface))?;
            if !wanted {
                detached.push(old.iface);
            }
        }
    }
    let missing: Vec<&String> = req
        .interfaces
        .iter()
        .filter(|iface| !attachments.iter().any(|a| &a.iface == *iface))
        .collect();
    if !missing.is_empty() {
        let mut program =
            Xdp::from_pin(paths.prog(), XdpAttachType::Interface).map_err(|source| {
                LoaderError::Program {
                    what: format!("reopening {}", paths.prog().display()),
                    source: Box::new(source),
                }
            })?;
        for iface in missing {
            let attachment = attach_and_pin(&mut program, iface, req.mode, &paths.link(iface));
            match attachment {
                Ok(a) => attachments.push(a),
                Err(e) => {
                    state.attachments = attachments;
                    state.write(&paths.state)?;
                    return Err(e);
                }
            }
        }
    }
    state.attachments = attachments.clone();
    state.write(&paths.state)?;
    Ok(ApplyOutcome {
        fresh: false,
        generation,
        program_id: state.program_id,
        attachments,
        detached,
        notes: Vec::new(),
    })
}

fn unpin_link(path: &Path) -> Result<(), LoaderError> {
    if !path.exists() {
        return Ok(());
    }
    let link = PinnedLink::from_pin(path).map_err(|e| LoaderError::Io {
        what: format!("opening pinned link {}", path.display()),
        source: io::Error::other(e),
    })?;
    // Dropping the last reference detaches the program from the interface.
    drop(
        link.unpin()
            .map_err(io_err(format!("unpinning {}", path.display())))?,
    );
    Ok(())
}

/// Removes the filter from `ifaces`, or from every interface and entirely when `None`.
/// Returns the interfaces it was removed from.
pub fn detach(ifaces: Option<&[String]>) -> Result<Vec<String>, LoaderError> {
    let paths = Paths::current()?;
    let _lock = paths.lock()?;
    let state = State::read(&paths.state)?;
    if !paths.pins.exists() && state.is_none() {
        return Err(LoaderError::NotLoaded(paths.pins));
    }
    let mut state = state.unwrap_or_default();
    let all: Vec<String> = state.attachments.iter().map(|a| a.iface.clone()).collect();
    let removing: Vec<String> = match ifaces {
        None => all.clone(),
        Some(list) => {
            for iface in list {
                if !all.contains(iface) {
                    return Err(LoaderError::Internal(format!(
                        "portfw is not attached to `{iface}` (attached: {})",
                        if all.is_empty() {
                            "none".to_string()
                        } else {
                            all.join(", ")
                        }
                    )));
                }
            }
            list.to_vec()
        }
    };
    for iface in &removing {
        unpin_link(&paths.link(iface))?;
    }
    state.attachments.retain(|a| !removing.contains(&a.iface));
    if state.attachments.is_empty() {
        remove_pins(&paths.pins)?;
        State::remove(&paths.state)?;
    } else {
        state.write(&paths.state)?;
    }
    Ok(removing)
}

/// Everything `portfw status` shows.
#[derive(Debug, serde::Serialize)]
pub struct Status {
    pub netns: u64,
    pub pins: PathBuf,
    pub program_id: u32,
    pub generation: u32,
    pub attachments: Vec<AttachmentStatus>,
    pub policy: Option<PolicyRecord>,
    pub counters: Vec<(String, u64)>,
    pub rule_hits: Vec<u64>,
}

#[derive(Debug, serde::Serialize)]
pub struct AttachmentStatus {
    #[serde(flatten)]
    pub attachment: Attachment,
    /// The interface still exists under its name.
    pub live: bool,
}

pub fn status() -> Result<Status, LoaderError> {
    let paths = Paths::current()?;
    let state = State::read(&paths.state)?;
    let Some(state) = state.filter(|_| paths.prog().exists()) else {
        return Err(LoaderError::NotLoaded(paths.pins));
    };
    let tables = open_tables(&paths)?;
    let generation = tables.active();
    let policy = state.generations[generation as usize].clone();
    let rules = policy.as_ref().map_or(0, |p| p.rules.len());
    let counters = sum_counters(pinned_map(&paths, MapNames::COUNTERS)?)?;
    Ok(Status {
        netns: paths.netns,
        pins: paths.pins.clone(),
        program_id: state.program_id,
        generation,
        attachments: state
            .attachments
            .iter()
            .map(|a| AttachmentStatus {
                live: link_alive(a),
                attachment: a.clone(),
            })
            .collect(),
        policy,
        counters: counter::NAMES
            .iter()
            .zip(counters)
            .filter(|(name, _)| !name.starts_with("reserved"))
            .map(|(name, v)| (name.to_string(), v))
            .collect(),
        rule_hits: tables.rule_hits(rules),
    })
}

/// What the running filter decides for one packet.
pub struct RunningVerdict {
    pub entry: portfw_common::PortEntry,
    /// The source trie decided (rather than the port table).
    pub by_source: bool,
    pub generation: u32,
    pub policy: Option<PolicyRecord>,
}

/// Looks a packet up in the running filter's active tables, as the kernel program does.
pub fn explain_running(
    proto_slot: u32,
    port: u16,
    source: std::net::IpAddr,
) -> Result<RunningVerdict, LoaderError> {
    let paths = Paths::current()?;
    let state = State::read(&paths.state)?;
    let Some(state) = state.filter(|_| paths.prog().exists()) else {
        return Err(LoaderError::NotLoaded(paths.pins));
    };
    let tables = open_tables(&paths)?;
    let generation = tables.active();
    let (entry, by_source) = tables.lookup(proto_slot, port, source)?;
    Ok(RunningVerdict {
        entry,
        by_source,
        generation,
        policy: state.generations[generation as usize].clone(),
    })
}

/// The pinned event ring buffer and the rule descriptions of the active policy.
pub fn open_events() -> Result<(RingBuf<MapData>, Paths), LoaderError> {
    let paths = Paths::current()?;
    if !paths.prog().exists() {
        return Err(LoaderError::NotLoaded(paths.pins));
    }
    let ring = RingBuf::try_from(Map::RingBuf(pinned_map(&paths, MapNames::EVENTS)?)).map_err(
        |source| LoaderError::Map {
            map: MapNames::EVENTS,
            source: Box::new(source),
        },
    )?;
    Ok((ring, paths))
}
