//! Helpers shared by the integration tests.
#![allow(dead_code, reason = "each test crate uses a different part")]
pub mod builder;
pub mod e2e;
pub mod flow_table;
pub mod reference;
pub mod sockets;
