//! Where portfw's pins live: the bpf filesystem, one directory per network namespace.
use std::{
    ffi::CString,
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use super::{
    error::{LoaderError, io_err},
    fsafe::Dir,
    iface::Link,
};

/// The bpffs mount point the kernel and tools agree on.
pub const BPFFS: &str = "/sys/fs/bpf";
pub use portfw_common::{PIN_ROOT, STATE_ROOT};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The inode of this process's network namespace: it names the namespace for as long as it
/// exists, and interface indexes (so filters) belong to one namespace.
pub fn netns_inode() -> Result<u64, LoaderError> {
    let path = "/proc/self/ns/net";
    fs::metadata(path)
        .map(|m| m.ino())
        .map_err(io_err(format!("reading {path}")))
}

/// `SO_NETNS_COOKIE` (Linux 5.14; `asm-generic/socket.h`, which x86 and arm64 use), not yet
/// in every libc release.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie of this process's network namespace: unlike its inode, never reused while the
/// system runs, so it tells this namespace from a deleted one whose inode it got.
pub fn netns_cookie() -> Result<u64, LoaderError> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    let what = "asking the network namespace's cookie (SO_NETNS_COOKIE, Linux 5.14+)";
    // SAFETY: a plain socket call.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io_err(what)(io::Error::last_os_error()));
    }
    // SAFETY: socket returned a new fd that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            std::ptr::from_mut(&mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io_err(what)(io::Error::last_os_error()));
    }
    Ok(cookie)
}

/// Pin names of the XDP links, one per interface.
pub const LINK_PREFIX: &str = "link-";
/// Pin names of the tcx egress links, one per interface.
pub const EGRESS_LINK_PREFIX: &str = "egress-link-";

/// The pin and state locations of the filter of one network namespace. They are named by
/// the namespace's inode (as they always were); the state file records its cookie, which
/// proves that they belong to it.
#[derive(Clone, Debug)]
pub struct Paths {
    pub netns: u64,
    /// The namespace's cookie (0 when unknown: another namespace's paths).
    pub cookie: u64,
    pub pins: PathBuf,
    pub state: PathBuf,
}

impl Paths {
    pub fn for_netns(netns: u64, cookie: u64) -> Self {
        Self {
            netns,
            cookie,
            pins: Path::new(PIN_ROOT).join(netns.to_string()),
            state: Path::new(STATE_ROOT).join(format!("{netns}.json")),
        }
    }

    pub fn current() -> Result<Self, LoaderError> {
        Ok(Self::for_netns(netns_inode()?, netns_cookie()?))
    }

    /// The name of this namespace's pin directory in the pin root.
    pub fn pins_name(&self) -> String {
        self.netns.to_string()
    }

    /// Checks the pin root, this namespace's pin directory and the state directory, those that
    /// exist: each must be a directory (not a link) that root owns and no one else can write.
    /// Everything portfw opens by path lies under them, so nothing there can be swapped.
    pub fn check(&self) -> Result<(), LoaderError> {
        if let Some(root) = pin_root()? {
            root.sub(&self.pins_name())?;
        }
        Dir::open(Path::new(STATE_ROOT))?;
        Ok(())
    }

    /// Serialises `apply` and `detach` in one namespace: two writers staging the same
    /// inactive generation at once would switch to a mix of both policies.
    pub fn lock(&self) -> Result<Lock, LoaderError> {
        self.lock_unless(|| Ok(()))
    }

    /// [`Paths::lock`], asking `give_up` every few milliseconds while another writer holds
    /// it: its error ends the wait (an interrupted apply stops waiting).
    pub(super) fn lock_unless(
        &self,
        give_up: impl Fn() -> Result<(), LoaderError>,
    ) -> Result<Lock, LoaderError> {
        use std::os::fd::AsRawFd as _;
        let name = format!("{}.lock", self.netns);
        let file = Dir::create(Path::new(STATE_ROOT))?.open_lock(&name)?;
        loop {
            // SAFETY: a valid open fd; LOCK_NB makes flock fail rather than wait.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Lock(file));
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                let path = Path::new(STATE_ROOT).join(&name);
                return Err(io_err(format!("locking {}", path.display()))(err));
            }
            give_up()?;
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// The lock of [`Paths::lock`] if no one holds it now; `None` when someone does.
    pub fn try_lock(&self) -> Result<Option<Lock>, LoaderError> {
        use std::os::fd::AsRawFd as _;
        let name = format!("{}.lock", self.netns);
        let file = Dir::create(Path::new(STATE_ROOT))?.open_lock(&name)?;
        // SAFETY: a valid open fd; LOCK_NB makes flock fail rather than wait.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Ok(None);
        }
        Ok(Some(Lock(file)))
    }

    /// The XDP program of Ethernet devices: its pin says a filter is loaded here.
    pub fn prog(&self) -> PathBuf {
        self.prog_for(Link::Ethernet)
    }

    /// The XDP program for devices of `link`.
    pub fn prog_for(&self, link: Link) -> PathBuf {
        self.pins.join(match link {
            Link::Ethernet => "prog",
            Link::Ip => "prog-l3",
        })
    }

    /// The TC egress program that records flows, for devices of `link`.
    pub fn egress_prog_for(&self, link: Link) -> PathBuf {
        self.pins.join(match link {
            Link::Ethernet => "egress",
            Link::Ip => "egress-l3",
        })
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.pins.join(name)
    }

    /// The XDP link on `iface`.
    pub fn link(&self, iface: &str) -> PathBuf {
        self.pins.join(format!("{LINK_PREFIX}{iface}"))
    }

    /// The tcx egress link on `iface`.
    pub fn egress_link(&self, iface: &str) -> PathBuf {
        self.pins.join(format!("{EGRESS_LINK_PREFIX}{iface}"))
    }
}

/// Held while a namespace's filter is being changed; released on drop (the fd closes).
pub struct Lock(#[expect(dead_code, reason = "held for its fd")] fs::File);

/// The pin root, checked; `None` when it does not exist yet.
pub(super) fn pin_root() -> Result<Option<Dir>, LoaderError> {
    Dir::open(Path::new(PIN_ROOT))
}

/// The pin root, checked, created (mode 0700) when missing.
pub(super) fn create_pin_root() -> Result<Dir, LoaderError> {
    Dir::create(Path::new(PIN_ROOT))
}

/// Mount options of a bpffs portfw mounts: only root may look inside or plant anything there.
pub const BPFFS_MOUNT_OPTIONS: &str = "mode=0700";

fn is_bpffs(path: &str) -> io::Result<bool> {
    let c_path = CString::new(path).map_err(io::Error::other)?;
    let mut buf = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c_path` is a valid C string and `buf` is large enough for statfs.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), buf.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statfs succeeded and filled the struct.
    let buf = unsafe { buf.assume_init() };
    Ok(buf.f_type == BPF_FS_MAGIC)
}

/// `ip netns exec NAME` mounts a fresh sysfs on /sys with NAME as its source: that
/// fingerprint still works where /proc/1 cannot be read (containers, sandboxes).
fn under_ip_netns_exec() -> bool {
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            Some((fields.next()?, fields.next()?, fields.next()?))
        })
        .rfind(|&(_, target, fstype)| target == "/sys" && fstype == "sysfs")
        .is_some_and(|(source, _, _)| {
            source != "sysfs"
                && !source.contains('/')
                && Path::new("/run/netns").join(source).exists()
        })
}

fn same_mount_ns_as_init() -> bool {
    match (
        fs::metadata("/proc/self/ns/mnt"),
        fs::metadata("/proc/1/ns/mnt"),
    ) {
        (Ok(me), Ok(init)) => me.ino() == init.ino() && me.dev() == init.dev(),
        // If pid 1's namespace cannot be read we cannot tell; assume the normal case.
        _ => true,
    }
}

/// Makes sure /sys/fs/bpf is a bpffs, mounting it in the host's mount namespace if needed.
///
/// Under `ip netns exec` /sys is a private remount: a bpffs mounted there vanishes with the
/// command, and the filter with it, so we refuse and say what to run instead.
pub fn ensure_mounted() -> Result<(), LoaderError> {
    use std::os::fd::AsRawFd as _;
    let mounted = || is_bpffs(BPFFS).map_err(io_err(format!("checking {BPFFS}")));
    if mounted()? {
        return Ok(());
    }
    if under_ip_netns_exec() || !same_mount_ns_as_init() {
        return Err(LoaderError::BpffsPrivate);
    }
    // Two first applies (in different namespaces) must not stack two mounts.
    let lock = Dir::create(Path::new(STATE_ROOT))?.open_lock("bpffs.lock")?;
    // SAFETY: a valid open fd; flock blocks until the other mounter is done.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io_err(format!("locking {STATE_ROOT}/bpffs.lock"))(
            io::Error::last_os_error(),
        ));
    }
    if mounted()? {
        return Ok(());
    }
    let source = CString::new("bpf").map_err(io::Error::other);
    let target = CString::new(BPFFS).map_err(io::Error::other);
    let options = CString::new(BPFFS_MOUNT_OPTIONS).map_err(io::Error::other);
    let (Ok(source), Ok(target), Ok(options)) = (source, target, options) else {
        return Err(LoaderError::BpffsPrivate);
    };
    // SAFETY: valid C strings; bpffs reads its options as a string.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            source.as_ptr(),
            0,
            options.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io_err(format!(
            "mounting bpffs at {BPFFS} (mount -t bpf -o {BPFFS_MOUNT_OPTIONS} bpf {BPFFS})"
        ))(io::Error::last_os_error()));
    }
    Ok(())
}
