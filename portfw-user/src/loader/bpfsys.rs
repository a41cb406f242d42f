//! The few bpf(2) commands aya 0.14 does not expose: opening a pin relative to a directory
//! descriptor (`BPF_F_PATH_FD`), where a link is attached (`BPF_OBJ_GET_INFO_BY_FD`, whose
//! interface index aya's `LinkInfo` keeps to itself), and detaching a link at once
//! (`BPF_LINK_DETACH`) rather than when bpffs gets round to freeing its unlinked pin, and
//! taking a value out of a hash map (`BPF_MAP_LOOKUP_AND_DELETE_ELEM`).
use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

use aya_obj::generated::{BPF_F_PATH_FD, bpf_attr, bpf_cmd, bpf_link_type};

fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a whole, initialised bpf_attr that outlives the call; the kernel reads
    // (and for some commands writes) at most size_of::<bpf_attr>() bytes of it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens the pinned object `name` of the directory `dir`.
pub(super) fn obj_get_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    let name = CString::new(name).map_err(io::Error::other)?;
    // SAFETY: an all-zero bpf_attr is valid for every command.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the BPF_OBJ_* member of the zeroed union.
    let get = unsafe { &mut attr.__bindgen_anon_4 };
    get.pathname = name.as_ptr() as u64;
    get.file_flags = BPF_F_PATH_FD;
    get.path_fd = dir.as_raw_fd();
    let fd = sys_bpf(bpf_cmd::BPF_OBJ_GET, &mut attr)?;
    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: BPF_OBJ_GET returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What a link is and where it is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct LinkTarget {
    pub kind: LinkKind,
    /// The program it runs.
    pub program_id: u32,
    /// The interface it is attached to; 0 once that interface is gone (a defunct link).
    pub ifindex: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LinkKind {
    Xdp,
    Tcx,
    Other(u32),
}

/// `struct bpf_link_info` up to the XDP and tcx members, whose first field is the ifindex
/// (the union starts 8-aligned, after type, id and prog_id).
#[repr(C, align(8))]
#[derive(Default)]
struct LinkInfoHead {
    type_: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    ifindex: u32,
    attach_type: u32,
}

/// Where the link `fd` is attached.
pub(super) fn link_target(fd: BorrowedFd<'_>) -> io::Result<LinkTarget> {
    let mut info = LinkInfoHead::default();
    // SAFETY: an all-zero bpf_attr is valid for every command.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the info member of the zeroed union.
    let query = unsafe { &mut attr.info };
    query.bpf_fd = fd.as_raw_fd() as u32;
    query.info_len = std::mem::size_of::<LinkInfoHead>() as u32;
    query.info = std::ptr::from_mut(&mut info) as u64;
    sys_bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let kind = match info.type_ {
        t if t == bpf_link_type::BPF_LINK_TYPE_XDP as u32 => LinkKind::Xdp,
        t if t == bpf_link_type::BPF_LINK_TYPE_TCX as u32 => LinkKind::Tcx,
        t => LinkKind::Other(t),
    };
    Ok(LinkTarget {
        kind,
        program_id: info.prog_id,
        ifindex: info.ifindex,
    })
}

/// Detaches the link `fd` from its hook now, whoever else holds it.
pub(super) fn link_detach(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: an all-zero bpf_attr is valid for every command.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.link_detach.link_fd = fd.as_raw_fd() as u32;
    sys_bpf(bpf_cmd::BPF_LINK_DETACH, &mut attr).map(drop)
}

/// `BPF_MAP_LOOKUP_AND_DELETE_ELEM` on a per-CPU hash map (Linux 5.14+): takes `key`'s
/// value on each of `cpus` possible CPUs out in one step, so that nothing the kernel adds
/// between a read and a delete is lost. `None` when the key is absent.
pub(crate) fn map_lookup_and_delete_percpu<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
    key: &K,
    cpus: usize,
) -> io::Result<Option<Vec<V>>> {
    // The kernel lays per-CPU values out at 8-byte strides.
    if !size_of::<V>().is_multiple_of(8) {
        return Err(io::Error::other(format!(
            "per-CPU values of {} bytes are not 8-byte strides",
            size_of::<V>()
        )));
    }
    // SAFETY: V is plain data, for which all zeroes is a valid value.
    let mut values: Vec<V> = vec![unsafe { std::mem::zeroed() }; cpus];
    // SAFETY: an all-zero bpf_attr is valid for every command.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the BPF_MAP_*_ELEM member of the zeroed union.
    let elem = unsafe { &mut attr.__bindgen_anon_2 };
    elem.map_fd = fd.as_raw_fd() as u32;
    elem.key = std::ptr::from_ref(key) as u64;
    elem.__bindgen_anon_1.value = values.as_mut_ptr() as u64;
    match sys_bpf(bpf_cmd::BPF_MAP_LOOKUP_AND_DELETE_ELEM, &mut attr) {
        Ok(_) => Ok(Some(values)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `BPF_MAP_DELETE_ELEM` through a shared reference (aya's `remove` wants the map mutably).
pub(crate) fn map_delete<K: aya::Pod>(fd: BorrowedFd<'_>, key: &K) -> io::Result<()> {
    // SAFETY: an all-zero bpf_attr is valid for every command.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the BPF_MAP_*_ELEM member of the zeroed union.
    let elem = unsafe { &mut attr.__bindgen_anon_2 };
    elem.map_fd = fd.as_raw_fd() as u32;
    elem.key = std::ptr::from_ref(key) as u64;
    sys_bpf(bpf_cmd::BPF_MAP_DELETE_ELEM, &mut attr).map(drop)
}
