//! Helpers shared by the integration tests.
#![allow(dead_code)]
pub mod e2e;
pub mod packet;
