//! Sockets of a lab namespace opened from the test process: a thread enters the namespace,
//! opens the socket and hands it back. A socket belongs to the namespace it was made in for
//! good, whichever thread uses it later, so a test can hold a connection across `apply`, send
//! from a chosen address and port, and read exactly what arrived, with no helper process.
#![allow(dead_code, reason = "each test crate uses a different part")]

use std::{
    fs::File,
    io,
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

/// Runs `f` on a thread of its own inside the network namespace at `netns`.
pub fn in_netns<T: Send + 'static>(netns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path: PathBuf = netns.to_owned();
    let handle = File::open(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    thread::spawn(move || {
        // SAFETY: a valid namespace file descriptor; setns changes only this thread.
        let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns into {}: {}",
            path.display(),
            io::Error::last_os_error()
        );
        f()
    })
    .join()
    .expect("namespace thread")
}

/// A UDP socket bound to `addr` in the namespace at `netns`, reads timing out after `wait`.
pub fn udp(netns: &Path, addr: SocketAddr, wait: Duration) -> UdpSocket {
    let socket = in_netns(netns, move || UdpSocket::bind(addr))
        .unwrap_or_else(|e| panic!("binding udp {addr}: {e}"));
    socket.set_read_timeout(Some(wait)).expect("read timeout");
    socket
}

/// A TCP listener on `addr` in the namespace at `netns`.
pub fn listen(netns: &Path, addr: SocketAddr) -> TcpListener {
    in_netns(netns, move || TcpListener::bind(addr))
        .unwrap_or_else(|e| panic!("listening on tcp {addr}: {e}"))
}

/// A TCP connection to `to` from the namespace at `netns`, reads timing out after `wait`.
pub fn connect(netns: &Path, to: SocketAddr, wait: Duration) -> TcpStream {
    let stream = in_netns(netns, move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(3))
    })
    .unwrap_or_else(|e| panic!("connecting to tcp {to}: {e}"));
    stream.set_read_timeout(Some(wait)).expect("read timeout");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// The next datagram, or `None` when none arrives before the socket's read timeout.
pub fn recv(socket: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 2048];
    match socket.recv_from(&mut buf) {
        Ok((n, from)) => Some((buf[..n].to_vec(), from)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(e) => panic!("udp recv on {:?}: {e}", socket.local_addr()),
    }
}

/// Every datagram that arrives until the socket's read timeout passes with none.
pub fn drain(socket: &UdpSocket) -> Vec<(Vec<u8>, SocketAddr)> {
    std::iter::from_fn(|| recv(socket)).collect()
}
