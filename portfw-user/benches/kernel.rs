//! `cargo bench -p portfw-user --bench kernel`: what portfw costs per packet in the kernel,
//! through BPF_PROG_TEST_RUN, next to a floor, a parse-only twin and xdp-filter, all timed in
//! the same run and interleaved (A B C A B C ...), as ns/packet and as ratios.
//!
//! A run of `repeat` packets is timed from user space around the syscall: the kernel's own
//! figure is a whole number of nanoseconds per packet, too coarse next to a floor of a few
//! tens. Every program is attached to a veth of its own while it is timed (see `run`), which
//! keeps the syscall's fixed cost to microseconds: below 0.01 ns per packet at a million.
//! Needs root. `cargo xtask bench` runs it and turns its JSON into BENCHMARKS.md.

mod common;

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use common::{
    FLOOR_DROP, FLOOR_PASS, XDP_DROP, XDP_PASS,
    frames::{self, Endpoints},
    host,
    policies::{self, SOURCE_HIT, SOURCE_MISS, TCP_ALLOWED, TCP_DROPPED, UDP_SOURCE_PORT},
    report::{Args, Report, read_setting, require_root, thousands},
    xdpfilter::XdpFilter,
};
use portfw::{
    compile,
    loader::{Loaded, LoaderError},
    policy,
};
use portfw_common::{PROGRAM_NAME, counter};
use portfw_lab::{Lab, Side};

/// The cut-short programs of `portfw-ebpf/src/bench.rs`.
const PARSE_ONLY: &str = "bench_parse";
const PARSE_LOOKUP: &str = "bench_lookup";
const PARSE_LOOKUP_COUNT: &str = "bench_count";

/// Logged runs are cut into chunks that fit the 1 MiB event ring (16,384 records of 64
/// bytes), drained between chunks, so that every event is really written.
const EVENT_CHUNK: u32 = 8192;

/// The veth pair (inside the lab's server namespace) that carries xdp-filter's TCP-only build.
const XF_VETH: &str = "pfwbxf0";
const XF_VETH_PEER: &str = "pfwbxf1";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench kernel: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// One benchmark packet and the verdict each kind of policy gives it.
struct Packet {
    label: &'static str,
    frame: Vec<u8>,
    /// The floor's verdict (the verdict under the source-rule policies).
    floor: u32,
    /// Aimed at the source-rule port (UDP 5353).
    udp: bool,
}

fn packets() -> Vec<Packet> {
    let e = Endpoints::test();
    vec![
        Packet {
            label: "IPv4 TCP SYN, allowed port",
            frame: frames::tcp4_syn(&e, 40000, TCP_ALLOWED),
            floor: XDP_PASS,
            udp: false,
        },
        Packet {
            label: "IPv4 TCP SYN, dropped port",
            frame: frames::tcp4_syn(&e, 40000, TCP_DROPPED),
            floor: XDP_DROP,
            udp: false,
        },
        Packet {
            label: "IPv6 TCP SYN, 2 extension headers",
            frame: frames::tcp6_syn_ext2(&e, 40000, TCP_ALLOWED),
            floor: XDP_PASS,
            udp: false,
        },
        Packet {
            label: "QinQ (2 VLAN tags) IPv4 TCP SYN",
            frame: frames::tcp4_syn_qinq(&e, 40000, TCP_ALLOWED),
            floor: XDP_PASS,
            udp: false,
        },
        Packet {
            label: "UDP to a source-rule port, source hit",
            frame: frames::udp4(&e.with_src4(SOURCE_HIT), 40000, UDP_SOURCE_PORT, 18),
            floor: XDP_PASS,
            udp: true,
        },
        Packet {
            label: "UDP to a source-rule port, source miss",
            frame: frames::udp4(&e.with_src4(SOURCE_MISS), 40000, UDP_SOURCE_PORT, 18),
            floor: XDP_DROP,
            udp: true,
        },
    ]
}

/// Which family of generated policy, for the expected verdicts.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Ports,
    Sources,
    Blocklist,
}

struct PolicySpec {
    row: String,
    kind: Kind,
    yaml: String,
}

fn policy_specs() -> Vec<PolicySpec> {
    let mut specs: Vec<PolicySpec> = [1usize, 100, 10_000, 65_536]
        .into_iter()
        .map(|n| PolicySpec {
            row: format!(
                "portfw, {} port entr{}",
                thousands(n),
                if n == 1 { "y" } else { "ies" }
            ),
            kind: Kind::Ports,
            yaml: policies::ports(n, false),
        })
        .collect();
    for m in [1000usize, 100_000] {
        specs.push(PolicySpec {
            row: format!(
                "portfw, 100 ports + {} CIDRs on udp {UDP_SOURCE_PORT}",
                thousands(m)
            ),
            kind: Kind::Sources,
            yaml: policies::sources(m),
        });
    }
    specs.push(PolicySpec {
        row: "portfw, 100 ports behind a 100,000-CIDR blocklist".into(),
        kind: Kind::Blocklist,
        yaml: policies::blocklist(100_000),
    });
    specs
}

/// The verdict portfw must give packet `index` of [`packets`] under a policy of `kind`.
fn expected(kind: Kind, index: usize) -> u32 {
    match (index, kind) {
        (0 | 2 | 3, _) => XDP_PASS,
        (1, _) => XDP_DROP,
        (4, Kind::Sources) => XDP_PASS,
        (4, _) => XDP_DROP,
        (5, Kind::Blocklist) => XDP_PASS,
        _ => XDP_DROP,
    }
}

fn load_policy(yaml: &str, what: &str) -> Result<Loaded> {
    let parsed = policy::parse(yaml, what).map_err(|d| anyhow::anyhow!("{what}: invalid:\n{d}"))?;
    let compiled = compile::compile(&parsed.policy).with_context(|| format!("compiling {what}"))?;
    let mut loaded = Loaded::load().map_err(|e| match e {
        LoaderError::Load(_) | LoaderError::Program { .. } => {
            anyhow::Error::new(e).context("loading the XDP program (needs root)")
        }
        e => anyhow::Error::new(e),
    })?;
    loaded
        .tables
        .install(&compiled)
        .with_context(|| format!("installing {what}"))?;
    Ok(loaded)
}

/// One timed run: the verdict, and ns/packet from user space and from the kernel.
struct Timed {
    verdict: u32,
    ns: f64,
    kernel_ns: f64,
}

fn time_run(program: &Xdp, frame: &[u8], repeat: u32) -> Result<Timed> {
    let opts = TestRunOptions {
        data_in: Some(frame),
        repeat,
        ..Default::default()
    };
    let start = Instant::now();
    let result = program.test_run(opts).context("BPF_PROG_TEST_RUN")?;
    let wall = start.elapsed();
    Ok(Timed {
        verdict: result.return_value,
        ns: wall.as_nanos() as f64 / f64::from(repeat),
        kernel_ns: result.duration.as_nanos() as f64,
    })
}

/// A run cut into ring-sized chunks with the ring drained between them; returns ns/packet
/// over the chunks' own time and the events read.
fn time_chunked(loaded: &mut Loaded, frame: &[u8], repeat: u32, drain: bool) -> Result<(f64, u64)> {
    let mut total = Duration::ZERO;
    let mut done = 0u32;
    let mut events = 0u64;
    while done < repeat {
        let n = EVENT_CHUNK.min(repeat - done);
        let program = loaded.xdp(PROGRAM_NAME)?;
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat: n,
            ..Default::default()
        };
        let start = Instant::now();
        program.test_run(opts).context("BPF_PROG_TEST_RUN")?;
        total += start.elapsed();
        done += n;
        if drain {
            let mut ring = loaded.events()?;
            while ring.next().is_some() {
                events += 1;
            }
        }
    }
    Ok((total.as_nanos() as f64 / f64::from(repeat), events))
}

/// A configuration under test: a table row and the program it runs.
struct Config<'a> {
    row: String,
    program: &'a Xdp,
    /// Expected verdict per packet; `None` where the row has no such figure.
    expect: Vec<Option<u32>>,
}

fn run() -> Result<()> {
    let args = Args::parse("kernel")?;
    require_root()?;
    frames::self_check().map_err(anyhow::Error::msg)?;
    let repeat: u32 = if args.quick { 100_000 } else { 1_000_000 };
    let reps: usize = if args.quick { 5 } else { 7 };
    let mut report = Report::new(
        "kernel",
        args.quick,
        serde_json::json!({ "repeat": repeat, "repetitions": reps, "event_chunk": EVENT_CHUNK }),
    );
    report.fact(
        "bpf_stats_enabled",
        read_setting("/proc/sys/kernel/bpf_stats_enabled"),
    );
    report.fact(
        "bpf_jit_enable",
        read_setting("/proc/sys/net/core/bpf_jit_enable"),
    );
    report.fact("xdp-filter", XdpFilter::version());

    let packets = packets();
    let specs = policy_specs();
    println!("bench kernel: loading {} policies", specs.len());
    let mut loaded = Vec::new();
    for spec in &specs {
        let started = Instant::now();
        loaded.push(load_policy(&spec.yaml, &spec.row)?);
        println!("  {} ({:.1} s)", spec.row, started.elapsed().as_secs_f64());
    }
    let mut floor_host = load_policy(&policies::ports(100, false), "floor host")?;
    floor_host.load_extra(FLOOR_PASS)?;
    floor_host.load_extra(FLOOR_DROP)?;
    floor_host.load_extra(PARSE_ONLY)?;
    floor_host.load_extra(PARSE_LOOKUP)?;
    floor_host.load_extra(PARSE_LOOKUP_COUNT)?;
    let mut logged = load_policy(&policies::ports(100, true), "ports(100), log drops")?;
    let mut unlogged = load_policy(&policies::ports(100, false), "ports(100)")?;

    // xdp-filter, in a lab of its own: the full build on one side, TCP only on the other.
    let lab = Lab::new("bench-k").context("creating the lab for xdp-filter")?;
    let mut xdp_filter = XdpFilter::new()?;
    // xdp-filter keeps one pin tree for the machine and drops the pins of interfaces it
    // cannot see, so both builds go into the server namespace: the TCP-only one on a dummy
    // veth of its own (BPF_PROG_TEST_RUN does not care where a program is attached).
    lab.run(
        Side::Server,
        [
            "ip",
            "link",
            "add",
            XF_VETH,
            "type",
            "veth",
            "peer",
            "name",
            XF_VETH_PEER,
        ],
    )?;
    for iface in [XF_VETH, XF_VETH_PEER] {
        lab.run(Side::Server, ["ip", "link", "set", iface, "up"])?;
    }
    xdp_filter.load(&lab, Side::Server, lab.server_iface(), "tcp,udp", "native")?;
    xdp_filter.load(&lab, Side::Server, XF_VETH, "tcp", "native")?;
    let allowed_tcp: Vec<u16> = policies::port_rules(100)
        .into_iter()
        .filter(|(allow, _)| *allow)
        .flat_map(|(_, ports)| ports)
        .collect();
    xdp_filter.allow_ports(&lab, Side::Server, &allowed_tcp, &[UDP_SOURCE_PORT])?;
    let (xf_all_name, xf_all) = xdp_filter.program(lab.iface(Side::Server))?;
    let (xf_tcp_name, xf_tcp) = xdp_filter.program(XF_VETH)?;
    report.fact(
        "xdp-filter programs",
        format!("{xf_all_name} (-f tcp,udp), {xf_tcp_name} (-f tcp)"),
    );

    // BPF_PROG_TEST_RUN puts a program that is not attached anywhere into the kernel's XDP
    // dispatcher for the run and takes it out after: milliseconds of text patching and RCU
    // waits per call, which would swamp the figures. Attached, as in production, a program
    // stays in the dispatcher and a run times only the packets. Each gets an idle veth.
    let netns = lab.netns_path(Side::Server);
    let mut idle_veth = 0;
    let mut attach = |program: &mut Xdp| -> Result<()> {
        let (a, b) = (format!("pfwbk{idle_veth}a"), format!("pfwbk{idle_veth}b"));
        idle_veth += 1;
        lab.run(
            Side::Server,
            ["ip", "link", "add", &a, "type", "veth", "peer", "name", &b],
        )?;
        host::attach_in(&netns, program, &a)
    };
    for name in [
        FLOOR_PASS,
        FLOOR_DROP,
        PARSE_ONLY,
        PARSE_LOOKUP,
        PARSE_LOOKUP_COUNT,
    ] {
        attach(floor_host.xdp_mut(name)?)?;
    }
    for l in loaded.iter_mut().chain([&mut logged, &mut unlogged]) {
        attach(l.xdp_mut(PROGRAM_NAME)?)?;
    }

    let floor_row = "floor: bare XDP program, same verdict".to_owned();
    let parse_row = "parse only (portfw's header walk, no lookups)".to_owned();
    let xf_all_row = format!("xdp-filter {xf_all_name} (--features tcp,udp)");
    let xf_tcp_row = format!("xdp-filter {xf_tcp_name} (--features tcp)");
    let floor_pass = floor_host.xdp(FLOOR_PASS)?;
    let floor_drop = floor_host.xdp(FLOOR_DROP)?;
    let parse_only = floor_host.xdp(PARSE_ONLY)?;
    let steps = [
        (
            "parse + portfw's table lookups (no counters)".to_owned(),
            floor_host.xdp(PARSE_LOOKUP)?,
        ),
        (
            "parse + lookups + portfw's verdict counter".to_owned(),
            floor_host.xdp(PARSE_LOOKUP_COUNT)?,
        ),
    ];

    let mut configs: Vec<Config> = Vec::new();
    configs.push(Config {
        row: parse_row.clone(),
        program: parse_only,
        expect: vec![None; packets.len()],
    });
    // The steps run on the tables of `ports(100)`, like portfw's 100-entry row.
    for (row, program) in &steps {
        configs.push(Config {
            row: row.clone(),
            program,
            expect: (0..packets.len())
                .map(|i| Some(expected(Kind::Ports, i)))
                .collect(),
        });
    }
    for (spec, l) in specs.iter().zip(&loaded) {
        configs.push(Config {
            row: spec.row.clone(),
            program: l.xdp(PROGRAM_NAME)?,
            expect: (0..packets.len())
                .map(|i| Some(expected(spec.kind, i)))
                .collect(),
        });
    }
    // xdp-filter judges by port (it walks VLAN tags and IPv6 extension headers too) but has
    // no source-address rules: the UDP packets, aimed at a source-rule port, have no
    // counterpart in it.
    let xf_na = |i: usize| -> Option<&'static str> {
        packets[i]
            .udp
            .then_some("xdp-filter has no source-address rules")
    };
    for (row, program) in [(&xf_all_row, &xf_all), (&xf_tcp_row, &xf_tcp)] {
        configs.push(Config {
            row: row.clone(),
            program,
            expect: (0..packets.len())
                .map(|i| xf_na(i).is_none().then(|| expected(Kind::Ports, i)))
                .collect(),
        });
    }

    let cols: Vec<String> = packets.iter().map(|p| p.label.to_owned()).collect();
    let mut rows = vec![floor_row.clone()];
    rows.extend(configs.iter().map(|c| c.row.clone()));
    report.table(
        "kernel",
        "Per-packet cost in the kernel (BPF_PROG_TEST_RUN)",
        "ns/packet",
        &format!(
            "{repeat} runs of one frame (60 bytes; 62 with two VLAN tags, 90 for IPv6) per figure, timed around the \
             syscall, every program attached to an idle veth; {reps} interleaved repetitions. Includes \
             BPF_PROG_TEST_RUN's own loop and the XDP dispatcher's call, which the floor measures."
        ),
        &rows,
        &cols,
    );
    for c in &configs {
        for (i, e) in c.expect.iter().enumerate() {
            if e.is_none() && c.row != parse_row {
                let why = if c.row.starts_with("xdp-filter") {
                    xf_na(i).unwrap_or("not supported")
                } else {
                    "not applicable"
                };
                report.not_applicable("kernel", &c.row, &cols[i], why)?;
            }
        }
    }
    let portfw_rows: Vec<String> = specs.iter().map(|s| s.row.clone()).collect();
    let step_rows: Vec<String> = std::iter::once(parse_row.clone())
        .chain(steps.iter().map(|(row, _)| row.clone()))
        .collect();
    let ratio_rows: Vec<String> = step_rows
        .iter()
        .chain(&portfw_rows)
        .map(|r| format!("{r} ÷ floor"))
        .collect();
    report.table(
        "ratio-floor",
        "portfw ÷ floor",
        "×",
        "Per repetition, the configuration's ns/packet over the floor's from the same sweep; median, min and max of those ratios.",
        &ratio_rows,
        &cols,
    );
    let vs_xf = [
        (
            format!("portfw (100 port entries) ÷ {xf_all_row}"),
            &xf_all_row,
        ),
        (
            format!("portfw (100 port entries) ÷ {xf_tcp_row}"),
            &xf_tcp_row,
        ),
    ];
    report.table(
        "ratio-xdp-filter",
        "portfw ÷ xdp-filter",
        "×",
        "Per repetition, on the packets xdp-filter judges like portfw.",
        &vs_xf.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>(),
        &cols,
    );
    let size_rows = [
        ("100 ÷ 1 port entries", 1usize, 0usize),
        ("10,000 ÷ 1 port entries", 2, 0),
        ("65,536 ÷ 1 port entries", 3, 0),
        ("1,000 CIDRs ÷ none (100 port entries)", 4, 1),
        ("100,000 CIDRs ÷ none (100 port entries)", 5, 1),
        ("100,000-CIDR blocklist ÷ none (100 port entries)", 6, 1),
    ];
    report.table(
        "ratio-size",
        "Cost against policy size",
        "×",
        "Per repetition, portfw's ns/packet under the larger policy over the smaller one's.",
        &size_rows
            .iter()
            .map(|(r, _, _)| (*r).to_owned())
            .collect::<Vec<_>>(),
        &cols,
    );
    for (row, _) in &vs_xf {
        for (i, col) in cols.iter().enumerate() {
            if let Some(why) = xf_na(i) {
                report.not_applicable("ratio-xdp-filter", row, col, why)?;
            }
        }
    }
    let event_rows = [
        "drop, not logged".to_owned(),
        "drop, logged (one key: repeats aggregated)".to_owned(),
        "cost of a logged drop in a flood (logged − not logged)".to_owned(),
    ];
    let event_col = vec!["IPv4 TCP SYN, dropped port (ns/packet)".to_owned()];
    report.table(
        "event-cost",
        "Kernel cost of a logged drop",
        "ns/packet",
        &format!(
            "portfw with 100 port entries, `log: drops` against `log: none`, both in runs of {EVENT_CHUNK} \
             with the ring drained between them. One frame again and again is one aggregation key: \
             the first packet of each second is an event, the others are counted into it \
             (checked). benches/defences.rs measures an event written next to it."
        ),
        &event_rows,
        &event_col,
    );

    // Verdicts first: a figure for the wrong verdict would measure the wrong path.
    for c in &configs {
        for (i, p) in packets.iter().enumerate() {
            let got = time_run(c.program, &p.frame, 1)?.verdict;
            match c.expect[i] {
                Some(want) if got != want => bail!(
                    "{} gives verdict {got} to `{}`, expected {want}: the benchmark setup is wrong",
                    c.row,
                    p.label
                ),
                _ => {}
            }
        }
    }

    let mut max_skew = 0f64;
    let warmup = (repeat / 10).max(1000);
    for rep in 0..=reps {
        // Repetition 0 warms caches and the CPU clock up and is not recorded.
        let n = if rep == 0 { warmup } else { repeat };
        for (i, p) in packets.iter().enumerate() {
            let floor = if p.floor == XDP_PASS {
                floor_pass
            } else {
                floor_drop
            };
            let f = time_run(floor, &p.frame, n)?;
            let mut sweep = vec![(floor_row.clone(), f.ns)];
            if rep > 0 {
                max_skew = max_skew.max(skew(&f));
            }
            for c in &configs {
                if c.expect[i].is_none() && c.row != parse_row {
                    continue;
                }
                let t = time_run(c.program, &p.frame, n)?;
                if rep > 0 {
                    max_skew = max_skew.max(skew(&t));
                }
                sweep.push((c.row.clone(), t.ns));
            }
            if rep == 0 {
                continue;
            }
            let get = |row: &str| sweep.iter().find(|(r, _)| r == row).map(|(_, v)| *v);
            for (row, ns) in &sweep {
                report.push("kernel", row, p.label, *ns)?;
            }
            for row in step_rows.iter().chain(&portfw_rows) {
                if let Some(v) = get(row) {
                    report.push("ratio-floor", &format!("{row} ÷ floor"), p.label, v / f.ns)?;
                }
            }
            for (ratio_row, xf_row) in &vs_xf {
                if let (Some(a), Some(b)) = (get(&portfw_rows[1]), get(xf_row)) {
                    report.push("ratio-xdp-filter", ratio_row, p.label, a / b)?;
                }
            }
            for (row, big, small) in size_rows {
                if let (Some(a), Some(b)) = (get(&portfw_rows[big]), get(&portfw_rows[small])) {
                    report.push("ratio-size", row, p.label, a / b)?;
                }
            }
        }

        // Events: the same dropped packet without and with logging, in the same chunks.
        // Every logged packet is an event, aggregated into one, or suppressed by
        // `log-limit`: nothing else.
        let drop = &packets[1].frame;
        let before = logged.counters()?;
        let (plain, _) = time_chunked(&mut unlogged, drop, n, false)?;
        let (with_log, events) = time_chunked(&mut logged, drop, n, true)?;
        let after = logged.counters()?;
        let moved = |c: u32| after[c as usize] - before[c as usize];
        let (aggregated, suppressed) = (
            moved(counter::EVENTS_AGGREGATED),
            moved(counter::EVENTS_SUPPRESSED),
        );
        if moved(counter::EVENTS_LOST) != 0 || events + aggregated + suppressed != u64::from(n) {
            bail!(
                "logged run: {events} events, {aggregated} aggregated and {suppressed} suppressed of {n} \
                 packets ({} lost)",
                moved(counter::EVENTS_LOST)
            );
        }
        if rep == 0 {
            continue;
        }
        let col = &event_col[0];
        report.push("event-cost", &event_rows[0], col, plain)?;
        report.push("event-cost", &event_rows[1], col, with_log)?;
        report.push("event-cost", &event_rows[2], col, with_log - plain)?;
        println!(
            "bench kernel: repetition {rep}/{reps} done (tcp allowed: floor {:.2} ns, portfw {:.2} ns)",
            report
                .last("kernel", &floor_row, &cols[0])
                .unwrap_or(f64::NAN),
            report
                .last("kernel", &portfw_rows[1], &cols[0])
                .unwrap_or(f64::NAN)
        );
    }
    report.fact(
        "largest difference between the user-space and the kernel's ns/packet",
        format!("{max_skew:.2} ns (the kernel truncates to whole ns)"),
    );
    report.write(&args.out)?;
    println!("bench kernel: wrote {}", args.out.display());
    drop(xdp_filter);
    lab.close()?;
    Ok(())
}

fn skew(t: &Timed) -> f64 {
    (t.ns - t.kernel_ns).abs()
}
