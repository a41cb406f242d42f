//! Flow-table fixtures through BPF_PROG_TEST_RUN: frames the host sends go through the egress
//! program, and the entries it records are read back from the table; frames that arrive go
//! through the XDP program, whose verdict and counter must be the row's, and which the
//! reference classifier, given the table as it stands, must agree with. Idle time is
//! simulated by seeding entries whose last packet is in the past. Needs root.
//! The tests live in `tests/flows/`, one file per concern.
mod common;

/// The tests, one module per concern; the rig they share stays here.
mod flows {
    pub mod cache;
    pub mod egress;
    pub mod icmp;
    pub mod lifetime;
    pub mod replies;
}

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use common::{
    builder::{Frame, L4, V4_DST, V4_SRC, V6_DST, V6_SRC, hex, proto, v4},
    flow_table::{self, addr_bytes, model_of, monotonic_ns},
    reference::{self, FlowId, FlowState, FlowTable, XDP_DROP, XDP_PASS, xdp_name},
};
use portfw::{
    compile,
    loader::Loaded,
    policy::{self, Policy},
};
use portfw_common::{
    FlowKey, FlowValue,
    counter::{self, NAMES},
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
        let entries = self.loaded.flow_entries().expect("flow table");
        entries.into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
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
        // Logging counters move with aggregation (the same frame again within a second),
        // not with the frame's fate.
        let moved: Vec<usize> = (0..before.len())
            .filter(|&i| after[i] != before[i] && !counter::is_event_log(i as u32))
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

/// The error types of each family that quote a packet, with a code.
fn unreachable(v6: bool) -> (u8, u8) {
    if v6 { (1, 4) } else { (3, 3) }
}
