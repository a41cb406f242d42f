//! portfw: an XDP port firewall. The library behind the `portfw` binary: the policy model and
//! parser, the pure policy compiler, the loader that owns the kernel objects, the CLI, and
//! the agent that keeps a policy in force and serves its metrics, and single-packet knocks.

pub mod agent;
pub mod cli;
pub mod compile;
pub mod events;
pub mod loader;
pub mod policy;
pub mod spa;
