//! Attaching the pinned programs again: to an interface that was deleted and re-created (the
//! agent), or back to one a rolled-back trial had taken the filter off. No policy is
//! written: the running one simply covers the interface again.

use super::{
    attach::{Mode, attach_pinned, qdisc_ours, unpin_link},
    bpffs::Paths,
    error::LoaderError,
    state::{Attachment, State},
};

/// Makes sure the running filter covers each of `ifaces`: an interface it is attached to
/// and that still exists under the same index is left alone; one that was re-created (new
/// index) or never attached gets the filter again. Returns the interfaces (re-)attached.
pub fn reattach(ifaces: &[String], mode: Mode) -> Result<Vec<Attachment>, LoaderError> {
    let paths = Paths::current()?;
    let _lock = paths.lock()?;
    let mut state = State::read(&paths.state)?
        .filter(|_| paths.prog().exists())
        .ok_or_else(|| LoaderError::NotLoaded(paths.pins.clone()))?;
    let mut done = Vec::new();
    for iface in ifaces {
        let live = state
            .attachments
            .iter()
            .any(|a| &a.iface == iface && a.is_live() && paths.link(iface).exists());
        if live {
            continue;
        }
        unpin_link(&paths.link(iface))?;
        unpin_link(&paths.egress_link(iface))?;
        // A clsact filter still there (the interface was not re-created) is replaced in place.
        let ours = qdisc_ours(&state.attachments, iface);
        state.attachments.retain(|a| &a.iface != iface);
        let attached = attach_pinned(&paths, iface, mode, ours);
        match attached {
            Ok(a) => {
                state.attachments.push(a.clone());
                done.push(a);
            }
            Err(e) => {
                state.write(&paths.state)?;
                return Err(e);
            }
        }
    }
    if !done.is_empty() {
        state.write(&paths.state)?;
    }
    Ok(done)
}
