//! Changing the running filter: the `apply` transaction (a fresh load, or an in-place table
//! update), attaching to interfaces, `detach`, and removing pins.
use std::path::{Path, PathBuf};

use portfw_common::{ABI_VERSION, guard};

use super::{
    attach::{
        EgressAttach, Mode, attach_interface, attach_pinned, detach_egress, detach_pinned_link,
        qdisc_ours, remove_unrecorded_clsact_filters, unpin_link,
    },
    bpffs::{EGRESS_LINK_PREFIX, LINK_PREFIX, Paths, create_pin_root, ensure_mounted, pin_root},
    defences::{Carried, DEFENCE_MAPS, Purge, purge_pinned},
    error::LoaderError,
    flows::{seed_connections, seed_note},
    fsafe::Dir,
    health::{belongs_here, is_leftover, leftover_candidates, problem, temp_pins},
    hostdeps::host_dependencies,
    iface::{Link, ifindex, link_type},
    interrupt::Signals,
    object::{
        Loaded, flow_map_size, object_has_map, open_tables, pinned_flow_map_size,
        pinned_flow_table, pinned_flows,
    },
    state::{AttachMode, Attachment, DefenceRecord, EgressMode, PolicyRecord, State},
    trial::{self, TrialError, TrialRequest},
};
use crate::{compile::CompiledPolicy, policy::Cidr};

/// What one `apply` asks for.
pub struct ApplyRequest<'a> {
    pub compiled: &'a CompiledPolicy,
    /// The policy file as named by the user; its record shows the canonical path.
    pub file: &'a Path,
    /// The bytes `compiled` was compiled from; its record shows their SHA-256.
    pub source: &'a [u8],
    /// The set files read with it ([`crate::policy::Policy::set_files`]), which the
    /// record's hash covers too.
    pub set_files: &'a [crate::policy::SetFileRead],
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

/// Removes a half-built pin directory (by its name in the pin root) unless disarmed, and the
/// clsact filters it holds (which no pin holds), so a failed fresh apply leaves nothing
/// attached or pinned behind.
struct TempPins(Option<String>, Vec<Attachment>);

impl Drop for TempPins {
    fn drop(&mut self) {
        if let Some(name) = self.0.take() {
            if let Ok(Some(root)) = pin_root() {
                let _ = remove_pins(&root, &name);
            }
            for a in self.1.drain(..) {
                let _ = super::attach::remove_clsact_filter(
                    &a.iface,
                    a.ifindex,
                    a.egress.created_qdisc(),
                );
            }
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

/// Removes the temporary pin directories of fresh applies in this namespace that were killed
/// before they could finish, and returns them: their links may still hold a half-set-up
/// program on an interface. Under the namespace's lock no apply of it can be building one,
/// but a directory whose builder still runs is left alone all the same. A directory portfw
/// must not touch stops the caller; any other failure here does not.
fn remove_abandoned_temp_pins(paths: &Paths) -> Result<Vec<PathBuf>, LoaderError> {
    let Some(root) = pin_root()? else {
        return Ok(Vec::new());
    };
    let mut removed = Vec::new();
    for (name, alive) in temp_pins(&root, paths)? {
        if alive {
            continue;
        }
        match remove_pins(&root, &name) {
            Ok(()) => removed.push(root.path().join(&name)),
            Err(e @ LoaderError::Unsafe { .. }) => return Err(e),
            Err(_) => {}
        }
    }
    Ok(removed)
}

/// Compiles nothing, validates nothing: puts an already compiled policy in force.
///
/// When a compatible filter is already loaded in this namespace, the new policy is written
/// into the inactive table generation, interfaces it lacks are attached, the generation is
/// switched to atomically, and interfaces no longer wanted are detached. Otherwise a fresh
/// program is loaded, filled, pinned under a temporary name, attached, and moved into place.
///
/// SIGINT, SIGTERM and SIGHUP roll either back until the switch (or the move into place);
/// the error is then [`LoaderError::Interrupted`] and nothing was changed. A fresh apply
/// that had to remove an older, incompatible filter first cannot go back to it: it finishes
/// instead, and says so in a note.
pub fn apply(req: ApplyRequest<'_>) -> Result<ApplyOutcome, LoaderError> {
    // Resolve every interface first: a typo, or a device portfw cannot parse, must not
    // leave anything half-changed.
    for iface in req.interfaces {
        ifindex(iface)?;
        link_type(iface)?;
    }
    // A mistyped PORTFW_EGRESS_ATTACH must not leave anything half-changed either.
    EgressAttach::from_env()?;
    let record = PolicyRecord::new(req.file, req.source, req.set_files, req.compiled);
    // The scan guard never blocks what the host depends on: a spoofed scan "from" its
    // gateway or resolver must not cut it off.
    let host_except = if req.compiled.settings.guard & guard::SCAN != 0 {
        host_dependencies()
    } else {
        Vec::new()
    };
    let defence = DefenceRecord::new(req.compiled, &host_except);
    let signals = Signals::catch()?;
    let paths = Paths::current()?;
    paths.check()?;
    // The lock lives in /run/portfw, not on bpffs: take it before mounting anything.
    let _lock = paths.lock_unless(|| signals.check("lock"))?;
    ensure_mounted()?;
    paths.check()?;
    let mut notes: Vec<String> = remove_abandoned_temp_pins(&paths)?
        .iter()
        .map(|dir| {
            format!(
                "removed the half-built filter an interrupted apply left in {}",
                dir.display()
            )
        })
        .collect();
    let half_built = !notes.is_empty();
    notes.extend(reclaim_dead_namespaces(&paths));
    signals.check("prepared")?;
    let state = State::read(&paths.state)?;
    // Records of a deleted namespace whose inode this one reuses describe nothing here.
    let ours = match &state {
        Some(state) => belongs_here(&paths, state)?,
        None => false,
    };
    // A pending trial's rollback target is the inactive generation, which this apply would
    // overwrite: refused until the trial is confirmed or rolled back.
    let state = if ours {
        trial::settle(&paths, state)?
    } else {
        state
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
    // A filter loaded by a portfw whose kernel program lacked maps this one has (the active
    // defences' state maps) is reloaded, so that every map the program uses is pinned.
    let maps_pinned = || {
        DEFENCE_MAPS
            .iter()
            .all(|name| !object_has_map(name) || paths.map(name).exists())
    };
    let mut outcome = match state {
        Some(state)
            if ours
                && loaded
                && maps_pinned()
                && state.abi == ABI_VERSION
                && pinned_entries == Some(flow_entries) =>
        {
            update(
                &paths,
                state,
                req,
                (record, defence.clone()),
                &host_except,
                &signals,
            )?
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
            // The flow table cannot be resized in place: carry its flows over to the new one,
            // and the defences' state (blocks, open doors, limits) with them.
            let mut carried = Vec::new();
            let mut defences = Carried::default();
            if let (Some(old), Some(state)) = (pinned_entries, &previous)
                && ours
                && state.abi == ABI_VERSION
            {
                carried = pinned_flows(&paths).unwrap_or_default();
                defences = Carried::read(&paths, &Purge::of(req.compiled));
                notes.push(if old == flow_entries {
                    format!(
                        "reloaded the kernel program, which now has the active defences' maps; \
                         its {} flows carried over",
                        carried.len()
                    )
                } else {
                    format!(
                        "the flow table was resized ({old} to {flow_entries} entries) and its \
                         {} flows carried over",
                        carried.len()
                    )
                });
                if !defences.is_empty() {
                    notes.push("blocks, open knock doors and limit state carried over".into());
                }
            } else if previous.is_some() && !ours {
                notes.push(format!(
                    "removed the filter records that a deleted network namespace left in {} \
                     (this namespace reuses its inode); they filtered nothing here",
                    paths.pins.display()
                ));
            } else if loaded {
                notes.push(format!(
                    "replaced an incompatible or incomplete portfw filter found in {}",
                    paths.pins.display()
                ));
            }
            // Pins without a record, or a record without pins (left by a namespace that was
            // deleted, whose inode this one reuses): start clean.
            let replacing = paths.prog().exists() || previous.is_some() || paths.pins.exists();
            // The old filter's clsact filters hold no pin: those on interfaces still wanted
            // are replaced in place by the new program (so the flows go on being recorded),
            // the others go.
            let clsact_before: Vec<Attachment> = match &previous {
                Some(state) if ours => state
                    .attachments
                    .iter()
                    .filter(|a| a.egress.mode() == EgressMode::Clsact)
                    .cloned()
                    .collect(),
                _ => Vec::new(),
            };
            let (clsact_kept, clsact_gone): (Vec<Attachment>, Vec<Attachment>) = clsact_before
                .into_iter()
                .partition(|a| req.interfaces.contains(&a.iface));
            if replacing {
                if let Some(root) = pin_root()? {
                    remove_pins(&root, &paths.pins_name())?;
                }
                for a in &clsact_gone {
                    detach_egress(&paths, a)?;
                }
                State::remove(&paths.state)?;
            }
            let carry = Carry {
                flows: &carried,
                defences: &defences,
                host_except: &host_except,
                clsact: clsact_kept,
            };
            fresh(
                &paths,
                req,
                (record, defence.clone()),
                carry,
                &signals,
                replacing && ours,
            )?
        }
    };
    if !host_except.is_empty() {
        notes.push(format!(
            "scan guard: never blocks the {} addresses the host depends on (its gateways, \
             nameservers and own addresses): {}",
            host_except.len(),
            record_list(&defence.host_except)
        ));
    }
    if half_built {
        // Its clsact filters hold no pin: those on interfaces now filtered were replaced in
        // place, the others go.
        for iface in remove_unrecorded_clsact_filters(&outcome.attachments) {
            notes.push(format!(
                "removed the clsact egress filter the interrupted apply left on {iface}"
            ));
        }
    }
    notes.append(&mut outcome.notes);
    outcome.notes = notes;
    Ok(outcome)
}

/// At most a few items of `items`, for a note.
fn record_list(items: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut text = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        text.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    text
}

/// What a fresh load takes over from the filter it replaces, and adds to the policy.
struct Carry<'a> {
    flows: &'a [(portfw_common::FlowKey, portfw_common::FlowValue)],
    defences: &'a Carried,
    /// The addresses the scan guard never blocks.
    host_except: &'a [Cidr],
    /// The old filter's clsact attachments on interfaces the new one is wanted on, whose
    /// filters it replaces in place.
    clsact: Vec<Attachment>,
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

/// Loads, fills, pins (under a temporary name), attaches and moves into place a new filter.
/// `replacing` says an older filter of this namespace was just removed: an interruption then
/// cannot give it back, and the apply finishes rather than leave none.
fn fresh(
    paths: &Paths,
    req: ApplyRequest<'_>,
    (record, defence): (PolicyRecord, DefenceRecord),
    carry: Carry<'_>,
    signals: &Signals,
    replacing: bool,
) -> Result<ApplyOutcome, LoaderError> {
    let point = |name: &'static str| {
        if replacing {
            signals.pause(name);
            Ok(())
        } else {
            signals.check(name)
        }
    };
    let root = create_pin_root()?;
    // bpffs reserves names with dots, hence no hidden ".tmp" name.
    let tmp_name = format!("tmp-{}-{}", paths.netns, std::process::id());
    remove_pins(&root, &tmp_name)?;
    let tmp_dir = root.create_sub(&tmp_name)?.path().to_path_buf();
    let mut guard = TempPins(Some(tmp_name.clone()), carry.clsact.clone());

    let mut loaded = Loaded::load_sized(req.compiled.flows_max)?;
    // Before staging: the blocks carried over decide whether the generation looks them up.
    loaded.restore_defences(carry.defences)?;
    let generation = loaded.tables.stage_with(req.compiled, carry.host_except)?;
    loaded.tables.switch_to(generation);
    loaded.restore_flows(carry.flows)?;
    // Before anything is attached: a reply to one of them is never dropped.
    let seeded = seed_connections(&mut loaded.flows()?, req.compiled);
    loaded.calibrate_clock()?;
    point("fresh-loaded")?;
    let tmp_paths = Paths {
        pins: tmp_dir.clone(),
        ..paths.clone()
    };
    loaded.pin_all(&tmp_paths)?;
    point("fresh-pinned")?;

    let program_id = loaded.program_id()?;
    let mut attachments = Vec::new();
    for iface in req.interfaces {
        let link = link_type(iface)?;
        let attachment = attach_interface(
            loaded.programs_mut(link)?,
            iface,
            link,
            req.mode,
            (&tmp_paths.link(iface), &tmp_paths.egress_link(iface)),
            qdisc_ours(&carry.clsact, iface),
        )?;
        if attachment.egress.mode() == EgressMode::Clsact {
            guard.1.push(attachment.clone());
        }
        attachments.push(attachment);
        point("fresh-attaching")?;
    }
    point("fresh-attached")?;
    let mut state = State {
        abi: ABI_VERSION,
        netns_cookie: Some(paths.cookie),
        program_id,
        attachments: attachments.clone(),
        generations: Default::default(),
        trial: req.trial.as_ref().map(|t| t.record(generation, None, &[])),
        defences: Default::default(),
    };
    state.generations[generation as usize] = Some(record.clone());
    state.defences[generation as usize] = Some(defence);
    state.write(&paths.state)?;
    // Past rolling back: the record is on file, the rename is all that is left.
    signals.pause("fresh-recorded");
    root.rename(&tmp_name, &paths.pins_name())?;
    guard.0 = None;
    let mut notes: Vec<String> = seed_note(seeded).into_iter().collect();
    if let Some(signal) = signals.caught() {
        notes.push(format!(
            "interrupted by {signal} after the previous filter was removed: finished putting \
             the new one in place rather than leave none"
        ));
    }
    Ok(ApplyOutcome {
        fresh: true,
        generation,
        program_id,
        policy: record,
        attachments,
        detached: Vec::new(),
        notes,
    })
}

/// Detaches the pinned links of `iface` in the filter at `paths`, the XDP link and a tcx
/// egress link. A clsact filter stays, for the next attach to replace in place.
pub(super) fn unpin_links(paths: &Paths, iface: &str) -> Result<(), LoaderError> {
    unpin_link(&paths.link(iface))?;
    unpin_link(&paths.egress_link(iface))
}

/// Takes the filter at `paths` off the interface of `attachment`: its links, and its clsact
/// egress filter if it has one.
pub(super) fn detach_interface(paths: &Paths, attachment: &Attachment) -> Result<(), LoaderError> {
    unpin_link(&paths.link(&attachment.iface))?;
    detach_egress(paths, attachment)
}

/// Detaches the links pinned for interfaces `state` does not list: an update killed after it
/// attached them and before it recorded them.
fn remove_orphan_links(paths: &Paths, state: &State) -> Result<(), LoaderError> {
    let Some(pins) = Dir::open(&paths.pins)? else {
        return Ok(());
    };
    for name in pins.entries()? {
        let Some(iface) = name
            .strip_prefix(EGRESS_LINK_PREFIX)
            .or_else(|| name.strip_prefix(LINK_PREFIX))
        else {
            continue;
        };
        if !state.attachments.iter().any(|a| a.iface == iface) {
            unpin_link(&pins.path().join(&name))?;
        }
    }
    Ok(())
}

/// Puts a policy into the inactive generation of the filter at `paths`, attaches the
/// interfaces it lacks, switches, and detaches the interfaces no longer wanted. Until the
/// switch, an error or an interruption undoes the attaching and leaves everything as it was.
fn update(
    paths: &Paths,
    mut state: State,
    req: ApplyRequest<'_>,
    (record, defence): (PolicyRecord, DefenceRecord),
    host_except: &[Cidr],
    signals: &Signals,
) -> Result<ApplyOutcome, LoaderError> {
    remove_orphan_links(paths, &state)?;
    let mut tables = open_tables(paths)?;
    let generation = tables.stage_with(req.compiled, host_except)?;
    signals.check("update-staged")?;
    // What a trial's rollback puts back: the interfaces as they are before it.
    let before = state.attachments.clone();

    // The interfaces on record: kept (wanted, in an accepted mode, and both links really
    // attached to them), to attach again (wanted, but not so), and no longer wanted.
    let pins = Dir::open(&paths.pins)?;
    let egress_request = EgressAttach::from_env()?;
    let (mut kept, mut again, mut unwanted) = (Vec::new(), Vec::new(), Vec::new());
    for old in std::mem::take(&mut state.attachments) {
        if !req.interfaces.contains(&old.iface) {
            unwanted.push(old);
        } else {
            let filtering = problem(pins.as_ref(), &old).is_none();
            if filtering && req.mode.accepts(old.mode) && egress_request.accepts(old.egress.mode())
            {
                kept.push(old);
            } else {
                again.push((old, filtering));
            }
        }
    }
    let mut added: Vec<Attachment> = Vec::new();
    let attached = (|| {
        for iface in req.interfaces {
            if kept.iter().any(|a| &a.iface == iface) {
                continue;
            }
            // A dead link, or one in the other mode: it has to go before the new one (a
            // clsact filter is replaced in place, or removed once a tcx link replaces it).
            let old = again.iter().find(|(a, _)| &a.iface == iface);
            if old.is_some() {
                unpin_links(paths, iface)?;
            }
            let ours = old.is_some_and(|(a, _)| a.egress.created_qdisc());
            added.push(attach_pinned(paths, iface, req.mode, ours)?);
        }
        signals.check("update-attached")?;
        // Record the new generation before switching: whichever generation is active, its
        // description is on file, and so is every interface attached. So is a trial, before
        // its policy is in force.
        state.generations[generation as usize] = Some(record.clone());
        state.defences[generation as usize] = Some(defence.clone());
        if let Some(t) = &req.trial {
            state.trial = Some(t.record(generation, Some(tables.active()), &before));
        }
        state.netns_cookie = Some(paths.cookie);
        state.attachments = kept
            .iter()
            .chain(&added)
            .chain(&unwanted)
            .cloned()
            .collect();
        state.write(&paths.state)
    })();
    if let Err(e) = attached {
        // Back to how it was: what this update attached goes, and an interface it moved to
        // another mode goes back to the one it had (one whose links were dead stays so, as
        // it was).
        for a in &added {
            let _ = detach_interface(paths, a);
        }
        for (old, filtering) in &again {
            if *filtering && !paths.link(&old.iface).exists() {
                let back = match old.mode {
                    AttachMode::Native => Mode::Native,
                    AttachMode::Generic => Mode::Generic,
                };
                let _ = attach_pinned(paths, &old.iface, back, old.egress.created_qdisc());
            }
        }
        return Err(e);
    }
    // Connections opened while the rules let their replies through, or while `replies:
    // drop`, are in no flow yet: before the switch, so that none of their replies is dropped.
    let seeded = match pinned_flow_table(paths) {
        Ok(mut table) => seed_connections(&mut table, req.compiled),
        Err(e) => Err(e.to_string()),
    };
    tables.switch_to(generation);
    signals.pause("update-switched");
    let mut notes: Vec<String> = seed_note(seeded).into_iter().collect();
    // Once the new policy is in force: the state of doors it no longer has, and scan blocks
    // when it has no `scan:`, go. Best effort: the kernel never reads what is left.
    match purge_pinned(paths, &Purge::of(req.compiled)) {
        Ok(purged) => notes.extend(purged.notes()),
        Err(e) => notes.push(format!(
            "could not remove the defence state the new policy no longer uses: {e}"
        )),
    }

    let mut detached = Vec::new();
    for old in unwanted {
        detach_interface(paths, &old)?;
        detached.push(old.iface);
    }
    let attachments: Vec<Attachment> = kept.into_iter().chain(added).collect();
    state.attachments = attachments.clone();
    state.write(&paths.state)?;
    Ok(ApplyOutcome {
        fresh: false,
        generation,
        program_id: state.program_id,
        policy: record,
        attachments,
        detached,
        notes,
    })
}

/// What one `detach` did.
#[derive(Debug)]
pub struct DetachOutcome {
    /// The interfaces the filter was removed from.
    pub detached: Vec<String>,
    /// Half-built filters of interrupted applies that were removed.
    pub half_built: Vec<PathBuf>,
}

/// Removes the filter from `ifaces`, or from every interface and entirely when `None`, and
/// any half-built filter an interrupted apply left. Naming an interface the filter is not on
/// changes nothing and fails with [`LoaderError::NotAttached`].
pub fn detach(ifaces: Option<&[String]>) -> Result<DetachOutcome, LoaderError> {
    let paths = Paths::current()?;
    paths.check()?;
    let _lock = paths.lock()?;
    detach_locked(&paths, ifaces)
}

/// [`detach`], with the namespace's lock already held (a trial's rollback holds it).
pub(super) fn detach_locked(
    paths: &Paths,
    ifaces: Option<&[String]>,
) -> Result<DetachOutcome, LoaderError> {
    let state = State::read(&paths.state)?;
    let half_built = remove_abandoned_temp_pins(paths)?;
    if !paths.pins.exists() && state.is_none() {
        if half_built.is_empty() {
            return Err(LoaderError::NotLoaded(paths.pins.clone()));
        }
        // The clsact filters the interrupted apply attached hold no pin.
        remove_unrecorded_clsact_filters(&[]);
        return Ok(DetachOutcome {
            detached: Vec::new(),
            half_built,
        });
    }
    // The records of a deleted namespace whose inode this one reuses: nothing of them is
    // attached here, and all of them go.
    let mut state = match state {
        Some(state) if belongs_here(paths, &state)? => state,
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
    for a in state
        .attachments
        .iter()
        .filter(|a| removing.contains(&a.iface))
    {
        detach_interface(paths, a)?;
    }
    state.attachments.retain(|a| !removing.contains(&a.iface));
    if ifaces.is_none() || !half_built.is_empty() {
        remove_unrecorded_clsact_filters(&state.attachments);
    }
    if state.attachments.is_empty() {
        if let Some(root) = pin_root()? {
            remove_pins(&root, &paths.pins_name())?;
        }
        State::remove(&paths.state)?;
    } else {
        state.write(&paths.state)?;
    }
    Ok(DetachOutcome {
        detached: removing,
        half_built,
    })
}
