//! Helpers shared by the integration tests.
#![allow(dead_code, reason = "each test crate uses a different part")]
pub mod builder;
pub mod e2e;
pub mod random_policy;
pub mod reference;
