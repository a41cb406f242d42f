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
