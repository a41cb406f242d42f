//! Shared by the benchmark binaries: the packets, the policies, xdp-filter, the device's own
//! flows and the JSON report that `cargo xtask bench` reads. The namespace lab is the
//! `portfw-lab` crate.

// Each benchmark binary uses a different part of these modules.
#![allow(dead_code, reason = "shared by several benchmark binaries")]

pub mod filters;
pub mod frames;
pub mod host;
pub mod policies;
pub mod report;
pub mod tracked;
pub mod xdpfilter;

/// XDP verdicts as BPF_PROG_TEST_RUN returns them.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// The floors of portfw-ebpf/src/bench.rs: XDP programs that only return their verdict, and a
/// TC program that hands every packet on.
pub const FLOOR_PASS: &str = "bench_pass";
pub const FLOOR_DROP: &str = "bench_drop";
pub const FLOOR_TC: &str = "bench_tc_pass";
