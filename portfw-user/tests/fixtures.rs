//! Packet-path fixtures: one table row per line of the README's "How it judges a packet"
//! table and per header layout, each a {description, verdict, counter, frame} run through the
//! kernel program with BPF_PROG_TEST_RUN, plus every truncation of three representative frames.
//! Each row is also held against the reference classifier, so a row and the reference cannot
//! drift apart. Needs root (or CAP_BPF + CAP_NET_ADMIN) to load the program.
mod common;

use common::{
    builder::{
        ETH_ARP, ETH_IPV4, ETH_IPV6, ETH_LLDP, Ext, Frame, L4, TPID_8021AD, TPID_8021Q, TPID_9100,
        arp, ether, hex, icmp, icmp6, proto, raw, sctp, tcp, tcp_from, udp, udplite, unhex, v4, v6,
    },
    reference::{self, XDP_DROP, XDP_PASS, xdp_name},
};
use portfw::{
    compile,
    loader::Loaded,
    policy::{self, Policy},
};
use portfw_common::counter::{
    ALLOW_DEFAULT, ALLOW_RULE, DROP_DEFAULT, DROP_RULE, FRAGMENT_ALLOW, FRAGMENT_DROP, ICMP_ALLOW,
    ICMP_DROP, MALFORMED, NAMES, NON_IP_ALLOW, NON_IP_DROP, OTHER_IP_ALLOW, OTHER_IP_DROP,
};

/// An allow-list with the settings left at their defaults: icmp, fragments and non-ip allow,
/// other-ip follows `default` (drop).
const STRICT: &str = "\
default: drop
log: drops
rules:
  - allow: [ssh, 80/tcp, https/tcp]
  - name: dns
    allow: 53
  - drop: 8000-8999/tcp
  - allow: 5001/udp
  - allow: 2905/sctp
  - allow: 7000/udplite
  - allow: 9000-9100
";

/// A block-list whose settings all say drop, the opposite of their defaults.
const LOCKED: &str = "\
default: allow
log: all
icmp: drop
fragments: drop
other-ip: drop
non-ip: drop
rules:
  - drop: [23, 8000-8100/udp]
  - drop: 2905/sctp
  - drop: 7000/udplite
";

/// Everything allowed except a few ports; other-ip follows `default` (allow).
const OPEN: &str = "\
default: allow
log: none
rules:
  - drop: [23, 8000-8100/udp]
";

/// One row of the table.
struct Fixture {
    description: String,
    /// `XDP_PASS` or `XDP_DROP`.
    verdict: u32,
    /// The verdict counter that must move by exactly one.
    counter: u32,
    frame: Vec<u8>,
}

/// What a row's frame is given as: a built frame, or raw bytes (fuzz findings).
trait IntoBytes {
    fn into_bytes(self) -> Vec<u8>;
}

impl IntoBytes for Frame {
    fn into_bytes(self) -> Vec<u8> {
        self.build()
    }
}

impl IntoBytes for Vec<u8> {
    fn into_bytes(self) -> Vec<u8> {
        self
    }
}

fn passes(counter: u32, description: impl Into<String>, frame: impl IntoBytes) -> Fixture {
    Fixture {
        description: description.into(),
        verdict: XDP_PASS,
        counter,
        frame: frame.into_bytes(),
    }
}

fn drops(counter: u32, description: impl Into<String>, frame: impl IntoBytes) -> Fixture {
    Fixture {
        description: description.into(),
        verdict: XDP_DROP,
        counter,
        frame: frame.into_bytes(),
    }
}

/// Builds an untagged frame of one IP version around a transport header.
type IpBuilder = fn(L4) -> Frame;

/// The two IP versions, to build each port fixture over both.
const IP_VERSIONS: [(&str, IpBuilder); 2] = [("v4", v4), ("v6", v6)];

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "fixture tests load an XDP program and need root; run `cargo xtask test` as root"
    );
}

fn parse(yaml: &str) -> Policy {
    match policy::parse(yaml, "fixture.yaml") {
        Ok(parsed) => parsed.policy,
        Err(d) => panic!("fixture policy invalid:\n{d}"),
    }
}

fn load() -> Loaded {
    require_root();
    Loaded::load().unwrap_or_else(|e| panic!("loading the XDP program: {e:#?}"))
}

/// Runs every row against the kernel under `yaml` and checks the verdict, that exactly the
/// row's counter moved, and that the reference classifier agrees. Returns the failures.
fn run(loaded: &mut Loaded, yaml: &str, fixtures: &[Fixture]) -> Vec<String> {
    let policy = parse(yaml);
    loaded
        .tables
        .install(&compile::compile(&policy).expect("compile policy"))
        .expect("install policy");
    let mut failures = Vec::new();
    for f in fixtures {
        let before = loaded.counters().expect("counters");
        let got = loaded.test_run(&f.frame).expect("test run");
        let after = loaded.counters().expect("counters");
        let moved: Vec<usize> = (0..before.len())
            .filter(|&i| after[i] != before[i])
            .collect();
        let expected = reference::classify(&f.frame, &policy);
        let mut problems = Vec::new();
        if got != f.verdict {
            problems.push(format!(
                "kernel said {}, expected {}",
                xdp_name(got),
                xdp_name(f.verdict)
            ));
        }
        let one = moved.len() == 1 && after[f.counter as usize] == before[f.counter as usize] + 1;
        if !one {
            let names: Vec<&str> = moved.iter().map(|&i| NAMES[i]).collect();
            problems.push(format!(
                "counters moved: {names:?}, expected only {}",
                NAMES[f.counter as usize]
            ));
        }
        if expected.xdp() != f.verdict || !expected.tally().counters().contains(&f.counter) {
            problems.push(format!(
                "reference says {} ({:?}), the row says {} ({})",
                xdp_name(expected.xdp()),
                expected.class,
                xdp_name(f.verdict),
                NAMES[f.counter as usize]
            ));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {}\n{}",
                f.description,
                problems.join("; "),
                hex(&f.frame)
            ));
        }
    }
    failures
}

/// Ports of every protocol over both IP versions: rules, first match, and the default.
fn port_fixtures() -> Vec<Fixture> {
    let mut rows = Vec::new();
    for (ver, ip) in IP_VERSIONS {
        rows.extend([
            passes(
                ALLOW_RULE,
                format!("{ver} tcp 22 allowed (ssh)"),
                ip(tcp(22)),
            ),
            passes(ALLOW_RULE, format!("{ver} tcp 80 allowed"), ip(tcp(80))),
            passes(ALLOW_RULE, format!("{ver} tcp 443 allowed"), ip(tcp(443))),
            drops(
                DROP_DEFAULT,
                format!("{ver} udp 22: ssh is tcp only"),
                ip(udp(22)),
            ),
            passes(
                ALLOW_RULE,
                format!("{ver} tcp 53: no protocol means both"),
                ip(tcp(53)),
            ),
            passes(ALLOW_RULE, format!("{ver} udp 53 allowed"), ip(udp(53))),
            drops(
                DROP_RULE,
                format!("{ver} tcp 8000: range start dropped"),
                ip(tcp(8000)),
            ),
            drops(
                DROP_RULE,
                format!("{ver} tcp 8999: range end dropped"),
                ip(tcp(8999)),
            ),
            drops(
                DROP_DEFAULT,
                format!("{ver} tcp 9999: default"),
                ip(tcp(9999)),
            ),
            passes(ALLOW_RULE, format!("{ver} udp 5001 allowed"), ip(udp(5001))),
            drops(
                DROP_DEFAULT,
                format!("{ver} tcp 5001: udp-only rule"),
                ip(tcp(5001)),
            ),
            passes(
                ALLOW_RULE,
                format!("{ver} udp 9100 allowed (range end)"),
                ip(udp(9100)),
            ),
            drops(
                DROP_DEFAULT,
                format!("{ver} tcp 9101 just past range"),
                ip(tcp(9101)),
            ),
            drops(
                DROP_DEFAULT,
                format!("{ver} tcp 65535 default"),
                ip(tcp(65535)),
            ),
            drops(
                DROP_DEFAULT,
                format!("{ver} udp 0 is a port like any"),
                ip(udp(0)),
            ),
            passes(
                ALLOW_RULE,
                format!("{ver} sctp 2905 allowed"),
                ip(sctp(2905)),
            ),
            drops(
                DROP_DEFAULT,
                format!("{ver} sctp 22: ssh is tcp"),
                ip(sctp(22)),
            ),
            passes(
                ALLOW_RULE,
                format!("{ver} udplite 7000 allowed"),
                ip(udplite(7000)),
            ),
            drops(
                DROP_DEFAULT,
                format!("{ver} udplite 53: not udp"),
                ip(udplite(53)),
            ),
            passes(
                ALLOW_RULE,
                format!("{ver} tcp from port 1 to 22"),
                ip(tcp_from(1, 22)),
            ),
            drops(
                MALFORMED,
                format!("{ver} tcp source port 0"),
                ip(tcp_from(0, 22)),
            ),
            drops(
                MALFORMED,
                format!("{ver} tcp destination port 0"),
                ip(tcp(0)),
            ),
            passes(
                ALLOW_RULE,
                format!("{ver} tcp with options (data offset 8)"),
                ip(L4::Tcp {
                    src: 40000,
                    dst: 22,
                    flags: 0x02,
                    doff: None,
                    options: vec![2, 4, 5, 0xb4, 4, 2, 1, 1, 1, 3, 3, 7],
                }),
            ),
        ]);
    }
    rows
}

/// The same ports under a default-allow block-list.
fn open_port_fixtures() -> Vec<Fixture> {
    let mut rows = Vec::new();
    for (ver, ip) in IP_VERSIONS {
        rows.extend([
            passes(
                ALLOW_DEFAULT,
                format!("{ver} tcp 80 default allow"),
                ip(tcp(80)),
            ),
            drops(DROP_RULE, format!("{ver} tcp 23 dropped"), ip(tcp(23))),
            drops(DROP_RULE, format!("{ver} udp 23 dropped"), ip(udp(23))),
            drops(DROP_RULE, format!("{ver} udp 8050 dropped"), ip(udp(8050))),
            passes(
                ALLOW_DEFAULT,
                format!("{ver} tcp 8050: udp-only"),
                ip(tcp(8050)),
            ),
            passes(
                ALLOW_DEFAULT,
                format!("{ver} sctp 23: sctp not named"),
                ip(sctp(23)),
            ),
            passes(ALLOW_DEFAULT, format!("{ver} udp 0 allowed"), ip(udp(0))),
            drops(
                MALFORMED,
                format!("{ver} tcp port 0 dropped even with default allow"),
                ip(tcp(0)),
            ),
            passes(
                OTHER_IP_ALLOW,
                format!("{ver} GRE: other-ip follows default allow"),
                ip(raw(proto::GRE, &[0; 8])),
            ),
        ]);
    }
    rows
}

/// VLAN stacks: 0, 1 and 2 tags of each TPID are transparent; a third tag is malformed.
fn vlan_fixtures() -> Vec<Fixture> {
    let stacks: [(&str, &[(u16, u16)]); 8] = [
        ("802.1Q", &[(TPID_8021Q, 10)]),
        ("802.1ad", &[(TPID_8021AD, 10)]),
        ("0x9100", &[(TPID_9100, 10)]),
        ("QinQ 88a8/8100", &[(TPID_8021AD, 100), (TPID_8021Q, 10)]),
        ("QinQ 9100/8100", &[(TPID_9100, 100), (TPID_8021Q, 10)]),
        ("QinQ 8100/8100", &[(TPID_8021Q, 100), (TPID_8021Q, 10)]),
        ("QinQ 88a8/88a8", &[(TPID_8021AD, 100), (TPID_8021AD, 10)]),
        ("QinQ 9100/9100 vid 0", &[(TPID_9100, 0), (TPID_9100, 0)]),
    ];
    let mut rows = Vec::new();
    for (name, stack) in stacks {
        let tagged = |mut f: Frame| {
            f.tags = stack.to_vec();
            f
        };
        rows.extend([
            passes(
                ALLOW_RULE,
                format!("{name}: v4 tcp 22"),
                tagged(v4(tcp(22))),
            ),
            drops(
                DROP_RULE,
                format!("{name}: v4 tcp 8080"),
                tagged(v4(tcp(8080))),
            ),
            passes(
                ALLOW_RULE,
                format!("{name}: v6 udp 53"),
                tagged(v6(udp(53))),
            ),
            drops(
                DROP_DEFAULT,
                format!("{name}: v6 tcp 9200"),
                tagged(v6(tcp(9200))),
            ),
        ]);
    }
    rows.extend([
        passes(
            NON_IP_ALLOW,
            "ARP in one tag: non-ip",
            arp().tag(TPID_8021Q, 5),
        ),
        passes(
            NON_IP_ALLOW,
            "LLDP in two tags: non-ip",
            ether(ETH_LLDP, &[0; 32])
                .tag(TPID_8021AD, 5)
                .tag(TPID_8021Q, 6),
        ),
        passes(
            ICMP_ALLOW,
            "ICMP echo in QinQ",
            v4(icmp(8, 0)).tag(TPID_8021AD, 5).tag(TPID_8021Q, 6),
        ),
        drops(
            MALFORMED,
            "three tags 88a8/8100/8100",
            v4(tcp(22))
                .tag(TPID_8021AD, 1)
                .tag(TPID_8021Q, 2)
                .tag(TPID_8021Q, 3),
        ),
        drops(
            MALFORMED,
            "three tags 9100/9100/9100 around IPv6",
            v6(udp(53))
                .tag(TPID_9100, 1)
                .tag(TPID_9100, 2)
                .tag(TPID_9100, 3),
        ),
        drops(
            MALFORMED,
            "three tags around ARP: still malformed, not non-ip",
            arp()
                .tag(TPID_8021Q, 1)
                .tag(TPID_8021Q, 2)
                .tag(TPID_8021Q, 3),
        ),
        drops(
            MALFORMED,
            "four tags",
            v4(tcp(22))
                .tag(TPID_8021AD, 1)
                .tag(TPID_8021Q, 2)
                .tag(TPID_8021Q, 3)
                .tag(TPID_8021Q, 4),
        ),
        passes(
            NON_IP_ALLOW,
            "TPID 0x9200 is not a VLAN tag: non-ip",
            v4(tcp(8080)).tag(0x9200, 1),
        ),
        passes(
            NON_IP_ALLOW,
            "0x9200 as a third tag ends the stack: non-ip",
            v4(tcp(8080))
                .tag(TPID_8021AD, 1)
                .tag(TPID_8021Q, 2)
                .tag(0x9200, 3),
        ),
        drops(
            MALFORMED,
            "tag cut after its TCI",
            v4(tcp(22)).tag(TPID_8021Q, 1).build()[..16].to_vec(),
        ),
        drops(
            MALFORMED,
            "frame ends right after the outer TPID",
            v4(tcp(22)).tag(TPID_8021AD, 1).build()[..14].to_vec(),
        ),
    ]);
    rows
}

/// IPv4 header layouts: every IHL, broken IHL, version and total length.
fn ipv4_fixtures() -> Vec<Fixture> {
    let mut rows = Vec::new();
    for words in 0..=10u8 {
        let ihl = 5 + words;
        rows.push(passes(
            ALLOW_RULE,
            format!("IHL {ihl}: tcp 22 read after the options"),
            v4(tcp(22)).options(words),
        ));
        rows.push(drops(
            DROP_RULE,
            format!("IHL {ihl}: tcp 8080 read after the options"),
            v4(tcp(8080)).options(words),
        ));
    }
    for ihl in 0..5u8 {
        rows.push(drops(
            MALFORMED,
            format!("IHL {ihl} is under 5"),
            v4(tcp(22)).v4(|ip| ip.ihl = Some(ihl)),
        ));
    }
    rows.extend([
        passes(
            ALLOW_RULE,
            "record-route option (IHL 8)",
            v4(udp(53)).v4(|ip| ip.options = vec![7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        ),
        drops(
            MALFORMED,
            "IHL 15 but the frame ends after 20 header bytes",
            v4(raw(proto::TCP, &[])).v4(|ip| ip.ihl = Some(15)),
        ),
        drops(
            MALFORMED,
            "IHL 10 takes the TCP header for options: nothing is left",
            v4(tcp(22)).v4(|ip| ip.ihl = Some(10)),
        ),
        drops(
            MALFORMED,
            "IP version 6 in an IPv4 frame",
            v4(tcp(22)).v4(|ip| ip.version = 6),
        ),
        drops(
            MALFORMED,
            "IP version 4 in an IPv6 frame",
            v6(tcp(22)).v6(|ip| ip.version = 4),
        ),
        drops(
            MALFORMED,
            "total length 0",
            v4(tcp(22)).v4(|ip| ip.total_len = Some(0)),
        ),
        drops(
            MALFORMED,
            "total length 19, shorter than the header",
            v4(tcp(22)).v4(|ip| ip.total_len = Some(19)),
        ),
        drops(
            MALFORMED,
            "total length shorter than header with options",
            v4(tcp(22)).options(2).v4(|ip| ip.total_len = Some(24)),
        ),
        drops(
            MALFORMED,
            "total length ends inside the TCP header",
            v4(tcp(22)).v4(|ip| ip.total_len = Some(24)),
        ),
        drops(
            MALFORMED,
            "total length one byte short of the TCP header",
            v4(tcp(22)).v4(|ip| ip.total_len = Some(39)),
        ),
        drops(
            MALFORMED,
            "total length one byte beyond the frame",
            v4(tcp(22)).v4(|ip| ip.total_len = Some(41)),
        ),
        drops(
            MALFORMED,
            "total length 65535",
            v4(tcp(22)).v4(|ip| ip.total_len = Some(65535)),
        ),
        passes(
            ALLOW_RULE,
            "link padding after the datagram is ignored",
            v4(tcp(22)).pad(20),
        ),
        drops(
            MALFORMED,
            "UDP header only in link padding",
            v4(udp(53).cut(4)).pad(22),
        ),
        drops(
            MALFORMED,
            "frame shorter than the IPv4 header",
            v4(tcp(22)).build()[..14 + 19].to_vec(),
        ),
        drops(
            MALFORMED,
            "frame ends inside the options",
            v4(tcp(22)).options(4).build()[..14 + 28].to_vec(),
        ),
        drops(
            MALFORMED,
            "IPv4 EtherType with nothing after it",
            ether(ETH_IPV4, &[]),
        ),
    ]);
    rows
}

/// IPv4 fragments: the first is judged by ports, later ones by `fragments:`.
fn ipv4_fragment_fixtures(fragments_drop: bool) -> Vec<Fixture> {
    let frag_counter = if fragments_drop {
        FRAGMENT_DROP
    } else {
        FRAGMENT_ALLOW
    };
    let later = |counter, d: &str, f: Frame| {
        if fragments_drop {
            drops(counter, format!("{d} (fragments: drop)"), f)
        } else {
            passes(counter, format!("{d} (fragments: allow)"), f)
        }
    };
    let mut rows = vec![
        later(
            frag_counter,
            "v4 udp non-first fragment, offset 2",
            v4(raw(proto::UDP, &[0xee; 40])).fragment(2, true),
        ),
        later(
            frag_counter,
            "v4 tcp non-first fragment, offset 2: not RFC 1858",
            v4(raw(proto::TCP, &[0; 40])).fragment(2, true),
        ),
        later(
            frag_counter,
            "v4 last fragment at the largest offset",
            v4(raw(proto::UDP, &[1; 8])).fragment(0x1fff, false),
        ),
        later(
            frag_counter,
            "v4 udp fragment at offset 1",
            v4(raw(proto::UDP, &[0; 16])).fragment(1, true),
        ),
        later(
            frag_counter,
            "v4 non-first fragment of ICMP",
            v4(raw(proto::ICMP, &[0; 16])).fragment(100, false),
        ),
        later(
            frag_counter,
            "v4 non-first fragment of GRE",
            v4(raw(proto::GRE, &[0; 16])).fragment(100, false),
        ),
        later(
            frag_counter,
            "v4 non-first fragment with an empty payload",
            v4(raw(proto::UDP, &[])).fragment(9, false),
        ),
        later(
            frag_counter,
            "v4 non-first fragment in QinQ with options",
            v4(raw(proto::TCP, &[0; 24]))
                .options(3)
                .fragment(77, true)
                .tag(TPID_8021AD, 1)
                .tag(TPID_8021Q, 2),
        ),
        drops(
            MALFORMED,
            "v4 tcp fragment at offset 1 (RFC 1858)",
            v4(raw(proto::TCP, &[0; 16])).fragment(1, true),
        ),
        drops(
            MALFORMED,
            "v4 tcp last fragment at offset 1 (RFC 1858)",
            v4(raw(proto::TCP, &[0; 16])).fragment(1, false),
        ),
        drops(
            MALFORMED,
            "v4 non-first fragment with total length beyond the frame",
            v4(raw(proto::UDP, &[0; 16]))
                .fragment(100, false)
                .v4(|ip| ip.total_len = Some(200)),
        ),
        drops(
            MALFORMED,
            "v4 tiny first fragment: 8 bytes of TCP hold the ports, not the header",
            v4(tcp(22).cut(8)).fragment(0, true),
        ),
        drops(
            MALFORMED,
            "v4 tiny first fragment: 4 bytes of UDP",
            v4(udp(53).cut(4)).fragment(0, true),
        ),
        drops(
            MALFORMED,
            "v4 tiny first fragment: 2 bytes of UDP, the ports split",
            v4(udp(53).cut(2)).fragment(0, true),
        ),
        drops(
            MALFORMED,
            "v4 tiny first fragment: 8 bytes of SCTP",
            v4(sctp(2905).cut(8)).fragment(0, true),
        ),
        drops(
            MALFORMED,
            "v4 tiny first fragment: 4 bytes of UDP-Lite",
            v4(udplite(7000).cut(4)).fragment(0, true),
        ),
        drops(
            MALFORMED,
            "v4 first fragment with no transport bytes at all",
            v4(raw(proto::UDP, &[])).fragment(0, true),
        ),
    ];
    // First fragments are judged by port, so these depend on the policy's rules.
    if fragments_drop {
        rows.extend([
            passes(
                ALLOW_DEFAULT,
                "v4 first fragment judged by port: udp 53 (default allow)",
                v4(udp(53)).fragment(0, true),
            ),
            drops(
                DROP_RULE,
                "v4 first fragment judged by port: udp 8050",
                v4(udp(8050)).fragment(0, true),
            ),
            drops(
                ICMP_DROP,
                "v4 first fragment of an ICMP echo (icmp: drop)",
                v4(icmp(8, 0)).fragment(0, true),
            ),
        ]);
    } else {
        rows.extend([
            passes(
                ALLOW_RULE,
                "v4 first fragment (MF) judged by port: udp 53",
                v4(udp(53)).fragment(0, true),
            ),
            drops(
                DROP_DEFAULT,
                "v4 first fragment judged by port: udp 54",
                v4(udp(54)).fragment(0, true),
            ),
            passes(
                ALLOW_RULE,
                "v4 first fragment with exactly 20 TCP bytes",
                v4(tcp(22).cut(20)).fragment(0, true),
            ),
            drops(
                DROP_RULE,
                "v4 first fragment to tcp 8080 with options",
                v4(tcp(8080)).options(2).fragment(0, true),
            ),
            passes(
                ICMP_ALLOW,
                "v4 first fragment of an ICMP echo",
                v4(icmp(8, 0)).fragment(0, true),
            ),
        ]);
    }
    rows
}

type ExtBuilder = fn() -> Ext;

/// IPv6 extension headers of every kind, chains up to the bound and past it, truncation.
fn ipv6_ext_fixtures() -> Vec<Fixture> {
    let kinds: [(&str, ExtBuilder); 7] = [
        ("hop-by-hop", Ext::hop_by_hop),
        ("routing", Ext::routing),
        ("destination options", Ext::dest_opts),
        ("mobility", Ext::mobility),
        ("AH", || Ext::ah(4)),
        ("AH with payload length 0 (8 bytes)", || Ext::ah(0)),
        ("atomic fragment (offset 0, M 0)", || {
            Ext::fragment(0, false)
        }),
    ];
    let mut rows = Vec::new();
    for (name, ext) in kinds {
        rows.extend([
            passes(
                ALLOW_RULE,
                format!("{name}: tcp 22"),
                v6(tcp(22)).ext(ext()),
            ),
            drops(
                DROP_RULE,
                format!("{name}: tcp 8080"),
                v6(tcp(8080)).ext(ext()),
            ),
            passes(
                ALLOW_RULE,
                format!("{name}: udp 53"),
                v6(udp(53)).ext(ext()),
            ),
        ]);
    }
    let mix = [
        Ext::hop_by_hop,
        Ext::dest_opts,
        Ext::routing,
        || Ext::fragment(0, true),
        || Ext::ah(1),
        Ext::mobility,
        || Ext::opts(proto::DSTOPTS, 3),
        || Ext::opts(proto::HOPOPTS, 1),
    ];
    let chain = |n: usize, l4| {
        let mut f = v6(l4);
        for make in mix.iter().cycle().take(n) {
            f = f.ext(make());
        }
        f
    };
    for n in [2, 3, 5, 7, 8] {
        rows.push(passes(
            ALLOW_RULE,
            format!("chain of {n} extension headers: tcp 22"),
            chain(n, tcp(22)),
        ));
    }
    rows.extend([
        drops(
            DROP_RULE,
            "chain of 8: tcp 8080 still judged by port",
            chain(8, tcp(8080)),
        ),
        drops(MALFORMED, "chain of 9 is past the bound", chain(9, tcp(22))),
        drops(
            MALFORMED,
            "chain of 12 is past the bound",
            chain(12, udp(53)),
        ),
        drops(
            MALFORMED,
            "8 headers then a non-first fragment header as the 9th",
            chain(8, tcp(22)).ext(Ext::fragment(5, false)),
        ),
        passes(
            ALLOW_RULE,
            "hop-by-hop after destination options is walked too",
            v6(tcp(22)).ext(Ext::dest_opts()).ext(Ext::hop_by_hop()),
        ),
        passes(
            ALLOW_RULE,
            "long hop-by-hop (hdrlen 20, 168 bytes)",
            v6(tcp(22)).ext(Ext::opts(proto::HOPOPTS, 20)),
        ),
        passes(
            ICMP_ALLOW,
            "ICMPv6 echo after hop-by-hop and routing",
            v6(icmp6(128, 0)).ext(Ext::hop_by_hop()).ext(Ext::routing()),
        ),
        drops(
            OTHER_IP_DROP,
            "ESP after a destination-options header: other-ip",
            v6(raw(proto::ESP, &[0; 16])).ext(Ext::dest_opts()),
        ),
        drops(
            OTHER_IP_DROP,
            "no next header (59) after hop-by-hop: other-ip",
            v6(raw(proto::NONE, &[])).ext(Ext::hop_by_hop()),
        ),
        drops(
            MALFORMED,
            "hop-by-hop claims 16 bytes, the payload has 8",
            v6(raw(proto::TCP, &[])).ext(Ext {
                kind: proto::HOPOPTS,
                bytes: vec![0, 1, 1, 4, 0, 0, 0, 0],
            }),
        ),
        drops(
            MALFORMED,
            "routing header cut at 4 bytes",
            v6(raw(proto::TCP, &[])).ext(Ext {
                kind: proto::ROUTING,
                bytes: vec![0, 0, 4, 0],
            }),
        ),
        drops(
            MALFORMED,
            "AH claims 24 bytes, the payload has 12",
            v6(raw(proto::TCP, &[])).ext(Ext {
                kind: proto::AH,
                bytes: vec![0, 4, 0, 0, 0, 0, 0x10, 1, 0, 0, 0, 1],
            }),
        ),
        drops(
            MALFORMED,
            "fragment header cut at 6 bytes",
            v6(raw(proto::TCP, &[])).ext(Ext {
                kind: proto::FRAGMENT,
                bytes: vec![0, 0, 0, 0, 0, 0],
            }),
        ),
        drops(
            MALFORMED,
            "hop-by-hop lies past the payload length (in link padding)",
            v6(tcp(22))
                .ext(Ext::hop_by_hop())
                .v6(|ip| ip.payload_len = Some(0)),
        ),
        drops(
            MALFORMED,
            "payload length covers the extension header but not the TCP header",
            v6(tcp(22))
                .ext(Ext::hop_by_hop())
                .v6(|ip| ip.payload_len = Some(8 + 10)),
        ),
        drops(
            MALFORMED,
            "payload length one byte beyond the frame",
            v6(tcp(22))
                .ext(Ext::dest_opts())
                .v6(|ip| ip.payload_len = Some(8 + 20 + 1)),
        ),
        drops(
            MALFORMED,
            "frame shorter than the IPv6 header",
            v6(tcp(22)).build()[..14 + 39].to_vec(),
        ),
        passes(
            ALLOW_RULE,
            "link padding after an IPv6 datagram is ignored",
            v6(udp(53)).ext(Ext::hop_by_hop()).pad(30),
        ),
    ]);
    rows
}

/// IPv6 fragment headers: first fragments by port, later ones by `fragments:`.
fn ipv6_fragment_fixtures(fragments_drop: bool) -> Vec<Fixture> {
    let (verdict, counter) = if fragments_drop {
        (XDP_DROP, FRAGMENT_DROP)
    } else {
        (XDP_PASS, FRAGMENT_ALLOW)
    };
    let later = |d: &str, f: Frame| Fixture {
        description: format!(
            "{d} (fragments: {})",
            if fragments_drop { "drop" } else { "allow" }
        ),
        verdict,
        counter,
        frame: f.build(),
    };
    let mut rows = vec![
        later(
            "v6 non-first fragment of udp",
            v6(raw(proto::UDP, &[0xee; 32])).fragment(10, false),
        ),
        later(
            "v6 non-first fragment after hop-by-hop",
            v6(raw(proto::TCP, &[0; 32]))
                .ext(Ext::hop_by_hop())
                .fragment(300, true),
        ),
        later(
            "v6 tcp fragment at offset 1: RFC 1858 is IPv4-only",
            v6(raw(proto::TCP, &[0; 16])).fragment(1, true),
        ),
        later(
            "v6 non-first fragment with an empty payload",
            v6(raw(proto::UDP, &[])).fragment(0x1fff, false),
        ),
        later("v6 non-first fragment as the 8th header", {
            let mut f = v6(raw(proto::UDP, &[0; 8]));
            for _ in 0..7 {
                f = f.ext(Ext::dest_opts());
            }
            f.fragment(2, false)
        }),
        drops(
            MALFORMED,
            "v6 tiny first fragment: 10 bytes of TCP",
            v6(tcp(22).cut(10)).fragment(0, true),
        ),
        drops(
            MALFORMED,
            "v6 tiny first fragment: 4 bytes of UDP",
            v6(udp(53).cut(4)).fragment(0, true),
        ),
        drops(
            MALFORMED,
            "v6 tiny first fragment: 11 bytes of SCTP",
            v6(sctp(2905).cut(11)).fragment(0, true),
        ),
        drops(
            MALFORMED,
            "v6 non-first fragment header past the payload length (in link padding)",
            v6(raw(proto::UDP, &[]))
                .fragment(5, false)
                .v6(|ip| ip.payload_len = Some(0)),
        ),
        drops(
            MALFORMED,
            "v6 non-first fragment header half inside the payload length",
            v6(raw(proto::UDP, &[]))
                .fragment(5, false)
                .v6(|ip| ip.payload_len = Some(4)),
        ),
        drops(
            MALFORMED,
            "v6 first fragment header is the last thing in the payload",
            v6(raw(proto::TCP, &[])).fragment(0, true),
        ),
    ];
    // First fragments are judged by port, so these depend on the policy's rules.
    if fragments_drop {
        rows.extend([
            passes(
                ALLOW_DEFAULT,
                "v6 first fragment judged by port: udp 53 (default allow)",
                v6(udp(53)).fragment(0, true),
            ),
            drops(
                DROP_RULE,
                "v6 first fragment judged by port: udp 8050",
                v6(udp(8050)).fragment(0, true),
            ),
        ]);
    } else {
        rows.extend([
            passes(
                ALLOW_RULE,
                "v6 first fragment judged by port: udp 53",
                v6(udp(53)).fragment(0, true),
            ),
            drops(
                DROP_DEFAULT,
                "v6 first fragment judged by port: udp 99",
                v6(udp(99)).fragment(0, true),
            ),
            passes(
                ALLOW_RULE,
                "v6 first fragment behind routing: tcp 443",
                v6(tcp(443)).ext(Ext::routing()).fragment(0, true),
            ),
        ]);
    }
    rows
}

/// TCP cut before or inside its header, and broken data offsets.
fn tcp_header_fixtures() -> Vec<Fixture> {
    let mut rows = Vec::new();
    for (ver, ip) in IP_VERSIONS {
        for len in [0, 2, 3, 4, 12, 19] {
            rows.push(drops(
                MALFORMED,
                format!("{ver} TCP header cut to {len} bytes"),
                ip(tcp(22).cut(len)),
            ));
        }
        for doff in 0..5u8 {
            rows.push(drops(
                MALFORMED,
                format!("{ver} TCP data offset {doff}"),
                ip(L4::Tcp {
                    src: 40000,
                    dst: 22,
                    flags: 0x02,
                    doff: Some(doff),
                    options: Vec::new(),
                }),
            ));
        }
        // Only the 20-byte minimal header must be there (see reference.rs).
        rows.push(passes(
            ALLOW_RULE,
            format!("{ver} TCP data offset 15 without the options: ports are readable"),
            ip(L4::Tcp {
                src: 40000,
                dst: 22,
                flags: 0x02,
                doff: Some(15),
                options: Vec::new(),
            }),
        ));
        rows.extend([
            drops(
                MALFORMED,
                format!("{ver} UDP cut to 7 bytes"),
                ip(udp(53).cut(7)),
            ),
            drops(
                MALFORMED,
                format!("{ver} SCTP cut to 11 bytes"),
                ip(sctp(2905).cut(11)),
            ),
            drops(
                MALFORMED,
                format!("{ver} UDP-Lite cut to 3 bytes"),
                ip(udplite(7000).cut(3)),
            ),
            passes(
                ALLOW_RULE,
                format!("{ver} UDP with exactly its 8 header bytes"),
                ip(udp(53).cut(8)),
            ),
            passes(
                ALLOW_RULE,
                format!("{ver} SCTP with exactly its 12 header bytes"),
                ip(sctp(2905).cut(12)),
            ),
        ]);
    }
    rows
}

/// ICMP and ICMPv6 under `icmp: allow` (the STRICT policy).
fn icmp_allow_fixtures() -> Vec<Fixture> {
    vec![
        passes(ICMP_ALLOW, "ICMP echo request", v4(icmp(8, 0))),
        passes(ICMP_ALLOW, "ICMP echo reply", v4(icmp(0, 0))),
        passes(ICMP_ALLOW, "ICMP port unreachable", v4(icmp(3, 3))),
        passes(ICMP_ALLOW, "ICMPv6 echo request", v6(icmp6(128, 0))),
        passes(
            ICMP_ALLOW,
            "ICMPv6 neighbour solicitation",
            v6(icmp6(135, 0)),
        ),
        passes(ICMP_ALLOW, "ICMP of exactly 4 bytes", v4(icmp(8, 0).cut(4))),
        drops(MALFORMED, "ICMP of 3 bytes", v4(icmp(8, 0).cut(3))),
        drops(MALFORMED, "ICMPv6 of 2 bytes", v6(icmp6(128, 0).cut(2))),
        drops(
            OTHER_IP_DROP,
            "ICMPv6 (58) inside IPv4 is an other protocol",
            v4(raw(proto::ICMPV6, &[128, 0, 0, 0, 0, 0, 0, 0])),
        ),
        drops(
            OTHER_IP_DROP,
            "ICMP (1) inside IPv6 is an other protocol",
            v6(raw(proto::ICMP, &[8, 0, 0, 0, 0, 0, 0, 0])),
        ),
    ]
}

/// ICMP under `icmp: drop` (LOCKED): the essential messages still pass.
fn icmp_drop_fixtures() -> Vec<Fixture> {
    let mut rows = vec![
        drops(ICMP_DROP, "ICMP echo request dropped", v4(icmp(8, 0))),
        drops(ICMP_DROP, "ICMP port unreachable dropped", v4(icmp(3, 3))),
        drops(ICMP_DROP, "ICMP time exceeded dropped", v4(icmp(11, 0))),
        drops(
            ICMP_DROP,
            "ICMP type 4 code 4 is not frag-needed",
            v4(icmp(4, 4)),
        ),
        passes(
            ICMP_ALLOW,
            "ICMP fragmentation needed (3/4) still passes",
            v4(icmp(3, 4)),
        ),
        passes(
            ICMP_ALLOW,
            "frag-needed in QinQ still passes",
            v4(icmp(3, 4)).tag(TPID_8021AD, 7).tag(TPID_8021Q, 8),
        ),
        drops(ICMP_DROP, "ICMPv6 echo request dropped", v6(icmp6(128, 0))),
        drops(
            ICMP_DROP,
            "ICMPv6 destination unreachable dropped",
            v6(icmp6(1, 4)),
        ),
        drops(
            ICMP_DROP,
            "ICMPv6 router renumbering (138) dropped",
            v6(icmp6(138, 0)),
        ),
        drops(
            ICMP_DROP,
            "ICMPv6 MLD query (130) dropped",
            v6(icmp6(130, 0)),
        ),
        passes(
            ICMP_ALLOW,
            "ICMPv6 packet too big still passes",
            v6(icmp6(2, 0)),
        ),
        passes(
            ICMP_ALLOW,
            "ICMPv6 packet too big behind hop-by-hop",
            v6(icmp6(2, 0)).ext(Ext::hop_by_hop()),
        ),
        drops(
            MALFORMED,
            "ICMPv6 NDP cut to 3 bytes is malformed",
            v6(icmp6(135, 0).cut(3)),
        ),
    ];
    for kind in 133..=137 {
        rows.push(passes(
            ICMP_ALLOW,
            format!("ICMPv6 neighbour discovery {kind} still passes"),
            v6(icmp6(kind, 0)),
        ));
    }
    rows
}

/// Other IP protocols under STRICT: `other-ip` follows the default (drop).
fn other_ip_fixtures(counter: u32, allowed: bool) -> Vec<Fixture> {
    let row = |d: &str, f: Frame| {
        if allowed {
            passes(counter, d.to_owned(), f)
        } else {
            drops(counter, d.to_owned(), f)
        }
    };
    vec![
        row(
            "v4 GRE (47)",
            v4(raw(proto::GRE, &[0, 0, 0x08, 0, 0, 0, 0, 0])),
        ),
        row("v4 ESP (50)", v4(raw(proto::ESP, &[0; 24]))),
        row(
            "v4 AH (51) is not walked in IPv4",
            v4(raw(proto::AH, &[6, 4, 0, 0, 0, 0, 0, 0])),
        ),
        row("v4 OSPF (89)", v4(raw(proto::OSPF, &[2; 24]))),
        row("v4 protocol 255", v4(raw(255, &[]))),
        row(
            "v4 IPv6 no-next-header (59) number",
            v4(raw(proto::NONE, &[])),
        ),
        row("v6 GRE (47)", v6(raw(proto::GRE, &[0; 8]))),
        row("v6 ESP (50)", v6(raw(proto::ESP, &[0; 24]))),
        row("v6 no next header (59)", v6(raw(proto::NONE, &[]))),
        row(
            "v6 OSPF (89) with an empty payload",
            v6(raw(proto::OSPF, &[])),
        ),
        row(
            "v6 HIP (139) is not an extension header here",
            v6(raw(139, &[59, 0, 0, 0, 0, 0, 0, 0])),
        ),
    ]
}

/// Frames that are neither IPv4 nor IPv6.
fn non_ip_fixtures(counter: u32, allowed: bool) -> Vec<Fixture> {
    let row = |d: &str, f: Frame| {
        if allowed {
            passes(counter, d.to_owned(), f)
        } else {
            drops(counter, d.to_owned(), f)
        }
    };
    vec![
        row("ARP request", arp()),
        row(
            "LLDP (0x88cc)",
            ether(ETH_LLDP, &[0x02, 0x07, 0x04, 0, 0, 0, 0, 0, 1]),
        ),
        row("MPLS unicast (0x8847)", ether(0x8847, &[0, 0, 0x11, 64])),
        row(
            "PPPoE discovery (0x8863)",
            ether(0x8863, &[0x11, 0x09, 0, 0, 0, 0]),
        ),
        row(
            "802.3 length field (0x0040) with LLC",
            ether(0x0040, &[0x42, 0x42, 3]),
        ),
        row("MACsec (0x88e5)", ether(0x88e5, &[0; 16])),
        row(
            "ARP EtherType and nothing else (14 bytes)",
            ether(ETH_ARP, &[]),
        ),
        row(
            "IPv6 EtherType off by one (0x86de)",
            ether(ETH_IPV6 + 1, &[0x60; 40]),
        ),
    ]
}

/// Frames the differential fuzzer found the kernel and the reference disagreeing on, kept
/// here once the disagreement was settled.
fn fuzz_findings() -> Vec<Fixture> {
    vec![
        // Seed 0x70667734f0220001, policy 80, packet 140. The payload length (22) holds a
        // first-fragment header and an 8-byte AH (payload length 0); a non-first fragment
        // header follows 16 bytes in and so ends past the payload, in link padding. The
        // kernel read it anyway and returned the `fragments:` verdict; it is malformed.
        drops(
            MALFORMED,
            "fuzz: non-first IPv6 fragment header past the payload length",
            unhex(
                "02000000000102000000000286dd6000000000162c40200100020000000000000000000000022001\
                 0002000000000000000000000001330000010badcafe2c0089c52b3a5f653a0000100badcafe04\
                 05000000010001",
            ),
        ),
    ]
}

#[test]
fn every_fixture_gets_its_documented_verdict() {
    let mut loaded = load();
    let groups: Vec<(&str, &str, Vec<Fixture>)> = vec![
        ("ports", STRICT, port_fixtures()),
        ("ports, default allow", OPEN, open_port_fixtures()),
        ("vlan", STRICT, vlan_fixtures()),
        ("ipv4 headers", STRICT, ipv4_fixtures()),
        ("ipv4 fragments", STRICT, ipv4_fragment_fixtures(false)),
        (
            "ipv4 fragments, dropped",
            LOCKED,
            ipv4_fragment_fixtures(true),
        ),
        ("ipv6 extension headers", STRICT, ipv6_ext_fixtures()),
        ("ipv6 fragments", STRICT, ipv6_fragment_fixtures(false)),
        (
            "ipv6 fragments, dropped",
            LOCKED,
            ipv6_fragment_fixtures(true),
        ),
        ("tcp headers", STRICT, tcp_header_fixtures()),
        ("icmp allowed", STRICT, icmp_allow_fixtures()),
        ("icmp dropped", LOCKED, icmp_drop_fixtures()),
        (
            "other ip: default drop",
            STRICT,
            other_ip_fixtures(OTHER_IP_DROP, false),
        ),
        (
            "other ip: drop",
            LOCKED,
            other_ip_fixtures(OTHER_IP_DROP, false),
        ),
        (
            "other ip: default allow",
            OPEN,
            other_ip_fixtures(OTHER_IP_ALLOW, true),
        ),
        ("non-ip: allow", STRICT, non_ip_fixtures(NON_IP_ALLOW, true)),
        ("non-ip: drop", LOCKED, non_ip_fixtures(NON_IP_DROP, false)),
        ("fuzz findings", STRICT, fuzz_findings()),
    ];
    let mut failures = Vec::new();
    let mut total = 0;
    for (name, yaml, fixtures) in &groups {
        total += fixtures.len();
        for failure in run(&mut loaded, yaml, fixtures) {
            failures.push(format!("[{name}] {failure}"));
        }
    }
    println!("fixtures: {total} run, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {total} fixtures failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        total >= 200,
        "only {total} fixtures; the table must cover the README's verdicts"
    );
}

#[test]
fn every_truncation_of_a_representative_frame_is_malformed() {
    let mut loaded = load();
    let policy = parse(OPEN);
    loaded
        .tables
        .install(&compile::compile(&policy).expect("compile policy"))
        .expect("install policy");
    let frames = [
        ("tcp/ipv4 with options", v4(tcp(80)).options(3)),
        (
            "tcp/ipv6 with hop-by-hop, routing, destination options and a fragment header",
            v6(tcp(80))
                .ext(Ext::hop_by_hop())
                .ext(Ext::routing())
                .ext(Ext::dest_opts())
                .fragment(0, false),
        ),
        (
            "tcp/ipv4 in two vlan tags",
            v4(tcp(80)).tag(TPID_8021AD, 5).tag(TPID_8021Q, 6),
        ),
    ];
    let mut failures = Vec::new();
    let mut cuts = 0u64;
    let before = loaded.counters().expect("counters");
    for (what, frame) in &frames {
        let full = frame.build();
        assert_eq!(
            loaded.test_run(&full).expect("test run"),
            XDP_PASS,
            "{what}: the whole frame must pass"
        );
        assert_eq!(
            reference::classify(&full, &policy).xdp(),
            XDP_PASS,
            "{what}"
        );
        // The kernel's test run refuses frames shorter than an Ethernet header, and no
        // driver delivers one.
        for len in 14..full.len() {
            let cut = &full[..len];
            cuts += 1;
            let got = loaded.test_run(cut).expect("test run");
            let expected = reference::classify(cut, &policy);
            if got != XDP_DROP || !matches!(expected.class, reference::Class::Malformed(_)) {
                failures.push(format!(
                    "{what} cut to {len} bytes: kernel {}, reference {:?}\n{}",
                    xdp_name(got),
                    expected,
                    hex(cut)
                ));
            }
        }
    }
    let after = loaded.counters().expect("counters");
    println!("truncations: {cuts} run");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let malformed = after[MALFORMED as usize] - before[MALFORMED as usize];
    // Plus the three whole frames, allowed by default.
    let allowed = after[ALLOW_DEFAULT as usize] - before[ALLOW_DEFAULT as usize];
    assert_eq!(malformed, cuts, "every truncation counts as malformed");
    assert_eq!(allowed, 3, "the whole frames count as allowed by default");
}

#[test]
fn fixture_hex_round_trips() {
    // Fuzz findings are pasted as hex; make sure what is pasted is what is run.
    let frame = v6(tcp(22)).ext(Ext::hop_by_hop()).build();
    assert_eq!(unhex(&common::builder::hex_line(&frame)), frame);
}
