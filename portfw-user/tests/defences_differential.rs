//! Differential fuzzing of the active defences: random policies with a scan guard, limits
//! and knock doors, random block and door state seeded into the kernel's maps and into the
//! reference model (`portfw::compile::reference::DefenceState`), then random packets from a
//! small pool of sources (so that scans, limits and knock sequences happen), each judged by
//! the XDP program (BPF_PROG_TEST_RUN) and by the model. Verdicts and verdict counters must
//! agree on every packet, and the state the kernel built (blocks, knock progress, open doors)
//! must be the model's after every batch.
//!
//! Deterministic: a seed fixes every policy and packet (`PORTFW_FUZZ_SEED`). The timeouts are
//! long (minutes and hours), so that the few milliseconds between the model's clock and the
//! kernel's never decide. Needs root.
mod common;

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::maps::{HashMap, Map, MapData};
use common::{
    builder::{Frame, hex_line, tcp_seg, udp_from, v4, v6},
    flow_table::monotonic_ns,
};
use portfw::{
    compile::{
        self,
        reference::{self, DefenceState, Packet},
    },
    loader::Loaded,
    policy::{self, Protocol},
};
use portfw_common::{
    BlockValue, DefenceMaps, DoorKey, DoorValue, KnockState, SourceKey, action, block_reason,
    counter, opens_id,
};
use portfw_lab::Rng;

const DEFAULT_SEED: u64 = 0x7066_7734_def0_0001;
const BATCHES: u64 = 24;
const PACKETS_PER_BATCH: usize = 250;

/// The sources packets come from: a few IPv4 hosts, and IPv6 hosts of which two share a /64.
fn sources() -> Vec<IpAddr> {
    vec![
        Ipv4Addr::new(198, 18, 0, 2).into(),
        Ipv4Addr::new(198, 18, 0, 3).into(),
        Ipv4Addr::new(198, 18, 7, 9).into(),
        Ipv4Addr::new(203, 0, 113, 5).into(),
        Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2).into(),
        Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0x99).into(),
        Ipv6Addr::new(0x2001, 2, 0, 7, 0, 0, 0, 1).into(),
    ]
}

const KNOCK_PORTS: [u16; 6] = [7001, 7002, 7003, 7004, 7005, 7006];
/// Ports the packets aim at: rules', knocks', the door's, and some nobody names.
const PORTS: [u16; 16] = [
    22, 80, 25, 2222, 5000, 5001, 7001, 7002, 7003, 7004, 7005, 7006, 9000, 9001, 9002, 62201,
];

fn seed() -> u64 {
    std::env::var("PORTFW_FUZZ_SEED")
        .ok()
        .and_then(|s| {
            let s = s.trim();
            match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => s.parse().ok(),
            }
        })
        .unwrap_or(DEFAULT_SEED)
}

/// A random policy with defences. Limits refill over hours and windows last minutes: no
/// packet of a batch lands on a boundary.
fn random_yaml(rng: &Rng) -> String {
    let mut y = String::new();
    y.push_str(if rng.percent(70) {
        "default: drop\n"
    } else {
        "default: allow\n"
    });
    y.push_str("replies: drop\nicmp: allow\n");
    if rng.percent(30) {
        y.push_str("enforce: false\n");
    }
    if rng.percent(80) {
        y.push_str(&format!(
            "scan:\n  ports: {}\n  within: {}\n  block: {}\n",
            rng.pick(&[1, 2, 3, 5, 8]),
            rng.pick(&["1m", "10m", "1h"]),
            rng.pick(&["10m", "1h", "1d"]),
        ));
        if rng.percent(50) {
            y.push_str(&format!(
                "  except: [{}]\n",
                rng.pick(&[
                    "198.18.0.3/32",
                    "198.18.0.0/16",
                    "2001:2::/64",
                    "203.0.113.0/24"
                ])
            ));
        }
    }
    y.push_str("rules:\n");
    y.push_str(&format!(
        "  - allow: 22/tcp\n{}",
        if rng.percent(50) {
            format!("    limit: {}/1h\n", rng.pick(&[1, 2, 3]))
        } else {
            String::new()
        }
    ));
    if rng.percent(60) {
        y.push_str("  - allow: 80/tcp\n");
    }
    if rng.percent(40) {
        y.push_str("  - drop: 25/tcp\n");
    }
    if rng.percent(60) {
        y.push_str(&format!(
            "  - allow: 5000-5001/udp\n    limit: {}/2h\n",
            rng.pick(&[1, 2, 4])
        ));
    }
    if rng.percent(30) {
        y.push_str("  - allow: 9000/tcp\n    from: [198.18.0.0/24]\n");
    }
    if rng.percent(75) {
        y.push_str("knock:\n");
        let steps = 2 + rng.below(3) as usize;
        let mut ports: Vec<u16> = KNOCK_PORTS.to_vec();
        let mut sequence = Vec::new();
        for _ in 0..steps {
            let i = rng.below(ports.len() as u64) as usize;
            let port = ports.remove(i);
            let proto = if rng.percent(50) { "udp" } else { "tcp" };
            sequence.push(format!("{port}/{proto}"));
        }
        y.push_str(&format!(
            "  - name: door\n    sequence: [{}]\n    within: 10m\n    opens: 2222/tcp\n    for: 1h\n",
            sequence.join(", ")
        ));
        if rng.percent(50) {
            y.push_str(
                "  - name: spa\n    spa: {port: 62201/udp, key-file: /nonexistent/knock.key}\n    opens: 2222/tcp\n    for: 1h\n",
            );
        }
    }
    y
}

/// One packet of the stream.
#[derive(Clone, Copy, Debug)]
struct Shot {
    source: IpAddr,
    tcp: bool,
    port: u16,
    flags: u8,
    sport: u16,
}

fn random_shot(rng: &Rng, sources: &[IpAddr]) -> Shot {
    let tcp = rng.percent(60);
    Shot {
        source: rng.pick(sources),
        tcp,
        port: rng.pick(&PORTS),
        flags: if tcp {
            rng.pick(&[0x02, 0x02, 0x02, 0x10, 0x12, 0x04, 0x11])
        } else {
            0
        },
        sport: 40000 + rng.below(20) as u16,
    }
}

fn frame(shot: &Shot) -> Vec<u8> {
    let l4 = if shot.tcp {
        tcp_seg(shot.sport, shot.port, shot.flags)
    } else {
        udp_from(shot.sport, shot.port)
    };
    let f: Frame = match shot.source {
        IpAddr::V4(a) => v4(l4).v4(|h| h.src = a),
        IpAddr::V6(a) => v6(l4).v6(|h| h.src = a),
    };
    f.build()
}

fn map(loaded: &Loaded, name: &'static str) -> MapData {
    loaded
        .defence_map(name)
        .expect("defence map")
        .unwrap_or_else(|| panic!("the program has no {name}"))
}

/// Seeds manual blocks and open doors into both the kernel and the model.
fn seed_state(rng: &Rng, loaded: &Loaded, model: &mut DefenceState, sources: &[IpAddr]) {
    let now = monotonic_ns();
    let mut blocks: HashMap<MapData, SourceKey, BlockValue> =
        HashMap::try_from(Map::HashMap(map(loaded, DefenceMaps::BLOCKS))).expect("blocks map");
    let mut doors: HashMap<MapData, DoorKey, DoorValue> =
        HashMap::try_from(Map::LruHashMap(map(loaded, DefenceMaps::DOORS))).expect("doors map");
    for source in sources {
        if rng.percent(15) {
            // Live or long expired.
            let expires = if rng.percent(70) {
                now + 3_600_000_000_000
            } else {
                now - 60_000_000_000
            };
            let key = reference::source_key(*source, true);
            let value = BlockValue {
                expires_ns: expires,
                created_ns: now - 120_000_000_000,
                reason: block_reason::MANUAL,
                ..BlockValue::default()
            };
            blocks.insert(key, value, 0).expect("seeding a block");
            model.blocks.insert(key, value);
        }
        if rng.percent(15) {
            let key = DoorKey {
                id: opens_id(0, 2222),
                source: reference::source_key(*source, false),
            };
            let value = DoorValue {
                opened_ns: now - 1_000_000_000,
                expires_ns: if rng.percent(70) {
                    now + 3_600_000_000_000
                } else {
                    now - 1_000_000_000
                },
                door: 1,
                _pad: 0,
            };
            doors.insert(key, value, 0).expect("seeding a door");
            model.doors.insert(key, value);
        }
    }
}

/// Empties every defence state map, so that each batch starts from its own seeded state.
fn clear_state(loaded: &Loaded) {
    fn clear<K: aya::Pod, V: aya::Pod>(mut m: HashMap<MapData, K, V>) {
        let keys: Vec<K> = m.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = m.remove(&k);
        }
    }
    clear::<SourceKey, BlockValue>(
        HashMap::try_from(Map::HashMap(map(loaded, DefenceMaps::BLOCKS))).expect("blocks"),
    );
    for name in [
        DefenceMaps::SCAN,
        DefenceMaps::SCAN_PORTS,
        DefenceMaps::LIMITS,
    ] {
        // Keys of 20 and 24 bytes; values are only removed.
        let data = map(loaded, name);
        match name {
            DefenceMaps::SCAN => clear::<SourceKey, portfw_common::ScanValue>(
                HashMap::try_from(Map::LruHashMap(data)).expect("scan"),
            ),
            DefenceMaps::SCAN_PORTS => clear::<portfw_common::ScanPortKey, u64>(
                HashMap::try_from(Map::LruHashMap(data)).expect("scan ports"),
            ),
            _ => clear::<portfw_common::LimitKey, u64>(
                HashMap::try_from(Map::LruHashMap(data)).expect("limits"),
            ),
        }
    }
    clear::<DoorKey, KnockState>(
        HashMap::try_from(Map::LruHashMap(map(loaded, DefenceMaps::KNOCKS))).expect("knocks"),
    );
    clear::<DoorKey, DoorValue>(
        HashMap::try_from(Map::LruHashMap(map(loaded, DefenceMaps::DOORS))).expect("doors"),
    );
}

fn keys<K: aya::Pod + Ord, V: aya::Pod>(m: &HashMap<MapData, K, V>) -> BTreeSet<K> {
    m.keys().filter_map(Result::ok).collect()
}

#[test]
fn defences_agree_with_the_reference() {
    let seed = seed();
    println!("defences differential: seed {seed:#x}");
    let sources = sources();
    let mut loaded = Loaded::load().expect("loading the program (needs root)");
    let mut mismatches = Vec::new();
    let mut judged = 0usize;
    let mut verdicts = [0usize; 3];
    for batch in 0..BATCHES {
        let rng = Rng::new(seed ^ batch.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let yaml = random_yaml(&rng);
        let parsed = policy::parse(&yaml, "defences.yaml")
            .unwrap_or_else(|d| panic!("generated policy is invalid:\n{yaml}\n{d}"));
        let policy = parsed.policy;
        let compiled = compile::compile(&policy).expect("compiling");
        // State first: installing turns the block lookups on when the block table holds
        // blocks, as `portfw apply` does.
        clear_state(&loaded);
        let mut model = DefenceState::default();
        seed_state(&rng, &loaded, &mut model, &sources);
        loaded.tables.install(&compiled).expect("installing");
        for _ in 0..PACKETS_PER_BATCH {
            let shot = random_shot(&rng, &sources);
            let bytes = frame(&shot);
            let packet = Packet {
                protocol: if shot.tcp {
                    Protocol::Tcp
                } else {
                    Protocol::Udp
                },
                port: shot.port,
                source: shot.source,
                tcp_flags: shot.flags,
                reply: false,
            };
            let before = loaded.counters().expect("counters");
            let now = monotonic_ns();
            let got = loaded.test_run(&bytes).expect("test run");
            let expected = reference::judge(&policy, &mut model, &packet, now);
            let after = loaded.counters().expect("counters");
            judged += 1;
            let want = if expected.action == action::DROP {
                1
            } else {
                2
            };
            verdicts[usize::from(expected.action.min(2))] += 1;
            let mut moved: Vec<u32> = (0..before.len())
                .filter(|&i| after[i] != before[i] && !counter::is_event_log(i as u32))
                .map(|i| i as u32)
                .collect();
            moved.sort_unstable();
            let mut want_moved = expected.bumped.clone();
            want_moved.push(expected.counter);
            want_moved.sort_unstable();
            want_moved.dedup();
            if got != want || moved != want_moved {
                mismatches.push(format!(
                    "batch {batch}: {shot:?}: kernel {got} moved {:?}, reference {want} moved {:?} \
                     ({expected:?})\n  frame {}\n  policy:\n{yaml}",
                    moved
                        .iter()
                        .map(|&i| counter::NAMES[i as usize])
                        .collect::<Vec<_>>(),
                    want_moved
                        .iter()
                        .map(|&i| counter::NAMES[i as usize])
                        .collect::<Vec<_>>(),
                    hex_line(&bytes),
                ));
            }
        }
        // The state the kernel built must be the model's.
        let blocks: HashMap<MapData, SourceKey, BlockValue> =
            HashMap::try_from(Map::HashMap(map(&loaded, DefenceMaps::BLOCKS))).expect("blocks");
        let doors: HashMap<MapData, DoorKey, DoorValue> =
            HashMap::try_from(Map::LruHashMap(map(&loaded, DefenceMaps::DOORS))).expect("doors");
        let knocks: HashMap<MapData, DoorKey, KnockState> =
            HashMap::try_from(Map::LruHashMap(map(&loaded, DefenceMaps::KNOCKS))).expect("knocks");
        // Live blocks: an expired one is removed by whichever side next looks it up, and
        // with no block live the kernel need not look at all.
        let now = monotonic_ns();
        let live = |v: &BlockValue| v.expires_ns == 0 || v.expires_ns > now;
        let model_blocks: BTreeSet<SourceKey> = model
            .blocks
            .iter()
            .filter(|(_, v)| live(v))
            .map(|(k, _)| *k)
            .collect();
        let kernel_blocks: BTreeSet<SourceKey> = keys(&blocks)
            .into_iter()
            .filter(|k| blocks.get(k, 0).is_ok_and(|v| live(&v)))
            .collect();
        let model_doors: BTreeSet<DoorKey> = model.doors.keys().copied().collect();
        let model_knocks: BTreeSet<(DoorKey, u8)> =
            model.knocks.iter().map(|(k, v)| (*k, v.step)).collect();
        let kernel_knocks: BTreeSet<(DoorKey, u8)> = keys(&knocks)
            .into_iter()
            .filter_map(|k| knocks.get(&k, 0).ok().map(|v| (k, v.step)))
            .collect();
        if kernel_blocks != model_blocks
            || keys(&doors) != model_doors
            || kernel_knocks != model_knocks
        {
            mismatches.push(format!(
                "batch {batch}: state differs:\n  blocks kernel {:?}\n  blocks model  {:?}\n  doors kernel {:?}\n  doors model  {:?}\n  knocks kernel {kernel_knocks:?}\n  knocks model  {model_knocks:?}\n  policy:\n{yaml}",
                kernel_blocks,
                model_blocks,
                keys(&doors),
                model_doors,
            ));
        }
        if mismatches.len() > 8 {
            break;
        }
    }
    println!(
        "defences differential: {judged} packets, allowed {} dropped {} would-drop {}",
        verdicts[0], verdicts[1], verdicts[2]
    );
    assert!(
        mismatches.is_empty(),
        "{} disagreement(s) (seed {seed:#x}):\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    // The stream must have exercised the defences, or the test proves nothing.
    let counters = loaded.counters().expect("counters");
    for c in [
        counter::DROP_BLOCKED,
        counter::DROP_LIMIT,
        counter::DROP_KNOCK,
        counter::SCAN_BLOCKS,
    ] {
        assert!(
            counters[c as usize] > 0,
            "no packet moved {}",
            counter::NAMES[c as usize]
        );
    }
}
