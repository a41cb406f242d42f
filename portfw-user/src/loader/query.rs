//! Questions to the running filter, changing nothing: `status`, the verdict for one packet,
//! and its event stream.
use std::{net::IpAddr, path::PathBuf};

use aya::maps::{MapData, RingBuf};
use portfw_common::{PortEntry, counter};

use super::{
    bpffs::Paths,
    error::LoaderError,
    object::{open_tables, pinned_counters, pinned_events},
    state::{Attachment, PolicyRecord, State},
};

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
    let counters = pinned_counters(&paths)?;
    Ok(Status {
        netns: paths.netns,
        pins: paths.pins.clone(),
        program_id: state.program_id,
        generation,
        attachments: state
            .attachments
            .iter()
            .map(|a| AttachmentStatus {
                live: a.is_live(),
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
    pub entry: PortEntry,
    /// The source trie decided (rather than the port table).
    pub by_source: bool,
    pub generation: u32,
    pub policy: Option<PolicyRecord>,
}

/// Looks a packet up in the running filter's active tables, as the kernel program does.
pub fn explain_running(
    proto_slot: u32,
    port: u16,
    source: IpAddr,
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

/// The pinned event ring buffer and the paths of the running filter.
pub fn open_events() -> Result<(RingBuf<MapData>, Paths), LoaderError> {
    let paths = Paths::current()?;
    if !paths.prog().exists() {
        return Err(LoaderError::NotLoaded(paths.pins));
    }
    Ok((pinned_events(&paths)?, paths))
}
