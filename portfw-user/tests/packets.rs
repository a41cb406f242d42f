//! Packet-level tests of the kernel program through BPF_PROG_TEST_RUN (`Xdp::test_run`)
//! beyond the fixture table of `fixtures.rs`: the events of logged verdicts, a policy swap,
//! and source rules against first match. Needs root (or CAP_BPF + CAP_NET_ADMIN) to load
//! the program.
mod common;

use common::{
    builder::{Frame, tcp, udp, v4, v6},
    reference::{XDP_DROP, XDP_PASS},
};
use portfw::{
    compile,
    loader::{Loaded, LoaderError},
    policy,
};
use portfw_common::{Event, RULE_DEFAULT, RULE_MALFORMED};

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
}

/// One row of the event fixtures: a frame the policy logs, and the fields its event must
/// carry (`None`: not checked).
struct EventFixture {
    description: &'static str,
    frame: Vec<u8>,
    ip_version: u8,
    protocol: u8,
    src_addr: [u8; 16],
    ports: Option<(u16, u16)>,
}

fn v4_addr(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&a);
    out
}

/// An event shows only what the parser read: a frame cut inside its IPv4 header reports no
/// IP version, protocol or addresses (it used to say `proto-0 0.0.0.0 -> 0.0.0.0`, which
/// contradicts `Event`'s doc), while a frame with a valid IP header and a broken transport
/// header reports its addresses and protocol but no ports.
#[test]
fn events_show_only_what_the_parser_read() {
    let mut loaded = load(POLICY);
    let whole = v4(tcp(8080)).build();
    let fixtures = [
        EventFixture {
            description: "truncated inside the IPv4 header",
            frame: whole[..14 + 12].to_vec(),
            ip_version: 0,
            protocol: 0,
            src_addr: [0; 16],
            ports: Some((0, 0)),
        },
        EventFixture {
            description: "IPv4 header complete, TCP header cut",
            frame: {
                let mut f = v4(tcp(8080)).build();
                f.truncate(14 + 20 + 10);
                // Keep tot_len consistent with the cut so only the transport is short.
                let tot = (20u16 + 10).to_be_bytes();
                f[16] = tot[0];
                f[17] = tot[1];
                f
            },
            ip_version: 4,
            protocol: 6,
            src_addr: v4_addr([198, 18, 0, 2]),
            ports: Some((0, 0)),
        },
        EventFixture {
            description: "TCP to port 0",
            frame: v4(tcp(0)).build(),
            ip_version: 4,
            protocol: 6,
            src_addr: v4_addr([198, 18, 0, 2]),
            ports: Some((0, 0)),
        },
        EventFixture {
            description: "dropped TCP port",
            frame: whole.clone(),
            ip_version: 4,
            protocol: 6,
            src_addr: v4_addr([198, 18, 0, 2]),
            ports: Some((40000, 8080)),
        },
    ];
    for (i, fixture) in fixtures.iter().enumerate() {
        // Two malformed frames from one source share an aggregation key (source, port,
        // protocol, verdict, rule): within a second the second would only be counted into the
        // key's next event.
        if i > 0 {
            std::thread::sleep(std::time::Duration::from_millis(1100));
        }
        drain_events(&mut loaded);
        assert_eq!(
            verdict(&loaded, &fixture.frame),
            XDP_DROP,
            "{}",
            fixture.description
        );
        let events = drain_events(&mut loaded);
        assert_eq!(events.len(), 1, "{}: {events:#?}", fixture.description);
        let e = &events[0];
        assert_eq!(
            (e.ip_version, e.protocol, e.src_addr),
            (fixture.ip_version, fixture.protocol, fixture.src_addr),
            "{}",
            fixture.description
        );
        if let Some(ports) = fixture.ports {
            assert_eq!((e.src_port, e.dst_port), ports, "{}", fixture.description);
        }
        assert_eq!(
            u32::from(e.generation),
            loaded.tables.active(),
            "{}: labelled by the generation that judged it",
            fixture.description
        );
    }
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
