//! The connections the host already has when a policy is applied, from the kernel's socket
//! table over sock_diag (what `ss -tun` reads). They go into the flow table as if the egress
//! program had seen them leave, so that `portfw flows` lists them from the start and the
//! replies of a connected UDP socket older than the filter pass, which the kernel's socket
//! lookup on a table miss (TCP only) cannot vouch for.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use portfw_common::{FlowKey, FlowValue, NO_SOURCE_GROUP, SourceKey, action, flow_state, ipproto};

use super::netlink::{self, u16_at};
use crate::{compile::CompiledPolicy, policy::Protocol};

/// `SOCK_DIAG_BY_FAMILY` (`linux/sock_diag.h`).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 56;
/// `struct inet_diag_msg`, up to and including `idiag_inode`.
const MSG_LEN: usize = 72;

/// TCP states (`include/net/tcp_states.h`); a connected UDP socket is `ESTABLISHED`.
mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const CLOSING: u8 = 11;
}

/// The socket states worth a flow: the host exchanges segments with a peer. Not listening,
/// not an inbound handshake (a request socket, which the rules judge), not TIME_WAIT (the
/// kernel answers those itself, and nothing of the connection remains to reply to).
fn states(protocol: u8) -> u32 {
    let bit = |s: u8| 1u32 << s;
    if protocol == ipproto::TCP {
        [
            tcp_state::ESTABLISHED,
            tcp_state::SYN_SENT,
            tcp_state::FIN_WAIT1,
            tcp_state::FIN_WAIT2,
            tcp_state::CLOSE_WAIT,
            tcp_state::LAST_ACK,
            tcp_state::CLOSING,
        ]
        .into_iter()
        .map(bit)
        .fold(0, |a, b| a | b)
    } else {
        bit(tcp_state::ESTABLISHED)
    }
}

/// One of the host's connected sockets, as sock_diag reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Connection {
    pub protocol: u8,
    pub state: u8,
    pub local: IpAddr,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
}

impl Connection {
    /// The flow the egress program would have recorded for this connection, recorded at
    /// `now_ns`: its TCP state as the flow table knows it.
    pub fn flow(&self, now_ns: u64) -> (FlowKey, FlowValue) {
        // Addressed as the state maps address a source: family, then 16 bytes (IPv4 in the
        // first 4). Both sides are of one family once `address` has read them.
        let (local, remote) = (
            SourceKey::of(self.local, false),
            SourceKey::of(self.remote, false),
        );
        let state = match (self.protocol, self.state) {
            (ipproto::TCP, tcp_state::SYN_SENT) => flow_state::SYN_SENT,
            (ipproto::TCP, tcp_state::ESTABLISHED) => flow_state::ESTABLISHED,
            (ipproto::TCP, _) => flow_state::CLOSING,
            _ => flow_state::OPEN,
        };
        let key = FlowKey {
            family: local.family,
            protocol: self.protocol,
            local_port: self.local_port,
            remote_port: self.remote_port,
            _pad: [0; 2],
            local: local.addr,
            remote: remote.addr,
        };
        let value = FlowValue {
            created_ns: now_ns,
            seen_ns: now_ns,
            // Unknown until a packet of it leaves (`portfw flows` shows `-`).
            ifindex: 0,
            state,
            _pad: [0; 3],
        };
        (key, value)
    }

    /// Whether the connection's replies cross a network: not the host talking to itself.
    fn leaves_the_host(&self) -> bool {
        !(self.local.is_loopback()
            || self.remote.is_loopback()
            || self.remote.is_unspecified()
            || self.remote_port == 0)
    }
}

/// An address of `family` from sock_diag's 16 bytes; an IPv4-mapped IPv6 address (a
/// dual-stack socket talking IPv4) is the IPv4 address the packets carry.
fn address(family: u8, bytes: &[u8]) -> Option<IpAddr> {
    if family == libc::AF_INET as u8 {
        let octets: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
        return Some(IpAddr::V4(Ipv4Addr::from(octets)));
    }
    let octets: [u8; 16] = bytes.get(..16)?.try_into().ok()?;
    Some(IpAddr::V6(Ipv6Addr::from(octets)).to_canonical())
}

/// The `inet_diag_req_v2` dump request for `family`'s sockets of `protocol`.
fn request(family: u8, protocol: u8) -> Vec<u8> {
    let mut req = vec![0u8; REQ_LEN];
    req[0] = family;
    req[1] = protocol;
    req[4..8].copy_from_slice(&states(protocol).to_ne_bytes());
    netlink::message(SOCK_DIAG_BY_FAMILY, libc::NLM_F_DUMP as u16, &req)
}

/// One `inet_diag_msg`, or `None` for a reply too short to be one.
fn parse(protocol: u8, msg: &[u8]) -> Option<Connection> {
    if msg.len() < MSG_LEN {
        return None;
    }
    let family = msg[0];
    // `inet_diag_sockid` at 4: ports in network order, then source and destination.
    let port = |at| u16_at(msg, at).map(u16::from_be);
    Some(Connection {
        protocol,
        state: msg[1],
        local_port: port(4)?,
        remote_port: port(6)?,
        local: address(family, msg.get(8..24)?)?,
        remote: address(family, msg.get(24..40)?)?,
    })
}

/// The host's connected TCP and UDP sockets in this network namespace, both families, that
/// talk to another host.
pub(super) fn connections() -> io::Result<Vec<Connection>> {
    let mut found = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        for protocol in [ipproto::TCP, ipproto::UDP] {
            let replies = netlink::exchange(
                libc::NETLINK_SOCK_DIAG,
                &request(family, protocol),
                SOCK_DIAG_BY_FAMILY,
            )?;
            found.extend(
                replies
                    .iter()
                    .filter_map(|reply| parse(protocol, reply))
                    .filter(Connection::leaves_the_host),
            );
        }
    }
    // A dual-stack socket and its IPv4 twin are the same flow once mapped.
    found.sort_by_key(|c| (c.protocol, c.local, c.local_port, c.remote, c.remote_port));
    found.dedup_by_key(|c| (c.protocol, c.local, c.local_port, c.remote, c.remote_port));
    Ok(found)
}

/// Whether the rules of `compiled` may drop a reply arriving at `connection`'s local port,
/// as the egress program asks before it records a flow: the port's entry drops, or source
/// rules decide it. A connection whose replies the rules let through needs no entry.
pub(super) fn replies_need_a_flow(compiled: &CompiledPolicy, connection: &Connection) -> bool {
    Protocol::from_ip_proto(connection.protocol).is_some_and(|protocol| {
        let entry = compiled.entry(protocol, connection.local_port);
        entry.action == action::DROP || entry.group != NO_SOURCE_GROUP
    })
}

/// The request and reply layouts, without asking the kernel; the namespace tests ask it.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::netlink::NLMSG_HDR;

    #[test]
    fn the_request_is_an_inet_diag_dump_of_the_wanted_states() {
        let msg = request(libc::AF_INET6 as u8, ipproto::TCP);
        assert_eq!(msg.len(), NLMSG_HDR + REQ_LEN);
        assert_eq!(u16_at(&msg, 4), Some(SOCK_DIAG_BY_FAMILY));
        let body = &msg[NLMSG_HDR..];
        assert_eq!((body[0], body[1]), (libc::AF_INET6 as u8, ipproto::TCP));
        let wanted = u32::from_ne_bytes(body[4..8].try_into().unwrap_or_default());
        // ESTABLISHED, SYN_SENT, FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK, CLOSING; no LISTEN (10),
        // TIME_WAIT (6), SYN_RECV (3) or CLOSE (7).
        assert_eq!(wanted, 0b1011_0011_0110);
        assert_eq!(states(ipproto::UDP), 1 << 1);
    }

    fn reply(
        family: u8,
        state: u8,
        local: &[u8],
        lport: u16,
        remote: &[u8],
        rport: u16,
    ) -> Vec<u8> {
        let mut msg = vec![0u8; MSG_LEN];
        msg[0] = family;
        msg[1] = state;
        msg[4..6].copy_from_slice(&lport.to_be_bytes());
        msg[6..8].copy_from_slice(&rport.to_be_bytes());
        msg[8..8 + local.len()].copy_from_slice(local);
        msg[24..24 + remote.len()].copy_from_slice(remote);
        msg
    }

    #[test]
    fn replies_read_as_connections_and_mapped_addresses_as_ipv4() {
        let v4 = reply(
            libc::AF_INET as u8,
            1,
            &[10, 0, 0, 1],
            40000,
            &[10, 0, 0, 2],
            53,
        );
        let c = parse(ipproto::UDP, &v4).unwrap_or_else(|| panic!("parsed"));
        assert_eq!(c.local, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!((c.local_port, c.remote_port), (40000, 53));
        let (key, value) = c.flow(5);
        assert_eq!((key.family, key.protocol), (4, ipproto::UDP));
        assert_eq!(&key.remote[..4], &[10, 0, 0, 2]);
        assert_eq!(key.remote[4..], [0; 12]);
        assert_eq!(
            (value.state, value.created_ns, value.ifindex),
            (flow_state::OPEN, 5, 0)
        );

        let mapped = Ipv4Addr::new(192, 0, 2, 9).to_ipv6_mapped().octets();
        let local = Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped().octets();
        let m = reply(libc::AF_INET6 as u8, 2, &local, 41000, &mapped, 443);
        let c = parse(ipproto::TCP, &m).unwrap_or_else(|| panic!("parsed"));
        assert_eq!(c.remote, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)));
        let (key, value) = c.flow(0);
        assert_eq!(key.family, 4);
        assert_eq!(value.state, flow_state::SYN_SENT);

        let v6 = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2).octets();
        let c = parse(
            ipproto::TCP,
            &reply(libc::AF_INET6 as u8, 8, &v6, 1, &v6, 2),
        )
        .unwrap_or_else(|| panic!("parsed"));
        let (key, value) = c.flow(0);
        assert_eq!((key.family, value.state), (6, flow_state::CLOSING));
        assert!(parse(ipproto::TCP, &v4[..MSG_LEN - 1]).is_none());
    }

    #[test]
    fn the_host_talking_to_itself_needs_no_flow() {
        let lo = reply(
            libc::AF_INET as u8,
            1,
            &[127, 0, 0, 1],
            1,
            &[127, 0, 0, 1],
            2,
        );
        let c = parse(ipproto::TCP, &lo).unwrap_or_else(|| panic!("parsed"));
        assert!(!c.leaves_the_host());
        let out = reply(libc::AF_INET as u8, 1, &[10, 0, 0, 1], 1, &[10, 0, 0, 2], 2);
        let c = parse(ipproto::TCP, &out).unwrap_or_else(|| panic!("parsed"));
        assert!(c.leaves_the_host());
    }
}
