//! Whether what is on record really filters: that the records belong to this network
//! namespace (not to a deleted one whose inode it reuses), that each interface's links (and
//! clsact egress filter) are attached to it, and which pin directories are the leftovers of dead namespaces.
use std::{
    collections::HashSet,
    fs,
    os::{fd::AsFd as _, unix::fs::MetadataExt as _},
};

use super::{
    bpffs::{EGRESS_LINK_PREFIX, LINK_PREFIX, Paths},
    bpfsys::{LinkKind, LinkTarget, link_target},
    error::LoaderError,
    fsafe::Dir,
    iface::ifindex,
    state::{Attachment, Egress, State},
    tc::{self, Hook},
};

/// Where the link pinned as `name` in `dir` is attached; `None` when there is no such pin.
fn pinned_target(dir: &Dir, name: &str) -> Result<Option<LinkTarget>, LoaderError> {
    let Some(fd) = dir.open_pin(name)? else {
        return Ok(None);
    };
    link_target(fd.as_fd())
        .map(Some)
        .map_err(|source| LoaderError::Io {
            what: format!(
                "asking where {} is attached",
                dir.path().join(name).display()
            ),
            source,
        })
}

/// Why an interface on record is not filtered, in words for `status`; `None` when both its
/// programs are attached to it (its links, or its XDP link and its clsact filter).
pub(super) fn problem(pins: Option<&Dir>, attachment: &Attachment) -> Option<String> {
    let iface = &attachment.iface;
    let now = ifindex(iface).ok();
    let Some(pins) = pins else {
        return Some("its pins are missing".into());
    };
    let mut links = vec![(LINK_PREFIX, LinkKind::Xdp, "XDP")];
    if attachment.egress == Egress::Tcx {
        links.push((EGRESS_LINK_PREFIX, LinkKind::Tcx, "tcx egress"));
    }
    for (prefix, kind, what) in links {
        let target = match pinned_target(pins, &format!("{prefix}{iface}")) {
            Ok(Some(target)) => target,
            Ok(None) => return Some(format!("its {what} link is not pinned")),
            Err(e) => return Some(format!("its {what} link cannot be read ({e})")),
        };
        if target.kind != kind {
            return Some(format!(
                "its {what} link is of another kind ({:?})",
                target.kind
            ));
        }
        if target.ifindex == attachment.ifindex && now == Some(attachment.ifindex) {
            continue;
        }
        return Some(match now {
            None => "the interface no longer exists".into(),
            Some(index) if index != attachment.ifindex => format!(
                "`{iface}` was re-created (ifindex {} then, {index} now) and the filter went \
                 with the old device",
                attachment.ifindex
            ),
            Some(_) if target.ifindex == 0 => {
                format!("`{iface}` was re-created and its {what} link went with the old device")
            }
            Some(_) => format!(
                "its {what} link is attached to ifindex {} instead",
                target.ifindex
            ),
        });
    }
    clsact_problem(attachment)
}

/// Why the clsact egress filter on record for `attachment` (whose interface is checked to
/// be the one on record) does not record its flows; `None` when it does, or when the
/// interface has a tcx link instead.
fn clsact_problem(attachment: &Attachment) -> Option<String> {
    let Egress::Clsact {
        priority,
        handle,
        program_id,
        ..
    } = attachment.egress
    else {
        return None;
    };
    let filters = match tc::filters(attachment.ifindex, Hook::Egress) {
        Ok(filters) => filters,
        Err(e) => return Some(format!("its clsact egress filter cannot be read ({e})")),
    };
    let Some(filter) = filters
        .iter()
        .find(|f| f.priority == priority && f.handle == handle)
    else {
        return Some(format!(
            "its clsact egress filter (priority {priority}, handle {handle:#x}) is missing"
        ));
    };
    if filter.program_id != Some(program_id) {
        return Some(format!(
            "its clsact egress filter (priority {priority}, handle {handle:#x}) runs {} \
             instead of portfw's program {program_id}",
            match filter.program_id {
                Some(id) => format!("program {id}"),
                None => format!("a {} classifier", filter.kind),
            }
        ));
    }
    if !filter.direct_action {
        return Some(format!(
            "its clsact egress filter (priority {priority}, handle {handle:#x}) is not in \
             direct-action mode"
        ));
    }
    None
}

/// Whether the records `state` of the filter at `paths` belong to this namespace. A state
/// file records the namespace's cookie, which, unlike its inode, is never reused; one from
/// before cookies were recorded belongs here if any of its links is attached to an interface
/// of this namespace (those of a deleted namespace are all attached to nothing).
pub(super) fn belongs_here(paths: &Paths, state: &State) -> Result<bool, LoaderError> {
    if let Some(cookie) = state.netns_cookie {
        return Ok(cookie == paths.cookie);
    }
    let pins = Dir::open(&paths.pins)?;
    Ok(state
        .attachments
        .iter()
        .any(|a| problem(pins.as_ref(), a).is_none()))
}

/// The inodes of the network namespaces that have a handle in /run/netns.
fn named_netns_inodes() -> HashSet<u64> {
    let mut live = HashSet::new();
    if let Ok(handles) = fs::read_dir("/run/netns") {
        for handle in handles.flatten() {
            if let Ok(m) = fs::metadata(handle.path()) {
                live.insert(m.ino());
            }
        }
    }
    live
}

/// The inodes of the network namespaces some process is in (any of its threads).
fn inhabited_netns_inodes() -> HashSet<u64> {
    let mut live = HashSet::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return live;
    };
    for proc in procs.flatten() {
        if !proc
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let Ok(tasks) = fs::read_dir(proc.path().join("task")) else {
            continue;
        };
        for task in tasks.flatten() {
            if let Ok(m) = fs::metadata(task.path().join("ns/net")) {
                live.insert(m.ino());
            }
        }
    }
    live
}

/// Whether the pin directory `dir` is the leftover of a dead namespace: it has links, and
/// every one is attached to nothing (the interfaces went with their namespace).
fn is_dead(dir: &Dir) -> Result<bool, LoaderError> {
    let mut links = 0;
    for name in dir.entries()? {
        if !(name.starts_with(LINK_PREFIX) || name.starts_with(EGRESS_LINK_PREFIX)) {
            continue;
        }
        links += 1;
        if pinned_target(dir, &name)?.is_some_and(|t| t.ifindex != 0) {
            return Ok(false);
        }
    }
    Ok(links > 0)
}

/// The pin directories in `root`, other than those of the namespace at `paths`, named after a
/// namespace that no process or handle holds (`<inode>`, and `tmp-<inode>-<pid>` of an apply
/// that is gone), each with that inode. Whether one is really a leftover is for
/// [`is_leftover`] to say, under that namespace's lock.
pub(super) fn leftover_candidates(
    root: &Dir,
    paths: &Paths,
) -> Result<Vec<(String, u64)>, LoaderError> {
    let mut candidates = Vec::new();
    for name in root.entries()? {
        let inode = match name.strip_prefix("tmp-") {
            None => name.parse::<u64>().ok(),
            Some(rest) => rest.split_once('-').and_then(|(inode, pid)| {
                let pid = pid.parse::<i32>().ok()?;
                // SAFETY: signal 0 only checks whether the process exists.
                let alive = unsafe { libc::kill(pid, 0) } == 0
                    || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
                if alive {
                    None
                } else {
                    inode.parse::<u64>().ok()
                }
            }),
        };
        if let Some(inode) = inode.filter(|&i| i != paths.netns) {
            candidates.push((name, inode));
        }
    }
    // A namespace held only by a descriptor or a bind mount elsewhere is missed here; the
    // links of `is_leftover` still have to agree. The handles are cheap to look at, the
    // processes less so: only for what the handles leave.
    if !candidates.is_empty() {
        let named = named_netns_inodes();
        candidates.retain(|(_, inode)| !named.contains(inode));
    }
    if !candidates.is_empty() {
        let inhabited = inhabited_netns_inodes();
        candidates.retain(|(_, inode)| !inhabited.contains(inode));
    }
    Ok(candidates)
}

/// Whether the pin directory `name` in `root`, one of [`leftover_candidates`], is the
/// leftover of a dead namespace: a temporary one whose apply is gone (nobody will ever see
/// its namespace's status), or one that has links, every one attached to nothing (the
/// interfaces went with their namespace). A directory portfw must not touch is not: it is
/// left for its own namespace to refuse.
pub(super) fn is_leftover(root: &Dir, name: &str) -> bool {
    match root.sub(name) {
        Ok(Some(_)) if name.starts_with("tmp-") => true,
        Ok(Some(dir)) => is_dead(&dir).unwrap_or(false),
        _ => false,
    }
}

/// The temporary pin directories of fresh applies in the namespace at `paths`
/// (`tmp-<inode>-<pid>`), each with whether the process that builds it still runs. One whose
/// builder is gone is the half-built filter of an interrupted apply, and may still be
/// attached.
pub(super) fn temp_pins(root: &Dir, paths: &Paths) -> Result<Vec<(String, bool)>, LoaderError> {
    let prefix = format!("tmp-{}-", paths.netns);
    let mut found = Vec::new();
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
        found.push((name, pid_alive(pid)));
    }
    Ok(found)
}

/// Whether process `pid` exists.
pub(super) fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks whether the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
