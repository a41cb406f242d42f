//! Changing the running filter: the `apply` transaction (a fresh load, or an in-place table
//! update), attaching to interfaces, `detach`, and removing pins.
use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::programs::{SchedClassifier, Xdp};
use aya_obj::programs::XdpAttachType;
use portfw_common::ABI_VERSION;

use super::{
    attach::{Mode, Programs, attach_interface, unpin_link},
    bpffs::{EGRESS_LINK_PREFIX, LINK_PREFIX, PIN_ROOT, Paths, ensure_mounted},
    error::{LoaderError, io_err, program_err},
    iface::{Link, ifindex, link_type},
    object::{Loaded, flow_map_size, open_tables, pinned_flow_map_size, pinned_flows},
    state::{Attachment, PolicyRecord, State},
    trial::{self, TrialError, TrialRequest},
};
use crate::compile::CompiledPolicy;

/// What one `apply` asks for.
pub struct ApplyRequest<'a> {
    pub compiled: &'a CompiledPolicy,
    /// The policy file as named by the user; its record shows the canonical path.
    pub file: &'a Path,
    /// The bytes `compiled` was compiled from; its record shows their SHA-256.
    pub source: &'a [u8],
    pub interfaces: &'a [String],
    pub mode: Mode,
    /// `apply --try`: put the policy in force on trial, to be rolled back at the deadline
    /// unless confirmed.
    pub trial: Option<TrialRequest>,
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
            .is_some_and(|n| n.starts_with(LINK_PREFIX) || n.starts_with(EGRESS_LINK_PREFIX))
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

/// Compiles nothing, validates nothing: puts an already compiled policy in force.
///
/// When a compatible filter is already loaded in this namespace, the new policy is written
/// into the inactive table generation and switched to atomically; interfaces are then
/// attached or detached to match the request. Otherwise a fresh program is loaded, filled,
/// pinned under a temporary name, attached, and moved into place.
pub fn apply(req: ApplyRequest<'_>) -> Result<ApplyOutcome, LoaderError> {
    // Resolve every interface first: a typo, or a device portfw cannot parse, must not
    // leave anything half-changed.
    for iface in req.interfaces {
        ifindex(iface)?;
        link_type(iface)?;
    }
    let record = PolicyRecord::new(req.file, req.source, req.compiled);
    ensure_mounted()?;
    let paths = Paths::current()?;
    let _lock = paths.lock()?;
    remove_abandoned_temp_pins(&paths);
    let state = State::read(&paths.state)?;
    // A pending trial's rollback target is the inactive generation, which this apply would
    // overwrite: refused until the trial is confirmed or rolled back.
    let state = trial::settle(&paths, state)?;
    let loaded = [Link::Ethernet, Link::Ip]
        .iter()
        .all(|&link| paths.prog_for(link).exists() && paths.egress_prog_for(link).exists());
    let flow_entries = flow_map_size(req.compiled.flows_max)?;
    let pinned_entries = if loaded {
        pinned_flow_map_size(&paths).ok()
    } else {
        None
    };
    match state {
        Some(state)
            if loaded && state.abi == ABI_VERSION && pinned_entries == Some(flow_entries) =>
        {
            update(&paths, state, req, record)
        }
        previous => {
            if req.trial.is_some() && loaded {
                return Err(TrialError::NeedsReload {
                    reason: match (&previous, pinned_entries) {
                        (Some(state), _) if state.abi != ABI_VERSION => format!(
                            "the running filter was loaded by another portfw (kernel ABI {}, \
                             this one is {ABI_VERSION})",
                            state.abi
                        ),
                        (Some(_), Some(old)) if old != flow_entries => {
                            "its `flows: max` resizes the flow table".to_string()
                        }
                        _ => "the running filter is incomplete".to_string(),
                    },
                }
                .into());
            }
            let mut notes = Vec::new();
            // The flow table cannot be resized in place: carry its flows over to the new one.
            let mut carried = Vec::new();
            if let (Some(old), Some(state)) = (pinned_entries, &previous)
                && state.abi == ABI_VERSION
            {
                carried = pinned_flows(&paths).unwrap_or_default();
                notes.push(format!(
                    "the flow table was resized ({old} to {flow_entries} entries) and its \
                     {} flows carried over",
                    carried.len()
                ));
            }
            if loaded && notes.is_empty() {
                notes.push(format!(
                    "replaced an incompatible or incomplete portfw filter found in {}",
                    paths.pins.display()
                ));
            }
            // Pins without a record, or a record without pins (left by a namespace that was
            // deleted, whose inode this one reuses): start clean.
            if paths.prog().exists() || previous.is_some() || paths.pins.exists() {
                remove_pins(&paths.pins)?;
                State::remove(&paths.state)?;
            }
            let mut outcome = fresh(&paths, req, record, &carried)?;
            outcome.notes.extend(notes);
            Ok(outcome)
        }
    }
}

fn fresh(
    paths: &Paths,
    req: ApplyRequest<'_>,
    record: PolicyRecord,
    flows: &[(portfw_common::FlowKey, portfw_common::FlowValue)],
) -> Result<ApplyOutcome, LoaderError> {
    fs::create_dir_all(PIN_ROOT).map_err(io_err(format!("creating {PIN_ROOT}")))?;
    let tmp_dir = Path::new(PIN_ROOT).join(format!("tmp-{}-{}", paths.netns, std::process::id()));
    let _ = remove_pins(&tmp_dir);
    fs::create_dir(&tmp_dir).map_err(io_err(format!("creating {}", tmp_dir.display())))?;
    // bpffs reserves names with dots, hence no hidden ".tmp" name.
    let mut guard = TempPins(Some(tmp_dir.clone()));

    let mut loaded = Loaded::load_sized(req.compiled.flows_max)?;
    let generation = loaded.tables.stage(req.compiled)?;
    loaded.tables.switch_to(generation);
    loaded.restore_flows(flows)?;
    let tmp_paths = Paths {
        pins: tmp_dir.clone(),
        ..paths.clone()
    };
    loaded.pin_all(&tmp_paths)?;

    let program_id = loaded.program_id()?;
    let mut attachments = Vec::new();
    for iface in req.interfaces {
        let link = link_type(iface)?;
        attachments.push(attach_interface(
            loaded.programs_mut(link)?,
            iface,
            link,
            req.mode,
            &tmp_paths.link(iface),
            &tmp_paths.egress_link(iface),
        )?);
    }
    let mut state = State {
        abi: ABI_VERSION,
        program_id,
        attachments: attachments.clone(),
        generations: Default::default(),
        trial: req.trial.as_ref().map(|t| t.record(generation, None, &[])),
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
    // description is on file. So is a trial, before its policy is in force.
    state.generations[generation as usize] = Some(record.clone());
    if let Some(t) = &req.trial {
        state.trial = Some(t.record(generation, Some(tables.active()), &state.attachments));
    }
    state.write(&paths.state)?;
    tables.switch_to(generation);

    // Interfaces: keep live links that are still wanted, drop the rest, attach new ones.
    let mut attachments = Vec::new();
    let mut detached = Vec::new();
    for old in std::mem::take(&mut state.attachments) {
        let wanted = req.interfaces.contains(&old.iface);
        if wanted
            && req.mode.accepts(old.mode)
            && old.is_live()
            && paths.link(&old.iface).exists()
            && paths.egress_link(&old.iface).exists()
        {
            attachments.push(old);
        } else {
            unpin_link(&paths.link(&old.iface))?;
            unpin_link(&paths.egress_link(&old.iface))?;
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
        for iface in missing {
            let link = link_type(iface)?;
            let prog = paths.prog_for(link);
            let mut xdp = Xdp::from_pin(&prog, XdpAttachType::Interface)
                .map_err(program_err(format!("reopening {}", prog.display())))?;
            let prog = paths.egress_prog_for(link);
            let mut egress = SchedClassifier::from_pin(&prog)
                .map_err(program_err(format!("reopening {}", prog.display())))?;
            let programs = Programs {
                xdp: &mut xdp,
                egress: &mut egress,
            };
            let attachment = attach_interface(
                programs,
                iface,
                link,
                req.mode,
                &paths.link(iface),
                &paths.egress_link(iface),
            );
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

/// Removes the filter from `ifaces`, or from every interface and entirely when `None`.
/// Returns the interfaces it was removed from. Naming an interface the filter is not on
/// changes nothing and fails with [`LoaderError::NotAttached`].
pub fn detach(ifaces: Option<&[String]>) -> Result<Vec<String>, LoaderError> {
    let paths = Paths::current()?;
    let _lock = paths.lock()?;
    detach_locked(&paths, ifaces)
}

/// [`detach`], with the namespace's lock already held (a trial's rollback holds it).
pub(super) fn detach_locked(
    paths: &Paths,
    ifaces: Option<&[String]>,
) -> Result<Vec<String>, LoaderError> {
    let state = State::read(&paths.state)?;
    if !paths.pins.exists() && state.is_none() {
        return Err(LoaderError::NotLoaded(paths.pins.clone()));
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
        unpin_link(&paths.egress_link(iface))?;
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
