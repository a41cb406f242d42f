//! The built-in table of IANA service names and port ranges a port spec may use.

use std::fmt::Write as _;

use super::Protocol::{self, Tcp, Udp};

/// A named service: its IANA port and the protocols a bare name expands to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Service {
    /// The IANA service name (or the common name, where IANA's is obscure).
    pub name: &'static str,
    /// Other names accepted for the same service.
    pub aliases: &'static [&'static str],
    pub port: u16,
    /// What the bare name means. IANA registers most ports for both TCP and UDP; this lists
    /// only the protocols the service actually speaks in practice.
    pub protocols: &'static [Protocol],
}

const TCP: &[Protocol] = &[Tcp];
const UDP: &[Protocol] = &[Udp];
const BOTH: &[Protocol] = &[Tcp, Udp];

const fn service(
    name: &'static str,
    aliases: &'static [&'static str],
    port: u16,
    protocols: &'static [Protocol],
) -> Service {
    Service {
        name,
        aliases,
        port,
        protocols,
    }
}

/// Every service name a policy may use, in port order.
pub const SERVICES: &[Service] = &[
    service("ftp-data", &[], 20, TCP),
    service("ftp", &[], 21, TCP),
    service("ssh", &[], 22, TCP),
    service("telnet", &[], 23, TCP),
    service("smtp", &[], 25, TCP),
    service("domain", &["dns"], 53, BOTH),
    service("bootps", &["dhcp"], 67, UDP),
    service("bootpc", &[], 68, UDP),
    service("tftp", &[], 69, UDP),
    service("http", &["www"], 80, TCP),
    service("kerberos", &[], 88, BOTH),
    service("pop3", &[], 110, TCP),
    service("sunrpc", &["rpcbind"], 111, BOTH),
    service("nntp", &[], 119, TCP),
    service("ntp", &[], 123, UDP),
    service("netbios-ns", &[], 137, UDP),
    service("netbios-dgm", &[], 138, UDP),
    service("netbios-ssn", &[], 139, TCP),
    service("imap", &[], 143, TCP),
    service("snmp", &[], 161, UDP),
    service("snmptrap", &["snmp-trap"], 162, UDP),
    service("bgp", &[], 179, TCP),
    service("irc", &[], 194, TCP),
    service("ldap", &[], 389, TCP),
    // HTTP/3 runs over QUIC on UDP 443, so a bare `https` opens both.
    service("https", &[], 443, BOTH),
    service("microsoft-ds", &["smb"], 445, TCP),
    service("kpasswd", &[], 464, BOTH),
    service("submissions", &["smtps"], 465, TCP),
    service("isakmp", &["ike"], 500, UDP),
    service("syslog", &[], 514, UDP),
    service("submission", &[], 587, TCP),
    service("ipp", &[], 631, TCP),
    service("ldaps", &[], 636, TCP),
    service("rsync", &[], 873, TCP),
    service("ftps", &[], 990, TCP),
    service("imaps", &[], 993, TCP),
    service("pop3s", &[], 995, TCP),
    service("socks", &[], 1080, TCP),
    // OpenVPN defaults to UDP; a TCP server is written `openvpn/tcp`.
    service("openvpn", &[], 1194, UDP),
    service("ms-sql-s", &["mssql"], 1433, TCP),
    service("mqtt", &[], 1883, TCP),
    service("nfs", &[], 2049, BOTH),
    service("etcd-client", &[], 2379, TCP),
    service("etcd-server", &[], 2380, TCP),
    service("mysql", &[], 3306, TCP),
    // Current RDP clients carry the session over UDP when they can.
    service("ms-wbt-server", &["rdp"], 3389, BOTH),
    service("ipsec-nat-t", &[], 4500, UDP),
    service("sip", &[], 5060, BOTH),
    service("sips", &[], 5061, TCP),
    service("xmpp-client", &[], 5222, TCP),
    service("xmpp-server", &[], 5269, TCP),
    service("mdns", &[], 5353, UDP),
    service("postgresql", &["postgres"], 5432, TCP),
    service("amqp", &[], 5672, TCP),
    service("redis", &[], 6379, TCP),
    // IANA's own `ircs` (994) is long retired; `ircs` means the port IRC over TLS uses today.
    service("ircs-u", &["ircs"], 6697, TCP),
    service("http-alt", &[], 8080, TCP),
    service("secure-mqtt", &["mqtts"], 8883, TCP),
    service("git", &[], 9418, TCP),
    service("memcache", &["memcached"], 11211, TCP),
];

/// An IANA port-range name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangeName {
    pub name: &'static str,
    pub low: u16,
    pub high: u16,
}

/// The three ranges IANA divides the port space into (RFC 6335).
pub const RANGE_NAMES: &[RangeName] = &[
    RangeName {
        name: "well-known",
        low: 0,
        high: 1023,
    },
    RangeName {
        name: "registered",
        low: 1024,
        high: 49151,
    },
    RangeName {
        name: "dynamic",
        low: 49152,
        high: 65535,
    },
];

/// The service called `name` (by its name or an alias). Names are case-sensitive.
pub fn lookup(name: &str) -> Option<&'static Service> {
    SERVICES
        .iter()
        .find(|s| s.name == name || s.aliases.contains(&name))
}

/// Every port: `drop: any` with a `from:` is how a rule blocks a source outright.
pub const ANY: RangeName = RangeName {
    name: "any",
    low: 0,
    high: u16::MAX,
};

/// `any` or one of the [`RANGE_NAMES`].
pub fn range_name(name: &str) -> Option<&'static RangeName> {
    std::iter::once(&ANY)
        .chain(RANGE_NAMES)
        .find(|r| r.name == name)
}

/// Every name a port spec accepts besides numbers: services, aliases and range names.
pub fn all_names() -> impl Iterator<Item = &'static str> {
    SERVICES
        .iter()
        .flat_map(|s| std::iter::once(s.name).chain(s.aliases.iter().copied()))
        .chain(std::iter::once(ANY.name))
        .chain(RANGE_NAMES.iter().map(|r| r.name))
}

/// The services table as Markdown, as it appears in docs/policy.md (a test keeps them equal).
pub fn markdown_table() -> String {
    let mut out = String::from("| name | also | port | bare name means |\n|---|---|---|---|\n");
    for s in SERVICES {
        let aliases = s
            .aliases
            .iter()
            .map(|a| format!("`{a}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let protocols = s
            .protocols
            .iter()
            .map(Protocol::to_string)
            .collect::<Vec<_>>()
            .join(" + ");
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "| `{}` | {aliases} | {} | {protocols} |",
            s.name, s.port
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn names_are_unique() {
        let mut seen = HashSet::new();
        for name in all_names() {
            assert!(seen.insert(name), "`{name}` is listed twice");
        }
    }

    #[test]
    fn names_are_lowercase_and_never_look_like_numbers() {
        for name in all_names() {
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{name}"
            );
            assert!(name.starts_with(|c: char| c.is_ascii_lowercase()), "{name}");
            assert!(!name.ends_with('-'), "{name}");
        }
    }

    #[test]
    fn every_service_has_protocols_and_table_is_in_port_order() {
        for s in SERVICES {
            assert!(!s.protocols.is_empty(), "{}", s.name);
        }
        assert!(SERVICES.windows(2).all(|w| w[0].port <= w[1].port));
    }

    #[test]
    fn sample_ports() {
        let expect = [
            ("ftp-data", 20, TCP),
            ("ssh", 22, TCP),
            ("dns", 53, BOTH),
            ("domain", 53, BOTH),
            ("tftp", 69, UDP),
            ("www", 80, TCP),
            ("ntp", 123, UDP),
            ("snmptrap", 162, UDP),
            ("snmp-trap", 162, UDP),
            ("https", 443, BOTH),
            ("smb", 445, TCP),
            ("smtps", 465, TCP),
            ("syslog", 514, UDP),
            ("mssql", 1433, TCP),
            ("mysql", 3306, TCP),
            ("rdp", 3389, BOTH),
            ("postgres", 5432, TCP),
            ("postgresql", 5432, TCP),
            ("ircs", 6697, TCP),
            ("http-alt", 8080, TCP),
        ];
        for (name, port, protocols) in expect {
            let s = lookup(name).unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!((s.port, s.protocols), (port, protocols), "{name}");
        }
        assert_eq!(lookup("SSH"), None);
        assert_eq!(lookup("nope"), None);
    }

    #[test]
    fn range_names_tile_the_port_space() {
        assert_eq!(RANGE_NAMES[0].low, 0);
        assert!(RANGE_NAMES.windows(2).all(|w| w[0].high + 1 == w[1].low));
        assert_eq!(RANGE_NAMES[2].high, u16::MAX);
        assert_eq!(range_name("registered").map(|r| r.low), Some(1024));
        assert_eq!(range_name("any").map(|r| (r.low, r.high)), Some((0, 65535)));
        assert_eq!(range_name("all"), None);
    }

    #[test]
    fn docs_show_the_current_table() {
        let docs = include_str!("../../../docs/policy.md");
        assert!(
            docs.contains(&markdown_table()),
            "docs/policy.md is out of date; paste in services::markdown_table():\n{}",
            markdown_table()
        );
    }
}
