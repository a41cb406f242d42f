//! Confirm or roll back (`portfw apply --try`): a policy put in force on trial, its deadline
//! on file in the state, and the one atomic switch back to the generation before it.
//!
//! The trial is written into the state before its policy is switched in, so whoever finds
//! it past its deadline can roll it back: the watchdog process `apply` leaves behind, the
//! agent, or the next `apply` or `confirm`. Every rollback holds the namespace's lock and
//! checks the trial's id first, so it happens once. The previous policy is still whole in
//! the inactive generation (an apply writes only there, and applies are refused while a
//! trial is pending), so rolling back compiles nothing: it switches generations, then puts
//! the interfaces back as they were.
use std::time::{SystemTime, UNIX_EPOCH};

use super::{
    apply::{detach_interface, detach_locked, unpin_links},
    attach::{Mode, attach_pinned, qdisc_ours},
    bpffs::Paths,
    error::LoaderError,
    fsafe::Dir,
    health::problem,
    iface::ifindex,
    object::open_tables,
    state::{AttachMode, Attachment, State, Trial},
};
use crate::events::datetime;

/// What `apply --try` asks for, on top of the apply itself.
#[derive(Clone, Debug)]
pub struct TrialRequest {
    pub id: String,
    /// Seconds since the Unix epoch.
    pub deadline: u64,
    /// The process that will roll the trial back at the deadline.
    pub watchdog: Option<u32>,
}

impl TrialRequest {
    /// The record of this trial, whose policy went into `generation`.
    pub(super) fn record(
        &self,
        generation: u32,
        rollback_to: Option<u32>,
        previous: &[Attachment],
    ) -> Trial {
        Trial {
            id: self.id.clone(),
            started_at: now(),
            deadline: self.deadline,
            generation,
            rollback_to,
            previous_attachments: previous.to_vec(),
            watchdog: self.watchdog,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrialError {
    #[error(
        "a trial is pending: {file} is on trial until {deadline} ({left} s left), then rolled \
         back. Run `portfw confirm` to keep it, or let it roll back, then apply again: applying \
         now would overwrite the previous policy, which the rollback returns to"
    )]
    Pending {
        file: String,
        deadline: String,
        left: u64,
    },
    #[error(
        "--try cannot protect this apply: {reason}, so a new program must be loaded and no \
         previous generation would remain to switch back to. Apply it without --try (or keep \
         `flows: max` as it is); nothing was changed"
    )]
    NeedsReload { reason: String },
    #[error("no trial is pending in this network namespace: nothing to confirm")]
    NoTrial,
    #[error("too late: the trial of {file} expired at {deadline} and was rolled back: {outcome}")]
    Expired {
        file: String,
        deadline: String,
        outcome: String,
    },
}

/// Seconds since the Unix epoch.
pub(super) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What a rollback did.
#[derive(Clone, Debug)]
pub struct RolledBack {
    /// The trial undone.
    pub trial: Trial,
    /// The file of the policy that was on trial.
    pub file: String,
    /// Human account: "generation 0 (/etc/portfw/old.yaml) is in force again", or
    /// "the filter was removed".
    pub outcome: String,
    /// Things worth saying (an interface that could not be restored).
    pub notes: Vec<String>,
}

/// What a confirmation kept.
#[derive(Clone, Debug)]
pub struct Confirmed {
    pub trial: Trial,
    pub file: String,
}

fn trial_file(state: &State, trial: &Trial) -> String {
    state
        .record(trial.generation)
        .map_or_else(|| "the policy".to_string(), |r| r.file.clone())
}

/// Called by `apply` with the lock held: a pending trial refuses the apply; one past its
/// deadline is rolled back first (its watchdog is late or gone), and the state re-read.
pub(super) fn settle(paths: &Paths, state: Option<State>) -> Result<Option<State>, LoaderError> {
    let Some(trial) = state.as_ref().and_then(|s| s.trial.clone()) else {
        return Ok(state);
    };
    let Some(state) = state else {
        return Ok(None);
    };
    if !paths.prog().exists() {
        // The pins are gone, and the trial with them: there is nothing to roll back.
        return Ok(Some(state));
    }
    let now = now();
    if now < trial.deadline {
        return Err(TrialError::Pending {
            file: trial_file(&state, &trial),
            deadline: datetime(trial.deadline),
            left: trial.deadline - now,
        }
        .into());
    }
    roll_back_locked(paths, state)?;
    State::read(&paths.state)
}

/// Keeps the policy on trial: clears the trial, so no rollback happens, and stops its
/// watchdog. Past the deadline it is too late: the trial is rolled back instead and the
/// answer is [`TrialError::Expired`].
pub fn confirm() -> Result<Confirmed, LoaderError> {
    let paths = Paths::current()?;
    let _lock = paths.lock()?;
    let Some(mut state) = State::read(&paths.state)? else {
        return Err(TrialError::NoTrial.into());
    };
    let Some(trial) = state.trial.clone() else {
        return Err(TrialError::NoTrial.into());
    };
    let file = trial_file(&state, &trial);
    if now() >= trial.deadline && paths.prog().exists() {
        let done = roll_back_locked(&paths, state)?;
        return Err(TrialError::Expired {
            file,
            deadline: datetime(trial.deadline),
            outcome: done.outcome,
        }
        .into());
    }
    state.trial = None;
    state.write(&paths.state)?;
    stop_watchdog(&trial);
    Ok(Confirmed { trial, file })
}

/// Rolls back the pending trial if its deadline has passed; with `id`, only the trial of
/// that id (a watchdog's). `None` when there was nothing due.
pub fn roll_back_due(id: Option<&str>) -> Result<Option<RolledBack>, LoaderError> {
    let paths = Paths::current()?;
    // Cheap look without the lock first: the agent asks every second.
    match State::read(&paths.state)?.and_then(|s| s.trial) {
        Some(t) if now() >= t.deadline && id.is_none_or(|id| id == t.id) => {}
        _ => return Ok(None),
    }
    let _lock = paths.lock()?;
    let Some(state) = State::read(&paths.state)? else {
        return Ok(None);
    };
    match &state.trial {
        Some(t) if now() >= t.deadline && id.is_none_or(|id| id == t.id) => {}
        _ => return Ok(None),
    }
    if !paths.prog().exists() {
        return Ok(None);
    }
    roll_back_locked(&paths, state).map(Some)
}

/// Whether the trial `id` is on file in this namespace (no lock: a glance).
pub fn trial_recorded(id: &str) -> Result<bool, LoaderError> {
    let paths = Paths::current()?;
    Ok(State::read(&paths.state)?
        .and_then(|s| s.trial)
        .is_some_and(|t| t.id == id))
}

/// The rollback itself, lock held, `state` holding the trial. One atomic switch back to
/// the previous generation (or, with none, removing the filter), then the interfaces as
/// they were, then the trial cleared: a rollback cut short is done again by the next one.
fn roll_back_locked(paths: &Paths, mut state: State) -> Result<RolledBack, LoaderError> {
    let Some(trial) = state.trial.clone() else {
        return Err(LoaderError::Internal("rollback without a trial".into()));
    };
    let file = trial_file(&state, &trial);
    let Some(generation) = trial.rollback_to else {
        detach_locked(paths, None)?;
        stop_watchdog(&trial);
        return Ok(RolledBack {
            trial,
            file,
            outcome: "the filter was removed (there was none before the trial)".into(),
            notes: Vec::new(),
        });
    };
    open_tables(paths)?.switch_to(generation);
    let notes = restore_attachments(paths, &mut state, &trial.previous_attachments)?;
    state.trial = None;
    state.write(&paths.state)?;
    stop_watchdog(&trial);
    let previous = state
        .record(generation)
        .map_or_else(String::new, |r| format!(" ({})", r.file));
    Ok(RolledBack {
        trial,
        file,
        outcome: format!("generation {generation}{previous} is in force again"),
        notes,
    })
}

/// Puts the interfaces back as `previous` lists them: links the trial added go, links it
/// removed or re-made in another mode come back. An interface that no longer exists is
/// left out, with a note.
fn restore_attachments(
    paths: &Paths,
    state: &mut State,
    previous: &[Attachment],
) -> Result<Vec<String>, LoaderError> {
    let mut notes = Vec::new();
    let mut kept = Vec::new();
    let mut removed = Vec::new();
    // Kept as it is: an interface in the mode it had, whose programs are attached to it
    // (the health check `status` and an update use).
    let pins = Dir::open(&paths.pins)?;
    for current in std::mem::take(&mut state.attachments) {
        let same = previous
            .iter()
            .any(|p| p.iface == current.iface && p.mode == current.mode);
        if same && problem(pins.as_ref(), &current).is_none() {
            kept.push(current);
        } else if previous.iter().any(|p| p.iface == current.iface) {
            // Attached again below, its clsact filter (if any) replaced in place.
            unpin_links(paths, &current.iface)?;
            removed.push(current);
        } else {
            detach_interface(paths, &current)?;
        }
    }
    for p in previous {
        if kept.iter().any(|k| k.iface == p.iface) {
            continue;
        }
        if ifindex(&p.iface).is_err() {
            notes.push(format!(
                "interface {} is gone, so it could not be filtered again",
                p.iface
            ));
            continue;
        }
        let mode = match p.mode {
            AttachMode::Native => Mode::Native,
            AttachMode::Generic => Mode::Generic,
        };
        let ours = qdisc_ours(&removed, &p.iface) || qdisc_ours(previous, &p.iface);
        match attach_pinned(paths, &p.iface, mode, ours) {
            Ok(a) => kept.push(a),
            Err(e) => {
                // Nothing on record may go on running there.
                if let Some(current) = removed.iter().find(|c| c.iface == p.iface) {
                    let _ = detach_interface(paths, current);
                }
                notes.push(format!(
                    "interface {} could not be re-attached: {e}",
                    p.iface
                ));
            }
        }
    }
    state.attachments = kept;
    Ok(notes)
}

/// Asks the trial's watchdog to stop; it would find nothing to do anyway. Only a process
/// whose command line names the trial is signalled, never a stranger reusing its pid.
fn stop_watchdog(trial: &Trial) {
    let me = std::process::id();
    if let Some(pid) = trial.watchdog
        && pid != me
        && trial.watchdog_alive()
    {
        // SAFETY: a plain kill(2) on a pid we just checked.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    }
}
