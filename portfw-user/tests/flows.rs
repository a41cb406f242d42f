//! Flow-table fixtures through BPF_PROG_TEST_RUN: frames the host sends go through the egress
//! program, and the entries it records are read back from the table; frames that arrive go
//! through the XDP program, whose verdict and counter must be the row's, and which the
//! reference classifier, given the table as it stands, must agree with. Idle time is
//! simulated by seeding entries whose last packet is in the past. Needs root.
mod common;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use common::{
    builder::{
        Ext, Frame, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, L4,
        TPID_8021Q, V4_DST, V4_SRC, V6_DST, V6_SRC, arp, echo, hex, icmp_error, proto, tcp_flag,
        tcp_seg, udp_from, v4,
    },
    flow_table::{self, CLOCK_TICK_NS, addr_bytes, model_of, monotonic_ns},
    reference::{self, FlowId, FlowState, FlowTable, XDP_DROP, XDP_PASS, xdp_name},
};
use portfw::{
    compile,
    loader::Loaded,
    policy::{self, Policy},
};
use portfw_common::{
    FlowKey, FlowValue,
    counter::{
        ALLOW_RELATED, ALLOW_REPLY, ALLOW_RULE, DROP_DEFAULT, FLOWS_CREATED, ICMP_ALLOW, ICMP_DROP,
        NAMES,
    },
    flow_map_entries, flow_state,
};

/// A host that opens connections and offers only ssh, with every timeout written out.
const HOST: &str = "\
default: drop
icmp: drop
flows:
  tcp-timeout: 1h
  tcp-closing: 10s
  udp-timeout: 60s
  icmp-timeout: 30s
rules:
  - allow: ssh
  - name: web-from-lan
    allow: 8080/tcp
    from: 10.0.0.0/8
";

/// The same host, stateless.
const STATELESS: &str = "\
default: drop
icmp: drop
replies: drop
rules:
  - allow: ssh
";

/// `TC_ACT_UNSPEC`: the egress program never drops and hands every packet on.
const TC_ACT_UNSPEC: i32 = -1;

/// The host's own addresses are the builder's destinations, its peer's the sources.
fn local(v6: bool) -> IpAddr {
    if v6 { V6_DST.into() } else { V4_DST.into() }
}

fn remote(v6: bool) -> IpAddr {
    if v6 { V6_SRC.into() } else { V4_SRC.into() }
}

/// Another address on the peer's network, for spoofed replies.
fn stranger(v6: bool) -> IpAddr {
    if v6 {
        Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 3).into()
    } else {
        Ipv4Addr::new(198, 18, 0, 3).into()
    }
}

/// A frame from the peer to the host.
fn inbound(v6: bool, l4: L4) -> Frame {
    if v6 { common::builder::v6(l4) } else { v4(l4) }
}

/// A frame from the host to its peer, as the egress program sees it.
fn outbound(v6: bool, l4: L4) -> Frame {
    inbound(v6, l4).swapped()
}

/// `frame` with its source address replaced (of the frame's own family).
fn from(frame: Frame, src: IpAddr) -> Frame {
    match src {
        IpAddr::V4(a) => frame.v4(|ip| ip.src = a),
        IpAddr::V6(a) => frame.v6(|ip| ip.src = a),
    }
}

/// `frame` with its destination address replaced.
fn to(frame: Frame, dst: IpAddr) -> Frame {
    match dst {
        IpAddr::V4(a) => frame.v4(|ip| ip.dst = a),
        IpAddr::V6(a) => frame.v6(|ip| ip.dst = a),
    }
}

fn icmp_proto(v6: bool) -> u8 {
    if v6 { proto::ICMPV6 } else { proto::ICMP }
}

/// The key of the host's flow `local_port` -> `remote_port` of `protocol`, written out from
/// portfw_common's documentation of the layout.
fn key(v6: bool, protocol: u8, local_port: u16, remote_port: u16) -> FlowKey {
    FlowKey {
        family: if v6 { 6 } else { 4 },
        protocol,
        local_port,
        remote_port,
        _pad: [0; 2],
        local: addr_bytes(local(v6)),
        remote: addr_bytes(remote(v6)),
    }
}

fn possible_cpus() -> u32 {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").expect("possible cpus");
    text.trim()
        .split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => b.parse::<u32>().expect("cpu") - a.parse::<u32>().expect("cpu") + 1,
            None => 1,
        })
        .sum()
}

/// A loaded program with its flow table, the policy in force, and the failures so far.
struct Rig {
    loaded: Loaded,
    policy: Policy,
    failures: Vec<String>,
}

impl Rig {
    fn new(yaml: &str) -> Rig {
        Self::sized(1024, yaml)
    }

    fn sized(flows_max: u32, yaml: &str) -> Rig {
        // SAFETY: geteuid has no preconditions.
        assert!(
            unsafe { libc::geteuid() } == 0,
            "flow fixtures load the programs and need root; run `cargo xtask test` as root"
        );
        let loaded = Loaded::load_sized(flows_max)
            .unwrap_or_else(|e| panic!("loading the programs: {e:#?}"));
        let mut rig = Rig {
            loaded,
            policy: parse("placeholder", "default: allow\n"),
            failures: Vec::new(),
        };
        rig.install(yaml);
        rig
    }

    fn install(&mut self, yaml: &str) {
        self.policy = parse("flows.yaml", yaml);
        self.loaded
            .tables
            .install(&compile::compile(&self.policy).expect("compile policy"))
            .expect("install policy");
    }

    fn counter(&self, index: u32) -> u64 {
        self.loaded.counters().expect("counters")[index as usize]
    }

    /// Runs a frame the host sends through the egress program.
    fn send(&mut self, what: &str, frame: &Frame) {
        let bytes = frame.build();
        let action = self
            .loaded
            .test_run_egress(&bytes)
            .expect("egress test run");
        if action != TC_ACT_UNSPEC {
            self.failures.push(format!(
                "{what}: the egress program returned {action}, not TC_ACT_UNSPEC\n{}",
                hex(&bytes)
            ));
        }
    }

    fn table(&mut self) -> Vec<(FlowKey, FlowValue)> {
        flow_table::entries(&mut self.loaded)
    }

    fn flow(&mut self, key: &FlowKey) -> Option<FlowValue> {
        self.loaded.flows().expect("flow table").get(key, 0).ok()
    }

    fn clear(&mut self) {
        flow_table::clear(&mut self.loaded);
    }

    /// Puts a flow in the table whose last packet was `idle` ago.
    fn seed(&mut self, key: FlowKey, state: u8, idle: Duration) {
        flow_table::seed(&mut self.loaded, key, state, idle);
    }

    /// Checks the table holds exactly `want` (key and state), each entry well formed.
    fn expect_table(&mut self, what: &str, want: &[(FlowKey, u8)]) {
        let now = monotonic_ns();
        let got = self.table();
        let mut problems = Vec::new();
        for (k, v) in &got {
            if !want.iter().any(|(wk, ws)| wk == k && *ws == v.state) {
                problems.push(format!("unexpected entry {k:?} state {}", v.state));
            }
            if k._pad != [0; 2] || v._pad != [0; 3] {
                problems.push(format!("padding not zero in {k:?} / {v:?}"));
            }
            if v.created_ns > v.seen_ns || v.seen_ns > now {
                problems.push(format!("timestamps out of order in {v:?} (now {now})"));
            }
            // BPF_PROG_TEST_RUN runs an skb on the loopback device of the caller's namespace.
            if v.ifindex != 1 {
                problems.push(format!("ifindex {} in {v:?}, expected 1 (lo)", v.ifindex));
            }
        }
        for (wk, ws) in want {
            if !got.iter().any(|(k, v)| k == wk && v.state == *ws) {
                problems.push(format!("missing entry {wk:?} state {ws}"));
            }
        }
        if !problems.is_empty() {
            self.failures
                .push(format!("{what}: table wrong:\n  {}", problems.join("\n  ")));
        }
    }

    /// Runs an arriving frame through the XDP program: its verdict must be `verdict`, only
    /// `counter` may move (by one), and the reference, given the table, must agree; and the
    /// states the reference leaves must be the kernel's.
    fn judge(&mut self, what: &str, frame: &Frame, verdict: u32, counter: u32) {
        let bytes = frame.build();
        let table = self.table();
        let mut model = model_of(&table, &self.policy, monotonic_ns());
        let expected = reference::classify_with_flows(&bytes, &self.policy, &mut model);
        let before = self.loaded.counters().expect("counters");
        let got = self.loaded.test_run(&bytes).expect("test run");
        let after = self.loaded.counters().expect("counters");
        let moved: Vec<usize> = (0..before.len())
            .filter(|&i| after[i] != before[i])
            .collect();
        let mut problems = Vec::new();
        if got != verdict {
            problems.push(format!(
                "kernel said {}, expected {}",
                xdp_name(got),
                xdp_name(verdict)
            ));
        }
        if !(moved.len() == 1 && after[counter as usize] == before[counter as usize] + 1) {
            let names: Vec<&str> = moved.iter().map(|&i| NAMES[i]).collect();
            problems.push(format!(
                "counters moved: {names:?}, expected only {}",
                NAMES[counter as usize]
            ));
        }
        if expected.xdp() != verdict || !expected.tally().counters().contains(&counter) {
            problems.push(format!(
                "reference says {} ({:?}), the row {} ({})",
                xdp_name(expected.xdp()),
                expected.class,
                xdp_name(verdict),
                NAMES[counter as usize]
            ));
        }
        let states_after = model_of(&self.table(), &self.policy, monotonic_ns());
        let states = |t: &FlowTable| -> Vec<(FlowId, FlowState)> {
            t.flows.iter().map(|(id, e)| (*id, e.state)).collect()
        };
        if states(&states_after) != states(&model) {
            problems.push(format!(
                "flow states: kernel {:?}, reference {:?}",
                states(&states_after),
                states(&model)
            ));
        }
        if !problems.is_empty() {
            self.failures
                .push(format!("{what}: {}\n{}", problems.join("; "), hex(&bytes)));
        }
    }

    fn passes(&mut self, counter: u32, what: &str, frame: Frame) {
        self.judge(what, &frame, XDP_PASS, counter);
    }

    fn drops(&mut self, counter: u32, what: &str, frame: Frame) {
        self.judge(what, &frame, XDP_DROP, counter);
    }

    fn state(&mut self, what: &str, key: &FlowKey, want: u8) {
        match self.flow(key) {
            Some(v) if v.state == want => {}
            other => self.failures.push(format!(
                "{what}: flow {key:?} is {other:?}, expected state {want}"
            )),
        }
    }

    fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{} flow fixture(s) failed:\n\n{}",
            self.failures.len(),
            self.failures.join("\n\n")
        );
    }
}

fn parse(file: &str, yaml: &str) -> Policy {
    match policy::parse(yaml, file) {
        Ok(parsed) => parsed.policy,
        Err(d) => panic!("fixture policy invalid:\n{d}"),
    }
}

fn fam(v6: bool) -> &'static str {
    if v6 { "v6" } else { "v4" }
}

#[test]
fn the_egress_program_records_the_flows_the_host_opens() {
    let mut rig = Rig::new(HOST);
    for v6 in [false, true] {
        let f = fam(v6);
        rig.clear();
        let created = rig.counter(FLOWS_CREATED);
        let udp = key(v6, proto::UDP, 45000, 53);
        rig.send(
            &format!("{f} first UDP datagram"),
            &outbound(v6, udp_from(45000, 53)),
        );
        rig.expect_table(&format!("{f} a UDP flow opens"), &[(udp, flow_state::OPEN)]);
        rig.send(
            &format!("{f} second UDP datagram"),
            &outbound(v6, udp_from(45000, 53)),
        );
        rig.expect_table(&format!("{f} the same flow"), &[(udp, flow_state::OPEN)]);
        assert_eq!(
            rig.counter(FLOWS_CREATED),
            created + 1,
            "{f}: one flow created for two datagrams"
        );

        let web = key(v6, proto::TCP, 45001, 80);
        let mut want = vec![(udp, flow_state::OPEN)];
        rig.send(
            &format!("{f} SYN"),
            &outbound(v6, tcp_seg(45001, 80, tcp_flag::SYN)),
        );
        want.push((web, flow_state::SYN_SENT));
        rig.expect_table(&format!("{f} our SYN opens a TCP flow"), &want);
        rig.send(
            &format!("{f} ACK"),
            &outbound(v6, tcp_seg(45001, 80, tcp_flag::ACK)),
        );
        want[1].1 = flow_state::ESTABLISHED;
        rig.expect_table(&format!("{f} our ACK establishes it"), &want);
        rig.send(
            &format!("{f} FIN"),
            &outbound(v6, tcp_seg(45001, 80, tcp_flag::FIN_ACK)),
        );
        want[1].1 = flow_state::CLOSING;
        rig.expect_table(&format!("{f} our FIN closes it"), &want);
        rig.send(
            &format!("{f} SYN again"),
            &outbound(v6, tcp_seg(45001, 80, tcp_flag::SYN)),
        );
        want[1].1 = flow_state::SYN_SENT;
        rig.expect_table(
            &format!("{f} a new SYN on the four-tuple starts over"),
            &want,
        );

        // A connection older than the table is picked up by a segment without SYN/RST/FIN.
        let old = key(v6, proto::TCP, 45002, 443);
        rig.send(
            &format!("{f} mid-stream"),
            &outbound(v6, tcp_seg(45002, 443, tcp_flag::PSH_ACK)),
        );
        want.push((old, flow_state::ESTABLISHED));
        rig.expect_table(
            &format!("{f} a mid-stream segment picks up an old connection"),
            &want,
        );
        for (port, flags, name) in [
            (45003, tcp_flag::SYN_ACK, "SYN-ACK"),
            (45004, tcp_flag::RST, "RST"),
            (45005, tcp_flag::FIN_ACK, "FIN-ACK"),
        ] {
            rig.send(
                &format!("{f} {name}"),
                &outbound(v6, tcp_seg(port, 5000, flags)),
            );
        }
        rig.expect_table(
            &format!("{f} a SYN-ACK, RST or FIN without a flow opens nothing"),
            &want,
        );

        let ping = key(v6, icmp_proto(v6), 0x4242, 0);
        let request = if v6 {
            ICMPV6_ECHO_REQUEST
        } else {
            ICMP_ECHO_REQUEST
        };
        rig.send(
            &format!("{f} echo request"),
            &outbound(v6, echo(v6, request, 0x4242)),
        );
        want.push((ping, flow_state::OPEN));
        let sctp = key(v6, proto::SCTP, 45006, 2905);
        rig.send(
            &format!("{f} SCTP"),
            &outbound(
                v6,
                L4::Sctp {
                    src: 45006,
                    dst: 2905,
                },
            ),
        );
        want.push((sctp, flow_state::OPEN));
        let lite = key(v6, proto::UDPLITE, 45007, 7000);
        rig.send(
            &format!("{f} UDP-Lite"),
            &outbound(
                v6,
                L4::UdpLite {
                    src: 45007,
                    dst: 7000,
                },
            ),
        );
        want.push((lite, flow_state::OPEN));
        rig.expect_table(&format!("{f} echo, SCTP and UDP-Lite flows"), &want);

        // Replies to a port the rules allow pass anyway: nothing is recorded for it. A port
        // with source rules, or the same port of another protocol, may drop: recorded.
        rig.send(
            &format!("{f} SYN from ssh"),
            &outbound(v6, tcp_seg(22, 40000, tcp_flag::SYN)),
        );
        rig.expect_table(&format!("{f} nothing for an allowed port"), &want);
        rig.send(
            &format!("{f} UDP from 22"),
            &outbound(v6, udp_from(22, 40000)),
        );
        want.push((key(v6, proto::UDP, 22, 40000), flow_state::OPEN));
        rig.send(
            &format!("{f} SYN from 8080"),
            &outbound(v6, tcp_seg(8080, 40000, tcp_flag::SYN)),
        );
        want.push((key(v6, proto::TCP, 8080, 40000), flow_state::SYN_SENT));
        rig.expect_table(&format!("{f} ports the rules may drop are recorded"), &want);

        // Through a VLAN tag and (IPv6) an extension header, the same key.
        rig.send(
            &format!("{f} tagged"),
            &outbound(v6, udp_from(45008, 53)).tag(TPID_8021Q, 10),
        );
        want.push((key(v6, proto::UDP, 45008, 53), flow_state::OPEN));
        if v6 {
            rig.send(
                "v6 after a hop-by-hop header",
                &outbound(true, udp_from(45009, 53)).ext(Ext::hop_by_hop()),
            );
            want.push((key(true, proto::UDP, 45009, 53), flow_state::OPEN));
        }
        // What opens nothing: a non-first fragment, a truncated header, ARP, an echo reply.
        rig.send(
            &format!("{f} fragment"),
            &outbound(v6, udp_from(45010, 53)).fragment(8, false),
        );
        rig.send(
            &format!("{f} cut"),
            &outbound(v6, udp_from(45011, 53).cut(6)),
        );
        rig.send("arp", &arp());
        let reply = if v6 {
            ICMPV6_ECHO_REPLY
        } else {
            ICMP_ECHO_REPLY
        };
        rig.send(
            &format!("{f} echo reply"),
            &outbound(v6, echo(v6, reply, 0x4343)),
        );
        rig.expect_table(
            &format!("{f} tagged and extension-header flows, nothing else"),
            &want,
        );
    }

    // Stateless: the egress program records nothing.
    rig.install(STATELESS);
    rig.clear();
    let created = rig.counter(FLOWS_CREATED);
    rig.send("stateless UDP", &outbound(false, udp_from(45000, 53)));
    rig.send(
        "stateless SYN",
        &outbound(true, tcp_seg(45001, 80, tcp_flag::SYN)),
    );
    rig.expect_table("replies: drop records nothing", &[]);
    assert_eq!(
        rig.counter(FLOWS_CREATED),
        created,
        "replies: drop creates no flow"
    );
    rig.finish();
}

#[test]
fn flow_keys_name_the_host_side_with_zeroed_padding() {
    let mut rig = Rig::new(HOST);
    let before = monotonic_ns();
    rig.send("v4 UDP", &outbound(false, udp_from(45000, 53)));
    let after = monotonic_ns();
    let table = rig.table();
    assert_eq!(table.len(), 1, "one entry: {table:?}");
    let (k, v) = table[0];
    assert_eq!((k.family, k.protocol), (4, 17), "{k:?}");
    assert_eq!((k.local_port, k.remote_port), (45000, 53), "{k:?}");
    assert_eq!(k._pad, [0; 2], "{k:?}");
    assert_eq!(&k.local[..4], &V4_DST.octets(), "local is the host: {k:?}");
    assert_eq!(
        &k.remote[..4],
        &V4_SRC.octets(),
        "remote is the peer: {k:?}"
    );
    assert_eq!(k.local[4..], [0; 12], "IPv4 leaves the rest zero: {k:?}");
    assert_eq!(k.remote[4..], [0; 12], "{k:?}");
    assert_eq!(v.state, flow_state::OPEN, "{v:?}");
    assert_eq!(v.created_ns, v.seen_ns, "{v:?}");
    assert!(
        (before.saturating_sub(CLOCK_TICK_NS)..=after).contains(&v.seen_ns),
        "stamped with CLOCK_MONOTONIC (to a tick) during the run: {before} <= {} <= {after}",
        v.seen_ns
    );
    assert_eq!(v._pad, [0; 3], "{v:?}");
    // The lookup by an independently built key (zero padding) finds it: equal flows hash
    // equally.
    assert!(rig.flow(&key(false, proto::UDP, 45000, 53)).is_some());
    rig.finish();
}

#[test]
fn replies_pass_and_near_misses_drop() {
    let mut rig = Rig::new(HOST);
    for v6 in [false, true] {
        let f = fam(v6);
        rig.clear();
        rig.send(&format!("{f} query"), &outbound(v6, udp_from(45000, 53)));
        rig.passes(
            ALLOW_REPLY,
            &format!("{f} the reply"),
            inbound(v6, udp_from(53, 45000)),
        );
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} right port from another address"),
            from(inbound(v6, udp_from(53, 45000)), stranger(v6)),
        );
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} right address from another port"),
            inbound(v6, udp_from(54, 45000)),
        );
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} to another local port"),
            inbound(v6, udp_from(53, 45001)),
        );
        let elsewhere: IpAddr = if v6 {
            Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 9).into()
        } else {
            Ipv4Addr::new(198, 18, 0, 9).into()
        };
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} to another local address"),
            to(inbound(v6, udp_from(53, 45000)), elsewhere),
        );
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} UDP-Lite on the UDP flow's ports"),
            inbound(
                v6,
                L4::UdpLite {
                    src: 53,
                    dst: 45000,
                },
            ),
        );
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} TCP on the UDP flow's ports"),
            inbound(v6, tcp_seg(53, 45000, tcp_flag::ACK)),
        );
        rig.passes(
            ALLOW_REPLY,
            &format!("{f} the reply behind a VLAN tag"),
            inbound(v6, udp_from(53, 45000)).tag(TPID_8021Q, 10),
        );
        if v6 {
            rig.passes(
                ALLOW_REPLY,
                "v6 the reply after a destination-options header",
                inbound(true, udp_from(53, 45000)).ext(Ext::dest_opts()),
            );
        }
        // Replies to a port the rules allow are the rule's: the table is not read.
        rig.send(
            &format!("{f} from ssh"),
            &outbound(v6, tcp_seg(22, 40000, tcp_flag::SYN)),
        );
        rig.passes(
            ALLOW_RULE,
            &format!("{f} SYN-ACK to an allowed port"),
            inbound(v6, tcp_seg(40000, 22, tcp_flag::SYN_ACK)),
        );
        // SCTP and UDP-Lite flows pass their replies the same way.
        rig.send(
            &format!("{f} SCTP"),
            &outbound(
                v6,
                L4::Sctp {
                    src: 45006,
                    dst: 2905,
                },
            ),
        );
        rig.passes(
            ALLOW_REPLY,
            &format!("{f} SCTP reply"),
            inbound(
                v6,
                L4::Sctp {
                    src: 2905,
                    dst: 45006,
                },
            ),
        );
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} SCTP reply from another port"),
            inbound(
                v6,
                L4::Sctp {
                    src: 2906,
                    dst: 45006,
                },
            ),
        );
    }
    rig.finish();
}

#[test]
fn tcp_replies_follow_the_handshake() {
    let mut rig = Rig::new(HOST);
    for v6 in [false, true] {
        let f = fam(v6);
        rig.clear();
        let web = key(v6, proto::TCP, 45010, 80);
        let seg = |flags| inbound(v6, tcp_seg(80, 45010, flags));
        rig.send(
            &format!("{f} SYN"),
            &outbound(v6, tcp_seg(45010, 80, tcp_flag::SYN)),
        );
        for (flags, name) in [
            (tcp_flag::ACK, "ACK"),
            (tcp_flag::FIN_ACK, "FIN-ACK"),
            (tcp_flag::PSH_ACK, "data"),
            (tcp_flag::SYN, "a bare SYN"),
        ] {
            rig.drops(
                DROP_DEFAULT,
                &format!("{f} {name} before the SYN-ACK"),
                seg(flags),
            );
        }
        rig.state(&format!("{f} still waiting"), &web, flow_state::SYN_SENT);
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} SYN-ACK from another address"),
            from(seg(tcp_flag::SYN_ACK), stranger(v6)),
        );
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} SYN-ACK from another port"),
            inbound(v6, tcp_seg(81, 45010, tcp_flag::SYN_ACK)),
        );
        rig.passes(
            ALLOW_REPLY,
            &format!("{f} the SYN-ACK"),
            seg(tcp_flag::SYN_ACK),
        );
        rig.state(
            &format!("{f} our ACK is what establishes"),
            &web,
            flow_state::SYN_SENT,
        );
        rig.send(
            &format!("{f} ACK"),
            &outbound(v6, tcp_seg(45010, 80, tcp_flag::ACK)),
        );
        rig.state(&format!("{f} established"), &web, flow_state::ESTABLISHED);
        rig.passes(ALLOW_REPLY, &format!("{f} data"), seg(tcp_flag::PSH_ACK));
        rig.passes(ALLOW_REPLY, &format!("{f} ACK"), seg(tcp_flag::ACK));
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} a bare SYN on the flow"),
            seg(tcp_flag::SYN),
        );
        rig.passes(
            ALLOW_REPLY,
            &format!("{f} the remote's FIN"),
            seg(tcp_flag::FIN_ACK),
        );
        rig.state(&format!("{f} FIN closes"), &web, flow_state::CLOSING);
        rig.passes(
            ALLOW_REPLY,
            &format!("{f} the last ACK"),
            seg(tcp_flag::ACK),
        );

        // A refused connection: the RST answers our SYN and closes the flow.
        let refused = key(v6, proto::TCP, 45011, 81);
        rig.send(
            &format!("{f} SYN to 81"),
            &outbound(v6, tcp_seg(45011, 81, tcp_flag::SYN)),
        );
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} RST from another port"),
            inbound(v6, tcp_seg(82, 45011, tcp_flag::RST_ACK)),
        );
        rig.passes(
            ALLOW_REPLY,
            &format!("{f} RST answering our SYN"),
            inbound(v6, tcp_seg(81, 45011, tcp_flag::RST_ACK)),
        );
        rig.state(&format!("{f} RST closes"), &refused, flow_state::CLOSING);

        // No flow, no connected socket (nothing in this namespace has one for these
        // addresses): a SYN-ACK or ACK to a port that sent no SYN is dropped.
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} SYN-ACK without our SYN"),
            inbound(v6, tcp_seg(80, 45012, tcp_flag::SYN_ACK)),
        );
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} ACK without a flow"),
            inbound(v6, tcp_seg(80, 45012, tcp_flag::ACK)),
        );
        rig.expect_table(
            &format!("{f} nothing arriving created a flow"),
            &[(web, flow_state::CLOSING), (refused, flow_state::CLOSING)],
        );
    }
    rig.finish();
}

/// The error types of each family that quote a packet, with a code.
fn unreachable(v6: bool) -> (u8, u8) {
    if v6 { (1, 4) } else { (3, 3) }
}

#[test]
fn related_icmp_errors_pass_under_icmp_drop_but_not_truncated_quotes() {
    let mut rig = Rig::new(HOST);
    for v6 in [false, true] {
        let f = fam(v6);
        rig.clear();
        let query = outbound(v6, udp_from(45020, 53));
        rig.send(&format!("{f} query"), &query);
        let quote = query.datagram();
        let hlen = if v6 { 40 } else { 20 };
        let (kind, code) = unreachable(v6);
        let error = |quoted: &[u8]| inbound(v6, icmp_error(v6, kind, code, quoted));
        rig.passes(
            ALLOW_RELATED,
            &format!("{f} port unreachable"),
            error(&quote),
        );
        rig.passes(
            ALLOW_RELATED,
            &format!("{f} quote cut to the header and 8 bytes"),
            error(&quote[..hlen + 8]),
        );
        for cut in [hlen + 7, hlen + 4, hlen, hlen - 1, 12, 0] {
            rig.drops(
                ICMP_DROP,
                &format!("{f} quote cut to {cut} bytes is about nothing"),
                error(&quote[..cut]),
            );
        }
        let router: IpAddr = if v6 {
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into()
        } else {
            Ipv4Addr::new(192, 0, 2, 1).into()
        };
        let exceeded = if v6 { 3 } else { 11 };
        rig.passes(
            ALLOW_RELATED,
            &format!("{f} time exceeded from a router on the path"),
            from(inbound(v6, icmp_error(v6, exceeded, 0, &quote)), router),
        );
        let problem = if v6 { 4 } else { 12 };
        rig.passes(
            ALLOW_RELATED,
            &format!("{f} parameter problem"),
            inbound(v6, icmp_error(v6, problem, 0, &quote)),
        );
        let other_port = outbound(v6, udp_from(45020, 54)).datagram();
        rig.drops(
            ICMP_DROP,
            &format!("{f} quote of another flow"),
            error(&other_port),
        );
        let reversed = inbound(v6, udp_from(53, 45020)).datagram();
        rig.drops(
            ICMP_DROP,
            &format!("{f} quote of the reply direction"),
            error(&reversed),
        );
        let fragment = outbound(v6, udp_from(45020, 53))
            .fragment(8, false)
            .datagram();
        rig.drops(
            ICMP_DROP,
            &format!("{f} quote of a non-first fragment"),
            error(&fragment),
        );
        let other_family = outbound(!v6, udp_from(45020, 53)).datagram();
        rig.drops(
            ICMP_DROP,
            &format!("{f} quote of the other IP version"),
            error(&other_family),
        );
        // Shorter than the 8-byte ICMP header: about nothing.
        rig.drops(
            ICMP_DROP,
            &format!("{f} error cut inside its header"),
            inbound(v6, icmp_error(v6, kind, code, &[]).cut(6)),
        );
        if v6 {
            let with_ext = outbound(true, udp_from(45020, 53))
                .ext(Ext::hop_by_hop())
                .datagram();
            rig.drops(
                ICMP_DROP,
                "v6 quote with an extension header is about nothing",
                error(&with_ext),
            );
            rig.passes(
                ALLOW_RELATED,
                "v6 error after an outer hop-by-hop header",
                error(&quote).ext(Ext::hop_by_hop()),
            );
            // Packet too big is essential: the setting passes it, not the table.
            rig.passes(
                ICMP_ALLOW,
                "v6 packet too big",
                inbound(true, icmp_error(true, 2, 0, &quote)),
            );
        } else {
            let optioned = outbound(false, udp_from(45020, 53)).options(1);
            let optioned_quote = optioned.datagram();
            rig.passes(
                ALLOW_RELATED,
                "v4 quote with IP options",
                error(&optioned_quote),
            );
            rig.passes(
                ALLOW_RELATED,
                "v4 quote with IP options cut to its header and 8 bytes",
                error(&optioned_quote[..24 + 8]),
            );
            rig.drops(
                ICMP_DROP,
                "v4 quote with IP options cut a byte short",
                error(&optioned_quote[..24 + 7]),
            );
            let lying = outbound(false, udp_from(45020, 53))
                .v4(|ip| ip.total_len = Some(1500))
                .datagram();
            rig.passes(
                ALLOW_RELATED,
                "v4 quote whose total length is the original datagram's",
                error(&lying),
            );
            // Fragmentation needed is essential: the setting passes it, not the table.
            rig.passes(
                ICMP_ALLOW,
                "v4 fragmentation needed",
                inbound(false, icmp_error(false, 3, 4, &quote)),
            );
        }
        // A TCP flow still waiting for its SYN-ACK, and our echo request.
        let syn = outbound(v6, tcp_seg(45021, 80, tcp_flag::SYN));
        rig.send(&format!("{f} SYN"), &syn);
        rig.passes(
            ALLOW_RELATED,
            &format!("{f} unreachable about our SYN"),
            error(&syn.datagram()),
        );
        let request = if v6 {
            ICMPV6_ECHO_REQUEST
        } else {
            ICMP_ECHO_REQUEST
        };
        let ping = outbound(v6, echo(v6, request, 0x4444));
        rig.send(&format!("{f} ping"), &ping);
        rig.passes(
            ALLOW_RELATED,
            &format!("{f} unreachable about our ping"),
            error(&ping.datagram()),
        );
        let other_ping = outbound(v6, echo(v6, request, 0x4445)).datagram();
        rig.drops(
            ICMP_DROP,
            &format!("{f} unreachable about another ping"),
            error(&other_ping),
        );
        // An expired flow has nothing related.
        rig.seed(
            key(v6, proto::UDP, 45020, 53),
            flow_state::OPEN,
            Duration::from_secs(65),
        );
        rig.drops(
            ICMP_DROP,
            &format!("{f} about an expired flow"),
            error(&quote),
        );
    }
    rig.finish();
}

#[test]
fn echo_replies_match_the_identifier() {
    let mut rig = Rig::new(HOST);
    for v6 in [false, true] {
        let f = fam(v6);
        rig.clear();
        let (request, reply) = if v6 {
            (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY)
        } else {
            (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY)
        };
        rig.send(
            &format!("{f} ping"),
            &outbound(v6, echo(v6, request, 0x5151)),
        );
        rig.passes(
            ALLOW_REPLY,
            &format!("{f} echo reply"),
            inbound(v6, echo(v6, reply, 0x5151)),
        );
        rig.drops(
            ICMP_DROP,
            &format!("{f} echo reply with another identifier"),
            inbound(v6, echo(v6, reply, 0x5152)),
        );
        rig.drops(
            ICMP_DROP,
            &format!("{f} echo reply from another address"),
            from(inbound(v6, echo(v6, reply, 0x5151)), stranger(v6)),
        );
        rig.drops(
            ICMP_DROP,
            &format!("{f} an echo request is no reply"),
            inbound(v6, echo(v6, request, 0x5151)),
        );
        rig.drops(
            ICMP_DROP,
            &format!("{f} echo reply cut before its identifier"),
            inbound(v6, echo(v6, reply, 0x5151).cut(6)),
        );
    }
    rig.finish();
}

#[test]
fn idle_flows_expire_and_busy_ones_are_refreshed() {
    let mut rig = Rig::new(HOST);
    let secs = Duration::from_secs;
    for v6 in [false, true] {
        let f = fam(v6);
        rig.clear();
        let udp = |port| key(v6, proto::UDP, port, 53);
        rig.seed(udp(45030), flow_state::OPEN, secs(57));
        rig.seed(udp(45031), flow_state::OPEN, secs(63));
        rig.passes(
            ALLOW_REPLY,
            &format!("{f} UDP idle 57 s of 60"),
            inbound(v6, udp_from(53, 45030)),
        );
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} UDP idle 63 s of 60"),
            inbound(v6, udp_from(53, 45031)),
        );
        let tcp = |port| key(v6, proto::TCP, port, 80);
        rig.seed(tcp(45032), flow_state::ESTABLISHED, secs(1800));
        rig.seed(tcp(45033), flow_state::CLOSING, secs(13));
        rig.seed(tcp(45034), flow_state::SYN_SENT, secs(13));
        rig.seed(tcp(45035), flow_state::SYN_SENT, secs(7));
        rig.seed(tcp(45036), flow_state::ESTABLISHED, secs(3603));
        let seg = |port, flags| inbound(v6, tcp_seg(80, port, flags));
        rig.passes(
            ALLOW_REPLY,
            &format!("{f} established idle 30 min of 1 h"),
            seg(45032, tcp_flag::ACK),
        );
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} established idle past 1 h"),
            seg(45036, tcp_flag::ACK),
        );
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} closing idle 13 s of 10"),
            seg(45033, tcp_flag::ACK),
        );
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} SYN sent 13 s ago, closing timeout 10 s"),
            seg(45034, tcp_flag::SYN_ACK),
        );
        rig.passes(
            ALLOW_REPLY,
            &format!("{f} SYN sent 7 s ago"),
            seg(45035, tcp_flag::SYN_ACK),
        );
        let (ping, pong) = (
            key(v6, icmp_proto(v6), 0x6161, 0),
            key(v6, icmp_proto(v6), 0x6262, 0),
        );
        rig.seed(ping, flow_state::OPEN, secs(27));
        rig.seed(pong, flow_state::OPEN, secs(33));
        let reply = if v6 {
            ICMPV6_ECHO_REPLY
        } else {
            ICMP_ECHO_REPLY
        };
        rig.passes(
            ALLOW_REPLY,
            &format!("{f} echo idle 27 s of 30"),
            inbound(v6, echo(v6, reply, 0x6161)),
        );
        rig.drops(
            ICMP_DROP,
            &format!("{f} echo idle 33 s of 30"),
            inbound(v6, echo(v6, reply, 0x6262)),
        );
        // A reply refreshes a stale timestamp, but not one younger than a second.
        rig.seed(udp(45037), flow_state::OPEN, Duration::from_millis(300));
        let young = rig.flow(&udp(45037)).expect("seeded").seen_ns;
        rig.passes(
            ALLOW_REPLY,
            &format!("{f} fresh flow"),
            inbound(v6, udp_from(53, 45037)),
        );
        assert_eq!(
            rig.flow(&udp(45037)).expect("seeded").seen_ns,
            young,
            "{f}: a timestamp younger than a second is left alone"
        );
        rig.seed(udp(45038), flow_state::OPEN, secs(5));
        let t0 = monotonic_ns();
        rig.passes(
            ALLOW_REPLY,
            &format!("{f} stale flow"),
            inbound(v6, udp_from(53, 45038)),
        );
        let seen = rig.flow(&udp(45038)).expect("seeded").seen_ns;
        assert!(
            seen + CLOCK_TICK_NS >= t0,
            "{f}: a reply refreshes a stale timestamp ({seen} < {t0})"
        );
        // The expired flow is not refreshed by the reply it dropped.
        let stale = rig.flow(&udp(45031)).expect("seeded").seen_ns;
        assert!(
            monotonic_ns() - stale > secs(60).as_nanos() as u64,
            "{f}: a dropped reply must not revive its flow"
        );
    }
    rig.finish();
}

#[test]
fn replies_drop_ignores_the_table() {
    let mut rig = Rig::new(STATELESS);
    let recent = Duration::from_secs(1);
    for v6 in [false, true] {
        let f = fam(v6);
        rig.clear();
        rig.seed(key(v6, proto::UDP, 45040, 53), flow_state::OPEN, recent);
        rig.seed(
            key(v6, proto::TCP, 45041, 80),
            flow_state::ESTABLISHED,
            recent,
        );
        rig.seed(key(v6, icmp_proto(v6), 0x7171, 0), flow_state::OPEN, recent);
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} UDP reply"),
            inbound(v6, udp_from(53, 45040)),
        );
        rig.drops(
            DROP_DEFAULT,
            &format!("{f} TCP reply"),
            inbound(v6, tcp_seg(80, 45041, tcp_flag::PSH_ACK)),
        );
        let reply = if v6 {
            ICMPV6_ECHO_REPLY
        } else {
            ICMP_ECHO_REPLY
        };
        rig.drops(
            ICMP_DROP,
            &format!("{f} echo reply"),
            inbound(v6, echo(v6, reply, 0x7171)),
        );
        let (kind, code) = unreachable(v6);
        let quote = outbound(v6, udp_from(45040, 53)).datagram();
        rig.drops(
            ICMP_DROP,
            &format!("{f} unreachable about the flow"),
            inbound(v6, icmp_error(v6, kind, code, &quote)),
        );
    }
    rig.finish();
}

#[test]
fn a_full_table_evicts_and_fails_closed() {
    const MAX: u32 = 16;
    const FLOWS: u16 = 3000;
    let mut rig = Rig::sized(MAX, HOST);
    let capacity = flow_map_entries(MAX, possible_cpus()) as usize;
    let created = rig.counter(FLOWS_CREATED);
    for i in 0..FLOWS {
        let frame = outbound(false, udp_from(20000 + i, 53)).build();
        rig.loaded.test_run_egress(&frame).expect("egress test run");
    }
    assert_eq!(
        rig.counter(FLOWS_CREATED) - created,
        u64::from(FLOWS),
        "every new flow is counted, evicted or not"
    );
    let held = rig.table().len();
    assert!(
        held > 0 && held <= capacity,
        "{held} entries in a table of {capacity}"
    );
    // Which flows go is the kernel LRU's choice: a flow recorded on one CPU waits in that
    // CPU's pending list, out of reach of the others' evictions. Take one that went, and the
    // newest that stayed.
    let port = |i: u16| key(false, proto::UDP, 20000 + i, 53);
    let gone = (0..FLOWS)
        .find(|&i| rig.flow(&port(i)).is_none())
        .expect("a flow was evicted");
    let kept = (0..FLOWS)
        .rev()
        .find(|&i| rig.flow(&port(i)).is_some())
        .expect("a flow is held");
    rig.drops(
        DROP_DEFAULT,
        "a reply to an evicted flow",
        inbound(false, udp_from(53, 20000 + gone)),
    );
    rig.passes(
        ALLOW_REPLY,
        "a reply to a held flow",
        inbound(false, udp_from(53, 20000 + kept)),
    );
    rig.finish();
}

#[test]
fn a_busy_flow_outlives_a_one_second_timeout() {
    // docs/policy.md: a timeout is how long a flow lives after its last packet, and
    // durations start at 1s. Replies 600 ms apart keep a flow busy, so it must stay live.
    let mut rig = Rig::new(&HOST.replace("udp-timeout: 60s", "udp-timeout: 1s"));
    let flow = key(false, proto::UDP, 45050, 53);
    rig.seed(flow, flow_state::OPEN, Duration::from_millis(600));
    let reply = inbound(false, udp_from(53, 45050)).build();
    let mut verdicts = Vec::new();
    for _ in 0..3 {
        verdicts.push(xdp_name(rig.loaded.test_run(&reply).expect("test run")));
        std::thread::sleep(Duration::from_millis(600));
    }
    assert_eq!(
        verdicts,
        ["PASS", "PASS", "PASS"],
        "replies 600 ms apart under udp-timeout: 1s (the flow's timestamp is refreshed only \
         when more than FLOW_REFRESH_NS = 1 s stale, so with a 1 s timeout it expires first)"
    );
}
