//! Differential fuzzing of the kernel program against the reference classifier: random and
//! mutated frames under random policies, each judged by the XDP program (BPF_PROG_TEST_RUN)
//! and by `common::reference`, which must agree on every frame and on the verdict counters.
//!
//! Each policy also gets a random `replies:` setting and flow timeouts, and a random flow table
//! is seeded into the kernel's map: flows of every protocol and state, live or idle past their
//! timeout. Some frames are aimed at it: replies to its flows, exactly or with one field off,
//! and ICMP errors quoting the host's packets of them, quotes cut at and around the bounds the
//! kernel must check. The reference models the same table, and after every policy the flow
//! states the kernel left must be the reference's. The table and the aimed frames come from a
//! generator of their own, so that the rules and the other frames stay those the seed gave
//! before flows were modelled.
//!
//! Deterministic: a seed fixes every policy and frame. `PORTFW_FUZZ_PACKETS=N` and
//! `PORTFW_FUZZ_SEED=S` change the run (`cargo xtask fuzz --packets N --seed S` sets both).
//! A disagreement fails with the seed, the policy's YAML and the frame in hex.
//! Needs root to load the program.
//!
//! The generators of the frames and of the flow tables live in `tests/differential/`.
mod common;

/// The generators of the frames and of the flow tables; the run and the tests stay here.
mod differential {
    pub mod flows;
    pub mod frames;
}

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use common::{
    builder::{hex, hex_line, proto},
    flow_table::{self},
    reference::{self, FlowId, FlowState, FlowTable, Tally, xdp_name},
};
use differential::{
    flows::{Seeded, aimed_frame, model, random_flows, replies_yaml, seed_table},
    frames::random_frame,
};
use portfw::{
    compile,
    loader::Loaded,
    policy::{self, Policy},
};
use portfw_lab::{Profile, Rng, random_policy};

/// Packets of a default run (CI runs it): a few seconds in a debug build on two cores.
const DEFAULT_PACKETS: u64 = 200_000;
/// Any fixed value; printed with every run so a failure can be replayed.
const DEFAULT_SEED: u64 = 0x7066_7734_f022_0001;
/// Frames judged under each random policy before the next one is installed.
const PACKETS_PER_POLICY: u64 = 500;
/// The most BPF_PROG_TEST_RUN puts in the linear buffer the program sees (a page less XDP's
/// headroom and the shared-info tailroom); the rest of a longer frame goes into fragments the
/// program cannot read, as no driver would hand this non-multi-buffer program such a frame.
const MAX_FRAME: usize = 3520;
/// Disagreements described in full in the failure message; the rest are only counted.
const SHOWN_MISMATCHES: usize = 8;

/// The seed of policy `index` of a run: each batch replays on its own.
fn batch_seed(seed: u64, index: u64) -> u64 {
    let rng = Rng::new(seed ^ index.wrapping_mul(0xd1b5_4a32_d192_ed03));
    rng.next()
}

/// The seed of batch `index`'s flow settings, flow table and aimed frames.
fn flow_seed(seed: u64, index: u64) -> u64 {
    batch_seed(seed ^ 0x666c_6f77_7461_626c, index)
}

/// Percentage of the main stream's frames that are preceded by a frame aimed at the table.
const AIMED_PERCENT: u64 = 40;

/// Everything one policy's batch judges, rebuilt identically from the seed for a replay.
#[derive(Debug, PartialEq)]
struct Batch {
    yaml: String,
    policy: Policy,
    flows: Vec<Seeded>,
    /// In the order judged; `true` marks the frames aimed at the flow table.
    frames: Vec<(bool, Vec<u8>)>,
}

fn batch(seed: u64, index: u64, count: u64) -> Batch {
    let rng = Rng::new(batch_seed(seed, index));
    let flow_rng = Rng::new(flow_seed(seed, index));
    let yaml = format!(
        "{}{}",
        replies_yaml(&flow_rng),
        random_policy(&rng, &Profile::differential())
    );
    let policy = match policy::parse(&yaml, "fuzz.yaml") {
        Ok(parsed) => parsed.policy,
        Err(d) => panic!("generated policy is invalid (a generator bug):\n{yaml}\n{d}"),
    };
    let flows = random_flows(&flow_rng, &policy);
    let mut frames = Vec::new();
    for _ in 0..count {
        if flow_rng.percent(AIMED_PERCENT) {
            frames.push((true, aimed_frame(&flow_rng, &flows)));
        }
        frames.push((false, random_frame(&rng)));
    }
    Batch {
        yaml,
        policy,
        flows,
        frames,
    }
}

/// The flow table as one line per flow, for failure messages.
fn describe(table: &FlowTable) -> String {
    if table.flows.is_empty() {
        return "    (empty)\n".into();
    }
    table
        .flows
        .iter()
        .map(|(id, e)| {
            format!(
                "    {} {}:{} <- {}:{} {:?}{}\n",
                id.protocol,
                id.local,
                id.local_port,
                id.remote,
                id.remote_port,
                e.state,
                if e.live { "" } else { " (expired)" }
            )
        })
        .collect()
}

/// The kernel table's flows and states, as the reference's.
fn kernel_states(loaded: &mut Loaded) -> Vec<(FlowId, FlowState)> {
    let mut states: Vec<(FlowId, FlowState)> = flow_table::entries(loaded)
        .iter()
        .map(|(k, v)| flow_table::from_key(k, v))
        .collect();
    states.sort_by_key(|(id, _)| *id);
    states
}

fn model_states(table: &FlowTable) -> Vec<(FlowId, FlowState)> {
    table.flows.iter().map(|(id, e)| (*id, e.state)).collect()
}

// ---------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => {
            let text = text.trim().replace('_', "");
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{name}={text:?} is not a number"))
        }
        Err(_) => default,
    }
}

#[derive(Default)]
struct Stats {
    packets: u64,
    /// Of which aimed at the flow table.
    aimed: u64,
    /// Frames with another verdict, or another verdict counter, than the reference's.
    mismatches: u64,
    /// Policies under which the counters disagreed although the verdicts did not.
    counter_batches: u64,
    /// Policies after which the kernel's flow states were not the reference's.
    state_batches: u64,
    shown: Vec<String>,
    by_tally: BTreeMap<Tally, u64>,
    malformed: BTreeMap<&'static str, u64>,
    kernel_time: Duration,
    /// Compiling and installing the policies.
    install_time: Duration,
}

/// Installs the batch's policy and seeds its flow table; returns the reference's table.
fn prepare(loaded: &mut Loaded, batch: &Batch) -> FlowTable {
    loaded
        .tables
        .install(&compile::compile(&batch.policy).expect("compile policy"))
        .expect("install policy");
    seed_table(loaded, &batch.flows);
    model(&batch.flows)
}

#[test]
fn kernel_agrees_with_the_reference_on_random_frames() {
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "differential fuzzing loads an XDP program and needs root"
    );
    let packets = env_u64("PORTFW_FUZZ_PACKETS", DEFAULT_PACKETS);
    let seed = env_u64("PORTFW_FUZZ_SEED", DEFAULT_SEED);
    assert!(packets > 0, "PORTFW_FUZZ_PACKETS must be at least 1");
    println!("differential: {packets} packets, seed {seed:#x}");
    let mut loaded = Loaded::load().unwrap_or_else(|e| panic!("loading the XDP program: {e:#?}"));
    let started = Instant::now();
    let mut stats = Stats::default();
    let batches = packets.div_ceil(PACKETS_PER_POLICY);
    for index in 0..batches {
        let count = PACKETS_PER_POLICY.min(packets - index * PACKETS_PER_POLICY);
        let b = batch(seed, index, count);
        let t = Instant::now();
        let mut table = prepare(&mut loaded, &b);
        stats.install_time += t.elapsed();
        let seeded = describe(&table);
        let before = loaded.counters().expect("counters");
        let mut expected_tallies: BTreeMap<Tally, u64> = BTreeMap::new();
        let mut batch_mismatches = 0;
        for (n, (aimed, frame)) in b.frames.iter().enumerate() {
            let table_before = (stats.shown.len() < SHOWN_MISMATCHES).then(|| describe(&table));
            let t = Instant::now();
            let got = loaded.test_run(frame).expect("test run");
            stats.kernel_time += t.elapsed();
            let expected = reference::classify_with_flows(frame, &b.policy, &mut table);
            *expected_tallies.entry(expected.tally()).or_default() += 1;
            *stats.by_tally.entry(expected.tally()).or_default() += 1;
            if let reference::Class::Malformed(why) = expected.class {
                *stats.malformed.entry(why).or_default() += 1;
            }
            if got != expected.xdp() {
                batch_mismatches += 1;
                if let Some(flows) = table_before {
                    stats.shown.push(format!(
                        "seed {seed:#x}, policy {index}, frame {n}{}: kernel {}, reference {} ({:?})\n\
                         replay: PORTFW_FUZZ_SEED={seed:#x} PORTFW_FUZZ_PACKETS={packets} \
                         cargo test -p portfw-user --test differential -- --nocapture\n\
                         policy:\n{}flow table before the frame:\n{flows}frame ({} bytes): {}\n{}",
                        if *aimed { " (aimed at the flow table)" } else { "" },
                        xdp_name(got),
                        xdp_name(expected.xdp()),
                        expected.class,
                        indent(&b.yaml),
                        frame.len(),
                        hex_line(frame),
                        dump(frame)
                    ));
                }
            }
        }
        stats.packets += b.frames.len() as u64;
        stats.aimed += b.frames.iter().filter(|(aimed, _)| *aimed).count() as u64;
        stats.mismatches += batch_mismatches;
        // The counters must tell the same story, verdict kind by verdict kind; a batch with
        // wrong verdicts would only repeat what is reported already.
        let after = loaded.counters().expect("counters");
        let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        if batch_mismatches == 0 {
            let disagree: Vec<Tally> = Tally::ALL
                .into_iter()
                .filter(|t| t.of(&delta) != expected_tallies.get(t).copied().unwrap_or(0))
                .collect();
            if !disagree.is_empty() {
                // Same verdicts, different kinds (say malformed against a fragment drop):
                // replay the batch frame by frame to name the frames.
                stats.counter_batches += 1;
                let culprits = replay_counting(&mut loaded, &b);
                stats.mismatches += culprits.len() as u64;
                for culprit in culprits {
                    if stats.shown.len() < SHOWN_MISMATCHES {
                        stats.shown.push(format!(
                            "seed {seed:#x}, policy {index}, {culprit}\n\
                             replay: PORTFW_FUZZ_SEED={seed:#x} PORTFW_FUZZ_PACKETS={packets} \
                             cargo test -p portfw-user --test differential -- --nocapture\n\
                             policy:\n{}",
                            indent(&b.yaml)
                        ));
                    }
                }
            }
            // What the frames did to the table: FIN and RST move TCP flows to closing.
            let kernel = kernel_states(&mut loaded);
            if kernel != model_states(&table) {
                stats.state_batches += 1;
                if stats.shown.len() < SHOWN_MISMATCHES {
                    stats.shown.push(format!(
                        "seed {seed:#x}, policy {index}: flow states after the batch differ\n\
                         kernel:    {kernel:?}\nreference: {:?}\nseeded:\n{seeded}policy:\n{}",
                        model_states(&table),
                        indent(&b.yaml)
                    ));
                }
            }
        }
    }
    let elapsed = started.elapsed();
    println!(
        "differential: {} packets ({} aimed at a flow table) under {batches} policies in \
         {:.1} s ({:.0} packets/s; {:.1} µs per test run, {:.1} ms per policy compiled and \
         installed), {} mismatches",
        stats.packets,
        stats.aimed,
        elapsed.as_secs_f64(),
        stats.packets as f64 / elapsed.as_secs_f64(),
        stats.kernel_time.as_secs_f64() * 1e6 / stats.packets as f64,
        stats.install_time.as_secs_f64() * 1e3 / batches as f64,
        stats.mismatches
    );
    for (tally, n) in &stats.by_tally {
        println!("  {tally:?}: {n}");
    }
    for (why, n) in &stats.malformed {
        println!("  malformed, {why}: {n}");
    }
    assert!(
        stats.mismatches == 0 && stats.state_batches == 0,
        "{} of {} frames judged differently by the kernel and the reference (by verdict, or by \
         counter under {} policies), and flow states differing after {} policies; the first \
         {}:\n\n{}",
        stats.mismatches,
        stats.packets,
        stats.counter_batches,
        stats.state_batches,
        stats.shown.len(),
        stats.shown.join("\n\n")
    );
    // A generator that stopped reaching a verdict would pass vacuously.
    if stats.packets >= 10_000 {
        for tally in Tally::ALL {
            let n = stats.by_tally.get(&tally).copied().unwrap_or(0);
            assert!(
                n * 1000 >= stats.packets,
                "only {n} of {} frames were {tally:?}: the generator no longer covers it",
                stats.packets
            );
        }
    }
}

/// Replays one batch from a freshly seeded table, reading the counters around every frame,
/// and describes every frame whose counter is not the one the reference's verdict belongs to.
fn replay_counting(loaded: &mut Loaded, batch: &Batch) -> Vec<String> {
    let mut table = prepare(loaded, batch);
    let mut found = Vec::new();
    for (n, (aimed, frame)) in batch.frames.iter().enumerate() {
        let flows = describe(&table);
        let before = loaded.counters().expect("counters");
        loaded.test_run(frame).expect("test run");
        let after = loaded.counters().expect("counters");
        let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        let expected = reference::classify_with_flows(frame, &batch.policy, &mut table);
        let moved: Vec<Tally> = Tally::ALL
            .into_iter()
            .filter(|t| t.of(&delta) != 0)
            .collect();
        if moved != [expected.tally()] {
            found.push(format!(
                "frame {n}{}: kernel counted {moved:?}, reference {:?} ({:?})\n\
                 flow table before the frame:\n{flows}frame ({} bytes): {}\n{}",
                if *aimed {
                    " (aimed at the flow table)"
                } else {
                    ""
                },
                expected.tally(),
                expected.class,
                frame.len(),
                hex_line(frame),
                dump(frame)
            ));
        }
    }
    found
}

/// The first bytes laid out by offset; the full frame is in the hex line above it.
fn dump(frame: &[u8]) -> String {
    hex(&frame[..frame.len().min(160)])
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

#[test]
fn generated_policies_are_valid() {
    // A policy the parser refuses would stop a fuzz run; better to learn it here, rootless.
    for batch in 0..300 {
        let rng = Rng::new(batch_seed(DEFAULT_SEED, batch));
        let yaml = random_policy(&rng, &Profile::differential());
        if let Err(d) = policy::parse(&yaml, "fuzz.yaml") {
            panic!("generated policy {batch} is invalid:\n{yaml}\n{d}");
        }
    }
}

#[test]
fn generated_flow_settings_and_tables_are_valid() {
    // The `replies:` and `flows:` lines in front of each policy must keep it valid, and the
    // seeded flows must be of the states their protocol can have.
    for index in 0..300 {
        let b = batch(DEFAULT_SEED, index, 0);
        for f in &b.flows {
            let tcp = f.id.protocol == proto::TCP;
            assert_eq!(tcp, f.state != FlowState::Open, "policy {index}: {f:?}");
            assert_eq!(
                f.id.local.is_ipv6(),
                f.id.remote.is_ipv6(),
                "policy {index}: {f:?}"
            );
        }
    }
}

#[test]
fn the_flow_generator_is_deterministic() {
    // A reported seed must rebuild the same flow table and aimed frames.
    assert_eq!(batch(7, 3, 60), batch(7, 3, 60));
    assert_ne!(batch(7, 3, 60), batch(8, 3, 60));
    // The main stream is the one the seed gave before flows were modelled.
    let rng = Rng::new(batch_seed(7, 3));
    let _ = random_policy(&rng, &Profile::differential());
    let main: Vec<Vec<u8>> = (0..60).map(|_| random_frame(&rng)).collect();
    let b = batch(7, 3, 60);
    let unaimed: Vec<Vec<u8>> = b
        .frames
        .into_iter()
        .filter(|(aimed, _)| !aimed)
        .map(|(_, f)| f)
        .collect();
    assert_eq!(unaimed, main);
}

#[test]
fn the_generator_is_deterministic() {
    // Replaying a reported seed must rebuild the same policy and frames.
    let run = |seed| {
        let rng = Rng::new(batch_seed(seed, 3));
        let yaml = random_policy(&rng, &Profile::differential());
        let frames: Vec<Vec<u8>> = (0..50).map(|_| random_frame(&rng)).collect();
        (yaml, frames)
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}
