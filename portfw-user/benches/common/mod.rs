//! Shared by the benchmark binaries: the packets, the policies, xdp-filter, the namespace lab
//! and the JSON report that `cargo xtask bench` reads.

// Each benchmark binary uses a different part of these modules.
#![allow(dead_code, reason = "shared by several benchmark binaries")]

pub mod frames;
pub mod host;
#[path = "../../../xtask/src/lab.rs"]
pub mod lab;
pub mod policies;
pub mod report;
pub mod xdpfilter;
