//! Watching the policy file (and the set files it names) for changes, through inotify.
//!
//! The directories are watched rather than the files: an editor that saves by writing a new
//! file and renaming it over the old one (vim, sed -i, Kubernetes swapping a ConfigMap's
//! `..data` link) replaces the inode a file watch would hold. Any change in a watched
//! directory only wakes the agent up; it then reads the files and compares what it read
//! with what it last examined, so unrelated files and half-written saves cost one read.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use notify::{
    EventKind, RecommendedWatcher, RecursiveMode, Watcher as _,
    event::{AccessKind, AccessMode},
};
use tokio::sync::mpsc::UnboundedSender;

/// The directory holding `file`, as inotify must be given it.
pub fn dir_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Whether an event can mean that a file's content changed. Opening or reading a file (the
/// agent's own reads among them) cannot.
fn may_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

pub struct Watcher {
    inner: RecommendedWatcher,
    dirs: BTreeSet<PathBuf>,
}

impl Watcher {
    /// Sends `()` on `wake` for every event that may change a watched directory's files.
    pub fn new(wake: UnboundedSender<()>) -> anyhow::Result<Self> {
        let inner = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // An error (an overflowed inotify queue, say) may hide a change: look anyway.
            if event.as_ref().map_or(true, |e| may_change(&e.kind)) {
                let _ = wake.send(());
            }
        })
        .context("starting inotify for the policy file")?;
        Ok(Self {
            inner,
            dirs: BTreeSet::new(),
        })
    }

    /// Watches the directories of `files` and no others. A directory that cannot be
    /// watched (it does not exist yet) is tried again on the next call; meanwhile the
    /// agent's once-a-second look at the files stands in.
    pub fn watch_files(&mut self, files: &[PathBuf]) -> Vec<String> {
        let wanted: BTreeSet<PathBuf> = files.iter().map(|f| dir_of(f)).collect();
        let mut problems = Vec::new();
        for gone in self.dirs.difference(&wanted).cloned().collect::<Vec<_>>() {
            let _ = self.inner.unwatch(&gone);
            self.dirs.remove(&gone);
        }
        for dir in wanted {
            if self.dirs.contains(&dir) {
                continue;
            }
            match self.inner.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.dirs.insert(dir);
                }
                Err(e) => problems.push(format!("cannot watch {}: {e}", dir.display())),
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use notify::{
        EventKind,
        event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode},
    };

    use super::{dir_of, may_change};

    #[test]
    fn reads_do_not_count_as_changes_but_writes_and_renames_do() {
        assert!(!may_change(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!may_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(may_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(may_change(&EventKind::Modify(ModifyKind::Name(
            RenameMode::To
        ))));
        assert!(may_change(&EventKind::Create(CreateKind::File)));
    }

    #[test]
    fn a_bare_file_name_lives_in_the_current_directory() {
        assert_eq!(dir_of(Path::new("policy.yaml")), PathBuf::from("."));
        assert_eq!(
            dir_of(Path::new("/etc/portfw/policy.yaml")),
            PathBuf::from("/etc/portfw")
        );
    }
}
