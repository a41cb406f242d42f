//! Flows the device under test opens for real, for the replies section of the load
//! benchmark: a UDP socket connected to the generator's side and a TCP connection to a
//! listener there. Both filters learn them from the packets themselves, as on a real host:
//! portfw's egress program records them in its flow table, conntrack makes its entries.

use std::{
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, RawFd},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use socket2::{Domain, Protocol, Socket, Type};

use super::host;

/// Runs `f` on a thread inside the network namespace at `netns`: the sockets it makes belong
/// to that namespace for their whole life, whichever thread uses them later.
pub fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                host::enter_netns(netns)?;
                f()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the thread in {} panicked", netns.display()))?
    })
}

/// The remote ends, in the generator's namespace: a UDP socket that takes the device's query
/// (so that no port unreachable comes back to it) and a TCP listener.
pub struct Peers {
    udp: UdpSocket,
    tcp: TcpListener,
}

impl Peers {
    /// Binds both on `addr`; call it inside the generator's namespace.
    pub fn bind(addr: Ipv4Addr, udp_port: u16, tcp_port: u16) -> Result<Self> {
        let udp = UdpSocket::bind((addr, udp_port))
            .with_context(|| format!("binding udp {addr}:{udp_port}"))?;
        udp.set_read_timeout(Some(Duration::from_secs(2)))?;
        let tcp = TcpListener::bind((addr, tcp_port))
            .with_context(|| format!("listening on tcp {addr}:{tcp_port}"))?;
        tcp.set_nonblocking(true)?;
        Ok(Self { udp, tcp })
    }
}

/// The device's flows, open. Dropping it closes them: the connection first, with a reset
/// (no TIME_WAIT, so the next round can open the same four-tuple), then the peer's end, then
/// the UDP socket. Fields drop in declaration order.
pub struct Opened {
    tcp: TcpStream,
    accepted: TcpStream,
    _udp: UdpSocket,
    /// The peer's next sequence number (the device's rcv_nxt) and the device's own
    /// (snd_nxt): an ACK segment from the peer with these is a duplicate ACK, in window for
    /// the device's TCP and for conntrack, again and again.
    pub peer_seq: u32,
    pub peer_ack: u32,
}

/// The ports of the flows: the device's local ones and the peers'.
#[derive(Clone, Copy)]
pub struct Ports {
    pub local_udp: u16,
    pub remote_udp: u16,
    pub local_tcp: u16,
    pub remote_tcp: u16,
}

/// Opens the device's flows from inside its namespace at `netns` (address `local`) to the
/// peers at `remote`. The UDP socket keeps the smallest receive buffer the kernel allows and
/// is never read, so every reply that reaches it is dropped there (`RcvbufErrors`), the same
/// work whichever filter let it through.
pub fn open(
    netns: &Path,
    local: Ipv4Addr,
    remote: Ipv4Addr,
    ports: Ports,
    peers: &Peers,
) -> Result<Opened> {
    let (udp, tcp) = in_netns(netns, || {
        let udp = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        udp.set_reuse_address(true)?;
        udp.set_recv_buffer_size(1)?;
        udp.bind(&SocketAddrV4::new(local, ports.local_udp).into())
            .with_context(|| format!("binding udp {local}:{}", ports.local_udp))?;
        udp.connect(&SocketAddrV4::new(remote, ports.remote_udp).into())?;
        let udp: UdpSocket = udp.into();
        udp.send(b"portfw-bench query")
            .context("sending the device's datagram")?;

        let tcp = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        tcp.set_reuse_address(true)?;
        tcp.bind(&SocketAddrV4::new(local, ports.local_tcp).into())
            .with_context(|| format!("binding tcp {local}:{}", ports.local_tcp))?;
        tcp.connect_timeout(
            &SocketAddrV4::new(remote, ports.remote_tcp).into(),
            Duration::from_secs(2),
        )
        .with_context(|| format!("connecting to {remote}:{}", ports.remote_tcp))?;
        tcp.set_linger(Some(Duration::ZERO))?;
        Ok((udp, TcpStream::from(tcp)))
    })?;

    let mut buf = [0u8; 64];
    let (_, from) = peers
        .udp
        .recv_from(&mut buf)
        .context("the device's datagram did not reach its peer")?;
    ensure!(
        from == SocketAddr::V4(SocketAddrV4::new(local, ports.local_udp)),
        "the peer's datagram came from {from}, not the device's socket"
    );
    let accepted = accept(&peers.tcp)?;

    let (dut_snd, dut_rcv) = sequence_numbers(&tcp).context("the device's connection")?;
    let (peer_snd, peer_rcv) = sequence_numbers(&accepted).context("the peer's connection")?;
    ensure!(
        peer_snd == dut_rcv && peer_rcv == dut_snd,
        "the two ends of the connection disagree: device snd {dut_snd} rcv {dut_rcv}, peer snd \
         {peer_snd} rcv {peer_rcv}"
    );
    Ok(Opened {
        tcp,
        accepted,
        _udp: udp,
        peer_seq: peer_snd,
        peer_ack: dut_snd,
    })
}

impl Opened {
    /// Whether both ends of the connection are still there (no reset came from either).
    pub fn connected(&self) -> bool {
        self.tcp.peer_addr().is_ok() && self.accepted.peer_addr().is_ok()
    }
}

fn accept(listener: &TcpListener) -> Result<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e).context("the peer accepted no connection"),
        }
    }
}

/// (snd_nxt, rcv_nxt) of a connected socket with nothing unsent, read in TCP repair mode
/// (`TCP_QUEUE_SEQ`, as CRIU does; needs CAP_NET_ADMIN), which is left again without the
/// window probe that leaving it normally sends.
fn sequence_numbers(stream: &TcpStream) -> Result<(u32, u32)> {
    // include/uapi/linux/tcp.h
    const TCP_REPAIR_ON: libc::c_int = 1;
    const TCP_REPAIR_OFF_NO_WP: libc::c_int = -1;
    const TCP_RECV_QUEUE: libc::c_int = 1;
    const TCP_SEND_QUEUE: libc::c_int = 2;
    let fd = stream.as_raw_fd();
    set_tcp(fd, libc::TCP_REPAIR, TCP_REPAIR_ON).context("entering TCP repair mode")?;
    let read = (|| -> Result<(u32, u32)> {
        set_tcp(fd, libc::TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)?;
        let snd = get_tcp(fd, libc::TCP_QUEUE_SEQ)?;
        set_tcp(fd, libc::TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)?;
        let rcv = get_tcp(fd, libc::TCP_QUEUE_SEQ)?;
        Ok((snd as u32, rcv as u32))
    })();
    set_tcp(fd, libc::TCP_REPAIR, TCP_REPAIR_OFF_NO_WP).context("leaving TCP repair mode")?;
    read
}

fn set_tcp(fd: RawFd, option: libc::c_int, value: libc::c_int) -> Result<()> {
    // SAFETY: a valid socket and a c_int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_TCP,
            option,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("setsockopt {option}"));
    }
    Ok(())
}

fn get_tcp(fd: RawFd, option: libc::c_int) -> Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid socket, and a c_int with its length.
    let rc =
        unsafe { libc::getsockopt(fd, libc::SOL_TCP, option, (&raw mut value).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("getsockopt {option}"));
    }
    if len as usize != size_of::<libc::c_int>() {
        bail!("getsockopt {option} returned {len} bytes");
    }
    Ok(value)
}
