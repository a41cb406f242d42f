//! The netlink plumbing that portfw's two netlink users share: rtnetlink for clsact
//! ([`super::tc`]) and sock_diag for the host's own connections ([`super::sockets`]). One
//! request, its replies collected until the dump ends or the kernel acknowledges.
use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// `struct nlmsghdr`.
pub(super) const NLMSG_HDR: usize = 16;

pub(super) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

pub(super) fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

pub(super) fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// A request message of `kind` with `flags` (`NLM_F_REQUEST` is added), whose payload is
/// `body`.
pub(super) fn message(kind: u16, flags: u16, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(NLMSG_HDR + body.len()).unwrap_or(u32::MAX);
    let mut msg = Vec::with_capacity(NLMSG_HDR + body.len());
    msg.extend_from_slice(&len.to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&(flags | libc::NLM_F_REQUEST as u16).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    msg.extend_from_slice(body);
    msg
}

/// A netlink socket of `protocol` (`NETLINK_ROUTE`, `NETLINK_SOCK_DIAG`).
fn socket(protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: a plain socket call.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `msg` on a new `protocol` socket and collects the payloads of the replies of type
/// `want` until the dump ends or the kernel acknowledges; a negative acknowledgement is the
/// error it names.
pub(super) fn exchange(protocol: libc::c_int, msg: &[u8], want: u16) -> io::Result<Vec<Vec<u8>>> {
    let sock = socket(protocol)?;
    // SAFETY: `msg` is valid for reads of its length.
    let sent = unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut replies = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buf` is valid for writes of its length.
        let got = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if got < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if got == 0 {
            return Err(io::Error::other("netlink closed before the dump ended"));
        }
        let mut rest = buf.get(..got as usize).unwrap_or_default();
        while let (Some(len), Some(kind)) = (u32_at(rest, 0), u16_at(rest, 4)) {
            let len = len as usize;
            if len < NLMSG_HDR || len > rest.len() {
                return Err(io::Error::other("a truncated netlink reply"));
            }
            let payload = &rest[NLMSG_HDR..len];
            match kind {
                k if k == libc::NLMSG_DONE as u16 => return Ok(replies),
                k if k == libc::NLMSG_ERROR as u16 => {
                    let code = u32_at(payload, 0).map_or(0, |c| c as i32);
                    return if code == 0 {
                        Ok(replies)
                    } else {
                        Err(io::Error::from_raw_os_error(-code))
                    };
                }
                k if k == want => replies.push(payload.to_vec()),
                _ => {}
            }
            rest = rest.get(align4(len)..).unwrap_or_default();
        }
    }
}
