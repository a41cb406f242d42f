//! Packet-level tests of the kernel program through BPF_PROG_TEST_RUN (`Xdp::test_run`):
//! each fixture is a policy, a crafted frame and the verdict the frame must get.
//! Needs root (or CAP_BPF + CAP_NET_ADMIN) to load the program.
mod common;

use common::builder::*;
use portfw::{
    compile,
    loader::{Loaded, LoaderError},
    policy,
};
use portfw_common::{Event, RULE_DEFAULT, RULE_MALFORMED, RULE_SETTING, counter};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const POLICY: &str = "\
default: drop
log: drops
rules:
  - allow: [ssh, 80/tcp, https/tcp]
  - name: dns
    allow: 53
  - drop: 8000-8999/tcp
  - allow: 5001/udp
  - allow: 9000-9100
  - allow: 2905/sctp
  - allow: 7000/udplite
";

fn load(policy_src: &str) -> Loaded {
    let parsed = match policy::parse(policy_src, "test.yaml") {
        Ok(p) => p,
        Err(d) => panic!("test policy invalid:\n{d}"),
    };
    let compiled = compile::compile(&parsed.policy).expect("compile");
    let mut loaded = match Loaded::load() {
        Ok(l) => l,
        Err(e @ LoaderError::Load(_)) | Err(e @ LoaderError::Program { .. }) => {
            panic!("loading the XDP program needs root: {e:#?}")
        }
        Err(e) => panic!("{e:#?}"),
    };
    loaded.tables.install(&compiled).expect("install policy");
    loaded
}

fn verdict(loaded: &Loaded, frame: &[u8]) -> u32 {
    loaded.test_run(frame).expect("test run")
}

fn name(v: u32) -> &'static str {
    match v {
        XDP_DROP => "DROP",
        XDP_PASS => "PASS",
        _ => "OTHER",
    }
}

struct Fixture {
    what: &'static str,
    frame: Vec<u8>,
    expect: u32,
}

fn fx(what: &'static str, p: Frame, expect: u32) -> Fixture {
    Fixture {
        what,
        frame: p.build(),
        expect,
    }
}

fn check_all(loaded: &Loaded, fixtures: &[Fixture]) {
    let mut failures = Vec::new();
    for f in fixtures {
        let got = verdict(loaded, &f.frame);
        if got != f.expect {
            failures.push(format!(
                "{}: expected {}, got {} (frame {:02x?})",
                f.what,
                name(f.expect),
                name(got),
                f.frame
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} fixture(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn ports_allowed_dropped_and_default_over_both_ip_versions() {
    let loaded = load(POLICY);
    let mut fixtures = Vec::new();
    for mk in [v4 as fn(L4) -> Frame, v6] {
        fixtures.extend([
            fx("tcp 22 allowed by service name", mk(tcp(22)), XDP_PASS),
            fx("tcp 80 allowed", mk(tcp(80)), XDP_PASS),
            fx("tcp 443 allowed", mk(tcp(443)), XDP_PASS),
            fx("udp 22 not allowed (ssh is tcp)", mk(udp(22)), XDP_DROP),
            fx("udp 80 default drop", mk(udp(80)), XDP_DROP),
            fx("tcp 53 allowed (no protocol = both)", mk(tcp(53)), XDP_PASS),
            fx("udp 53 allowed", mk(udp(53)), XDP_PASS),
            fx("tcp 8080 dropped by range rule", mk(tcp(8080)), XDP_DROP),
            fx("tcp 8000 range start", mk(tcp(8000)), XDP_DROP),
            fx("tcp 8999 range end", mk(tcp(8999)), XDP_DROP),
            fx("udp 8080 default drop", mk(udp(8080)), XDP_DROP),
            fx("udp 5001 allowed", mk(udp(5001)), XDP_PASS),
            fx("tcp 5001 default drop", mk(tcp(5001)), XDP_DROP),
            fx("udp 9050 allowed (range, both)", mk(udp(9050)), XDP_PASS),
            fx("tcp 9100 allowed (range end)", mk(tcp(9100)), XDP_PASS),
            fx("tcp 9101 default drop", mk(tcp(9101)), XDP_DROP),
            fx("tcp 65535 default drop", mk(tcp(65535)), XDP_DROP),
            fx("udp 0 default drop", mk(udp(0)), XDP_DROP),
            fx("sctp 2905 allowed", mk(sctp(2905)), XDP_PASS),
            fx("sctp 22 default drop", mk(sctp(22)), XDP_DROP),
            fx("udplite 7000 allowed", mk(udplite(7000)), XDP_PASS),
            fx(
                "udplite 53 default drop (not udp)",
                mk(udplite(53)),
                XDP_DROP,
            ),
        ]);
    }
    check_all(&loaded, &fixtures);
}

#[test]
fn default_allow_policy_passes_unlisted_ports() {
    let loaded = load("default: allow\nrules:\n  - drop: [23, 8000-8100/udp]\n");
    check_all(
        &loaded,
        &[
            fx("tcp 80 default allow", v4(tcp(80)), XDP_PASS),
            fx("tcp 23 dropped", v4(tcp(23)), XDP_DROP),
            fx("udp 23 dropped", v6(udp(23)), XDP_DROP),
            fx("udp 8050 dropped", v4(udp(8050)), XDP_DROP),
            fx("tcp 8050 default allow", v4(tcp(8050)), XDP_PASS),
        ],
    );
}

#[test]
fn vlan_tags_one_and_two_get_the_same_verdicts() {
    let loaded = load(POLICY);
    let mut fixtures = Vec::new();
    for tags in [
        vec![(TPID_8021Q, 10)],
        vec![(TPID_8021AD, 100), (TPID_8021Q, 10)],
        vec![(TPID_9100, 100), (TPID_8021Q, 10)],
    ] {
        let tag = |p: Frame| tags.iter().fold(p, |p, &(tpid, vid)| p.tag(tpid, vid));
        fixtures.extend([
            fx("vlan tcp 22 allowed", tag(v4(tcp(22))), XDP_PASS),
            fx("vlan tcp 8080 dropped", tag(v4(tcp(8080))), XDP_DROP),
            fx("vlan v6 udp 53 allowed", tag(v6(udp(53))), XDP_PASS),
            fx(
                "vlan v6 tcp 9200 default drop",
                tag(v6(tcp(9200))),
                XDP_DROP,
            ),
        ]);
    }
    let three = v4(tcp(22))
        .tag(TPID_8021AD, 1)
        .tag(TPID_8021Q, 2)
        .tag(TPID_8021Q, 3);
    fixtures.push(fx("three vlan tags are malformed", three, XDP_DROP));
    check_all(&loaded, &fixtures);
}

#[test]
fn non_ip_icmp_and_other_protocols() {
    let loaded = load(POLICY);
    let fixtures = vec![
        fx("ARP passes", arp(), XDP_PASS),
        fx("ICMP echo passes", v4(icmp(8, 0)), XDP_PASS),
        fx("ICMPv6 echo passes", v6(icmp6(128, 0)), XDP_PASS),
        fx(
            "ICMPv6 neighbour solicitation passes",
            v6(icmp6(135, 0)),
            XDP_PASS,
        ),
        // other-ip defaults to the policy default (drop here).
        fx(
            "GRE follows other-ip (default: the policy default)",
            v4(raw(proto::GRE, &[0; 8])),
            XDP_DROP,
        ),
    ];
    check_all(&loaded, &fixtures);

    let open = load("default: drop\nother-ip: allow\nicmp: drop\n");
    check_all(
        &open,
        &[
            fx(
                "GRE allowed by other-ip: allow",
                v4(raw(proto::GRE, &[0; 8])),
                XDP_PASS,
            ),
            fx("ICMP echo dropped by icmp: drop", v4(icmp(8, 0)), XDP_DROP),
            fx("ICMPv6 echo dropped", v6(icmp6(128, 0)), XDP_DROP),
            fx(
                "NDP still passes with icmp: drop",
                v6(icmp6(136, 0)),
                XDP_PASS,
            ),
            fx("packet-too-big still passes", v6(icmp6(2, 0)), XDP_PASS),
            fx("frag-needed still passes", v4(icmp(3, 4)), XDP_PASS),
            fx("port unreachable dropped", v4(icmp(3, 3)), XDP_DROP),
        ],
    );
}

#[test]
fn ipv4_options_and_ipv6_extension_headers() {
    let loaded = load(POLICY);
    let with_opts = |dst, opts: Vec<u8>| v4(tcp(dst)).v4(|ip| ip.options = opts);
    let fixtures = vec![
        // Record-route option (IHL 8): the ports sit after the options, not at offset 20.
        fx(
            "v4 options: tcp 22 allowed",
            with_opts(22, vec![7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            XDP_PASS,
        ),
        fx(
            "v4 options: tcp 8080 dropped",
            with_opts(8080, vec![7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            XDP_DROP,
        ),
        fx(
            "v4 max options (IHL 15)",
            with_opts(80, vec![1; 40]),
            XDP_PASS,
        ),
        fx(
            "v6 hop-by-hop + dstopts: tcp 22",
            v6(tcp(22)).ext(Ext::hop_by_hop()).ext(Ext::dest_opts()),
            XDP_PASS,
        ),
        fx(
            "v6 hop-by-hop + dstopts: tcp 8080",
            v6(tcp(8080)).ext(Ext::hop_by_hop()).ext(Ext::dest_opts()),
            XDP_DROP,
        ),
        fx(
            "v6 first fragment: judged by port (allowed)",
            v6(udp(53)).fragment(0, true),
            XDP_PASS,
        ),
        fx(
            "v6 first fragment: judged by port (dropped)",
            v6(udp(99)).fragment(0, true),
            XDP_DROP,
        ),
        fx(
            "v6 non-first fragment: fragments setting (allow)",
            v6(udp(99)).fragment(10, false),
            XDP_PASS,
        ),
        fx(
            "v6 routing header",
            v6(tcp(443)).ext(Ext::routing()),
            XDP_PASS,
        ),
    ];
    check_all(&loaded, &fixtures);
}

#[test]
fn fragments_follow_the_fragments_setting() {
    let frag = |offset: u16, more: bool, l4: L4| v4(l4).fragment(offset, more);
    let allow = load(POLICY);
    let drop = load(&format!("{POLICY}fragments: drop\n"));
    check_all(
        &allow,
        &[
            fx(
                "first fragment judged by port: allowed",
                frag(0, true, udp(53)),
                XDP_PASS,
            ),
            fx(
                "first fragment judged by port: dropped",
                frag(0, true, udp(54)),
                XDP_DROP,
            ),
            fx(
                "non-first fragment allowed by default",
                frag(100, false, udp(54)),
                XDP_PASS,
            ),
            fx(
                "TCP fragment at offset 1 is malformed (RFC 1858)",
                frag(1, true, tcp(22)),
                XDP_DROP,
            ),
        ],
    );
    check_all(
        &drop,
        &[
            fx(
                "non-first fragment dropped",
                frag(100, false, udp(53)),
                XDP_DROP,
            ),
            fx(
                "first fragment still judged by port",
                frag(0, true, udp(53)),
                XDP_PASS,
            ),
        ],
    );
}

#[test]
fn malformed_and_truncated_frames_are_dropped() {
    let loaded = load("default: allow\n");
    let mut fixtures = Vec::new();
    // The full frame passes; every truncation of it is malformed and dropped. The kernel's
    // test run refuses frames shorter than an Ethernet header, and no driver delivers one.
    for (what, packet) in [
        ("tcp/ipv4", v4(tcp(80))),
        ("udp/ipv6", v6(udp(80))),
        (
            "tcp/ipv4 in two vlans",
            v4(tcp(80)).tag(TPID_8021AD, 5).tag(TPID_8021Q, 6),
        ),
    ] {
        let full = packet.build();
        assert_eq!(
            verdict(&loaded, &full),
            XDP_PASS,
            "{what}: full frame must pass"
        );
        for len in 14..full.len() {
            let got = verdict(&loaded, &full[..len]);
            assert_eq!(
                got, XDP_DROP,
                "{what} truncated to {len} bytes must be dropped"
            );
        }
    }
    fixtures.extend([
        // IHL 4 < 5
        fx(
            "IHL below 5",
            v4(tcp(80)).v4(|ip| ip.ihl = Some(4)),
            XDP_DROP,
        ),
        fx(
            "IP version 5 in an IPv4 frame",
            v4(tcp(80)).v4(|ip| ip.version = 5),
            XDP_DROP,
        ),
        // tot_len ends inside TCP
        fx(
            "total length cuts the TCP header",
            v4(tcp(80)).v4(|ip| ip.total_len = Some(24)),
            XDP_DROP,
        ),
        fx(
            "total length beyond the frame",
            v4(tcp(80)).v4(|ip| ip.total_len = Some(1500)),
            XDP_DROP,
        ),
        // Ports only, no full UDP header (total length 24); the Ethernet padding after the
        // datagram must not be read as UDP header.
        fx(
            "UDP header only in link padding",
            v4(udp(80).cut(4)).pad(22),
            XDP_DROP,
        ),
        fx("TCP destination port 0", v4(tcp(0)), XDP_DROP),
        fx("TCP source port 0", v6(tcp_from(0, 80)), XDP_DROP),
        fx(
            "TCP data offset below 5",
            v4(L4::Tcp {
                src: 40000,
                dst: 80,
                flags: 0x02,
                doff: Some(4),
                options: Vec::new(),
            }),
            XDP_DROP,
        ),
    ]);
    let long_chain = (0..9).fold(v6(tcp(80)), |p, _| p.ext(Ext::dest_opts()));
    fixtures.push(fx(
        "IPv6 chain over the bound (9 headers)",
        long_chain,
        XDP_DROP,
    ));
    check_all(&loaded, &fixtures);
}

#[test]
fn counters_and_rule_hits_follow_verdicts() {
    let loaded = load(POLICY);
    let before = loaded.counters().expect("counters");
    for frame in [
        v4(tcp(22)).build(),
        v4(tcp(8080)).build(),
        v4(tcp(9999)).build(),
        v4(tcp(0)).build(),
    ] {
        verdict(&loaded, &frame);
    }
    let after = loaded.counters().expect("counters");
    let delta = |i: u32| after[i as usize] - before[i as usize];
    assert_eq!(delta(counter::ALLOW_RULE), 1);
    assert_eq!(delta(counter::DROP_RULE), 1);
    assert_eq!(delta(counter::DROP_DEFAULT), 1);
    assert_eq!(delta(counter::MALFORMED), 1);
    let hits = loaded.tables.rule_hits(7);
    assert_eq!(hits[0], 1, "rule 1 (ssh) hit once: {hits:?}");
    assert_eq!(hits[2], 1, "rule 3 (8000-8999) hit once: {hits:?}");
}

fn drain_events(loaded: &mut Loaded) -> Vec<Event> {
    let mut ring = loaded.events().expect("event ring");
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        assert!(item.len() >= size_of::<Event>());
        // SAFETY: the record is an Event written by the kernel program.
        events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) });
    }
    events
}

#[test]
fn events_record_logged_verdicts() {
    let mut loaded = load(&format!(
        "{POLICY}  - name: web\n    allow: 7443/tcp\n    log: true\n"
    ));
    drain_events(&mut loaded);
    verdict(&loaded, &v4(tcp(8080)).build()); // drop by rule 3: logged (log: drops)
    verdict(&loaded, &v4(tcp(22)).build()); // allow: not logged
    verdict(&loaded, &v6(udp(4444)).build()); // default drop: logged
    verdict(&loaded, &v4(tcp(7443)).build()); // allow with log: true
    verdict(&loaded, &v4(tcp(0)).build()); // malformed: logged as a drop
    let events = drain_events(&mut loaded);
    assert_eq!(events.len(), 4, "{events:#?}");
    let e = &events[0];
    assert_eq!(
        (e.verdict, e.rule, e.protocol, e.dst_port, e.src_port),
        (1, 2, 6, 8080, 40000)
    );
    assert_eq!(e.ip_version, 4);
    assert_eq!(&e.src_addr[..4], &[198, 18, 0, 2]);
    assert_eq!(&e.dst_addr[..4], &[198, 18, 0, 1]);
    assert_eq!(e.tcp_flags, 0x02);
    assert!(e.timestamp_ns > 0);
    assert_eq!(
        (events[1].rule, events[1].ip_version, events[1].protocol),
        (RULE_DEFAULT, 6, 17)
    );
    assert_eq!(
        events[1].dst_addr,
        "2001:2::1"
            .parse::<std::net::Ipv6Addr>()
            .expect("addr")
            .octets()
    );
    assert_eq!(
        (events[2].verdict, events[2].rule, events[2].dst_port),
        (0, 7, 7443)
    );
    assert_eq!(events[3].rule, RULE_MALFORMED);
    let _ = RULE_SETTING;
}

#[test]
fn a_policy_swap_changes_verdicts_at_once() {
    let mut loaded = load("default: drop\nrules:\n  - allow: 80/tcp\n");
    let frame80 = v4(tcp(80)).build();
    let frame81 = v4(tcp(81)).build();
    assert_eq!(verdict(&loaded, &frame80), XDP_PASS);
    assert_eq!(verdict(&loaded, &frame81), XDP_DROP);
    let next =
        policy::parse("default: drop\nrules:\n  - allow: 81/tcp\n", "b.yaml").expect("policy");
    let gen_before = loaded.tables.active();
    let generation = loaded
        .tables
        .install(&compile::compile(&next.policy).expect("compile"))
        .expect("install");
    assert_ne!(generation, gen_before);
    assert_eq!(verdict(&loaded, &frame80), XDP_DROP);
    assert_eq!(verdict(&loaded, &frame81), XDP_PASS);
    // Staging without switching changes nothing the kernel sees.
    let third = policy::parse("default: allow\n", "c.yaml").expect("policy");
    loaded
        .tables
        .stage(&compile::compile(&third.policy).expect("compile"))
        .expect("stage");
    assert_eq!(verdict(&loaded, &frame80), XDP_DROP);
}

fn from_source(p: Frame, source: std::net::IpAddr) -> Frame {
    match source {
        std::net::IpAddr::V4(a) => p.v4(|ip| ip.src = a),
        std::net::IpAddr::V6(a) => p.v6(|ip| ip.src = a),
    }
}

/// Source-restricted rules judged by the kernel (port table, then the source tries, head
/// and tail) agree with first match, for both families.
#[test]
fn source_rules_in_the_kernel_agree_with_first_match() {
    let mut big = String::from("[");
    for i in 0..100 {
        big.push_str(&format!("10.66.{i}.0/24, "));
    }
    big.push_str("2001:db8:66::/48]");
    let policies = [
        "default: drop\nrules:\n  - allow: ssh\n    from: 10.0.0.0/8\n  - drop: ssh\n    from: 10.1.0.0/16\n  - allow: ssh\n    from: 10.1.2.0/24\n  - allow: 80/tcp\n".to_string(),
        "default: allow\nsets:\n  admins: [10.0.0.0/8, 2001:db8::/32]\nrules:\n  - allow: ssh\n    from: $admins\n  - drop: ssh\n  - drop: 1000-2000\n    from: [10.1.0.0/16, 2001:db8:1::/48]\n  - allow: 1500\n    from: 10.1.2.3\n".to_string(),
        format!("default: drop\nrules:\n  - drop: any\n    from: {big}\n  - allow: 22/tcp\n    from: [10.0.0.0/8, 2001:db8::/32]\n  - allow: 80/tcp\n  - allow: 53\n    from: [10.66.1.7, ::/0]\n"),
    ];
    let sources: Vec<std::net::IpAddr> = [
        "10.0.0.1",
        "10.1.0.1",
        "10.1.2.3",
        "10.1.2.4",
        "10.66.1.7",
        "10.66.99.1",
        "11.0.0.1",
        "2001:db8::1",
        "2001:db8:1::1",
        "2001:db8:66::5",
        "2001:db9::1",
    ]
    .iter()
    .map(|s| s.parse().expect("address"))
    .collect();
    let mut checked = 0;
    for yaml in &policies {
        let loaded = load(yaml);
        let parsed = policy::parse(yaml, "src.yaml").expect("policy").policy;
        for &source in &sources {
            for port in [22u16, 53, 80, 999, 1000, 1500, 2000, 2001] {
                for udp_packet in [false, true] {
                    let l4 = if udp_packet { udp(port) } else { tcp(port) };
                    let packet = if source.is_ipv4() { v4(l4) } else { v6(l4) };
                    let frame = from_source(packet, source).build();
                    let protocol = if udp_packet {
                        policy::Protocol::Udp
                    } else {
                        policy::Protocol::Tcp
                    };
                    let want = compile::reference::evaluate(&parsed, protocol, port, source);
                    let want = if want.action == policy::Action::Drop {
                        XDP_DROP
                    } else {
                        XDP_PASS
                    };
                    assert_eq!(
                        verdict(&loaded, &frame),
                        want,
                        "{protocol} {port} from {source}\n{yaml}"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 3 * 11 * 8 * 2);
}
