//! Wire formats: the protocol constants and the header layouts the parser reads.
//!
//! Header structs are byte arrays (alignment 1), so a pointer into the packet is always
//! well-aligned for them, and multi-byte fields are read as integers with [`be16`], never
//! reinterpreted as Rust enums.

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;
/// Pre-standard QinQ outer tag still seen in the field.
pub const ETH_P_QINQ_9100: u16 = 0x9100;

pub const VLAN_HLEN: usize = 4;
/// ICMP and ICMPv6: type, code, checksum, and four bytes that depend on the type.
pub const ICMP_HLEN: usize = 8;
pub const IPV4_MIN_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;

/// Bytes of headers the egress program wants in the linear part of an skb: Ethernet, two
/// VLAN tags, IPv6 with a few extension headers, and TCP.
pub const MAX_HEADERS_LEN: u32 = 128;

/// Most VLAN tags walked; a frame with more is malformed.
pub const MAX_VLAN_TAGS: usize = 2;
/// Most IPv6 extension headers walked; a chain longer than this is malformed.
pub const MAX_IPV6_EXT: usize = 8;

#[inline(always)]
pub fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

#[derive(Clone, Copy)]
#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ethertype: [u8; 2],
}

#[derive(Clone, Copy)]
#[repr(C)]
pub struct VlanHdr {
    pub tci: [u8; 2],
    pub ethertype: [u8; 2],
}

#[derive(Clone, Copy)]
#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub protocol: u8,
    pub check: [u8; 2],
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

#[derive(Clone, Copy)]
#[repr(C)]
pub struct Ipv6Hdr {
    pub vtc_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub nexthdr: u8,
    pub hop_limit: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// The first two bytes every IPv6 extension header shares.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Ipv6ExtHdr {
    pub nexthdr: u8,
    pub hdrlen: u8,
}

#[derive(Clone, Copy)]
#[repr(C)]
pub struct Ipv6FragHdr {
    pub nexthdr: u8,
    pub reserved: u8,
    pub frag_off: [u8; 2],
    pub id: [u8; 4],
}

/// The part of TCP needed to judge a segment: ports, and the flags byte at offset 13.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct TcpHdr {
    pub source: [u8; 2],
    pub dest: [u8; 2],
    pub seq: [u8; 4],
    pub ack_seq: [u8; 4],
    pub doff_res: u8,
    pub flags: u8,
    pub window: [u8; 2],
    pub check: [u8; 2],
    pub urg_ptr: [u8; 2],
}

/// UDP, UDP-Lite and SCTP all start with source and destination port.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Ports {
    pub source: [u8; 2],
    pub dest: [u8; 2],
}

#[derive(Clone, Copy)]
#[repr(C)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
}

/// The first eight bytes of an ICMP or ICMPv6 message, as an echo lays them out.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct IcmpEcho {
    pub kind: u8,
    pub code: u8,
    pub check: [u8; 2],
    pub id: [u8; 2],
    pub seq: [u8; 2],
}

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROBLEM: u8 = 12;
pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
pub const ICMPV6_TIME_EXCEEDED: u8 = 3;
pub const ICMPV6_PARAMETER_PROBLEM: u8 = 4;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// TCP flag bits (the byte at offset 13).
pub mod tcp_flag {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

#[inline(always)]
pub fn is_vlan(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD || ethertype == ETH_P_QINQ_9100
}
