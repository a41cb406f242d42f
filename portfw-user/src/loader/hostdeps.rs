//! The addresses the host depends on, which the scan guard must never block: a spoofed scan
//! "from" the gateway or the resolver would otherwise cut the host off. Read at apply time in
//! the filtered namespace: the gateways of its routes (`/proc/net/route`,
//! `/proc/net/ipv6_route`), the nameservers of `/etc/resolv.conf` (and of systemd-resolved's
//! upstream list), and the namespace's own addresses.
use std::{
    collections::BTreeSet,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use crate::policy::Cidr;

/// `RTF_GATEWAY` of a route's flags.
const RTF_GATEWAY: u32 = 0x2;

/// The gateways of the IPv4 routing table as `/proc/net/route` prints it: addresses in
/// hexadecimal, in the kernel's (native) byte order.
pub(super) fn parse_route4(text: &str) -> Vec<IpAddr> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let gateway = u32::from_str_radix(fields.get(2)?, 16).ok()?;
            let flags = u32::from_str_radix(fields.get(3)?, 16).ok()?;
            (flags & RTF_GATEWAY != 0 && gateway != 0)
                .then(|| IpAddr::V4(Ipv4Addr::from(gateway.to_ne_bytes())))
        })
        .collect()
}

/// The next hops of the IPv6 routing table as `/proc/net/ipv6_route` prints it: 32 hex digits
/// per address, in network order; the next hop is the fifth field.
pub(super) fn parse_route6(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let hop = line.split_whitespace().nth(4)?;
            let bits = u128::from_str_radix(hop, 16).ok()?;
            (hop.len() == 32 && bits != 0).then(|| IpAddr::V6(Ipv6Addr::from(bits)))
        })
        .collect()
}

/// The `nameserver` addresses of a resolv.conf (a zone index, as in `fe80::1%eth0`, dropped).
pub(super) fn parse_resolv(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let addr = words.next()?;
            addr.split('%').next()?.parse().ok()
        })
        .collect()
}

/// The addresses of this namespace's interfaces.
fn own_addresses() -> Vec<IpAddr> {
    let mut found = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a list we free below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return found;
    }
    let mut next = list;
    while !next.is_null() {
        // SAFETY: a node of the list getifaddrs returned, alive until freeifaddrs.
        let entry = unsafe { &*next };
        next = entry.ifa_next;
        if entry.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: a non-null sockaddr of the list; its family says which struct it is.
        let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
        if family == libc::AF_INET {
            // SAFETY: an AF_INET address is a sockaddr_in.
            let sin = unsafe { &*entry.ifa_addr.cast::<libc::sockaddr_in>() };
            found.push(IpAddr::V4(Ipv4Addr::from(
                sin.sin_addr.s_addr.to_ne_bytes(),
            )));
        } else if family == libc::AF_INET6 {
            // SAFETY: an AF_INET6 address is a sockaddr_in6.
            let sin6 = unsafe { &*entry.ifa_addr.cast::<libc::sockaddr_in6>() };
            found.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
        }
    }
    // SAFETY: freeing the list getifaddrs gave, once.
    unsafe { libc::freeifaddrs(list) };
    found
}

/// The addresses the host depends on, as host prefixes (/32, /128), sorted, without
/// loopback and unspecified addresses (which never arrive from a wire). A file that cannot be
/// read contributes nothing.
pub fn host_dependencies() -> Vec<Cidr> {
    let read = |path: &str| fs::read_to_string(path).unwrap_or_default();
    let mut all: Vec<IpAddr> = parse_route4(&read("/proc/net/route"));
    all.extend(parse_route6(&read("/proc/net/ipv6_route")));
    all.extend(parse_resolv(&read("/etc/resolv.conf")));
    // A local stub resolver (127.0.0.53) forwards to these.
    all.extend(parse_resolv(&read("/run/systemd/resolve/resolv.conf")));
    all.extend(own_addresses());
    all.into_iter()
        .filter(|a| !a.is_loopback() && !a.is_unspecified())
        // Blocks key IPv6 sources by their /64: only the whole /64 keeps an address safe.
        .map(crate::policy::protecting_prefix)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_gateways_are_read_in_native_order() {
        let v = Ipv4Addr::new(192, 0, 2, 1);
        let hex = format!("{:08X}", u32::from_ne_bytes(v.octets()));
        let text = format!(
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
             eth0\t00000000\t{hex}\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
             eth0\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
        );
        assert_eq!(parse_route4(&text), vec![IpAddr::V4(v)]);
    }

    #[test]
    fn ipv6_next_hops_are_read() {
        let text = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 \
                    fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n\
                    20010db8000000000000000000000000 40 00000000000000000000000000000000 00 \
                    00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n";
        assert_eq!(
            parse_route6(text),
            vec![
                "fe80::1"
                    .parse::<IpAddr>()
                    .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
            ]
        );
    }

    #[test]
    fn nameservers_are_read_and_zone_indexes_dropped() {
        let text = "# generated\nsearch example.org\nnameserver 192.0.2.53\n\
                    nameserver fe80::53%eth0\nnameserver\noptions edns0\n";
        let got: Vec<String> = parse_resolv(text).iter().map(|a| a.to_string()).collect();
        assert_eq!(got, ["192.0.2.53", "fe80::53"]);
    }
}
