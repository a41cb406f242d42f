//! Questions to the running filter, changing nothing: which policy it runs (`status`,
//! `explain` and `events` all ask [`running_policy`]), its counters, the verdict for one
//! packet, and its event stream.
use std::{net::IpAddr, path::PathBuf};

use aya::maps::{MapData, RingBuf};
use portfw_common::{PortEntry, action, counter};

use super::{
    bpffs::{Paths, pin_root},
    defences::{BlockStatus, OpenDoor, live_blocks, live_doors},
    error::LoaderError,
    flows::{FlowRecord, FlowTableStatus, live_flows, table_status},
    fsafe::Dir,
    health::{belongs_here, problem, temp_pins},
    object::{
        monotonic_ns, open_tables, pinned_active, pinned_counters, pinned_events, pinned_settings,
    },
    state::{Attachment, EgressMode, PolicyRecord, State, Trial},
};

/// The policy the running filter enforces.
#[derive(Clone, Debug)]
pub struct RunningPolicy {
    /// The table generation the kernel reads now.
    pub generation: u32,
    /// What `apply` recorded about that generation, when it is on file.
    pub policy: Option<PolicyRecord>,
}

/// The state file of the filter pinned at `paths`; [`LoaderError::NotLoaded`] without one.
pub(super) fn loaded_state(paths: &Paths) -> Result<State, LoaderError> {
    paths.check()?;
    let state = State::read(&paths.state)?
        .filter(|_| paths.prog().exists())
        .ok_or_else(|| LoaderError::NotLoaded(paths.pins.clone()))?;
    if !belongs_here(paths, &state)? {
        return Err(LoaderError::Foreign(paths.pins.clone()));
    }
    Ok(state)
}

/// The active generation and its record in `state`.
fn running_in(paths: &Paths, state: &State) -> Result<RunningPolicy, LoaderError> {
    let generation = pinned_active(paths)?;
    Ok(RunningPolicy {
        generation,
        policy: state.record(generation).cloned(),
    })
}

/// The running policy's rules, by generation: the generation the filter pinned at `paths`
/// reads now (one lookup in its PFW_ACTIVE map) and what `apply` recorded about it.
pub fn running_policy(paths: &Paths) -> Result<RunningPolicy, LoaderError> {
    running_in(paths, &loaded_state(paths)?)
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
    /// The flow table of replies to the host's own connections.
    pub flows: FlowTableStatus,
    /// Half-built filters that interrupted applies left (their links may still be attached).
    pub half_built: Vec<PathBuf>,
    /// The running policy is in audit mode (`enforce: false`): its drops pass as would-drops.
    pub audit: bool,
    /// A policy on trial (`apply --try`), rolled back at its deadline unless confirmed.
    pub trial: Option<TrialStatus>,
    /// The sources blocked now (by the scan guard or `portfw block`), by address; expired
    /// blocks are left out.
    pub blocks: Vec<BlockStatus>,
    /// The knock doors open now, and for which source.
    pub doors: Vec<OpenDoor>,
    /// The addresses the host depends on that the running policy's scan guard never blocks
    /// (added to its `except` by apply); empty without `scan:`.
    pub host_except: Vec<String>,
}

impl Status {
    /// Every interface on record is really filtered, and no half-built filter is left over.
    pub fn all_filtered(&self) -> bool {
        self.half_built.is_empty() && self.attachments.iter().all(|a| a.filtered)
    }
}

/// A pending trial, as `portfw status` shows it.
#[derive(Debug, serde::Serialize)]
pub struct TrialStatus {
    pub id: String,
    /// The policy on trial.
    pub file: String,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    /// Seconds since the Unix epoch.
    pub deadline: u64,
    /// Seconds until the rollback; 0 once it is due.
    pub seconds_left: u64,
    /// The generation the rollback switches back to; `null`: the rollback removes the
    /// filter, which the trial loaded.
    pub rollback_to: Option<u32>,
    /// The file of the policy the rollback returns to.
    pub rollback_file: Option<String>,
    pub watchdog: Option<u32>,
    /// The watchdog process still waits for the deadline. When it is gone, the agent or the
    /// next `portfw apply` or `portfw confirm` performs an overdue rollback.
    pub watchdog_alive: bool,
}

impl TrialStatus {
    fn new(state: &State, trial: &Trial, now: u64) -> Self {
        Self {
            id: trial.id.clone(),
            file: state
                .record(trial.generation)
                .map_or_else(String::new, |r| r.file.clone()),
            started_at: trial.started_at,
            deadline: trial.deadline,
            seconds_left: trial.deadline.saturating_sub(now),
            rollback_to: trial.rollback_to,
            rollback_file: trial
                .rollback_to
                .and_then(|g| state.record(g))
                .map(|r| r.file.clone()),
            watchdog: trial.watchdog,
            watchdog_alive: trial.watchdog_alive(),
        }
    }
}

#[derive(Debug, serde::Serialize)]
pub struct AttachmentStatus {
    #[serde(flatten)]
    pub attachment: Attachment,
    /// How the egress program that records the host's flows is attached: `tcx` or
    /// `clsact` (the details, a clsact filter's priority and handle, are in `egress`).
    pub egress_mode: EgressMode,
    /// The interface still exists under its name.
    pub live: bool,
    /// Both links are attached to the interface, as the kernel reports them: the filter
    /// judges its traffic.
    pub filtered: bool,
    /// Why it is not filtered, when it is not.
    pub problem: Option<String>,
}

/// The temporary pin directories of fresh applies in this namespace.
#[derive(Default)]
struct TempFilters {
    /// Half-built filters whose apply is gone.
    abandoned: Vec<PathBuf>,
    /// One being built now, with its builder's pid.
    building: Option<(PathBuf, i32)>,
}

fn temp_filters(paths: &Paths) -> Result<TempFilters, LoaderError> {
    let Some(root) = pin_root()? else {
        return Ok(TempFilters::default());
    };
    let mut found = TempFilters::default();
    for (name, alive) in temp_pins(&root, paths)? {
        let dir = root.path().join(&name);
        if alive {
            let pid = name.rsplit('-').next().and_then(|p| p.parse().ok());
            found.building = pid.map(|pid| (dir, pid));
        } else {
            found.abandoned.push(dir);
        }
    }
    Ok(found)
}

pub fn status() -> Result<Status, LoaderError> {
    let paths = Paths::current()?;
    paths.check()?;
    let TempFilters {
        abandoned: half_built,
        building,
    } = temp_filters(&paths)?;
    let state = match (loaded_state(&paths), half_built.first(), building) {
        (Err(LoaderError::NotLoaded(_)), Some(dir), _) => {
            return Err(LoaderError::HalfBuilt(dir.clone()));
        }
        (Err(LoaderError::NotLoaded(_)), None, Some((dir, pid))) => {
            return Err(LoaderError::Building { dir, pid });
        }
        (result, _, _) => result?,
    };
    status_of(&paths, &state, half_built)
}

/// [`status`], with the state file already read (the agent keeps it between scrapes) and
/// the half-built filters found.
pub(super) fn status_of(
    paths: &Paths,
    state: &State,
    half_built: Vec<PathBuf>,
) -> Result<Status, LoaderError> {
    let running = running_in(paths, state)?;
    let rules = running.policy.as_ref().map_or(0, |p| p.rules.len());
    let rule_hits = open_tables(paths)?.rule_hits(rules);
    let counters = pinned_counters(paths)?;
    let pins = Dir::open(&paths.pins)?;
    let now = monotonic_ns();
    Ok(Status {
        netns: paths.netns,
        pins: paths.pins.clone(),
        program_id: state.program_id,
        generation: running.generation,
        attachments: state
            .attachments
            .iter()
            .map(|a| {
                let problem = problem(pins.as_ref(), a);
                AttachmentStatus {
                    egress_mode: a.egress.mode(),
                    live: a.is_live(),
                    filtered: problem.is_none(),
                    problem,
                    attachment: a.clone(),
                }
            })
            .collect(),
        policy: running.policy,
        counters: counter::NAMES
            .iter()
            .zip(counters)
            .filter(|(name, _)| !name.starts_with("reserved"))
            .map(|(name, v)| (name.to_string(), v))
            .collect(),
        rule_hits,
        flows: table_status(paths)?,
        half_built,
        audit: pinned_settings(paths, running.generation)?.audit != 0,
        trial: state.trial.as_ref().map(|t| {
            // Rounded up, so that a trial of N seconds never shows more than N left.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs_f64().ceil() as u64);
            TrialStatus::new(state, t, now)
        }),
        blocks: live_blocks(paths, now)?,
        doors: live_doors(paths, state, now)?,
        host_except: state
            .defences(running.generation)
            .map(|d| d.host_except.clone())
            .unwrap_or_default(),
    })
}

/// The live flows of the filter in this network namespace, oldest first.
pub fn flows() -> Result<Vec<FlowRecord>, LoaderError> {
    let paths = Paths::current()?;
    loaded_state(&paths)?;
    live_flows(&paths)
}

/// What the running filter decides for one packet.
pub struct RunningVerdict {
    pub entry: PortEntry,
    /// The source trie decided (rather than the port table).
    pub by_source: bool,
    pub running: RunningPolicy,
    /// The running policy passes replies to flows the host opened (`replies: allow`).
    pub replies: bool,
}

/// Looks a packet up in the running filter's active tables, as the kernel program does.
pub fn explain_running(
    proto_slot: u32,
    port: u16,
    source: IpAddr,
) -> Result<RunningVerdict, LoaderError> {
    let paths = Paths::current()?;
    let running = running_policy(&paths)?;
    let (entry, by_source) = open_tables(&paths)?.lookup(proto_slot, port, source)?;
    let replies = pinned_settings(&paths, running.generation)?.replies == action::ALLOW;
    Ok(RunningVerdict {
        entry,
        by_source,
        running,
        replies,
    })
}

/// The pinned event ring buffer, and the paths to ask [`running_policy`] with.
pub fn open_events() -> Result<(RingBuf<MapData>, Paths), LoaderError> {
    let paths = Paths::current()?;
    loaded_state(&paths)?;
    Ok((pinned_events(&paths)?, paths))
}
