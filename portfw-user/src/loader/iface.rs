//! Interface names and indexes of this network namespace.
use std::ffi::CString;

use super::error::LoaderError;

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
