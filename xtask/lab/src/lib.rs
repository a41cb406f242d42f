//! The developer lab of portfw, shared by xtask, the tests and the benchmarks: two network
//! namespaces joined by a veth pair (and, for router tests, a LAN behind one of them), the
//! python helpers that talk across it, the seeded generator the tests draw from and their one
//! random-policy generator, and the choice of the eBPF toolchain.
//!
//! It depends on neither portfw-user nor portfw-ebpf: `cargo xtask setup` builds it before
//! the eBPF toolchain it installs exists, and portfw-user's build script uses its toolchain
//! choice. Every command that runs inside a namespace goes through `nsenter --net=…` rather
//! than `ip netns exec`, which remounts /sys and would hide the host's bpffs, where portfw
//! pins its maps.

mod lab;
pub mod policies;
mod process;
pub mod rng;
mod router;
mod scripts;
pub mod toolchain;

pub use lab::{Lab, Side};
pub use policies::{Profile, random_policy};
pub use process::{ChildId, output_checked, show};
pub use rng::Rng;
pub use router::RouterLab;
pub use scripts::{Probe, Proto, script};

/// Where `ip netns add` leaves the namespace handles.
pub const NETNS_DIR: &str = "/run/netns";
/// Debian's python, which has scapy; a pyenv `python3` earlier in PATH may not.
pub const PYTHON: &str = "/usr/bin/python3";
