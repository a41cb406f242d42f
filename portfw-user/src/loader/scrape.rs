//! [`status`](super::status) for a caller that asks often, as a metrics scraper does: the
//! state file is parsed again only when it changed. With thousands of rules, parsing their
//! records is most of a status; the counters and rule hits are read fresh every time.
use std::{fs, os::unix::fs::MetadataExt as _};

use super::{
    bpffs::Paths,
    error::LoaderError,
    query::{Status, loaded_state, status_of},
    state::State,
};

/// What `stat` says about the state file; any change means it was rewritten.
type Stamp = (u64, u64, i64, i64, u64);

/// Keeps the last state read, with the stamp of the file it came from.
#[derive(Debug, Default)]
pub struct StatusCache {
    netns: u64,
    stamp: Option<Stamp>,
    state: Option<State>,
}

impl StatusCache {
    /// The running filter's status, as [`super::status`] returns it.
    pub fn status(&mut self) -> Result<Status, LoaderError> {
        let paths = Paths::current()?;
        let stamp = fs::metadata(&paths.state)
            .ok()
            .map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.len()));
        let fresh = stamp.is_some() && stamp == self.stamp && paths.netns == self.netns;
        let state = match (&self.state, fresh && paths.prog().exists()) {
            (Some(state), true) => state,
            _ => {
                self.state = None;
                let state = loaded_state(&paths)?;
                self.netns = paths.netns;
                self.stamp = stamp;
                self.state.insert(state)
            }
        };
        status_of(&paths, state, Vec::new())
    }
}
