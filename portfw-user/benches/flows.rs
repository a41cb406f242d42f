//! `cargo bench -p portfw-user --bench flows`: what replies to the host's own connections
//! cost. Per packet through BPF_PROG_TEST_RUN, interleaved with their floors in the same run:
//! the XDP program on replies to tracked flows at ports the rules drop (next to a bare XDP
//! program with the same verdict), and the TC egress program on packets of tracked flows and
//! on a server's answer from a port the rules allow, which records nothing (next to an empty
//! TC program); and the flow table's memory at its default size.
//! Needs root. `cargo xtask bench` runs it and turns its JSON into BENCHMARKS.md.

mod common;

use anyhow::{Context as _, Result, bail};
use aya::programs::{ProgramError, SchedClassifier, TestRun as _, TestRunOptions, Xdp};
use common::{
    FLOOR_DROP, FLOOR_PASS, FLOOR_TC, XDP_DROP, XDP_PASS,
    frames::{self, Endpoints, TCP_ACK},
    host,
    report::{Args, Report, require_root},
};
use portfw::{compile, loader::Loaded, policy};
use portfw_common::{EGRESS_PROGRAM_NAME, FLOWS_DEFAULT_MAX, MapNames, PROGRAM_NAME};
use portfw_lab::{Lab, Side};

/// `TC_ACT_UNSPEC`: both TC programs hand every packet on.
const TC_NEXT: i32 = -1;

/// The peer's side of the tracked flows; the host's ports are ephemeral ones the policy drops.
const REMOTE_TCP: u16 = 443;
const REMOTE_UDP: u16 = 53;
const LOCAL_TCP: u16 = 40000;
const LOCAL_UDP: u16 = 40001;
const LOCAL_UNTRACKED: u16 = 40002;
/// A port the policy serves, and its client's: the host's answers there record nothing.
const SERVED_TCP: u16 = 80;
const CLIENT_TCP: u16 = 50000;

/// A host that serves ssh and http and drops everything else, replies allowed.
const POLICY: &str = "default: drop\nreplies: allow\nrules:\n  - allow: [22/tcp, 80/tcp]\n";

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench flows: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Loads the programs with `yaml`; without `cache`, the policy's flow cache is off
/// (`cache_ns` 0), so every packet of a flow looks it up in the table: the cost of a flow's
/// first packet, or of many flows interleaved on one CPU.
fn load(yaml: &str, cache: bool) -> Result<Loaded> {
    let parsed = policy::parse(yaml, "flows bench").map_err(|d| anyhow::anyhow!("{d}"))?;
    let mut compiled = compile::compile(&parsed.policy).context("compiling the bench policy")?;
    if !cache {
        compiled.settings.flow_timeouts.cache_ns = 0;
    }
    let mut loaded = Loaded::load().context("loading the programs (needs root)")?;
    loaded
        .tables
        .install(&compiled)
        .context("installing the bench policy")?;
    Ok(loaded)
}

fn opts(frame: &[u8], repeat: u32) -> TestRunOptions<'_> {
    TestRunOptions {
        data_in: Some(frame),
        repeat,
        ..Default::default()
    }
}

/// ns/packet of `repeat` runs of an XDP program by the kernel's own timer of the run, and
/// its verdict. The kernel's timer stops while the run yields the CPU, so other work on a
/// busy machine does not land in the figure (it is whole nanoseconds).
fn time_xdp(program: &Xdp, frame: &[u8], repeat: u32) -> Result<(u32, f64)> {
    let result = program
        .test_run(opts(frame, repeat))
        .context("XDP test run")?;
    Ok((result.return_value, result.duration.as_nanos() as f64))
}

/// The same for a TC program.
fn time_tc(program: &SchedClassifier, frame: &[u8], repeat: u32) -> Result<(i32, f64)> {
    let result = program
        .test_run(opts(frame, repeat))
        .map_err(|e: ProgramError| anyhow::anyhow!(e))
        .context("TC test run")?;
    Ok((
        result.return_value as i32,
        result.duration.as_nanos() as f64,
    ))
}

fn run() -> Result<()> {
    let args = Args::parse("flows")?;
    require_root()?;
    frames::self_check().map_err(anyhow::Error::msg)?;
    let repeat: u32 = if args.quick { 100_000 } else { 1_000_000 };
    let reps: usize = if args.quick { 5 } else { 7 };
    let mut report = Report::new(
        "flows",
        args.quick,
        serde_json::json!({ "repeat": repeat, "repetitions": reps }),
    );

    let mut loaded = load(POLICY, true)?;
    let mut uncached = load(POLICY, false)?;
    // As `portfw apply` does: the flow clock reads jiffies once calibrated.
    loaded.calibrate_clock()?;
    uncached.calibrate_clock()?;
    loaded.load_extra(FLOOR_PASS)?;
    loaded.load_extra(FLOOR_DROP)?;
    loaded.load_extra_classifier(FLOOR_TC)?;

    // Attached, as in production, an XDP program stays in the kernel's dispatcher and a run
    // times only the packets (see benches/kernel.rs); TC programs have no dispatcher.
    let lab = Lab::new("bench-f").context("creating the lab")?;
    let netns = lab.netns_path(Side::Server);
    for (i, name) in [PROGRAM_NAME, FLOOR_PASS, FLOOR_DROP]
        .into_iter()
        .enumerate()
    {
        let (a, b) = (format!("pfwbf{i}a"), format!("pfwbf{i}b"));
        lab.run(
            Side::Server,
            ["ip", "link", "add", &a, "type", "veth", "peer", "name", &b],
        )?;
        host::attach_in(&netns, loaded.xdp_mut(name)?, &a)?;
    }
    lab.run(
        Side::Server,
        [
            "ip", "link", "add", "pfwbfua", "type", "veth", "peer", "name", "pfwbfub",
        ],
    )?;
    host::attach_in(&netns, uncached.xdp_mut(PROGRAM_NAME)?, "pfwbfua")?;

    // Inbound frames come from the peer (198.18.0.2) to the host (198.18.0.1).
    let inbound = Endpoints::test();
    let outbound = inbound.reversed();
    let egress_frames = [
        (
            "TCP ACK of a tracked connection",
            frames::tcp4(&outbound, LOCAL_TCP, REMOTE_TCP, TCP_ACK),
        ),
        (
            "UDP datagram of a tracked flow",
            frames::udp4(&outbound, LOCAL_UDP, REMOTE_UDP, 18),
        ),
        (
            "TCP ACK from an open port (a server's answer)",
            frames::tcp4(&outbound, SERVED_TCP, CLIENT_TCP, TCP_ACK),
        ),
    ];
    // The flows the replies belong to: a connection through its handshake, a UDP query.
    let egress = loaded.classifier(EGRESS_PROGRAM_NAME)?;
    let egress_uncached = uncached.classifier(EGRESS_PROGRAM_NAME)?;
    for program in [egress, egress_uncached] {
        for frame in [
            frames::tcp4_syn(&outbound, LOCAL_TCP, REMOTE_TCP),
            frames::tcp4(&outbound, LOCAL_TCP, REMOTE_TCP, TCP_ACK),
            frames::udp4(&outbound, LOCAL_UDP, REMOTE_UDP, 18),
        ] {
            let (action, _) = time_tc(program, &frame, 1)?;
            if action != TC_NEXT {
                bail!("the egress program returned {action}, not TC_ACT_UNSPEC");
            }
        }
    }
    let xdp_frames = [
        (
            "TCP ACK reply, tracked flow, dropped port",
            frames::tcp4(&inbound, REMOTE_TCP, LOCAL_TCP, TCP_ACK),
            XDP_PASS,
        ),
        (
            "UDP reply, tracked flow, dropped port",
            frames::udp4(&inbound, REMOTE_UDP, LOCAL_UDP, 18),
            XDP_PASS,
        ),
        (
            "UDP, no flow, dropped port",
            frames::udp4(&inbound, REMOTE_UDP, LOCAL_UNTRACKED, 18),
            XDP_DROP,
        ),
        (
            "TCP SYN, allowed port",
            frames::tcp4_syn(&inbound, LOCAL_TCP, 80),
            XDP_PASS,
        ),
    ];

    let xdp_cols: Vec<String> = xdp_frames.iter().map(|(c, _, _)| (*c).to_owned()).collect();
    let floor_row = "floor: bare XDP program, same verdict".to_owned();
    let portfw_row = "portfw, replies: allow".to_owned();
    let uncached_row = "portfw, flow cache off (every packet looks up the table)".to_owned();
    report.table(
        "flows-xdp",
        "Replies to the host's own flows, per packet in the kernel (BPF_PROG_TEST_RUN)",
        "ns/packet",
        &format!(
            "{repeat} runs of one 60-byte frame per figure, by the kernel's timer of the run (which \
             stops while the run yields the CPU; whole ns), each program attached to an idle veth; {reps} interleaved repetitions. The flows were recorded by \
             running the egress program on the host's own packets first. A run repeats one \
             packet, the steady state of a busy flow, which the per-CPU flow cache answers; \
             the cache-off row is the same program with `cache_ns` 0, which is what a flow's \
             first packet after 10 ms, or one of many interleaved flows, costs."
        ),
        &[floor_row.clone(), portfw_row.clone(), uncached_row.clone()],
        &xdp_cols,
    );
    let egress_cols: Vec<String> = egress_frames.iter().map(|(c, _)| (*c).to_owned()).collect();
    let tc_floor_row = "floor: empty TC program".to_owned();
    let egress_row = "portfw_egress".to_owned();
    let egress_uncached_row = "portfw_egress, flow cache off".to_owned();
    report.table(
        "flows-egress",
        "The egress program per packet (SCHED_CLS through BPF_PROG_TEST_RUN)",
        "ns/packet",
        &format!(
            "{repeat} runs of one 60-byte frame per figure, by the kernel's timer of the run; {reps} \
             interleaved repetitions. The flow \
             exists, so a run is the steady state of a busy flow (its timestamp is refreshed at \
             most once a second). The cache-off row looks the flow up in the table on every \
             packet."
        ),
        &[
            tc_floor_row.clone(),
            egress_row.clone(),
            egress_uncached_row.clone(),
        ],
        &egress_cols,
    );
    let xdp_ratio_row = "portfw ÷ floor".to_owned();
    let tc_ratio_row = "portfw_egress ÷ empty TC program".to_owned();
    let xdp_uncached_ratio_row = "portfw, flow cache off ÷ floor".to_owned();
    let tc_uncached_ratio_row = "portfw_egress, flow cache off ÷ empty TC program".to_owned();
    report.table(
        "flows-ratio",
        "Replies and egress against their floors",
        "×",
        "Per repetition, ns/packet over the floor's from the same sweep; median, min and max.",
        &[
            xdp_ratio_row.clone(),
            xdp_uncached_ratio_row.clone(),
            tc_ratio_row.clone(),
            tc_uncached_ratio_row.clone(),
        ],
        &xdp_cols
            .iter()
            .chain(&egress_cols)
            .cloned()
            .collect::<Vec<_>>(),
    );
    for col in &egress_cols {
        for row in [&xdp_ratio_row, &xdp_uncached_ratio_row] {
            report.not_applicable("flows-ratio", row, col, "an egress figure")?;
        }
    }
    for col in &xdp_cols {
        for row in [&tc_ratio_row, &tc_uncached_ratio_row] {
            report.not_applicable("flows-ratio", row, col, "an XDP figure")?;
        }
    }

    let portfw = loaded.xdp(PROGRAM_NAME)?;
    let portfw_uncached = uncached.xdp(PROGRAM_NAME)?;
    let floors = [loaded.xdp(FLOOR_DROP)?, loaded.xdp(FLOOR_PASS)?];
    let tc_floor = loaded.classifier(FLOOR_TC)?;
    for rep in 0..reps {
        for (col, frame, verdict) in &xdp_frames {
            let floor = floors[usize::from(*verdict == XDP_PASS)];
            let (fv, f) = time_xdp(floor, frame, repeat)?;
            let (pv, p) = time_xdp(portfw, frame, repeat)?;
            let (uv, u) = time_xdp(portfw_uncached, frame, repeat)?;
            if fv != *verdict || pv != *verdict || uv != *verdict {
                bail!(
                    "{col}: verdicts floor {fv}, portfw {pv}, cache off {uv}; expected {verdict}"
                );
            }
            report.push("flows-xdp", &floor_row, col, f)?;
            report.push("flows-xdp", &portfw_row, col, p)?;
            report.push("flows-xdp", &uncached_row, col, u)?;
            report.push("flows-ratio", &xdp_ratio_row, col, p / f)?;
            report.push("flows-ratio", &xdp_uncached_ratio_row, col, u / f)?;
        }
        for (col, frame) in &egress_frames {
            let (_, f) = time_tc(tc_floor, frame, repeat)?;
            let (action, p) = time_tc(egress, frame, repeat)?;
            let (uncached_action, u) = time_tc(egress_uncached, frame, repeat)?;
            if action != TC_NEXT || uncached_action != TC_NEXT {
                bail!("{col}: the egress programs returned {action} and {uncached_action}");
            }
            report.push("flows-egress", &tc_floor_row, col, f)?;
            report.push("flows-egress", &egress_row, col, p)?;
            report.push("flows-egress", &egress_uncached_row, col, u)?;
            report.push("flows-ratio", &tc_ratio_row, col, p / f)?;
            report.push("flows-ratio", &tc_uncached_ratio_row, col, u / f)?;
        }
        println!("bench flows: repetition {}/{reps} done", rep + 1);
    }

    // The table's memory at its default size: the kernel's own account of the map.
    let (entries, bytes) = loaded.map_memory(MapNames::FLOWS)?;
    report.fact(
        "flow table memory",
        format!(
            "{:.1} MiB for the default `flows: max:` of {FLOWS_DEFAULT_MAX} ({entries} map entries \
             of a 40-byte key and a 24-byte value, preallocated): {} bytes per flow",
            bytes as f64 / (1024.0 * 1024.0),
            bytes / u64::from(FLOWS_DEFAULT_MAX),
        ),
    );
    drop(lab);
    drop(uncached);
    report.write(&args.out)?;
    println!("bench flows: wrote {}", args.out.display());
    Ok(())
}
