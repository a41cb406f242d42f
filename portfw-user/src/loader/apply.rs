//! Changing the running filter: the `apply` transaction (a fresh load, or an in-place table
//! update), attaching to interfaces, `detach`, and removing pins.
use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::programs::{
    ProgramError, Xdp, XdpMode,
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};
use aya_obj::programs::XdpAttachType;
use portfw_common::{ABI_VERSION, PROGRAM_NAME};

use super::{
    bpffs::{PIN_ROOT, Paths, ensure_mounted},
    error::{LoaderError, io_err, program_err},
    iface::ifindex,
    object::{Loaded, open_tables},
    state::{AttachMode, Attachment, PolicyRecord, State},
};
use crate::compile::CompiledPolicy;

/// How to attach: native (driver) XDP, generic (skb) XDP, or native with generic fallback.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    #[default]
    Auto,
    Native,
    Generic,
}

impl Mode {
    /// The attach modes to try, in order.
    fn tries(self) -> &'static [AttachMode] {
        match self {
            Self::Auto => &[AttachMode::Native, AttachMode::Generic],
            Self::Native => &[AttachMode::Native],
            Self::Generic => &[AttachMode::Generic],
        }
    }

    /// An interface already attached in `mode` satisfies this request.
    fn accepts(self, mode: AttachMode) -> bool {
        self.tries().contains(&mode)
    }
}

fn xdp_mode(mode: AttachMode) -> XdpMode {
    match mode {
        AttachMode::Native => XdpMode::Driver,
        AttachMode::Generic => XdpMode::Skb,
    }
}

/// What one `apply` asks for.
pub struct ApplyRequest<'a> {
    pub compiled: &'a CompiledPolicy,
    /// The policy file as named by the user; its record shows the canonical path.
    pub file: &'a Path,
    /// The bytes `compiled` was compiled from; its record shows their SHA-256.
    pub source: &'a [u8],
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
    /// What is now on file about the policy put in force.
    pub policy: PolicyRecord,
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

/// Attaches `program` to `iface` and pins the link at `pin`.
fn attach_and_pin(
    program: &mut Xdp,
    iface: &str,
    mode: Mode,
    pin: &Path,
) -> Result<Attachment, LoaderError> {
    let index = ifindex(iface)?;
    let mut last_err = None;
    for &attach_mode in mode.tries() {
        match program.attach_to_if_index(index, xdp_mode(attach_mode)) {
            Ok(link_id) => {
                let link: XdpLink = program
                    .take_link(link_id)
                    .map_err(program_err("taking the XDP link"))?;
                let fd_link = FdLink::try_from(link).map_err(|_| LoaderError::Attach {
                    iface: iface.to_string(),
                    mode: attach_mode.name(),
                    reason: "the kernel attached without a bpf_link (needs Linux 5.9 or newer), \
                             so the filter could not outlive this command"
                        .into(),
                    source: None,
                })?;
                fd_link
                    .pin(pin)
                    .map_err(io::Error::other)
                    .map_err(io_err(format!(
                        "pinning the link of {iface} at {}",
                        pin.display()
                    )))?;
                return Ok(Attachment {
                    iface: iface.to_string(),
                    ifindex: index,
                    mode: attach_mode,
                });
            }
            Err(e) => last_err = Some((attach_mode, e)),
        }
    }
    let (attach_mode, source) =
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
        mode: attach_mode.name(),
        reason,
        source: Some(Box::new(source)),
    })
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
    let record = PolicyRecord::new(req.file, req.source, req.compiled);
    ensure_mounted()?;
    let paths = Paths::current()?;
    let _lock = paths.lock()?;
    remove_abandoned_temp_pins(&paths);
    let state = State::read(&paths.state)?;
    let loaded = paths.prog().exists();
    match state {
        Some(state) if loaded && state.abi == ABI_VERSION => update(&paths, state, req, record),
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
            let mut outcome = fresh(&paths, req, record)?;
            outcome.notes.extend(notes);
            Ok(outcome)
        }
    }
}

fn fresh(
    paths: &Paths,
    req: ApplyRequest<'_>,
    record: PolicyRecord,
) -> Result<ApplyOutcome, LoaderError> {
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

    let program_id = loaded.program_id()?;
    let mut attachments = Vec::new();
    for iface in req.interfaces {
        let link_pin = tmp_dir.join(format!("link-{iface}"));
        attachments.push(attach_and_pin(
            loaded.xdp_mut(PROGRAM_NAME)?,
            iface,
            req.mode,
            &link_pin,
        )?);
    }
    let mut state = State {
        abi: ABI_VERSION,
        program_id,
        attachments: attachments.clone(),
        generations: Default::default(),
    };
    state.generations[generation as usize] = Some(record.clone());
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
        policy: record,
        attachments,
        detached: Vec::new(),
        notes: Vec::new(),
    })
}

fn update(
    paths: &Paths,
    mut state: State,
    req: ApplyRequest<'_>,
    record: PolicyRecord,
) -> Result<ApplyOutcome, LoaderError> {
    let mut tables = open_tables(paths)?;
    let generation = tables.stage(req.compiled)?;
    // Record the new generation before switching: whichever generation is active, its
    // description is on file.
    state.generations[generation as usize] = Some(record.clone());
    state.write(&paths.state)?;
    tables.switch_to(generation);

    // Interfaces: keep live links that are still wanted, drop the rest, attach new ones.
    let mut attachments = Vec::new();
    let mut detached = Vec::new();
    for old in std::mem::take(&mut state.attachments) {
        let wanted = req.interfaces.contains(&old.iface);
        if wanted && req.mode.accepts(old.mode) && old.is_live() && paths.link(&old.iface).exists()
        {
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
        let mut program = Xdp::from_pin(paths.prog(), XdpAttachType::Interface)
            .map_err(program_err(format!("reopening {}", paths.prog().display())))?;
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
        policy: record,
        attachments,
        detached,
        notes: Vec::new(),
    })
}

fn unpin_link(path: &Path) -> Result<(), LoaderError> {
    if !path.exists() {
        return Ok(());
    }
    let link = PinnedLink::from_pin(path)
        .map_err(io::Error::other)
        .map_err(io_err(format!("opening pinned link {}", path.display())))?;
    // Dropping the last reference detaches the program from the interface.
    drop(
        link.unpin()
            .map_err(io_err(format!("unpinning {}", path.display())))?,
    );
    Ok(())
}

/// Removes the filter from `ifaces`, or from every interface and entirely when `None`.
/// Returns the interfaces it was removed from. Naming an interface the filter is not on
/// changes nothing and fails with [`LoaderError::NotAttached`].
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
            if let Some(iface) = list.iter().find(|iface| !all.contains(iface)) {
                return Err(LoaderError::NotAttached {
                    iface: iface.clone(),
                    attached: if all.is_empty() {
                        "none".to_string()
                    } else {
                        all.join(", ")
                    },
                });
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
