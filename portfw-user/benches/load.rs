//! `cargo bench -p portfw-user --bench load`: throughput under load in the namespace lab.
//! A generator namespace floods the device under test over a veth pair with 64-byte TCP SYNs
//! and UDP datagrams; each filter configuration in turn (no filter, portfw native and
//! generic, xdp-filter, nftables and iptables) judges the flood, interleaved, and the figures
//! are packets handled per second and CPU nanoseconds per packet on the receiving CPU. Two
//! sections follow on the same lab: the active defences under a spoofed SYN flood, and
//! replies to flows the device under test opened itself (portfw's flow table next to
//! conntrack's `ct state established`).
//!
//! How the lab is wired, and why (see BENCHMARKS.md too):
//! - The generator is an XDP program run with BPF_F_TEST_XDP_LIVE_FRAMES (`bench_tx` of
//!   portfw-ebpf/src/bench.rs): every run sends real frames through the generator's veth
//!   transmit path as a driver would, far faster than a packet socket, so the receiver and
//!   not the generator is what saturates. It runs on CPU 0.
//! - veth has no interrupt: by default the receive path runs on the sender's CPU, so the
//!   filter's cost would be mixed with the generator's. With GRO on, veth receives through
//!   NAPI; with threaded NAPI that poll loop is a kernel thread, pinned here to CPU 1. CPU 1
//!   then does all the receiving and nothing else, and its busy time (/proc/stat) over the
//!   packets handled is the cost per packet.
//! - Packets handled = frames the generator's veth queued to the receiver (its
//!   `xdp_xmit` counter); frames refused because the receive ring was full are the
//!   overload the receiver could not take, and are not counted.

mod common;

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp};
use common::{
    filters::{Config, DEFENDED_LIMIT, Dut, SET_SIZE, TCP_ALLOWED, UDP_ALLOWED},
    frames::{self, Endpoints, TCP_ACK},
    host,
    report::{Args, Report, median, require_root},
    tracked::{self, Peers},
    xdpfilter::XdpFilter,
};
use portfw::loader::Loaded;
use portfw_lab::{Lab, Side};

/// The CPU that receives (the device under test's NAPI thread) and the one that generates.
const RX_CPU: usize = 1;
const GEN_CPU: usize = 0;
/// The generator program of portfw-ebpf/src/bench.rs.
const INJECTOR: &str = "bench_tx";
/// Frames per BPF_PROG_TEST_RUN call of the injector, and per batch inside it.
const INJECT_CALL: u32 = 1 << 18;
const INJECT_BATCH: u32 = 64;
/// The veth pair that keeps the injector attached (out of the dispatcher churn).
const TX_HOLDER: &str = "pfwbtx0";
const TX_HOLDER_PEER: &str = "pfwbtx1";
/// The generator of the defences section: `bench_tx` giving each frame one of 10,000
/// spoofed sources in 198.19.0.0/16 (portfw-ebpf/src/bench.rs), and its holder veth.
const SPOOF_INJECTOR: &str = "bench_tx_spoof";
const SPOOF_NET: &str = "198.19.0.0/16";
const SPOOF_SOURCES: usize = 10_000;
const SPOOF_HOLDER: &str = "pfwbts0";
const SPOOF_HOLDER_PEER: &str = "pfwbts1";
/// Segments that reached TCP at all, whatever became of them (the limit lets some SYNs
/// through, whose resets are routed back to the generator's side).
const REACHED_TCP_IN: (&str, &str) = ("Tcp", "InSegs");
/// The replies section's flows, opened by the device under test: its local ports, which no
/// configuration allows, and the peers' (a DNS query, an HTTPS connection).
const REPLY_PORTS: tracked::Ports = tracked::Ports {
    local_udp: 40001,
    remote_udp: 53,
    local_tcp: 40000,
    remote_tcp: 443,
};
/// The untracked packets of the replies section's check: a datagram from another remote
/// port to the device's UDP port, an ACK to a local port with no connection.
const UNTRACKED_REMOTE_UDP: u16 = 54;
const UNTRACKED_LOCAL_TCP: u16 = 40002;
/// Datagrams that reached the device's UDP socket and died at its full receive buffer.
const REACHED_UDP_SOCKET: (&str, &str) = ("Udp", "RcvbufErrors");

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench load: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// No configuration allows it, for TCP or UDP.
const DROPPED_PORT: u16 = 9999;
/// /proc/net/snmp counters of a SYN or a datagram that reached TCP or UDP.
const REACHED_TCP: (&str, &str) = ("Tcp", "OutRsts");
const REACHED_UDP: (&str, &str) = ("Udp", "NoPorts");

/// One flood: its label, frame, whether the configurations drop it, and the receiver's SNMP
/// counter that counts each of its packets reaching the transport layer (no socket listens:
/// a SYN is answered by a reset, a datagram counted as sent to no port).
struct Flow<'a> {
    label: &'a str,
    frame: Vec<u8>,
    dropped: bool,
    reached: (&'static str, &'static str),
}

/// Counters of one veth from `ethtool -S`, in its namespace.
fn ethtool_stats(lab: &Lab, side: Side) -> Result<Vec<(String, u64)>> {
    let out = lab.run(side, ["ethtool", "-S", lab.iface(side)])?;
    Ok(out
        .lines()
        .filter_map(|l| l.trim().split_once(':'))
        .filter_map(|(k, v)| Some((k.trim().to_owned(), v.trim().parse().ok()?)))
        .collect())
}

fn stat(stats: &[(String, u64)], name: &str) -> Result<u64> {
    stats
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| *v)
        .with_context(|| format!("ethtool -S has no {name}"))
}

/// One counter of /proc/net/snmp in the receiver's namespace, e.g. ("Tcp", "OutRsts").
fn snmp(lab: &Lab, (group, name): (&str, &str)) -> Result<u64> {
    let text = lab.run(Side::Server, ["cat", "/proc/net/snmp"])?;
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        bail!("no {group} lines in /proc/net/snmp");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .with_context(|| format!("no {group} {name} in /proc/net/snmp"))
}

/// What one flood of one configuration did.
struct Sample {
    /// Packets the receiver took per second.
    pps: f64,
    /// Busy CPU ns of the receiving CPU per packet (/proc/stat).
    cpu_ns: f64,
    /// The NAPI thread's own run time per packet (schedstat).
    napi_ns: f64,
    /// Busy share of the receiving CPU.
    utilisation: f64,
    /// Frames offered per second by the generator.
    offered: f64,
    /// Packets that reached TCP or UDP in the receiver, per packet handled.
    reached: f64,
}

struct Snapshot {
    at: Instant,
    cpu: host::CpuTimes,
    napi_ns: u64,
    queued: u64,
    sent: u64,
    reached: u64,
}

fn snapshot(lab: &Lab, napi: &[i32], sent: &AtomicU64, reached: (&str, &str)) -> Result<Snapshot> {
    let gen_stats = ethtool_stats(lab, Side::Client)?;
    let mut napi_ns = 0;
    for &pid in napi {
        napi_ns += host::thread_runtime_ns(pid)?;
    }
    Ok(Snapshot {
        at: Instant::now(),
        cpu: host::cpu_times(RX_CPU)?,
        napi_ns,
        queued: stat(&gen_stats, "tx_queue_0_xdp_xmit")?,
        sent: sent.load(Ordering::Relaxed),
        reached: snmp(lab, reached)?,
    })
}

/// The injector: `bench_tx` run with live frames from a thread inside the generator's
/// namespace, pinned to GEN_CPU, until `stop`.
fn inject(
    program: &Xdp,
    netns: &Path,
    iface: &str,
    frame: &[u8],
    stop: &AtomicBool,
    sent: &AtomicU64,
) -> Result<()> {
    host::pin_to_cpu(0, GEN_CPU)?;
    host::enter_netns(netns)?;
    let name = std::ffi::CString::new(iface).context("interface name")?;
    // SAFETY: a valid C string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    ensure!(
        ifindex != 0,
        "no interface {iface} in the generator namespace"
    );
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
    // egress_ifindex. The frames "arrive" on the generator's veth and XDP_TX sends them out
    // of it, to the device under test.
    let md: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
    let ctx: Vec<u8> = md.iter().flat_map(|v| v.to_ne_bytes()).collect();
    while !stop.load(Ordering::Relaxed) {
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: INJECT_CALL,
            attrs: TestRunAttrs::new().xdp_live_frames(INJECT_BATCH),
            ..Default::default()
        };
        match program.test_run(opts) {
            Ok(_) => {
                sent.fetch_add(u64::from(INJECT_CALL), Ordering::Relaxed);
            }
            // A signal cut the run short (the kernel checks between batches); what it sent
            // is unknown, so the offered rate undercounts a little. The handled rate comes
            // from the receiver's side and is exact.
            Err(aya::programs::ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(e).context("BPF_PROG_TEST_RUN with live frames"),
        }
    }
    Ok(())
}

/// Where and under which name to record `perf` during a window.
struct PerfOut<'a> {
    dir: &'a Path,
    name: String,
}

fn measure(
    lab: &Lab,
    injector: &Xdp,
    flow: &Flow<'_>,
    ramp: Duration,
    window: Duration,
    perf: Option<PerfOut<'_>>,
) -> Result<Sample> {
    let stop = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    let netns = lab.netns_path(Side::Client);
    let gen_iface = lab.client_iface().to_owned();
    thread::scope(|scope| -> Result<Sample> {
        let worker =
            scope.spawn(|| inject(injector, &netns, &gen_iface, &flow.frame, &stop, &sent));
        let result = (|| -> Result<Sample> {
            // The NAPI threads come and go with XDP programs; pin whatever runs now.
            let napi = host::pin_napi(lab.server_iface(), RX_CPU)?;
            host::pin_napi(lab.client_iface(), GEN_CPU)?;
            thread::sleep(ramp);
            let a = snapshot(lab, &napi, &sent, flow.reached)?;
            match &perf {
                // Profiling: the receiving CPU, sampled by the clock (VMs often have no PMU).
                Some(p) => {
                    let data = p.dir.join(format!("{}.data", p.name));
                    let status = Command::new("perf")
                        .args([
                            "record",
                            "-q",
                            "-C",
                            &RX_CPU.to_string(),
                            "-e",
                            "cpu-clock",
                            "-F",
                            "10000",
                            "-g",
                            "-o",
                        ])
                        .arg(&data)
                        .args(["--", "sleep", &format!("{:.3}", window.as_secs_f64())])
                        .stdin(Stdio::null())
                        .status()
                        .context("running perf record")?;
                    ensure!(status.success(), "perf record failed ({status})");
                }
                None => thread::sleep(window),
            }
            let b = snapshot(lab, &napi, &sent, flow.reached)?;
            let secs = (b.at - a.at).as_secs_f64();
            let handled = (b.queued - a.queued) as f64;
            ensure!(
                handled > 0.0,
                "the receiver took no packets of `{}`",
                flow.label
            );
            let busy = (b.cpu.busy - a.cpu.busy) as f64 * host::tick_ns();
            let total = (b.cpu.total - a.cpu.total).max(1) as f64;
            Ok(Sample {
                pps: handled / secs,
                cpu_ns: busy / handled,
                napi_ns: (b.napi_ns - a.napi_ns) as f64 / handled,
                utilisation: (b.cpu.busy - a.cpu.busy) as f64 / total,
                offered: (b.sent - a.sent) as f64 / secs,
                reached: (b.reached - a.reached) as f64 / handled,
            })
        })();
        stop.store(true, Ordering::Relaxed);
        let injected = worker
            .join()
            .map_err(|_| anyhow::anyhow!("the injector thread panicked"))?;
        injected.context("injector")?;
        result
    })
}

fn run() -> Result<()> {
    let args = Args::parse("load")?;
    require_root()?;
    frames::self_check().map_err(anyhow::Error::msg)?;
    ensure!(
        host::cpus() >= 2,
        "the load benchmark needs two CPUs: one generates, the other receives"
    );
    let portfw = args.portfw()?;
    let reps = if args.quick { 1 } else { 5 };
    let (ramp, window) = if args.quick {
        (Duration::from_millis(200), Duration::from_millis(300))
    } else {
        (Duration::from_millis(400), Duration::from_millis(1500))
    };
    host::pin_to_cpu(0, GEN_CPU)?;
    if let Some(dir) = &args.perf {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }

    let mut report = Report::new(
        "load",
        args.quick,
        serde_json::json!({
            "repetitions": reps,
            "window_ms": window.as_millis() as u64,
            "ramp_ms": ramp.as_millis() as u64,
            "frame_bytes": frames::MIN_FRAME + 4,
            "set_size": SET_SIZE,
        }),
    );
    report.fact("xdp-filter", XdpFilter::version());
    report.fact("nft", version(&["nft", "--version"]));
    report.fact("iptables", version(&["iptables", "--version"]));

    let lab = Lab::new("bench-l").context("creating the lab")?;
    let dir = std::env::temp_dir().join(format!("portfw-bench-load-{}", std::process::id()));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _dir_guard = RemoveDir(dir.clone());
    tune_lab(&lab)?;

    let mut holder = Loaded::load().context("loading the injector's object")?;
    holder.load_extra(INJECTOR)?;
    lab.run(
        Side::Client,
        [
            "ip",
            "link",
            "add",
            TX_HOLDER,
            "type",
            "veth",
            "peer",
            "name",
            TX_HOLDER_PEER,
        ],
    )?;
    host::attach_in(
        &lab.netns_path(Side::Client),
        holder.xdp_mut(INJECTOR)?,
        TX_HOLDER,
    )
    .context("attaching the injector to its holder veth")?;
    let injector = holder.xdp(INJECTOR)?;

    let e = Endpoints {
        src_mac: mac(lab.mac(Side::Client))?,
        dst_mac: mac(lab.mac(Side::Server))?,
        src4: lab.client_v4(),
        dst4: lab.server_v4(),
        src6: lab.client_v6(),
        dst6: lab.server_v6(),
    };
    let flows = [
        Flow {
            label: "TCP SYN, dropped port",
            frame: frames::tcp4_syn(&e, 40000, DROPPED_PORT),
            dropped: true,
            reached: REACHED_TCP,
        },
        Flow {
            label: "UDP, dropped port",
            frame: frames::udp4(&e, 40000, DROPPED_PORT, 18),
            dropped: true,
            reached: REACHED_UDP,
        },
        Flow {
            label: "TCP SYN, allowed port",
            frame: frames::tcp4_syn(&e, 40000, TCP_ALLOWED),
            dropped: false,
            reached: REACHED_TCP,
        },
        Flow {
            label: "UDP, allowed port",
            frame: frames::udp4(&e, 40000, UDP_ALLOWED, 18),
            dropped: false,
            reached: REACHED_UDP,
        },
    ];
    let configs: Vec<Config> = Config::all()
        .into_iter()
        .filter(|f| {
            args.only
                .as_deref()
                .is_none_or(|only| f.label().contains(only) || *f == Config::PortfwNative)
        })
        .collect();
    let rows: Vec<String> = configs.iter().map(|f| f.label()).collect();
    let cols: Vec<String> = flows.iter().map(|f| f.label.to_owned()).collect();
    let how = format!(
        "64-byte frames from an XDP live-frames generator on CPU {GEN_CPU}; the receiver's threaded NAPI on CPU {RX_CPU}. \
         {reps} interleaved repetitions of {:.1} s each per cell.",
        window.as_secs_f64()
    );
    report.table(
        "load-rate",
        "Packets handled per second (dropped per second for the dropped-port floods)",
        "Mpps",
        &how,
        &rows,
        &cols,
    );
    report.table(
        "load-cpu",
        "Receiving CPU's busy time per packet",
        "ns/packet",
        &format!("{how} Busy time of CPU {RX_CPU} from /proc/stat over the packets handled."),
        &rows,
        &cols,
    );
    let ratio_rows: Vec<String> = rows
        .iter()
        .map(|r| format!("{r} ÷ portfw native"))
        .collect();
    report.table(
        "load-cpu-ratio",
        "CPU time per packet relative to portfw native",
        "×",
        "Per repetition; above 1 means the configuration spends more CPU per packet than portfw native \
         (portfw native drops 1/x as many packets per CPU-second as it).",
        &ratio_rows,
        &cols,
    );
    report.table(
        "load-rate-ratio",
        "Packets handled per second relative to portfw native",
        "×",
        "Per repetition.",
        &ratio_rows,
        &cols,
    );
    report.table(
        "load-napi",
        "The receive thread's own run time per packet",
        "ns/packet",
        "schedstat of the NAPI thread: a cross-check of the /proc/stat figure, free of tick sampling.",
        &rows,
        &cols,
    );
    report.table(
        "load-util",
        "Receiving CPU busy",
        "%",
        "A cell under 100% means the generator, not the receiver, set the rate.",
        &rows,
        &cols,
    );
    report.table(
        "load-offered",
        "Frames offered by the generator per second",
        "Mpps",
        "Frames beyond what the receiver took were refused at its full receive ring.",
        &rows,
        &cols,
    );

    let mut dut = Dut {
        lab: &lab,
        portfw,
        dir: dir.clone(),
        xdp_filter: None,
    };
    for rep in 1..=reps {
        for (k, &config) in configs.iter().enumerate() {
            let row = &rows[k];
            dut.setup(config)
                .with_context(|| format!("setting up {}", config.label()))?;
            let measured = (|| -> Result<Vec<Sample>> {
                let mut samples = Vec::new();
                for flow in &flows {
                    let perf = args.perf.as_deref().map(|dir| PerfOut {
                        dir,
                        name: format!("{rep}-{}-{}", slug(&config.label()), slug(flow.label)),
                    });
                    let s = measure(&lab, injector, flow, ramp, window, perf)
                        .with_context(|| format!("{} under {}", flow.label, config.label()))?;
                    // A dropped flood must not reach the transport layer, an allowed one must
                    // (all of it that the receiver took).
                    if flow.dropped && config != Config::None && s.reached > 0.001 {
                        bail!(
                            "{:.1}% of `{}` reached the stack under {}: the filter does not drop it",
                            s.reached * 100.0,
                            flow.label,
                            config.label()
                        );
                    }
                    if !flow.dropped && s.reached < 0.9 {
                        bail!(
                            "only {:.1}% of `{}` reached the stack under {}: the filter drops it",
                            s.reached * 100.0,
                            flow.label,
                            config.label()
                        );
                    }
                    samples.push(s);
                }
                Ok(samples)
            })();
            dut.teardown(config)
                .with_context(|| format!("removing {}", config.label()))?;
            let samples = measured?;
            for (flow, s) in flows.iter().zip(&samples) {
                report.push("load-rate", row, flow.label, s.pps / 1e6)?;
                report.push("load-cpu", row, flow.label, s.cpu_ns)?;
                report.push("load-napi", row, flow.label, s.napi_ns)?;
                report.push("load-util", row, flow.label, s.utilisation * 100.0)?;
                report.push("load-offered", row, flow.label, s.offered / 1e6)?;
            }
            println!(
                "bench load: {rep}/{reps} {:<40} {}",
                row,
                samples
                    .iter()
                    .map(|s| format!("{:6.3} Mpps {:6.0} ns", s.pps / 1e6, s.cpu_ns))
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
        }
        // Ratios within the repetition, against the portfw native run of the same round.
        let base_row = Config::PortfwNative.label();
        let mut ratios = Vec::new();
        for col in &cols {
            for row in &rows {
                for (table, ratio) in [
                    ("load-cpu", "load-cpu-ratio"),
                    ("load-rate", "load-rate-ratio"),
                ] {
                    let v = report.last(table, row, col);
                    let base = report.last(table, &base_row, col);
                    if let (Some(v), Some(base)) = (v, base) {
                        ratios.push((
                            ratio,
                            format!("{row} ÷ portfw native"),
                            col.clone(),
                            v / base,
                        ));
                    }
                }
            }
        }
        for (table, row, col, v) in ratios {
            report.push(table, &row, &col, v)?;
        }
    }
    let util: Vec<f64> = report
        .tables
        .iter()
        .filter(|t| t.id == "load-util")
        .flat_map(|t| t.cells.iter().flat_map(|c| c.samples.iter().copied()))
        .collect();
    report.fact(
        "median receive-CPU utilisation over all cells",
        format!("{:.1}%", median(&util)),
    );
    let wanted = |section: &str| {
        args.only
            .as_deref()
            .is_none_or(|only| section.contains(only))
    };
    if wanted("defences") {
        holder.load_extra(SPOOF_INJECTOR)?;
        lab.run(
            Side::Client,
            [
                "ip",
                "link",
                "add",
                SPOOF_HOLDER,
                "type",
                "veth",
                "peer",
                "name",
                SPOOF_HOLDER_PEER,
            ],
        )?;
        host::attach_in(
            &lab.netns_path(Side::Client),
            holder.xdp_mut(SPOOF_INJECTOR)?,
            SPOOF_HOLDER,
        )
        .context("attaching the spoofing injector to its holder veth")?;
    }
    let rig = Rig {
        lab: &lab,
        injector: holder.xdp(INJECTOR)?,
        e: &e,
        reps,
        ramp,
        window,
        perf: args.perf.as_deref(),
    };
    if wanted("defences") {
        let spoofing = Rig {
            injector: holder.xdp(SPOOF_INJECTOR)?,
            ..rig
        };
        defences(&spoofing, &mut dut, &mut report)?;
    }
    if wanted("replies") {
        replies(&rig, &mut dut, &mut report)?;
    }
    report.write(&args.out)?;
    println!("bench load: wrote {}", args.out.display());
    drop(dut);
    lab.close()
}

/// What the flood sections run on: the lab and its addresses, the generator's injector, and
/// how often and how long each cell is measured.
#[derive(Clone, Copy)]
struct Rig<'a> {
    lab: &'a Lab,
    injector: &'a Xdp,
    e: &'a Endpoints,
    reps: usize,
    ramp: Duration,
    window: Duration,
    perf: Option<&'a Path>,
}

impl Rig<'_> {
    /// One window of `flow` under `config` in repetition `rep` of `section`, profiled into
    /// `<section>-<rep>-<config>-<flow>.data` under `--perf`.
    fn measure(
        &self,
        section: &str,
        rep: usize,
        config: Config,
        flow: &Flow<'_>,
    ) -> Result<Sample> {
        let perf = self.perf.map(|dir| PerfOut {
            dir,
            name: format!(
                "{section}-{rep}-{}-{}",
                slug(&config.label()),
                slug(flow.label)
            ),
        });
        measure(self.lab, self.injector, flow, self.ramp, self.window, perf)
            .with_context(|| format!("{} under {}", flow.label, config.label()))
    }
}

/// A flood section's interleaved rounds, over the tables [`flood_tables`] declared for
/// `name`: rows are `configs`' labels, columns the flows.
struct Section<'a> {
    name: &'a str,
    configs: &'a [Config],
    rows: &'a [String],
    cols: &'a [String],
    /// `(ratio row, numerator row, denominator row)` of the `{name}-load-cpu-ratio` and
    /// `{name}-load-napi-ratio` tables, computed within each round.
    ratios: &'a [(&'a str, &'a str, &'a str)],
}

impl Section<'_> {
    /// Each repetition puts each configuration in place in turn, takes its samples (one per
    /// column) from `round`, removes it whatever happened, and records the samples; then the
    /// round's ratios.
    fn rounds(
        &self,
        rig: &Rig<'_>,
        dut: &mut Dut<'_>,
        report: &mut Report,
        mut round: impl FnMut(&Dut<'_>, Config, usize) -> Result<Vec<Sample>>,
    ) -> Result<()> {
        let name = self.name;
        for rep in 1..=rig.reps {
            for (row, &config) in self.rows.iter().zip(self.configs) {
                dut.setup(config)
                    .with_context(|| format!("setting up {}", config.label()))?;
                let measured = round(dut, config, rep);
                dut.teardown(config)
                    .with_context(|| format!("removing {}", config.label()))?;
                report_samples(report, name, row, self.cols, &measured?, rep, rig.reps)?;
            }
            for col in self.cols {
                for &(ratio_row, a, b) in self.ratios {
                    for metric in ["cpu", "napi"] {
                        let table = format!("{name}-load-{metric}");
                        let (Some(x), Some(y)) =
                            (report.last(&table, a, col), report.last(&table, b, col))
                        else {
                            continue;
                        };
                        report.push(&format!("{table}-ratio"), ratio_row, col, x / y)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The defences under a flood: 64-byte SYNs from 10,000 spoofed sources, at the port with
/// the limit and at a dropped port, against portfw and nftables each without and with their
/// defences (scan guard, per-source limit, logged drops), interleaved.
fn defences(rig: &Rig<'_>, dut: &mut Dut<'_>, report: &mut Report) -> Result<()> {
    let (lab, e, reps) = (rig.lab, rig.e, rig.reps);
    // The resets to the spoofed sources go back to the generator's side, where they are
    // dropped, as replies to a real spoofed flood would go nowhere.
    lab.run(
        Side::Server,
        [
            "ip",
            "route",
            "add",
            SPOOF_NET,
            "via",
            &lab.client_v4().to_string(),
        ],
    )?;
    let flows = [
        Flow {
            label: "SYNs from 10,000 sources, limited port",
            frame: frames::tcp4_syn(e, 40000, TCP_ALLOWED),
            dropped: false,
            reached: REACHED_TCP_IN,
        },
        Flow {
            label: "SYNs from 10,000 sources, dropped port",
            frame: frames::tcp4_syn(e, 40000, DROPPED_PORT),
            dropped: true,
            reached: REACHED_TCP_IN,
        },
    ];
    // The per-source state (limit buckets, scan windows, aggregation keys) of 10,000
    // sources builds up first: the figures are of the flood's steady state, every source
    // past its burst.
    let rig = &Rig {
        ramp: rig.ramp.max(Duration::from_millis(1000)),
        ..*rig
    };
    let configs = Config::defences();
    let rows: Vec<String> = configs.iter().map(|c| c.label()).collect();
    let cols: Vec<String> = flows.iter().map(|f| f.label.to_owned()).collect();
    let how = format!(
        "64-byte TCP SYNs from {SPOOF_SOURCES} sources in {SPOOF_NET}, one drawn at random per frame by the \
         generator (`bench_tx_spoof`) on CPU {GEN_CPU}; the receiver's threaded NAPI on CPU {RX_CPU}. The \
         defended policies: `scan:` (8 ports in 5 s block for 10 min), `limit: {DEFENDED_LIMIT}` on \
         {TCP_ALLOWED}/tcp, `log: drops` at the default `log-limit` (portfw), and nftables' \
         equivalent at netdev ingress (a block set, `limit rate over 30/minute burst 5 packets` per \
         source in a meter, distinct dropped ports against a meter, NFLOG under `limit rate 1000/second`); \
         no event reader runs (portfw's ring fills and the rest is counted; NFLOG has no \
         listener). {reps} interleaved repetitions of {:.1} s each per cell.",
        rig.window.as_secs_f64()
    );
    flood_tables(
        report,
        "defences",
        "The defences under a spoofed SYN flood",
        &how,
        (
            "TCP",
            "TCP's InSegs in the receiver over the packets handled: what the limit let through.",
        ),
        &rows,
        &cols,
    );
    let ratio_rows = [
        "portfw: with the defences ÷ without".to_owned(),
        "nftables: with the defences ÷ without".to_owned(),
        "nftables with the defences ÷ portfw with the defences".to_owned(),
    ];
    let pairs = [(1usize, 0usize), (3, 2), (3, 1)];
    report.table(
        "defences-load-cpu-ratio",
        "The defences under a spoofed SYN flood: CPU time per packet, ratios",
        "×",
        "Per repetition, from the same round, of the receiving CPU's busy time per packet.",
        &ratio_rows,
        &cols,
    );
    report.table(
        "defences-load-napi-ratio",
        "The defences under a spoofed SYN flood: the receive thread's run time per packet, ratios",
        "×",
        "Per repetition, from the same round, of the NAPI thread's own run time per packet.",
        &ratio_rows,
        &cols,
    );
    let ratios: Vec<(&str, &str, &str)> = ratio_rows
        .iter()
        .zip(pairs)
        .map(|(row, (a, b))| (row.as_str(), rows[a].as_str(), rows[b].as_str()))
        .collect();
    let section = Section {
        name: "defences",
        configs: &configs,
        rows: &rows,
        cols: &cols,
        ratios: &ratios,
    };
    section.rounds(rig, dut, report, |_, config, rep| {
        let mut samples = Vec::new();
        for flow in &flows {
            let s = rig.measure("defences", rep, config, flow)?;
            let defended = matches!(config, Config::PortfwDefended | Config::NftNetdevDefended);
            if flow.dropped && s.reached > 0.001 {
                bail!(
                    "{:.1}% of `{}` reached TCP under {}: the filter does not drop it",
                    s.reached * 100.0,
                    flow.label,
                    config.label()
                );
            }
            if !flow.dropped && defended && s.reached > 0.5 {
                bail!(
                    "{:.1}% of `{}` reached TCP under {}: the limit does not hold",
                    s.reached * 100.0,
                    flow.label,
                    config.label()
                );
            }
            if !flow.dropped && !defended && s.reached < 0.9 {
                bail!(
                    "only {:.1}% of `{}` reached TCP under {}: the filter drops it",
                    s.reached * 100.0,
                    flow.label,
                    config.label()
                );
            }
            samples.push(s);
        }
        Ok(samples)
    })
}

/// Replies to flows the device under test opened, under a flood: UDP datagrams and TCP ACKs
/// from the peers of a real UDP flow and a real TCP connection, to local ports the rules
/// drop, passed by portfw's flow table (`replies: allow`, the default) or by conntrack
/// (`ct state established,related accept`), interleaved. The flows are opened anew after
/// each configuration is in place, so each filter learns them from the packets themselves.
fn replies(rig: &Rig<'_>, dut: &mut Dut<'_>, report: &mut Report) -> Result<()> {
    let (lab, e, reps) = (rig.lab, rig.e, rig.reps);
    let (server_ns, client_ns) = (lab.netns_path(Side::Server), lab.netns_path(Side::Client));
    let (local, remote) = (lab.server_v4(), lab.client_v4());
    let peers = tracked::in_netns(&client_ns, || {
        Peers::bind(remote, REPLY_PORTS.remote_udp, REPLY_PORTS.remote_tcp)
    })
    .context("the peers in the generator's namespace")?;
    let udp_col = format!(
        "UDP replies, {}/udp → {}/udp",
        REPLY_PORTS.remote_udp, REPLY_PORTS.local_udp
    );
    let tcp_col = format!(
        "TCP ACKs of a connection, {}/tcp → {}/tcp",
        REPLY_PORTS.remote_tcp, REPLY_PORTS.local_tcp
    );
    let cols = vec![udp_col.clone(), tcp_col.clone()];
    let configs = Config::replies();
    let rows: Vec<String> = configs.iter().map(|c| c.label()).collect();
    let how = format!(
        "64-byte replies to flows the receiver opened for real after each configuration was put in \
         place (a connected UDP socket sent one datagram to the generator's {remote_udp}/udp; a \
         TCP connection to a listener on {remote_tcp}/tcp), at local ports the rules drop: \
         portfw with the main table's policy (1,000 allowed ports, default drop) and \
         `replies: allow` (the default); nftables at inet input with `ct state \
         established,related accept` before the same sets; iptables with `-m conntrack \
         --ctstate ESTABLISHED,RELATED -j ACCEPT` before 10 linear rules. Conntrack runs only \
         where a rule uses it, so its own cost (prerouting, input, confirm) is in the \
         nftables and iptables rows and in no other. The TCP frame is a duplicate ACK, in \
         window (its seq and ack are the connection's, read in TCP repair mode), so TCP and \
         conntrack take it as the connection's own. The UDP socket is never read and has the \
         smallest receive buffer: every datagram that passes dies there (`RcvbufErrors`), the \
         same work under every configuration. From an XDP live-frames generator on CPU \
         {GEN_CPU}; the receiver's threaded NAPI on CPU {RX_CPU}. {reps} interleaved \
         repetitions of {:.1} s each per cell.",
        rig.window.as_secs_f64(),
        remote_udp = REPLY_PORTS.remote_udp,
        remote_tcp = REPLY_PORTS.remote_tcp,
    );
    flood_tables(
        report,
        "replies",
        "Replies to tracked flows under a flood",
        &how,
        (
            "their socket",
            "UDP's RcvbufErrors, TCP's InSegs in the receiver over the packets handled. Each \
             configuration was also checked, once, to drop a flood of untracked packets at the same \
             ports (a datagram from another remote port, an ACK to a port with no connection).",
        ),
        &rows,
        &cols,
    );
    let base = Config::PortfwNative.label();
    let ratio_rows: Vec<String> = rows
        .iter()
        .filter(|r| **r != base)
        .map(|r| format!("{r} ÷ portfw native"))
        .collect();
    for (id, what) in [
        ("replies-load-cpu-ratio", "receiving CPU's busy time"),
        ("replies-load-napi-ratio", "NAPI thread's own run time"),
    ] {
        report.table(
            id,
            &format!("Replies to tracked flows under a flood: {what} per packet relative to portfw native"),
            "×",
            &format!("Per repetition, from the same round, of the {what} per packet."),
            &ratio_rows,
            &cols,
        );
    }
    let ratios: Vec<(&str, &str, &str)> = rows
        .iter()
        .filter(|r| **r != base)
        .zip(&ratio_rows)
        .map(|(row, ratio_row)| (ratio_row.as_str(), row.as_str(), base.as_str()))
        .collect();
    let section = Section {
        name: "replies",
        configs: &configs,
        rows: &rows,
        cols: &cols,
        ratios: &ratios,
    };
    section.rounds(rig, dut, report, |dut, config, rep| {
        let opened = tracked::open(&server_ns, local, remote, REPLY_PORTS, &peers)
            .context("opening the receiver's flows")?;
        let flows = [
            Flow {
                label: &udp_col,
                frame: frames::udp4(e, REPLY_PORTS.remote_udp, REPLY_PORTS.local_udp, 18),
                dropped: false,
                reached: REACHED_UDP_SOCKET,
            },
            Flow {
                label: &tcp_col,
                frame: frames::tcp4_seq(
                    e,
                    REPLY_PORTS.remote_tcp,
                    REPLY_PORTS.local_tcp,
                    TCP_ACK,
                    opened.peer_seq,
                    opened.peer_ack,
                ),
                dropped: false,
                reached: REACHED_TCP_IN,
            },
        ];
        let mut samples = Vec::new();
        for flow in &flows {
            let s = rig.measure("replies", rep, config, flow)?;
            ensure!(
                s.reached >= 0.9,
                "only {:.1}% of `{}` reached its socket under {}: the filter drops replies",
                s.reached * 100.0,
                flow.label,
                config.label()
            );
            samples.push(s);
        }
        ensure!(
            opened.connected(),
            "the connection was reset during the ACK flood under {}",
            config.label()
        );
        if rep == 1 {
            tracked_by(dut, config, local, remote)?;
            untracked_dropped(lab, rig.injector, e, config)?;
        }
        Ok(samples)
    })
}

/// Checks that the filter's own tracker holds both flows, as the replies matched them:
/// portfw's flow table (`portfw flows --json`), or conntrack's table, replied and
/// established.
fn tracked_by(dut: &Dut<'_>, config: Config, local: Ipv4Addr, remote: Ipv4Addr) -> Result<()> {
    let p = REPLY_PORTS;
    match config {
        Config::None => {}
        Config::PortfwNative => {
            let portfw = dut.portfw.display().to_string();
            let out = dut
                .lab
                .run(Side::Server, [portfw.as_str(), "flows", "--json"])
                .context("portfw flows")?;
            let flows: Vec<serde_json::Value> =
                serde_json::from_str(&out).context("parsing portfw flows --json")?;
            for (protocol, lport, rport, state) in [
                ("udp", p.local_udp, p.remote_udp, None),
                ("tcp", p.local_tcp, p.remote_tcp, Some("established")),
            ] {
                let (l, r) = (format!("{local}:{lport}"), format!("{remote}:{rport}"));
                ensure!(
                    flows.iter().any(|f| f["protocol"] == protocol
                        && f["local"] == l.as_str()
                        && f["remote"] == r.as_str()
                        && state.is_none_or(|s| f["state"] == s)),
                    "portfw's flow table has no {protocol} flow {l} -> {r}{}: {out}",
                    state.map(|s| format!(" ({s})")).unwrap_or_default()
                );
            }
        }
        _ => {
            let table = dut
                .lab
                .run(Side::Server, ["cat", "/proc/net/nf_conntrack"])
                .context("reading conntrack's table")?;
            for (protocol, lport, rport) in [
                ("udp", p.local_udp, p.remote_udp),
                ("tcp", p.local_tcp, p.remote_tcp),
            ] {
                let tuple = format!(
                    "src={local} dst={remote} sport={lport} dport={rport} src={remote} dst={local} sport={rport} dport={lport}"
                );
                ensure!(
                    table.lines().any(|l| l.contains(&format!(" {protocol} "))
                        && l.contains(&tuple)
                        && !l.contains("UNREPLIED")
                        && (protocol != "tcp" || l.contains(" ESTABLISHED "))),
                    "conntrack has no replied {protocol} entry {tuple} under {}: {table}",
                    config.label()
                );
            }
        }
    }
    Ok(())
}

/// The check that makes the replies section's figures mean something: packets at the same
/// local ports that belong to no flow are dropped by every filter (and reach the stack with
/// none), so what passed in the flood passed as a reply. A short flood of each, not timed.
fn untracked_dropped(lab: &Lab, injector: &Xdp, e: &Endpoints, config: Config) -> Result<()> {
    let checks = [
        Flow {
            label: "UDP from another remote port, untracked",
            frame: frames::udp4(e, UNTRACKED_REMOTE_UDP, REPLY_PORTS.local_udp, 18),
            dropped: true,
            // No socket is connected to that remote port.
            reached: REACHED_UDP,
        },
        Flow {
            label: "TCP ACK to a port with no connection",
            frame: frames::tcp4_seq(
                e,
                REPLY_PORTS.remote_tcp,
                UNTRACKED_LOCAL_TCP,
                TCP_ACK,
                1,
                1,
            ),
            dropped: true,
            reached: REACHED_TCP_IN,
        },
    ];
    for flow in &checks {
        let s = measure(
            lab,
            injector,
            flow,
            Duration::from_millis(50),
            Duration::from_millis(150),
            None,
        )
        .with_context(|| format!("{} under {}", flow.label, config.label()))?;
        if config == Config::None {
            ensure!(
                s.reached >= 0.9,
                "only {:.1}% of `{}` reached the stack with no filter: the check sees nothing",
                s.reached * 100.0,
                flow.label
            );
        } else {
            ensure!(
                s.reached <= 0.001,
                "{:.1}% of `{}` reached the stack under {}: the filter passes untracked packets",
                s.reached * 100.0,
                flow.label,
                config.label()
            );
        }
    }
    Ok(())
}

/// Receive side: GRO on (veth then receives through NAPI) and threaded NAPI, on both ends:
/// the receiver's thread goes to RX_CPU, the generator's (which takes the replies) to
/// GEN_CPU.
/// Declares the `{section}-load-*` tables [`report_samples`] fills: packets handled, CPU and
/// NAPI time per packet, and the share that reached `reached.0` (explained by `reached.1`).
fn flood_tables(
    report: &mut Report,
    section: &str,
    subject: &str,
    how: &str,
    reached: (&str, &str),
    rows: &[String],
    cols: &[String],
) {
    report.table(
        &format!("{section}-load-rate"),
        &format!("{subject}: packets handled per second"),
        "Mpps",
        how,
        rows,
        cols,
    );
    report.table(
        &format!("{section}-load-cpu"),
        &format!("{subject}: receiving CPU's busy time per packet"),
        "ns/packet",
        &format!("{how} Busy time of CPU {RX_CPU} from /proc/stat over the packets handled."),
        rows,
        cols,
    );
    report.table(
        &format!("{section}-load-napi"),
        &format!("{subject}: the receive thread's own run time per packet"),
        "ns/packet",
        "schedstat of the NAPI thread: a cross-check of the /proc/stat figure, free of tick sampling \
         and of other work on the CPU.",
        rows,
        cols,
    );
    report.table(
        &format!("{section}-load-reached"),
        &format!(
            "{subject}: share of the packets handled that reached {}",
            reached.0
        ),
        "%",
        reached.1,
        rows,
        cols,
    );
}

/// Pushes one configuration's samples (one per column) into the `{section}-load-*` tables
/// and prints them.
fn report_samples(
    report: &mut Report,
    section: &str,
    row: &str,
    cols: &[String],
    samples: &[Sample],
    rep: usize,
    reps: usize,
) -> Result<()> {
    for (col, s) in cols.iter().zip(samples) {
        report.push(&format!("{section}-load-rate"), row, col, s.pps / 1e6)?;
        report.push(&format!("{section}-load-cpu"), row, col, s.cpu_ns)?;
        report.push(&format!("{section}-load-napi"), row, col, s.napi_ns)?;
        report.push(
            &format!("{section}-load-reached"),
            row,
            col,
            s.reached * 100.0,
        )?;
    }
    println!(
        "bench load: {section} {rep}/{reps} {row:<66} {}",
        samples
            .iter()
            .map(|s| format!(
                "{:6.3} Mpps {:6.0} ns (napi {:5.0} ns, {:3.0}% busy, {:5.2} Mpps offered) {:5.1}% reached",
                s.pps / 1e6,
                s.cpu_ns,
                s.napi_ns,
                s.utilisation * 100.0,
                s.offered / 1e6,
                s.reached * 100.0
            ))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    Ok(())
}

fn tune_lab(lab: &Lab) -> Result<()> {
    for side in [Side::Server, Side::Client] {
        let iface = lab.iface(side);
        lab.run(side, ["ethtool", "-K", iface, "gro", "on"])
            .context("ethtool -K gro on")?;
        // sysfs shows the namespace's own devices only when mounted inside it, which is what
        // `ip netns exec` does; it is used here for that one write (no bpffs pins involved).
        let out = Command::new("ip")
            .args(["netns", "exec", lab.ns(side), "sh", "-c"])
            .arg(format!("echo 1 > /sys/class/net/{iface}/threaded"))
            .stdin(Stdio::null())
            .output()
            .context("running ip netns exec")?;
        ensure!(
            out.status.success(),
            "enabling threaded NAPI on {iface}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    host::pin_napi(lab.server_iface(), RX_CPU)?;
    host::pin_napi(lab.client_iface(), GEN_CPU)?;
    Ok(())
}

fn slug(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

fn mac(text: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC address {text}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("MAC address {text} is not 6 bytes"))
}

fn version(cmd: &[&str]) -> String {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// Removes the rule-file directory on every way out.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
