//! Developer tasks for portfw: `cargo xtask setup|test|lint|demo|lab|fuzz|bench`.

mod bench;
mod bench_report;
mod demo;
mod fuzz;
mod setup;
mod tasks;
mod util;

use std::{ffi::OsString, process::ExitCode};

use clap::{Parser, Subcommand};
use portfw_lab::{Lab, PYTHON, Side, toolchain};

/// Name of the long-lived lab of `cargo xtask lab up`.
const MANUAL_LAB: &str = "pfw-lab";

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Developer tasks for portfw"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and tests need: Debian packages, the eBPF
    /// nightly with rust-src, bpf-linker, and a mounted bpffs.
    Setup {
        /// Only report what is missing; install nothing and fail if anything is.
        #[arg(long)]
        check: bool,
    },
    /// Run setup, then `cargo test`. Arguments after `--` go to `cargo test`,
    /// e.g. `cargo xtask test -- -p portfw-user --test lab some_test`.
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cargo_args: Vec<OsString>,
    },
    /// `cargo fmt --check` and `cargo clippy -D warnings` (CI runs it apart from test).
    Lint,
    /// Apply policies/demo.yaml in a two-namespace lab and show allowed and
    /// blocked connections, the events and `portfw status`.
    Demo,
    /// Differential fuzzing: run setup, then the kernel program and the reference
    /// classifier on random frames under random policies (release build); any
    /// disagreement fails with the seed, the policy and the frame.
    Fuzz {
        /// How many frames to judge.
        #[arg(long, default_value_t = 1_000_000)]
        packets: u64,
        /// The seed of the run, decimal or 0x-hex (default: the test's fixed seed).
        #[arg(long, value_parser = fuzz::parse_seed)]
        seed: Option<u64>,
    },
    /// Benchmarks: run setup, then portfw's per-packet kernel cost, throughput under load,
    /// control plane and events, against a floor, xdp-filter, nftables and iptables, all in
    /// one run; writes BENCHMARKS.md and its plots (docs/bench/). Takes about 10 minutes.
    Bench {
        /// A smoke run (under two minutes) that only checks every figure is produced; writes
        /// nothing outside target/bench/quick.
        #[arg(long)]
        quick: bool,
    },
    /// A long-lived lab for trying portfw by hand.
    Lab {
        #[command(subcommand)]
        action: LabAction,
    },
    /// Print the rustup toolchain the eBPF build uses.
    EbpfToolchain,
}

#[derive(Subcommand)]
enum LabAction {
    /// Create namespaces pfw-lab-srv and pfw-lab-cli joined by veth-srv/veth-cli.
    Up,
    /// Remove them, with anything running inside and portfw's pins.
    Down,
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Cmd::Setup { check } => setup::run(if check {
            setup::Mode::Check
        } else {
            setup::Mode::Install
        })?,
        Cmd::Test { cargo_args } => tasks::test(&cargo_args)?,
        Cmd::Lint => tasks::lint()?,
        Cmd::Demo => demo::run()?,
        Cmd::Fuzz { packets, seed } => fuzz::run(packets, seed)?,
        Cmd::Bench { quick } => bench::run(quick)?,
        Cmd::Lab {
            action: LabAction::Up,
        } => lab_up()?,
        Cmd::Lab {
            action: LabAction::Down,
        } => {
            util::require_root("lab down")?;
            if Lab::remove_persistent(MANUAL_LAB)? {
                println!("lab: {MANUAL_LAB} removed");
            } else {
                println!("lab: no {MANUAL_LAB} to remove");
            }
        }
        Cmd::EbpfToolchain => match toolchain::ebpf_toolchain() {
            Some(name) => println!("{name}"),
            None => anyhow::bail!("no nightly toolchain installed; run `cargo xtask setup`"),
        },
    }
    Ok(ExitCode::SUCCESS)
}

fn lab_up() -> anyhow::Result<()> {
    util::require_root("lab up")?;
    let lab = Lab::persistent(MANUAL_LAB)?;
    let srv = lab.netns_path(Side::Server);
    let cli = lab.netns_path(Side::Client);
    println!("lab: {MANUAL_LAB} is up");
    for side in [Side::Server, Side::Client] {
        let (v4, v6) = match side {
            Side::Server => (lab.server_v4(), lab.server_v6()),
            Side::Client => (lab.client_v4(), lab.client_v6()),
        };
        println!(
            "  {:<6} netns {:<12} iface {:<9} {v4}/24  {v6}/64  {}",
            format!("{side:?}").to_lowercase(),
            lab.ns(side),
            lab.iface(side),
            lab.mac(side)
        );
    }
    println!(
        "Try (from the workspace root):\n  \
         nsenter --net={srv} -- {py} xtask/lab/responder.py --tcp 22,80,8080 --udp 53,5001 &\n  \
         nsenter --net={srv} -- target/release/portfw apply policies/demo.yaml --iface {iface}\n  \
         nsenter --net={srv} -- target/release/portfw events &\n  \
         nsenter --net={cli} -- curl http://{v4}/\n  \
         nsenter --net={cli} -- nc.openbsd -z -w 2 {v4} 8080\n\
         Use nsenter, not `ip netns exec`: the latter remounts /sys and hides the pins in /sys/fs/bpf.\n\
         Remove it with `cargo xtask lab down`.",
        srv = srv.display(),
        cli = cli.display(),
        py = PYTHON,
        iface = lab.server_iface(),
        v4 = lab.server_v4(),
    );
    Ok(())
}
