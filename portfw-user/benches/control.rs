//! `cargo bench -p portfw-user --bench control`: the control plane and the event stream.
//! How long `portfw apply` (the release binary) takes to compile and put policies of 10,
//! 1,000 and 65,536 port entries and of 100,000 CIDRs in force, on a fresh load and in place,
//! with its peak memory; and how many events per second `portfw events --json > /dev/null`
//! keeps up with before the ring buffer overflows (`events_lost` of `portfw status --json`).

mod common;

use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::{ExitCode, Stdio},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use aya_obj::programs::XdpAttachType;
use common::{
    frames::{self, Endpoints},
    host,
    policies::{self, TCP_DROPPED},
    report::{Args, Report, median, require_root, thousands},
};
use portfw_lab::{Lab, Side};

/// The CPU that runs the event reader, and the one whose program runs write the events.
const READER_CPU: usize = 0;
const WRITER_CPU: usize = 1;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench control: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// One `portfw apply`: wall time, its own compile and in-force times, peak memory.
struct Applied {
    wall_ms: f64,
    compiled_ms: f64,
    in_force_ms: f64,
    max_rss_mib: f64,
}

/// Runs `portfw ARGS` in the lab's server namespace and waits for it with wait4, which
/// also gives its resource usage (nsenter execs portfw, so the pid is portfw's).
fn portfw_timed(lab: &Lab, portfw: &Path, args: &[&str]) -> Result<(Applied, String)> {
    let mut cmd =
        lab.server(std::iter::once(portfw.as_os_str()).chain(args.iter().map(|a| a.as_ref())));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().context("starting portfw")?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data the kernel fills.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child with valid out-pointers.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    ensure!(rc == pid, "wait4: {}", std::io::Error::last_os_error());
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut stdout)
            .context("reading portfw's output")?;
    }
    if let Some(mut err) = child.stderr.take() {
        err.read_to_string(&mut stderr)
            .context("reading portfw's errors")?;
    }
    ensure!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "portfw {} failed: {stdout}{stderr}",
        args.join(" ")
    );
    let number_after = |marker: &str| -> f64 {
        stdout
            .split(marker)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    Ok((
        Applied {
            wall_ms: wall.as_secs_f64() * 1e3,
            compiled_ms: number_after("compiled in "),
            in_force_ms: number_after("in force after "),
            // ru_maxrss is in KiB on Linux.
            max_rss_mib: usage.ru_maxrss as f64 / 1024.0,
        },
        stdout,
    ))
}

fn portfw(lab: &Lab, portfw: &Path, args: &[&str]) -> Result<String> {
    let mut full = vec![portfw.display().to_string()];
    full.extend(args.iter().map(|a| (*a).to_owned()));
    lab.run(Side::Server, &full)
}

/// The sizes of the control-plane table: (column label, policy, its in-place variant).
fn control_policies() -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = [10usize, 1000, 65_536]
        .into_iter()
        .map(|n| {
            let a = policies::ports(n, false);
            // The same rules with logging: every drop entry changes, so the whole table and
            // the state are rewritten, as for any other new policy of this size.
            let b = policies::ports(n, true);
            (format!("{} port entries", thousands(n)), a, b)
        })
        .collect();
    let a = policies::sources(100_000);
    let b = a.replace("log: none", "log: drops");
    out.push(("100,000 CIDRs".to_owned(), a, b));
    out
}

fn run() -> Result<()> {
    let args = Args::parse("control")?;
    require_root()?;
    frames::self_check().map_err(anyhow::Error::msg)?;
    ensure!(host::cpus() >= 2, "the events benchmark needs two CPUs");
    let portfw_bin = args.portfw()?;
    let reps = if args.quick { 1 } else { 5 };
    host::pin_to_cpu(0, READER_CPU)?;
    let mut report = Report::new(
        "control",
        args.quick,
        serde_json::json!({ "repetitions": reps }),
    );
    let lab = Lab::new("bench-c").context("creating the lab")?;
    let dir = std::env::temp_dir().join(format!("portfw-bench-control-{}", std::process::id()));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _dir_guard = RemoveDir(dir.clone());
    let iface = lab.server_iface().to_owned();

    // Control plane.
    let sizes = control_policies();
    let mut files = Vec::new();
    for (k, (_, a, b)) in sizes.iter().enumerate() {
        let fa = dir.join(format!("policy-{k}-a.yaml"));
        let fb = dir.join(format!("policy-{k}-b.yaml"));
        fs::write(&fa, a).context("writing a policy")?;
        fs::write(&fb, b).context("writing a policy")?;
        files.push((fa.display().to_string(), fb.display().to_string()));
    }
    let cols: Vec<String> = sizes.iter().map(|(c, _, _)| c.clone()).collect();
    let rows = [
        "fresh load: wall time of `portfw apply`",
        "fresh load: parse and compile (portfw's own figure)",
        "fresh load: in force after (portfw's own figure)",
        "in-place re-apply: wall time of `portfw apply`",
        "in-place re-apply: parse and compile",
        "in-place re-apply: in force after",
        "atomic switch: staging the tables and flipping the generation (in force − compile)",
    ]
    .map(str::to_owned);
    report.table(
        "control-time",
        "Control plane: compile and apply",
        "ms",
        &format!(
            "`target/release/portfw apply` in the lab's namespace, {reps} interleaved repetitions. A fresh load has no filter \
             in the namespace; an in-place re-apply replaces a running policy of the same size with another (the same rules \
             with `log: drops`), which writes a whole generation of tables and switches to it atomically."
        ),
        &rows,
        &cols,
    );
    let mem_rows = ["fresh load".to_owned(), "in-place re-apply".to_owned()];
    report.table(
        "control-memory",
        "Peak memory of `portfw apply`",
        "MiB",
        "Maximum resident set size (wait4's ru_maxrss).",
        &mem_rows,
        &cols,
    );
    let portfw_s = portfw_bin.display().to_string();
    for rep in 1..=reps {
        for (k, (fa, fb)) in files.iter().enumerate() {
            let col = &cols[k];
            // Fresh: nothing loaded.
            let _ = portfw(&lab, &portfw_bin, &["detach"]);
            let (fresh, out) = portfw_timed(&lab, &portfw_bin, &["apply", fa, "--iface", &iface])?;
            ensure!(
                out.contains("loaded program"),
                "expected a fresh load: {out}"
            );
            if rep == 1 && k == 0 {
                production_programs(&mut report)?;
            }
            let (update, out) = portfw_timed(&lab, &portfw_bin, &["apply", fb, "--iface", &iface])?;
            ensure!(
                out.contains("updated program"),
                "expected an in-place update: {out}"
            );
            let values = [
                fresh.wall_ms,
                fresh.compiled_ms,
                fresh.in_force_ms,
                update.wall_ms,
                update.compiled_ms,
                update.in_force_ms,
                update.in_force_ms - update.compiled_ms,
            ];
            for (row, v) in rows.iter().zip(values) {
                report.push("control-time", row, col, v)?;
            }
            report.push("control-memory", &mem_rows[0], col, fresh.max_rss_mib)?;
            report.push("control-memory", &mem_rows[1], col, update.max_rss_mib)?;
            println!(
                "bench control: {rep}/{reps} {col:<20} fresh {:7.1} ms ({:.0} MiB), re-apply {:7.1} ms, switch {:6.1} ms",
                fresh.wall_ms,
                fresh.max_rss_mib,
                update.wall_ms,
                update.in_force_ms - update.compiled_ms
            );
        }
    }
    portfw(&lab, &portfw_bin, &["detach"]).context("portfw detach")?;

    events(&mut report, &lab, &portfw_s, &dir, args.quick, reps)?;

    report.write(&args.out)?;
    println!("bench control: wrote {}", args.out.display());
    lab.close()
}

/// Checks that `portfw apply` loaded `portfw` and none of the benchmark programs built into
/// the same object, and notes the program's size.
fn production_programs(report: &mut Report) -> Result<()> {
    let mut names = Vec::new();
    let mut size = String::new();
    for info in aya::programs::loaded_programs().flatten() {
        let name = info.name_as_str().unwrap_or("").to_owned();
        if name == portfw_common::PROGRAM_NAME {
            size = format!(
                "{} bytes of BPF after verification, {} bytes JIT-compiled; the verifier processed {} instructions",
                info.size_translated().unwrap_or(0),
                info.size_jitted(),
                info.verified_instruction_count().unwrap_or(0)
            );
        }
        if name.starts_with("bench_") {
            names.push(name);
        }
    }
    report.fact(
        "benchmark programs (bench_*) loaded on the machine after `portfw apply`",
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        },
    );
    report.fact("the portfw program", size);
    Ok(())
}

/// The `events_lost` counter of the running filter, from `portfw status --json`.
fn events_lost(lab: &Lab, portfw: &str) -> Result<u64> {
    let out = lab.run(Side::Server, [portfw, "status", "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("portfw status --json")?;
    v["counters"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|pair| pair[0] == "events_lost")
        .and_then(|pair| pair[1].as_u64())
        .context("no events_lost counter in `portfw status --json`")
}

/// Runs the pinned program on `frame` at `rate` runs per second from WRITER_CPU until `stop`;
/// every run logs one event. `rate` 0 means as fast as possible.
fn write_events(
    program: &Xdp,
    frame: &[u8],
    rate: f64,
    stop: &AtomicBool,
    runs: &AtomicU64,
) -> Result<()> {
    host::pin_to_cpu(0, WRITER_CPU)?;
    let tick = Duration::from_millis(1);
    let per_tick = if rate > 0.0 {
        ((rate / 1000.0).round() as u32).max(1)
    } else {
        4096
    };
    let start = Instant::now();
    let mut ticks = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat: per_tick,
            ..Default::default()
        };
        program.test_run(opts).context("BPF_PROG_TEST_RUN")?;
        runs.fetch_add(u64::from(per_tick), Ordering::Relaxed);
        ticks += 1;
        if rate > 0.0 {
            let due = start + tick * ticks;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
        }
    }
    Ok(())
}

/// Events written and lost at `rate` over `window`.
fn events_at(
    lab: &Lab,
    portfw: &str,
    program: &Xdp,
    frame: &[u8],
    rate: f64,
    window: Duration,
) -> Result<(f64, u64, f64)> {
    let stop = AtomicBool::new(false);
    let runs = AtomicU64::new(0);
    let before = events_lost(lab, portfw)?;
    let started = Instant::now();
    let written = thread::scope(|scope| -> Result<u64> {
        let worker = scope.spawn(|| write_events(program, frame, rate, &stop, &runs));
        thread::sleep(window);
        stop.store(true, Ordering::Relaxed);
        worker
            .join()
            .map_err(|_| anyhow::anyhow!("the event writer panicked"))??;
        Ok(runs.load(Ordering::Relaxed))
    })?;
    let secs = started.elapsed().as_secs_f64();
    // Let the reader finish what is buffered before reading the counter.
    thread::sleep(Duration::from_millis(100));
    let lost = events_lost(lab, portfw)? - before;
    Ok((
        written as f64 / secs,
        lost,
        (written - lost.min(written)) as f64 / secs,
    ))
}

fn events(
    report: &mut Report,
    lab: &Lab,
    portfw: &str,
    dir: &Path,
    quick: bool,
    reps: usize,
) -> Result<()> {
    let iface = lab.server_iface().to_owned();
    let policy = dir.join("events.yaml");
    fs::write(&policy, policies::ports(100, true)).context("writing the events policy")?;
    let policy = policy.display().to_string();
    lab.run(Side::Server, [portfw, "apply", &policy, "--iface", &iface])
        .context("applying the events policy")?;
    let pin: PathBuf = lab.pin_dir().join("prog");
    let program = Xdp::from_pin(&pin, XdpAttachType::Interface)
        .with_context(|| format!("opening {}", pin.display()))?;
    let frame = frames::tcp4_syn(&Endpoints::test(), 40000, TCP_DROPPED);

    let rows = [
        "highest rate with no event lost".to_owned(),
        "events delivered per second when flooded".to_owned(),
    ];
    let cols = ["`portfw events --json > /dev/null`".to_owned()];
    let window = Duration::from_millis(if quick { 400 } else { 1500 });
    report.table(
        "events",
        "Events per second the reader keeps up with",
        "events/s",
        &format!(
            "Logged drops written by BPF_PROG_TEST_RUN of the attached program on CPU {WRITER_CPU} at a paced rate, for {:.1} s \
             each; the reader on CPU {READER_CPU}. The rate doubles from 25,000/s until `events_lost` grows, then bisects \
             {} times between the last good and the first lossy rate. Flooded: written as fast as possible.",
            window.as_secs_f64(),
            if quick { 0 } else { 4 }
        ),
        &rows,
        &cols,
    );
    for rep in 1..=reps {
        let out = fs::File::create("/dev/null").context("opening /dev/null")?;
        let mut reader = lab.server([portfw, "events", "--json"]);
        reader
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::inherit());
        let mut child = reader.spawn().context("starting portfw events")?;
        let result = (|| -> Result<(f64, f64)> {
            // The reader is ready once it has opened the ring; give it a moment.
            thread::sleep(Duration::from_millis(500));
            if let Some(status) = child.try_wait()? {
                bail!("portfw events exited early ({status})");
            }
            let mut good = 0.0;
            let mut bad = f64::INFINITY;
            let mut rate = 25_000.0;
            while rate < 50e6 {
                let (achieved, lost, _) = events_at(lab, portfw, &program, &frame, rate, window)?;
                if lost > 0 {
                    bad = rate;
                    break;
                }
                // The writer could not go faster: the reader keeps up with all it can make.
                if achieved < rate * 0.9 {
                    good = achieved;
                    break;
                }
                good = rate;
                rate *= 2.0;
            }
            if bad.is_finite() && !quick {
                for _ in 0..4 {
                    let mid = (good + bad) / 2.0;
                    let (_, lost, _) = events_at(lab, portfw, &program, &frame, mid, window)?;
                    if lost > 0 {
                        bad = mid;
                    } else {
                        good = mid;
                    }
                }
            }
            let (_, _, delivered) = events_at(lab, portfw, &program, &frame, 0.0, window)?;
            Ok((good, delivered))
        })();
        let _ = child.kill();
        let _ = child.wait();
        let (good, delivered) = result?;
        report.push("events", &rows[0], &cols[0], good)?;
        report.push("events", &rows[1], &cols[0], delivered)?;
        println!(
            "bench control: events {rep}/{reps}: no loss up to {:.0}/s, {:.0}/s delivered when flooded",
            good, delivered
        );
    }
    let samples: Vec<f64> = report
        .tables
        .iter()
        .filter(|t| t.id == "events")
        .flat_map(|t| t.cells.iter().filter(|c| c.row == rows[0]))
        .flat_map(|c| c.samples.iter().copied())
        .collect();
    println!(
        "bench control: events: median {:.0}/s without loss",
        median(&samples)
    );
    lab.run(Side::Server, [portfw, "detach"])
        .context("portfw detach")?;
    Ok(())
}

/// Removes the policy directory on every way out.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
