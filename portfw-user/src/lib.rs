//! portfw: an XDP port firewall. The library behind the `portfw` binary: the policy model and
//! parser, the pure policy compiler, the loader that owns the kernel objects, and the CLI.

pub mod cli;
pub mod compile;
pub mod events;
pub mod loader;
pub mod policy;
