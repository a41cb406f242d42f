//! Changing the running filter: the `apply` transaction (a fresh load, or an in-place table
//! update), attaching to interfaces, `detach`, and removing pins.
use std::{io, path::Path};

use aya::programs::{SchedClassifier, Xdp};
use aya_obj::programs::XdpAttachType;
use portfw_common::ABI_VERSION;

use super::{
    attach::{Mode, Programs, attach_interface, detach_pinned_link, unpin_link},
    bpffs::{EGRESS_LINK_PREFIX, LINK_PREFIX, Paths, create_pin_root, ensure_mounted, pin_root},
    error::{LoaderError, program_err},
    fsafe::Dir,
    health::{belongs_here, is_leftover, leftover_candidates, problem},
    iface::{Link, ifindex, link_type},
    object::{Loaded, flow_map_size, open_tables, pinned_flow_map_size, pinned_flows},
    state::{Attachment, PolicyRecord, State},
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

/// Removes a half-built pin directory (by its name in the pin root) unless disarmed, so a
/// failed fresh apply leaves nothing attached or pinned behind.
struct TempPins(Option<String>);

impl Drop for TempPins {
    fn drop(&mut self) {
        if let Some(name) = self.0.take()
            && let Ok(Some(root)) = pin_root()
        {
            let _ = remove_pins(&root, &name);
        }
    }
}

/// Link pins go first, so the program stops judging packets before its maps go.
fn is_link_pin(name: &str) -> bool {
    name.starts_with(LINK_PREFIX) || name.starts_with(EGRESS_LINK_PREFIX)
}

/// Unpins everything in the pin directory `name` of the pin root (links first) and removes
/// the directory, never following a link: a link or a directory that is not root's, in
/// the pin directory's place or in it, is refused.
fn remove_pins(root: &Dir, name: &str) -> Result<(), LoaderError> {
    root.remove_pins(name, is_link_pin, detach_pinned_link)
}

/// Removes the temporary pin directories of applies in this namespace that were killed
/// before they could finish: their links may still hold a half-set-up program on an
/// interface. A directory portfw must not touch stops the apply; any other failure here
/// must not stop the apply that found it.
fn remove_abandoned_temp_pins(paths: &Paths) -> Result<(), LoaderError> {
    let prefix = format!("tmp-{}-", paths.netns);
    let Some(root) = pin_root()? else {
        return Ok(());
    };
    for name in root.entries()? {
        let Some(pid) = name
            .strip_prefix(&prefix)
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        // A link or a stranger's directory under such a name is refused, whoever's pid it
        // names.
        root.sub(&name)?;
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive && let Err(e @ LoaderError::Unsafe { .. }) = remove_pins(&root, &name) {
            return Err(e);
        }
    }
    Ok(())
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
    paths.check()?;
    let _lock = paths.lock()?;
    remove_abandoned_temp_pins(&paths)?;
    let reclaimed = reclaim_dead_namespaces(&paths);
    let state = State::read(&paths.state)?;
    // Records of a deleted namespace whose inode this one reuses describe nothing here.
    let ours = match &state {
        Some(state) => belongs_here(&paths, state)?,
        None => false,
    };
    let loaded = [Link::Ethernet, Link::Ip]
        .iter()
        .all(|&link| paths.prog_for(link).exists() && paths.egress_prog_for(link).exists());
    let flow_entries = flow_map_size(req.compiled.flows_max)?;
    let pinned_entries = if loaded {
        pinned_flow_map_size(&paths).ok()
    } else {
        None
    };
    let mut outcome = match state {
        Some(state)
            if ours
                && loaded
                && state.abi == ABI_VERSION
                && pinned_entries == Some(flow_entries) =>
        {
            update(&paths, state, req, record)?
        }
        previous => {
            let mut notes = Vec::new();
            // The flow table cannot be resized in place: carry its flows over to the new one.
            let mut carried = Vec::new();
            if let (Some(old), Some(state)) = (pinned_entries, &previous)
                && ours
                && state.abi == ABI_VERSION
            {
                carried = pinned_flows(&paths).unwrap_or_default();
                notes.push(format!(
                    "the flow table was resized ({old} to {flow_entries} entries) and its \
                     {} flows carried over",
                    carried.len()
                ));
            }
            if previous.is_some() && !ours {
                notes.push(format!(
                    "removed the filter records that a deleted network namespace left in {} \
                     (this namespace reuses its inode); they filtered nothing here",
                    paths.pins.display()
                ));
            } else if loaded && notes.is_empty() {
                notes.push(format!(
                    "replaced an incompatible or incomplete portfw filter found in {}",
                    paths.pins.display()
                ));
            }
            // Pins without a record, or a record without pins (left by a namespace that was
            // deleted, whose inode this one reuses): start clean.
            if paths.prog().exists() || previous.is_some() || paths.pins.exists() {
                if let Some(root) = pin_root()? {
                    remove_pins(&root, &paths.pins_name())?;
                }
                State::remove(&paths.state)?;
            }
            let mut outcome = fresh(&paths, req, record, &carried)?;
            outcome.notes.extend(notes);
            outcome
        }
    };
    outcome.notes.extend(reclaimed);
    Ok(outcome)
}

/// Removes the pins and state that dead namespaces left behind (each holds megabytes of
/// tables), under each one's lock, and says what it removed. Best effort: a leftover that
/// cannot be removed now is tried again by the next apply.
fn reclaim_dead_namespaces(paths: &Paths) -> Vec<String> {
    let Ok(Some(root)) = pin_root() else {
        return Vec::new();
    };
    let Ok(candidates) = leftover_candidates(&root, paths) else {
        return Vec::new();
    };
    let mut notes = Vec::new();
    for (name, inode) in candidates {
        let other = Paths::for_netns(inode, 0);
        // Held by a writer: that namespace is alive after all, or being cleaned up.
        let Ok(Some(_lock)) = other.try_lock() else {
            continue;
        };
        if !is_leftover(&root, &name) || remove_pins(&root, &name).is_err() {
            continue;
        }
        if !name.starts_with("tmp-") {
            let _ = State::remove(&other.state);
        }
        notes.push(format!(
            "reclaimed {}, left by deleted network namespace {inode}: its interfaces are gone",
            root.path().join(&name).display()
        ));
    }
    notes
}

fn fresh(
    paths: &Paths,
    req: ApplyRequest<'_>,
    record: PolicyRecord,
    flows: &[(portfw_common::FlowKey, portfw_common::FlowValue)],
) -> Result<ApplyOutcome, LoaderError> {
    let root = create_pin_root()?;
    // bpffs reserves names with dots, hence no hidden ".tmp" name.
    let tmp_name = format!("tmp-{}-{}", paths.netns, std::process::id());
    remove_pins(&root, &tmp_name)?;
    let tmp_dir = root.create_sub(&tmp_name)?.path().to_path_buf();
    let mut guard = TempPins(Some(tmp_name.clone()));

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
        netns_cookie: Some(paths.cookie),
        program_id,
        attachments: attachments.clone(),
        generations: Default::default(),
    };
    state.generations[generation as usize] = Some(record.clone());
    state.write(&paths.state)?;
    root.rename(&tmp_name, &paths.pins_name())?;
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
    state.netns_cookie = Some(paths.cookie);
    let mut tables = open_tables(paths)?;
    let generation = tables.stage(req.compiled)?;
    // Record the new generation before switching: whichever generation is active, its
    // description is on file.
    state.generations[generation as usize] = Some(record.clone());
    state.write(&paths.state)?;
    tables.switch_to(generation);

    // Interfaces: keep links that are still wanted and really attached to them, drop the
    // rest, attach new ones.
    let pins = Dir::open(&paths.pins)?;
    let mut attachments = Vec::new();
    let mut detached = Vec::new();
    for old in std::mem::take(&mut state.attachments) {
        let wanted = req.interfaces.contains(&old.iface);
        if wanted && req.mode.accepts(old.mode) && problem(pins.as_ref(), &old).is_none() {
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
    paths.check()?;
    let _lock = paths.lock()?;
    let state = State::read(&paths.state)?;
    if !paths.pins.exists() && state.is_none() {
        return Err(LoaderError::NotLoaded(paths.pins));
    }
    // The records of a deleted namespace whose inode this one reuses: nothing of them is
    // attached here, and all of them go.
    let mut state = match state {
        Some(state) if belongs_here(&paths, &state)? => state,
        _ => State::default(),
    };
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
        if let Some(root) = pin_root()? {
            remove_pins(&root, &paths.pins_name())?;
        }
        State::remove(&paths.state)?;
    } else {
        state.write(&paths.state)?;
    }
    Ok(removing)
}
