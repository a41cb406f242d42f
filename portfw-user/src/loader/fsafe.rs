//! portfw's own directories (the pin root on bpffs, the state directory in /run), used without
//! following links: each is opened with `O_NOFOLLOW`, checked on the descriptor that is then
//! used (a directory, root's, writable by no one else), and what is in it is opened, renamed
//! and removed relative to that descriptor, so a link planted by another user is refused rather
//! than followed.
use std::{
    ffi::{CString, OsStr},
    fs::File,
    io::{self, Read as _, Write as _},
    os::{
        fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use super::{bpfsys, error::LoaderError};

/// State and lock files are small; anything bigger is not portfw's.
const MAX_FILE: u64 = 16 << 20;

/// A directory of portfw's, open and checked.
#[derive(Debug)]
pub(super) struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// The refusal of `path`, saying what is wrong with it.
fn refused(path: &Path, problem: impl Into<String>) -> LoaderError {
    LoaderError::Unsafe {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

fn c_name(path: &Path, name: &OsStr) -> Result<CString, LoaderError> {
    CString::new(name.as_bytes()).map_err(|_| refused(path, "has a NUL byte in its name"))
}

fn io_at(what: &str, path: &Path) -> impl FnOnce(io::Error) -> LoaderError {
    let what = format!("{what} {}", path.display());
    move |source| LoaderError::Io { what, source }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// `fstatat(dirfd, name, flags)`; `None` when there is no such entry.
fn stat_at(dirfd: RawFd, name: &CString, flags: libc::c_int) -> io::Result<Option<libc::stat>> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `name` is a valid C string and `st` is large enough for a stat.
    let rc = unsafe { libc::fstatat(dirfd, name.as_ptr(), st.as_mut_ptr(), flags) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENOENT) => Ok(None),
            _ => Err(err),
        };
    }
    // SAFETY: fstatat succeeded and filled the struct.
    Ok(Some(unsafe { st.assume_init() }))
}

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `fd` is open and `st` is large enough for a stat.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded and filled the struct.
    Ok(unsafe { st.assume_init() })
}

fn kind(st: &libc::stat) -> libc::mode_t {
    st.st_mode & libc::S_IFMT
}

/// What is wrong with a directory of portfw's that stat says is `st`, if anything: it must be
/// a directory, root's (or the user's running portfw), and not writable by group or others.
fn dir_problem(st: &libc::stat) -> Option<String> {
    match kind(st) {
        libc::S_IFDIR => {}
        libc::S_IFLNK => return Some("is a symbolic link".into()),
        _ => return Some("is not a directory".into()),
    }
    if st.st_uid != 0 && st.st_uid != euid() {
        return Some(format!("is owned by uid {}, not root", st.st_uid));
    }
    if st.st_mode & 0o022 != 0 {
        return Some(format!(
            "is writable by {} (mode {:04o})",
            if st.st_mode & 0o002 != 0 {
                "every user"
            } else {
                "its group"
            },
            st.st_mode & 0o7777
        ));
    }
    None
}

/// Every directory above `path` must be one that only root can rename entries in: root's, and
/// either writable by no one else or sticky (as /tmp and a default bpffs are), so that what
/// is checked under it stays what is used. A link on the way must be root's too (as the
/// `/var/run -> /run` of some systems is), and is then judged by what it points to.
fn check_ancestors(path: &Path) -> Result<(), LoaderError> {
    for dir in path.ancestors().skip(1) {
        if dir.as_os_str().is_empty() {
            continue;
        }
        let c = c_name(dir, dir.as_os_str())?;
        let Some(mut st) = stat_at(libc::AT_FDCWD, &c, libc::AT_SYMLINK_NOFOLLOW)
            .map_err(io_at("checking", dir))?
        else {
            continue;
        };
        for followed in [false, true] {
            if st.st_uid != 0 && st.st_uid != euid() {
                return Err(refused(
                    dir,
                    format!(
                        "is owned by uid {}, not root, so its owner could swap what portfw keeps \
                         under it",
                        st.st_uid
                    ),
                ));
            }
            if kind(&st) != libc::S_IFLNK || followed {
                break;
            }
            match stat_at(libc::AT_FDCWD, &c, 0).map_err(io_at("checking", dir))? {
                Some(target) => st = target,
                None => return Err(refused(dir, "is a dangling symbolic link")),
            }
        }
        if st.st_mode & 0o022 != 0 && st.st_mode & libc::S_ISVTX == 0 {
            return Err(refused(
                dir,
                format!(
                    "is writable by other users and not sticky (mode {:04o}), so they could swap \
                     what portfw keeps under it",
                    st.st_mode & 0o7777
                ),
            ));
        }
    }
    Ok(())
}

impl Dir {
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the directory at the absolute `path`; `None` when it does not exist.
    pub(super) fn open(path: &Path) -> Result<Option<Self>, LoaderError> {
        check_ancestors(path)?;
        let c = c_name(path, path.as_os_str())?;
        Self::open_at(libc::AT_FDCWD, &c, path.to_path_buf())
    }

    /// Opens the directory at the absolute `path`, creating it (mode 0700) when missing.
    pub(super) fn create(path: &Path) -> Result<Self, LoaderError> {
        check_ancestors(path)?;
        let c = c_name(path, path.as_os_str())?;
        Self::mkdir_at(libc::AT_FDCWD, &c, path)?;
        Self::open_at(libc::AT_FDCWD, &c, path.to_path_buf())?
            .ok_or_else(|| refused(path, "vanished as it was created"))
    }

    /// The subdirectory `name`; `None` when there is none.
    pub(super) fn sub(&self, name: &str) -> Result<Option<Self>, LoaderError> {
        let path = self.path.join(name);
        let c = c_name(&path, OsStr::new(name))?;
        Self::open_at(self.fd.as_raw_fd(), &c, path)
    }

    /// The subdirectory `name`, created (mode 0700) when missing.
    pub(super) fn create_sub(&self, name: &str) -> Result<Self, LoaderError> {
        let path = self.path.join(name);
        let c = c_name(&path, OsStr::new(name))?;
        Self::mkdir_at(self.fd.as_raw_fd(), &c, &path)?;
        Self::open_at(self.fd.as_raw_fd(), &c, path.clone())?
            .ok_or_else(|| refused(&path, "vanished as it was created"))
    }

    fn mkdir_at(dirfd: RawFd, c: &CString, path: &Path) -> Result<(), LoaderError> {
        // SAFETY: a valid C string; `dirfd` is AT_FDCWD or an open directory.
        if unsafe { libc::mkdirat(dirfd, c.as_ptr(), 0o700) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EEXIST) {
                return Err(io_at("creating", path)(err));
            }
        }
        Ok(())
    }

    fn open_at(dirfd: RawFd, c: &CString, path: PathBuf) -> Result<Option<Self>, LoaderError> {
        // Look first, for a plain message: the checks that count are on the opened fd.
        match stat_at(dirfd, c, libc::AT_SYMLINK_NOFOLLOW).map_err(io_at("checking", &path))? {
            None => return Ok(None),
            Some(st) if kind(&st) != libc::S_IFDIR => {
                return Err(refused(&path, dir_problem(&st).unwrap_or_default()));
            }
            Some(_) => {}
        }
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: a valid C string; `dirfd` is AT_FDCWD or an open directory.
        let fd = unsafe { libc::openat(dirfd, c.as_ptr(), flags) };
        if fd < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ENOENT) => Ok(None),
                Some(libc::ELOOP | libc::ENOTDIR) => {
                    Err(refused(&path, "is a symbolic link or not a directory"))
                }
                _ => Err(io_at("opening", &path)(err)),
            };
        }
        // SAFETY: openat returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let st = fstat(fd.as_raw_fd()).map_err(io_at("checking", &path))?;
        if let Some(problem) = dir_problem(&st) {
            return Err(refused(&path, problem));
        }
        Ok(Some(Self { fd, path }))
    }

    /// The names in this directory.
    pub(super) fn entries(&self) -> Result<Vec<String>, LoaderError> {
        // SAFETY: duplicating an fd we own; fdopendir takes the duplicate over.
        let dup = unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(io_at("reading", &self.path)(io::Error::last_os_error()));
        }
        // SAFETY: `dup` is an open directory fd, owned by the DIR from here on.
        let dir = unsafe { libc::fdopendir(dup) };
        if dir.is_null() {
            let err = io::Error::last_os_error();
            // SAFETY: fdopendir failed, so `dup` is still ours to close.
            unsafe { libc::close(dup) };
            return Err(io_at("reading", &self.path)(err));
        }
        // The duplicate shares the offset with our fd: start from the top.
        // SAFETY: `dir` is a valid DIR.
        unsafe { libc::rewinddir(dir) };
        let mut names = Vec::new();
        loop {
            // SAFETY: `dir` is a valid DIR; the entry stays valid until the next readdir.
            let entry = unsafe { libc::readdir(dir) };
            if entry.is_null() {
                break;
            }
            // SAFETY: readdir returned an entry whose d_name is NUL-terminated.
            let name = unsafe { std::ffi::CStr::from_ptr((*entry).d_name.as_ptr()) };
            let name = name.to_string_lossy();
            if name != "." && name != ".." {
                names.push(name.into_owned());
            }
        }
        // SAFETY: closing the DIR we opened (and with it `dup`).
        unsafe { libc::closedir(dir) };
        Ok(names)
    }

    /// What `name` is, without following it; `None` when there is no such entry.
    fn stat(&self, name: &str) -> Result<Option<libc::stat>, LoaderError> {
        let path = self.path.join(name);
        let c = c_name(&path, OsStr::new(name))?;
        stat_at(self.fd.as_raw_fd(), &c, libc::AT_SYMLINK_NOFOLLOW)
            .map_err(io_at("checking", &path))
    }

    /// `name` must be a file (or a bpffs pin, which is one): not a link, not a directory.
    fn check_file(&self, name: &str, st: &libc::stat) -> Result<(), LoaderError> {
        match kind(st) {
            libc::S_IFLNK => Err(refused(&self.path.join(name), "is a symbolic link")),
            libc::S_IFDIR => Err(refused(
                &self.path.join(name),
                "is a directory where portfw keeps a file",
            )),
            _ => Ok(()),
        }
    }

    fn unlink(&self, name: &str, flags: libc::c_int) -> Result<(), LoaderError> {
        let path = self.path.join(name);
        let c = c_name(&path, OsStr::new(name))?;
        // SAFETY: a valid C string relative to our open directory.
        if unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), flags) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ENOENT) {
                return Err(io_at("removing", &path)(err));
            }
        }
        Ok(())
    }

    /// Removes the file or pin `name` (nothing if there is none). A link or a directory under
    /// that name is refused, not removed.
    pub(super) fn remove_file(&self, name: &str) -> Result<(), LoaderError> {
        match self.stat(name)? {
            None => Ok(()),
            Some(st) => {
                self.check_file(name, &st)?;
                self.unlink(name, 0)
            }
        }
    }

    /// Removes the pin directory `name` and every pin in it: the pins for which `first` holds
    /// go first, each handed to `before` just before it is unlinked (links, so that the
    /// programs stop judging packets before their maps go). The directory must pass the checks
    /// of [`Dir::sub`], and hold only pins: anything else, a link above all, stops the removal
    /// before anything is removed.
    pub(super) fn remove_pins(
        &self,
        name: &str,
        first: impl Fn(&str) -> bool,
        before: impl Fn(&Dir, &str),
    ) -> Result<(), LoaderError> {
        let Some(dir) = self.sub(name)? else {
            return Ok(());
        };
        let mut names = dir.entries()?;
        for entry in &names {
            if let Some(st) = dir.stat(entry)? {
                dir.check_file(entry, &st)?;
            }
        }
        names.sort_by_key(|n| !first(n));
        for entry in &names {
            if first(entry) {
                before(&dir, entry);
            }
            dir.remove_file(entry)?;
        }
        self.unlink(name, libc::AT_REMOVEDIR)
    }

    /// Opens the pinned object `name` (refusing a link or a directory under that name);
    /// `None` when there is none.
    pub(super) fn open_pin(&self, name: &str) -> Result<Option<OwnedFd>, LoaderError> {
        let Some(st) = self.stat(name)? else {
            return Ok(None);
        };
        self.check_file(name, &st)?;
        match bpfsys::obj_get_at(self.fd.as_fd(), name) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(io_at("opening pin", &self.path.join(name))(e)),
        }
    }

    /// Renames `from` to `to`, both in this directory.
    pub(super) fn rename(&self, from: &str, to: &str) -> Result<(), LoaderError> {
        let (from_path, to_path) = (self.path.join(from), self.path.join(to));
        let c_from = c_name(&from_path, OsStr::new(from))?;
        let c_to = c_name(&to_path, OsStr::new(to))?;
        let fd = self.fd.as_raw_fd();
        // SAFETY: valid C strings relative to our open directory.
        if unsafe { libc::renameat(fd, c_from.as_ptr(), fd, c_to.as_ptr()) } != 0 {
            return Err(LoaderError::Io {
                what: format!("moving {} to {}", from_path.display(), to_path.display()),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Opens the regular file `name` with `flags` (plus `O_NOFOLLOW`); `None` when missing
    /// (and `O_CREAT` not given).
    fn open_file(
        &self,
        name: &str,
        flags: libc::c_int,
        what: &str,
    ) -> Result<Option<File>, LoaderError> {
        let path = self.path.join(name);
        let c = c_name(&path, OsStr::new(name))?;
        // O_NONBLOCK: a FIFO planted under the name must not hang the open.
        let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
        // SAFETY: a valid C string relative to our open directory.
        let fd = unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags, 0o600) };
        if fd < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ENOENT) if flags & libc::O_CREAT == 0 => Ok(None),
                Some(libc::ELOOP) => Err(refused(&path, "is a symbolic link")),
                _ => Err(io_at(what, &path)(err)),
            };
        }
        // SAFETY: openat returned a new fd that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        let st = fstat(file.as_raw_fd()).map_err(io_at("checking", &path))?;
        if kind(&st) != libc::S_IFREG {
            return Err(refused(&path, "is not a regular file"));
        }
        if st.st_uid != 0 && st.st_uid != euid() {
            return Err(refused(
                &path,
                format!("is owned by uid {}, not root", st.st_uid),
            ));
        }
        // Back to blocking reads and writes.
        // SAFETY: plain fcntl calls on the fd we own.
        unsafe {
            let fl = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
            if fl >= 0 {
                libc::fcntl(file.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
            }
        }
        Ok(Some(file))
    }

    /// The bytes of the file `name`; `None` when there is none.
    pub(super) fn read(&self, name: &str) -> Result<Option<Vec<u8>>, LoaderError> {
        let Some(file) = self.open_file(name, libc::O_RDONLY, "reading")? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        file.take(MAX_FILE)
            .read_to_end(&mut bytes)
            .map_err(io_at("reading", &self.path.join(name)))?;
        Ok(Some(bytes))
    }

    /// Replaces the file `name` with `bytes`, through a new temporary file (created with
    /// `O_EXCL|O_NOFOLLOW`) and a rename, so a reader never sees half a file.
    pub(super) fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<(), LoaderError> {
        let tmp = format!("{name}.tmp.{}", std::process::id());
        // Left by a killed writer whose pid this process reuses.
        self.remove_file(&tmp)?;
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
        let Some(mut file) = self.open_file(&tmp, flags, "creating")? else {
            return Err(refused(&self.path.join(&tmp), "vanished as it was created"));
        };
        let written = file
            .write_all(bytes)
            .map_err(io_at("writing", &self.path.join(&tmp)));
        drop(file);
        let renamed = written.and_then(|()| self.rename(&tmp, name));
        if renamed.is_err() {
            let _ = self.remove_file(&tmp);
        }
        renamed
    }

    /// Opens (creating it when missing) the lock file `name`.
    pub(super) fn open_lock(&self, name: &str) -> Result<File, LoaderError> {
        self.open_file(name, libc::O_RDWR | libc::O_CREAT, "opening")?
            .ok_or_else(|| refused(&self.path.join(name), "vanished as it was created"))
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::PermissionsExt as _, path::PathBuf};

    use super::Dir;
    use crate::loader::LoaderError;

    /// A scratch directory (mode 0700) under the temp dir, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("portfw-fsafe-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            let made = fs::create_dir(&path)
                .and_then(|()| fs::set_permissions(&path, fs::Permissions::from_mode(0o700)));
            assert!(made.is_ok(), "scratch dir {}: {made:?}", path.display());
            Self(path)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn refusal(result: Result<impl std::fmt::Debug, LoaderError>) -> String {
        match result {
            Err(e @ LoaderError::Unsafe { .. }) => e.to_string(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_link_where_a_directory_should_be_is_refused_and_its_target_kept() {
        let scratch = Scratch::new("link");
        let victim = scratch.0.join("victim");
        fs::create_dir(&victim).ok();
        fs::write(victim.join("precious"), "x").ok();
        std::os::unix::fs::symlink(&victim, scratch.0.join("42")).ok();
        let Ok(Some(dir)) = Dir::open(&scratch.0) else {
            panic!("the scratch dir opens");
        };
        let message = refusal(dir.remove_pins("42", |_| false, |_, _| {}));
        assert!(
            message.contains("42") && message.contains("symbolic link"),
            "{message}"
        );
        assert!(victim.join("precious").exists());
        let message = refusal(dir.sub("42"));
        assert!(message.contains("symbolic link"), "{message}");
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        let scratch = Scratch::new("mode");
        let open = scratch.0.join("open");
        fs::create_dir(&open).ok();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).ok();
        let message = refusal(Dir::open(&open));
        assert!(message.contains("writable by every user"), "{message}");
        fs::set_permissions(&open, fs::Permissions::from_mode(0o775)).ok();
        let message = refusal(Dir::open(&open));
        assert!(message.contains("writable by its group"), "{message}");
    }

    #[test]
    fn files_are_written_whole_and_links_are_neither_read_nor_removed() {
        let scratch = Scratch::new("files");
        let Ok(dir) = Dir::create(&scratch.0.join("state")) else {
            panic!("state dir");
        };
        let mode = fs::metadata(dir.path()).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode.ok(), Some(0o700));
        assert!(dir.write_atomic("1.json", b"{}").is_ok());
        assert_eq!(
            dir.read("1.json").ok().flatten().as_deref(),
            Some(&b"{}"[..])
        );
        assert!(dir.entries().is_ok_and(|e| e == ["1.json"]));
        let target = scratch.0.join("target");
        fs::write(&target, "keep").ok();
        std::os::unix::fs::symlink(&target, dir.path().join("2.json")).ok();
        assert!(refusal(dir.read("2.json")).contains("symbolic link"));
        assert!(refusal(dir.remove_file("2.json")).contains("symbolic link"));
        assert!(refusal(dir.open_lock("2.json")).contains("symbolic link"));
        // A link as the temporary name is not written through either: it is refused.
        std::os::unix::fs::symlink(
            &target,
            dir.path()
                .join(format!("3.json.tmp.{}", std::process::id())),
        )
        .ok();
        assert!(refusal(dir.write_atomic("3.json", b"{}")).contains("symbolic link"));
        assert_eq!(fs::read_to_string(&target).ok().as_deref(), Some("keep"));
    }
}
