//! The defences' packet paths through BPF_PROG_TEST_RUN, on the program `portfw apply` pinned
//! for a lab namespace, with state seeded into (and read back from) its pinned maps: a
//! blocked source (live, expired, an IPv6 /64), a knock port, the opened port with and
//! without a door (and with an expired one), a limited rule's SYN burst, a whole knock
//! sequence, and the scan guard blocking a source. The frames only go through test runs:
//! their addresses (198.18.0.0/24, 2001:2::/64) never reach a wire.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap, Map, MapData, PerCpuArray},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use aya_obj::programs::XdpAttachType;
use portfw_common::{
    BlockValue, DoorKey, DoorValue, KnockState, SourceKey, block_reason, counter, counter::NAMES,
    door_id, opens_id, proto,
};

use crate::{
    Rig,
    common::{
        builder::{Frame, L4, tcp, tcp_flag, tcp_seg, udp, v4, v6},
        flow_table::monotonic_ns,
        reference::{XDP_DROP, XDP_PASS, xdp_name},
    },
};

const POLICY: &str = "\
default: drop
log: drops
scan:
  ports: 8
  within: 5s
  block: 1m
rules:
  - allow: ssh
  - allow: 53/udp
  - allow: 8022/tcp
    limit: 5/10s
knock:
  - name: door
    sequence: [7001/udp, 7002/tcp, 7003/udp]
    within: 5s
    opens: 2222/tcp
    for: 30s
";

/// A fixture source: 198.18.0.`n` (test runs only).
fn src4(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, n)
}

fn source_key(addr: IpAddr, mask64: bool) -> SourceKey {
    let mut key = SourceKey::default();
    match addr {
        IpAddr::V4(a) => {
            key.family = 4;
            key.addr[..4].copy_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            key.family = 6;
            key.addr = a.octets();
            if mask64 {
                key.addr[8..].fill(0);
            }
        }
    }
    key
}

/// The key of `addr`'s progress through the door's sequence.
fn knock_key(addr: IpAddr) -> DoorKey {
    DoorKey {
        id: door_id(b"door"),
        source: source_key(addr, false),
    }
}

/// The key of the door open for `addr` at 2222/tcp (doors are keyed by the port they open).
fn door_key(addr: IpAddr) -> DoorKey {
    DoorKey {
        id: opens_id(proto::TCP as u8, 2222),
        source: source_key(addr, false),
    }
}

/// `l4` from `src`.
fn from(src: IpAddr, l4: L4) -> Frame {
    match src {
        IpAddr::V4(a) => v4(l4).v4(|ip| ip.src = a),
        IpAddr::V6(a) => v6(l4).v6(|ip| ip.src = a),
    }
}

/// The pinned program and maps of the lab's filter.
struct Pinned {
    dir: PathBuf,
    prog: Xdp,
    failures: Vec<String>,
}

fn open_map(dir: &Path, name: &str) -> Map {
    let data = MapData::from_pin(dir.join(name))
        .unwrap_or_else(|e| panic!("opening the pinned map {name}: {e}"));
    Map::from_map_data(data).unwrap_or_else(|e| panic!("the pinned map {name}: {e}"))
}

impl Pinned {
    fn open(dir: PathBuf) -> Pinned {
        let prog = Xdp::from_pin(dir.join("prog"), XdpAttachType::Interface)
            .unwrap_or_else(|e| panic!("opening the pinned program in {}: {e}", dir.display()));
        Pinned {
            dir,
            prog,
            failures: Vec::new(),
        }
    }

    fn hash<K: aya::Pod, V: aya::Pod>(&self, name: &str) -> HashMap<MapData, K, V> {
        HashMap::try_from(open_map(&self.dir, name))
            .unwrap_or_else(|e| panic!("{name} as a hash map: {e}"))
    }

    fn blocks(&self) -> HashMap<MapData, SourceKey, BlockValue> {
        self.hash("PFW_BLOCKS")
    }

    fn doors(&self) -> HashMap<MapData, DoorKey, DoorValue> {
        self.hash("PFW_DOORS")
    }

    fn knocks(&self) -> HashMap<MapData, DoorKey, KnockState> {
        self.hash("PFW_KNOCKS")
    }

    fn counters(&self) -> Vec<u64> {
        let array = PerCpuArray::<MapData, u64>::try_from(open_map(&self.dir, "PFW_COUNTERS"))
            .expect("PFW_COUNTERS as a per-CPU array");
        (0..counter::COUNT)
            .map(|i| array.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0))
            .collect()
    }

    /// Runs `frame`: its verdict must be `verdict`, and exactly the counters `moved` (each
    /// by one) may move, logging's own aside (any counters, when `None`).
    fn judge(&mut self, what: &str, frame: Frame, verdict: u32, moved: Option<&[u32]>) {
        let any = moved.is_none();
        let bytes = frame.build();
        let before = self.counters();
        let got = self
            .prog
            .test_run(TestRunOptions {
                data_in: Some(&bytes),
                repeat: 1,
                ..Default::default()
            })
            .map(|r| r.return_value)
            .unwrap_or_else(|e| panic!("{what}: test run: {e}"));
        let after = self.counters();
        let mut problems = Vec::new();
        if got != verdict {
            problems.push(format!(
                "the kernel said {}, expected {}",
                xdp_name(got),
                xdp_name(verdict)
            ));
        }
        let moved = moved.unwrap_or(&[]);
        let changed: Vec<u32> = (0..counter::COUNT)
            .filter(|i| !counter::is_event_log(*i) && after[*i as usize] != before[*i as usize])
            .collect();
        let mut want = moved.to_vec();
        want.sort_unstable();
        let by_one = moved
            .iter()
            .all(|&i| after[i as usize] == before[i as usize] + 1);
        if !any && (changed != want || !by_one) {
            let names = |c: &[u32]| c.iter().map(|&i| NAMES[i as usize]).collect::<Vec<_>>();
            problems.push(format!(
                "counters moved: {:?}, expected {:?} by one each",
                names(&changed),
                names(&want)
            ));
        }
        if !problems.is_empty() {
            self.failures
                .push(format!("{what}: {}", problems.join("; ")));
        }
    }

    fn passes(&mut self, what: &str, frame: Frame, moved: &[u32]) {
        self.judge(what, frame, XDP_PASS, Some(moved));
    }

    fn drops(&mut self, what: &str, frame: Frame, moved: &[u32]) {
        self.judge(what, frame, XDP_DROP, Some(moved));
    }

    fn check(&mut self, what: &str, ok: bool, detail: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(format!("{what}: {}", detail()));
        }
    }

    fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{} defence fixture(s) failed:\n\n{}",
            self.failures.len(),
            self.failures.join("\n\n")
        );
    }
}

#[test]
fn defence_paths_through_bpf_prog_test_run() {
    let rig = Rig::new("df-fixtures", 0);
    let _policy = rig.apply("fixtures.yaml", POLICY);
    // The block tables are read once a block exists: `portfw block` turns them on, as it
    // would on a running filter, for an address no fixture uses.
    rig.portfw_ok(&["block", &src4(250).to_string()]);
    let mut p = Pinned::open(rig.lab.pin_dir());
    let now = monotonic_ns();
    let second = 1_000_000_000u64;
    let syn = |port| tcp(port);

    // Blocks seeded into the pinned table.
    let mut blocks = p.blocks();
    let seed = |blocks: &mut HashMap<MapData, SourceKey, BlockValue>, key, expires_ns| {
        blocks
            .insert(
                key,
                BlockValue {
                    expires_ns,
                    created_ns: now.saturating_sub(second),
                    reason: block_reason::MANUAL,
                    _pad: [0; 7],
                },
                0,
            )
            .expect("seed a block");
    };
    let forever: IpAddr = src4(10).into();
    let expired: IpAddr = src4(11).into();
    let timed: IpAddr = src4(12).into();
    let net6: IpAddr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0x1234).into();
    seed(&mut blocks, source_key(forever, false), 0);
    seed(&mut blocks, source_key(expired, false), now - second);
    seed(&mut blocks, source_key(timed, false), now + 60 * second);
    seed(&mut blocks, source_key(net6, true), now + 60 * second);
    drop(blocks);
    p.drops(
        "ssh from a source blocked until unblocked",
        from(forever, syn(22)),
        &[counter::DROP_BLOCKED],
    );
    p.drops(
        "dns from a source blocked for a minute",
        from(timed, udp(53)),
        &[counter::DROP_BLOCKED],
    );
    let other6: IpAddr = Ipv6Addr::new(0x2001, 2, 0, 0, 0xab, 0, 0, 0x99).into();
    p.drops(
        "ssh from another address of a blocked /64",
        from(other6, syn(22)),
        &[counter::DROP_BLOCKED],
    );
    p.passes(
        "ssh from a source whose block expired",
        from(expired, syn(22)),
        &[counter::ALLOW_RULE],
    );
    let gone = p.blocks().get(&source_key(expired, false), 0).is_err();
    p.check("the expired block", gone, || {
        "is still in PFW_BLOCKS after a packet saw it".into()
    });

    // A knock port: dropped as a knock, and the first knock starts the sequence.
    let knocker: IpAddr = src4(13).into();
    p.drops(
        "the first knock (7001/udp)",
        from(knocker, udp(7001)),
        &[counter::DROP_KNOCK],
    );
    let state = p.knocks().get(&knock_key(knocker), 0).ok();
    p.check("knock progress", state.is_some_and(|s| s.step == 1), || {
        format!("after the first knock: {state:?}")
    });

    // The opened port, without a door, with one, with an expired one.
    let closed: IpAddr = src4(14).into();
    let open: IpAddr = src4(15).into();
    let stale: IpAddr = src4(16).into();
    let mut doors = p.doors();
    for (addr, expires_ns) in [(open, now + 30 * second), (stale, now - second)] {
        doors
            .insert(
                door_key(addr),
                DoorValue {
                    opened_ns: now - 2 * second,
                    expires_ns,
                    door: door_id(b"door"),
                    _pad: 0,
                },
                0,
            )
            .expect("seed a door");
    }
    drop(doors);
    p.drops(
        "2222/tcp with no door open",
        from(closed, syn(2222)),
        &[counter::DROP_DEFAULT],
    );
    p.passes(
        "2222/tcp through an open door",
        from(open, syn(2222)),
        &[counter::ALLOW_DOOR],
    );
    p.drops(
        "2222/tcp through an expired door",
        from(stale, syn(2222)),
        &[counter::DROP_DEFAULT],
    );

    // A limited rule: five SYNs at once pass, the sixth is over; segments of connections
    // already open do not count; another source has its own bucket.
    let burst: IpAddr = src4(17).into();
    for i in 1..=5 {
        p.passes(
            &format!("SYN {i} of 5 to 8022 (limit 5/10s)"),
            from(burst, syn(8022)),
            &[counter::ALLOW_RULE],
        );
    }
    p.drops(
        "SYN 6 to 8022 (limit 5/10s)",
        from(burst, syn(8022)),
        &[counter::DROP_LIMIT],
    );
    p.passes(
        "an ACK to 8022 over the limit (not a new connection)",
        from(burst, tcp_seg(40000, 8022, tcp_flag::ACK)),
        &[counter::ALLOW_RULE],
    );
    p.passes(
        "a SYN to 8022 from another source",
        from(src4(18).into(), syn(8022)),
        &[counter::ALLOW_RULE],
    );

    // A whole sequence opens the door; a SYN-ACK to the knock port is no knock.
    let seq: IpAddr = src4(19).into();
    p.drops(
        "knock 1 (7001/udp)",
        from(seq, udp(7001)),
        &[counter::DROP_KNOCK],
    );
    // Which counter a stray segment at a knock port moves is not the point here: that it
    // does not advance (or reset) the sequence is.
    p.judge(
        "a SYN-ACK to 7002 (no knock)",
        from(seq, tcp_seg(40000, 7002, tcp_flag::SYN_ACK)),
        XDP_DROP,
        None,
    );
    p.drops(
        "knock 2 (7002/tcp)",
        from(seq, syn(7002)),
        &[counter::DROP_KNOCK],
    );
    p.drops(
        "knock 3 (7003/udp)",
        from(seq, udp(7003)),
        &[counter::DROP_KNOCK, counter::DOORS_OPENED],
    );
    let door = p.doors().get(&door_key(seq), 0).ok();
    p.check(
        "the door the sequence opened",
        door.is_some_and(|d| d.door == door_id(b"door") && d.expires_ns > now),
        || format!("PFW_DOORS has {door:?} for the knocker"),
    );
    let progress = p.knocks().get(&knock_key(seq), 0).ok();
    p.check("knock progress once open", progress.is_none(), || {
        format!("the completed sequence left {progress:?}")
    });
    p.passes(
        "2222/tcp after the sequence",
        from(seq, syn(2222)),
        &[counter::ALLOW_DOOR],
    );

    // The scan guard: the eighth distinct dropped port blocks the source.
    let scanner: IpAddr = src4(20).into();
    for port in 1000..1007 {
        p.drops(
            &format!("scan port {port}"),
            from(scanner, syn(port)),
            &[counter::DROP_DEFAULT],
        );
    }
    p.drops(
        "scan port 1007, the eighth",
        from(scanner, syn(1007)),
        &[counter::DROP_DEFAULT, counter::SCAN_BLOCKS],
    );
    let block = p.blocks().get(&source_key(scanner, false), 0).ok();
    p.check(
        "the scan block",
        block.is_some_and(|b| b.reason == block_reason::SCAN && b.expires_ns > now),
        || format!("PFW_BLOCKS has {block:?} for the scanner"),
    );
    p.drops(
        "ssh from the scanner",
        from(scanner, syn(22)),
        &[counter::DROP_BLOCKED],
    );
    p.finish();
}
