//! The benchmark packets, byte for byte, with valid checksums: the load generator's frames
//! travel up the receiver's stack when allowed, and the stack drops a bad checksum early,
//! which would make an allowed flood look cheaper than it is.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The shortest Ethernet frame without its FCS: every generated frame is padded to it, so a
/// flood is of 64-byte frames on the wire.
pub const MIN_FRAME: usize = 60;

const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;
const TPID_8021Q: u16 = 0x8100;
const TPID_8021AD: u16 = 0x88a8;
const TCP: u8 = 6;
const UDP: u8 = 17;
const HOPOPTS: u8 = 0;
const DSTOPTS: u8 = 60;

/// Link and network addresses of one direction of traffic.
#[derive(Clone, Copy, Debug)]
pub struct Endpoints {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src4: Ipv4Addr,
    pub dst4: Ipv4Addr,
    pub src6: Ipv6Addr,
    pub dst6: Ipv6Addr,
}

impl Endpoints {
    /// Addresses for BPF_PROG_TEST_RUN, where nothing is routed.
    pub fn test() -> Self {
        Self {
            src_mac: [0x02, 0, 0, 0, 0, 2],
            dst_mac: [0x02, 0, 0, 0, 0, 1],
            src4: Ipv4Addr::new(198, 18, 0, 2),
            dst4: Ipv4Addr::new(198, 18, 0, 1),
            src6: Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2),
            dst6: Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1),
        }
    }

    /// The other direction of the same traffic.
    pub fn reversed(self) -> Self {
        Self {
            src_mac: self.dst_mac,
            dst_mac: self.src_mac,
            src4: self.dst4,
            dst4: self.src4,
            src6: self.dst6,
            dst6: self.src6,
        }
    }

    pub fn with_src4(mut self, src: Ipv4Addr) -> Self {
        self.src4 = src;
        self
    }
}

/// A TCP SYN header (20 bytes) with its checksum over `pseudo`.
fn tcp_syn(src_port: u16, dst_port: u16, pseudo: u32) -> Vec<u8> {
    tcp_header(src_port, dst_port, TCP_SYN, pseudo)
}

const TCP_SYN: u8 = 0x02;
/// TCP flags of a segment in an established connection.
pub const TCP_ACK: u8 = 0x10;

/// A TCP header (20 bytes) with `flags` and its checksum over `pseudo`.
fn tcp_header(src_port: u16, dst_port: u16, flags: u8, pseudo: u32) -> Vec<u8> {
    tcp_header_seq(src_port, dst_port, flags, 0x5046_0001, 0, pseudo)
}

/// The same with its sequence and acknowledgement numbers.
fn tcp_header_seq(
    src_port: u16,
    dst_port: u16,
    flags: u8,
    seq: u32,
    ack: u32,
    pseudo: u32,
) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&src_port.to_be_bytes());
    h[2..4].copy_from_slice(&dst_port.to_be_bytes());
    h[4..8].copy_from_slice(&seq.to_be_bytes());
    h[8..12].copy_from_slice(&ack.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = flags;
    h[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let sum = checksum(&h, pseudo);
    h[16..18].copy_from_slice(&sum.to_be_bytes());
    h
}

/// A UDP datagram with `payload` bytes and its checksum over `pseudo`.
fn udp(src_port: u16, dst_port: u16, payload: usize, pseudo: u32) -> Vec<u8> {
    let len = 8 + payload;
    let mut h = vec![0u8; len];
    h[0..2].copy_from_slice(&src_port.to_be_bytes());
    h[2..4].copy_from_slice(&dst_port.to_be_bytes());
    h[4..6].copy_from_slice(&(len as u16).to_be_bytes());
    for (i, b) in h[8..].iter_mut().enumerate() {
        *b = b"portfw-bench"[i % 12];
    }
    let mut sum = checksum(&h, pseudo);
    // A computed zero is sent as all ones: zero means "no checksum" in UDP over IPv4.
    if sum == 0 {
        sum = 0xffff;
    }
    h[6..8].copy_from_slice(&sum.to_be_bytes());
    h
}

/// The one's-complement sum of `bytes` added to `initial`, folded and inverted.
fn checksum(bytes: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], chunk.get(1).copied().unwrap_or(0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn sum_words(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum()
}

fn pseudo4(e: &Endpoints, protocol: u8, len: usize) -> u32 {
    sum_words(&e.src4.octets()) + sum_words(&e.dst4.octets()) + u32::from(protocol) + len as u32
}

fn pseudo6(e: &Endpoints, protocol: u8, len: usize) -> u32 {
    sum_words(&e.src6.octets()) + sum_words(&e.dst6.octets()) + u32::from(protocol) + len as u32
}

fn ethernet(e: &Endpoints, tags: &[(u16, u16)], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(128);
    f.extend_from_slice(&e.dst_mac);
    f.extend_from_slice(&e.src_mac);
    for (tpid, vid) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn ipv4(e: &Endpoints, tags: &[(u16, u16)], protocol: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = ethernet(e, tags, ETH_IPV4);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&0x5046u16.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = protocol;
    ip[12..16].copy_from_slice(&e.src4.octets());
    ip[16..20].copy_from_slice(&e.dst4.octets());
    let sum = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(l4);
    pad(f)
}

fn ipv6(e: &Endpoints, ext: &[u8], first: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = ethernet(e, &[], ETH_IPV6);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&((ext.len() + l4.len()) as u16).to_be_bytes());
    f.push(first);
    f.push(64);
    f.extend_from_slice(&e.src6.octets());
    f.extend_from_slice(&e.dst6.octets());
    f.extend_from_slice(ext);
    f.extend_from_slice(l4);
    pad(f)
}

fn pad(mut f: Vec<u8>) -> Vec<u8> {
    if f.len() < MIN_FRAME {
        f.resize(MIN_FRAME, 0);
    }
    f
}

/// IPv4 TCP SYN, 60 bytes.
pub fn tcp4_syn(e: &Endpoints, src_port: u16, dst_port: u16) -> Vec<u8> {
    let l4 = tcp_syn(src_port, dst_port, pseudo4(e, TCP, 20));
    ipv4(e, &[], TCP, &l4)
}

/// IPv4 TCP with `flags`, 60 bytes.
pub fn tcp4(e: &Endpoints, src_port: u16, dst_port: u16, flags: u8) -> Vec<u8> {
    let l4 = tcp_header(src_port, dst_port, flags, pseudo4(e, TCP, 20));
    ipv4(e, &[], TCP, &l4)
}

/// IPv4 TCP with `flags`, `seq` and `ack`, 60 bytes: a segment of a real connection, which
/// the receiver's TCP and conntrack judge against their windows.
pub fn tcp4_seq(
    e: &Endpoints,
    src_port: u16,
    dst_port: u16,
    flags: u8,
    seq: u32,
    ack: u32,
) -> Vec<u8> {
    let l4 = tcp_header_seq(src_port, dst_port, flags, seq, ack, pseudo4(e, TCP, 20));
    ipv4(e, &[], TCP, &l4)
}

/// IPv4 TCP SYN inside an 802.1ad outer tag and an 802.1Q inner tag (QinQ).
pub fn tcp4_syn_qinq(e: &Endpoints, src_port: u16, dst_port: u16) -> Vec<u8> {
    let l4 = tcp_syn(src_port, dst_port, pseudo4(e, TCP, 20));
    ipv4(e, &[(TPID_8021AD, 100), (TPID_8021Q, 200)], TCP, &l4)
}

/// IPv4 UDP with `payload` bytes; 18 makes a 60-byte frame.
pub fn udp4(e: &Endpoints, src_port: u16, dst_port: u16, payload: usize) -> Vec<u8> {
    let l4 = udp(src_port, dst_port, payload, pseudo4(e, UDP, 8 + payload));
    ipv4(e, &[], UDP, &l4)
}

/// IPv6 TCP SYN behind two extension headers: hop-by-hop options, then destination
/// options, each 8 bytes of PadN.
pub fn tcp6_syn_ext2(e: &Endpoints, src_port: u16, dst_port: u16) -> Vec<u8> {
    let l4 = tcp_syn(src_port, dst_port, pseudo6(e, TCP, 20));
    // Each header: next header, length 0 (8 bytes), then a PadN option over the rest.
    let ext = [DSTOPTS, 0, 1, 4, 0, 0, 0, 0, TCP, 0, 1, 4, 0, 0, 0, 0];
    ipv6(e, &ext, HOPOPTS, &l4)
}

/// Verifies every checksum of the frames built here; the benchmarks run it before trusting
/// their frames with a real receive path.
pub fn self_check() -> Result<(), String> {
    let e = Endpoints::test();
    let tcp = tcp4_syn(&e, 40000, 80);
    let udp = udp4(&e, 40000, 53, 18);
    let v6 = tcp6_syn_ext2(&e, 40000, 80);
    let checks = [
        (
            "frame length",
            tcp.len() == MIN_FRAME && udp.len() == MIN_FRAME,
        ),
        ("IPv4 header", checksum(&tcp[14..34], 0) == 0),
        ("TCP", checksum(&tcp[34..54], pseudo4(&e, TCP, 20)) == 0),
        ("UDP", checksum(&udp[34..60], pseudo4(&e, UDP, 26)) == 0),
        (
            "TCP over IPv6",
            checksum(&v6[70..90], pseudo6(&e, TCP, 20)) == 0,
        ),
    ];
    match checks.iter().find(|(_, ok)| !ok) {
        Some((what, _)) => Err(format!("bench frames: bad {what}")),
        None => Ok(()),
    }
}
