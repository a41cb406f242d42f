//! The reference classifier: what the README's "How it judges a packet" table says a frame's
//! verdict is, computed in plain userspace Rust with an independent parser (etherparse), for the
//! fixture and differential tests to hold the kernel program against.
//!
//! etherparse decodes each header (its field layout, its version and length checks); the walk
//! over them and the rules on top are written out here from the README, not from the kernel
//! source. Where etherparse's notion of a valid header differs from the specification, the
//! extra or relaxed check is explicit and commented. The deliberate differences from what a
//! plain etherparse `SlicedPacket` would say are, in short:
//!
//! - VLAN: at most 2 tags of 0x8100, 0x88a8 or 0x9100, read one by one; a third is malformed
//!   (etherparse's `SlicedPacket` takes up to three link extensions and walks MACsec too).
//! - IPv4 AH (protocol 51) is an "other IP protocol", not an extension header: only IPv6
//!   extension headers are walked (etherparse's `Ipv4Slice` would parse it).
//! - IPv6 extension headers are walked in any order and any repetition, hop-by-hop included,
//!   up to 8; a ninth is malformed. etherparse's `Ipv6ExtensionsSlice` rejects a hop-by-hop
//!   header that is not first, does not walk mobility headers, has no bound, and walks HIP and
//!   Shim6, which the specification leaves to `other-ip`.
//! - An AH header with payload length 0 (8 bytes) is walked, as Linux's `ipv6_skip_exthdr`
//!   does; etherparse refuses it (`ZeroPayloadLen`).
//! - Fragments: a non-first fragment is decided by `fragments:` (etherparse only reports that
//!   the payload is fragmented); a first fragment is judged by its ports and is malformed when
//!   the whole minimal transport header is not in it (tiny fragment); an IPv4 TCP fragment at
//!   offset 1 is malformed (RFC 1858). None of these are etherparse concepts.
//! - Only the minimal transport header must be inside the datagram: TCP 20 bytes (a data
//!   offset pointing past the datagram is not malformed, though etherparse's TCP slice wants
//!   the options too), UDP and UDP-Lite 8, SCTP 12 (etherparse has no SCTP), ICMP and ICMPv6
//!   4 (type, code, checksum; etherparse wants 8 and exact timestamp lengths).
//! - TCP with source or destination port 0 is malformed; etherparse accepts it.
//! - ICMP (1) inside IPv6 and ICMPv6 (58) inside IPv4 are "other IP protocols".
//! - Nothing is checked that the README does not ask for: checksums, the UDP length field,
//!   IPv4 flags and option contents, extension-header option contents, ICMP codes other
//!   than fragmentation-needed, the NDP hop limit.
//!
//! The flow table (`replies: allow`, docs/policy.md "Replies to the host's own connections") is
//! modelled as a [`FlowTable`] the caller fills: the flows, their state, and whether each is
//! still within its idle timeout. What the documentation says, written out here:
//!
//! - The table is consulted only when the rules (or the `icmp` setting) drop, and only under
//!   `replies: allow`; a reply to a port the rules allow is the rule's.
//! - A reply matches exactly: protocol, both addresses, both ports (echo: the identifier), and
//!   only a live flow. A bare SYN is never a reply. While only our SYN has been seen, the
//!   remote may answer with SYN-ACK or RST; after that, anything but a new SYN. A FIN or RST
//!   that passes moves the flow to closing (the model keeps that state for the next frame).
//! - ICMP and ICMPv6 errors (destination unreachable, packet too big, time exceeded,
//!   parameter problem) pass when their quote names a live flow: the quote must hold an IP
//!   header of the message's family (IPv4: version, IHL >= 5 with its options, not a
//!   non-first fragment; IPv6: version, no extension headers) and eight bytes after it,
//!   inside the datagram. Quoted TCP is matched whatever its flags and the flow's state.
//! - A TCP segment with no flow passes when the kernel has a connected socket for it: there
//!   is none for the frames of these tests, so the model never takes that path.
//!
//! Not modelled at all: which rule decided (only its action: the tests compare the kernel's
//! rule and default counters together), logging and events, and frames longer than
//! BPF_PROG_TEST_RUN's linear buffer (3520 bytes), which no driver hands this program.
#![allow(dead_code, reason = "each test crate uses a different part")]

use std::{collections::BTreeMap, net::IpAddr};

use etherparse::{
    EtherType, Ethernet2HeaderSlice, IpAuthHeaderSlice, IpNumber, Ipv4HeaderSlice,
    Ipv6FragmentHeaderSlice, Ipv6HeaderSlice, Ipv6RawExtHeaderSlice, SingleVlanHeaderSlice,
    TcpHeaderSlice, UdpHeaderSlice, err, icmpv4, icmpv6,
};
use portfw::{
    compile::reference,
    policy::{Action, Policy, Protocol},
};
use portfw_common::counter;

/// The verdict a policy gives a (protocol, destination port) from `src`.
///
/// Every policy-semantic question of the tests goes through here: the one place that knows
/// how rules are matched (first match by port and, where a rule says `from`, by source).
pub fn policy_verdict(policy: &Policy, protocol: Protocol, port: u16, src: IpAddr) -> Action {
    reference::evaluate(policy, protocol, port, src).action
}

/// Which part of the README's table decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// The port table: a rule or the default.
    Port(Protocol),
    /// Dropped whatever the policy says; the text says why.
    Malformed(&'static str),
    Icmp,
    /// Neighbour discovery, packet-too-big or fragmentation-needed: allowed whatever `icmp:` says.
    IcmpEssential,
    NonIp,
    OtherIp,
    Fragment,
    /// A reply to a flow of the table (or an echo reply to our echo request).
    Reply,
    /// An ICMP error about a flow of the table.
    Related,
}

/// A verdict and what decided it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub action: Action,
    pub class: Class,
}

impl Verdict {
    fn malformed(why: &'static str) -> Verdict {
        Verdict {
            action: Action::Drop,
            class: Class::Malformed(why),
        }
    }

    fn setting(action: Action, class: Class) -> Verdict {
        Verdict { action, class }
    }

    /// The XDP action the kernel must return: 1 = XDP_DROP, 2 = XDP_PASS.
    pub fn xdp(&self) -> u32 {
        match self.action {
            Action::Drop => XDP_DROP,
            Action::Allow => XDP_PASS,
        }
    }

    /// The tally this verdict adds to, which the kernel's counters must agree with.
    pub fn tally(&self) -> Tally {
        let allow = self.action == Action::Allow;
        match (self.class, allow) {
            (Class::Port(_), true) => Tally::PortAllow,
            (Class::Port(_), false) => Tally::PortDrop,
            (Class::Malformed(_), _) => Tally::Malformed,
            (Class::Icmp | Class::IcmpEssential, true) => Tally::IcmpAllow,
            (Class::Icmp | Class::IcmpEssential, false) => Tally::IcmpDrop,
            (Class::NonIp, true) => Tally::NonIpAllow,
            (Class::NonIp, false) => Tally::NonIpDrop,
            (Class::OtherIp, true) => Tally::OtherIpAllow,
            (Class::OtherIp, false) => Tally::OtherIpDrop,
            (Class::Fragment, true) => Tally::FragmentAllow,
            (Class::Fragment, false) => Tally::FragmentDrop,
            (Class::Reply, _) => Tally::Reply,
            (Class::Related, _) => Tally::Related,
        }
    }
}

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

pub fn xdp_name(action: u32) -> &'static str {
    match action {
        XDP_DROP => "DROP",
        XDP_PASS => "PASS",
        _ => "OTHER",
    }
}

/// The kernel's verdict counters, with rule and default merged: whether a rule or the default
/// decided a port is the compiler's business, checked elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tally {
    PortAllow,
    PortDrop,
    Malformed,
    IcmpAllow,
    IcmpDrop,
    NonIpAllow,
    NonIpDrop,
    OtherIpAllow,
    OtherIpDrop,
    FragmentAllow,
    FragmentDrop,
    Reply,
    Related,
}

impl Tally {
    pub const ALL: [Tally; 13] = [
        Tally::PortAllow,
        Tally::PortDrop,
        Tally::Malformed,
        Tally::IcmpAllow,
        Tally::IcmpDrop,
        Tally::NonIpAllow,
        Tally::NonIpDrop,
        Tally::OtherIpAllow,
        Tally::OtherIpDrop,
        Tally::FragmentAllow,
        Tally::FragmentDrop,
        Tally::Reply,
        Tally::Related,
    ];

    /// The kernel counters (`portfw_common::counter`) that make up this tally.
    pub fn counters(self) -> &'static [u32] {
        match self {
            Tally::PortAllow => &[counter::ALLOW_RULE, counter::ALLOW_DEFAULT],
            Tally::PortDrop => &[counter::DROP_RULE, counter::DROP_DEFAULT],
            Tally::Malformed => &[counter::MALFORMED],
            Tally::IcmpAllow => &[counter::ICMP_ALLOW],
            Tally::IcmpDrop => &[counter::ICMP_DROP],
            Tally::NonIpAllow => &[counter::NON_IP_ALLOW],
            Tally::NonIpDrop => &[counter::NON_IP_DROP],
            Tally::OtherIpAllow => &[counter::OTHER_IP_ALLOW],
            Tally::OtherIpDrop => &[counter::OTHER_IP_DROP],
            Tally::FragmentAllow => &[counter::FRAGMENT_ALLOW],
            Tally::FragmentDrop => &[counter::FRAGMENT_DROP],
            Tally::Reply => &[counter::ALLOW_REPLY],
            Tally::Related => &[counter::ALLOW_RELATED],
        }
    }

    /// This tally's share of a kernel counter snapshot (summed over CPUs).
    pub fn of(self, counters: &[u64]) -> u64 {
        self.counters().iter().map(|&i| counters[i as usize]).sum()
    }
}

/// README: "0, 1 or 2 VLAN tags (0x8100, 0x88a8, 0x9100)". etherparse names all three.
const VLAN_TPIDS: [EtherType; 3] = [
    EtherType::VLAN_TAGGED_FRAME,
    EtherType::PROVIDER_BRIDGING,
    EtherType::VLAN_DOUBLE_TAGGED_FRAME,
];
const MAX_VLAN_TAGS: usize = 2;
/// README: IPv6 extension headers are "walked, at most 8; a longer chain is malformed".
const MAX_IPV6_EXT: usize = 8;

/// Judges `frame` (starting at the Ethernet header) by `policy`, as the README says, with an
/// empty flow table.
pub fn classify(frame: &[u8], policy: &Policy) -> Verdict {
    classify_with_flows(frame, policy, &mut FlowTable::default())
}

/// Judges `frame` by `policy` against `flows`, moving a TCP flow to closing where a FIN or
/// RST passes, as the kernel does.
pub fn classify_with_flows(frame: &[u8], policy: &Policy, flows: &mut FlowTable) -> Verdict {
    let cx = &mut Cx { policy, flows };
    let Ok(eth) = Ethernet2HeaderSlice::from_slice(frame) else {
        return Verdict::malformed("frame shorter than an Ethernet header");
    };
    let mut ethertype = eth.ether_type();
    let mut rest = &frame[eth.slice().len()..];
    let mut tags = 0;
    while VLAN_TPIDS.contains(&ethertype) {
        if tags == MAX_VLAN_TAGS {
            return Verdict::malformed("three or more VLAN tags");
        }
        let Ok(tag) = SingleVlanHeaderSlice::from_slice(rest) else {
            return Verdict::malformed("truncated VLAN tag");
        };
        ethertype = tag.ether_type();
        rest = &rest[tag.slice().len()..];
        tags += 1;
    }
    match ethertype {
        EtherType::IPV4 => ipv4(rest, cx),
        EtherType::IPV6 => ipv6(rest, cx),
        _ => Verdict::setting(policy.non_ip, Class::NonIp),
    }
}

/// What the walk judges by: the policy and the flow table.
struct Cx<'a> {
    policy: &'a Policy,
    flows: &'a mut FlowTable,
}

fn ipv4(packet: &[u8], cx: &mut Cx) -> Verdict {
    let policy = cx.policy;
    // Checks the version, IHL >= 5 and that the header with its options is in the slice.
    let Ok(header) = Ipv4HeaderSlice::from_slice(packet) else {
        return Verdict::malformed("bad or truncated IPv4 header");
    };
    // etherparse's Ipv4Slice makes the same two total-length checks, but it also parses an AH
    // header after IPv4, which the specification treats as an other IP protocol; so they are
    // written out here.
    let header_len = header.slice().len();
    let total = usize::from(header.total_len());
    if total < header_len {
        return Verdict::malformed("IPv4 total length shorter than its header");
    }
    if total > packet.len() {
        return Verdict::malformed("IPv4 total length beyond the frame");
    }
    // Bytes past the total length are link padding: never a header.
    let payload = &packet[header_len..total];
    let protocol = header.protocol();
    let offset = header.fragments_offset().value();
    if offset != 0 {
        if protocol == IpNumber::TCP && offset == 1 {
            return Verdict::malformed("RFC 1858: TCP fragment at offset 8 bytes");
        }
        return Verdict::setting(policy.fragments, Class::Fragment);
    }
    let addrs = (
        IpAddr::V4(header.source_addr()),
        IpAddr::V4(header.destination_addr()),
    );
    transport(protocol, payload, false, addrs, cx)
}

fn ipv6(packet: &[u8], cx: &mut Cx) -> Verdict {
    let policy = cx.policy;
    // Checks the version and the 40 bytes.
    let Ok(header) = Ipv6HeaderSlice::from_slice(packet) else {
        return Verdict::malformed("bad or truncated IPv6 header");
    };
    let header_len = header.slice().len();
    let end = header_len + usize::from(header.payload_length());
    if end > packet.len() {
        return Verdict::malformed("IPv6 payload length beyond the frame");
    }
    // Every extension header must lie inside the payload length: what follows it is padding.
    let mut payload = &packet[header_len..end];
    let addrs = (
        IpAddr::V6(header.source_addr()),
        IpAddr::V6(header.destination_addr()),
    );
    let mut next = header.next_header();
    let mut walked = 0;
    loop {
        let is_ext = matches!(
            next,
            IpNumber::IPV6_HEADER_HOP_BY_HOP
                | IpNumber::IPV6_ROUTE_HEADER
                | IpNumber::IPV6_DESTINATION_OPTIONS
                | IpNumber::MOBILITY_HEADER
                | IpNumber::AUTHENTICATION_HEADER
                | IpNumber::IPV6_FRAGMENTATION_HEADER
        );
        if !is_ext {
            break;
        }
        if walked == MAX_IPV6_EXT {
            return Verdict::malformed("more than 8 IPv6 extension headers");
        }
        walked += 1;
        match next {
            IpNumber::AUTHENTICATION_HEADER => {
                // Payload length 0 makes an 8-byte header to Linux's `ipv6_skip_exthdr`, and
                // the specification does not call it malformed; etherparse refuses it (and
                // wants 12 bytes before it looks), so that one case is read here.
                let (following, len) = if payload.len() >= 8 && payload[1] == 0 {
                    (IpNumber(payload[0]), 8)
                } else {
                    match IpAuthHeaderSlice::from_slice(payload) {
                        Ok(ah) => (ah.next_header(), ah.slice().len()),
                        Err(_) => return Verdict::malformed("truncated IPv6 AH header"),
                    }
                };
                next = following;
                payload = &payload[len..];
            }
            IpNumber::IPV6_FRAGMENTATION_HEADER => {
                let Ok(fragment) = Ipv6FragmentHeaderSlice::from_slice(payload) else {
                    return Verdict::malformed("truncated IPv6 fragment header");
                };
                if fragment.fragment_offset().value() != 0 {
                    // RFC 1858's overlap check is IPv4-only in the README's table.
                    return Verdict::setting(policy.fragments, Class::Fragment);
                }
                next = fragment.next_header();
                payload = &payload[fragment.slice().len()..];
            }
            _ => {
                // Hop-by-hop, routing, destination options and mobility share one layout,
                // which etherparse's raw extension header slice reads (mobility included).
                let Ok(ext) = Ipv6RawExtHeaderSlice::from_slice(payload) else {
                    return Verdict::malformed("truncated IPv6 extension header");
                };
                next = ext.next_header();
                payload = &payload[ext.slice().len()..];
            }
        }
    }
    transport(next, payload, true, addrs, cx)
}

/// Judges the transport layer: `payload` is exactly the rest of the datagram, `addrs` the
/// datagram's (source, destination).
fn transport(
    protocol: IpNumber,
    payload: &[u8],
    v6: bool,
    addrs: (IpAddr, IpAddr),
    cx: &mut Cx,
) -> Verdict {
    let policy = cx.policy;
    // (protocol, (source port, destination port), TCP flags)
    let ports = match protocol {
        IpNumber::TCP => tcp_ports(payload).map(|(ports, flags)| (Protocol::Tcp, ports, flags)),
        IpNumber::UDP => UdpHeaderSlice::from_slice(payload)
            .map(|h| (Protocol::Udp, (h.source_port(), h.destination_port()), 0))
            .map_err(|_| "UDP header cut short"),
        // UDP-Lite's header has UDP's layout (a checksum coverage where UDP has a length).
        IpNumber::UDP_LITE => UdpHeaderSlice::from_slice(payload)
            .map(|h| {
                (
                    Protocol::UdpLite,
                    (h.source_port(), h.destination_port()),
                    0,
                )
            })
            .map_err(|_| "UDP-Lite header cut short"),
        // etherparse has no SCTP: its common header is 12 bytes, the ports first.
        IpNumber::SCTP if payload.len() >= 12 => {
            Ok((Protocol::Sctp, (be16(payload, 0), be16(payload, 2)), 0))
        }
        IpNumber::SCTP => Err("SCTP common header cut short"),
        IpNumber::ICMP if !v6 => return icmp(payload, false, addrs, cx),
        IpNumber::IPV6_ICMP if v6 => return icmp(payload, true, addrs, cx),
        _ => return Verdict::setting(policy.other_ip, Class::OtherIp),
    };
    match ports {
        Ok((kind, (sport, dport), flags)) => {
            let action = policy_verdict(policy, kind, dport, addrs.0);
            // The table is for what the rules drop: an allowed reply is the rule's.
            if action == Action::Drop && policy.replies == Action::Allow {
                let flow = FlowId {
                    protocol: protocol.0,
                    local: addrs.1,
                    remote: addrs.0,
                    local_port: dport,
                    remote_port: sport,
                };
                if cx.flows.reply(&flow, flags) {
                    return Verdict {
                        action: Action::Allow,
                        class: Class::Reply,
                    };
                }
            }
            Verdict {
                action,
                class: Class::Port(kind),
            }
        }
        Err(why) => Verdict::malformed(why),
    }
}

/// The ports and the flags byte of a TCP header.
fn tcp_ports(payload: &[u8]) -> Result<((u16, u16), u8), &'static str> {
    let (src, dst) = match TcpHeaderSlice::from_slice(payload) {
        Ok(h) => (h.source_port(), h.destination_port()),
        Err(err::tcp::HeaderSliceError::Content(_)) => return Err("TCP data offset under 5"),
        // etherparse also wants the options the data offset announces. The specification
        // only asks for the minimal (20-byte) header, so with those present the ports count.
        Err(err::tcp::HeaderSliceError::Len(_)) if payload.len() >= 20 => {
            (be16(payload, 0), be16(payload, 2))
        }
        Err(err::tcp::HeaderSliceError::Len(_)) => return Err("TCP header cut short"),
    };
    if src == 0 || dst == 0 {
        return Err("TCP port 0");
    }
    // The flags byte: the 20-byte minimal header is there, whatever the options.
    Ok(((src, dst), payload[13]))
}

fn icmp(payload: &[u8], v6: bool, addrs: (IpAddr, IpAddr), cx: &mut Cx) -> Verdict {
    let policy = cx.policy;
    // Type, code and checksum. etherparse's ICMP slices want the 8-byte header and exact
    // timestamp lengths, which the specification does not, so the bytes are read here.
    if payload.len() < 4 {
        return Verdict::malformed("ICMP message under 4 bytes");
    }
    let (kind, code) = (payload[0], payload[1]);
    // The policy semantics (named types, then the essential-message exception, then the
    // default) are the policy module's; this file's independence is in the parsing.
    let verdict = policy.icmp_verdict(v6, kind, code);
    let essential = if v6 {
        kind == icmpv6::TYPE_PACKET_TOO_BIG
            || (icmpv6::TYPE_ROUTER_SOLICITATION..=icmpv6::TYPE_REDIRECT_MESSAGE).contains(&kind)
    } else {
        kind == icmpv4::TYPE_DEST_UNREACH && code == icmpv4::CODE_DST_UNREACH_NEED_FRAG
    };
    if essential && verdict == Action::Allow && policy.icmp == Action::Drop {
        return Verdict::setting(Action::Allow, Class::IcmpEssential);
    }
    if verdict == Action::Drop
        && policy.replies == Action::Allow
        && let Some(class) = icmp_about_a_flow(payload, v6, addrs, cx.flows)
    {
        return Verdict {
            action: Action::Allow,
            class,
        };
    }
    Verdict::setting(verdict, Class::Icmp)
}

/// Whether an ICMP message the `icmp` setting drops is about a live flow: an echo reply to our
/// echo request, or an error quoting one of our packets.
fn icmp_about_a_flow(
    payload: &[u8],
    v6: bool,
    (src, dst): (IpAddr, IpAddr),
    flows: &mut FlowTable,
) -> Option<Class> {
    // Echo and errors alike have 8 header bytes; a shorter message is about nothing.
    if payload.len() < 8 {
        return None;
    }
    let kind = payload[0];
    let (echo_reply, errors, protocol): (u8, &[u8], u8) = if v6 {
        (
            icmpv6::TYPE_ECHO_REPLY,
            &[
                icmpv6::TYPE_DST_UNREACH,
                icmpv6::TYPE_PACKET_TOO_BIG,
                icmpv6::TYPE_TIME_EXCEEDED,
                icmpv6::TYPE_PARAMETER_PROBLEM,
            ],
            IpNumber::IPV6_ICMP.0,
        )
    } else {
        (
            icmpv4::TYPE_ECHO_REPLY,
            &[
                icmpv4::TYPE_DEST_UNREACH,
                icmpv4::TYPE_TIME_EXCEEDED,
                icmpv4::TYPE_PARAMETER_PROBLEM,
            ],
            IpNumber::ICMP.0,
        )
    };
    if kind == echo_reply {
        let flow = FlowId {
            protocol,
            local: dst,
            remote: src,
            local_port: be16(payload, 4),
            remote_port: 0,
        };
        return flows.is_live(&flow).then_some(Class::Reply);
    }
    if errors.contains(&kind) {
        let flow = quoted_flow(&payload[8..], v6)?;
        return flows.is_live(&flow).then_some(Class::Related);
    }
    None
}

/// The flow an ICMP error's quote names: the quoted packet is one the host sent, so its source
/// is our side. `quote` runs to the end of the error's datagram.
fn quoted_flow(quote: &[u8], v6: bool) -> Option<FlowId> {
    let (protocol, local, remote, rest) = if v6 {
        // Version and 40 bytes. The next header must be the transport itself: extension
        // headers in a quote are not walked.
        let h = Ipv6HeaderSlice::from_slice(quote).ok()?;
        (
            h.next_header(),
            IpAddr::V6(h.source_addr()),
            IpAddr::V6(h.destination_addr()),
            &quote[h.slice().len()..],
        )
    } else {
        // Version, IHL >= 5, the options present. The total length describes the original
        // datagram, which the quote cuts, so it is not checked (etherparse's header slice
        // does not either).
        let h = Ipv4HeaderSlice::from_slice(quote).ok()?;
        if h.fragments_offset().value() != 0 {
            return None;
        }
        (
            h.protocol(),
            IpAddr::V4(h.source_addr()),
            IpAddr::V4(h.destination_addr()),
            &quote[h.slice().len()..],
        )
    };
    // Eight bytes of the quoted transport header, as RFC 792 asks routers to keep.
    if rest.len() < 8 {
        return None;
    }
    let (local_port, remote_port) = match protocol {
        IpNumber::TCP | IpNumber::UDP | IpNumber::UDP_LITE | IpNumber::SCTP => {
            (be16(rest, 0), be16(rest, 2))
        }
        IpNumber::ICMP if !v6 && rest[0] == icmpv4::TYPE_ECHO_REQUEST => (be16(rest, 4), 0),
        IpNumber::IPV6_ICMP if v6 && rest[0] == icmpv6::TYPE_ECHO_REQUEST => (be16(rest, 4), 0),
        _ => return None,
    };
    Some(FlowId {
        protocol: protocol.0,
        local,
        remote,
        local_port,
        remote_port,
    })
}

/// One flow of the model table: what the host's side and the peer's are. For ICMP echo,
/// `local_port` is the identifier and `remote_port` 0. The family is the addresses'.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowId {
    /// IP protocol number.
    pub protocol: u8,
    pub local: IpAddr,
    pub remote: IpAddr,
    pub local_port: u16,
    pub remote_port: u16,
}

/// A flow's state, as docs/policy.md names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowState {
    /// TCP: only our SYN has been seen.
    SynSent,
    Established,
    /// TCP: a FIN or RST has been seen.
    Closing,
    /// UDP, UDP-Lite, SCTP, ICMP echo.
    Open,
}

/// What the model knows of a flow: its state, and whether it is within its idle timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEntry {
    pub state: FlowState,
    pub live: bool,
}

/// The idle timeout docs/policy.md gives a flow of `protocol` in `state`: `tcp-timeout` for an
/// established connection, `tcp-closing` after a FIN or RST and while our SYN waits,
/// `icmp-timeout` for echo, `udp-timeout` for UDP, UDP-Lite and SCTP.
pub fn flow_timeout(policy: &Policy, protocol: u8, state: FlowState) -> std::time::Duration {
    let f = &policy.flows;
    match state {
        FlowState::Established => f.tcp_timeout,
        FlowState::SynSent | FlowState::Closing => f.tcp_closing,
        FlowState::Open if protocol == IpNumber::ICMP.0 || protocol == IpNumber::IPV6_ICMP.0 => {
            f.icmp_timeout
        }
        FlowState::Open => f.udp_timeout,
    }
}

/// The flows the host opened, as the reference sees them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowTable {
    pub flows: BTreeMap<FlowId, FlowEntry>,
}

impl FlowTable {
    pub fn insert(&mut self, id: FlowId, state: FlowState, live: bool) {
        self.flows.insert(id, FlowEntry { state, live });
    }

    fn is_live(&self, id: &FlowId) -> bool {
        self.flows.get(id).is_some_and(|e| e.live)
    }

    /// Whether a segment or datagram with TCP `flags` (0 for other protocols) arriving for
    /// `id` is a reply to it; a FIN or RST that is moves the flow to closing.
    fn reply(&mut self, id: &FlowId, flags: u8) -> bool {
        const FIN: u8 = 0x01;
        const SYN: u8 = 0x02;
        const RST: u8 = 0x04;
        const ACK: u8 = 0x10;
        let tcp = id.protocol == IpNumber::TCP.0;
        let (syn, ack) = (flags & SYN != 0, flags & ACK != 0);
        // A bare SYN opens a connection: it is never a reply.
        if tcp && syn && !ack {
            return false;
        }
        let Some(entry) = self.flows.get_mut(id).filter(|e| e.live) else {
            return false;
        };
        if !tcp {
            return true;
        }
        let ok = match entry.state {
            FlowState::SynSent => flags & RST != 0 || (syn && ack),
            FlowState::Established | FlowState::Closing => !syn || ack,
            FlowState::Open => false,
        };
        if ok && flags & (FIN | RST) != 0 {
            entry.state = FlowState::Closing;
        }
        ok
    }
}

fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}
