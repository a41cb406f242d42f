//! Empty library target: it lets portfw-user name this crate as a build-dependency, so that
//! cargo rebuilds the embedded object when the kernel program changes.
#![no_std]
