//! Reading policy and set files: regular files only, within a size limit, never blocking.
//!
//! A policy path may name anything: `/dev/zero` would be read until memory runs out, a FIFO
//! would block forever, and opening some devices has side effects (`/dev/watchdog` arms a
//! timer). So the path is first opened with `O_PATH`, which opens nothing, and the inode is
//! checked through that descriptor; only a regular file within the limit is then opened for
//! reading, through `/proc/self/fd`, which reaches that same inode whatever happens to the
//! path meanwhile. The read itself stops one byte past the limit, so a file that grows while
//! it is read cannot take more memory than the limit allows.

use std::{
    fs::{File, Metadata, OpenOptions},
    io::{self, Read as _},
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::Path,
};

/// The largest policy file read: 16 MiB. The other limits fit in far less (16,384 rules take
/// about 1 MiB, and the benchmarks' 100,000 inline CIDRs about 2.2 MiB); big address lists
/// belong in set files. docs/policy.md explains the figures.
pub const POLICY_MAX_BYTES: u64 = 16 << 20;

/// The largest set file read: 64 MiB, room for the most addresses a policy may hold
/// ([`super::MAX_CIDRS`], 1,000,000) at the longest a CIDR is written (44 bytes with its
/// newline, for a full IPv6 address with `/128`), with space for comments.
pub const SET_FILE_MAX_BYTES: u64 = 64 << 20;

/// What is being read, for messages: "policy" or "set file".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Policy,
    SetFile,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Policy => "a policy",
            Kind::SetFile => "a set file",
        }
    }

    pub(crate) fn limit(self) -> u64 {
        match self {
            Kind::Policy => POLICY_MAX_BYTES,
            Kind::SetFile => SET_FILE_MAX_BYTES,
        }
    }
}

/// Reads the regular file at `path` as UTF-8 text, refusing anything else and anything over
/// `kind`'s limit. Errors say what the file is or how big, and the limit; the caller names
/// the file.
pub(crate) fn read_text(path: &Path, kind: Kind) -> io::Result<String> {
    read_text_within(path, kind, kind.limit())
}

fn read_text_within(path: &Path, kind: Kind, limit: u64) -> io::Result<String> {
    let bytes = read_bytes(path, kind, limit)?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it is not UTF-8 text (invalid byte at offset {at})"),
        )
    })
}

fn read_bytes(path: &Path, kind: Kind, limit: u64) -> io::Result<Vec<u8>> {
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(path)?;
    let meta = handle.metadata()?;
    check(&meta, kind, limit)?;
    let mut file = reopen(&handle, path)?;
    // The inode is the one checked; this fstat sees it as opened for reading, in case it
    // changed size in between.
    let opened = file.metadata()?;
    if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
        return Err(io::Error::other(
            "it was replaced while it was being opened",
        ));
    }
    check(&opened, kind, limit)?;
    let expected = usize::try_from(opened.len()).unwrap_or(0);
    let mut bytes = Vec::with_capacity(expected.saturating_add(1));
    (&mut file).take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!(
                "it grew past {} while it was read; {} may be at most that",
                size(limit),
                kind.name()
            ),
        ));
    }
    Ok(bytes)
}

/// Opens for reading the inode `handle` (an `O_PATH` descriptor of `path`) refers to.
fn reopen(handle: &File, path: &Path) -> io::Result<File> {
    use std::os::fd::AsRawFd as _;
    let flags = libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
    let by_fd = format!("/proc/self/fd/{}", handle.as_raw_fd());
    match OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(&by_fd)
    {
        Ok(file) => Ok(file),
        // Without /proc, open the path again; the inode is compared afterwards, and
        // O_NONBLOCK keeps a FIFO put there meanwhile from blocking.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            OpenOptions::new().read(true).custom_flags(flags).open(path)
        }
        Err(e) => Err(e),
    }
}

/// Refuses what is not a regular file, and a regular file over `limit`.
fn check(meta: &Metadata, kind: Kind, limit: u64) -> io::Result<()> {
    let file_type = meta.file_type();
    let what = if file_type.is_file() {
        None
    } else if file_type.is_dir() {
        Some("a directory")
    } else if file_type.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if file_type.is_char_device() {
        Some("a character device")
    } else if file_type.is_block_device() {
        Some("a block device")
    } else if file_type.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file")
    };
    if let Some(what) = what {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("it is {what}; {} must be a regular file", kind.name()),
        ));
    }
    if meta.len() > limit {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!(
                "it is {}, more than the {} {} may be",
                size(meta.len()),
                size(limit),
                kind.name()
            ),
        ));
    }
    Ok(())
}

/// "16 MiB (16777216 bytes)", "167772160 bytes (160.0 MiB)", "512 bytes".
fn size(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    if bytes < MIB {
        format!("{bytes} bytes")
    } else if bytes.is_multiple_of(MIB) {
        format!("{} MiB ({bytes} bytes)", bytes / MIB)
    } else {
        format!("{bytes} bytes ({:.1} MiB)", bytes as f64 / MIB as f64)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        ffi::CString,
        os::unix::{ffi::OsStrExt as _, net::UnixListener},
        path::PathBuf,
        time::{Duration, Instant},
    };

    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("portfw-file-test-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temp dir");
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn error(path: &Path, kind: Kind) -> String {
        match read_text(path, kind) {
            Ok(text) => panic!("read {} bytes from {}", text.len(), path.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn regular_files_are_read() {
        let dir = TempDir::new("regular");
        let path = dir.0.join("p.yaml");
        std::fs::write(&path, "default: drop\n").expect("write");
        assert_eq!(
            read_text(&path, Kind::Policy).ok().as_deref(),
            Some("default: drop\n")
        );
        // Through a symlink too: /etc/portfw/policy.yaml is often one.
        let link = dir.0.join("link.yaml");
        std::os::unix::fs::symlink(&path, &link).expect("symlink");
        assert!(read_text(&link, Kind::Policy).is_ok());
        let missing = error(&dir.0.join("missing"), Kind::Policy);
        assert!(missing.contains("No such file"), "{missing}");
    }

    #[test]
    fn devices_directories_fifos_and_sockets_are_refused_at_once() {
        let dir = TempDir::new("special");
        assert_eq!(
            error(Path::new("/dev/zero"), Kind::Policy),
            "it is a character device; a policy must be a regular file"
        );
        assert_eq!(
            error(&dir.0, Kind::SetFile),
            "it is a directory; a set file must be a regular file"
        );
        let fifo = dir.0.join("fifo");
        let name = CString::new(fifo.as_os_str().as_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        let start = Instant::now();
        assert_eq!(
            error(&fifo, Kind::SetFile),
            "it is a FIFO (named pipe); a set file must be a regular file"
        );
        assert!(start.elapsed() < Duration::from_secs(2), "a FIFO blocked");
        let socket = dir.0.join("socket");
        let _listener = UnixListener::bind(&socket).expect("bind");
        assert_eq!(
            error(&socket, Kind::Policy),
            "it is a socket; a policy must be a regular file"
        );
    }

    #[test]
    fn sizes_are_checked_before_reading_and_while_reading() {
        let dir = TempDir::new("size");
        let path = dir.0.join("big.yaml");
        // Sparse: 160 MiB that take no disk space, refused from its size alone.
        let file = File::create(&path).expect("create");
        file.set_len(160 << 20).expect("set_len");
        assert_eq!(
            error(&path, Kind::Policy),
            "it is 160 MiB (167772160 bytes), more than the 16 MiB (16777216 bytes) a policy \
             may be"
        );
        let odd = dir.0.join("odd.txt");
        File::create(&odd)
            .and_then(|f| f.set_len(SET_FILE_MAX_BYTES + 1))
            .expect("create");
        assert_eq!(
            error(&odd, Kind::SetFile),
            "it is 67108865 bytes (64.0 MiB), more than the 64 MiB (67108864 bytes) a set file \
             may be"
        );
        // A file whose size says nothing (as under /proc) is cut one byte past the limit.
        std::fs::write(&path, "x".repeat(100)).expect("write");
        let cut = read_bytes(&path, Kind::Policy, 10)
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            cut.as_deref(),
            Some("it is 100 bytes, more than the 10 bytes a policy may be")
        );
        let within = read_text_within(Path::new("/proc/self/status"), Kind::Policy, 16);
        assert_eq!(
            within.err().map(|e| e.to_string()).as_deref(),
            Some("it grew past 16 bytes while it was read; a policy may be at most that")
        );
    }

    #[test]
    fn text_must_be_utf8() {
        let dir = TempDir::new("utf8");
        let path = dir.0.join("p.yaml");
        std::fs::write(&path, b"default: drop\n\xff\n").expect("write");
        assert_eq!(
            error(&path, Kind::Policy),
            "it is not UTF-8 text (invalid byte at offset 14)"
        );
    }
}
