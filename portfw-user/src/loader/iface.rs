//! Interface names, indexes and link types of this network namespace.
use std::{ffi::CString, io};

use serde::{Deserialize, Serialize};

use super::error::{LoaderError, io_err};

/// Which header an interface's frames start with, so which program pair filters it.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Link {
    /// Ethernet, and loopback (an all-zero Ethernet header).
    #[default]
    Ethernet,
    /// No link-layer header: tun, WireGuard, ipip, gre, sit, ppp. The frame starts at IP.
    Ip,
}

/// `ARPHRD_*` device types (`include/uapi/linux/if_arp.h`) portfw knows how to parse.
fn link_of(arphrd: u16) -> Option<Link> {
    const ETHER: u16 = 1;
    const PPP: u16 = 512;
    const TUNNEL: u16 = 768;
    const TUNNEL6: u16 = 769;
    const LOOPBACK: u16 = 772;
    const SIT: u16 = 776;
    const IPGRE: u16 = 778;
    const IP6GRE: u16 = 823;
    const RAWIP: u16 = 519;
    const NONE: u16 = 0xfffe;
    match arphrd {
        ETHER | LOOPBACK => Some(Link::Ethernet),
        PPP | TUNNEL | TUNNEL6 | SIT | IPGRE | IP6GRE | RAWIP | NONE => Some(Link::Ip),
        _ => None,
    }
}

/// The link type of `iface`, from the kernel's `dev->type` (`SIOCGIFHWADDR`, which answers
/// for this network namespace, unlike /sys/class/net under `nsenter --net`).
pub(super) fn link_type(iface: &str) -> Result<Link, LoaderError> {
    let name = iface.as_bytes();
    if name.len() >= libc::IF_NAMESIZE {
        return Err(LoaderError::UnknownInterface(iface.to_string()));
    }
    // SAFETY: an all-zero ifreq is valid; the name is copied in with its NUL.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(name) {
        *dst = src as libc::c_char;
    }
    // SAFETY: a plain socket call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io_err("opening a socket to ask for a link type")(
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: `fd` is a socket we own and `req` a valid ifreq for SIOCGIFHWADDR.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) };
    let err = io::Error::last_os_error();
    // SAFETY: closing the fd we opened.
    unsafe { libc::close(fd) };
    if rc != 0 {
        if err.raw_os_error() == Some(libc::ENODEV) {
            return Err(LoaderError::UnknownInterface(iface.to_string()));
        }
        return Err(io_err(format!("asking the link type of {iface}"))(err));
    }
    // SAFETY: SIOCGIFHWADDR filled the hardware-address member of the union.
    let arphrd = unsafe { req.ifr_ifru.ifru_hwaddr.sa_family };
    link_of(arphrd).ok_or_else(|| LoaderError::UnsupportedLink {
        iface: iface.to_string(),
        arphrd,
    })
}

/// The index of interface `iface` in this namespace.
pub(super) fn ifindex(iface: &str) -> Result<u32, LoaderError> {
    let c = CString::new(iface).map_err(|_| LoaderError::UnknownInterface(iface.to_string()))?;
    // SAFETY: a valid C string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        Err(LoaderError::UnknownInterface(iface.to_string()))
    } else {
        Ok(index)
    }
}

/// The name of interface `index` in this namespace, if it still exists.
pub fn ifname(index: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: `buf` has IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr().cast()) };
    if p.is_null() {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// The interfaces of this namespace, by index and name.
pub(super) fn interfaces() -> Vec<(u32, String)> {
    let mut found = Vec::new();
    // SAFETY: if_nameindex allocates an array ending in an all-zero entry, or returns null.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return found;
    }
    let mut entry = list;
    // SAFETY: each entry up to the terminating one is valid, and its name a C string.
    unsafe {
        while (*entry).if_index != 0 && !(*entry).if_name.is_null() {
            let name = std::ffi::CStr::from_ptr((*entry).if_name);
            found.push(((*entry).if_index, name.to_string_lossy().into_owned()));
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
    }
    found
}
