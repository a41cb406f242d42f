//! The host side of the load benchmarks: CPU pinning, network-namespace switching for one
//! thread, NAPI kernel threads, and CPU time from /proc.

use std::{fs, os::fd::AsRawFd as _, path::Path};

use anyhow::{Context as _, Result, bail, ensure};

/// Pins thread or process `pid` (0: the calling thread) to `cpu`.
pub fn pin_to_cpu(pid: i32, cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET only write inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `cpu` is below CPU_SETSIZE (checked by the callers' CPU count).
    unsafe {
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
    }
    // SAFETY: a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(pid, size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("pinning pid {pid} to CPU {cpu}"));
    }
    Ok(())
}

/// Moves the calling thread (only it) into the network namespace at `path`.
pub fn enter_netns(path: &Path) -> Result<()> {
    let file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: a valid namespace fd; setns affects only this thread for CLONE_NEWNET.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("entering network namespace {}", path.display()));
    }
    Ok(())
}

/// Attaches `program` in native mode to `iface` of the network namespace at `netns`, from a
/// thread that enters it (interface names are looked up in the caller's namespace). The link
/// lives as long as the program object.
pub fn attach_in(netns: &Path, program: &mut aya::programs::Xdp, iface: &str) -> Result<()> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<()> {
                enter_netns(netns)?;
                program
                    .attach(iface, aya::programs::XdpMode::Driver)
                    .with_context(|| format!("attaching to {iface} in {}", netns.display()))?;
                Ok(())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the attaching thread panicked"))?
    })
}

/// Online CPUs.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The pids of the threaded-NAPI kernel threads of `iface` (`napi/<iface>-<id>`; the kernel
/// keeps 15 bytes of a thread name).
pub fn napi_threads(iface: &str) -> Result<Vec<i32>> {
    let wanted: String = format!("napi/{iface}-").chars().take(15).collect();
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").context("listing /proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(comm) = fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        if comm.trim_end().starts_with(&wanted) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// Pins every NAPI thread of `iface` to `cpu`; fails when there is none (threaded NAPI off).
pub fn pin_napi(iface: &str, cpu: usize) -> Result<Vec<i32>> {
    let pids = napi_threads(iface)?;
    ensure!(
        !pids.is_empty(),
        "no NAPI thread for {iface}: threaded NAPI is not on"
    );
    for &pid in &pids {
        pin_to_cpu(pid, cpu)?;
    }
    Ok(pids)
}

/// Nanoseconds thread `pid` has run (first field of /proc/PID/schedstat).
pub fn thread_runtime_ns(pid: i32) -> Result<u64> {
    let path = format!("/proc/{pid}/schedstat");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("unexpected {path}: {text}"))
}

/// Busy and total time of one CPU from /proc/stat, in clock ticks.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

pub fn cpu_times(cpu: usize) -> Result<CpuTimes> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let label = format!("cpu{cpu}");
    let Some(line) = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(label.as_str()))
    else {
        bail!("no {label} line in /proc/stat");
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    ensure!(v.len() >= 8, "short {label} line in /proc/stat: {line}");
    // user nice system idle iowait irq softirq steal [guest guest_nice]; guest time is
    // already inside user, so only the first eight count.
    let total: u64 = v[..8].iter().sum();
    let idle = v[3] + v[4];
    Ok(CpuTimes {
        busy: total - idle,
        total,
    })
}

/// Nanoseconds per /proc/stat clock tick.
pub fn tick_ns() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1e9 / if hz > 0 { hz as f64 } else { 100.0 }
}
