//! Helpers shared by the integration tests.
#![allow(dead_code)]
pub mod builder;
pub mod e2e;
pub mod reference;
